"""What every ``wm-video`` subcommand module shares: flag types, the flags several programs take
(``add_*_flag``: one definition each) and the ``register`` signature.

Each command group lives beside the code it drives (``wm_video/eval/cli.py``, ``wm_video/bench/cli.py``,
``train/cli.py``, ``play/cli.py``) and exposes ``register(commands)``, which adds its parser with a
``handler`` default; :mod:`wm_video.cli` calls them in turn. Heavy modules are imported inside the
handlers so ``wm-video --help`` stays instant.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    Commands = argparse._SubParsersAction[argparse.ArgumentParser]
else:
    Commands = argparse._SubParsersAction

#: Where an ``add_*_flag`` helper adds its flag: a parser, or one of its argument groups.
FlagTarget = argparse.ArgumentParser | argparse._ArgumentGroup


def counted(count: int, noun: str) -> str:
    """``1 episode``, ``2 episodes``, ``1,000 frames``: a count with its noun, singular or plural."""
    return f"{count:,} {noun}" + ("" if count == 1 else "s")


def positive_int(text: str) -> int:
    """argparse type: an integer ≥ 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be ≥ 1, got {value}")
    return value


def non_negative_int(text: str) -> int:
    """argparse type: an integer ≥ 0."""
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be ≥ 0, got {value}")
    return value


def finite_float(text: str) -> float:
    """argparse type: a number, neither NaN nor infinite (``nan <= 0`` is False, so range checks
    alone let NaN through)."""
    value = float(text)
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
    return value


def positive_float(text: str) -> float:
    """argparse type: a finite number > 0."""
    value = finite_float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def non_negative_float(text: str) -> float:
    """argparse type: a finite number ≥ 0."""
    value = finite_float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be ≥ 0, got {text}")
    return value


def add_cache_dir_flag(group: FlagTarget) -> None:
    """``--cache-dir DIR``: where decoded datasets are cached, for a dataset on read-only storage."""
    group.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help="put the training cache under DIR instead of beside the dataset (DATASET/.cache), e.g. "
        "when the dataset is read-only (default: $WM_VIDEO_CACHE_DIR if set)",
    )


def add_device_flag(group: FlagTarget) -> None:
    """``--device``, the same in every program that runs a model (resolved by
    :func:`wm_video.device.resolve_device`)."""
    group.add_argument(
        "--device",
        default="auto",
        help="where the model runs: auto (default: cuda when present, else cpu), cpu, cuda, cuda:N or mps",
    )


def add_dtype_flag(group: FlagTarget, default: str = "fp32") -> None:
    """``--dtype``, the same in every program that runs a world (resolved by
    :func:`wm_video.device.resolve_dtype`)."""
    from wm_video.device import DTYPE_NAMES

    group.add_argument(
        "--dtype",
        choices=list(DTYPE_NAMES),
        default=default,
        help=f"the models' float type: fp32, bf16 or fp16 (default {default}; fp16 needs a GPU; on a CPU "
        "without AMX bf16 is slower than fp32)",
    )


def add_compile_flag(group: FlagTarget) -> None:
    """``--compile``, the same in every program that steps worlds (``World(compile=True)``)."""
    group.add_argument(
        "--compile",
        action="store_true",
        help="compile each world's whole step with torch.compile (a minute or more before the first frame; "
        "on a GPU the step is also captured as a CUDA graph)",
    )


def add_threads_flag(group: FlagTarget) -> None:
    """``--threads``, the same in every program that runs torch (see :mod:`wm_video.threads`)."""
    group.add_argument(
        "--threads",
        type=positive_int,
        default=None,
        help="torch CPU threads (default: chosen by timing 1, 2 … threads on the work itself while it "
        "runs, and re-checked when its speed changes; the choice is printed)",
    )


#: ``SamplingConfig.order``'s values, kept here so that parsing flags does not import torch (a test checks).
SAMPLING_ORDERS = ("drawn", "certain")


def add_sampling_flags(group: FlagTarget) -> None:
    """``--temperature``, ``--top-k``, ``--passes``, ``--guidance`` and ``--order``: how a world draws its frames, replacing the
    world's own settings (what ``wm-video export`` stored; else temperature 1, no top-k and the
    model's passes). The same in play, eval and export."""
    group.add_argument(
        "--temperature",
        type=non_negative_float,
        default=None,
        help="sampling temperature (default: the world's own, else 1; 0: always the most likely token)",
    )
    group.add_argument(
        "--top-k",
        type=positive_int,
        default=None,
        help="draw each token digit from its k most likely levels only (default: the world's own, else all)",
    )
    group.add_argument(
        "--passes",
        type=positive_int,
        default=None,
        help="MaskGIT passes per frame, 1-8; more passes cost more model time per frame "
        "(default: the world's own, else the model's)",
    )
    group.add_argument(
        "--guidance",
        type=non_negative_float,
        default=None,
        help="action guidance, 0-16: draw each frame G times as far from what pressing nothing would have "
        "given, toward what the keys pressed do (1: off; twice the dynamics' work per frame; "
        "default: the world's own, else 1)",
    )
    group.add_argument(
        "--order",
        choices=SAMPLING_ORDERS,
        default=None,
        help="which tokens each MaskGIT pass keeps: 'drawn', those whose drawn value is most likely "
        "(MaskGIT; favours common codes over small objects), or 'certain', those where the model is surest, "
        "whatever was drawn (default: the world's own, else drawn)",
    )


def sampling_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The sampling settings given by :func:`add_sampling_flags`' flags (those not given are left out)."""
    names = ("temperature", "top_k", "passes", "guidance", "order")
    return {name: getattr(args, name) for name in names if getattr(args, name) is not None}


def add_progress_flag(group: FlagTarget) -> None:
    """``--no-progress``, the same in every program that shows progress bars."""
    group.add_argument("--no-progress", action="store_true", help="no progress bars on stderr")


def device_and_threads(args: argparse.Namespace, log: Callable[[str], None] | None = None) -> str:
    """Resolve ``--device`` (:func:`wm_video.device.resolve_device`: an unavailable or unknown device
    is one line, exit status 2) and set up the thread count for it (``--threads``, else chosen by
    timing: :func:`wm_video.threads.configure`, whose choices ``log`` prints); returns the device."""
    from wm_video import threads
    from wm_video.device import resolve_device

    device = resolve_device(args.device)
    if log is None:
        threads.configure(args.threads, device=device)
    else:
        threads.configure(args.threads, device=device, log=log)
    return device
