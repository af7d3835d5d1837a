"""Speed benchmarks: the data path (:mod:`.data`) and the tokenizer's streaming step (:mod:`.tokenizer`).

Each benchmark returns a dataclass with a ``format()`` table; ``wm-video bench`` prints it.
The tokenizer benchmark imports torch models, so it is not imported here: use
``from wm_video.bench.tokenizer import bench_tokenizer``.
"""

from wm_video.bench.data import DataBenchResult, bench_data

__all__ = ["DataBenchResult", "bench_data"]
