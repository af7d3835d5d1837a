"""Collecting footage: engines in worker processes, episodes committed in order.

Design choices:
- Episode i of a dataset (its global index) uses seed ``seed + i`` for both the engine and the
  policy, so a dataset is a pure function of the command, whatever the number of workers and
  however often the run was interrupted and resumed.
- ``episodes`` is the TOTAL the dataset should hold: rerunning an interrupted command finishes
  the job, rerunning a finished one does nothing.
- Each worker process ("spawn" context) keeps one engine alive across episodes (starting
  ViZDoom costs ~0.3 s) and encodes its episode's mp4 straight into the writer's staging
  folder; only the path and the actions travel back. The main process commits episodes in
  episode order (a small reorder buffer), and a commit is atomic in the writer, so Ctrl-C
  loses at most the episodes in flight.
- A hand-rolled pool rather than ``multiprocessing.Pool``: when an engine segfaults, Pool
  silently replaces the worker and waits forever for its result; here the run stops with an
  error naming the exit code.
- Nothing outlives a killed collection: each worker asks the kernel for SIGTERM when the main
  process dies (even by SIGKILL), which closes its engine, and each ViZDoom engine is killed
  when its own parent dies (:mod:`wm_video.sources.vizdoom`).
- One worker runs in-process (no start-up cost), through the same episode code.
- Recording: for t < steps, frame_t is recorded, the policy picks action_t from it (recorded),
  the engine steps. With ground truth (ViZDoom; on by default) the engine's knowledge of
  frame_t and the reward and end of action_t are recorded too (:mod:`wm_video.data.truth`),
  the class maps encoded by the worker beside the frames. The episode stops early when the
  engine says done or a scripted policy runs out, so frames and actions always have equal
  length; actions[t] leads to frame t+1.
"""

from __future__ import annotations

import itertools
import multiprocessing
import os
import pickle
import queue
import signal
import sys
import threading
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, is_dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from wm_video.data.truth import EpisodeTruth, TruthRecorder
from wm_video.data.video import VideoSettings, encode_video
from wm_video.data.writer import DatasetWriter
from wm_video.errors import InputError
from wm_video.signals import die_with_parent
from wm_video.sources import DEFAULT_SOURCE, TRUTH_SOURCES, make_source
from wm_video.sources.base import Source
from wm_video.sources.policies import Policy, load_policy, policy_needs_truth
from wm_video.sources.truth import FrameTruth


@dataclass(frozen=True)
class CollectResult:
    episodes_written: int  # by this run
    frames_written: int  # by this run
    seconds: float
    frames_per_second: float
    out: Path
    total_episodes: int = 0  # in the dataset after this run


@dataclass(frozen=True)
class _SourceSpec:
    """Everything a worker needs to rebuild the engine, the policy and the encoder."""

    source: str
    scenario: str | None
    size: int
    frame_skip: int | None
    source_options: dict[str, Any]
    policy: str
    steps: int
    video: VideoSettings
    ground_truth: bool = False


@dataclass(frozen=True)
class _Job:
    episode: int
    seed: int
    video_path: Path


@dataclass(frozen=True)
class _EpisodeOutput:
    episode: int
    video_path: Path
    actions: np.ndarray  # (T, action size) float32
    truth: EpisodeTruth | None = None
    policy: str = ""  # the policy that played it (a mix's draw)
    error: str | None = None  # a worker's failure, formatted
    exception: BaseException | None = field(default=None, compare=False)


class _EpisodeRunner:
    """One engine and one policy, reused for every episode a worker runs."""

    def __init__(self, spec: _SourceSpec) -> None:
        self.spec = spec
        # A policy that aims with the truth gets the engine's truth even when none is recorded
        # (the labels buffer changes no rendered frame).
        self.reads_truth = policy_needs_truth(spec.policy)
        if self.reads_truth and spec.source not in TRUTH_SOURCES:
            raise InputError(
                f"policy {spec.policy!r}: hunt needs the engine's ground truth (the monsters in view), "
                f"which only {sorted(TRUTH_SOURCES)} gives; source {spec.source!r} does not"
            )
        self.source = make_source(
            spec.source,
            scenario=spec.scenario,
            size=spec.size,
            frame_skip=spec.frame_skip,
            **spec.source_options,
            **({"ground_truth": True} if spec.ground_truth or self.reads_truth else {}),
        )
        self.policy: Policy = load_policy(spec.policy, self.source.action_space)

    def _frames(
        self, seed: int, actions: list[np.ndarray], truth: TruthRecorder | None
    ) -> Iterator[np.ndarray]:
        frame = self.source.reset(seed)
        self.policy.reset(seed)
        for _ in range(self.spec.steps):
            if self.policy.exhausted:
                return
            known = _known(self.source) if truth is not None or self.reads_truth else None
            action = self.policy.act(frame, known)
            actions.append(action)
            if truth is not None and known is not None:
                truth.add_frame(known)
            yield frame  # the encoder writes frame_t before the engine makes frame_t+1
            result = self.source.step(action)
            if truth is not None:
                truth.add_step(result.reward, result.done)
            if result.done:
                return
            frame = result.frame

    def run(self, job: _Job) -> _EpisodeOutput:
        actions: list[np.ndarray] = []
        truth = None
        if self.spec.ground_truth:
            labels = job.video_path.with_suffix(".labels.mp4")
            truth = TruthRecorder(labels, self.source.fps, self.source.frame_shape[0])
        frames = encode_video(
            job.video_path, self._frames(job.seed, actions, truth), self.source.fps, self.spec.video
        )
        if frames != len(actions):
            raise RuntimeError(f"episode {job.episode}: encoded {frames} frames for {len(actions)} actions")
        episode_truth = truth.finish() if truth is not None else None
        return _EpisodeOutput(
            job.episode,
            job.video_path,
            np.stack(actions).astype(np.float32),
            episode_truth,
            self.policy.current,
        )

    def close(self) -> None:
        self.source.close()


def _known(source: Source) -> FrameTruth:
    truth = source.truth()
    if truth is None:
        raise RuntimeError(f"{source.task}: the engine gave no ground truth for a frame")
    return truth


def _worker_main(spec: _SourceSpec, jobs: Any, results: Any, parent: int) -> None:
    """Worker process: run jobs until the None sentinel; report a failure instead of dying."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the main process decides what Ctrl-C does
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # so `finally` closes the engine
    die_with_parent(signal.SIGTERM, parent=parent)  # a SIGKILLed collect leaves no worker behind
    import cv2

    cv2.setNumThreads(1)
    runner, job = None, None
    try:
        runner = _EpisodeRunner(spec)
        while (job := jobs.get()) is not None:
            results.put(runner.run(job))
    except Exception as exc:
        sendable: BaseException | None = exc
        try:  # send the exception itself when it pickles (InputError, DatasetError...)
            pickle.dumps(exc)
        except Exception:
            sendable = None
        episode = job.episode if job is not None else -1
        results.put(
            _EpisodeOutput(episode, Path(), np.zeros((0, 0)), None, "", traceback.format_exc(), sendable)
        )
    finally:
        if runner is not None:
            runner.close()


class _WorkerPool:
    """N processes fed from one job queue; results come back in job order.

    At most two jobs per worker are queued at a time, which bounds the reorder buffer and
    keeps the job pipe from filling up.
    """

    def __init__(self, spec: _SourceSpec, workers: int) -> None:
        context = multiprocessing.get_context("spawn")
        self._jobs = context.Queue()
        self._results = context.Queue()
        self._processes = [
            context.Process(
                target=_worker_main, args=(spec, self._jobs, self._results, os.getpid()), daemon=True
            )
            for _ in range(workers)
        ]
        for process in self._processes:
            process.start()

    def run(self, jobs: list[_Job]) -> Iterator[_EpisodeOutput]:
        unsent = iter(jobs)
        for job in itertools.islice(unsent, 2 * len(self._processes)):
            self._jobs.put(job)
        arrived: dict[int, _EpisodeOutput] = {}
        for job in jobs:
            while job.episode not in arrived:
                output = self._next_result()
                arrived[output.episode] = output
                following = next(unsent, None)
                if following is not None:
                    self._jobs.put(following)
            yield arrived.pop(job.episode)

    def _next_result(self) -> _EpisodeOutput:
        while True:
            try:
                output: _EpisodeOutput = self._results.get(timeout=0.5)
            except queue.Empty:
                dead = [p.exitcode for p in self._processes if p.exitcode not in (None, 0)]
                if dead:
                    raise RuntimeError(
                        f"a collection worker died (exit code {dead[0]}; negative: killed by that signal)"
                    ) from None
                continue
            if output.error is None:
                return output
            if output.exception is not None:
                raise output.exception
            raise RuntimeError(f"collection worker failed (episode {output.episode}):\n{output.error}")

    def close(self, *, wait: bool) -> None:
        """Stop the workers: idle ones exit on the sentinel; busy ones (or all, unless ``wait``)
        get SIGTERM, which closes their engines."""
        for _ in self._processes:
            self._jobs.put(None)
        deadline = time.monotonic() + (2.0 if wait else 0.0)
        for process in self._processes:
            process.join(timeout=max(deadline - time.monotonic(), 0.0))
        for process in self._processes:
            if process.is_alive():
                process.terminate()
                process.join(timeout=10)
            if process.is_alive():
                process.kill()
                process.join()
        self._jobs.cancel_join_thread()  # unread jobs must not block interpreter exit


@contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM (a scheduler stopping the job) stops collection exactly as Ctrl-C does."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def collect(
    out: Path,
    *,
    source: str = DEFAULT_SOURCE,
    scenario: str | None = None,
    episodes: int,
    steps: int,
    seed: int = 0,
    size: int = 64,
    frame_skip: int | None = None,
    workers: int = 2,
    policy: str = "explore",
    progress: bool = True,
    video: VideoSettings | None = None,
    source_options: dict[str, Any] | None = None,
    ground_truth: bool = True,
) -> CollectResult:
    """Fill the dataset at ``out`` until it holds ``episodes`` episodes of at most ``steps`` frames.

    ``episodes`` is the total, not the number to add: an existing dataset is appended to
    (its fps, actions and frame shape must match), and one that already holds ``episodes``
    is left as it is. Episode i uses seed ``seed + i``. ``policy`` is "explore", "random", "hunt"
    (ViZDoom only), a JSONL action script or a per-episode mix "mix:hunt=0.6,explore=0.4"; each
    episode's policy is recorded in its row of the episode table. ``source_options`` are extra config fields of the source (e.g.
    ``{"render_hud": True}``). ``ground_truth`` records what the engine knows per frame where the
    source gives it (ViZDoom; :mod:`wm_video.data.truth`). Ctrl-C stops the workers and keeps
    every committed episode, then raises KeyboardInterrupt.
    """
    for name, value, least in (("episodes", episodes, 1), ("steps", steps, 1), ("workers", workers, 1)):
        if not isinstance(value, int) or value < least:
            raise InputError(f"{name} must be a whole number ≥ {least}; got {value!r}")
    if not isinstance(seed, int) or seed < 0:
        raise InputError(f"seed must be a whole number ≥ 0; got {seed!r}")
    started = time.perf_counter()
    spec = _SourceSpec(
        source,
        scenario,
        size,
        frame_skip,
        dict(source_options or {}),
        policy,
        steps,
        video or VideoSettings(),
        ground_truth and source in TRUTH_SOURCES,
    )
    local = _EpisodeRunner(spec)  # validates source, scenario and policy before anything is written
    try:
        writer = _open_writer(Path(out), local.source, spec, seed)
    except BaseException:
        local.close()
        raise
    first = writer.num_episodes
    jobs = [_Job(i, seed + i, writer.staging_path(i)) for i in range(first, episodes)]
    if not jobs:
        local.close()
        writer.close()
        print(f"{out}: already holds {first} episodes (asked for {episodes}); nothing to do", file=sys.stderr)
        return CollectResult(0, 0, time.perf_counter() - started, 0.0, Path(out), first)
    bar = tqdm(total=len(jobs) * steps, unit="frame", disable=not progress, dynamic_ncols=True)
    pool: _WorkerPool | None = None
    written = frames = 0
    finished = False
    try:
        with _sigterm_as_interrupt():
            if min(workers, len(jobs)) > 1:
                local.close()
                pool = _WorkerPool(spec, min(workers, len(jobs)))
            for output in pool.run(jobs) if pool is not None else map(local.run, jobs):
                writer.commit_episode(output.video_path, output.actions, output.truth, policy=output.policy)
                written, frames = written + 1, frames + len(output.actions)
                bar.total -= steps - len(output.actions)  # the episode ended early
                bar.update(len(output.actions))
                rate = frames / max(time.perf_counter() - started, 1e-9)
                bar.set_postfix(episodes=f"{first + written}/{episodes}", fps=f"{rate:.0f}")
        finished = True
    except BaseException:
        bar.write(
            f"{out}: stopped; the dataset holds {writer.num_episodes} episodes; rerun to continue",
            file=sys.stderr,
        )
        raise
    finally:
        bar.close()
        if pool is not None:
            pool.close(wait=finished)
        local.close()
        writer.close()
    seconds = time.perf_counter() - started
    return CollectResult(written, frames, seconds, frames / seconds, Path(out), writer.num_episodes)


def _open_writer(out: Path, engine: Source, spec: _SourceSpec, seed: int) -> DatasetWriter:
    """Create the dataset, or open it for appending (the writer checks fps, actions and shape)."""
    config = getattr(engine, "config", None)
    info = {
        "source": spec.source,
        **(asdict(config) if is_dataclass(config) and not isinstance(config, type) else {}),
        "policy": spec.policy,
        "seed": seed,
    }
    if "ground_truth" in info:  # recorded or not: the engine computes it for a hunt policy either way
        info["ground_truth"] = spec.ground_truth
    return DatasetWriter(
        out,
        fps=engine.fps,
        action_space=engine.action_space,
        frame_shape=engine.frame_shape,
        task=engine.task,
        video=spec.video,
        source_info=info,
        ground_truth=spec.ground_truth,
    )
