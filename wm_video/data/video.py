"""Video files: writing episodes as mp4 with PyAV, and decoding them with clear errors.

Design choices:
- H.264 with full-resolution colour (libx264, yuv444p, crf 14) by default. At 64 px the usual
  yuv420p halves colour resolution to 32 px; on 2,332 frames of default-world footage it
  round-trips at 34.3 dB mean PSNR (worst frame 23.7 dB) against 37.7 dB (worst 31.3 dB) for
  yuv444p, at the same ~0.7 KB a frame. ``codec="h264-yuv420"`` writes yuv420p for players
  that need it; ``codec="lossless"`` writes libx264rgb at qp 0 (exact RGB round trip).
- A short keyframe interval (``gop``, default 16 frames) and no B-frames, so a reader can seek
  to any frame by decoding at most ``gop`` frames, and decode order equals display order.
- Frame ``i`` has pts ``i`` in a time base of 1/fps; fps may be fractional (ViZDoom 35/2).
- Every decoding failure becomes a :class:`DatasetError` naming the file (and the episode when
  the caller knows it) — never a raw ``av`` exception from deep inside a loader.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from av.video.reformatter import VideoReformatter
from av.video.stream import VideoStream

from wm_video.errors import DatasetError, InputError

CODECS = ("h264", "h264-yuv420", "lossless")


@dataclass(frozen=True)
class VideoSettings:
    """How episodes are encoded."""

    codec: str = "h264"  # "h264" (yuv444p), "h264-yuv420" (yuv420p) or "lossless" (RGB, exact)
    crf: int = 14  # H.264 quality: 0 best, 51 worst; ignored for lossless
    gop: int = 16  # keyframe interval in frames (random access cost)

    def __post_init__(self) -> None:
        if self.codec not in CODECS:
            raise InputError(f"video codec must be one of {CODECS}; got {self.codec!r}")
        if not 0 <= self.crf <= 51:
            raise InputError(f"crf must lie in 0..51; got {self.crf}")
        if self.gop < 1:
            raise InputError(f"gop (keyframe interval) must be ≥ 1; got {self.gop}")

    @property
    def codec_name(self) -> str:
        """Name written to meta/info.json (video.codec)."""
        return "h264"

    @property
    def pix_fmt(self) -> str:
        return {"h264": "yuv444p", "h264-yuv420": "yuv420p", "lossless": "rgb24"}[self.codec]


def fps_fraction(fps: float) -> Fraction:
    """fps as an exact fraction (17.5 → 35/2; 29.97 → 30000/1001)."""
    if not (fps > 0 and math.isfinite(fps)):
        raise InputError(f"fps must be a positive number; got {fps}")
    return Fraction(fps).limit_denominator(1001)


class VideoEncoder:
    """Streaming mp4 writer: ``write(frame)`` one (H, W, 3) uint8 frame at a time."""

    def __init__(self, path: Path, *, fps: float, width: int, height: int, settings: VideoSettings) -> None:
        if settings.codec == "h264-yuv420" and (width % 2 or height % 2):
            raise InputError(f"H.264 (yuv420p) needs even width and height; got {width}x{height}")
        self.path = Path(path)
        self.height, self.width = height, width
        self.frames_written = 0
        rate = fps_fraction(fps)
        self._container = av.open(str(self.path), mode="w", format="mp4")
        codec = "libx264rgb" if settings.codec == "lossless" else "libx264"
        options = {"g": str(settings.gop), "bf": "0", "keyint_min": "1", "preset": "veryfast"}
        options.update({"qp": "0"} if settings.codec == "lossless" else {"crf": str(settings.crf)})
        stream = self._container.add_stream(codec, rate=rate, options=options)
        assert isinstance(stream, VideoStream)
        self._stream = stream
        self._stream.width, self._stream.height = width, height
        self._stream.pix_fmt = settings.pix_fmt
        self._stream.time_base = 1 / rate
        self._stream.thread_count = 1  # workers run one encoder each; threads would oversubscribe

    def write(self, frame: np.ndarray) -> None:
        if frame.shape != (self.height, self.width, 3) or frame.dtype != np.uint8:
            raise InputError(
                f"{self.path}: frame {self.frames_written} has shape {frame.shape} {frame.dtype}; "
                f"expected ({self.height}, {self.width}, 3) uint8"
            )
        video_frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
        video_frame.pts = self.frames_written
        self._container.mux(self._stream.encode(video_frame))
        self.frames_written += 1

    def close(self) -> int:
        """Flush and close; returns the number of frames written."""
        self._container.mux(self._stream.encode(None))
        self._container.close()
        return self.frames_written

    def __enter__(self) -> VideoEncoder:
        return self

    def __exit__(self, exc_type: object, *rest: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self._container.close()


def encode_video(
    path: Path, frames: np.ndarray | Iterable[np.ndarray], fps: float, settings: VideoSettings
) -> int:
    """Write frames (T, H, W, 3) uint8 to an mp4; returns the number written."""
    iterator = iter(frames)
    try:
        first = next(iterator)
    except StopIteration:
        raise InputError(f"{path}: an episode needs at least one frame") from None
    height, width = first.shape[:2]
    with VideoEncoder(path, fps=fps, width=width, height=height, settings=settings) as encoder:
        encoder.write(first)
        for frame in iterator:
            encoder.write(frame)
    return encoder.frames_written


@dataclass(frozen=True)
class VideoProbe:
    path: Path
    width: int
    height: int
    fps: float
    frames: int | None  # from the container header; None when it does not say
    codec: str


def _open(path: Path, episode: int | None) -> av.container.InputContainer:
    path = Path(path)
    if not path.exists():
        raise DatasetError("video file is missing", path=path, episode=episode)
    if path.stat().st_size == 0:
        raise DatasetError("video file is empty (0 bytes)", path=path, episode=episode)
    try:
        container = av.open(str(path), mode="r")
    except (av.error.FFmpegError, OSError) as exc:
        raise DatasetError(
            f"cannot open video (truncated or not a video?): {exc}", path=path, episode=episode
        ) from exc
    if not container.streams.video:
        container.close()
        raise DatasetError("file has no video stream", path=path, episode=episode)
    return container


def probe_video(path: Path, episode: int | None = None) -> VideoProbe:
    """Header facts about a video without decoding it."""
    container = _open(path, episode)
    try:
        stream = container.streams.video[0]
        rate = stream.average_rate or stream.base_rate or stream.guessed_rate
        return VideoProbe(
            path=Path(path),
            width=stream.codec_context.width,
            height=stream.codec_context.height,
            fps=float(rate) if rate else float("nan"),
            frames=int(stream.frames) if stream.frames else None,
            codec=stream.codec_context.name,
        )
    finally:
        container.close()


def iter_video_frames(
    path: Path,
    *,
    episode: int | None = None,
    start_time: float = 0.0,
    max_frames: int | None = None,
) -> Iterator[np.ndarray]:
    """Decode RGB frames (H, W, 3) uint8, starting at the frame shown at ``start_time`` seconds.

    Seeks to the keyframe before ``start_time`` and skips frames before it, so a multi-episode
    file (LeRobot v3.0) can be read one episode at a time.
    """
    container = _open(path, episode)
    try:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        time_base = stream.time_base or Fraction(1, 90000)
        if start_time > 0:
            container.seek(int(start_time / time_base), stream=stream, backward=True, any_frame=False)
        half_frame = 0.5 / float(stream.average_rate or 30)
        to_rgb = VideoReformatter()  # one colour converter per file: ~4× faster than per frame
        produced = 0
        for frame in container.decode(stream):
            if frame.pts is not None and float(frame.pts * time_base) < start_time - half_frame:
                continue
            yield to_rgb.reformat(frame, format="rgb24").to_ndarray()
            produced += 1
            if max_frames is not None and produced >= max_frames:
                return
    except av.error.FFmpegError as exc:
        raise DatasetError(f"video cannot be decoded: {exc}", path=path, episode=episode) from exc
    finally:
        container.close()


def read_video(path: Path, *, episode: int | None = None) -> np.ndarray:
    """All frames of a video as (T, H, W, 3) uint8."""
    frames = list(iter_video_frames(path, episode=episode))
    if not frames:
        raise DatasetError("video holds no decodable frame", path=path, episode=episode)
    return np.stack(frames)
