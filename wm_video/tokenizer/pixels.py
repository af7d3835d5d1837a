"""uint8 frames (..., H, W, 3) ↔ model pixels (..., 3, H, W) in [-1, 1]."""

from __future__ import annotations

import numpy as np
import torch
from einops import rearrange
from torch import Tensor


def to_model_pixels(frames: np.ndarray | Tensor, device: torch.device | str = "cpu") -> Tensor:
    """uint8 (..., H, W, 3) → float32 (..., 3, H, W) in [-1, 1] on ``device``."""
    tensor = torch.as_tensor(frames).to(device)
    return rearrange(tensor, "... h w c -> ... c h w").float().div_(127.5).sub_(1.0)


def to_uint8_frames(pixels: Tensor) -> Tensor:
    """float (..., 3, H, W) in [-1, 1] → uint8 (..., H, W, 3), clamped and rounded."""
    scaled = ((pixels.float() + 1.0) * 127.5).clamp_(0, 255).round_()
    return rearrange(scaled.to(torch.uint8), "... c h w -> ... h w c")
