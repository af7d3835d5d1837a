"""A world as a gymnasium environment (issue 18): the checkers, independent resets, seeds, spaces."""

from __future__ import annotations

import json

import gymnasium
import numpy as np
import pytest
import torch
from conftest import make_dataset
from gymnasium.utils.env_checker import check_env, data_equivalence
from gymnasium.utils.passive_env_checker import check_obs
from gymnasium.vector import SyncVectorEnv

import wm_video.envs
from wm_video.actions import ActionSpace
from wm_video.dynamics import DynamicsModel, dynamics_config
from wm_video.engine import World
from wm_video.envs import WorldEnv, WorldVectorEnv
from wm_video.envs.spaces import action_adapter, used_combinations
from wm_video.errors import InputError
from wm_video.tokenizer import TokenizerConfig, VideoTokenizer

BUTTONS = ActionSpace(("forward", "turn_left", "attack"))
TOKENIZER = TokenizerConfig(
    image_size=16, patch_size=4, dim=16, heads=2, encoder_layers=1, decoder_layers=1, levels=(3, 2, 2),
    temporal_window=3,
)  # fmt: skip


def tiny_models(space: ActionSpace = BUTTONS) -> tuple[VideoTokenizer, DynamicsModel]:
    torch.manual_seed(0)
    tokenizer = VideoTokenizer(TOKENIZER)
    shape = dict(dim=16, heads=2, trunk_layers=1, head_layers=1, context_frames=3, sink_frames=1)
    dynamics = DynamicsModel(dynamics_config("tiny", TOKENIZER, space, **shape))
    return tokenizer.double().eval(), dynamics.double().eval()


START = np.random.default_rng(0).integers(0, 256, (3, 16, 16, 3), dtype=np.uint8)


def tiny_world(batch: int = 1, space: ActionSpace = BUTTONS) -> World:
    return World(*tiny_models(space), batch_size=batch)


def red_ends(before: np.ndarray, after: np.ndarray, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A reward function: the red share of the new frame; the episode ends when red dominates."""
    red = after[..., 0].mean(axis=(1, 2)) / 255.0
    return red, red > 0.55


@pytest.fixture(autouse=True)
def _one_thread(one_thread: None) -> None:
    """Tiny worlds step fastest on one thread."""


def test_single_env_passes_gymnasiums_checker() -> None:
    env = WorldEnv(world=tiny_world(), start=START, reward=red_ends)
    check_env(env)
    assert env.action_space == gymnasium.spaces.MultiBinary(3)
    obs, info = env.reset(seed=1)
    assert obs.shape == (16, 16, 3) and obs.dtype == np.uint8 and info["frame"] == 0
    obs, reward, terminated, truncated, info = env.step(np.array([1, 0, 1]))
    assert info == {"frame": 1} and isinstance(reward, float)
    np.testing.assert_array_equal(env.render(), obs)


@pytest.mark.parametrize(
    "options",
    [
        dict(action_type="discrete", combinations=[[], ["forward"], ["turn_left", "attack"]]),
        dict(frame_stack=4),
    ],
)
def test_checker_passes_with_discrete_actions_and_frame_stacks(options: dict) -> None:
    env = WorldEnv(world=tiny_world(), start=START, **options)
    check_env(env)
    obs, _ = env.reset(seed=0)
    assert obs.shape == env.observation_space.shape


def test_deltas_give_a_dict_space_and_reach_the_world() -> None:
    space = ActionSpace(("forward",), ("mouse_dx",))
    env = WorldEnv(world=tiny_world(space=space), start=START)
    assert isinstance(env.action_space, gymnasium.spaces.Dict)
    check_env(env)
    adapter = action_adapter(space, (1.0, 2.0))
    vectors = adapter.vectors({"buttons": np.array([1]), "deltas": np.array([0.5], np.float32)}, 1)
    np.testing.assert_array_equal(vectors, [[1.0, 0.5]])
    assert adapter.gym_space()["deltas"].high.tolist() == [20.0]


def test_a_seed_gives_the_same_episode_twice() -> None:
    env = WorldEnv(world=tiny_world(), start=START, max_steps=6)
    actions = np.random.default_rng(3).integers(0, 2, (6, 3))

    def episode(seed: int) -> np.ndarray:
        frames = [env.reset(seed=seed)[0]]
        steps = [env.step(a) for a in actions]
        assert [s[3] for s in steps] == [False] * 5 + [True]  # truncated at max_steps, counted per episode
        return np.stack(frames + [s[0] for s in steps])

    first, again, other = episode(5), episode(5), episode(6)
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)


def test_vector_env_matches_single_envs_through_autoresets() -> None:
    """The batched env equals gymnasium's SyncVectorEnv of single envs, frame for frame, across
    truncations (max_steps) and terminations (the reward function), with NEXT_STEP autoreset."""
    options = dict(start=START, reward=red_ends, max_steps=4)
    vector = WorldVectorEnv(3, world=tiny_world(3), **options)
    sync = SyncVectorEnv([lambda: WorldEnv(world=tiny_world(), **options) for _ in range(3)])
    assert vector.single_action_space == sync.single_action_space
    assert vector.single_observation_space == sync.single_observation_space
    assert vector.metadata["autoreset_mode"] == sync.metadata["autoreset_mode"]
    ours, theirs = vector.reset(seed=11), sync.reset(seed=11)
    assert data_equivalence(ours[0], theirs[0], exact=True)
    rng = np.random.default_rng(0)
    ended = 0
    for _ in range(11):
        actions = rng.integers(0, 2, (3, 3))
        ours, theirs = vector.step(actions), sync.step(actions)
        check_obs(ours[0], vector.observation_space, "step")
        for mine, gym_s in zip(ours[:4], theirs[:4], strict=True):
            assert data_equivalence(mine, gym_s, exact=True)
        np.testing.assert_array_equal(ours[4]["frame"], theirs[4]["frame"])
        ended += int(ours[2].sum() + ours[3].sum())
    assert ended >= 3


def test_independent_resets_leave_the_other_worlds_bit_identical() -> None:
    actions = np.random.default_rng(1).integers(0, 2, (8, 3, 3))
    runs = []
    for restart in (False, True):
        env = WorldVectorEnv(3, world=tiny_world(3), start=START)
        env.reset(seed=2)
        frames = [env.step(a)[0] for a in actions[:4]]
        if restart:
            other = np.full((16, 16, 3), 200, np.uint8)
            obs, info = env.reset(options={"reset_mask": np.array([False, True, False]), "start": other})
            assert info["frame"].tolist() == [4, 0, 4]
        frames += [env.step(a)[0] for a in actions[4:]]
        runs.append(np.stack(frames))
    untouched, restarted = runs
    np.testing.assert_array_equal(restarted[:, [0, 2]], untouched[:, [0, 2]])
    assert not np.array_equal(restarted[4:, 1], untouched[4:, 1])


def test_registered_with_gymnasium() -> None:
    assert wm_video.envs.ENV_ID in gymnasium.registry
    env = gymnasium.make(wm_video.envs.ENV_ID, world=tiny_world(), start=START, disable_env_checker=True)
    assert isinstance(env.unwrapped, WorldEnv)
    envs = gymnasium.make_vec(
        wm_video.envs.ENV_ID,
        num_envs=2,
        vectorization_mode="vector_entry_point",
        world=tiny_world(2),
        start=START,
    )
    assert isinstance(envs.unwrapped, WorldVectorEnv) and envs.num_envs == 2
    obs, _ = envs.reset(seed=0)
    assert obs.shape == (2, 16, 16, 3)


def test_dataset_starts_are_drawn_by_the_seed(tmp_path) -> None:
    data = make_dataset(tmp_path / "ds", [5, 6, 7, 8], size=16)
    space = ActionSpace(("forward", "turn_left"), ("mouse_dx",))
    env = WorldEnv(world=tiny_world(space=space), start=data.root)
    starts = [env.reset(seed=s)[1]["start"] for s in (0, 0, 1, 2, 3, 4)]
    assert starts[0] == starts[1] and len(set(starts)) > 1
    assert all(label.startswith(f"{data.root} episode ") for label in starts)
    combos = action_adapter(space, (1.0,) * 3, "discrete", data.root).combinations
    assert 1 <= len(combos) <= 4 and all(len(c) == 2 for c in combos)


def test_used_combinations_are_ordered_by_use() -> None:
    actions = np.array([[1, 0, 0.3], [0, 1, 0], [1, 0, 0], [0, 0, 0], [1, 0, 0]], np.float32)
    assert [c.tolist() for c in used_combinations(actions, 2)] == [[1, 0], [0, 1], [0, 0]]


def test_bad_inputs_name_the_problem() -> None:
    with pytest.raises(InputError, match="combinations are lists"):
        action_adapter(BUTTONS, (1.0,) * 3, "discrete", ["forward"])  # type: ignore[list-item]
    with pytest.raises(InputError, match="unknown button"):
        action_adapter(BUTTONS, (1.0,) * 3, "discrete", [["jump"]])
    with pytest.raises(InputError, match="steps 1 worlds; this env needs 2"):
        WorldVectorEnv(2, world=tiny_world(), start=START)
    env = WorldEnv(world=tiny_world(), start=START, reward=lambda b, a, x: np.zeros(5))
    env.reset(seed=0)
    with pytest.raises(InputError, match="returns 1 rewards"):
        env.step(np.zeros(3))


def test_bench_env_reports_frames_per_second_per_count(tmp_path, capsys) -> None:
    from wm_video.cli import main

    report = tmp_path / "bench.json"
    argv = ["bench", "env", "--envs", "1", "2", "--steps", "2", "--repeats", "1", "--warmup", "0"]
    assert main([*argv, "--threads", "1", "--no-progress", "--json", str(report)]) == 0
    printed = capsys.readouterr().out
    assert "load average" in printed and "frames/s" in printed
    rows = json.loads(report.read_text())["rows"]
    assert [row["envs"] for row in rows] == [1, 2] and all(row["frames_per_second"] > 0 for row in rows)
    assert all(row["step"]["steps"] == 2 for row in rows)
