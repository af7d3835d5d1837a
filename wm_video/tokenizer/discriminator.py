"""A patch discriminator for the tokenizer's adversarial loss, trained from scratch with it.

Design choices:
- Per frame, 2D (as VQGAN's PatchGAN): the tokenizer's blur is a property of single frames
  (flat floor and wall texture), so a frame's patches are judged alone; time is folded into the
  batch, ``(B, T, 3, H, W) → (B·T, 3, H, W)``.
- A few strided 4×4 convolutions (stride 2, LeakyReLU 0.2), then a 3×3 convolution to one logit
  per patch: at 64 px and 3 strided layers, an 8×8 grid of logits whose receptive fields
  overlap (38 px), so texture is judged everywhere, rather than the layout of the whole frame.
- GroupNorm rather than BatchNorm (no running statistics that differ across ranks or between
  the real and the reconstructed halves of a batch) or spectral norm (its power-iteration
  buffers would change when the generator's pass reads the discriminator).
- Small: 32 → 64 → 128 channels, ~0.17 M parameters, ~18 M multiply-adds a 64 px frame (the
  ``tiny`` tokenizer spends ~200 M on a frame's 64 tokens): at 64 channels, VQGAN's width, the
  discriminator's passes (the reconstructions for the tokenizer's term, then real and
  reconstructed frames for its own) doubled the time of a fine-tuning step on a CPU.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from einops import rearrange
from torch import Tensor, nn

from wm_video.errors import InputError

NORM_GROUPS = 8  # GroupNorm groups of every normalised layer (channels are multiples of 8)


@dataclass(frozen=True)
class DiscriminatorConfig:
    channels: int = 32  # of the first convolution; doubled at each further strided layer
    layers: int = 3  # strided (×½) convolutions; logits come at image_size / 2**layers

    def __post_init__(self) -> None:
        if not isinstance(self.channels, int) or self.channels < NORM_GROUPS or self.channels % NORM_GROUPS:
            raise InputError(
                f"discriminator config: channels must be a positive multiple of {NORM_GROUPS}, got {self.channels!r}"
            )
        if not isinstance(self.layers, int) or not 1 <= self.layers <= 6:
            raise InputError(f"discriminator config: layers must be an integer in 1..6, got {self.layers!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class PatchDiscriminator(nn.Module):
    """Frames (B, T, 3, H, W) on the [-1, 1] scale → one real-vs-reconstructed logit per patch,
    (B, T, H / 2**layers, W / 2**layers); positive means "real"."""

    def __init__(self, config: DiscriminatorConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or DiscriminatorConfig()
        blocks: list[nn.Module] = [nn.Conv2d(3, config.channels, 4, stride=2, padding=1), nn.LeakyReLU(0.2)]
        width = config.channels
        for _ in range(config.layers - 1):
            blocks += [
                nn.Conv2d(width, 2 * width, 4, stride=2, padding=1, bias=False),
                nn.GroupNorm(NORM_GROUPS, 2 * width),
                nn.LeakyReLU(0.2),
            ]
            width *= 2
        blocks.append(nn.Conv2d(width, 1, 3, padding=1))
        self.net = nn.Sequential(*blocks)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):  # as DCGAN/VQGAN: N(0, 0.02)
                nn.init.normal_(module.weight, 0.0, 0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def forward(self, frames: Tensor) -> Tensor:
        if frames.dim() != 5 or frames.shape[2] != 3:
            raise InputError(
                f"the discriminator expects frames (batch, time, 3, H, W); got {tuple(frames.shape)}"
            )
        batch = frames.shape[0]
        logits = self.net(rearrange(frames, "b t c h w -> (b t) c h w"))  # (B·T, 1, h, w)
        return rearrange(logits, "(b t) 1 h w -> b t h w", b=batch)
