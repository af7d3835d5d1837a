"""The inverse-dynamics model learns a synthetic action effect from real files, and is cached."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import open_writer

from wm_video.data.cache import load_cache
from wm_video.eval.idm import IDMConfig, load_or_train_idm, pair_rows, score_actions

CONFIG = IDMConfig(input_size=32, channels=16, steps=150, batch_size=32, lr=3e-3)


pytestmark = pytest.mark.usefixtures("one_thread")


def camera_episode(length: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A 32 px window over a smooth random texture: "forward" pans it 3 px right, "turn_left" 3 px down."""
    rng = np.random.default_rng(seed)
    texture = cv2.GaussianBlur(rng.integers(0, 256, (128, 128, 3)).astype(np.float32), (0, 0), 2.0)
    texture = cv2.normalize(texture, None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)
    buttons = rng.integers(0, 2, (length, 2))
    actions = np.concatenate([buttons, rng.normal(size=(length, 1))], 1).astype(np.float32)
    x = y = 0
    frames = []
    for t in range(length):
        frames.append(np.roll(texture, (-y, -x), axis=(0, 1))[:32, :32])
        x += 3 * int(buttons[t, 0])
        y += 3 * int(buttons[t, 1])
    return np.stack(frames), actions


def test_idm_learns_a_synthetic_action_effect_and_is_cached(tmp_path: Path) -> None:
    with open_writer(tmp_path / "ds") as writer:
        for seed in range(4):
            writer.write_episode(*camera_episode(60, seed))
    cache = load_cache(tmp_path / "ds", size=32)
    train, heldout = [0, 1, 2], [3]
    idm = load_or_train_idm(cache, train, ("forward", "turn_left"), config=CONFIG, seed=0)
    assert not idm.reused and idm.train_pairs == 3 * 59 and idm.varying == [0, 1]
    rows = pair_rows(cache, heldout)
    before, after, actions = cache.frames[rows], cache.frames[rows + 1], cache.actions[rows]
    scores = score_actions(idm, before, after, actions)
    assert scores.pairs == 59 and set(scores.f1) == {"forward", "turn_left"}
    assert scores.mean_f1 > 0.9 and scores.exact > 0.8, scores
    # against actions that did not cause these frames it is no better than chance
    shuffled = score_actions(idm, before, after, actions[np.random.default_rng(0).permutation(len(actions))])
    assert shuffled.mean_f1 < 0.75 and shuffled.exact < 0.5, shuffled

    again = load_or_train_idm(cache, train, ("forward", "turn_left"), config=CONFIG, seed=0)
    assert again.reused and again.path == idm.path and (idm.path / "idm.safetensors").is_file()
    assert score_actions(again, before, after, actions) == scores
