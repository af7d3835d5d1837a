"""The tokenizer's training objective: pixel losses that need no downloaded weights.

MSE is what PSNR measures; a smaller L1 term keeps edges sharper than MSE alone (it does not
average over ambiguous detail as strongly). FSQ needs no codebook or commitment loss.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor

from wm_video.errors import InputError


@dataclass(frozen=True)
class ReconstructionLossConfig:
    mse_weight: float = 1.0
    l1_weight: float = 0.2

    def __post_init__(self) -> None:
        if self.mse_weight < 0 or self.l1_weight < 0 or self.mse_weight + self.l1_weight == 0:
            raise InputError(
                f"loss weights must be ≥ 0 and not both 0; got mse {self.mse_weight}, l1 {self.l1_weight}"
            )


@dataclass
class ReconstructionLosses:
    total: Tensor  # scalar, what is minimised
    mse: Tensor  # scalar, on the [-1, 1] scale
    l1: Tensor

    @property
    def psnr(self) -> float:
        """PSNR of the batch as a whole (from its MSE; data range 2), in dB. Syncs with the device."""
        mse = float(self.mse.detach())
        return 10 * math.log10(4.0 / mse) if mse > 0 else math.inf


def reconstruction_loss(
    reconstruction: Tensor, target: Tensor, config: ReconstructionLossConfig
) -> ReconstructionLosses:
    """Both (B, T, 3, H, W) on the [-1, 1] scale; computed in float32 whatever the autocast dtype."""
    reconstruction, target = reconstruction.float(), target.float()
    mse = F.mse_loss(reconstruction, target)
    l1 = F.l1_loss(reconstruction, target)
    return ReconstructionLosses(config.mse_weight * mse + config.l1_weight * l1, mse, l1)
