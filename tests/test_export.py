"""``wm-video export``: a shipped world folder loads everywhere a checkpoint does, on any machine."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import MICRO_DYNAMICS, MICRO_TOKENIZER, SPACE, make_dataset, save_random_tokenizer
from safetensors import safe_open

from wm_video.checkpoint import load_checkpoint, load_tokenizer, save_checkpoint
from wm_video.cli import main as cli_main
from wm_video.data.tokens import tokenizer_fingerprint
from wm_video.dynamics import DynamicsModel
from wm_video.engine import load_world
from wm_video.errors import InputError
from wm_video.export import export_world
from wm_video.play.start import dataset_info, default_start

DYNAMICS = MICRO_DYNAMICS


@pytest.fixture
def trained(tmp_path: Path) -> tuple[Path, Path]:
    """A dataset and a dynamics run that records it, its held-out episode and its tokenizer."""
    data = make_dataset(tmp_path / "ds", [12, 7, 20]).root
    tokenizer = save_random_tokenizer(tmp_path / "tokenizer", MICRO_TOKENIZER)
    torch.manual_seed(1)
    model, ema = DynamicsModel(DYNAMICS), DynamicsModel(DYNAMICS)
    save_checkpoint(
        tmp_path / "dynamics",
        kind="dynamics",
        config=DYNAMICS.to_dict(),
        step=7,
        weights=model.state_dict(),
        ema_weights=ema.state_dict(),
        training_state={"optimizer": torch.zeros(3)},
        meta={"data": str(data), "tokenizer": str(tokenizer.resolve()), "heldout_episodes": [2]},
    )
    return data, tmp_path / "dynamics"


def play_frames(checkpoint: Path, frames: np.ndarray, actions: np.ndarray) -> np.ndarray:
    world = load_world(checkpoint, seed=3)
    world.reset(frames[:3], actions[:2])
    return np.stack([world.step(actions[i]) for i in range(2, 6)])


def test_an_exported_world_plays_like_its_run_from_anywhere(
    tmp_path: Path, trained: tuple[Path, Path]
) -> None:
    data, run = trained
    frames = np.stack([np.full((32, 32, 3), 30 * i, np.uint8) for i in range(8)])
    actions = np.tile(np.array([[1, 0, 0.5]], np.float32), (8, 1))

    exact = export_world(run, tmp_path / "exact", dtype="float32")
    assert (exact.dynamics_step, exact.tokenizer_step, exact.start_frames) == (7, 0, 3)
    assert sorted(p.name for p in exact.out.iterdir()) == [
        "dynamics",
        "start.safetensors",
        "tokenizer",
        "world.json",
    ]
    assert sorted(p.name for p in (exact.out / "dynamics").iterdir()) == [
        "COMPLETE",
        "checkpoint.json",
        "model.safetensors",
    ]  # inference weights only: no optimizer state
    np.testing.assert_array_equal(play_frames(exact.out, frames, actions), play_frames(run, frames, actions))

    half = export_world(run, tmp_path / "half")  # float16 by default: half the bytes
    assert half.weight_bytes < 0.55 * exact.weight_bytes
    with safe_open(str(half.out / "dynamics" / "model.safetensors"), "pt") as stored:
        assert {stored.get_tensor(k).dtype for k in stored.keys()} == {torch.float16}
    ema = load_checkpoint(run, kind="dynamics").ema_weights
    assert ema is not None
    loaded = load_world(half.out).dynamics.state_dict()
    for key, tensor in ema.items():  # the EMA weights went, and come back as float32
        assert loaded[key].dtype == torch.float32
        torch.testing.assert_close(loaded[key], tensor, rtol=1e-3, atol=1e-4)
    tokenizer, saved = load_tokenizer(half.out)  # the same folder names the tokenizer too
    assert saved.path == half.out / "tokenizer" and tokenizer.config == MICRO_TOKENIZER
    shipped_meta = load_checkpoint(half.out, kind="dynamics").meta  # names the tokenizer as shipped
    assert shipped_meta["tokenizer_fingerprint"] == tokenizer_fingerprint(tokenizer)
    assert json.loads((half.out / "world.json").read_text())["weights_dtype"] == "float16"

    # Copied to another machine, without the dataset: the world still starts from held-out footage.
    moved = shutil.copytree(exact.out, tmp_path / "elsewhere" / "default")
    shutil.rmtree(data)
    world = load_world(moved)
    info = dataset_info(world.meta, SPACE.names)
    assert info.root is None and info.start == moved / "start.safetensors"
    assert info.keymap == dict(SPACE.default_keymap) and info.fps == 17.5
    start = default_start(info, space=SPACE, context_frames=3, image_size=32)
    expected = make_dataset(tmp_path / "again", [12, 7, 20])  # the same synthetic footage
    np.testing.assert_array_equal(start.frames, expected.frames[2][:3])
    assert start.actions is not None
    np.testing.assert_array_equal(start.actions, expected.actions[2][:2])
    assert world.reset(start.frames, start.actions).shape == (32, 32, 3)


def test_export_refuses_a_folder_that_is_not_a_world(tmp_path: Path, trained: tuple[Path, Path]) -> None:
    _, run = trained
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match="not an exported world"):
        export_world(run, tmp_path / "busy")
    assert (tmp_path / "busy" / "notes.txt").read_text() == "mine"
    with pytest.raises(InputError, match="is a tokenizer checkpoint"):
        export_world(tmp_path / "tokenizer", tmp_path / "out")


def test_export_command(
    tmp_path: Path, trained: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    _, run = trained
    out = tmp_path / "checkpoints" / "default"
    assert cli_main(["export", str(run), "--out", str(out)]) == 0
    assert "dynamics step 7, tokenizer step 0" in capsys.readouterr().out
    assert cli_main(["export", str(run), "--out", str(out)]) == 0  # exporting again replaces it
    assert load_checkpoint(out, kind="dynamics").meta["tokenizer"] == "../tokenizer"


def test_a_world_keeps_its_sampling_settings(
    tmp_path: Path, trained: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """`export --temperature/--top-k/--passes/--guidance/--order` stores how the world draws its frames; play and eval
    use it, and their own flags replace single settings."""
    _, run = trained
    out = tmp_path / "world"
    flags = ["--temperature", "0.7", "--top-k", "3", "--guidance", "2", "--order", "certain"]
    assert cli_main(["export", str(run), "--out", str(out), *flags]) == 0
    stored = {"temperature": 0.7, "top_k": 3, "passes": None, "choice_noise": 1.0, "guidance": 2.0, "order": "certain"}
    assert json.loads((out / "world.json").read_text())["sampling"] == stored
    world = load_world(out)
    assert (world.sampler.config.temperature, world.sampler.config.top_k) == (0.7, 3)
    assert world.sampler.config.order == "certain"
    assert world.sampler.guided and world.reference_cache is not None
    world = load_world(out, sampling={"temperature": 1.0, "passes": 2, "guidance": 1.0})
    assert not world.sampler.guided and world.reference_cache is None
    config = world.sampler.config
    assert (config.temperature, config.top_k, config.passes, world.sampler.passes) == (1.0, 3, 2, 2)
    assert load_world(run).sampler.config.temperature == 1.0  # a training run: the defaults

    # the settings change the frames drawn (greedy versus sampled, same seed and start)
    frames = np.random.default_rng(0).integers(0, 255, (6, 32, 32, 3), dtype=np.uint8)
    actions = np.zeros((6, len(SPACE.names)), np.float32)
    greedy = tmp_path / "greedy"
    assert cli_main(["export", str(run), "--out", str(greedy), "--temperature", "0"]) == 0
    assert not np.array_equal(play_frames(greedy, frames, actions), play_frames(out, frames, actions))

    checkpoint = json.loads((out / "dynamics" / "checkpoint.json").read_text())
    checkpoint["meta"]["sampling"] = {"temprature": 0.5}
    (out / "dynamics" / "checkpoint.json").write_text(json.dumps(checkpoint))
    with pytest.raises(InputError, match=r"checkpoint.json \(meta.sampling\): unknown sampling settings"):
        load_world(out)
    capsys.readouterr()
    assert cli_main(["export", str(run), "--out", str(tmp_path / "x"), "--passes", "9"]) == 2
    assert "passes must lie in 1..8" in capsys.readouterr().err
