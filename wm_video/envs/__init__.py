"""A world as an environment: gymnasium envs over a generated world, a reward model, dreamed datasets.

``import wm_video.envs`` registers ``wm-video/World-v0`` with gymnasium::

    import gymnasium, wm_video.envs
    env = gymnasium.make("wm-video/World-v0", checkpoint="checkpoints/default")
    envs = gymnasium.make_vec("wm-video/World-v0", num_envs=8, vectorization_mode="vector_entry_point")
"""

from __future__ import annotations

import gymnasium

from wm_video.envs.world_env import StepRewards, WorldBatch, WorldEnv, WorldVectorEnv

ENV_ID = "wm-video/World-v0"

if ENV_ID not in gymnasium.registry:
    gymnasium.register(
        id=ENV_ID,
        entry_point="wm_video.envs.world_env:WorldEnv",
        vector_entry_point="wm_video.envs.world_env:WorldVectorEnv",
        disable_env_checker=False,
    )

__all__ = ["ENV_ID", "StepRewards", "WorldBatch", "WorldEnv", "WorldVectorEnv"]
