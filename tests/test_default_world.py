"""The world shipped in checkpoints/default: complete, within its size budget, trained, and playable."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from wm_video.checkpoint import WORLD_FILE, load_checkpoint, load_tokenizer
from wm_video.cli import main
from wm_video.data.video import probe_video
from wm_video.dynamics import DYNAMICS_PRESETS, DynamicsConfig
from wm_video.eval.tokenizer import reconstruct_chunks
from wm_video.metrics import psnr
from wm_video.play.start import DEFAULT_CHECKPOINT, shipped_start
from wm_video.sources.vizdoom import ACTION_SPACE
from wm_video.tokenizer import TOKENIZER_PRESETS, TokenizerConfig
from wm_video.tokenizer.pixels import to_uint8_frames

pytestmark = pytest.mark.skipif(
    not (DEFAULT_CHECKPOINT / WORLD_FILE).is_file(), reason="no world shipped in checkpoints/default"
)


def test_the_shipped_world_is_complete_and_small() -> None:
    files = [p for p in DEFAULT_CHECKPOINT.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) <= 40 * 10**6  # issue 8: ≤ 40 MB in all
    assert (DEFAULT_CHECKPOINT / "README.md").is_file()  # the model card
    world = json.loads((DEFAULT_CHECKPOINT / WORLD_FILE).read_text())
    tokenizer = load_checkpoint(DEFAULT_CHECKPOINT, kind="tokenizer", with_training_state=False)
    dynamics = load_checkpoint(DEFAULT_CHECKPOINT, kind="dynamics", with_training_state=False)
    assert (tokenizer.step, dynamics.step) == (world["tokenizer"]["step"], world["dynamics"]["step"])
    assert TokenizerConfig.from_dict(tokenizer.config) == TOKENIZER_PRESETS["tiny"]
    config = DynamicsConfig.from_dict(dynamics.config)
    assert (config.dim, config.trunk_layers, config.head_layers) == (
        DYNAMICS_PRESETS["tiny"].dim,
        DYNAMICS_PRESETS["tiny"].trunk_layers,
        DYNAMICS_PRESETS["tiny"].head_layers,
    )
    assert config.action_names == ACTION_SPACE.names  # the keys play maps for ViZDoom
    assert dynamics.meta["shipped"]["source"]["scenario"] == "defend_the_center"


def test_the_shipped_tokenizer_is_trained(one_thread: None) -> None:
    """Its start frames (held-out footage) come back sharp; random weights give about 10 dB."""
    start = shipped_start(DEFAULT_CHECKPOINT / "start.safetensors", space=ACTION_SPACE, context_frames=8)
    assert start.frames.shape == (8, 64, 64, 3) and start.actions is not None
    tokenizer, _ = load_tokenizer(DEFAULT_CHECKPOINT)
    (chunk,) = list(reconstruct_chunks(tokenizer, start.frames))
    shown = to_uint8_frames(chunk.reconstruction)
    assert float(psnr(shown.float(), torch.from_numpy(start.frames).float(), data_range=255.0).mean()) > 28.0


def test_play_with_no_flags_opens_the_shipped_world(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    video = tmp_path / "play.mp4"
    argv = ["play", "--headless", "--frames", "8", "--threads", "1", "--record", str(video)]
    assert main(argv) == 0
    assert "played 8 frames" in capsys.readouterr().out
    probe = probe_video(video)
    assert probe.frames == 8 and (probe.width, probe.height) == (64, 64)
    assert np.isfinite(probe.fps)


def test_the_shipped_world_never_samples_past_its_codebook(one_thread: None) -> None:
    """Issue 17's report: seed 0, frame counter 351,753, forward held drew the hash's largest value on a
    padding slot and emitted token 4,726 of 4,375 (the next step raised IndexError)."""
    from wm_video.engine import load_world

    world = load_world(DEFAULT_CHECKPOINT)
    context = world.dynamics.config.context_frames
    start = shipped_start(
        DEFAULT_CHECKPOINT / "start.safetensors", space=ACTION_SPACE, context_frames=context
    )
    forward = np.zeros(len(ACTION_SPACE.names), np.float32)
    forward[list(ACTION_SPACE.names).index("forward")] = 1.0
    world.reset(start.frames, start.actions)
    world.counter.fill_(351_753)
    assert int(world.advance(forward).max()) < world.dynamics.config.codebook_size == 4375


def test_the_shipped_world_plays_the_frames_it_played_before(one_thread: None) -> None:
    """Issue 17: the attention core changed (one module for tokenizer and trunk); the shipped world
    still plays what the code before the change played (tests/pinned_world.py wrote the reference)."""
    from pinned_world import REFERENCE, play_reference
    from safetensors.numpy import load_file

    before, now = load_file(str(REFERENCE)), play_reference(DEFAULT_CHECKPOINT)
    np.testing.assert_array_equal(now["actions"], before["actions"])
    np.testing.assert_array_equal(now["clip_tokens"], before["clip_tokens"])
    np.testing.assert_array_equal(now["tokens"], before["tokens"])  # every sampled token
    for name in ("frames", "clip_reconstruction"):  # uint8 pixels: a rounding may flip by one level
        difference = np.abs(now[name].astype(int) - before[name].astype(int))
        assert difference.max() <= 1 and (difference > 0).mean() < 1e-3, name
    np.testing.assert_allclose(now["clip_logits"], before["clip_logits"], rtol=0, atol=1e-4)
