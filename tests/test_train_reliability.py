"""RELIABILITY rows 1, 2, 3, 5, 6, 7 and 10 for BOTH training programs, through their command lines:
a crash mid-save keeps the last good checkpoint (with the keep limit reached) and the rerun
resumes; a NaN batch skips its step and leaves the weights alone; too many stop the run; SIGTERM
saves at the step boundary; a full disk says how much space was needed; a foreign or pickled
checkpoint is refused naming what is wrong; an interrupted tokenizer run resumes bit-identically.
"""

from __future__ import annotations

import os
import shutil
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import MICRO_TOKENIZER, TrainingData
from safetensors.torch import load_file, save_file

import wm_video.checkpoint as checkpoint_module
import wm_video.train.tokenizer as tokenizer_program
from wm_video.checkpoint import load_checkpoint, resolve_checkpoint
from wm_video.cli import main as cli_main
from wm_video.data.sampler import ClipBatch, ClipSampler
from wm_video.dynamics import DYNAMICS_PRESETS, DynamicsConfig
from wm_video.signals import StopFlag
from wm_video.tokenizer import TOKENIZER_PRESETS
from wm_video.train import session as session_module
from wm_video.train.common import read_log
from wm_video.train.session import TrainingSession

TOKENIZER = MICRO_TOKENIZER
DYNAMICS = DynamicsConfig(dim=32, heads=2, trunk_layers=1, head_layers=1, context_frames=3)
PROGRAMS = ["tokenizer", "dynamics"]
BATCH = 2


@pytest.fixture(autouse=True)
def small_presets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(TOKENIZER_PRESETS, "tiny", TOKENIZER)
    monkeypatch.setitem(DYNAMICS_PRESETS, "tiny", DYNAMICS)


def train(program: str, training_data: TrainingData, out: Path, steps: int, *extra: str) -> int:
    model_args = (
        ["--tokenizer", str(training_data.tokenizer), "--clip-len", "4"] if program == "dynamics" else []
    )
    return cli_main(
        [
            "train", program, "--data", str(training_data.data), "--out", str(out), "--max-steps", str(steps),
            *model_args, "--batch-size", str(BATCH), "--log-every", "1", "--eval-every", "0",
            "--save-every", "1", "--warmup-steps", "1", "--no-progress", *extra,
        ]
    )  # fmt: skip


def fail_on_call(
    monkeypatch: pytest.MonkeyPatch, target: Any, name: str, call: int, error: BaseException
) -> None:
    """``target.name`` raises ``error`` on its ``call``-th call (1-based), works otherwise."""
    original: Callable[..., Any] = getattr(target, name)
    calls = [0]

    def wrapped(*args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        if calls[0] == call:
            raise error
        return original(*args, **kwargs)

    monkeypatch.setattr(target, name, wrapped)


@pytest.mark.parametrize("program", PROGRAMS)
def test_a_crash_mid_save_keeps_the_last_checkpoint_and_the_rerun_resumes(
    program: str,
    training_data: TrainingData,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Rows 1 and 2: --keep 1, the save of step 2 dies after its first file (model, ema, training:
    3 files a save); step 1 stays complete and `last`, and the same command resumes from it."""
    run = tmp_path / "run"
    with monkeypatch.context() as patch:
        fail_on_call(patch, checkpoint_module, "_write_tensors", 5, RuntimeError("power cut"))
        with pytest.raises(RuntimeError, match="power cut"):
            train(program, training_data, run, 3, "--keep", "1")
    checkpoints = run / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["last", "step-00000001"]
    assert load_checkpoint(run).step == 1
    capsys.readouterr()
    assert train(program, training_data, run, 3, "--keep", "1") == 0
    assert "from step 1" in capsys.readouterr().out
    assert sorted(p.name for p in checkpoints.iterdir()) == ["last", "step-00000003"]


def poison_second_batch(program: str, monkeypatch: pytest.MonkeyPatch, every: bool = False) -> None:
    """The 2nd training batch (or, with ``every``, all of them) carries NaN: NaN frames for the
    tokenizer, NaN actions for the dynamics model (its frames are integer tokens)."""
    calls = [0]
    if program == "tokenizer":
        original_pixels = tokenizer_program.to_model_pixels

        def pixels(frames: np.ndarray, device: torch.device) -> torch.Tensor:
            out = original_pixels(frames, device)
            if frames.shape[0] == BATCH:  # a training batch (the probe holds more clips)
                calls[0] += 1
                if every or calls[0] == 2:
                    out = torch.full_like(out, float("nan"))
            return out

        monkeypatch.setattr(tokenizer_program, "to_model_pixels", pixels)
        return
    original_batch = ClipSampler.sample_batch

    def sample_batch(self: ClipSampler, batch_size: int) -> ClipBatch:
        batch = original_batch(self, batch_size)
        if batch_size == BATCH:
            calls[0] += 1
            if every or calls[0] == 2:
                batch = ClipBatch(
                    batch.frames, np.full_like(batch.actions, np.nan), batch.episode, batch.start
                )
        return batch

    monkeypatch.setattr(ClipSampler, "sample_batch", sample_batch)


@pytest.mark.parametrize("program", PROGRAMS)
def test_a_nan_batch_skips_its_step_and_the_next_batch_trains(
    program: str, training_data: TrainingData, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Row 5: step 2's batch is NaN: weights, EMA and optimizer state after step 2 equal those
    after step 1; step 3 trains again; the skip is logged."""
    run = tmp_path / "run"
    poison_second_batch(program, monkeypatch)
    import wm_video.checkpoint

    # older checkpoints drop their optimizer state once a newer one is saved; this test compares them
    monkeypatch.setattr(wm_video.checkpoint, "_drop_training_state", lambda step_dir: None)
    assert train(program, training_data, run, 3, "--keep", "5") == 0
    skipped = [r["step"] for r in read_log(run) if r.get("skipped_nonfinite")]
    assert skipped == [2]
    steps = {s: run / "checkpoints" / f"step-{s:08d}" for s in (1, 2, 3)}
    for name in ("model.safetensors", "ema.safetensors"):
        one, two, three = (load_file(steps[s] / name) for s in (1, 2, 3))
        assert all(torch.equal(one[k], two[k]) for k in one), f"{name} changed on the NaN step"
        assert any(not torch.equal(two[k], three[k]) for k in two), f"{name} did not train after it"
        assert all(bool(torch.isfinite(t).all()) for t in three.values())
    state_one, state_two = (load_checkpoint(steps[s]).training_state["optimizer"] for s in (1, 2))
    moments = [
        (a["exp_avg"], b["exp_avg"])
        for a, b in zip(state_one["state"].values(), state_two["state"].values(), strict=True)
    ]
    assert all(torch.equal(a, b) for a, b in moments)


@pytest.mark.parametrize("program", PROGRAMS)
def test_too_many_nan_steps_stop_the_run_with_a_message(
    program: str,
    training_data: TrainingData,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    run = tmp_path / "run"
    assert train(program, training_data, run, 1) == 0  # a good checkpoint first
    poison_second_batch(program, monkeypatch, every=True)
    monkeypatch.setattr(session_module, "MAX_SKIPPED_STEPS", 3)
    capsys.readouterr()
    assert train(program, training_data, run, 20, "--save-every", "100") == 2
    err = capsys.readouterr().err  # steps 2, 3 and 4 skipped:
    assert "3 optimizer steps in a row had non-finite gradients; stopping at step 4" in err
    assert "keeps the last good checkpoint" in err
    assert load_checkpoint(run).step == 1


@pytest.mark.parametrize("program", PROGRAMS)
def test_a_full_disk_keeps_the_last_checkpoint_and_says_how_much_space(
    program: str,
    training_data: TrainingData,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Row 7: the 2nd save's safetensors write fails as safetensors reports a full disk."""
    import safetensors.torch
    from safetensors import SafetensorError

    run = tmp_path / "run"
    full = SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
    fail_on_call(monkeypatch, safetensors.torch, "save_file", 4, full)
    assert train(program, training_data, run, 3) == 2
    err = capsys.readouterr().err.strip()
    assert f"wm-video train {program}: error: " in err and "disk full while saving step-00000002" in err
    assert "the checkpoint needs about" in err and "bytes" in err and "last good checkpoint is kept" in err
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["last", "step-00000001"]
    assert resolve_checkpoint(run).name == "step-00000001"


@pytest.mark.parametrize("program", PROGRAMS)
@pytest.mark.parametrize("damage", ["wrong shapes", "pickle"])
def test_a_foreign_checkpoint_is_refused_naming_what_is_wrong(
    program: str, damage: str, training_data: TrainingData, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Row 10: the run's checkpoint holds other weights (or a torch.save pickle); resuming names them."""
    run = tmp_path / "run"
    assert train(program, training_data, run, 1) == 0
    weights = resolve_checkpoint(run) / "model.safetensors"
    first_key, first = next(iter(load_file(weights).items()))
    replacement = tmp_path / "replacement"  # written aside, then moved: `first` maps the old file
    if damage == "pickle":
        torch.save({first_key: first}, replacement)
        expected = ["not a safetensors file (it looks like a torch.save pickle)", "never pickles"]
    else:
        save_file({first_key: torch.zeros(*first.shape, 3)}, str(replacement))
        expected = ["weights do not match the model", f"{first_key}: checkpoint {(*first.shape, 3)} vs model"]
    os.replace(replacement, weights)
    capsys.readouterr()
    assert train(program, training_data, run, 2) == 2
    err = capsys.readouterr().err
    assert all(text in err for text in expected), err


def test_sigterm_saves_the_dynamics_run_at_the_step_boundary(
    training_data: TrainingData, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Row 6 for the dynamics program (the tokenizer's is in test_train_common.py): a real SIGTERM
    to this process while it trains, sent only while the run's handler is installed."""
    run = tmp_path / "run"

    def send_when_training() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            handler = signal.getsignal(signal.SIGTERM)
            if read_log(run) and getattr(handler, "__self__", None).__class__ is StopFlag:
                os.kill(os.getpid(), signal.SIGTERM)
                return
            time.sleep(0.02)

    sender = threading.Thread(target=send_when_training)
    sender.start()
    try:
        assert train("dynamics", training_data, run, 100_000, "--save-every", "100000") == 130  # EXIT_STOPPED
    finally:
        sender.join()
    out = capsys.readouterr().out
    assert "stopped at step" in out and "(SIGTERM)" in out
    step = load_checkpoint(run).step
    assert step >= 1 and [r["step"] for r in read_log(run) if "loss" in r][-1] == step
    assert train("dynamics", training_data, run, step + 1) == 0
    assert f"from step {step}" in capsys.readouterr().out
    assert load_checkpoint(run).step == step + 1


@pytest.mark.parametrize(
    "losses",
    [
        [],
        # the discriminator trains from step 1 and its term ramps in across the interruption
        ["--adversarial-weight", "0.5", "--adversarial-start", "1", "--adversarial-ramp", "2", "--frequency-weight", "0.1"],
    ],
    ids=["pixel", "adversarial"],
)
def test_an_interrupted_tokenizer_run_resumes_exactly(
    losses: list[str],
    training_data: TrainingData,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Row 3 for the tokenizer (the dynamics program's is in test_train_dynamics.py): 4 steps straight
    == stopped after step 2, then the same command again; weights, EMA, optimizer, sampler, RNG, and
    the discriminator (weights and Adam moments, in training.safetensors) with the adversarial loss."""
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert train("tokenizer", training_data, straight, 4, "--warmup-steps", "2", *losses) == 0
    with monkeypatch.context() as patch:
        stops = iter([False, True])
        patch.setattr(TrainingSession, "should_stop", lambda self: next(stops))
        assert (
            train("tokenizer", training_data, resumed, 4, "--warmup-steps", "2", "--save-every", "100", *losses)
            == 0
        )
    assert "stopped at step 2" in capsys.readouterr().out
    assert train("tokenizer", training_data, resumed, 4, "--warmup-steps", "2", *losses) == 0
    assert "from step 2" in capsys.readouterr().out
    a_dir, b_dir = resolve_checkpoint(straight), resolve_checkpoint(resumed)
    assert a_dir.name == b_dir.name == "step-00000004"
    for name in ("model.safetensors", "ema.safetensors", "training.safetensors"):
        a, b = load_file(a_dir / name), load_file(b_dir / name)
        different = [key for key in a if not torch.equal(a[key], b[key])]
        assert a.keys() == b.keys() and not different, f"{name}: {different}"
    shutil.rmtree(straight)


def test_a_sampler_resumed_with_another_number_of_ranks_keeps_its_share_of_the_epoch(
    training_data: TrainingData,
) -> None:
    from wm_video.data.cache import load_cache

    cache = load_cache(training_data.data, size=32, progress=False)
    two = ClipSampler(cache, 4, seed=3, rank=0, world_size=2)
    two.sample_batch(5)  # 10 of the epoch's clips drawn by the two ranks together
    one = ClipSampler(cache, 4, seed=3)
    one.load_state_dict(two.state_dict(), saved_world_size=2)
    assert one.state_dict() == {"epoch": 0, "position": 10}
