"""The world benchmark on a small model: figures are consistent, the CLI writes them, bad setups get one clear line.

The presets named "tiny" are swapped for a 2×2-token model (and the peak matmul for a small
one) so each run takes a fraction of a second; `wm-video bench` itself runs the real preset.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from wm_video.bench import bench_world
from wm_video.bench import world as world_bench
from wm_video.bench.cli import WORLD_PRESETS
from wm_video.bench.tokenizer import count_parameters, frame_flops
from wm_video.bench.world import WorldBenchResult, head_pass_flops, trunk_flops
from wm_video.checkpoint import save_checkpoint
from wm_video.cli import main
from wm_video.dynamics import DYNAMICS_PRESETS, DynamicsModel, dynamics_config, with_digit_chain
from wm_video.errors import InputError
from wm_video.sources.vizdoom import ACTION_SPACE
from wm_video.tokenizer import VideoTokenizer
from wm_video.tokenizer.config import TOKENIZER_PRESETS, TokenizerConfig

SMALL_TOKENIZER = TokenizerConfig(
    image_size=16, patch_size=8, dim=32, heads=2, encoder_layers=1, decoder_layers=1, temporal_window=2
)
SMALL_DYNAMICS = replace(
    DYNAMICS_PRESETS["tiny"],
    dim=32,
    heads=2,
    trunk_layers=1,
    head_layers=1,
    context_frames=2,
    decode_passes=2,
)


def _small_presets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(TOKENIZER_PRESETS, "tiny", SMALL_TOKENIZER)
    monkeypatch.setitem(DYNAMICS_PRESETS, "tiny", SMALL_DYNAMICS)
    monkeypatch.setitem(world_bench.PEAK_MATMUL_SIZE, "cpu", 128)


@pytest.fixture
def small_presets(monkeypatch: pytest.MonkeyPatch) -> None:
    _small_presets(monkeypatch)


@pytest.fixture(scope="module")
def result() -> Iterator[WorldBenchResult]:
    with pytest.MonkeyPatch.context() as monkeypatch:
        _small_presets(monkeypatch)
        yield bench_world(preset="tiny", steps=5, warmup=2, threads=1)


def small_models() -> tuple[VideoTokenizer, DynamicsModel]:
    tokenizer = VideoTokenizer(SMALL_TOKENIZER)
    dynamics = DynamicsModel(dynamics_config("tiny", SMALL_TOKENIZER, ACTION_SPACE))
    return tokenizer, dynamics


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    try:
        code = main(args)
    except SystemExit as exc:  # argparse errors
        code = int(exc.code or 0)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_figures_are_consistent(result: WorldBenchResult) -> None:
    for name in ("advance", "trunk", "head", "render", "step"):
        timing = getattr(result, name)
        assert 0 < timing.p10_ms <= timing.median_ms <= timing.p90_ms, name
        assert timing.steps == 5
    assert result.frames_per_second == pytest.approx(
        1000 / (result.advance.median_ms + result.render.median_ms)
    )
    assert result.step.frames_per_second == pytest.approx(1000 / result.step.median_ms)
    for figure in (result.trunk_gflop_per_frame, result.head_gflop_per_frame, result.decode_gflop_per_frame):
        assert figure > 0
    assert result.peak_tflops > 0 and result.matmul_size == 128
    assert result.limit_frames_per_second == pytest.approx(result.peak_tflops * 1e3 / result.gflop_per_frame)
    assert result.share_of_limit > 0
    assert result.tokens_per_frame == 4 and result.passes == 2 and result.context_frames == 2
    assert result.warmup >= SMALL_DYNAMICS.context_frames + SMALL_DYNAMICS.sink_frames  # the KV ring is full
    assert min(result.params_trunk, result.params_head, result.params_decoder) > 0
    assert result.peak_memory_bytes > 0 and result.threads == 1 and not result.compiled
    assert result.model == "preset tiny (random weights)"


def test_format_and_to_dict(result: WorldBenchResult) -> None:
    table = result.format()
    for line in (
        "advance (dynamics)",
        "trunk pass",
        "2 head passes",
        "render (decode)",
        "step (+ to host)",
        "frames/s",
        "TFLOP/s (measured matmul peak",
        "GFLOP/frame",
        "peak memory",
    ):
        assert line in table
    assert f"{result.frames_per_second:.1f} (1000 / (advance + render medians))" in table
    data = json.loads(json.dumps(result.to_dict()))
    assert data["render"]["median_ms"] == result.render.median_ms
    assert data["head"]["frames_per_second"] == pytest.approx(result.head.frames_per_second)
    assert data["frames_per_second"] == pytest.approx(result.frames_per_second)
    assert data["limit_frames_per_second"] == pytest.approx(result.limit_frames_per_second)


def test_flops_follow_the_formulas() -> None:
    tokenizer, dynamics = small_models()
    c, tokens = dynamics.config, dynamics.config.tokens_per_frame

    def weights(*modules: torch.nn.Module) -> int:
        return sum(
            m.weight.numel() for part in modules for m in part.modules() if isinstance(m, torch.nn.Linear)
        )

    slots = c.sink_frames + c.context_frames
    assert (
        trunk_flops(dynamics)
        == 2 * weights(dynamics.action_embed)
        + 2 * weights(dynamics.trunk) * tokens
        + 4 * tokens * slots * tokens * c.dim * c.trunk_layers
    )
    head = weights(dynamics.head_condition, dynamics.head_blocks, dynamics.to_logits)
    assert head_pass_flops(dynamics) == 2 * head * tokens + 4 * tokens * tokens * c.dim * c.head_layers
    assert frame_flops(tokenizer.config, [tokenizer.decoder], 1) > 0


@pytest.mark.parametrize("chain", [False, True])
def test_trunk_and_head_parameters_cover_the_dynamics_model(chain: bool) -> None:
    _, dynamics = small_models()
    if chain:
        dynamics = with_digit_chain(dynamics)
        head = sum(p.weight.numel() for p in (dynamics.chain_in, dynamics.chain_out))
        tokens = dynamics.config.tokens_per_frame
        assert head_pass_flops(dynamics) == head_pass_flops(small_models()[1]) + 2 * head * tokens
    trunk = world_bench._count(world_bench._trunk_side(dynamics))
    head = world_bench._count(world_bench._head_side(dynamics))
    assert trunk + head == count_parameters(dynamics)


def test_a_saved_world_is_benchmarked(tmp_path: Path) -> None:
    tokenizer, dynamics = small_models()
    tokenizer_run = tmp_path / "tokenizer"
    save_checkpoint(
        tokenizer_run,
        kind="tokenizer",
        config=SMALL_TOKENIZER.to_dict(),
        step=1,
        weights=tokenizer.state_dict(),
    )
    dynamics_run = tmp_path / "dynamics"
    save_checkpoint(
        dynamics_run,
        kind="dynamics",
        config=dynamics.config.to_dict(),
        step=1,
        weights=dynamics.state_dict(),
        meta={"tokenizer": str(tokenizer_run)},
    )
    result = bench_world(checkpoint=dynamics_run, dtype="bfloat16", steps=2, warmup=0, threads=1)
    assert result.model == f"checkpoint {dynamics_run}" and result.dtype == "bfloat16"
    assert result.tokens_per_frame == 4 and result.frames_per_second > 0


def test_threads_are_restored(small_presets: None) -> None:
    before = torch.get_num_threads()
    bench_world(steps=1, warmup=0, threads=1)
    assert torch.get_num_threads() == before


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"preset": "huge"}, "unknown dynamics preset"),
        ({"steps": 0}, "steps must be"),
        ({"warmup": -1}, "warmup must be"),
        ({"dtype": "float64"}, "unknown dtype"),
        ({"dtype": "float16"}, "only on CUDA"),
        ({"checkpoint": Path("/nonexistent")}, "does not exist"),
    ],
)
def test_bad_setups_are_refused(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(InputError, match=message):
        bench_world(**kwargs)  # type: ignore[arg-type]


def test_cli_presets_are_the_dynamics_presets() -> None:
    assert set(WORLD_PRESETS) == set(DYNAMICS_PRESETS)


def test_cli_bench_writes_json(
    small_presets: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    report = tmp_path / "world.json"
    code, out, err = run_cli(
        ["bench", "--steps", "5", "--warmup", "2", "--threads", "1", "--json", str(report)], capsys
    )
    assert code == 0, err
    assert "world bench" in out and "limit" in out and f"report: {report}" in out
    data = json.loads(report.read_text())
    assert data["step"]["steps"] == 5 and data["frames_per_second"] > 0 and data["dtype"] == "float32"


def test_cli_bench_tokenizer_still_works(small_presets: None, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(
        ["bench", "tokenizer", "--steps", "2", "--warmup", "0", "--threads", "1"], capsys
    )
    assert code == 0, err
    assert out.startswith("tokenizer bench") and "decode" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        pytest.param(
            ["--device", "cuda"],
            "no CUDA device",
            marks=pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present"),
        ),
        (["--checkpoint", "/nonexistent"], "/nonexistent: does not exist"),
        (["--warmup", "-1"], "warmup must be ≥ 0"),
    ],
)
def test_cli_bad_input_is_one_clear_line(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run_cli(["bench", *args, "--steps", "1"], capsys)
    assert code == 2 and out == ""
    assert err.startswith("wm-video bench: error:") and message in err and err.count("\n") == 1
