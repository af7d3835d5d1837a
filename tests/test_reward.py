"""The reward and episode-end model (issue 18): it learns a synthetic reward; the program trains, scores
and saves one that a world env steps with."""

from __future__ import annotations

import json

import numpy as np
import pytest
from test_envs import tiny_world

from wm_video.data.video import VideoSettings
from wm_video.envs import WorldEnv
from wm_video.envs.reward import (
    RewardConfig,
    RewardData,
    RewardModel,
    RewardNet,
    load_reward,
    score_reward,
    train_reward,
)
from wm_video.errors import InputError
from wm_video.sources.vizdoom import ACTION_SPACE

pytestmark = pytest.mark.usefixtures("one_thread")


def synthetic_footage(episodes: int, length: int, seed: int) -> RewardData:
    """Noise frames; pressing button 0 sometimes "scores": a white square shows in the next frame and
    the step earns +1. The last frame of each episode is red (the episode ends after it)."""
    rng = np.random.default_rng(seed)
    frames = rng.integers(0, 120, (episodes * length, 16, 16, 3), dtype=np.uint8)
    actions = (rng.random((episodes * length, 2)) < 0.3).astype(np.float32)
    reward = np.zeros(episodes * length, np.float32)
    done = np.zeros(episodes * length, bool)
    for e in range(episodes):
        first, last = e * length, (e + 1) * length - 1
        for t in range(first, last - 1):
            if actions[t, 0] and rng.random() < 0.4:
                reward[t] = 1.0
                frames[t + 1, 4:12, 4:12] = 255
        frames[last, ..., 0] = 250
        reward[last], done[last] = -1.0, True
    return RewardData(frames, actions, reward, done, np.arange(0, episodes * length + 1, length))


def test_the_reward_model_learns_a_synthetic_reward() -> None:
    data = synthetic_footage(episodes=12, length=24, seed=0)
    config = RewardConfig(input_size=16, channels=8, hidden=16, steps=250, batch_size=64, lr=3e-3)
    model = train_reward(data, list(range(8)), ("score", "other"), config=config, seed=0, calibration=[8, 9])
    assert model.values == (0.0, 1.0) and model.end_reward == -1.0
    assert 0 < model.event_threshold < 1 and 0 < model.end_threshold < 1
    scores = score_reward(model, data, [10, 11], tolerance=0)
    kills, ends = scores["positive reward"], scores["episode end"]
    assert kills.events > 5 and ends.events == 2
    assert kills.recall >= 0.8 and kills.precision >= 0.8, kills
    assert ends.recall == 1.0 and ends.precision >= 0.5, ends
    # A step predicted to end the episode also earns the ending action's reward.
    last = data.starts[11] - 1
    step = model(data.frames[last - 1 : last], data.frames[last : last + 1], data.actions[last - 1 : last])
    assert step.terminated.tolist() == [True] and step.reward[0] == pytest.approx(-1.0)


def test_train_reward_writes_a_model_a_world_env_steps_with(tmp_path, capsys) -> None:
    from wm_video.cli import main
    from wm_video.collect import collect

    data = tmp_path / "doom"
    collect(
        data, scenario="defend_the_center", episodes=3, steps=30, seed=0, size=32, workers=1, progress=False,
        video=VideoSettings(codec="lossless"),
    )  # fmt: skip
    out = tmp_path / "reward"
    assert (
        main(["train", "reward", "--data", str(data), "--out", str(out), "--steps", "3", "--threads", "1"])
        == 0
    )
    printed = capsys.readouterr().out
    assert "episode end" in printed and "positive reward" in printed
    record = json.loads((out / "reward.json").read_text())
    assert set(record["scores"]) == {"positive reward", "negative reward", "episode end"}
    assert record["heldout_episodes"] == [2]
    assert {"event_threshold", "end_threshold"} <= set(record)
    model = load_reward(out)
    start = np.zeros((16, 16, 3), np.uint8)
    env = WorldEnv(world=tiny_world(space=ACTION_SPACE), reward=out, start=start)
    env.reset(seed=0)
    _, reward, terminated, _, _ = env.step(np.zeros(8, np.int8))
    assert isinstance(reward, float) and isinstance(terminated, bool)
    assert env.batch.reward is not None and tuple(model.action_names) == ACTION_SPACE.names
    with pytest.raises(InputError, match="reads the actions"):
        WorldEnv(world=tiny_world(), reward=out, start=start)


def test_train_reward_refuses_footage_without_recorded_rewards(tmp_path, capsys) -> None:
    from conftest import make_dataset

    from wm_video.cli import main

    make_dataset(tmp_path / "ds", [8, 8])
    assert main(["train", "reward", "--data", str(tmp_path / "ds"), "--out", str(tmp_path / "r")]) == 2
    assert "recorded no reward" in capsys.readouterr().err
    assert main(["train", "reward", "--data", str(tmp_path / "nothing"), "--out", str(tmp_path / "r")]) == 2
    with pytest.raises(InputError, match="no reward model here"):
        load_reward(tmp_path / "r")


def test_decisions_follow_the_calibrated_thresholds() -> None:
    config = RewardConfig(input_size=16, channels=4, hidden=4)
    model = RewardModel(RewardNet(1, 3, config), (-1.0, 0.0, 2.0), -5.0, ("a",), config)
    classes = np.array([[0.1, 0.6, 0.3], [0.35, 0.4, 0.25], [0.0, 1.0, 0.0]])
    ends = np.array([0.2, 0.6, 0.9])
    model.event_threshold, model.end_threshold = 0.3, 0.7
    step = model.decide(classes, ends)
    assert step.reward.tolist() == [2.0, -1.0, -5.0] and step.terminated.tolist() == [False, False, True]
    model.event_threshold, model.end_threshold = 0.5, 0.5
    step = model.decide(classes, ends)
    assert step.reward.tolist() == [0.0, -5.0, -5.0] and step.terminated.tolist() == [False, True, True]
