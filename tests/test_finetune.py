"""`wm-video finetune`: a trained world adapted to new footage with another action set and frame size;
actions matched by name keep their embedding, so the model reads them exactly as before."""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import make_dataset, random_actions, smooth_frames

from wm_video.actions import ActionSpace
from wm_video.checkpoint import (
    Checkpoint,
    load_checkpoint,
    recorded_tokenizer,
    resolve_checkpoint,
    save_checkpoint,
)
from wm_video.cli import main as cli_main
from wm_video.data.video import VideoSettings
from wm_video.data.writer import DatasetWriter
from wm_video.dynamics import DYNAMICS_PRESETS, DynamicsConfig, DynamicsModel
from wm_video.engine import load_world
from wm_video.errors import InputError
from wm_video.tokenizer import TokenizerConfig, VideoTokenizer
from wm_video.tokenizer.config import TOKENIZER_PRESETS
from wm_video.train.dynamics import DynamicsTrainOptions, DynamicsTrainResult, initial_model
from wm_video.train.finetune import FinetuneOptions, finetune
from wm_video.train.options import SessionOptions
from wm_video.train.remap import remap_action_weights
from wm_video.train.tokenizer import TokenizerTrainOptions, TokenizerTrainResult

TOKENIZER = TokenizerConfig(
    image_size=32, patch_size=8, dim=32, heads=2, encoder_layers=1, decoder_layers=1, temporal_window=3
)
DYNAMICS = DynamicsConfig(dim=32, heads=2, trunk_layers=1, head_layers=1, context_frames=3)
NEW_SPACE = ActionSpace(("forward", "jump"), ("mouse_dx",), {"w": "forward", "space": "jump"})


def source_config(names: tuple[str, ...], buttons: int, scale: tuple[float, ...]) -> DynamicsConfig:
    return replace(
        DYNAMICS,
        grid_size=TOKENIZER.grid_size,
        levels=TOKENIZER.levels,
        action_names=names,
        action_buttons=buttons,
        action_scale=scale,
    )


def test_matching_actions_keep_their_meaning_and_new_ones_start_at_zero(tmp_path: Path) -> None:
    old = source_config(("forward", "turn_left", "mouse_dx"), 2, (1.0, 1.0, 2.0))
    new = source_config(("forward", "jump", "mouse_dx"), 2, (1.0, 1.0, 4.0))
    torch.manual_seed(0)
    source = DynamicsModel(old).eval()
    save_checkpoint(
        tmp_path / "src", kind="dynamics", config=old.to_dict(), step=5, weights=source.state_dict()
    )
    model, config, mapping = initial_model(tmp_path / "src", new)
    assert (mapping.kept, mapping.new, mapping.dropped) == (
        ("forward", "mouse_dx"),
        ("jump",),
        ("turn_left",),
    )
    assert config.action_names == new.action_names and config.action_scale == new.action_scale
    assert config.dim == DYNAMICS.dim  # the source's shape, not a preset's
    weights, _ = remap_action_weights(source.state_dict(), old, new)
    assert torch.equal(weights["action_embed.0.weight"][:, 1], torch.zeros(DYNAMICS.dim))
    # forward pressed and a mouse move: the same embedding before and after (delta rescaled)
    with torch.no_grad():
        before = source.embed_actions(torch.tensor([[1.0, 0.0, 0.7]]))
        after = model.eval().embed_actions(torch.tensor([[1.0, 0.0, 0.7]]))
    torch.testing.assert_close(after, before)
    with pytest.raises(Exception, match="fine-tune with the tokenizer this model was trained with"):
        initial_model(tmp_path / "src", replace(new, grid_size=2))


def test_the_tokenizer_is_found_through_the_checkpoint(tmp_path: Path) -> None:
    def checkpoint(meta: dict[str, str]) -> Checkpoint:
        return Checkpoint(
            tmp_path / "run" / "checkpoints" / "step-1", "dynamics", {}, 1, {}, None, None, meta
        )

    assert recorded_tokenizer(checkpoint({"tokenizer": "/abs/tok"})) == Path("/abs/tok")
    relative = recorded_tokenizer(checkpoint({"tokenizer": "../../tok"}))  # as a shipped checkpoint has it
    assert relative == tmp_path / "run" / "tok"
    with pytest.raises(Exception, match="does not name its tokenizer"):
        recorded_tokenizer(checkpoint({}))


def test_finetune_command_adapts_a_world_to_new_footage(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(DYNAMICS_PRESETS, "tiny", DYNAMICS)
    old_data = make_dataset(tmp_path / "old", [20, 20])
    torch.manual_seed(0)
    save_checkpoint(
        tmp_path / "tokenizer",
        kind="tokenizer",
        config=TOKENIZER.to_dict(),
        step=0,
        weights=VideoTokenizer(TOKENIZER).state_dict(),
    )
    common = [
        "--batch-size",
        "2",
        "--log-every",
        "1",
        "--eval-every",
        "0",
        "--no-progress",
        "--warmup-steps",
        "1",
    ]
    assert (
        cli_main(
            ["train", "dynamics", "--data", str(old_data.root), "--tokenizer", str(tmp_path / "tokenizer")]
            + ["--out", str(tmp_path / "source"), "--max-steps", "2", "--clip-len", "4", *common]
        )
        == 0
    )
    new_data = tmp_path / "new"  # another game: 48 px frames, a "jump" button instead of "turn_left"
    with DatasetWriter(
        new_data,
        fps=15,
        action_space=NEW_SPACE,
        frame_shape=(48, 48, 3),
        task="new",
        video=VideoSettings(codec="lossless"),
    ) as writer:
        for episode in range(2):
            writer.write_episode(smooth_frames(16, 48, 10 + episode), random_actions(16, 10 + episode))
    capsys.readouterr()
    command = [
        "finetune",
        "--data",
        str(new_data),
        "--from",
        str(tmp_path / "source"),
        "--out",
        str(tmp_path / "ft"),
    ]
    command += ["--tokenizer-steps", "2", "--dynamics-steps", "2", *common]
    tokenizer_loss = ["--change-weight", "20", "--change-reference", "median", "--tokenizer-lr", "3e-4"]
    tokenizer_loss += ["--tokenizer-batch-size", "3"]
    assert cli_main([*command, *tokenizer_loss, "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "phase 1/2" in out and "phase 2/2" in out and "actions kept: forward, mouse_dx; new: jump" in out
    phase1 = json.loads((tmp_path / "ft" / "tokenizer" / "run.json").read_text())
    assert (phase1["program"]["change_weight"], phase1["program"]["change_reference"]) == (20.0, "median")
    assert phase1["session"]["lr"] == 3e-4 and phase1["session"]["batch_size"] == 3
    assert torch.get_num_threads() == 1

    tokenizer = load_checkpoint(tmp_path / "ft" / "tokenizer", kind="tokenizer")
    assert tokenizer.step == 2 and tokenizer.config == TOKENIZER.to_dict()
    assert tokenizer.meta["run"]["program"]["init"] == str(resolve_checkpoint(tmp_path / "tokenizer"))
    dynamics = load_checkpoint(tmp_path / "ft" / "dynamics", kind="dynamics")
    assert dynamics.step == 2 and dynamics.config["action_names"] == ["forward", "jump", "mouse_dx"]
    assert dynamics.meta["actions"] == {
        "kept": ["forward", "mouse_dx"],
        "new": ["jump"],
        "dropped": ["turn_left"],
    }
    assert recorded_tokenizer(dynamics).resolve() == resolve_checkpoint(tmp_path / "ft" / "tokenizer").resolve()
    assert dynamics.meta["finetuned_from"] == str(resolve_checkpoint(tmp_path / "source").resolve())

    world = load_world(tmp_path / "ft" / "dynamics")  # plays with the fine-tuned tokenizer
    frames = smooth_frames(3, 32, 0)
    world.reset(frames, np.zeros((2, 3), np.float32))
    assert world.step(np.array([1.0, 1.0, 0.5], np.float32)).shape == (32, 32, 3)

    # the --out folder itself opens the fine-tuned world, in play and eval alike
    assert resolve_checkpoint(tmp_path / "ft") == resolve_checkpoint(tmp_path / "ft" / "dynamics")
    assert resolve_checkpoint(tmp_path / "ft", "tokenizer") == resolve_checkpoint(tmp_path / "ft" / "tokenizer")
    capsys.readouterr()
    assert cli_main(["play", "--checkpoint", str(tmp_path / "ft"), "--headless", "--frames", "2"]) == 0
    assert "played 2 frames" in capsys.readouterr().out

    assert cli_main(command) == 0  # run again: the dynamics phase has begun, so its tokenizer stays
    out = capsys.readouterr().out
    assert "phase 1/2 done" in out and out.count("resuming") == 1
    assert load_checkpoint(tmp_path / "ft" / "dynamics").step == 2

    bad = [
        "finetune",
        "--data",
        str(new_data),
        "--from",
        str(tmp_path / "tokenizer"),
        "--out",
        str(tmp_path / "x"),
    ]
    assert cli_main(bad) == 2
    assert "is a tokenizer checkpoint; expected a dynamics checkpoint" in capsys.readouterr().err


def _source_world(tmp_path: Path) -> Path:
    """A dynamics checkpoint with random weights that names its tokenizer (what `finetune --from` takes)."""
    torch.manual_seed(0)
    save_checkpoint(
        tmp_path / "tokenizer", kind="tokenizer", config=TOKENIZER.to_dict(), step=0,
        weights=VideoTokenizer(TOKENIZER).state_dict(),
    )  # fmt: skip
    config = source_config(("forward", "turn_left", "mouse_dx"), 2, (1.0, 1.0, 1.0))
    save_checkpoint(
        tmp_path / "source", kind="dynamics", config=config.to_dict(), step=1,
        weights=DynamicsModel(config).state_dict(), meta={"tokenizer": str(tmp_path / "tokenizer")},
    )  # fmt: skip
    return tmp_path / "source"


@dataclass
class Phases:
    """What each faked phase of `finetune` was asked to do, in order."""

    tokenizer: list[TokenizerTrainOptions] = field(default_factory=list)
    dynamics: list[DynamicsTrainOptions] = field(default_factory=list)


def _fake_phases(monkeypatch: pytest.MonkeyPatch, *, stopped: bool = False, by_signal: bool = False) -> Phases:
    """Replace the training programs that `finetune` runs by ones that record their options; each
    tokenizer phase reports its max steps, or step 40 when ``stopped`` early (by a signal or for time)."""
    import wm_video.train.finetune as ft

    phases = Phases()

    def fake_tokenizer(options: TokenizerTrainOptions) -> TokenizerTrainResult:
        phases.tokenizer.append(options)
        step = 40 if stopped else options.session.max_steps
        return TokenizerTrainResult(options.session.out, step, None, 151.0, stopped, by_signal)

    def fake_dynamics(options: DynamicsTrainOptions) -> DynamicsTrainResult:
        phases.dynamics.append(options)
        return DynamicsTrainResult(options.session.out, 5, {}, 1.0, False)

    monkeypatch.setattr(ft, "train_tokenizer", fake_tokenizer)
    monkeypatch.setattr(ft, "train_dynamics", fake_dynamics)
    return phases


@pytest.mark.parametrize(("by_signal", "second_phase"), [(False, True), (True, False)])
def test_max_minutes_is_one_budget_for_both_phases(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, by_signal: bool, second_phase: bool
) -> None:
    """The tokenizer phase gets its share of --max-minutes (steps 100 of 400: 2.5 of 10 minutes); when
    it runs out, the dynamics phase starts with what is left. Ctrl-C or SIGTERM ends the command."""
    phases = _fake_phases(monkeypatch, stopped=True, by_signal=by_signal)
    options = FinetuneOptions(
        data=tmp_path / "data",
        source=_source_world(tmp_path),
        session=SessionOptions(out=tmp_path / "ft", max_minutes=10.0),
        tokenizer_steps=100,
        dynamics_steps=300,
    )
    result = finetune(options)
    assert phases.tokenizer[0].session.max_minutes == pytest.approx(2.5)
    assert bool(phases.dynamics) == second_phase and result.stopped_early != second_phase
    assert result.stopped_by_signal == by_signal
    if second_phase:
        left = phases.dynamics[0].session.max_minutes
        assert left is not None and 9.0 < left <= 10.0  # what is left of the whole budget


def test_table_steps_make_a_second_tokenizer_phase_with_its_share_of_the_budget(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--table-steps: RUN/first without the code table, then RUN/tokenizer from it with the table,
    then the dynamics model on RUN/tokenizer; each tokenizer phase gets its steps' share of the budget."""
    phases = _fake_phases(monkeypatch)
    options = FinetuneOptions(
        data=tmp_path / "data",
        source=_source_world(tmp_path),
        session=SessionOptions(out=tmp_path / "ft", max_minutes=10.0, warmup_steps=20),
        tokenizer_steps=100,
        table_steps=300,
        dynamics_steps=100,
        fresh_tokenizer=True,
    )
    result = finetune(options)
    first, table = phases.tokenizer
    assert (first.session.out, table.session.out) == (tmp_path / "ft" / "first", tmp_path / "ft" / "tokenizer")
    assert (first.session.max_steps, table.session.max_steps) == (100, 300)
    assert first.session.max_minutes == pytest.approx(2.0) and table.session.max_minutes == pytest.approx(6.0)
    assert first.init is None and first.config == TOKENIZER and not first.code_embedding
    assert table.init == tmp_path / "ft" / "first" and table.code_embedding and table.config is None
    assert first.session.batch_size == table.session.batch_size == 8 and table.session.warmup_steps == 20
    assert phases.dynamics[0].tokenizer == tmp_path / "ft" / "tokenizer" and result.tokenizer_step == 300

    cases: list[tuple[dict[str, Any], str]] = [
        ({"code_embedding": True}, "give one of them"),
        ({"tokenizer_steps": 0}, "give --tokenizer-steps too"),
        ({"table_steps": -1}, "--table-steps must be ≥ 0"),
    ]
    for bad, message in cases:
        with pytest.raises(InputError, match=message):
            finetune(replace(options, **bad))


def test_the_recipe_in_help_parses_with_the_tokenizer_phase_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    """`finetune --help` ends with the README's recipe; its flags parse, and the tokenizer phase
    weights changed pixels (--change-weight 50) at --tokenizer-lr 5e-4 unless told otherwise."""
    from wm_video.train.cli import RECIPE
    from wm_video.train.finetune import build_parser

    with pytest.raises(SystemExit):
        cli_main(["finetune", "--help"])
    assert RECIPE.splitlines()[1].strip() in capsys.readouterr().out
    command = " ".join(line.strip().rstrip("\\") for line in RECIPE.splitlines()[1:4]).split()
    assert command[:2] == ["wm-video", "finetune"]
    args = build_parser().parse_args(command[2:])
    assert (args.tokenizer_steps, args.dynamics_steps, args.max_minutes) == (1600, 500, 28.0)
    assert args.fresh_tokenizer and not args.code_embedding
    assert (args.change_weight, args.change_reference, args.tokenizer_lr) == (50.0, "previous", 5e-4)
    long_run = " ".join(line.strip().rstrip("\\") for line in RECIPE.splitlines()[-3:]).split()
    args = build_parser().parse_args(long_run[2:])
    assert (args.tokenizer_steps, args.table_steps, args.dynamics_steps, args.max_minutes) == (2500, 1500, 2000, None)
    assert args.fresh_tokenizer and not args.code_embedding and args.tokenizer_batch_size == 8


def test_train_commands_start_from_a_checkpoint_with_init(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`train tokenizer --init` and `train dynamics --init` fine-tune a world's parts one at a time
    (the finetune command's two phases, each with all of its program's flags)."""
    source = _source_world(tmp_path)
    data = make_dataset(tmp_path / "data", [12, 12])
    common = ["--max-steps", "1", "--batch-size", "2", "--eval-every", "0", "--no-progress", "--threads", "1"]
    tokenizer_run = tmp_path / "tok"
    command = ["train", "tokenizer", "--data", str(data.root), "--init", str(tmp_path / "tokenizer")]
    assert cli_main([*command, "--out", str(tokenizer_run), "--clip-len", "3", *common]) == 0
    tokenizer = load_checkpoint(tokenizer_run, kind="tokenizer")
    assert tokenizer.config == TOKENIZER.to_dict()  # the init's shape, not the tiny preset's
    assert tokenizer.meta["run"]["program"]["init"] == str(resolve_checkpoint(tmp_path / "tokenizer"))
    command = ["train", "dynamics", "--data", str(data.root), "--tokenizer", str(tokenizer_run)]
    assert cli_main([*command, "--init", str(source), "--out", str(tmp_path / "dyn"), "--clip-len", "4", *common]) == 0
    dynamics = load_checkpoint(tmp_path / "dyn", kind="dynamics")
    assert dynamics.config["dim"] == DYNAMICS.dim and dynamics.step == 1
    assert dynamics.meta["finetuned_from"] == str(resolve_checkpoint(source).resolve())
    capsys.readouterr()
    shaped = ["--init", str(tmp_path / "tokenizer"), "--levels", "8,8,8,5,5,5", "--out", str(tmp_path / "x")]
    assert cli_main(["train", "tokenizer", "--data", str(data.root), *shaped]) == 2
    assert "--init keeps its checkpoint's shape" in capsys.readouterr().err


def test_the_sharpness_flags_reach_the_tokenizer_phase(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--adversarial-* and --frequency-weight configure the tokenizer phase (its discriminator starts fresh)."""
    import wm_video.train.finetune as ft
    from wm_video.tokenizer.adversarial import AdversarialConfig

    phases = _fake_phases(monkeypatch, stopped=True, by_signal=True)  # Ctrl-C: no phase 2
    flags = ["--adversarial-weight", "0.3", "--adversarial-start", "5", "--adversarial-ramp", "7", "--frequency-weight", "0.2", "--discriminator-lr", "1e-3", "--code-embedding"]
    source = _source_world(tmp_path)
    assert ft.main(["--data", str(tmp_path / "data"), "--from", str(source), "--out", str(tmp_path / "ft"), *flags]) == 130
    seen = phases.tokenizer
    assert seen[0].adversarial == AdversarialConfig(weight=0.3, start=5, ramp_steps=7, discriminator_lr=1e-3)
    assert seen[0].frequency_weight == 0.2 and seen[0].init is not None and seen[0].code_embedding


def test_chain_digits_reaches_the_dynamics_phase(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import wm_video.train.finetune as ft

    phases = _fake_phases(monkeypatch)
    source = _source_world(tmp_path)
    command = ["--data", str(tmp_path / "data"), "--from", str(source), "--tokenizer-steps", "0"]
    assert ft.main([*command, "--out", str(tmp_path / "plain")]) == 0
    assert ft.main([*command, "--out", str(tmp_path / "chained"), "--chain-digits"]) == 0
    assert [options.chain_digits for options in phases.dynamics] == [False, True]


def test_the_long_recipe_trains_first_then_the_table_then_the_dynamics_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`finetune --table-steps`: RUN/first has no code table; RUN/tokenizer starts from it with one and
    is what RUN/dynamics reads; a second run skips both tokenizer phases. The three phases are the
    README's three `train` commands: the same settings give the same weights."""
    source = _source_world(tmp_path)
    data = make_dataset(tmp_path / "data", [12, 12])
    out = tmp_path / "ft"
    command = ["finetune", "--data", str(data.root), "--from", str(source), "--out", str(out)]
    command += ["--fresh-tokenizer", "--tokenizer-steps", "2", "--table-steps", "2", "--dynamics-steps", "2"]
    common = ["--eval-every", "1", "--save-every", "1", "--warmup-steps", "1", "--threads", "1", "--no-progress"]
    dynamics_flags = ["--batch-size", "2", "--clip-len", "4", "--lr", "6e-4"]
    command += [*dynamics_flags, "--tokenizer-batch-size", "3", *common]
    assert cli_main(command) == 0
    printed = capsys.readouterr().out
    assert "phase 1/3: training a fresh tokenizer" in printed and "phase 3/3: fine-tuning" in printed
    assert f"phase 2/3: adding a code table to {out / 'first'}" in printed
    first = load_checkpoint(out / "first", kind="tokenizer")
    table = load_checkpoint(out / "tokenizer", kind="tokenizer")
    assert not first.config.get("code_embedding") and table.config["code_embedding"]
    assert table.meta["run"]["program"]["init"] == str(resolve_checkpoint(out / "first"))
    dynamics = load_checkpoint(out / "dynamics", kind="dynamics")
    assert recorded_tokenizer(dynamics).resolve() == resolve_checkpoint(out / "tokenizer").resolve()
    assert (first.step, table.step, dynamics.step) == (2, 2, 2)
    assert cli_main(command) == 0  # again: both tokenizer phases are behind the dynamics model's start
    assert "phases 1-2/3 done" in capsys.readouterr().out

    monkeypatch.setitem(TOKENIZER_PRESETS, "tiny", TOKENIZER)  # the world's tokenizer shape
    by_hand = tmp_path / "by-hand"
    tokenizer = ["train", "tokenizer", "--data", str(data.root), "--change-weight", "50", "--batch-size", "3"]
    tokenizer += ["--max-steps", "2", *common]
    assert cli_main([*tokenizer, "--out", str(by_hand / "first")]) == 0
    with_table = ["--init", str(by_hand / "first"), "--code-embedding", "--out", str(by_hand / "tokenizer")]
    assert cli_main([*tokenizer, *with_table]) == 0
    train_dynamics = ["train", "dynamics", "--data", str(data.root), "--tokenizer", str(by_hand / "tokenizer")]
    train_dynamics += ["--init", str(source), "--max-steps", "2", "--out", str(by_hand / "dynamics")]
    assert cli_main([*train_dynamics, *dynamics_flags, *common]) == 0
    for phase, kind in [("first", "tokenizer"), ("tokenizer", "tokenizer"), ("dynamics", "dynamics")]:
        ours, theirs = load_checkpoint(out / phase, kind=kind), load_checkpoint(by_hand / phase, kind=kind)
        assert ours.weights.keys() == theirs.weights.keys() and ours.ema_weights is not None
        for name, weight in ours.weights.items():
            torch.testing.assert_close(weight, theirs.weights[name], rtol=0, atol=0, msg=f"{phase}: {name}")
        assert theirs.ema_weights is not None
        for name, weight in ours.ema_weights.items():
            torch.testing.assert_close(weight, theirs.ema_weights[name], rtol=0, atol=0, msg=f"{phase}: {name}")
