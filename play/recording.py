"""Recording a play session (F5, ``--record``) as a dataset episode and as a video to watch.

Design choices:
- The dataset gets what a player saw and did, in the collection convention: frame *t* with the
  action taken while it was on screen. It is written by the project's own
  :class:`~wm_video.data.writer.DatasetWriter` (streaming, atomic commit per episode, appending
  to an existing folder), so a session becomes training or evaluation data and passes
  ``wm-video inspect``. Its ``source`` says it was generated, by which checkpoint.
- The mp4 shows what the window shows (generated, or real | generated in shadow mode), scaled
  up by an integer factor with nearest neighbour so it plays well, in H.264 yuv420p.
- Either part is optional: headless ``--record OUT.mp4`` writes only the video.
- The mp4 is written beside its name and renamed into place when finished, so a recording that
  fails (a full disk) leaves nothing half-written; a scale whose frames cannot fit in memory is
  refused before the first frame.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from wm_video.actions import ActionSpace
from wm_video.cli_args import counted
from wm_video.data.video import VideoEncoder, VideoSettings
from wm_video.data.writer import DatasetWriter, EpisodeRecorder
from wm_video.errors import InputError
from wm_video.memory import check_fits

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RecordingResult:
    """What one recording wrote."""

    frames: int
    dataset: Path | None
    episode: int | None  # index of the committed episode in ``dataset``
    video: Path | None

    def describe(self) -> str:
        """One line for a player: ``saved 42 frames: episode 3 of recordings/dataset, video recordings/play-….mp4``."""
        if not self.frames:
            return "nothing recorded (no frame was played)"
        parts = []
        if self.dataset is not None:
            parts.append(f"episode {self.episode} of {self.dataset}")
        if self.video is not None:
            parts.append(f"video {self.video}")
        return f"saved {counted(self.frames, 'frame')}: {', '.join(parts) or 'nothing written'}"


def upscale(frame: np.ndarray, scale: int) -> np.ndarray:
    """(H, W, 3) → (H·scale, W·scale, 3), nearest neighbour."""
    return frame if scale == 1 else frame.repeat(scale, axis=0).repeat(scale, axis=1)


class SessionRecorder:
    """Streams (frame, action, picture shown) triples into a dataset episode and/or an mp4."""

    def __init__(
        self,
        *,
        fps: float,
        space: ActionSpace,
        frame_shape: tuple[int, int, int],
        dataset: Path | None = None,
        video: Path | None = None,
        video_scale: int = 4,
        source_info: dict[str, Any] | None = None,
    ) -> None:
        if dataset is None and video is None:
            raise InputError("a recording needs a dataset folder, a video file, or both")
        if video is not None and video.suffix.lower() != ".mp4":
            raise InputError(f"{video}: recordings are written as .mp4 files")
        if video_scale < 1:
            raise InputError(f"video scale must be an integer ≥ 1, got {video_scale}")
        if video is not None:  # the encoder holds a few dozen frames; 8 of them is a lower bound
            height, width = frame_shape[0] * video_scale, frame_shape[1] * video_scale
            check_fits(
                8 * height * width * 3,
                f"a --video-scale {video_scale} recording ({width}×{height} pixels a frame)",
                "lower --video-scale",
            )
        self.fps, self.video_scale = fps, video_scale
        self.video_path = video
        # written beside the target and renamed when finished: a failed recording leaves nothing
        self._partial = video.with_name(f".{video.name}.partial.mp4") if video is not None else None
        self.frames = 0
        self._writer: DatasetWriter | None = None
        self._episode: EpisodeRecorder | None = None
        if dataset is not None:
            self._writer = DatasetWriter(
                dataset,
                fps=fps,
                action_space=space,
                frame_shape=frame_shape,
                task="wm-video play",
                source_info=source_info,
            )
            self._episode = self._writer.recorder()
        if video is not None:
            video.parent.mkdir(parents=True, exist_ok=True)
        self._encoder: VideoEncoder | None = None

    def add(self, frame: np.ndarray, action: np.ndarray, shown: np.ndarray | None = None) -> None:
        """Frame *t* (the model's size) with the action taken at it, and the picture shown (default: the frame)."""
        if self._episode is not None:
            self._episode.add(frame, action)
        if self.video_path is not None:
            picture = upscale(frame if shown is None else shown, self.video_scale)
            if self._encoder is None:
                assert self._partial is not None
                height, width = picture.shape[:2]
                self._encoder = VideoEncoder(
                    self._partial,
                    fps=self.fps,
                    width=width + width % 2,
                    height=height + height % 2,
                    settings=VideoSettings(codec="h264-yuv420", crf=18),
                )
            if picture.shape[0] % 2 or picture.shape[1] % 2:  # yuv420p needs even sides
                picture = np.pad(picture, ((0, picture.shape[0] % 2), (0, picture.shape[1] % 2), (0, 0)))
            self._encoder.write(picture)
        self.frames += 1

    def finish(self) -> RecordingResult:
        """Commit the episode and close the video; a recording without frames writes nothing.
        If closing the video fails (a full disk), nothing of the recording is kept."""
        episode = None
        if self._encoder is not None:
            try:
                self._encoder.close()
            except BaseException:
                self._encoder = None
                self.discard()
                raise
            self._encoder = None
            assert self._partial is not None and self.video_path is not None
            os.replace(self._partial, self.video_path)
        video = self.video_path if self.video_path is not None and self.frames else None
        if self._writer is not None and self._episode is not None:
            try:
                if len(self._episode):
                    episode = self._episode.finish()
                else:
                    self._episode.discard()
            finally:
                self._writer.close()
        return RecordingResult(
            frames=self.frames,
            dataset=self._writer.root if self._writer is not None and episode is not None else None,
            episode=episode,
            video=video,
        )

    def discard(self) -> None:
        """Drop everything (after an error): nothing half-written stays behind in the dataset."""
        if self._episode is not None:
            self._episode.discard()
        if self._writer is not None:
            self._writer.close()
        if self._encoder is not None:
            try:
                self._encoder.close()
            except Exception:  # e.g. the disk filled up: nothing of it is kept anyway
                pass
            self._encoder = None
        if self._partial is not None:
            self._partial.unlink(missing_ok=True)
