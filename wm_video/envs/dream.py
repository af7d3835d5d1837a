"""``wm-video dream``: roll a policy inside a world and write what it saw as a dataset.

The dataset is in the project's own format (the one :class:`~wm_video.data.writer.DatasetWriter`
writes for real footage): frames, actions, and per frame the reward the world's reward function
predicted for the action (``next.reward``) and whether it ended the episode (``next.done``).
``meta/wm_video.json`` marks it as generated: ``source.generated`` is true, with the world's
checkpoint, the policy, the reward function and the seed. ``wm-video inspect`` validates it like
any other dataset.

Design choices:
- Recording follows ``collect``: frame t is recorded, the policy picks action t from it, the world
  steps. An episode stops after ``steps`` frames, when the reward function says it ended, or when
  a scripted policy runs out.
- Episode i of the dataset uses seed ``seed + i`` (its start, the world's sampling seed and the
  policy's), and worlds step independently, so the dataset does not depend on ``worlds`` (how
  many run as one batch). Episodes are committed in order; ``episodes`` is the total the dataset
  should hold, so rerunning an interrupted command finishes it.
- Policies: ``explore``, ``random``, a JSONL action script (:mod:`wm_video.sources.policies`), or
  any callable ``policy(observation) -> action`` in the world env's ``buttons`` action space
  (MultiBinary, Box or Dict: see :mod:`.spaces`), e.g. an agent trained in a
  :class:`~wm_video.envs.WorldVectorEnv`; on the command line ``module:function``.
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from wm_video.data import lerobot
from wm_video.data.truth import DONE_KEY, REWARD_KEY
from wm_video.data.video import VideoSettings
from wm_video.data.writer import DatasetWriter
from wm_video.engine import World
from wm_video.envs.spaces import action_adapter
from wm_video.envs.world_env import RewardFunction, WorldBatch, resolve_reward
from wm_video.errors import InputError
from wm_video.sources.policies import Policy, load_policy
from wm_video.sources.truth import FrameTruth

GENERATED_SOURCE = "world model"  # meta/wm_video.json source.source of a dreamed dataset


@dataclass(frozen=True)
class DreamResult:
    out: Path
    episodes_written: int
    frames_written: int
    seconds: float
    total_episodes: int
    mean_reward: float  # per episode written, of the predicted rewards
    ended: int  # episodes the reward function ended (the others ran to ``steps`` or the script's end)


class CallablePolicy(Policy):
    """A gymnasium-style callable ``observation -> action`` as a :class:`Policy` (no state of its own)."""

    def __init__(self, function: Callable[[np.ndarray], Any], to_vector: Callable[[Any], np.ndarray]) -> None:
        self.function, self.to_vector = function, to_vector

    def reset(self, seed: int) -> None:
        reset = getattr(self.function, "reset", None)
        if callable(reset):
            reset(seed)

    def act(self, frame: np.ndarray, truth: FrameTruth | None = None) -> np.ndarray:
        return self.to_vector(self.function(frame))


def load_callable(spec: str) -> Callable[[np.ndarray], Any]:
    """``module:function`` → the function (``module`` importable, or a path to a .py file)."""
    module_name, _, name = spec.rpartition(":")
    try:
        if module_name.endswith(".py"):
            loaded = importlib.util.spec_from_file_location(Path(module_name).stem, module_name)
            if loaded is None or loaded.loader is None:
                raise ImportError(f"cannot load {module_name}")
            module = importlib.util.module_from_spec(loaded)
            loaded.loader.exec_module(module)
        else:
            module = importlib.import_module(module_name)
        function = getattr(module, name)
    except (ImportError, AttributeError, OSError) as exc:
        raise InputError(f"--policy {spec!r}: cannot load it ({exc})") from exc
    if not callable(function):
        raise InputError(f"--policy {spec!r}: {name} is not callable")
    return function


def dream(
    out: Path,
    world: World,
    *,
    policy: str | Callable[[np.ndarray], Any] = "explore",
    episodes: int = 8,
    steps: int = 300,
    seed: int = 0,
    start: Any = None,
    reward: RewardFunction | str | Path | None = None,
    checkpoint: Path | None = None,
    video: VideoSettings | None = None,
    progress: bool = True,
) -> DreamResult:
    """Dream until ``out`` holds ``episodes`` episodes of at most ``steps`` frames (see the module docstring).

    ``world`` runs ``world.batch_size`` episodes at once; ``checkpoint`` (where it came from) names
    it in the metadata and finds its reward model (``<checkpoint>/reward``) when ``reward`` is None.
    """
    if episodes < 1 or steps < 1:
        raise InputError(f"episodes and steps must be ≥ 1; got {episodes} and {steps}")
    space, size = world.action_space, world.image_size
    adapter = action_adapter(space, world.dynamics.config.scales)
    reward_function = resolve_reward(reward, checkpoint)
    batch = WorldBatch(world, adapter=adapter, reward=reward_function, start=start, max_steps=None)
    named = policy if isinstance(policy, str) else getattr(policy, "__name__", type(policy).__name__)
    if isinstance(policy, str) and ":" in policy and not Path(policy).is_file():
        policy = load_callable(policy)
    policies: list[Policy] = [
        load_policy(policy, space)
        if isinstance(policy, str)
        else CallablePolicy(policy, lambda action: adapter.vectors(action, 1)[0])
        for _ in range(batch.count)
    ]
    if any(p.needs_truth for p in policies):
        raise InputError(
            f"--policy {named!r} reads the engine's ground truth (where the monsters are), which a world does not have"
        )
    from wm_video.play.start import dataset_info

    ours = lerobot.ours_path(Path(out))
    if (
        ours.is_file()
        and lerobot.read_json(ours, "meta/wm_video.json").get("source", {}).get("source") != GENERATED_SOURCE
    ):
        raise InputError(f"{out}: holds real footage; dream into a new folder (or one dream wrote)")
    fps = dataset_info(world.meta, space.names).fps
    source = {
        "source": GENERATED_SOURCE,
        "generated": True,
        "checkpoint": str(checkpoint) if checkpoint is not None else world.meta.get("checkpoint"),
        "policy": str(named),
        "reward": str(reward)
        if isinstance(reward, str | Path)
        else getattr(reward_function, "__name__", "model"),
        "seed": seed,
        "steps": steps,
    }
    columns = {REWARD_KEY: lerobot.scalar_feature("float32"), DONE_KEY: lerobot.scalar_feature("bool")}
    started = time.perf_counter()
    with DatasetWriter(
        out,
        fps=fps,
        action_space=space,
        frame_shape=(size, size, 3),
        task=f"dreamed in {source['checkpoint']}",
        video=video,
        source_info=source,
        columns=columns,
    ) as writer:
        first = writer.num_episodes
        todo = list(range(first, episodes))
        running: dict[int, int] = {}  # world → episode it plays
        recorded: dict[int, tuple[list[np.ndarray], list[np.ndarray], list[float], list[bool]]] = {}
        finished: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = {}
        written, frames_written, rewards, ended = 0, 0, 0.0, 0

        def begin(w: int) -> None:
            episode = todo.pop(0)
            running[w] = episode
            batch.rngs[w] = np.random.default_rng(seed + episode)
            batch.reset([w])
            policies[w].reset(seed + episode)
            recorded[w] = ([], [], [], [])

        for w in range(min(batch.count, len(todo))):
            begin(w)
        idle = [w for w in range(batch.count) if w not in running]
        if idle:  # worlds with no episode to play still step with the batch: give them a start
            batch.reset(idle)
        bar = tqdm(total=len(todo) + len(running), desc="dreaming", unit="episode", disable=not progress)
        while running:
            vectors = np.zeros((batch.count, space.size), np.float32)
            for w in running:
                frame = batch.frames[w].copy()
                vectors[w] = policies[w].act(frame)
                recorded[w][0].append(frame)
                recorded[w][1].append(vectors[w].copy())
            result, _ = batch.step_vectors(vectors)
            for w in list(running):
                frames, actions, got, done = recorded[w]
                got.append(float(result.reward[w]))
                done.append(bool(result.terminated[w]))
                if done[-1] or len(frames) >= steps or policies[w].exhausted:
                    finished[running.pop(w)] = (
                        np.stack(frames),
                        np.stack(actions),
                        np.asarray(got, np.float32),
                        np.asarray(done, bool),
                    )
                    if todo:
                        begin(w)
            while writer.num_episodes in finished:  # commit in episode order
                frames_, actions_, got_, done_ = finished.pop(writer.num_episodes)
                writer.write_episode(frames_, actions_, {REWARD_KEY: got_, DONE_KEY: done_})
                written, frames_written = written + 1, frames_written + len(frames_)
                rewards, ended = rewards + float(got_.sum()), ended + int(done_[-1])
                bar.update(1)
        bar.close()
        total = writer.num_episodes
    return DreamResult(
        Path(out),
        written,
        frames_written,
        time.perf_counter() - started,
        total,
        rewards / max(written, 1),
        ended,
    )
