"""One play session over a :class:`~wm_video.engine.World`: step, reset, rewind, record, shadow.

The window and the headless runner both drive this object; it draws nothing and never imports
pygame, so its behaviour is tested without a display.

Design choices:
- **Rewind** keeps a snapshot of the world (:meth:`World.snapshot`, device copies of its
  caches, 9.4 MiB for ``tiny``) every second of play, for the last ``rewind_seconds``; rewinding
  restores the oldest one, and pressing again returns to the same point. The ring is bounded,
  so memory stays flat however long the session runs.
- **Shadow**: the real engine steps beside the model with the same action each frame. Its last
  ``context_frames`` frames and actions are kept (and ``history_frames`` frames before them, for
  the tokenizer's encoder), so *resync* restarts the model from the real history (and does so by
  itself when the real episode ends). A real engine cannot rewind, so
  rewind is off in shadow mode.
- **Recording** starts and stops on demand (F5); rewind or reset while recording first commits
  the episode, so an episode is always one continuous stretch of play.
- Timing: ``model_ms`` is the wall time of :meth:`World.step` (dynamics, decoding, the copy of
  the frame to the host), the figure a player waits for; each step is a unit of ``"frame"`` work
  for the thread tuner (:mod:`wm_video.threads`). :meth:`PlaySession.generated_fps` is the rate
  at which generated frames arrived over the last seconds: what the player sees move, which
  falls to 0 while play is paused and below the target when the model is too slow.
"""

from __future__ import annotations

import collections
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from wm_video.engine import World, WorldSnapshot
from wm_video.errors import InputError
from wm_video.metrics import psnr
from wm_video.play.recording import RecordingResult, SessionRecorder
from wm_video.play.start import StartContext
from wm_video.sources.base import Source
from wm_video.threads import timed

RATE_SECONDS = 2.0  # generated_fps() counts the frames that arrived over this many seconds


@dataclass(frozen=True)
class Snapshot:
    frame_count: int
    frame: np.ndarray  # the picture shown at that point
    world: WorldSnapshot


class Shadow:
    """The real engine beside the model: same actions, its own frames, a short history for resyncs."""

    def __init__(self, source: Source, *, seed: int, context_frames: int, history_frames: int = 0) -> None:
        self.source, self.seed = source, seed
        self.context_frames = context_frames
        self.frames: collections.deque[np.ndarray] = collections.deque(maxlen=context_frames + history_frames)
        self.actions: collections.deque[np.ndarray] = collections.deque(maxlen=context_frames)
        self.frame = np.zeros(source.frame_shape, dtype=np.uint8)
        self.episodes = 0

    def reset(self) -> np.ndarray:
        self.frame = self.source.reset(self.seed + self.episodes)
        self.frames.clear()
        self.actions.clear()
        self.frames.append(self.frame)
        return self.frame

    def step(self, action: np.ndarray) -> bool:
        """Apply ``action``; True when the real episode ended (a new one has started)."""
        result = self.source.step(action)
        if result.done:
            self.episodes += 1
            self.reset()
            return True
        self.actions.append(action)
        self.frames.append(result.frame)
        self.frame = result.frame
        return False

    def context(self) -> StartContext:
        footage = np.stack(self.frames)
        frames, history = footage[-self.context_frames :], footage[: -self.context_frames]
        actions = np.stack(list(self.actions)[-(len(frames) - 1) :]) if len(frames) > 1 else None
        return StartContext(frames, actions, f"the real engine ({len(frames)} frames)", history)


def frame_psnr(generated: np.ndarray, real: np.ndarray) -> float:
    """PSNR (dB) of a generated frame against the real one, both (H, W, 3) uint8; capped at 99."""
    value = psnr(torch.from_numpy(generated).permute(2, 0, 1), torch.from_numpy(real).permute(2, 0, 1))
    return min(float(value), 99.0)


class PlaySession:
    """The state of one player's session; ``step(action)`` once per frame."""

    def __init__(
        self,
        world: World,
        start: StartContext,
        *,
        fps: float,
        rewind_seconds: float = 3.0,
        shadow: Shadow | None = None,
        source_info: dict[str, Any] | None = None,
    ) -> None:
        if not fps > 0:
            raise InputError(f"fps must be > 0, got {fps}")
        if rewind_seconds < 0:
            raise InputError(f"rewind seconds must be ≥ 0, got {rewind_seconds}")
        self.world, self.start, self.fps, self.shadow = world, start, fps, shadow
        self.snapshot_every = max(1, round(fps))
        self._snapshots: collections.deque[Snapshot] = collections.deque(
            maxlen=max(1, int(np.ceil(rewind_seconds))) + 1
        )
        self.rewind_enabled = rewind_seconds > 0 and shadow is None
        self.source_info = source_info or {}
        self.frame: np.ndarray = np.zeros((world.image_size, world.image_size, 3), dtype=np.uint8)
        self.frame_count = 0  # frames generated since the last reset (rewind moves it back)
        self.total_frames = 0  # frames generated in this session
        self.model_ms = 0.0
        self._arrivals: collections.deque[float] = collections.deque(maxlen=1024)
        self.psnr: float | None = None
        self.recorder: SessionRecorder | None = None
        self.reset()

    # -- the world -------------------------------------------------------------------------------
    @property
    def real_frame(self) -> np.ndarray | None:
        return self.shadow.frame if self.shadow is not None else None

    def picture(self) -> np.ndarray:
        """What a player sees: the generated frame, or real | generated side by side in shadow mode."""
        if self.shadow is None:
            return self.frame
        real: np.ndarray = self.shadow.frame
        if real.shape != self.frame.shape:
            import cv2

            real = cv2.resize(real, self.frame.shape[1::-1], interpolation=cv2.INTER_AREA)
        gap = np.zeros((self.frame.shape[0], max(1, self.frame.shape[1] // 32), 3), dtype=np.uint8)
        return np.concatenate((real, gap, self.frame), axis=1)

    def _restart(self, start: StartContext) -> None:
        self.frame = self.world.reset(start.frames, start.actions, history=start.history)
        self.frame_count = 0
        self._snapshots.clear()
        self._keep_snapshot()
        self.psnr = frame_psnr(self.frame, self.shadow.frame) if self.shadow is not None else None

    def reset(self) -> None:
        """Back to the start context (the real engine, in shadow mode, starts its next episode)."""
        self.stop_recording()
        if self.shadow is not None:
            self.shadow.reset()
            self._restart(self.shadow.context())
        else:
            self._restart(self.start)

    def resync(self) -> bool:
        """Shadow mode: restart the model from the real engine's recent frames and actions."""
        if self.shadow is None:
            return False
        self._restart(self.shadow.context())
        return True

    def step(self, action: np.ndarray) -> np.ndarray:
        """Apply ``action`` to the world (and the real engine) → the next generated frame."""
        action = np.asarray(action, dtype=np.float32)
        if self.recorder is not None:
            self.recorder.add(self.frame, action, self.picture())
        began = time.perf_counter()
        with timed("frame"):
            frame = self.world.step(action)
        now = time.perf_counter()
        self.model_ms = (now - began) * 1000.0
        self._arrivals.append(now)
        self.frame = frame
        self.frame_count += 1
        self.total_frames += 1
        if self.shadow is not None:
            if self.shadow.step(action):
                self._restart(self.shadow.context())  # the real episode ended: follow it
            self.psnr = frame_psnr(self.frame, self.shadow.frame)
        if self.frame_count % self.snapshot_every == 0:
            self._keep_snapshot()
        return self.frame

    def generated_fps(self, now: float | None = None) -> float:
        """Generated frames per second over the last :data:`RATE_SECONDS` (0 when none arrived)."""
        now = time.perf_counter() if now is None else now
        recent = [t for t in self._arrivals if now - t <= RATE_SECONDS]
        if len(recent) < 2:
            return 0.0
        # n frames arrived in the window: n − 1 intervals between the first and the last, plus the wait since
        return (len(recent) - 1) / max(now - recent[0], 1e-9)

    # -- rewind ----------------------------------------------------------------------------------
    def _keep_snapshot(self) -> None:
        if self.rewind_enabled:
            self._snapshots.append(Snapshot(self.frame_count, self.frame, self.world.snapshot()))

    def rewind(self) -> int:
        """Go back to the oldest kept snapshot (up to ``rewind_seconds`` ago); returns frames undone."""
        if not self._snapshots:
            return 0
        self.stop_recording()
        target = self._snapshots[0]
        self._snapshots.clear()
        self._snapshots.append(target)
        self.world.restore(target.world)
        undone = self.frame_count - target.frame_count
        self.frame, self.frame_count = target.frame, target.frame_count
        return undone

    # -- recording -------------------------------------------------------------------------------
    def start_recording(
        self, *, dataset: Path | None = None, video: Path | None = None, video_scale: int = 4
    ) -> None:
        self.stop_recording()
        self.recorder = SessionRecorder(
            fps=self.fps,
            space=self.world.action_space,
            frame_shape=self.frame.shape,  # type: ignore[arg-type]
            dataset=dataset,
            video=video,
            video_scale=video_scale,
            source_info={**self.source_info, "recorded_by": "wm-video play"},
        )

    def stop_recording(self) -> RecordingResult | None:
        """Commit the recording in progress (None when there is none)."""
        recorder, self.recorder = self.recorder, None
        return recorder.finish() if recorder is not None else None

    def close(self) -> RecordingResult | None:
        """Commit any recording and close the real engine."""
        try:
            return self.stop_recording()
        finally:
            if self.shadow is not None:
                self.shadow.source.close()
