"""The real footage an evaluation scores: clips from a dataset's held-out episodes, or live ones.

Design choices:
- Everything downstream (teacher forcing, drift, controllability, action accuracy) reads one
  :class:`EvalClips`: uint8 frames (B, T, H, W, 3) and the actions taken at them (B, T, A),
  action t being the keys held while the engine made frame t + 1 (as ``collect`` records).
- Dataset clips come from the frame cache (:func:`~wm_video.data.cache.load_cache`) through
  the training :class:`~wm_video.data.sampler.ClipSampler`, so a seed picks the same clips.
  Each carries the frames of its episode before it (``history``, up to the tokenizer's
  ``encoder_reach``): a world reset from the clip reads them, so its context gets the tokens the
  token cache gave the same frames in training. Live clips start at an episode's first frame.
- Live clips are played on the real engine under an action program (``explore``, ``random`` or
  a JSONL script): episode i is reset with ``seed + i`` for both the engine and the policy, and
  ViZDoom is deterministic for a seed and action sequence, so a seed gives the same frames.
- :class:`EngineSpec` names a real engine ("vizdoom:my_way_home"); a dataset written by
  ``wm-video collect`` records its engine in ``meta/wm_video.json``, which the loop-closure test
  uses when no ``--live`` engine is given.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from wm_video.data.cache import EpisodeRows, TrainingCache
from wm_video.data.sampler import ClipSampler
from wm_video.errors import InputError
from wm_video.sources import SOURCES, TRUTH_SOURCES, Source, make_source
from wm_video.sources.policies import load_policy, policy_needs_truth


class EvalInterrupted(Exception):
    """Raised inside an evaluation loop when SIGINT/SIGTERM asked it to stop."""


def check_stop(stop: Callable[[], bool] | None) -> None:
    """Raise :class:`EvalInterrupted` when ``stop`` says so (called at every loop step)."""
    if stop is not None and stop():
        raise EvalInterrupted


@dataclass(frozen=True)
class EvalClips:
    frames: np.ndarray  # (B, T, H, W, 3) uint8
    actions: np.ndarray  # (B, T, A) float32: action t was held while frame t + 1 was made
    episodes: np.ndarray  # (B,) int64: dataset episode index, or the live episode's seed
    starts: np.ndarray  # (B,) int64: first frame within the episode
    origin: str  # one line for the report: where the clips came from
    history: tuple[np.ndarray, ...] | None = None  # per clip (H′_b, H, W, 3): its episode's frames before it

    def __post_init__(self) -> None:
        if (
            self.frames.ndim != 5
            or self.frames.dtype != np.uint8
            or self.frames.shape[:2] != self.actions.shape[:2]
        ):
            raise InputError(
                f"clips need uint8 frames (B, T, H, W, 3) and actions (B, T, A); got "
                f"{self.frames.dtype} {self.frames.shape} and {self.actions.shape}"
            )

    @property
    def count(self) -> int:
        return int(self.frames.shape[0])

    @property
    def length(self) -> int:
        return int(self.frames.shape[1])


def clips_from_cache(
    cache: TrainingCache,
    episodes: list[int],
    count: int,
    length: int,
    *,
    seed: int,
    origin: str,
    history_frames: int = 0,
) -> EvalClips:
    """``count`` clips of ``length`` frames from ``episodes`` of a frame cache, chosen by ``seed``,
    each with up to ``history_frames`` frames of its episode before it."""
    batch = ClipSampler(cache, length, seed=seed, episodes=episodes).sample_batch(count)
    history = clip_history(cache, cache.frames, batch.episode, batch.start, history_frames)
    return EvalClips(batch.frames, batch.actions.astype(np.float32), batch.episode, batch.start, origin, history)


def clip_history(
    table: EpisodeRows, pixels: np.ndarray, episodes: np.ndarray, starts: np.ndarray, frames: int
) -> tuple[np.ndarray, ...]:
    """Per clip (episode index, first frame), the last ``frames`` frames of its episode before it
    (fewer near the episode's start), from ``pixels`` (N, H, W, 3): the frame rows of ``table``."""
    rows = table.rows_of(episodes, starts)
    return tuple(np.array(pixels[row - min(frames, int(s)) : row]) for row, s in zip(rows, starts, strict=True))


@dataclass(frozen=True)
class EngineSpec:
    """A real engine to play: source name, scenario (None: its default), size, frame skip."""

    source: str
    scenario: str | None
    size: int
    frame_skip: int | None = None
    seed: int = 0  # a collected dataset's base seed: its episode i was played from seed + i

    def __str__(self) -> str:
        return f"{self.source}:{self.scenario}" if self.scenario else self.source

    def open(self, *, ground_truth: bool = False) -> Source:
        """Start the engine; ``ground_truth`` also records what it knows per frame, where it can."""
        extra = {"ground_truth": True} if ground_truth and self.source in TRUTH_SOURCES else {}
        return make_source(
            self.source, scenario=self.scenario, size=self.size, frame_skip=self.frame_skip, **extra
        )


def parse_engine(text: str, size: int, frame_skip: int | None = None) -> EngineSpec:
    """``vizdoom``, ``vizdoom:SCENARIO`` (``vizdoom:freedoom1:E1M1``) or ``atari:GAME``."""
    source, _, scenario = text.partition(":")
    if source not in SOURCES:
        raise InputError(f"--live: unknown engine {source!r}; write one of {sorted(SOURCES)}[:SCENARIO]")
    return EngineSpec(source, scenario or None, size, frame_skip)


def engine_of_dataset(root: Path, size: int) -> EngineSpec | None:
    """The engine a ``wm-video collect`` dataset was recorded from (meta/wm_video.json), or None."""
    import json

    path = Path(root) / "meta" / "wm_video.json"
    try:
        recorded = json.loads(path.read_text()).get("source")
    except (OSError, ValueError):
        return None
    if not isinstance(recorded, dict) or recorded.get("source") not in SOURCES:
        return None
    # ViZDoom records "scenario" and "frame_skip", Atari "game" and "frameskip" (their config fields)
    scenario = recorded.get("scenario") or recorded.get("game")
    skip = recorded.get("frame_skip", recorded.get("frameskip"))
    seed = recorded.get("seed")
    return EngineSpec(
        str(recorded["source"]),
        str(scenario) if scenario else None,
        size,
        int(skip) if isinstance(skip, int) else None,
        int(seed) if isinstance(seed, int) else 0,
    )


def check_engine_actions(source: Source, action_names: tuple[str, ...], what: str) -> None:
    if tuple(source.action_space.names) != tuple(action_names):
        raise InputError(
            f"{what}: the engine's actions {list(source.action_space.names)} are not the model's "
            f"{list(action_names)}; evaluate on the engine the model was trained on"
        )


def collect_live(
    engine: EngineSpec,
    policy_spec: str,
    *,
    episodes: int,
    length: int,
    seed: int,
    action_names: tuple[str, ...],
    stop: Callable[[], bool] | None = None,
) -> EvalClips:
    """Play ``episodes`` episodes of ``length`` frames on the real engine under ``policy_spec``.

    Episode i uses seed ``seed + i``. An episode the game ends early (death, exit) is an error
    naming its seed: shorten ``length`` (``--horizon``) or pick another seed.
    """
    frames = np.empty((episodes, length, engine.size, engine.size, 3), dtype=np.uint8)
    actions = np.empty((episodes, length, len(action_names)), dtype=np.float32)
    with engine.open(ground_truth=policy_needs_truth(policy_spec)) as source:  # hunt aims with it
        check_engine_actions(source, action_names, f"--live {engine}")
        policy = load_policy(policy_spec, source.action_space)
        for i in range(episodes):
            frame = source.reset(seed + i)
            policy.reset(seed + i)
            for t in range(length):
                check_stop(stop)
                action = policy.act(frame, source.truth() if policy.needs_truth else None)
                frames[i, t], actions[i, t] = frame, action
                if t + 1 < length:
                    result = source.step(action)
                    if result.done:
                        raise InputError(
                            f"--live {engine}: episode with seed {seed + i} ended after {t + 1} frames, "
                            f"before the {length} needed; lower --horizon or change --seed"
                        )
                    frame = result.frame
    origin = f"live {engine} under '{policy_spec}', {episodes} episodes (seeds {seed}…{seed + episodes - 1})"
    return EvalClips(frames, actions, np.arange(seed, seed + episodes), np.zeros(episodes, np.int64), origin)
