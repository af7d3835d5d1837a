"""`wm-video bench gpu` end to end on a CPU with small presets: world rows (eager timed, CUDA graphs
skipped with the reason), training rows from the training programs' own logs, the JSON report;
a row that fails says so and the rest still runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from test_bench_world import run_cli, small_presets  # noqa: F401  (a fixture)

from wm_video.bench import gpu
from wm_video.bench.cli import GPU_BENCH_MODES


def test_cli_modes_are_the_bench_modes() -> None:
    assert set(GPU_BENCH_MODES) == set(gpu.MODES)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU table (graphs skipped)")
def test_bench_gpu_runs_on_a_cpu_and_prints_the_table(
    small_presets: None,  # noqa: F811
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    report = tmp_path / "gpu.json"
    args = ["bench", "gpu", "--presets", "tiny", "--batches", "1", "2", "--modes", "eager", "graphs"]
    args += ["--steps", "3", "--warmup", "0", "--train-steps", "2", "--train-batch", "1", "--dtype", "fp32"]
    code, out, err = run_cli([*args, "--threads", "1", "--no-progress", "--json", str(report)], capsys)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("gpu bench: cpu") and "float32" in lines[0]
    for batch in (1, 2):
        (eager,) = [line for line in lines if line.split()[:3] == ["tiny", str(batch), "eager"]]
        assert float(eager.split()[3]) > 0 and float(eager.split()[4].replace(",", "")) > 0
        (graphs,) = [line for line in lines if line.split()[:3] == ["tiny", str(batch), "graphs"]]
        assert "skipped: CUDA graphs need a CUDA device" in graphs
    for model in ("tokenizer", "dynamics"):
        (row,) = [line for line in lines if line.split()[:2] == ["tiny", model]]
        assert row.split()[2] == "2" and float(row.split()[3].replace(",", "")) > 0
        assert row.split()[5] == "n/a"  # no known peak FLOP/s on a CPU
    assert "target" in out and "missed" not in out and "met" not in out  # GPU targets: not judged here
    data = json.loads(report.read_text())
    assert [(w["batch"], w["mode"]) for w in data["world"]] == [
        (1, "eager"),
        (1, "graphs"),
        (2, "eager"),
        (2, "graphs"),
    ]
    assert data["world"][2]["frames_per_second"] == pytest.approx(2000 / data["world"][2]["ms_per_step"])
    assert [t["model"] for t in data["training"]] == ["tokenizer", "dynamics"]
    assert all(t["tokens_per_second"] > 0 and t["peak_memory_bytes"] > 0 for t in data["training"])


def test_a_failing_row_is_reported_and_the_rest_runs(
    small_presets: None,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    start = gpu.start_world

    def out_of_memory(*args: object, batch_size: int, **kwargs: object) -> object:
        if batch_size == 2:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB\nmore detail")
        return start(*args, batch_size=batch_size, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(gpu, "start_world", out_of_memory)
    result = gpu.bench_gpu(
        presets=["tiny"],
        batches=[2, 1],
        modes=["eager"],
        device="cpu",
        dtype="fp32",
        steps=2,
        warmup=0,
        train_steps=0,
        threads=1,
    )
    assert result.world[0].not_run == "failed: OutOfMemoryError: CUDA out of memory. Tried to allocate 2 GiB"
    assert result.world[1].not_run is None and result.world[1].frames_per_second is not None
    assert result.training == [] and "failed: OutOfMemoryError" in result.format()


@pytest.mark.parametrize(
    ("args", "message"), [(["--batches", "0"], "must be ≥ 1"), (["--modes", "fast"], "invalid choice")]
)
def test_cli_bad_flags_are_refused(args: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(["bench", "gpu", *args], capsys)
    assert code == 2 and out == "" and message in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="fp16 runs on a CUDA device")
def test_cli_fp16_on_a_cpu_is_one_clear_line(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(["bench", "gpu", "--device", "cpu", "--dtype", "fp16", "--threads", "1"], capsys)
    assert code == 2 and out == ""
    assert err.startswith("wm-video bench gpu: error:") and "only on CUDA" in err and err.count("\n") == 1
