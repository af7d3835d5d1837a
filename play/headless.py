"""Play without a window: a policy or an action file presses the keys, for automation and evaluation.

Design choices:
- The same :class:`~wm_video.play.session.PlaySession` as the window; actions come from
  :func:`~wm_video.sources.policies.load_policy` ("explore", "random" or a JSONL script, one
  ``{"buttons": [...]}`` per frame; a script that runs out presses nothing). A policy sees the
  generated frames, as a player would.
- ``frames`` steps of the world. A recording holds what was shown at each step with the action
  taken there (the collection convention): N frames, the start frame first, then N − 1
  generated ones, in the mp4 (``video``) and the dataset episode (``dataset``) alike.
- Ctrl-C and SIGTERM stop at a frame boundary and the run is reported and recorded up to there.
- Unpaced: it runs as fast as the model goes and reports the frames/s reached and the median
  model milliseconds per frame.
- Memory: resident memory (RSS, from /proc) after ``WARMUP_FRAMES`` frames and after the last, and the
  process's peak; with a bounded rewind ring and streaming writers it stays flat however many
  frames run (``--frames 10000`` is the soak).
"""

from __future__ import annotations

import logging
import resource
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from wm_video.errors import InputError
from wm_video.play.recording import RecordingResult
from wm_video.play.session import PlaySession
from wm_video.signals import StopFlag
from wm_video.sources.policies import Policy

log = logging.getLogger(__name__)

#: Resident memory is first read after this many frames: allocator pools, the rewind ring and the
#: writers' buffers have filled by then, so what grows afterwards is a leak.
WARMUP_FRAMES = 100


@dataclass(frozen=True)
class HeadlessResult:
    frames: int
    seconds: float
    model_ms_median: float
    model_ms_p90: float
    rss_start_bytes: int  # after ``warmup_frames`` frames (or all of them, if fewer)
    warmup_frames: int
    rss_end_bytes: int
    peak_rss_bytes: int
    psnr_mean: float | None  # shadow mode: mean PSNR of generated against real frames
    recording: RecordingResult | None

    @property
    def frames_per_second(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0

    def format(self) -> str:
        mib = 2**20
        lines = [
            f"played {self.frames:,} frames in {self.seconds:.1f} s: {self.frames_per_second:.1f} frames/s; "
            f"model {self.model_ms_median:.1f} ms/frame median ({self.model_ms_p90:.1f} p90)",
            f"resident memory: {self.rss_start_bytes / mib:,.1f} MiB after frame {min(self.frames, self.warmup_frames)}, "
            f"{self.rss_end_bytes / mib:,.1f} MiB at the end "
            f"({(self.rss_end_bytes - self.rss_start_bytes) / mib:+,.1f} MiB); peak {self.peak_rss_bytes / mib:,.1f} MiB",
        ]
        if self.psnr_mean is not None:
            lines.append(f"shadow: mean PSNR of generated vs real frames {self.psnr_mean:.2f} dB")
        if self.recording is not None:
            lines.append(self.recording.describe())
        return "\n".join(lines)


def resident_bytes() -> int:
    """The process's resident memory now (Linux /proc), else its peak so far."""
    try:
        with open("/proc/self/statm") as statm:
            pages = int(statm.read().split()[1])
        return pages * resource.getpagesize()
    except (OSError, ValueError, IndexError):
        return peak_resident_bytes()


def peak_resident_bytes() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def run_headless(
    session: PlaySession,
    policy: Policy,
    *,
    frames: int,
    video: Path | None = None,
    dataset: Path | None = None,
    video_scale: int = 1,
    seed: int = 0,
    progress: bool = False,
    log_every: int = 1000,
    warmup: int = WARMUP_FRAMES,
) -> HeadlessResult:
    """Step ``session`` ``frames`` times with ``policy``'s actions; record if asked.

    Ctrl-C or SIGTERM stop at a frame boundary; the frames so far are reported and recorded.
    Every ``log_every`` frames (0: never) resident memory and frames/s are logged; the starting
    resident memory is read after ``warmup`` frames.
    """
    if frames < 1:
        raise InputError(f"frames must be ≥ 1, got {frames}")
    if video is not None or dataset is not None:
        session.start_recording(dataset=dataset, video=video, video_scale=video_scale)
    policy.reset(seed)
    model_ms: list[float] = []
    psnrs: list[float] = []
    rss_start = 0
    recording: RecordingResult | None = None
    flag = StopFlag()
    began = time.perf_counter()
    try:
        with flag:
            for index in tqdm(range(frames), desc="play", unit="frame", disable=not progress, dynamic_ncols=True):
                session.step(policy.act(session.frame))
                model_ms.append(session.model_ms)
                if session.psnr is not None:
                    psnrs.append(session.psnr)
                if index + 1 == min(frames, warmup):
                    rss_start = resident_bytes()
                if log_every and (index + 1) % log_every == 0:
                    log.info(
                        "frame %d: resident memory %.1f MiB, %.1f frames/s so far",
                        index + 1,
                        resident_bytes() / 2**20,
                        (index + 1) / (time.perf_counter() - began),
                    )
                if flag.reason is not None:
                    log.info("stopped at frame %d (%s)", index + 1, flag.reason)
                    break
        seconds = time.perf_counter() - began
        rss_start = rss_start or resident_bytes()  # stopped before the warm-up ended
        recording = session.stop_recording()
    except BaseException:
        if session.recorder is not None:
            session.recorder.discard()
            session.recorder = None
        raise
    finally:
        session.close()
    return HeadlessResult(
        frames=len(model_ms),
        seconds=seconds,
        model_ms_median=float(np.median(model_ms)),
        model_ms_p90=float(np.percentile(model_ms, 90)),
        rss_start_bytes=rss_start,
        warmup_frames=warmup,
        rss_end_bytes=resident_bytes(),
        peak_rss_bytes=peak_resident_bytes(),
        psnr_mean=float(np.mean(psnrs)) if psnrs else None,
        recording=recording,
    )
