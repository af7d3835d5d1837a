"""What every ``wm-video`` subcommand module shares: flag types and the ``register`` signature.

Each command group lives beside the code it drives (``wm_video/eval/cli.py``, ``wm_video/bench/cli.py``,
``train/cli.py``, ``play/cli.py``) and exposes ``register(commands)``, which adds its parser with a
``handler`` default; :mod:`wm_video.cli` calls them in turn. Heavy modules are imported inside the
handlers so ``wm-video --help`` stays instant.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    Commands = argparse._SubParsersAction[argparse.ArgumentParser]
else:
    Commands = argparse._SubParsersAction


def positive_int(text: str) -> int:
    """argparse type: an integer ≥ 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be ≥ 1, got {value}")
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


def add_cache_dir_flag(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """``--cache-dir DIR``: where decoded datasets are cached, for a dataset on read-only storage."""
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help="put the training cache under DIR instead of beside the dataset (DATASET/.cache), e.g. "
        "when the dataset is read-only (default: $WM_VIDEO_CACHE_DIR if set)",
    )
