"""Real engines (ViZDoom, ALE), tiny frames, few steps: shapes, determinism, action mapping."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from wm_video.errors import InputError
from wm_video.sources import make_source
from wm_video.sources.atari import AtariConfig, build_action_table, meaning_buttons, normalize_game_id
from wm_video.sources.vizdoom import ACTION_SPACE, VizDoomConfig, VizDoomSource, available_scenarios


def rollout(source, seed: int, actions: np.ndarray) -> list[str]:
    """Frame hashes of one episode driven by a fixed action sequence."""
    frames = [source.reset(seed)]
    for action in actions:
        result = source.step(action)
        frames.append(result.frame)
        if result.done:
            break
    return [hashlib.sha1(frame.tobytes()).hexdigest() for frame in frames]


def fixed_actions(space, steps: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    actions = np.zeros((steps, space.size), dtype=np.float32)
    actions[:, : len(space.buttons)] = rng.random((steps, len(space.buttons))) < 0.4
    return actions


@pytest.fixture(scope="module")
def my_way_home():
    with VizDoomSource(VizDoomConfig(scenario="my_way_home", size=64)) as source:
        yield source


# -- ViZDoom ---------------------------------------------------------------------------------
def test_vizdoom_frames_and_attributes(my_way_home):
    frame = my_way_home.reset(0)
    assert frame.shape == (64, 64, 3) and frame.dtype == np.uint8
    result = my_way_home.step(ACTION_SPACE.from_pressed(["forward", "turn_left"]))
    assert result.frame.shape == (64, 64, 3) and result.frame.dtype == np.uint8 and not result.done
    assert my_way_home.fps == 17.5 and my_way_home.frame_shape == (64, 64, 3)
    assert my_way_home.task == "vizdoom my_way_home"
    assert my_way_home.action_space.buttons == (
        "forward", "back", "strafe_left", "strafe_right", "turn_left", "turn_right", "attack", "use",
    )  # fmt: skip
    assert my_way_home.action_space.default_keymap["w"] == "forward"
    assert my_way_home.action_space.default_keymap["space"] == "attack"


def test_vizdoom_is_deterministic_for_a_seed(my_way_home):
    actions = fixed_actions(ACTION_SPACE, 15)
    first = rollout(my_way_home, 3, actions)
    other = rollout(my_way_home, 4, actions)  # my_way_home spawns the player at a random spot
    again = rollout(my_way_home, 3, actions)  # same engine, reset after another seed
    assert first == again
    assert first[0] != other[0]
    with VizDoomSource(VizDoomConfig(scenario="my_way_home", size=64)) as fresh:
        assert rollout(fresh, 3, actions) == first  # a fresh engine agrees


def test_vizdoom_small_size_and_freedoom_map():
    with make_source("vizdoom", scenario="freedoom1:e1m1", size=32, frame_skip=4) as source:
        assert source.task == "vizdoom freedoom1:E1M1" and source.fps == 35 / 4
        frame = source.reset(0)
        assert frame.shape == (32, 32, 3) and frame.dtype == np.uint8
        for action in fixed_actions(source.action_space, 10):
            result = source.step(action)
        assert result.frame.shape == (32, 32, 3)
        assert len(set(rollout(source, 0, fixed_actions(source.action_space, 10)))) > 1  # the view moves


def test_vizdoom_episode_end_returns_last_frame():
    # basic's episode times out after 300 tics: 10 steps of 35 tics
    with VizDoomSource(VizDoomConfig(scenario="basic", size=32, frame_skip=35)) as source:
        frame = source.reset(0)
        done, steps = False, 0
        while not done:
            result = source.step(np.zeros(8, dtype=np.float32))
            done, steps = result.done, steps + 1
            assert result.frame.shape == frame.shape
            assert steps < 20
        assert source.step(np.zeros(8, dtype=np.float32)).done


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"scenario": "nope"}, "my_way_home"),
        ({"scenario": "freedoom1:MAP01"}, "freedoom1:E1M1"),
        ({"scenario": "freedoom3:E1M1"}, "freedoom2:MAP01"),
        ({"size": 4}, "size"),
        ({"frame_skip": 0}, "frame_skip"),
        ({"episode_timeout": -5}, "episode_timeout"),
    ],
)
def test_vizdoom_config_rejects_bad_values(kwargs, message):
    with pytest.raises(InputError, match=message):
        VizDoomConfig(**kwargs)


def test_vizdoom_scenarios_listed_from_package():
    names = available_scenarios()
    assert {"basic", "my_way_home", "health_gathering", "deadly_corridor", "defend_the_center"} <= set(names)
    assert "freedoom1" not in names and "doom" not in names  # no scenario WAD of their own


def test_make_source_rejects_unknown_names():
    with pytest.raises(InputError, match="vizdoom"):
        make_source("quake", scenario=None, size=64, frame_skip=None)
    with pytest.raises(InputError, match="render_hud"):
        make_source("vizdoom", scenario=None, size=64, frame_skip=None, hud=True)


# -- Atari -----------------------------------------------------------------------------------
def test_atari_meanings_parse():
    assert meaning_buttons("NOOP") == frozenset()
    assert meaning_buttons("UPRIGHTFIRE") == {"up", "right", "fire"}
    assert meaning_buttons("DOWNLEFT") == {"down", "left"}
    assert normalize_game_id("breakout") == "ALE/Breakout-v5"
    assert normalize_game_id("BreakoutNoFrameskip-v4") == "ALE/Breakout-v5"
    assert normalize_game_id("ALE/MsPacman-v5") == "ALE/MsPacman-v5"
    with pytest.raises(InputError, match="Pong"):
        AtariConfig(game="NotAGame")


def test_atari_action_table_breakout_and_pong():
    buttons, table = build_action_table(["NOOP", "FIRE", "RIGHT", "LEFT"])  # Breakout
    assert buttons == ("left", "right", "fire")
    assert table[frozenset()] == 0 and table[frozenset({"fire"})] == 1
    assert table[frozenset({"right"})] == 2 and table[frozenset({"left"})] == 3
    assert table[frozenset({"right", "fire"})] == 2  # no RIGHTFIRE: fire is dropped first
    assert table[frozenset({"left", "right"})] == 0  # opposites cancel
    assert table[frozenset({"left", "right", "fire"})] == 1
    _, table = build_action_table(["NOOP", "FIRE", "RIGHT", "LEFT", "RIGHTFIRE", "LEFTFIRE"])  # Pong
    assert table[frozenset({"right", "fire"})] == 4 and table[frozenset({"left", "fire"})] == 5


def test_atari_action_table_full_joystick():
    meanings = ["NOOP", "FIRE", "UP", "RIGHT", "LEFT", "DOWN", "UPRIGHT", "UPLEFT", "DOWNRIGHT", "DOWNLEFT"]
    meanings += ["UPFIRE", "RIGHTFIRE", "LEFTFIRE", "DOWNFIRE", "UPRIGHTFIRE", "UPLEFTFIRE"]
    meanings += ["DOWNRIGHTFIRE", "DOWNLEFTFIRE"]
    buttons, table = build_action_table(meanings)
    assert buttons == ("up", "down", "left", "right", "fire")
    assert len(table) == 32
    for pressed, index in table.items():
        if not ({"up", "down"} <= pressed or {"left", "right"} <= pressed):
            assert meaning_buttons(meanings[index]) == pressed  # every real combination exists
    assert meanings[table[frozenset({"up", "down", "right", "fire"})]] == "RIGHTFIRE"
    _, table = build_action_table(["NOOP", "UP", "RIGHT", "LEFT", "DOWN"])  # no diagonals
    assert table[frozenset({"up", "right"})] == 1  # left/right dropped before up/down


@pytest.mark.parametrize("game", ["Breakout", "Pong"])
def test_atari_runs_and_is_deterministic(game):
    with make_source("atari", scenario=game, size=32, frame_skip=None) as source:
        assert source.fps == 15.0 and source.task == f"atari {game}"
        assert set(source.action_space.buttons) == {"left", "right", "fire"}
        assert source.action_space.default_keymap == {"a": "left", "d": "right", "space": "fire"}
        frame = source.reset(0)
        assert frame.shape == (32, 32, 3) and frame.dtype == np.uint8
        actions = fixed_actions(source.action_space, 30)
        first = rollout(source, 1, actions)
        assert rollout(source, 1, actions) == first
        assert len(set(first)) > 1
        assert source.discrete_action(source.action_space.from_pressed(["right"])) == 2


def _played_to_death(source, seed: int) -> None:
    """Play one episode under the exploration policy until the game ends it (Defend the Center: death)."""
    from wm_video.sources.policies import ExplorationPolicy

    policy = ExplorationPolicy(source.action_space)
    frame = source.reset(seed)
    policy.reset(seed)
    for _ in range(3000):
        result = source.step(policy.act(frame))
        if result.done:
            return
        frame = result.frame
    raise AssertionError("the episode did not end")


def test_vizdoom_start_does_not_depend_on_how_the_last_episode_ended():
    # An episode that ended in the player's death used to shift the weapon-raise animation of the
    # next episode's first frames, so a collection worker's output depended on its history.
    # (It showed while walking: the weapon bobs. Without the fix both cases below failed.)
    actions = np.stack([ACTION_SPACE.from_pressed(["forward"])] * 6)
    config = VizDoomConfig(scenario="defend_the_center", size=32)
    with VizDoomSource(config) as fresh:
        expected = rollout(fresh, 5, actions)
    with VizDoomSource(config) as source:
        for previous in (1, 3):
            _played_to_death(source, previous)
            assert rollout(source, 5, actions) == expected, f"after episode {previous}"


def test_vizdoom_ground_truth_labels_the_frame():
    from wm_video.sources.truth import CLASS_ID, STATE_NAMES

    with VizDoomSource(VizDoomConfig(scenario="defend_the_center", size=32, ground_truth=True)) as source:
        frame = source.reset(0)
        truth = source.truth()
        assert truth is not None and truth.classes.shape == (32, 32) and truth.classes.dtype == np.uint8
        assert truth.state.shape == (len(STATE_NAMES),)
        assert truth.state[STATE_NAMES.index("health")] == 100
        assert (truth.classes == CLASS_ID["weapon"]).any()  # the pistol, bottom centre
        assert {row[2] for row in truth.objects} >= {"Self"}
        flashes = []
        for _ in range(20):  # attack held: the pistol fires, its flash shows, it re-fires
            source.step(ACTION_SPACE.from_pressed(["attack"]))
            flashes.append(bool((source.truth().classes == CLASS_ID["flash"]).any()))
        onsets = [t for t in range(1, 20) if flashes[t] and not flashes[t - 1]]
        assert len(onsets) >= 2, flashes
    with VizDoomSource(VizDoomConfig(scenario="defend_the_center", size=32)) as plain:
        assert np.array_equal(plain.reset(0), frame)  # labels and game variables change no pixel
        assert plain.truth() is None
