"""`wm-video eval` (the consistency run) end to end on a tiny dataset and tiny random checkpoints:
the report's files exist and parse, a baseline shares the plots, a second run reuses the cached
inverse-dynamics model and gives the same numbers, bad input is one clear line."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from conftest import make_dataset

from wm_video.checkpoint import save_checkpoint
from wm_video.cli import main as cli_main
from wm_video.data.video import read_video
from wm_video.dynamics import DynamicsConfig, DynamicsModel
from wm_video.tokenizer import TokenizerConfig, VideoTokenizer

TOKENIZER = TokenizerConfig(
    image_size=32, patch_size=8, dim=32, heads=2, encoder_layers=1, decoder_layers=1, temporal_window=3
)


@dataclass(frozen=True)
class Runs:
    data: Path
    model: Path
    baseline: Path


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Runs:
    root = tmp_path_factory.mktemp("consistency")
    data = make_dataset(root / "ds", [24, 20, 30])  # holdout 0.1: the last episode
    torch.manual_seed(0)
    save_checkpoint(
        root / "tok", kind="tokenizer", config=TOKENIZER.to_dict(), step=0,
        weights=VideoTokenizer(TOKENIZER).state_dict(), keep=1,
    )  # fmt: skip
    config = DynamicsConfig(
        grid_size=TOKENIZER.grid_size, levels=TOKENIZER.levels, action_names=("forward", "turn_left", "mouse_dx"),
        action_buttons=2, dim=32, heads=2, trunk_layers=1, head_layers=1, context_frames=3,
    )  # fmt: skip
    meta = {"data": str(data.root), "tokenizer": str(root / "tok"), "holdout": 0.1}
    for name, step in (("model", 7), ("baseline", 3)):
        save_checkpoint(
            root / name, kind="dynamics", config=config.to_dict(), step=step,
            weights=DynamicsModel(config).state_dict(), meta=meta, keep=1,
        )  # fmt: skip
    return Runs(data.root, root / "model", root / "baseline")


ARGS = ["--clips", "2", "--context", "2", "--horizon", "4", "--soak", "40", "--idm-steps", "30"]


def test_report_files_exist_parse_and_a_second_run_reuses_the_idm(runs: Runs, tmp_path: Path, capsys) -> None:
    out = tmp_path / "report"
    argv = ["eval", "--checkpoint", str(runs.model), "--out", str(out), *ARGS]
    assert cli_main([*argv, "--baseline", str(runs.baseline)]) == 0
    assert "report:" in capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["models"]) == {"model", "baseline"}
    model = metrics["models"]["model"]
    assert model["step"] == 7 and len(model["weights_sha256"]) == 64 and metrics["seed"] == 0
    assert metrics["clip_episodes"] == [2, 2] and "held-out episodes [2]" in metrics["clips_from"]
    assert len(model["drift"]["psnr"]["mean"]) == 4 and len(model["control"]["delta_psnr"]) == 4
    assert model["control"]["t"] == 4 and np.isfinite(model["teacher_forced"]["psnr"])
    assert set(model["action_accuracy"]) == {
        "real clips",
        "teacher-forced",
        "rollout",
        "random-action rollout",
    }
    assert model["soak"]["steps"] == 40 and set(model["soak"]["collapse"]) == {
        "blur",
        "noise",
        "palette",
        "freeze",
    }
    assert model["loop_closure"] is None and any("loop closure skipped" in n for n in metrics["notes"])
    assert metrics["idm"]["reused"] is False and metrics["idm"]["buttons"] == ["forward", "turn_left"]
    assert metrics["idm"]["real_heldout"]["pairs"] == 29
    assert {"torch", "numpy", "wm_video"} <= set(metrics["versions"])
    footage = metrics["soak_real_footage"]
    assert footage["episodes"] == 1 and set(footage["tokenizer_flagged"]) == {
        "blur",
        "noise",
        "palette",
        "freeze",
    }
    assert len(footage["tokenizer_percentiles"]["sharpness"]) == 3  # 1st / 50th / 99th percentile
    for name in ("drift.png", "controllability.png", "soak.png", "soak_snapshots.png"):
        image = cv2.imread(str(out / name))
        assert image is not None and image.size > 0, name
    for name in ("samples.mp4", "samples_baseline.mp4"):
        video = read_video(out / name)
        assert video.shape == (4, 2 * 32 * 2, 3 * 32 * 2, 3), (
            name
        )  # 4 frames; 2 clips × (real|generated|diff)
    report = (out / "report.md").read_text()
    for text in (
        "# Consistency report",
        "## Headline",
        "## Drift",
        "ΔPSNR(t=4)",
        "## Soak",
        "the same, through the model's tokenizer (1 episodes): episodes flagged",
        "| statistic | data | tokenizer | model | baseline |",
        "baseline",
        "drift.png",
    ):
        assert text in report, text

    again = tmp_path / "again"
    assert cli_main(["eval", "--checkpoint", str(runs.model), "--out", str(again), *ARGS]) == 0
    second = json.loads((again / "metrics.json").read_text())
    assert second["idm"]["reused"] is True and second["idm"]["path"] == metrics["idm"]["path"]
    for key in ("teacher_forced", "drift", "control", "action_accuracy"):  # same seed, same numbers
        assert second["models"]["model"][key] == model[key], key
    assert second["models"]["model"]["soak"]["summary"] == model["soak"]["summary"]
    assert set(second["models"]) == {"model"}


def test_quick_dynamics_check_still_runs(runs: Runs, capsys) -> None:
    argv = [
        "eval",
        "dynamics",
        "--checkpoint",
        str(runs.model),
        "--clips",
        "2",
        "--context",
        "2",
        "--horizon",
        "3",
    ]
    assert cli_main(argv) == 0
    assert "ΔPSNR(t=3)" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ([], "pass --out REPORT"),
        (["--out", "X", "--skip", "drift,nothing"], "unknown parts ['nothing']"),
        (["--out", "X", "--episodes", "1,x"], "comma-separated episode indices"),
        (["--out", "X", "--live", "doom"], "unknown engine 'doom'"),
    ],
)
def test_bad_input_is_one_line(runs: Runs, tmp_path: Path, capsys, extra: list[str], message: str) -> None:
    extra = [str(tmp_path / e) if e == "X" else e for e in extra]
    code = cli_main(["eval", "--checkpoint", str(runs.model), *extra])
    assert code == 2
    assert message in capsys.readouterr().err


def test_sigterm_stops_the_run_cleanly_with_exit_130(runs: Runs, tmp_path: Path) -> None:
    out = tmp_path / "report"
    argv = [
        sys.executable, "-m", "wm_video", "eval", "--checkpoint", str(runs.model), "--out", str(out),
        "--clips", "2", "--context", "2", "--horizon", "2", "--skip", "actions", "--soak", "1000000",
        "--threads", "1",
    ]  # fmt: skip
    process = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True)
    assert process.stderr is not None
    for line in process.stderr:  # wait until the soak loop runs
        if "soak of" in line:
            break
    time.sleep(1.0)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == 130
    assert "interrupted" in process.stderr.read()
    assert not (out / "report.md").exists()
