"""Policies: reproducible for a seed, biased toward moving, unstuck from walls, scripts replayed."""

from __future__ import annotations

import json

import numpy as np
import pytest

from wm_video.actions import ActionSpace
from wm_video.errors import InputError
from wm_video.sources.policies import (
    ExplorationConfig,
    ExplorationPolicy,
    RandomPolicy,
    ScriptedPolicy,
    load_policy,
)
from wm_video.sources.vizdoom import ACTION_SPACE

JOYSTICK = ActionSpace(("left", "right", "fire"))
ODD = ActionSpace(("jump", "duck"), ("mouse_dx",))


def moving_frames(count: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in range(count)]


def run(policy, frames, seed: int) -> np.ndarray:
    policy.reset(seed)
    return np.stack([policy.act(frame) for frame in frames])


@pytest.mark.parametrize("space", [ACTION_SPACE, JOYSTICK, ODD])
def test_policies_reproducible_for_a_seed(space):
    frames = moving_frames(200)
    for policy in (ExplorationPolicy(space), RandomPolicy(space)):
        first = run(policy, frames, 7)
        assert first.shape == (200, space.size) and first.dtype == np.float32
        space.check(first)
        assert np.array_equal(run(policy, frames, 7), first)
        assert not np.array_equal(run(policy, frames, 8), first)


def test_exploration_moves_forward_and_turns():
    policy = ExplorationPolicy(ACTION_SPACE)
    actions = np.concatenate([run(policy, moving_frames(300), seed) for seed in range(3)])
    pressed = dict(zip(ACTION_SPACE.buttons, actions.mean(0), strict=True))
    assert pressed["forward"] > 0.5
    assert pressed["turn_left"] + pressed["turn_right"] > 0.15
    assert min(pressed["turn_left"], pressed["turn_right"]) > 0.03  # turns both ways over time
    assert 0 < pressed["attack"] < 0.2 and 0 < pressed["use"] < 0.2
    # momentum: a turn is held for several steps in a row, not flickered
    turning = actions[:, ACTION_SPACE.buttons.index("turn_left")] > 0
    runs = np.diff(np.flatnonzero(np.diff(np.concatenate([[0], turning.astype(int), [0]]))))[::2]
    assert runs.mean() > 2


def test_exploration_backs_off_when_frames_stop_changing():
    config = ExplorationConfig(stuck_steps=3, escape_back_steps=3, advance_weight=1.0, strafe_weight=0.0)
    policy = ExplorationPolicy(ACTION_SPACE, config)
    policy.reset(0)
    wall = np.full((32, 32, 3), 90, dtype=np.uint8)
    pressed = [ACTION_SPACE.pressed(policy.act(wall)) for _ in range(8)]
    assert "forward" in pressed[0]
    assert any("back" in step for step in pressed[3:7])  # backs off after 3 unchanged frames
    assert all(("turn_left" in step) != ("turn_right" in step) for step in pressed[3:7])


def test_exploration_modes_follow_button_names():
    assert ExplorationPolicy(ACTION_SPACE).mode == "fps"
    assert ExplorationPolicy(JOYSTICK).mode == "joystick"
    assert ExplorationPolicy(ODD).mode == "random"
    actions = run(ExplorationPolicy(JOYSTICK), moving_frames(300), 0)
    assert actions[:, 2].mean() > 0.2  # fire
    assert not (actions[:, 0] * actions[:, 1]).any()  # one direction at a time


def test_exploration_config_validates():
    with pytest.raises(InputError, match="weights"):
        ExplorationConfig(advance_weight=0, strafe_weight=0, turn_weight=0, back_weight=0)
    with pytest.raises(InputError, match="attack_prob"):
        ExplorationConfig(attack_prob=2.0)


def write_script(path, lines) -> None:
    path.write_text("\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines) + "\n")


def test_scripted_policy_replays_a_file(tmp_path):
    script = tmp_path / "moves.jsonl"
    write_script(
        script, [{"buttons": ["forward", "turn_left"]}, "", {"buttons": []}, {"buttons": ["attack"]}]
    )
    policy = load_policy(str(script), ACTION_SPACE)
    assert isinstance(policy, ScriptedPolicy)
    for _ in range(2):  # every reset replays from the start
        policy.reset(0)
        frame = np.zeros((8, 8, 3), np.uint8)
        steps = []
        while not policy.exhausted:
            steps.append(ACTION_SPACE.pressed(policy.act(frame)))
        assert steps == [["forward", "turn_left"], [], ["attack"]]
    assert not policy.act(frame).any()  # past the end: no buttons


def test_scripted_policy_reads_deltas(tmp_path):
    script = tmp_path / "mouse.jsonl"
    write_script(script, [{"buttons": ["jump"], "deltas": {"mouse_dx": 3.5}}, {"buttons": []}])
    policy = ScriptedPolicy(script, ODD)
    assert policy.act(np.zeros((8, 8, 3), np.uint8)).tolist() == [1.0, 0.0, 3.5]


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        ([{"buttons": ["forward"]}, {"buttons": ["jump"]}], r"moves\.jsonl:2: unknown button 'jump'"),
        ([{"buttons": ["forward"]}, "{not json"], r"moves\.jsonl:2: not valid JSON"),
        ([{"buttons": "forward"}], r"moves\.jsonl:1: \"buttons\" must be a list"),
        ([{"buttons": [], "deltas": {"mouse_dx": 1}}], r"moves\.jsonl:1: unknown delta 'mouse_dx'"),
        ([{"keys": ["w"]}], r"moves\.jsonl:1: expected an object"),
        ([""], r"moves\.jsonl: the action script has no steps"),
    ],
)
def test_scripted_policy_rejects_bad_lines(tmp_path, lines, message):
    script = tmp_path / "moves.jsonl"
    write_script(script, lines)
    with pytest.raises(InputError, match=message):
        ScriptedPolicy(script, ACTION_SPACE)


def test_load_policy_specs(tmp_path):
    assert isinstance(load_policy("explore", ACTION_SPACE), ExplorationPolicy)
    assert isinstance(load_policy("random", ACTION_SPACE), RandomPolicy)
    with pytest.raises(InputError, match="'explore', 'random', 'hunt', the path"):
        load_policy(str(tmp_path / "missing.jsonl"), ACTION_SPACE)
