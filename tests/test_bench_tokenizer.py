"""The tokenizer benchmark on the tiny preset: figures come out positive, bad setups get one clear error."""

from __future__ import annotations

import pytest
import torch

from wm_video.bench import DataBenchResult, bench_data
from wm_video.bench.tokenizer import TokenizerBenchResult, bench_tokenizer, frame_flops
from wm_video.errors import InputError
from wm_video.tokenizer import VideoTokenizer, tokenizer_preset


@pytest.fixture(scope="module")
def result() -> TokenizerBenchResult:
    return bench_tokenizer(preset="tiny", steps=5, warmup=1, threads=1)


def test_figures_are_positive(result: TokenizerBenchResult) -> None:
    for timing in (result.encode, result.decode):
        assert 0 < timing.p10_ms <= timing.median_ms <= timing.p90_ms
        assert timing.frames_per_second > 0 and timing.steps == 5
    assert 0 < result.params_encoder < result.params_total
    assert 0 < result.params_decoder < result.params_total
    assert result.tokens_per_frame == 64 and result.bits_per_frame > 0
    assert result.encode_gflop_per_frame > 0 and result.decode_gflop_per_frame > 0
    assert result.peak_memory_bytes > 0
    assert result.threads == 1 and result.dtype == "float32" and result.model == "preset tiny"
    assert result.warmup >= tokenizer_preset("tiny").temporal_window - 1  # the window cache is full


def test_format_and_to_dict(result: TokenizerBenchResult) -> None:
    table = result.format()
    for word in ("encode", "decode", "ms", "frames/s", "GFLOP/frame", "peak memory"):
        assert word in table
    data = result.to_dict()
    assert data["decode"]["median_ms"] == result.decode.median_ms
    assert data["decode"]["frames_per_second"] == pytest.approx(result.decode.frames_per_second)


def test_threads_are_restored() -> None:
    before = torch.get_num_threads()
    bench_tokenizer(steps=1, warmup=0, threads=1)
    assert torch.get_num_threads() == before


def test_decode_flops_follow_the_formula() -> None:
    config = tokenizer_preset("tiny")
    model = VideoTokenizer(config)
    decoder_side = model.decoder_parts()
    weights = sum(
        m.weight.numel() for part in decoder_side for m in part.modules() if isinstance(m, torch.nn.Linear)
    )
    tokens, window = config.tokens_per_frame, config.temporal_window
    attention = 4 * tokens * (tokens + window - 1) * config.dim * config.decoder_layers
    assert frame_flops(config, decoder_side, config.decoder_layers) == 2 * weights * tokens + attention


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present")
def test_cuda_without_a_device_is_refused() -> None:
    with pytest.raises(InputError, match="no CUDA device"):
        bench_tokenizer(device="cuda", steps=1, warmup=0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"dtype": "float16"}, "only on CUDA"),
        ({"dtype": "float64"}, "unknown dtype"),
        ({"preset": "huge"}, "unknown tokenizer preset"),
        ({"preset": None}, "preset or a checkpoint"),
        ({"steps": 0}, "steps must be"),
    ],
)
def test_bad_setups_are_refused(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(InputError, match=message):
        bench_tokenizer(**kwargs, warmup=0)


def test_data_bench_still_imports_from_the_package() -> None:
    assert callable(bench_data) and DataBenchResult.__name__ == "DataBenchResult"
