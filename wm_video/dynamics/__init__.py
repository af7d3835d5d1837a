"""Tokens of frames and the keys pressed → the next frame's tokens (see :mod:`.model`)."""

from wm_video.dynamics.config import DYNAMICS_PRESETS, DynamicsConfig, dynamics_config
from wm_video.dynamics.model import DynamicsModel, with_digit_chain
from wm_video.dynamics.objective import (
    CorruptionConfig,
    DynamicsLosses,
    TokenWeightConfig,
    code_nll,
    masked_token_loss,
    token_weights,
)
from wm_video.dynamics.sampling import FrameSampler, SamplingConfig, Stream, update_sampling

__all__ = [
    "DYNAMICS_PRESETS",
    "CorruptionConfig",
    "DynamicsConfig",
    "DynamicsLosses",
    "DynamicsModel",
    "FrameSampler",
    "SamplingConfig",
    "Stream",
    "TokenWeightConfig",
    "code_nll",
    "dynamics_config",
    "masked_token_loss",
    "token_weights",
    "update_sampling",
    "with_digit_chain",
]
