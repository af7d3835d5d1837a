"""The dynamics training program end to end on a tiny dataset and a tiny random tokenizer:
logs, held-out metrics, samples, a playable checkpoint, the token cache, resume, bad input."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import SPACE, TinyDataset, make_dataset
from safetensors.torch import load_file

from wm_video.checkpoint import load_checkpoint, resolve_checkpoint, save_checkpoint
from wm_video.cli import main as cli_main
from wm_video.dynamics import DYNAMICS_PRESETS, DynamicsConfig
from wm_video.engine import load_world
from wm_video.tokenizer import TokenizerConfig, VideoTokenizer
from wm_video.train.common import read_log
from wm_video.train.session import TrainingSession

# Small enough that a step and a held-out check take about a second on a busy 2-core CPU (the
# tiny presets take ~10 s per check there).
TOKENIZER = TokenizerConfig(
    image_size=32, patch_size=8, dim=32, heads=2, encoder_layers=1, decoder_layers=1, temporal_window=3
)  # 4×4 = 16 tokens/frame
DYNAMICS = DynamicsConfig(dim=32, heads=2, trunk_layers=1, head_layers=1, context_frames=3)
LENGTHS = [24, 20, 30]  # 0.1 held out: the last episode


@dataclass(frozen=True)
class Setup:
    data: TinyDataset
    tokenizer: Path  # a tokenizer run folder: random weights saved at step 0
    run: Path  # a dynamics run trained 4 steps by `train`; tests copy it before changing it


def train(data: Path, tokenizer: Path, out: Path, steps: int, *extra: str) -> int:
    return cli_main(
        [
            "train", "dynamics", "--data", str(data), "--tokenizer", str(tokenizer), "--out", str(out),
            "--max-steps", str(steps), "--batch-size", "2", "--clip-len", "8", "--log-every", "1",
            "--eval-every", "2", "--save-every", "2", "--warmup-steps", "2", "--no-progress", *extra,
        ]
    )  # fmt: skip


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Setup:
    root = tmp_path_factory.mktemp("dynamics")
    data = make_dataset(root / "ds", LENGTHS)
    torch.manual_seed(0)
    tokenizer = VideoTokenizer(TOKENIZER)
    save_checkpoint(
        root / "tokenizer",
        kind="tokenizer",
        config=TOKENIZER.to_dict(),
        step=0,
        weights=tokenizer.state_dict(),
        keep=1,
    )
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(DYNAMICS_PRESETS, "tiny", DYNAMICS)
        assert train(data.root, root / "tokenizer", root / "run", 4) == 0
    return Setup(data, root / "tokenizer", root / "run")


@pytest.fixture(autouse=True)
def small_preset(monkeypatch: pytest.MonkeyPatch) -> None:
    """`--preset tiny` builds the small shape (the program reads the preset from this dict)."""
    monkeypatch.setitem(DYNAMICS_PRESETS, "tiny", DYNAMICS)


def test_train_logs_evaluates_and_saves_a_playable_world(setup: Setup) -> None:
    run = setup.run
    records = read_log(run)
    assert [r["step"] for r in records if "loss" in r] == [1, 2, 3, 4]
    assert all(r["loss"] > 0 and 0 <= r["token_accuracy"] <= 1 for r in records if "loss" in r)
    heldout = [r for r in records if "heldout_next_psnr" in r]
    assert [r["step"] for r in heldout] == [2, 4]
    for record in heldout:
        assert np.isfinite(record["heldout_next_psnr"]) and np.isfinite(record["heldout_delta_psnr_t4"])
        assert 0 <= record["heldout_token_accuracy"] <= 1
    assert sorted(p.name for p in (run / "samples").iterdir()) == ["step-00000002.png", "step-00000004.png"]
    run_config = json.loads((run / "run.json").read_text())
    assert run_config["kind"] == "dynamics" and run_config["program"]["clip_len"] == 8

    checkpoint = load_checkpoint(run, kind="dynamics")
    assert checkpoint.step == 4 and checkpoint.ema_weights is not None and checkpoint.training_state
    recorded = Path(checkpoint.meta["tokenizer"])
    assert not recorded.is_absolute()  # relative to the step folder: the runs can move together
    assert (checkpoint.path / recorded).resolve() == resolve_checkpoint(setup.tokenizer).resolve()
    assert checkpoint.meta["heldout_episodes"] == [len(LENGTHS) - 1] and checkpoint.meta["probe_is_heldout"]
    config = DynamicsConfig.from_dict(checkpoint.config)
    assert config.action_names == SPACE.names and config.action_buttons == len(SPACE.buttons)
    assert (config.grid_size, config.levels) == (TOKENIZER.grid_size, TOKENIZER.levels)
    assert (config.dim, config.trunk_layers) == (DYNAMICS.dim, DYNAMICS.trunk_layers)

    world = load_world(run)  # finds the tokenizer through meta.tokenizer
    frames, actions = setup.data.frames[0][:3], setup.data.actions[0]
    shown = world.reset(frames, actions[:2])
    assert shown.shape == (32, 32, 3) and shown.dtype == np.uint8
    for action in actions[2:4]:
        frame = world.step(action)
        assert frame.shape == (32, 32, 3) and frame.dtype == np.uint8


def test_the_token_cache_is_built_once(setup: Setup, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    caches = list((setup.data.root / ".cache").glob("tokens-*"))
    assert len(caches) == 1 and (caches[0] / "manifest.json").is_file()

    def no_encoding(*args: object, **kwargs: object) -> None:
        raise AssertionError("the dataset was tokenized again")

    monkeypatch.setattr("wm_video.data.tokens._tokenize_into", no_encoding)
    assert train(setup.data.root, setup.tokenizer, tmp_path / "second", 1) == 0
    assert load_checkpoint(tmp_path / "second").step == 1
    assert list((setup.data.root / ".cache").glob("tokens-*")) == caches


def test_the_same_command_with_more_steps_resumes(
    setup: Setup, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    shutil.copytree(setup.run, run)
    assert train(setup.data.root, setup.tokenizer, run, 6) == 0
    assert "resuming" in capsys.readouterr().out
    assert [r["step"] for r in read_log(run) if "loss" in r] == [1, 2, 3, 4, 5, 6]
    assert load_checkpoint(run).step == 6
    assert sorted(p.name for p in (run / "samples").iterdir())[-1] == "step-00000006.png"


def test_an_interrupted_run_resumes_exactly(
    setup: Setup, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """4 steps straight (the setup run) == the same command stopped after step 2 (as by SIGTERM or
    --max-minutes), then run again: weights, EMA and optimizer state bit-identical. Steps 3 and 4
    are past the warm-up, so the learning rate schedule is in play."""
    run = tmp_path / "run"
    with monkeypatch.context() as patch:
        stops = iter([False, True])  # asked after each step
        patch.setattr(TrainingSession, "should_stop", lambda self: next(stops))
        assert train(setup.data.root, setup.tokenizer, run, 4) == 0
    assert "stopped at step 2" in capsys.readouterr().out
    assert load_checkpoint(run).step == 2
    assert train(setup.data.root, setup.tokenizer, run, 4) == 0
    assert "from step 2" in capsys.readouterr().out
    straight, resumed = resolve_checkpoint(setup.run), resolve_checkpoint(run)
    assert straight.name == resumed.name == "step-00000004"
    for name in ("model.safetensors", "ema.safetensors", "training.safetensors"):
        a, b = load_file(straight / name), load_file(resumed / name)
        assert a.keys() == b.keys()
        different = [key for key in a if not torch.equal(a[key], b[key])]
        assert not different, f"{name}: {different}"


def test_corruption_options_are_recorded(setup: Setup, tmp_path: Path) -> None:
    corruption = ["--token-noise", "0.3", "--repeat-frames", "0.5", "--own-frames", "0.25"]
    assert train(setup.data.root, setup.tokenizer, tmp_path / "run", 1, *corruption) == 0
    recorded = json.loads((tmp_path / "run" / "run.json").read_text())["program"]["corruption"]
    assert recorded == {"token_noise": 0.3, "repeat_frames": 0.5, "own_frames": 0.25}


@pytest.mark.parametrize(
    ("case", "extra", "message", "before_the_run_folder"),
    [
        ("no data", [], "missing: dataset folder does not exist", True),
        ("tokenizer not a checkpoint", [], "notes: no complete checkpoint", True),
        ("dynamics as tokenizer", [], "is a dynamics checkpoint; expected a tokenizer checkpoint", False),
        ("clip of 1 frame", ["--clip-len", "1"], "--clip-len must be ≥ 2", True),
        ("noise above 1", ["--token-noise", "1.5"], "--token-noise must lie in [0, 1], got 1.5", True),
        (
            "clip longer than every episode",
            ["--clip-len", "100"],
            "no training episode has 100 frames",
            False,
        ),
    ],
)
def test_bad_input_is_one_clear_line(
    setup: Setup,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    case: str,
    extra: list[str],
    message: str,
    before_the_run_folder: bool,
) -> None:
    data, tokenizer = setup.data.root, setup.tokenizer
    if case == "no data":
        data = tmp_path / "missing"
    elif case == "tokenizer not a checkpoint":
        tokenizer = tmp_path / "notes"
        tokenizer.mkdir()
        (tokenizer / "notes.txt").write_text("mine")
    elif case == "dynamics as tokenizer":
        tokenizer = setup.run
    assert train(data, tokenizer, tmp_path / "run", 1, *extra) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("wm-video train dynamics: error: ") and "\n" not in err
    assert message in err
    if before_the_run_folder:
        assert not (tmp_path / "run").exists()


def test_resuming_with_another_tokenizer_is_refused(setup: Setup, tmp_path: Path, capsys) -> None:
    run = tmp_path / "run"
    shutil.copytree(setup.run, run)
    other = VideoTokenizer(TOKENIZER)  # new random weights, same config
    save_checkpoint(
        tmp_path / "other",
        kind="tokenizer",
        config=TOKENIZER.to_dict(),
        step=0,
        weights=other.state_dict(),
        ema_weights=None,
        training_state=None,
        meta={},
        keep=1,
    )
    capsys.readouterr()
    assert train(setup.data.root, tmp_path / "other", run, 6) == 2
    error = capsys.readouterr().err
    assert "was trained with the tokenizer" in error and "use a new --out" in error
    assert resolve_checkpoint(run).name == "step-00000004"  # nothing was trained


def test_eval_dynamics_reports_fidelity_control_and_drift(setup: Setup, tmp_path: Path, capsys) -> None:
    report = tmp_path / "report.json"
    args = ["eval", "dynamics", "--checkpoint", str(setup.run), "--clips", "2", "--context", "2"]
    assert cli_main([*args, "--horizon", "3", "--json", str(report)]) == 0
    out = capsys.readouterr().out
    assert "teacher-forced next frame" in out and "ΔPSNR(t=3)" in out and "held-out episodes" in out
    data = json.loads(report.read_text())
    assert data["step"] == 4 and data["clips"] == 2 and len(data["drift"]["psnr"]["mean"]) == 3
    assert np.isfinite(data["teacher_forced"]["psnr"]) and np.isfinite(data["control"]["delta_psnr_t4"])
    # clips longer than every held-out episode: one clear line
    assert cli_main([*args, "--horizon", "40"]) == 2
    assert "no episode is long enough" in capsys.readouterr().err
