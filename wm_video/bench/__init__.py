"""Speed benchmarks: the data path (:mod:`.data`), the tokenizer's streaming step (:mod:`.tokenizer`)
and a playable world, frame by frame (:mod:`.world`).

Each benchmark returns a dataclass with a ``format()`` table; ``wm-video bench`` prints it.
Every name loads on first use, so that ``wm_video.bench.cli`` (and ``wm-video --help``) imports
neither torch nor the video libraries: ``from wm_video.bench import bench_world`` imports torch
then, ``bench_data`` never does. Use ``from wm_video.bench.tokenizer import bench_tokenizer`` for
the tokenizer.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from wm_video.bench.data import DataBenchResult, bench_data
    from wm_video.bench.world import WorldBenchResult, bench_world

_WORLD_NAMES = ("WorldBenchResult", "bench_world")
_DATA_NAMES = ("DataBenchResult", "bench_data")


def __getattr__(name: str) -> Any:
    if name in _WORLD_NAMES:
        from wm_video.bench import world

        return getattr(world, name)
    if name in _DATA_NAMES:
        from wm_video.bench import data

        return getattr(data, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["DataBenchResult", "WorldBenchResult", "bench_data", "bench_world"]
