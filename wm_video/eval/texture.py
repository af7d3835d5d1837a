"""Texture: how much fine detail frames keep, against real frames and the tokenizer's reconstructions.

PSNR prefers blur: an average arena scores well. Two per-frame measures of detail, no network
involved:

- **sharpness**: the mean absolute 4-neighbour Laplacian of the grey frame
  (:func:`wm_video.metrics.frame_statistics`), in grey levels;
- **high-frequency share**: the share of the grey frame's spectral energy (mean removed) at
  spatial frequencies of at least :data:`HIGH_FREQUENCY` cycles per pixel (half the Nyquist
  limit): floor tiles and wall grain live there.

Generated frames are compared as ratios: generated / real on the same clips and steps (1 = as
detailed as the game), and generated / reconstructed (1 = all the detail the tokenizer keeps).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from wm_video.metrics import frame_statistics

HIGH_FREQUENCY = 0.25  # cycles per pixel


def sharpness(frames: np.ndarray) -> np.ndarray:
    """Mean absolute Laplacian of uint8 frames (..., H, W, 3) → (...)."""
    tensor = torch.from_numpy(np.ascontiguousarray(frames)).movedim(-1, -3)
    return frame_statistics(tensor)["sharpness"].numpy()


def high_frequency_share(frames: np.ndarray) -> np.ndarray:
    """Share of spectral energy at ≥ :data:`HIGH_FREQUENCY` cycles/px of uint8 frames (..., H, W, 3) → (...)."""
    grey = frames.astype(np.float32).mean(axis=-1)
    grey = grey - grey.mean(axis=(-2, -1), keepdims=True)
    power = np.abs(np.fft.rfft2(grey)) ** 2  # (..., H, W // 2 + 1)
    fy = np.fft.fftfreq(frames.shape[-3])[:, None]
    fx = np.fft.rfftfreq(frames.shape[-2])[None, :]
    high = np.sqrt(fy**2 + fx**2) >= HIGH_FREQUENCY
    total = power.sum(axis=(-2, -1))
    return np.where(total > 0, (power * high).sum(axis=(-2, -1)) / np.maximum(total, 1e-12), 0.0)


@dataclass
class TextureCurve:
    """Per generated step: generated / real and generated / reconstructed, both measures."""

    steps: list[int]
    sharpness_vs_real: list[float]
    sharpness_vs_tokenizer: list[float]
    high_frequency_vs_real: list[float]
    high_frequency_vs_tokenizer: list[float]
    real_sharpness: float  # mean over the real frames of the clips
    tokenizer_sharpness: float
    tokenizer_sharpness_vs_real: float  # what the tokenizer keeps of the real frames' sharpness
    tokenizer_high_frequency_vs_real: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def texture_curve(
    generated: np.ndarray, real: np.ndarray, reconstructed: np.ndarray, steps: list[int]
) -> TextureCurve:
    """Ratios at each of ``steps`` (1-based) for clips (B, H, h, w, 3): generated, real and the real
    frames' reconstructions by the tokenizer, step for step."""
    measured = {
        name: (sharpness(frames), high_frequency_share(frames))
        for name, frames in (("g", generated), ("r", real), ("t", reconstructed))
    }

    def ratio(name: str, against: str, which: int, t: int) -> float:
        below = measured[against][which][:, t - 1].mean()
        return float(measured[name][which][:, t - 1].mean() / below) if below > 0 else float("nan")

    def overall(name: str, which: int) -> float:
        below = measured["r"][which].mean()
        return float(measured[name][which].mean() / below) if below > 0 else float("nan")

    return TextureCurve(
        steps,
        [ratio("g", "r", 0, t) for t in steps],
        [ratio("g", "t", 0, t) for t in steps],
        [ratio("g", "r", 1, t) for t in steps],
        [ratio("g", "t", 1, t) for t in steps],
        float(measured["r"][0].mean()),
        float(measured["t"][0].mean()),
        overall("t", 0),
        overall("t", 1),
    )
