"""The tokenizer's configuration: one frozen dataclass, validated on construction, and its presets.

Figures that the dynamics model pays for are properties here (``tokens_per_frame``,
``codebook_size``, ``bits_per_frame``), so a preset's cost can be read without building it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

from wm_video.errors import InputError


@dataclass(frozen=True)
class TokenizerConfig:
    """Shape of a causal spatiotemporal tokenizer (see :mod:`wm_video.tokenizer.model`)."""

    image_size: int = 64  # frames are image_size × image_size RGB
    patch_size: int = 8  # one token per patch_size × patch_size patch
    dim: int = 192  # transformer width
    heads: int = 4
    encoder_layers: int = 4
    decoder_layers: int = 4
    mlp_ratio: float = 3.0
    levels: tuple[int, ...] = (7, 5, 5, 5, 5)  # FSQ levels per latent channel; codes = product
    temporal_window: int = 8  # frames a token attends to in time, itself included (causal)
    code_embedding: bool = False  # the decoder also reads a learned vector per code (:mod:`.model`)

    def __post_init__(self) -> None:
        object.__setattr__(self, "levels", tuple(int(v) for v in self.levels))
        for name in ("image_size", "patch_size", "dim", "heads", "temporal_window"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise InputError(f"tokenizer config: {name} must be a positive integer, got {value!r}")
        for name in ("encoder_layers", "decoder_layers"):
            if getattr(self, name) < 1:
                raise InputError(f"tokenizer config: {name} must be ≥ 1, got {getattr(self, name)}")
        if self.image_size % self.patch_size:
            raise InputError(
                f"tokenizer config: image_size {self.image_size} is not a multiple of patch_size "
                f"{self.patch_size}; choose e.g. image_size {self.image_size // self.patch_size * self.patch_size}"
            )
        if self.dim % self.heads or (self.dim // self.heads) % 2:
            raise InputError(
                f"tokenizer config: dim {self.dim} must split into {self.heads} heads of an even width; "
                f"use a dim that is a multiple of {2 * self.heads}"
            )
        if not isinstance(self.code_embedding, bool):
            raise InputError(f"tokenizer config: code_embedding must be true or false, got {self.code_embedding!r}")
        if self.mlp_ratio <= 0:
            raise InputError(f"tokenizer config: mlp_ratio must be > 0, got {self.mlp_ratio}")
        if not self.levels or any(level < 2 for level in self.levels):
            raise InputError(
                f"tokenizer config: levels must be a non-empty list of integers ≥ 2 (e.g. [7, 5, 5, 5, 5]); "
                f"got {list(self.levels)}"
            )
        if self.codebook_size > 2**31:
            raise InputError(f"tokenizer config: levels {list(self.levels)} give more than 2^31 codes")

    # -- design figures ------------------------------------------------------------------------
    @property
    def grid_size(self) -> int:
        """Tokens along each side of a frame."""
        return self.image_size // self.patch_size

    @property
    def tokens_per_frame(self) -> int:
        return self.grid_size**2

    @property
    def encoder_reach(self) -> int:
        """Earlier frames a frame's tokens depend on: each encoder block looks ``temporal_window − 1`` back."""
        return self.encoder_layers * (self.temporal_window - 1)

    @property
    def latent_channels(self) -> int:
        """Channels of a quantized latent (one per FSQ level)."""
        return len(self.levels)

    @property
    def codebook_size(self) -> int:
        return math.prod(self.levels)

    @property
    def bits_per_token(self) -> float:
        return math.log2(self.codebook_size)

    @property
    def bits_per_frame(self) -> float:
        return self.bits_per_token * self.tokens_per_frame

    # -- serialisation -------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["levels"] = list(self.levels)
        if not self.code_embedding:  # left out when off: such configs read, and key token caches, as before
            del data["code_embedding"]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TokenizerConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise InputError(f"tokenizer config: unknown keys {unknown}; known keys are {sorted(known)}")
        return cls(**data)


TOKENIZER_PRESETS: dict[str, TokenizerConfig] = {
    # 64 px, 8×8 = 64 tokens of 12.1 bits, 3.1 M parameters: laptop CPUs and play.
    "tiny": TokenizerConfig(),
    # 128 px, 16×16 = 256 tokens: for a GPU.
    "base": TokenizerConfig(
        image_size=128, patch_size=8, dim=512, heads=8, encoder_layers=8, decoder_layers=8, mlp_ratio=4.0
    ),
}


def tokenizer_preset(name: str) -> TokenizerConfig:
    try:
        return TOKENIZER_PRESETS[name]
    except KeyError:
        raise InputError(
            f"unknown tokenizer preset {name!r}; choose one of {sorted(TOKENIZER_PRESETS)}"
        ) from None
