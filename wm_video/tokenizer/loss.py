"""The tokenizer's training objective: pixel losses that need no downloaded weights.

MSE is what PSNR measures; a smaller L1 term keeps edges sharper than MSE alone (it does not
average over ambiguous detail as strongly). FSQ needs no codebook or commitment loss.

**Weighting where frames change** (``change_weight`` > 0). A plain mean over pixels spends the
model on what fills the frame: in Breakout at 64 px the ball is 1–2 of 4,096 pixels and the
paddle 14, so a tokenizer can score 30 dB with neither. Each pixel's error is then weighted
``1 + change_weight × c``, where ``c`` ∈ [0, 1] says how much the real pixel differs from a
reference: the previous frame of the clip (``"previous"``: what moves; the first frame of a clip
has no predecessor and weighs 1), or the dataset's median frame (``"median"``: what is not the
static background). ``c`` is 0 below half of ``change_threshold`` (largest channel difference,
on the [-1, 1] scale; 0.2 is 25 of 255), rises linearly to 1 at it, and is widened by one pixel
(a 3×3 max), so the border around a small object, where a blurred reconstruction errs, counts
too. The dead zone matters: H.264 noise changes ~4 % of a Breakout frame's pixels by a few
levels from one frame to the next, and a ramp from 0 (widened) spread the weight over 17 % of
the pixels, where the ball and paddle cover under 1 %. The weights are divided
by their mean over the batch, so the loss keeps the scale of a plain mean and the learning rate
means the same thing. The reported ``mse`` stays the plain mean (what PSNR reads).

**Weighting objects** (``object_weight`` > 0): the engine's labels mark object pixels (monsters,
shots, blood, the flash: :mod:`wm_video.data.objects`); each weighs ``1 + object_weight``, the
mask widened by one pixel as the change map is. Both weightings add up:
``1 + change_weight × c + object_weight × o``, then the same normalisation.

**Frequency term** (``frequency_weight`` > 0): the L1 distance between the amplitude spectra of
each reconstructed and real frame (2D FFT per frame and channel, orthonormal, so a spectrum's
energy equals the frame's). A blurred frame keeps its low frequencies and loses the high ones
where floor and wall texture live; with L1 every frequency bin pulls equally, however little
energy it holds, so the lost texture costs as much as a wrong colour. The amplitudes ignore
where the detail is (the pixel terms say that): this term only asks that it be there.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from wm_video.errors import InputError

#: What a pixel is compared with to find where a frame changed.
CHANGE_REFERENCES = ("previous", "median")


@dataclass(frozen=True)
class ReconstructionLossConfig:
    mse_weight: float = 1.0
    l1_weight: float = 0.2
    change_weight: float = 0.0  # extra weight on changed pixels; 0: a plain mean over pixels
    change_reference: str = "previous"  # "previous" frame of the clip, or the dataset's "median" frame
    change_threshold: float = 0.2  # difference (of 2, the [-1, 1] range) at which a pixel counts fully
    object_weight: float = 0.0  # extra weight on object pixels (the dataset's labels); 0: none
    frequency_weight: float = 0.0  # weight of the L1 distance between amplitude spectra; 0: none

    def __post_init__(self) -> None:
        if self.mse_weight < 0 or self.l1_weight < 0 or self.mse_weight + self.l1_weight == 0:
            raise InputError(
                f"loss weights must be ≥ 0 and not both 0; got mse {self.mse_weight}, l1 {self.l1_weight}"
            )
        if not self.change_weight >= 0:
            raise InputError(f"--change-weight must be ≥ 0 (0: no weighting), got {self.change_weight}")
        if not 0 <= self.frequency_weight < math.inf:
            raise InputError(f"--frequency-weight must be a finite number ≥ 0 (0: off), got {self.frequency_weight}")
        if self.change_reference not in CHANGE_REFERENCES:
            raise InputError(
                f"--change-reference must be one of {', '.join(CHANGE_REFERENCES)}; got {self.change_reference!r}"
            )
        if not (math.isfinite(self.object_weight) and self.object_weight >= 0):
            raise InputError(f"--object-weight must be a finite number ≥ 0 (0: none), got {self.object_weight}")
        if not 0 < self.change_threshold <= 2:
            raise InputError(
                f"the change threshold must lie in (0, 2] (of the [-1, 1] range), got {self.change_threshold}"
            )

    @property
    def needs_median(self) -> bool:
        """True when the loss compares frames with the dataset's median frame."""
        return self.change_weight > 0 and self.change_reference == "median"


@dataclass
class ReconstructionLosses:
    total: Tensor  # scalar, what is minimised
    mse: Tensor  # scalar, on the [-1, 1] scale, unweighted
    l1: Tensor  # unweighted
    frequency: Tensor | None = None  # the amplitude spectra's L1 distance (unweighted), when in the loss

    @property
    def psnr(self) -> float:
        """PSNR of the batch as a whole (from its MSE; data range 2), in dB. Syncs with the device."""
        mse = float(self.mse.detach())
        return 10 * math.log10(4.0 / mse) if mse > 0 else math.inf


def change_map(target: Tensor, reference: Tensor, threshold: float) -> Tensor:
    """How much each pixel of ``target`` (B, T, 3, H, W) changed from ``reference`` (same shape, or
    broadcastable), in [0, 1]: 0 below ``threshold`` / 2, 1 from ``threshold`` on, linear between;
    (B, T, 1, H, W), widened by one pixel."""
    difference = (target - reference).abs().amax(dim=2, keepdim=True)  # (B, T, 1, H, W)
    changed = (2 * difference / threshold - 1).clamp(min=0.0, max=1.0)
    return widen(changed)


def widen(maps: Tensor) -> Tensor:
    """(B, T, 1, H, W) maps widened by one pixel (a 3×3 max)."""
    batch, frames = maps.shape[:2]
    widened = F.max_pool2d(maps.flatten(0, 1), kernel_size=3, stride=1, padding=1)  # (B·T, 1, H, W)
    return widened.view(batch, frames, *widened.shape[1:])


def pixel_weights(
    target: Tensor,
    config: ReconstructionLossConfig,
    median: Tensor | None = None,
    objects: Tensor | None = None,
) -> Tensor:
    """Per-pixel loss weights (B, T, 1, H, W) with mean 1 (see the module docstring); ``objects``
    (B, T, 1, H, W), 1 on object pixels, is needed for an object weight."""
    if config.change_reference == "median" and config.change_weight > 0:
        if median is None:
            raise InputError("the median-frame weighting needs the dataset's median frame (3, H, W)")
        reference = median.to(target.dtype)
    else:  # the previous frame; the first frame is its own reference (no change)
        reference = torch.cat([target[:, :1], target[:, :-1]], dim=1)
    weights = 1.0 + config.change_weight * change_map(target, reference, config.change_threshold)
    if config.object_weight > 0:
        if objects is None:
            raise InputError("--object-weight needs the object masks of the clips (the dataset's labels)")
        weights = weights + config.object_weight * widen(objects.to(target.dtype))
    return weights / weights.mean()


def spectrum_distance(reconstruction: Tensor, target: Tensor) -> Tensor:
    """Mean absolute difference of the per-frame amplitude spectra of (..., H, W) images (float32)."""
    amplitude = torch.fft.rfft2(torch.stack([reconstruction, target]).float(), norm="ortho").abs()
    return (amplitude[0] - amplitude[1]).abs().mean()


def reconstruction_loss(
    reconstruction: Tensor,
    target: Tensor,
    config: ReconstructionLossConfig,
    median: Tensor | None = None,
    objects: Tensor | None = None,
) -> ReconstructionLosses:
    """Both (B, T, 3, H, W) on the [-1, 1] scale; computed in float32 whatever the autocast dtype.

    ``median`` (3, H, W), the dataset's median frame on the same scale, is needed only for
    ``change_reference="median"``; ``objects`` (B, T, 1, H, W), 1 on object pixels, only for an
    ``object_weight``.
    """
    reconstruction, target = reconstruction.float(), target.float()
    error = reconstruction - target
    mse, l1 = error.square().mean(), error.abs().mean()
    if config.change_weight == 0 and config.object_weight == 0:
        total = config.mse_weight * mse + config.l1_weight * l1
    else:
        weights = pixel_weights(target, config, None if median is None else median.float(), objects)
        total = (
            config.mse_weight * (weights * error.square()).mean()
            + config.l1_weight * (weights * error.abs()).mean()
        )
    if config.frequency_weight == 0:
        return ReconstructionLosses(total, mse, l1)
    frequency = spectrum_distance(reconstruction, target)
    return ReconstructionLosses(total + config.frequency_weight * frequency, mse, l1, frequency)
