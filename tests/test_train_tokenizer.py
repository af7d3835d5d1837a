"""The tokenizer training program end to end on a tiny dataset: logs, samples, checkpoints, resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import MICRO_DYNAMICS, MICRO_TOKENIZER, TinyDataset, TrainingData

from wm_video.checkpoint import load_checkpoint, load_tokenizer
from wm_video.cli import main as cli_main
from wm_video.dynamics import DYNAMICS_PRESETS
from wm_video.engine import load_world
from wm_video.tokenizer import TOKENIZER_PRESETS
from wm_video.tokenizer.discriminator import PatchDiscriminator
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


def test_patch_size_and_levels_override_the_preset(
    tiny_dataset: TinyDataset, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """--patch-size 4 gives 4× the tokens of the preset's 8 and --levels more bits a token (issue 21:
    a ball a pixel or two wide); a dynamics model trains on that tokenizer and the world plays."""
    monkeypatch.setitem(TOKENIZER_PRESETS, "tiny", MICRO_TOKENIZER)  # 32 px, patch 8: 16 tokens/frame
    monkeypatch.setitem(DYNAMICS_PRESETS, "tiny", MICRO_DYNAMICS)
    run = tmp_path / "run"
    assert _train(tiny_dataset.root, run, 2, "--patch-size", "4", "--levels", "8,8,8,5,5,5") == 0
    assert "64 tokens/frame (1022 bits)" in capsys.readouterr().out
    tokenizer, _ = load_tokenizer(run)
    assert tokenizer.config.tokens_per_frame == 4 * MICRO_TOKENIZER.tokens_per_frame
    assert tokenizer.config.levels == (8, 8, 8, 5, 5, 5) and tokenizer.config.dim == MICRO_TOKENIZER.dim
    program = json.loads((run / "run.json").read_text())["program"]
    assert (program["patch_size"], program["levels"]) == (4, [8, 8, 8, 5, 5, 5])

    world_run = tmp_path / "world"
    assert cli_main(
        [
            "train", "dynamics", "--data", str(tiny_dataset.root), "--tokenizer", str(run), "--out", str(world_run),
            "--max-steps", "1", "--batch-size", "1", "--clip-len", "4", "--eval-every", "0", "--no-progress",
        ]
    ) == 0  # fmt: skip
    world = load_world(world_run)
    assert world.dynamics.config.grid_size == 8 and world.dynamics.config.levels == (8, 8, 8, 5, 5, 5)
    frames, actions = tiny_dataset.frames[0], tiny_dataset.actions[0]
    world.reset(frames[:3], actions[:2])
    assert world.step(actions[2]).shape == (32, 32, 3)


def test_code_embedding_is_added_to_an_init_and_recorded(
    tiny_dataset: TinyDataset, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--code-embedding on a fresh run gives the decoder a vector per code; with --init it is added at
    zero to a tokenizer without one (it decodes as before: tests/test_tokenizer.py), and the run resumes with it."""
    monkeypatch.setitem(TOKENIZER_PRESETS, "tiny", MICRO_TOKENIZER)
    plain, extended = tmp_path / "plain", tmp_path / "extended"
    assert _train(tiny_dataset.root, plain, 1) == 0
    assert _train(tiny_dataset.root, extended, 2, "--init", str(plain), "--code-embedding") == 0
    before, _ = load_tokenizer(plain)
    after, _ = load_tokenizer(extended)
    assert not before.config.code_embedding and after.config.code_embedding and after.code_embed is not None
    assert after.code_embed.weight.abs().sum() > 0  # it trained from its zeros
    assert json.loads((extended / "run.json").read_text())["program"]["code_embedding"] is True
    assert _train(tiny_dataset.root, extended, 3, "--init", str(plain), "--code-embedding") == 0  # resumes
    assert load_checkpoint(extended).step == 3
    fresh = tmp_path / "fresh"
    assert _train(tiny_dataset.root, fresh, 1, "--code-embedding") == 0
    assert load_tokenizer(fresh)[0].config.code_embedding


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--patch-size", "5"], "image_size 32 is not a multiple of patch_size 5"),
        (["--patch-size", "0"], "--patch-size: must be ≥ 1"),
        (["--levels", "8,1"], "--levels: each level must be ≥ 2"),
        (["--levels", "8,x"], "--levels: must be comma-separated integers"),
    ],
)
def test_bad_shape_flags_are_one_clear_line(
    tiny_dataset: TinyDataset,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    flags: list[str],
    message: str,
) -> None:
    monkeypatch.setitem(TOKENIZER_PRESETS, "tiny", MICRO_TOKENIZER)
    try:
        status = _train(tiny_dataset.root, tmp_path / "run", 1, *flags)
    except SystemExit as stop:  # argparse rejects a flag's type itself
        status = int(stop.code or 0)
    assert status == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]  # argparse prints its usage above
    assert error.startswith("wm-video train tokenizer: error: ") and message in error
    assert not (tmp_path / "run").exists()


ADVERSARIAL = ["--adversarial-weight", "0.5", "--adversarial-start", "1", "--adversarial-ramp", "2"]


def test_a_fine_tune_trains_a_fresh_discriminator_and_logs_its_terms(
    training_data: TrainingData, tmp_path: Path
) -> None:
    """--init starts from a trained tokenizer; the discriminator starts fresh, trains from
    --adversarial-start at its own constant learning rate, and is saved in the checkpoint's
    training state, not in its weights."""
    run = tmp_path / "run"
    assert _train(training_data.data, run, 3, "--eval-every", "0", "--init", str(training_data.tokenizer), *ADVERSARIAL,
                  "--frequency-weight", "0.1", "--discriminator-lr", "3e-4") == 0  # fmt: skip
    records = [r for r in read_log(run) if "loss" in r]
    assert [("discriminator_loss" in r) for r in records] == [False, True, True]
    assert all("frequency" in r for r in records)
    assert all(0 <= r["adaptive_weight"] <= 1e4 for r in records[1:])
    checkpoint = load_checkpoint(run, kind="tokenizer")
    assert not any(key.startswith("net.") for key in checkpoint.weights)
    saved = checkpoint.training_state["discriminator"]
    assert set(saved) == set(PatchDiscriminator().state_dict())
    assert checkpoint.meta["run"]["program"]["adversarial"]["weight"] == 0.5
    groups = checkpoint.training_state["optimizer"]["param_groups"]
    assert [g["lr"] for g in groups][2] == 3e-4 and groups[0]["lr"] != 3e-4  # the tokenizer's follows --lr


def test_a_run_cannot_resume_with_the_discriminator_switched(
    training_data: TrainingData, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(TOKENIZER_PRESETS, "tiny", MICRO_TOKENIZER)
    run = tmp_path / "run"
    assert _train(training_data.data, run, 1) == 0
    assert _train(training_data.data, run, 2, *ADVERSARIAL) == 2
    error = capsys.readouterr().err.strip()
    assert "trained without a discriminator" in error and len(error.splitlines()) == 1


@pytest.mark.parametrize(
    "flags",
    [
        ["--adversarial-weight", "-0.1"],
        ["--adversarial-weight", "nan"],
        ["--adversarial-start", "-3"],
        ["--adversarial-ramp", "x"],
        ["--frequency-weight", "inf"],
        ["--discriminator-lr", "0"],
        ["--init", "x", "--patch-size", "4"],
    ],
)
def test_bad_sharpness_flags_are_one_line_with_status_2(
    flags: list[str], training_data: TrainingData, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    try:
        status = _train(training_data.data, tmp_path / "run", 1, *flags)
    except SystemExit as exit_:  # refused by the parser
        status = int(exit_.code or 0)
    error = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and flags[0] in error[-1] and not (tmp_path / "run").exists()
