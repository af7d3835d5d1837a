"""The dynamics model's configuration: one frozen dataclass, validated on construction, and its presets.

A preset fixes the network's shape; the token grid and FSQ levels come from the tokenizer and
the action names from the dataset (:func:`dynamics_config`), so a checkpoint's config alone
says which tokenizer and which keys it was trained for.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from wm_video.actions import ActionSpace
from wm_video.errors import InputError
from wm_video.tokenizer.config import TokenizerConfig


@dataclass(frozen=True)
class DynamicsConfig:
    """Shape of the action-conditioned latent transformer (see :mod:`wm_video.dynamics.model`)."""

    grid_size: int = 8  # tokens per side of a frame (the tokenizer's)
    levels: tuple[int, ...] = (7, 5, 5, 5, 5)  # the tokenizer's FSQ levels; a token is a digit per level
    action_names: tuple[str, ...] = ("forward",)  # buttons first, then continuous deltas
    action_buttons: int = 1  # how many of action_names are multi-hot buttons
    action_scale: tuple[float, ...] = ()  # each delta is divided by its scale (empty: all 1)
    dim: int = 256
    heads: int = 4
    trunk_layers: int = 6  # block-causal layers over frames, run once per frame
    head_layers: int = 2  # spatial layers that refine the next frame, run once per pass
    mlp_ratio: float = 3.0
    context_frames: int = 8  # frames a token attends to, its own included (a rolling window)
    sink_frames: int = 1  # first frames every later frame also attends to
    decode_passes: int = 4  # MaskGIT passes per generated frame
    chain_digits: bool = False  # a token's digits drawn in turn, each given those before it (see the model)

    def __post_init__(self) -> None:
        object.__setattr__(self, "levels", tuple(int(v) for v in self.levels))
        object.__setattr__(self, "action_names", tuple(str(n) for n in self.action_names))
        object.__setattr__(self, "action_scale", tuple(float(s) for s in self.action_scale))
        for name in ("grid_size", "dim", "heads", "trunk_layers", "head_layers", "context_frames"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InputError(f"dynamics config: {name} must be a positive integer, got {value!r}")
        if not isinstance(self.chain_digits, bool):
            raise InputError(f"dynamics config: chain_digits must be true or false, got {self.chain_digits!r}")
        if self.sink_frames < 0:
            raise InputError(f"dynamics config: sink_frames must be ≥ 0, got {self.sink_frames}")
        if not 1 <= self.decode_passes <= 8:
            raise InputError(
                f"dynamics config: decode_passes must lie in 1..8 (frames are decoded in a few parallel "
                f"passes), got {self.decode_passes}"
            )
        if self.dim % self.heads:
            raise InputError(f"dynamics config: dim {self.dim} is not a multiple of heads {self.heads}")
        if self.mlp_ratio <= 0:
            raise InputError(f"dynamics config: mlp_ratio must be > 0, got {self.mlp_ratio}")
        if not self.levels or any(level < 2 for level in self.levels):
            raise InputError(f"dynamics config: levels must be integers ≥ 2, got {list(self.levels)}")
        if not self.action_names or len(set(self.action_names)) != len(self.action_names):
            raise InputError(
                f"dynamics config: action_names must be unique and non-empty, got {list(self.action_names)}"
            )
        if not 0 <= self.action_buttons <= len(self.action_names):
            raise InputError(
                f"dynamics config: action_buttons {self.action_buttons} must lie in 0..{len(self.action_names)}"
            )
        if self.action_scale and (
            len(self.action_scale) != len(self.action_names) or min(self.action_scale) <= 0
        ):
            raise InputError(
                f"dynamics config: action_scale needs one positive value per action "
                f"({len(self.action_names)}), got {list(self.action_scale)}"
            )

    # -- design figures --------------------------------------------------------------------------
    @property
    def tokens_per_frame(self) -> int:
        return self.grid_size**2

    @property
    def codebook_size(self) -> int:
        return math.prod(self.levels)

    @property
    def action_dim(self) -> int:
        return len(self.action_names)

    @property
    def action_space(self) -> ActionSpace:
        """The actions this model was trained on (buttons multi-hot, then deltas)."""
        names = self.action_names
        return ActionSpace(names[: self.action_buttons], names[self.action_buttons :])

    @property
    def scales(self) -> tuple[float, ...]:
        return self.action_scale or (1.0,) * self.action_dim

    # -- serialisation ---------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for key in ("levels", "action_names", "action_scale"):
            data[key] = list(data[key])
        if not self.chain_digits:  # left out when off: runs saved before it resume, older builds read it
            del data["chain_digits"]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DynamicsConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise InputError(f"dynamics config: unknown keys {unknown}; known keys are {sorted(known)}")
        return cls(**data)


DYNAMICS_PRESETS: dict[str, DynamicsConfig] = {
    # For the tiny tokenizer (64 tokens/frame): ~30 FPS of play on a 2-core laptop CPU.
    "tiny": DynamicsConfig(),
    # For the base tokenizer (256 tokens/frame): a GPU.
    "base": DynamicsConfig(
        grid_size=16, dim=512, heads=8, trunk_layers=12, head_layers=3, mlp_ratio=4.0, context_frames=16
    ),
}


def dynamics_config(
    preset: str,
    tokenizer: TokenizerConfig,
    space: ActionSpace,
    action_scale: tuple[float, ...] = (),
    **overrides: Any,
) -> DynamicsConfig:
    """The preset's shape for this tokenizer's token grid and this dataset's actions."""
    try:
        base = DYNAMICS_PRESETS[preset]
    except KeyError:
        raise InputError(
            f"unknown dynamics preset {preset!r}; choose one of {sorted(DYNAMICS_PRESETS)}"
        ) from None
    return replace(
        base,
        grid_size=tokenizer.grid_size,
        levels=tokenizer.levels,
        action_names=space.names,
        action_buttons=len(space.buttons),
        action_scale=tuple(action_scale),
        **overrides,
    )
