"""The tokenizer training program end to end on a tiny dataset: logs, samples, checkpoints, resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import TinyDataset

from wm_video.checkpoint import load_checkpoint, load_tokenizer
from wm_video.cli import main as cli_main
from wm_video.train.common import read_log


def _train(data: Path, out: Path, steps: int, *extra: str) -> int:
    return cli_main(
        [
            "train", "tokenizer", "--data", str(data), "--out", str(out), "--max-steps", str(steps),
            "--batch-size", "2", "--clip-len", "3", "--log-every", "1", "--eval-every", "2",
            "--save-every", "2", "--warmup-steps", "2", "--no-progress", *extra,
        ]
    )  # fmt: skip


def test_train_logs_saves_and_resumes(
    tiny_dataset: TinyDataset, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    assert _train(tiny_dataset.root, run, 3) == 0
    out = capsys.readouterr().out  # --no-progress: each --log-every line reaches the terminal (issue 21)
    assert [line.split(":")[0] for line in out.splitlines() if line.startswith("step ") and "loss" in line] == [
        "step 1/3",
        "step 2/3",
        "step 3/3",
    ]
    records = read_log(run)
    assert [r["step"] for r in records if "loss" in r] == [1, 2, 3]
    assert all(r["frames_per_s"] > 0 and r["loss"] > 0 for r in records if "loss" in r)
    assert sum("heldout_psnr" in r for r in records) == 2  # steps 2 and 3 (the last)
    assert sorted(p.name for p in (run / "samples").iterdir()) == ["step-00000002.png", "step-00000003.png"]
    run_config = json.loads((run / "run.json").read_text())
    assert run_config["program"]["preset"] == "tiny" and run_config["world_size"] == 1

    checkpoint = load_checkpoint(run, kind="tokenizer")
    assert checkpoint.step == 3 and checkpoint.ema_weights is not None
    assert checkpoint.meta["heldout_episodes"] == [len(tiny_dataset.frames) - 1]
    model, _ = load_tokenizer(run)
    frames = torch.zeros(1, 2, 3, 64, 64)
    assert model(frames).reconstruction.shape == (1, 2, 3, 64, 64)

    assert _train(tiny_dataset.root, run, 5) == 0  # the same command with more steps resumes
    steps = [r["step"] for r in read_log(run) if "loss" in r]
    assert steps == [1, 2, 3, 4, 5]
    assert load_checkpoint(run).step == 5


def test_resume_refuses_a_different_model(
    tiny_dataset: TinyDataset, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    assert _train(tiny_dataset.root, run, 1) == 0
    assert _train(tiny_dataset.root, run, 2, "--preset", "base") == 2
    assert "different model config" in capsys.readouterr().err


def test_out_must_be_a_run_folder(
    tiny_dataset: TinyDataset, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "stuff").mkdir()
    (tmp_path / "stuff" / "notes.txt").write_text("mine")
    assert _train(tiny_dataset.root, tmp_path / "stuff", 1) == 2
    assert "not a wm-video run folder" in capsys.readouterr().err


def test_eval_tokenizer_command(
    tiny_dataset: TinyDataset, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    assert _train(tiny_dataset.root, run, 1) == 0
    capsys.readouterr()
    report = tmp_path / "report.json"
    assert cli_main(["eval", "tokenizer", "--checkpoint", str(run), "--json", str(report)]) == 0
    out = capsys.readouterr().out
    assert "held-out episodes" in out and "PSNR (per-frame mean)" in out
    data = json.loads(report.read_text())
    assert data["frames"] == len(tiny_dataset.frames[-1]) and data["episodes"] == [2]
    assert data["tokens_per_frame"] == 64
    assert (
        cli_main(["eval", "tokenizer", "--checkpoint", str(run), "--all-episodes", "--max-frames", "5"]) == 0
    )
    assert "15 frames" in capsys.readouterr().out.replace(",", "")
    assert cli_main(["eval", "tokenizer", "--checkpoint", str(run), "--episodes", "a,b"]) == 2
    assert "comma-separated episode indices" in capsys.readouterr().err
    assert cli_main(["eval", "tokenizer", "--checkpoint", str(tmp_path / "nothing")]) == 2
    assert "nothing" in capsys.readouterr().err
