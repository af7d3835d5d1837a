"""A world as a gymnasium environment: :class:`WorldEnv` (one world) and :class:`WorldVectorEnv`
(``num_envs`` worlds stepped as one batch of a single :class:`~wm_video.engine.World`).

Design choices:
- Both are thin adapters over :class:`WorldBatch`, which owns the world, the action adapter
  (:mod:`.spaces`), the starts (:mod:`.starts`), the reward function, the frame stacks and the
  per-world step counters; the vector env restarts a finished world alone
  (``World.reset(worlds=[i])``), so the others' frames stay bit-identical.
- Observations are uint8 frames at the world's size, (H, W, 3), or (k, H, W, 3) with
  ``frame_stack=k`` (a reset fills the stack with its first frame). ``info["frame"]`` is the
  number of generated frames since the episode's start, ``info["start"]`` (at a reset) where it started.
- Rewards and episode ends come from a reward function: a callable ``(before, after, actions)``
  of uint8 frames (B, H, W, 3) and action vectors (B, A) that returns rewards (B,) or
  ``(rewards, terminated)``; or a reward model trained by ``wm-video train reward`` (a folder,
  :mod:`.reward`). Without one, rewards are 0 and only ``max_steps`` ends an episode
  (truncation).
- Seeds: ``reset(seed=s)`` seeds the env's generator (world i of a vector env: s + i), which draws
  the world's sampling seed and, for a dataset start, its episode: a seed gives the same episode
  twice. The vector env resets a finished world at the next step (gymnasium's NEXT_STEP
  autoreset: that step's action is ignored, its observation is the new episode's first), drawing
  from the same generator.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from wm_video.engine import World
from wm_video.envs.spaces import ActionAdapter, action_adapter
from wm_video.envs.starts import StartSource
from wm_video.errors import InputError

#: (before (B, H, W, 3) uint8, after (B, H, W, 3) uint8, actions (B, A) float32) → rewards (B,) or (rewards, terminated)
RewardFunction = Callable[[np.ndarray, np.ndarray, np.ndarray], Any]
DEFAULT_MAX_STEPS = 1000
SEED_RANGE = 2**31  # world seeds are drawn below this


@dataclass(frozen=True)
class StepRewards:
    reward: np.ndarray  # (B,) float32
    terminated: np.ndarray  # (B,) bool


def as_step_rewards(result: Any, count: int) -> StepRewards:
    """A reward function's answer (rewards, or (rewards, terminated)) → :class:`StepRewards` of ``count``."""
    if isinstance(result, StepRewards):
        reward, terminated = result.reward, result.terminated
    elif isinstance(result, tuple) and len(result) == 2:
        reward, terminated = result
    else:
        reward, terminated = result, np.zeros(count, dtype=bool)
    reward = np.asarray(reward, dtype=np.float32).reshape(-1)
    terminated = np.asarray(terminated, dtype=bool).reshape(-1)
    if reward.shape != (count,) or terminated.shape != (count,):
        raise InputError(
            f"a reward function returns {count} rewards (and optionally {count} terminations); "
            f"got shapes {reward.shape} and {terminated.shape}"
        )
    return StepRewards(reward, terminated)


def no_reward(before: np.ndarray, after: np.ndarray, actions: np.ndarray) -> StepRewards:
    """Reward 0, never terminated: the reward function of a world without one."""
    return StepRewards(np.zeros(len(after), np.float32), np.zeros(len(after), bool))


def resolve_reward(reward: RewardFunction | str | Path | None, checkpoint: Path | None) -> RewardFunction:
    """A callable as is; a path: the reward model there; None: ``<checkpoint>/reward`` if present, else none."""
    from wm_video.envs.reward import REWARD_FILE, load_reward

    if callable(reward):
        return reward
    if reward is None:
        found = checkpoint / "reward" if checkpoint is not None else None
        return load_reward(found) if found is not None and (found / REWARD_FILE).is_file() else no_reward
    return load_reward(Path(reward))


def open_env_world(
    checkpoint: str | Path | None, world: World | None, num_envs: int, seed: int, device: str
) -> tuple[World, Path | None]:
    """The world to wrap: ``world`` as given (its batch must be ``num_envs``), else loaded from
    ``checkpoint`` (default: the shipped default world)."""
    if world is not None:
        if checkpoint is not None:
            raise InputError("pass a checkpoint or a world, not both")
        if world.batch_size != num_envs:
            raise InputError(f"the world steps {world.batch_size} worlds; this env needs {num_envs}")
        saved = world.meta.get("checkpoint")
        return world, Path(saved) if saved else None
    from wm_video.engine import load_world
    from wm_video.play.start import DEFAULT_CHECKPOINT

    path = Path(checkpoint) if checkpoint is not None else DEFAULT_CHECKPOINT
    return load_world(path, device=device, batch_size=num_envs, seed=seed), path


class WorldBatch:
    """What both envs share: ``world.batch_size`` worlds, their starts, rewards and counters."""

    def __init__(
        self,
        world: World,
        *,
        adapter: ActionAdapter,
        reward: RewardFunction,
        start: Any = None,
        max_steps: int | None = DEFAULT_MAX_STEPS,
        frame_stack: int = 1,
    ) -> None:
        if frame_stack < 1:
            raise InputError(f"frame_stack must be ≥ 1; got {frame_stack}")
        if max_steps is not None and max_steps < 1:
            raise InputError(f"max_steps must be ≥ 1 (or None: no limit); got {max_steps}")
        names = getattr(reward, "action_names", None)  # a reward model reads the world's actions too
        if names is not None and tuple(names) != tuple(world.action_space.names):
            raise InputError(
                f"the reward model reads the actions {list(names)}; this world's are {list(world.action_space.names)}"
            )
        self.world, self.adapter, self.reward = world, adapter, reward
        self.starts = StartSource(world, start)
        self.max_steps, self.frame_stack = max_steps, frame_stack
        count, size = world.batch_size, world.image_size
        self.stacks = np.zeros((count, frame_stack, size, size, 3), dtype=np.uint8)  # (B, k, S, S, 3)
        self.steps = np.zeros(count, dtype=np.int64)  # generated frames since each world's reset
        self.labels = np.full(count, "", dtype=object)  # where each world's episode started
        self.rngs = [np.random.default_rng() for _ in range(count)]

    @property
    def count(self) -> int:
        return self.world.batch_size

    def observation_space(self) -> spaces.Box:
        size = self.world.image_size
        shape = (size, size, 3) if self.frame_stack == 1 else (self.frame_stack, size, size, 3)
        return spaces.Box(0, 255, shape, dtype=np.uint8)

    def observations(self, worlds: Sequence[int] | slice = slice(None)) -> np.ndarray:
        stacks = self.stacks[worlds]
        return (stacks[:, 0] if self.frame_stack == 1 else stacks).copy()

    @property
    def frames(self) -> np.ndarray:
        """(B, S, S, 3) the frame each world shows now."""
        return self.stacks[:, -1]

    def reset(self, worlds: Sequence[int], start: Any = None) -> None:
        """Restart ``worlds`` (each drawing its seed and start from its generator); the others are untouched."""
        source = self.starts if start is None else StartSource(self.world, start)
        picks = [(w, source.pick(self.rngs[w]), int(self.rngs[w].integers(SEED_RANGE))) for w in worlds]
        groups: dict[tuple[Any, ...], list[tuple[int, Any, int]]] = {}
        for pick in picks:  # worlds whose starts have the same shapes restart in one call
            context = pick[1]
            key = (
                context.frames.shape,
                None if context.actions is None else context.actions.shape,
                None if context.history is None else context.history.shape,
            )
            groups.setdefault(key, []).append(pick)
        for group in groups.values():
            rows = [w for w, _, _ in group]
            contexts = [c for _, c, _ in group]
            actions = None if contexts[0].actions is None else np.stack([c.actions for c in contexts])
            history = None if contexts[0].history is None else np.stack([c.history for c in contexts])
            shown = self.world.reset(
                np.stack([c.frames for c in contexts]),
                actions,
                history=history,
                seed=[s for _, _, s in group],
                worlds=rows,
            )
            shown = shown.reshape(len(rows), *shown.shape[-3:])
            self.stacks[rows] = shown[:, None]
            self.steps[rows] = 0
            self.labels[rows] = [c.label for c in contexts]

    def step(self, actions: Any) -> tuple[StepRewards, np.ndarray]:
        """Step every world with gymnasium ``actions`` → (rewards and terminations, truncations)."""
        return self.step_vectors(self.adapter.vectors(actions, self.count))

    def step_vectors(self, vectors: np.ndarray) -> tuple[StepRewards, np.ndarray]:
        """Step every world with the world's own action vectors (B, A); as :meth:`step`."""
        before = self.frames.copy()
        after = self.world.step(vectors).reshape(self.count, *before.shape[1:])  # (B, S, S, 3)
        self.stacks[:, :-1] = self.stacks[:, 1:]
        self.stacks[:, -1] = after
        self.steps += 1
        rewards = as_step_rewards(self.reward(before, after, vectors), self.count)
        truncated = self.steps >= self.max_steps if self.max_steps is not None else np.zeros(self.count, bool)
        return rewards, truncated & ~rewards.terminated


def open_batch(
    count: int,
    checkpoint: str | Path | None = None,
    *,
    world: World | None = None,
    action_type: str = "buttons",
    combinations: Sequence[Sequence[str]] | str | Path | None = None,
    reward: RewardFunction | str | Path | None = None,
    start: Any = None,
    max_steps: int | None = DEFAULT_MAX_STEPS,
    frame_stack: int = 1,
    render_mode: str | None = "rgb_array",
    device: str = "cpu",
) -> WorldBatch:
    """The :class:`WorldBatch` of ``count`` worlds both envs wrap (their arguments: see :class:`WorldEnv`)."""
    if render_mode not in (None, "rgb_array"):
        raise InputError(f"render_mode must be 'rgb_array' (or None); got {render_mode!r}")
    world, path = open_env_world(checkpoint, world, count, 0, device)
    adapter = action_adapter(world.action_space, world.dynamics.config.scales, action_type, combinations)
    return WorldBatch(
        world,
        adapter=adapter,
        reward=resolve_reward(reward, path),
        start=start,
        max_steps=max_steps,
        frame_stack=frame_stack,
    )


class WorldEnv(gym.Env[np.ndarray, Any]):
    """One generated world as a ``gymnasium.Env``; see the module docstring for the arguments.

    ``checkpoint``: a dynamics run, step or exported folder (default: the shipped default world),
    or pass a ready ``world`` (batch of one). ``action_type``: ``"buttons"`` or ``"discrete"``
    (``combinations``: button-name lists or a dataset folder). ``reward``: a reward function, a
    reward model folder, or None (``<checkpoint>/reward`` if there). ``start``: see :mod:`.starts`.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 17.5}

    def __init__(
        self,
        checkpoint: str | Path | None = None,
        *,
        world: World | None = None,
        action_type: str = "buttons",
        combinations: Sequence[Sequence[str]] | str | Path | None = None,
        reward: RewardFunction | str | Path | None = None,
        start: Any = None,
        max_steps: int | None = DEFAULT_MAX_STEPS,
        frame_stack: int = 1,
        render_mode: str | None = "rgb_array",
        device: str = "cpu",
    ) -> None:
        self.batch = open_batch(
            1,
            checkpoint,
            world=world,
            action_type=action_type,
            combinations=combinations,
            reward=reward,
            start=start,
            max_steps=max_steps,
            frame_stack=frame_stack,
            render_mode=render_mode,
            device=device,
        )
        self.render_mode = render_mode
        self.observation_space = self.batch.observation_space()
        self.action_space = self.batch.adapter.gym_space()

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Start an episode; ``options={"start": …}`` overrides the env's start for this one."""
        super().reset(seed=seed)
        self.batch.rngs[0] = self.np_random
        self.batch.reset([0], (options or {}).get("start"))
        return self.batch.observations()[0], {"frame": 0, "start": self.batch.labels[0]}

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        rewards, truncated = self.batch.step(
            np.asarray(action)[None] if not isinstance(action, dict) else action
        )
        info = {"frame": int(self.batch.steps[0])}
        return (
            self.batch.observations()[0],
            float(rewards.reward[0]),
            bool(rewards.terminated[0]),
            bool(truncated[0]),
            info,
        )

    def render(self) -> np.ndarray:  # type: ignore[override]
        """The frame shown now, uint8 (H, W, 3)."""
        return self.batch.frames[0].copy()

    @property
    def world(self) -> World:
        return self.batch.world


class WorldVectorEnv(VectorEnv[np.ndarray, Any, np.ndarray]):
    """``num_envs`` generated worlds stepped as one batch; the other arguments are :class:`WorldEnv`'s.

    ``reset(options={"reset_mask": mask})`` restarts only the worlds where ``mask`` is True.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 17.5, "autoreset_mode": AutoresetMode.NEXT_STEP}

    def __init__(
        self,
        num_envs: int = 1,
        checkpoint: str | Path | None = None,
        *,
        render_mode: str | None = "rgb_array",
        **options: Any,
    ) -> None:
        if num_envs < 1:
            raise InputError(f"num_envs must be ≥ 1; got {num_envs}")
        self.batch = open_batch(num_envs, checkpoint, render_mode=render_mode, **options)
        adapter = self.batch.adapter
        self.num_envs = num_envs
        self.render_mode = render_mode
        self.single_observation_space = self.batch.observation_space()
        self.single_action_space = adapter.gym_space()
        self.observation_space = batch_space(self.single_observation_space, num_envs)
        self.action_space = batch_space(self.single_action_space, num_envs)
        self._autoreset = np.zeros(num_envs, dtype=bool)

    def reset(
        self, *, seed: int | Sequence[int] | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Restart every world (or those of ``options["reset_mask"]``); ``seed`` s seeds world i with s + i."""
        options = options or {}
        mask = np.asarray(options.get("reset_mask", np.ones(self.num_envs, bool)), dtype=bool)
        if mask.shape != (self.num_envs,) or not mask.any():
            raise InputError(f"reset_mask must be {self.num_envs} booleans, at least one True; got {mask}")
        worlds = np.flatnonzero(mask).tolist()
        if seed is not None:
            seeds = [seed + i for i in range(self.num_envs)] if isinstance(seed, int) else list(seed)
            if len(seeds) != self.num_envs:
                raise InputError(f"{self.num_envs} worlds need {self.num_envs} seeds; got {len(seeds)}")
            for w in worlds:
                self.batch.rngs[w] = np.random.default_rng(seeds[w])
        self.batch.reset(worlds, options.get("start"))
        self._autoreset[worlds] = False
        return self.batch.observations(), self._info()

    def step(self, actions: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        rewards, truncated = self.batch.step(actions)
        reward, terminated = rewards.reward.astype(np.float64), rewards.terminated.copy()  # as SyncVectorEnv
        restart = np.flatnonzero(self._autoreset).tolist()
        if restart:  # NEXT_STEP autoreset: these worlds ended last step; they start over instead
            self.batch.reset(restart)
            reward[restart], terminated[restart], truncated[restart] = 0.0, False, False
        self._autoreset = terminated | truncated
        return self.batch.observations(), reward, terminated, truncated, self._info()

    def _info(self) -> dict[str, Any]:
        every = np.ones(self.num_envs, dtype=bool)
        return {
            "frame": self.batch.steps.copy(),
            "_frame": every,
            "start": self.batch.labels.copy(),
            "_start": every,
        }

    def render(self) -> tuple[np.ndarray, ...]:
        """The frame each world shows now, uint8 (H, W, 3) each."""
        return tuple(frame.copy() for frame in self.batch.frames)

    @property
    def world(self) -> World:
        return self.batch.world
