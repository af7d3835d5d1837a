"""Checkpoints: save → load round trips, atomic saves, retention, disk full and safe loading."""

from __future__ import annotations

import errno
import os
import random
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from wm_video import checkpoint as ckpt
from wm_video.checkpoint import (
    COMPLETE_MARKER,
    build_model,
    load_checkpoint,
    load_tokenizer,
    load_weights,
    resolve_checkpoint,
    save_checkpoint,
)
from wm_video.errors import InputError
from wm_video.tokenizer import TokenizerConfig, VideoTokenizer

CONFIG = TokenizerConfig(image_size=16, patch_size=8, dim=32, heads=2, encoder_layers=1, decoder_layers=1)


def tiny_model(seed=0, config=CONFIG):
    torch.manual_seed(seed)
    return VideoTokenizer(config)


def save(run, step, model=None, **kwargs):
    model = model or tiny_model(step)
    return save_checkpoint(
        run, kind="tokenizer", config=CONFIG.to_dict(), step=step, weights=model.state_dict(), **kwargs
    )


def frames():
    return torch.rand(1, 2, 3, 16, 16, generator=torch.Generator().manual_seed(1)) * 2 - 1


def step_dirs(run):
    return sorted(p.name for p in (run / "checkpoints").iterdir() if p.name != "last")


@pytest.mark.parametrize("ema", [True, False])
def test_load_tokenizer_reproduces_outputs(tmp_path, ema):
    model, ema_model = tiny_model(0).eval(), tiny_model(1).eval()
    path = save(tmp_path, 5, model, ema_weights=ema_model.state_dict(), meta={"lr": 1e-3})
    assert path == tmp_path / "checkpoints" / "step-00000005"
    loaded, checkpoint = load_tokenizer(tmp_path, ema=ema)
    assert checkpoint.step == 5 and checkpoint.meta == {"lr": 1e-3} and checkpoint.kind == "tokenizer"
    assert not loaded.training
    with torch.no_grad():
        expected = (ema_model if ema else model)(frames()).reconstruction
        assert torch.equal(loaded(frames()).reconstruction, expected)


def test_training_state_round_trip_resumes_optimizer_exactly(tmp_path):
    def train_steps(model, optimizer, count):
        for _ in range(count):
            optimizer.zero_grad()
            model(torch.ones(3, 4)).square().sum().backward()
            optimizer.step()

    model = torch.nn.Linear(4, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    train_steps(model, optimizer, 2)
    state = {
        "optimizer": optimizer.state_dict(),
        "torch_rng": torch.get_rng_state(),
        "numpy_rng": np.random.get_state(),
        "python_rng": random.getstate(),
        "sampler": {"epoch": 3, "position": 17, "lr": 1e-3, "name": "clips", "flags": [True, None]},
        "odd_keys": {0: "a", 1.5: 2, "__tensor__": "not a tensor"},
        "nan": float("nan"),
    }
    save_checkpoint(
        tmp_path, kind="tokenizer", config={}, step=2, weights=model.state_dict(), training_state=state
    )
    loaded = load_checkpoint(tmp_path).training_state
    assert torch.equal(loaded["torch_rng"], state["torch_rng"])
    assert loaded["numpy_rng"][0] == "MT19937" and np.array_equal(
        loaded["numpy_rng"][1], state["numpy_rng"][1]
    )
    np.random.set_state(loaded["numpy_rng"])
    random.setstate(loaded["python_rng"])  # needs tuples back, not lists
    assert loaded["sampler"] == state["sampler"] and loaded["odd_keys"] == state["odd_keys"]
    assert np.isnan(loaded["nan"])
    assert set(loaded["optimizer"]["state"]) == {0, 1}

    resumed_model = torch.nn.Linear(4, 2)
    resumed_model.load_state_dict(load_checkpoint(tmp_path).weights)
    resumed = torch.optim.AdamW(resumed_model.parameters(), lr=0.1)
    resumed.load_state_dict(loaded["optimizer"])
    train_steps(model, optimizer, 2)
    train_steps(resumed_model, resumed, 2)
    for a, b in zip(model.parameters(), resumed_model.parameters(), strict=True):
        assert torch.equal(a, b)


def test_with_training_state_false_skips_it(tmp_path):
    save(tmp_path, 1, training_state={"x": torch.ones(2)})
    assert load_checkpoint(tmp_path, with_training_state=False).training_state is None
    assert load_checkpoint(tmp_path).ema_weights is None


def test_shared_and_non_contiguous_tensors_are_saved(tmp_path):
    shared = torch.arange(12.0).reshape(3, 4)
    weights = {"a": shared, "b": shared, "c": shared.t(), "d": shared[1]}
    save_checkpoint(tmp_path, kind="tokenizer", config={}, step=0, weights=weights)
    loaded = load_checkpoint(tmp_path).weights
    for key, value in weights.items():
        assert torch.equal(loaded[key], value)


def failing_after(monkeypatch, calls, error):
    import safetensors.torch

    real = safetensors.torch.save_file
    count = {"n": 0}

    def save_file(tensors, filename, *args, **kwargs):
        count["n"] += 1
        if count["n"] > calls:
            raise error
        real(tensors, filename, *args, **kwargs)

    monkeypatch.setattr(safetensors.torch, "save_file", save_file)


def test_crash_mid_save_keeps_previous_checkpoint(tmp_path, monkeypatch):
    first = save(tmp_path, 1, ema_weights=tiny_model(9).state_dict())
    failing_after(monkeypatch, 1, RuntimeError("killed"))
    with pytest.raises(RuntimeError, match="killed"):
        save(tmp_path, 2, ema_weights=tiny_model(9).state_dict())
    assert step_dirs(tmp_path) == ["step-00000001"]  # no step-2, no .tmp-* left
    assert (tmp_path / "checkpoints" / "last").read_text().strip() == "step-00000001"
    assert resolve_checkpoint(tmp_path) == first
    load_tokenizer(tmp_path)


def test_disk_full_says_how_much_space_and_keeps_last(tmp_path, monkeypatch):
    save(tmp_path, 1)
    failing_after(monkeypatch, 0, OSError(errno.ENOSPC, "No space left on device"))
    weights = tiny_model(2).state_dict()
    needed = sum(t.nbytes for t in weights.values())
    with pytest.raises(InputError, match="disk full") as caught:
        save(tmp_path, 2)
    assert f"{needed:,} bytes" in str(caught.value) and "last good checkpoint is kept" in str(caught.value)
    assert step_dirs(tmp_path) == ["step-00000001"]
    assert resolve_checkpoint(tmp_path).name == "step-00000001"


def test_retention_keeps_newest_and_survives_a_crash(tmp_path, monkeypatch):
    for step in range(1, 5):
        save(tmp_path, step, keep=2)
    assert step_dirs(tmp_path) == ["step-00000003", "step-00000004"]
    failing_after(monkeypatch, 0, RuntimeError("killed"))
    with pytest.raises(RuntimeError):
        save(tmp_path, 5, keep=2)
    assert step_dirs(tmp_path) == ["step-00000003", "step-00000004"]
    assert load_checkpoint(tmp_path).step == 4


def test_only_the_two_newest_checkpoints_keep_the_training_state(tmp_path):
    """Older kept checkpoints stay loadable for eval and play but drop the optimizer state, which only
    a resume reads: from the newest, or the one before it when the newest is damaged."""
    state = {"optimizer": {"exp_avg": torch.ones(1000)}, "step": 1}
    for step in (1, 2, 3, 4):
        save(tmp_path, step, keep=4, ema_weights=tiny_model(9).state_dict(), training_state=state)
    steps = [tmp_path / "checkpoints" / f"step-{s:08d}" for s in (1, 2, 3, 4)]
    assert [(d / "training.safetensors").exists() for d in steps] == [False, False, True, True]
    older = steps[0]
    assert load_checkpoint(older).training_state is None
    assert load_checkpoint(older).ema_weights is not None
    assert torch.equal(load_checkpoint(tmp_path).training_state["optimizer"]["exp_avg"], torch.ones(1000))
    load_tokenizer(older)  # still a checkpoint to evaluate or play


def test_saving_the_same_step_again_replaces_it(tmp_path):
    save(tmp_path, 3, tiny_model(0))
    save(tmp_path, 3, tiny_model(1))
    assert step_dirs(tmp_path) == ["step-00000003"]
    assert torch.equal(load_checkpoint(tmp_path).weights["encoder_pos"], tiny_model(1).encoder_pos.detach())


def test_incomplete_step_dir_is_never_loaded(tmp_path):
    save(tmp_path, 1)
    second = save(tmp_path, 2)
    (second / COMPLETE_MARKER).unlink()
    with pytest.warns(UserWarning, match="names no complete checkpoint"):
        assert load_checkpoint(tmp_path).step == 1
    assert resolve_checkpoint(tmp_path / "checkpoints" / "step-00000001").name == "step-00000001"
    with pytest.raises(InputError, match="incomplete checkpoint"):
        resolve_checkpoint(second)
    (tmp_path / "checkpoints" / "last").unlink()
    assert resolve_checkpoint(tmp_path / "checkpoints").name == "step-00000001"


def test_only_provably_stale_temp_dirs_are_cleaned_by_the_next_save(tmp_path):
    """Issue 19 item 1: a save removed every .tmp-* folder, the save in progress of another process too."""
    import subprocess
    import sys

    save(tmp_path, 1)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    checkpoints = tmp_path / "checkpoints"
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (checkpoints / f".tmp-step-00000002-{ckpt._HOST}-{dead.pid}-0123abcd").mkdir()
        (checkpoints / f".tmp-step-00000003-{ckpt._HOST}-{alive.pid}-0123abcd").mkdir()  # saving now
        (checkpoints / ".tmp-step-00000004-otherhost-1-0123abcd").mkdir()  # another machine's, fresh
        old = checkpoints / ".tmp-step-00000005-0123456789abcdef"  # an older name, a day old
        old.mkdir()
        os.utime(old, (time.time() - 2 * ckpt.STALE_AFTER_S,) * 2)
        save(tmp_path, 2)
    finally:
        alive.kill()
        alive.wait()
    assert step_dirs(tmp_path) == [
        f".tmp-step-00000003-{ckpt._HOST}-{alive.pid}-0123abcd",
        ".tmp-step-00000004-otherhost-1-0123abcd",
        "step-00000001",
        "step-00000002",
    ]


def test_non_finite_weights_are_refused(tmp_path):
    weights = tiny_model().state_dict()
    weights["to_pixels.bias"][0] = float("nan")
    with pytest.raises(InputError, match="to_pixels.bias"):
        save_checkpoint(tmp_path, kind="tokenizer", config=CONFIG.to_dict(), step=1, weights=weights)
    with pytest.raises(InputError, match="EMA weights 'x'"):
        save(tmp_path, 1, ema_weights={"x": torch.tensor([float("inf")])})
    assert not (tmp_path / "checkpoints").exists() or step_dirs(tmp_path) == []


def test_pickle_is_refused(tmp_path):
    path = save(tmp_path, 1)
    torch.save(tiny_model().state_dict(), path / "model.safetensors")
    with pytest.raises(
        InputError, match=r"model\.safetensors: not a safetensors file.*only loads safetensors"
    ):
        load_tokenizer(tmp_path)


def test_wrong_shape_names_both_shapes(tmp_path):
    save(tmp_path, 1)
    bigger = VideoTokenizer(
        TokenizerConfig(image_size=16, patch_size=8, dim=64, heads=2, encoder_layers=1, decoder_layers=1)
    )
    with pytest.raises(InputError, match=r"shape mismatches") as caught:
        load_weights(bigger, load_checkpoint(tmp_path).weights, tmp_path / "model.safetensors")
    assert "decoder.blocks.0.proj.weight: checkpoint (32, 32) vs model (64, 64)" in str(caught.value)
    with pytest.raises(InputError, match="1 missing keys: extra.weight; 1 unexpected keys: encoder_pos"):
        model = torch.nn.Module()
        model.extra = torch.nn.Linear(1, 1, bias=False)
        load_weights(model, {"encoder_pos": torch.zeros(1)}, tmp_path)


def test_wrong_kind_and_bad_configs_are_refused(tmp_path):
    save_checkpoint(tmp_path, kind="dynamics", config={}, step=1, weights={"w": torch.zeros(1)})
    with pytest.raises(InputError, match="is a dynamics checkpoint; expected a tokenizer checkpoint"):
        load_tokenizer(tmp_path)
    with pytest.raises(InputError, match=r"known kinds are \['dynamics', 'tokenizer'\]"):
        build_model("world", {})
    with pytest.raises(InputError, match="dynamics config: unknown keys"):
        build_model("dynamics", {"depth": 3})
    save_checkpoint(tmp_path / "bad", kind="tokenizer", config={"dim": 33}, step=1, weights={})
    with pytest.raises(InputError, match=r"checkpoint\.json: tokenizer config: dim 33"):
        load_tokenizer(tmp_path / "bad")


def test_newer_format_is_refused(tmp_path):
    path = save(tmp_path, 1)
    info = path / "checkpoint.json"
    info.write_text(info.read_text().replace('"format": 1', '"format": 99'))
    with pytest.raises(InputError, match="newer than this wm-video"):
        load_checkpoint(tmp_path)


def test_missing_or_empty_paths_give_clear_errors(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        load_tokenizer(tmp_path / "nope")
    with pytest.raises(
        InputError, match=r"no complete checkpoint \(expected RUN/checkpoints/step-\*/COMPLETE\)"
    ):
        (tmp_path / "run" / "checkpoints").mkdir(parents=True)
        resolve_checkpoint(tmp_path / "run")


def test_a_kill_while_pruning_never_leaves_a_complete_folder_with_files_missing(tmp_path, monkeypatch):
    """Issue 19 item 6: pruning deleted files inside a step folder still marked COMPLETE."""
    for step in (1, 2):
        save(tmp_path, step, keep=2)
    real_rmtree = ckpt.shutil.rmtree

    def killed_midway(path, *args, **kwargs):
        (Path(path) / "model.safetensors").unlink()  # the first file goes, then the process dies
        raise KeyboardInterrupt

    monkeypatch.setattr(ckpt.shutil, "rmtree", killed_midway)
    with pytest.raises(KeyboardInterrupt):
        save(tmp_path, 3, keep=2)
    monkeypatch.setattr(ckpt.shutil, "rmtree", real_rmtree)
    for step_dir in (tmp_path / "checkpoints").glob("step-*"):
        if (step_dir / COMPLETE_MARKER).exists():
            assert (step_dir / "model.safetensors").exists(), step_dir
    assert [p.name for p in ckpt._complete_steps(tmp_path / "checkpoints")] == ["step-00000002", "step-00000003"]
    save(tmp_path, 4, keep=2)
    assert load_checkpoint(tmp_path).step == 4


def test_loading_a_run_passes_over_a_damaged_newest_checkpoint(tmp_path):
    """Issue 19 item 6: a truncated newest file stopped resume; now the previous complete one loads, with a warning."""
    for step in (1, 2):
        save(tmp_path, step)
    newest = tmp_path / "checkpoints" / "step-00000002" / "model.safetensors"
    newest.write_bytes(newest.read_bytes()[:64])
    with pytest.warns(UserWarning, match="step-00000001"):
        assert load_checkpoint(tmp_path).step == 1
    with pytest.raises(InputError, match="not a safetensors file"):  # asked for by name: no fallback
        load_checkpoint(newest.parent)
