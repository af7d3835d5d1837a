"""Refusing a request that cannot fit, before anything is allocated: one estimate, one message.

A batch of 100,000 clips, a 4096-pixel cache or a checkpoint whose config asks for a 262,144-wide
model would otherwise allocate until the machine swaps or the kernel kills the process. Each
caller states a *lower bound* of what its request needs (the figures below leave out temporary
buffers, allocator slack and everything else the process holds), and :func:`check_fits` refuses
it, with both figures, only when even that bound exceeds what the machine has: a request that is
refused could never have run, and none that could is refused.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from wm_video.errors import InputError

if TYPE_CHECKING:
    from torch import nn

#: Floats kept per token and layer of a transformer block for the backward pass: the block's input,
#: the attention's queries, keys, values and output, the MLP's input, hidden (mlp_ratio × wide) and
#: output. A lower bound: norms, softmax weights and optimizer buffers are not counted.
SAVED_FLOATS_PER_TOKEN_LAYER = 8
FLOAT_BYTES = 4
ACTIVATION_BYTES = 2  # each saved value in bf16/fp16 under mixed precision: the lower bound


def format_bytes(count: float) -> str:
    for unit, size in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20)):
        if count >= size:
            return f"{count / size:,.1f} {unit}"
    return f"{count / 2**10:,.1f} KiB"


def available_memory(device: str | None = None) -> int:
    """Bytes that can still be allocated: free GPU memory on a CUDA device, else the RAM the
    kernel reports as available plus free swap."""
    if device is not None and str(device).startswith("cuda"):
        import torch

        if torch.cuda.is_available():
            return int(torch.cuda.mem_get_info(torch.device(device))[0])
    import psutil

    return int(psutil.virtual_memory().available + psutil.swap_memory().free)


def check_fits(needed: float, what: str, fix: str, *, device: str | None = None) -> None:
    """Raise an InputError when ``needed`` bytes (a lower bound) exceed what ``device`` has."""
    have = available_memory(device)
    if needed > have:
        where = "GPU memory" if device is not None and str(device).startswith("cuda") else "memory"
        raise InputError(
            f"{what} needs at least {format_bytes(needed)} of {where}, and {format_bytes(have)} is "
            f"available; {fix}"
        )


def check_disk(needed: float, folder: Path, what: str, fix: str) -> None:
    """Raise an InputError when ``needed`` bytes exceed the free space of the filesystem of ``folder``."""
    existing = Path(folder)
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    free = shutil.disk_usage(existing).free
    if needed > free:
        raise InputError(
            f"{folder}: {what} needs {format_bytes(needed)} of disk and {format_bytes(free)} is free; {fix}"
        )


def transformer_activation_bytes(*, tokens: int, dim: int, layers: int, mlp_ratio: float) -> float:
    """Lower bound of the activations a training step keeps for backward over ``tokens`` tokens."""
    per_token_layer = SAVED_FLOATS_PER_TOKEN_LAYER + mlp_ratio
    return float(tokens) * dim * layers * per_token_layer * ACTIVATION_BYTES


def parameter_count(build: Callable[[], nn.Module]) -> int:
    """Parameters of the module ``build()`` makes, counted on the meta device (nothing allocated)."""
    import torch

    with torch.device("meta"):
        module = build()
    return sum(p.numel() for p in module.parameters())


def training_step_bytes(config: dict[str, Any], *, batch: int, frames: int) -> float:
    """Lower bound of what one training step over ``batch`` clips of ``frames`` frames keeps for
    backward, from a model's JSON config: a tokenizer's pixels in and out, and every transformer
    layer's saved activations over the clip's tokens."""
    dim = int(config.get("dim", 0))
    layers = sum(
        int(config.get(key, 0)) for key in ("encoder_layers", "decoder_layers", "trunk_layers", "head_layers")
    )
    if "image_size" in config:  # a tokenizer: pixels in, pixels out
        side = int(config["image_size"])
        tokens = (side // max(1, int(config.get("patch_size", 1)))) ** 2
        pixels = 2 * side * side * 3 * ACTIVATION_BYTES
    else:
        tokens, pixels = int(config.get("grid_size", 0)) ** 2, 0
    per_frame = pixels + transformer_activation_bytes(
        tokens=tokens, dim=dim, layers=layers, mlp_ratio=float(config.get("mlp_ratio", 0.0))
    )
    return float(batch) * frames * per_frame
