"""Finite scalar quantization (Mentzer et al., 2023): a codebook that cannot collapse.

Each latent channel c is squashed into a bounded range and rounded to one of ``levels[c]``
values; a token is the mixed-radix number formed by the channels' digits. No codebook, no
commitment loss: gradients pass the rounding straight through.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class FSQ(nn.Module):
    """Quantize (..., C) latents to ``levels`` per channel; tokens are ints in [0, prod(levels))."""

    _half_range: Tensor
    _offset: Tensor
    _shift: Tensor
    _half_width: Tensor
    _basis: Tensor
    _levels: Tensor

    def __init__(self, levels: tuple[int, ...]) -> None:
        super().__init__()
        levels_t = torch.tensor(levels, dtype=torch.float64)
        # A level count L maps channel values into L integers centred on 0; even L shifts by ½.
        half_range = (levels_t - 1) * (1 + 1e-3) / 2
        offset = torch.where(levels_t % 2 == 0, 0.5, 0.0)
        self.register_buffer("_half_range", half_range.float(), persistent=False)
        self.register_buffer("_offset", offset.float(), persistent=False)
        self.register_buffer("_shift", torch.atanh(offset / half_range).float(), persistent=False)
        self.register_buffer("_half_width", (levels_t // 2).float(), persistent=False)
        basis = torch.cumprod(torch.tensor((1, *levels[:-1]), dtype=torch.int64), dim=0)
        self.register_buffer("_basis", basis, persistent=False)
        self.register_buffer("_levels", torch.tensor(levels, dtype=torch.int64), persistent=False)

    def forward(self, latents: Tensor) -> Tensor:
        """(..., C) real latents → (..., C) quantized values in [-1, 1] (straight-through gradient)."""
        bounded = torch.tanh(latents.float() + self._shift) * self._half_range - self._offset
        rounded = bounded + (torch.round(bounded) - bounded).detach()
        return rounded / self._half_width

    def to_tokens(self, quantized: Tensor) -> Tensor:
        """(..., C) quantized values → (...) int64 token ids."""
        digits = torch.round(quantized.float() * self._half_width + self._half_width).long()
        return (digits * self._basis).sum(dim=-1)

    def from_tokens(self, tokens: Tensor) -> Tensor:
        """(...) token ids → (..., C) quantized values in [-1, 1]."""
        digits = (tokens.long().unsqueeze(-1) // self._basis) % self._levels
        return (digits.float() - self._half_width) / self._half_width
