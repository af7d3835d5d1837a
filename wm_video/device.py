"""Choosing the torch device and float type a program runs with, refusing what this machine lacks.

Every program that runs a model takes ``--device`` (:func:`wm_video.cli_args.add_device_flag`) and
resolves it here once, at its start: ``auto`` is ``cuda`` when a CUDA device is present, else
``cpu``. ``--device cuda`` on a CPU-only build of torch, or a name torch does not know, is an
error in one line (exit status 2), not a traceback from deep inside the first tensor that is moved.
``--dtype`` (:func:`wm_video.cli_args.add_dtype_flag`) is resolved by :func:`resolve_dtype`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from wm_video.errors import InputError

if TYPE_CHECKING:
    import torch

AUTO = "auto"
#: ``--dtype`` names and the torch dtypes they stand for (long names are accepted too).
DTYPE_NAMES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def resolve_device(requested: str | None) -> str:
    """``requested`` (``auto``, ``cpu``, ``cuda``, ``cuda:1``, ``mps``), checked; ``auto`` or None:
    ``cuda`` when present, else ``cpu``."""
    import torch

    if requested is None or requested == AUTO:
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(requested)
    except (RuntimeError, ValueError) as err:
        raise InputError(f"--device {requested}: not a device torch knows; use auto, cpu or cuda") from err
    if device.type == "cuda":
        if not torch.cuda.is_available():
            why = "this torch build has none" if torch.version.cuda is None else "none is visible"
            raise InputError(
                f"--device {requested}: no CUDA device is available ({why}); use --device cpu (or auto)"
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise InputError(f"--device {requested}: this machine has {torch.cuda.device_count()} GPU(s)")
    elif device.type == "mps":
        if not torch.backends.mps.is_available():
            raise InputError(f"--device {requested}: Metal (mps) is not available here; use --device cpu")
    elif device.type != "cpu":
        raise InputError(f"--device {requested}: only cpu, cuda and mps are supported")
    return str(device)


def resolve_dtype(name: str, device: str) -> torch.dtype:
    """``fp32``, ``bf16`` or ``fp16`` (or ``float32``, ``bfloat16``, ``float16``) → the torch dtype;
    float16 only on CUDA (a CPU's float16 kernels are slow or missing)."""
    import torch

    long_name = DTYPE_NAMES.get(name, name)
    if long_name not in DTYPE_NAMES.values():
        raise InputError(f"unknown dtype {name!r}; choose one of {list(DTYPE_NAMES)}")
    if long_name == "float16" and not device.startswith("cuda"):
        raise InputError("float16 runs only on CUDA (a CPU's float16 kernels are slow or missing); use fp32 or bf16")
    dtype: torch.dtype = getattr(torch, long_name)
    return dtype
