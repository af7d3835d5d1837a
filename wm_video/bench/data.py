"""Data-path benchmark: how fast footage is collected, decoded into the training cache, and sampled.

Each repeat runs the three stages on the same work (same seed, same settings), so the spread
between repeats is machine noise; the median is reported with min and max:

1. collection frames/s: :func:`wm_video.collect.collect` of ``episodes`` × ≤ ``steps`` frames
   from ViZDoom ``my_way_home`` with ``workers`` processes into a fresh dataset (engine start,
   policy, encoding and commit included);
2. cache build frames/s: :func:`wm_video.data.cache.build_cache` with ``force=True`` on it;
3. sampler frames/s: :meth:`ClipSampler.sample_batch` of ``batch_size`` × ``clip_len`` clips
   for about ``sampler_seconds``, counting every frame copied out of the memmap.

Run ``wm-video bench data --help``.
"""

from __future__ import annotations

import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from wm_video.data.cache import build_cache
from wm_video.data.sampler import ClipSampler

STAGES = (
    ("collect_fps", "collection"),
    ("cache_build_fps", "cache build"),
    ("sampler_fps", "sampler"),
)


@dataclass(frozen=True)
class DataBenchResult:
    """Settings, every sample (one per repeat) and their medians, in frames per second."""

    size: int
    workers: int
    episodes: int
    steps: int
    repeats: int
    clip_len: int
    batch_size: int
    collect_fps: list[float] = field(default_factory=list)
    cache_build_fps: list[float] = field(default_factory=list)
    sampler_fps: list[float] = field(default_factory=list)
    frames: list[int] = field(default_factory=list)  # frames collected in each repeat

    @property
    def collect_fps_median(self) -> float:
        return statistics.median(self.collect_fps)

    @property
    def cache_build_fps_median(self) -> float:
        return statistics.median(self.cache_build_fps)

    @property
    def sampler_fps_median(self) -> float:
        return statistics.median(self.sampler_fps)

    def format(self) -> str:
        """A printable table: median, min and max frames/s of each stage."""
        lines = [
            f"data bench: {self.size}px, {self.episodes} episodes × ≤{self.steps} steps "
            f"({statistics.median(self.frames):.0f} frames), {self.workers} collection workers, "
            f"clips {self.batch_size}×{self.clip_len}, {self.repeats} repeats",
            f"{'frames/s':<14}{'median':>12}{'min':>12}{'max':>12}",
        ]
        for name, label in STAGES:
            samples: list[float] = getattr(self, name)
            lines.append(
                f"{label:<14}{statistics.median(samples):>12,.0f}{min(samples):>12,.0f}{max(samples):>12,.0f}"
            )
        return "\n".join(lines)


def _sampler_fps(sampler: ClipSampler, batch_size: int, seconds: float) -> float:
    frames, started = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - started) < seconds:
        batch = sampler.sample_batch(batch_size)  # (B, T, H, W, 3)
        frames += batch.frames.shape[0] * batch.frames.shape[1]
    return frames / elapsed


def bench_data(
    *,
    workdir: Path | None = None,
    size: int = 64,
    workers: int = 2,
    episodes: int = 8,
    steps: int = 500,
    repeats: int = 3,
    clip_len: int = 16,
    batch_size: int = 32,
    progress: bool = False,
    sampler_seconds: float = 2.0,
) -> DataBenchResult:
    """Measure collection, cache build and sampling ``repeats`` times.

    Datasets go under ``workdir`` (kept) or a temporary folder (removed afterwards).
    """
    from wm_video.collect import collect  # engines load only when benchmarking

    result = DataBenchResult(size, workers, episodes, steps, repeats, clip_len, batch_size)
    base = Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix="wm_video_bench_"))
    try:
        for repeat in range(repeats):
            out = base / f"repeat-{repeat}"
            shutil.rmtree(out, ignore_errors=True)
            collected = collect(
                out,
                source="vizdoom",
                scenario="my_way_home",
                episodes=episodes,
                steps=steps,
                seed=0,
                size=size,
                workers=workers,
                progress=progress,
            )
            result.collect_fps.append(collected.frames_per_second)
            result.frames.append(collected.frames_written)

            started = time.perf_counter()
            cache = build_cache(out, size=size, force=True, progress=progress)
            result.cache_build_fps.append(cache.num_frames / (time.perf_counter() - started))

            sampler = ClipSampler(cache, clip_len, seed=repeat)
            result.sampler_fps.append(_sampler_fps(sampler, batch_size, sampler_seconds))
            del cache, sampler
            if progress:
                print(
                    f"repeat {repeat + 1}/{repeats}: collection {result.collect_fps[-1]:,.0f}, cache build "
                    f"{result.cache_build_fps[-1]:,.0f}, sampler {result.sampler_fps[-1]:,.0f} frames/s",
                    file=sys.stderr,
                    flush=True,
                )
    finally:
        if workdir is None:
            shutil.rmtree(base, ignore_errors=True)
    return result
