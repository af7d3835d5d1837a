"""Pieces the training programs share: precision choice, EMA, stop flag, RNG state, logs, grids."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from conftest import TinyDataset

from wm_video.checkpoint import load_checkpoint
from wm_video.errors import InputError
from wm_video.signals import StopFlag
from wm_video.train.common import (
    EMA,
    RunLogger,
    choose_mixed_precision,
    peak_flops,
    read_log,
    rng_state,
    save_comparison_grid,
    set_rng_state,
    throughput,
    train_flops_per_frame,
    use_tf32,
)
from wm_video.train.session import SessionOptions


def test_precision_choice() -> None:
    assert choose_mixed_precision("no", on_cpu=True) == "no"
    assert choose_mixed_precision("bf16", on_cpu=True) == "bf16"
    assert choose_mixed_precision("auto", on_cpu=True) in ("no", "bf16")
    with pytest.raises(InputError, match="needs a GPU"):
        choose_mixed_precision("fp16", on_cpu=True)
    with pytest.raises(InputError, match="one of"):
        choose_mixed_precision("fp8", on_cpu=True)


def test_ema_tracks_the_weights() -> None:
    model = torch.nn.Linear(3, 2)
    ema = EMA(model, decay=0.5)
    with torch.no_grad():
        model.weight.add_(1.0)
    before = ema.model.weight.clone()
    ema.update(model, step=100)  # decay min(0.5, 101/110) = 0.5: halfway
    torch.testing.assert_close(ema.model.weight, (before + model.weight) / 2)
    assert not ema.model.weight.requires_grad
    with pytest.raises(InputError, match="decay"):
        EMA(model, decay=1.0)


def test_rng_state_round_trip() -> None:
    state = rng_state()
    draws = (random.random(), np.random.rand(), torch.rand(1).item())
    set_rng_state(state)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == draws


def test_stop_flag_catches_sigterm_and_restores_the_handler() -> None:
    before = signal.getsignal(signal.SIGTERM)
    with StopFlag() as stop:
        os.kill(os.getpid(), signal.SIGTERM)
        deadline = time.monotonic() + 5
        while not stop.requested and time.monotonic() < deadline:
            time.sleep(0.01)
        assert stop.requested and stop.signal_name == "SIGTERM"
    assert signal.getsignal(signal.SIGTERM) == before


def test_learning_rate_schedule() -> None:
    options = SessionOptions(out=Path("x"), lr=1.0, warmup_steps=10, max_steps=110, min_lr_ratio=0.1)
    assert options.lr_at(0) == pytest.approx(0.1)
    assert options.lr_at(9) == pytest.approx(1.0)
    assert options.lr_at(60) == pytest.approx(0.55)
    assert options.lr_at(110) == pytest.approx(0.1)


def test_run_logger_writes_jsonl_with_wandb_disabled(tmp_path: Path) -> None:
    logger = RunLogger(tmp_path, enabled=True, report_to="wandb", project="test", config={"a": 1})
    logger.log(1, {"loss": 0.5})
    grid = save_comparison_grid(
        np.zeros((1, 2, 8, 8, 3), np.uint8), np.full((1, 2, 8, 8, 3), 255, np.uint8), tmp_path / "g.png"
    )
    logger.log_image(1, "samples", grid)
    logger.close()
    (tmp_path / "log.jsonl").open("a").write('{"step": 2, "lo')  # a torn line from a kill
    assert [r["loss"] for r in read_log(tmp_path)] == [0.5]


def test_wandb_offline_writes_a_run_to_sync_later(tmp_path: Path) -> None:
    """In a fresh process: wandb caches its settings per process, and this one runs disabled."""
    script = (
        "import sys; from pathlib import Path; from wm_video.train.common import RunLogger; "
        "logger = RunLogger(Path(sys.argv[1]), enabled=True, report_to='wandb', project='t', config={}); "
        "logger.log(1, {'loss': 0.5}); logger.close()"
    )
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    done = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert [r["loss"] for r in read_log(tmp_path)] == [0.5]
    run_id = (tmp_path / "wandb-id").read_text().strip()
    assert list(tmp_path.glob(f"wandb/offline-run-*-{run_id}")), "an offline run folder for `wandb sync`"


def test_comparison_grid_layout(tmp_path: Path) -> None:
    real = np.zeros((2, 3, 4, 5, 3), np.uint8)
    fake = np.full_like(real, 200)
    path = save_comparison_grid(real, fake, tmp_path / "grid.png", scale=1)
    image = cv2.imread(str(path))
    assert image.shape == (2 * (2 * 4 + 2) - 2, 3 * (5 + 2) - 2, 3)
    assert image[0, 0].tolist() == [0, 0, 0] and image[4, 0].tolist() == [200, 200, 200]
    with pytest.raises(InputError, match="one shape"):
        save_comparison_grid(real, fake[:, :2], tmp_path / "bad.png")


def test_sigterm_saves_a_checkpoint_and_the_rerun_resumes(tiny_dataset: TinyDataset, tmp_path: Path) -> None:
    run = tmp_path / "run"
    command = [
        sys.executable, "-m", "wm_video.train.tokenizer", "--data", str(tiny_dataset.root), "--out", str(run),
        "--batch-size", "1", "--clip-len", "2", "--log-every", "1", "--save-every", "100000", "--no-progress",
    ]  # fmt: skip
    process = subprocess.Popen(
        [*command, "--max-steps", "100000"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None and not read_log(run):
        time.sleep(0.1)
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 130, err  # issue 19: a preempted run is not a finished one (it was 0)
    assert "stopped at step" in out and "SIGTERM" in out
    step = load_checkpoint(run).step
    assert step >= 1
    finished = subprocess.run(
        [*command, "--max-steps", str(step + 1)], capture_output=True, text=True, timeout=120
    )
    assert finished.returncode == 0, finished.stderr
    assert f"from step {step}" in finished.stdout
    assert load_checkpoint(run).step == step + 1


def test_videos_are_logged_as_uint8_t3hw_mp4(tmp_path: Path) -> None:
    """Row 11: with WANDB_MODE=disabled (set for every test) the helper still writes the mp4 it
    would upload; frames (T, 3, H, W) uint8 come back as T frames of H × W."""
    import av

    logger = RunLogger(tmp_path, enabled=True, report_to="wandb", project="test", config={})
    assert logger.wants_media
    frames = np.zeros((5, 3, 16, 24), np.uint8)
    frames[:, 0] = np.arange(5, dtype=np.uint8)[:, None, None] * 50  # red ramps up over time
    path = logger.log_video(3, "rollout", frames, fps=15)
    assert path == tmp_path / "samples" / "rollout-step-00000003.mp4"
    with av.open(str(path)) as container:
        decoded = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(decoded) == 5 and decoded[0].shape == (16, 24, 3)
    assert abs(int(decoded[4][..., 0].mean()) - 200) < 8
    with pytest.raises(InputError, match=r"uint8 \(T, 3, H, W\)"):
        logger.log_video(3, "rollout", frames.transpose(0, 2, 3, 1), fps=15)
    logger.close()
    plain = RunLogger(tmp_path / "plain", enabled=True, report_to="none", project="test", config={})
    assert not plain.wants_media and plain.log_video(1, "rollout", frames, fps=15) is None


def test_throughput_and_mfu() -> None:
    assert peak_flops(torch.device("cpu")) is None  # MFU is only estimated on known GPUs
    assert train_flops_per_frame(1_000_000, 64) == 6 * 64e6
    metrics = throughput(600, 2.0, tokens_per_frame=64, flops_per_frame=6 * 64e6, peak=None, world=1)
    assert metrics == {"frames_per_s": 300.0, "tokens_per_s": 300.0 * 64}
    gpu = throughput(600, 2.0, tokens_per_frame=64, flops_per_frame=1e9, peak=1e12, world=2)
    assert gpu["mfu"] == pytest.approx(300 * 1e9 / 2e12)


def test_plot_draws_the_curves_of_a_log(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from wm_video.cli import main as cli_main

    for name, offset in (("a", 0.0), ("b", 0.5)):
        (tmp_path / name).mkdir()
        logger = RunLogger(tmp_path / name, enabled=True, report_to="none", project="t", config={})
        for step in range(1, 6):
            logger.log(step, {"loss": 2.0 / step + offset, "lr": 1e-3, "frames_per_s": 100.0 + step})
        logger.log(5, {"heldout_psnr": 20.0, "skipped": float("nan")})
        logger.close()
    assert cli_main(["plot", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "c.png")]) == 0
    image = cv2.imread(str(tmp_path / "c.png"))
    assert image is not None and image.shape[0] > 200 and image.shape[1] > 900  # 2 rows × 3 panels
    assert cli_main(["plot", str(tmp_path / "a"), "--metrics", "loss"]) == 0
    assert (tmp_path / "a" / "curves.png").is_file()
    capsys.readouterr()
    assert cli_main(["plot", str(tmp_path / "a"), "--metrics", "accuracy"]) == 2
    assert "no run logged ['accuracy']" in capsys.readouterr().err
    assert cli_main(["plot", str(tmp_path / "empty")]) == 2
    assert "no training log" in capsys.readouterr().err


def test_tf32_is_switched_on_for_gpus_only() -> None:
    # Saved and restored by hand: these are torch's computed module attributes, which pytest's
    # monkeypatch (9.2) restores with delattr and fails on.
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    try:
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        use_tf32(torch.device("cpu"))
        assert not torch.backends.cuda.matmul.allow_tf32
        use_tf32(torch.device("cuda"))
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before
