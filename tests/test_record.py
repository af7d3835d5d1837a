"""Keyboard → actions, and recording a person's play of the real ViZDoom engine (headless pygame).

Events go through pygame's real queue (``pygame.event.post``); ``record`` takes an
``on_frame(frame_number)`` hook that runs at the start of each frame, where the tests post the
events a player would make. The engine is never mocked.
"""

from __future__ import annotations

import os

os.environ["SDL_VIDEODRIVER"] = "dummy"  # before pygame opens a display
os.environ.setdefault("SDL_AUDIODRIVER", "dummy")

import json
import signal

import numpy as np
import pygame
import pytest

from wm_video.actions import ActionSpace, load_keymap
from wm_video.data.reader import open_dataset
from wm_video.data.video import VideoSettings
from wm_video.errors import InputError
from wm_video.play.keys import KeyboardActions, resolve_key
from wm_video.play.record import fit_rect, record
from wm_video.sources import make_source

BUTTONS = ("forward", "back", "strafe_left", "strafe_right", "turn_left", "turn_right", "attack", "use")
KEYMAP = {
    "w": "forward",
    "s": "back",
    "a": "strafe_left",
    "d": "strafe_right",
    "left": "turn_left",
    "right": "turn_right",
    "space": "attack",
    "e": "use",
}
SPACE = ActionSpace(buttons=BUTTONS, default_keymap=KEYMAP)


def key_event(kind: int, name: str) -> pygame.event.Event:
    return pygame.event.Event(kind, key=resolve_key(name))


def down(name: str) -> pygame.event.Event:
    return key_event(pygame.KEYDOWN, name)


def up(name: str) -> pygame.event.Event:
    return key_event(pygame.KEYUP, name)


@pytest.fixture()
def display():
    pygame.display.init()
    pygame.display.set_mode((64, 64))
    pygame.event.clear()
    yield
    pygame.display.quit()


def frame(keys: KeyboardActions, *events: pygame.event.Event) -> list[str]:
    """One frame of the play loop: post events, drain the queue into ``keys``, read the action."""
    for event in events:
        pygame.event.post(event)
    for event in pygame.event.get():
        keys.handle(event)
    return SPACE.pressed(keys.action())


# -- KeyboardActions -----------------------------------------------------------------------------
def test_held_key_counts_every_frame_until_released(display):
    keys = KeyboardActions(SPACE)
    assert frame(keys) == []
    assert frame(keys, down("w")) == ["forward"]
    assert keys.held_names() == ["w"]
    assert frame(keys) == ["forward"]
    assert frame(keys) == ["forward"]
    assert frame(keys, up("w")) == []
    assert frame(keys) == []
    assert keys.held_names() == []


def test_tap_between_two_frames_counts_for_exactly_one_frame(display):
    keys = KeyboardActions(SPACE)
    assert frame(keys, down("space"), up("space")) == ["attack"]
    assert frame(keys) == []
    action = keys.action()
    assert action.dtype == np.float32 and action.shape == (SPACE.size,)


def test_two_keys_at_once(display):
    keys = KeyboardActions(SPACE)
    assert frame(keys, down("w"), down("left")) == ["forward", "turn_left"]
    assert keys.held_names() == ["w", "left"]
    assert frame(keys, up("w")) == ["turn_left"]
    assert frame(keys, up("left")) == []


@pytest.mark.parametrize(
    "focus_lost",
    [
        pygame.event.Event(pygame.WINDOWFOCUSLOST),
        pygame.event.Event(pygame.ACTIVEEVENT, gain=0, state=2),  # input focus lost
    ],
    ids=["windowfocuslost", "activeevent"],
)
def test_focus_loss_releases_held_keys(display, focus_lost):
    keys = KeyboardActions(SPACE)
    assert frame(keys, down("w"), down("d")) == ["forward", "strafe_right"]
    assert frame(keys, focus_lost) == []  # the KEYUPs will never come
    assert keys.held_names() == []


def test_mouse_leaving_the_window_keeps_keys_held(display):
    keys = KeyboardActions(SPACE)
    frame(keys, down("w"))
    assert frame(keys, pygame.event.Event(pygame.ACTIVEEVENT, gain=0, state=1)) == ["forward"]


def test_unknown_keys_and_other_events_are_ignored(display):
    keys = KeyboardActions(SPACE)
    events = [down("z"), up("x"), pygame.event.Event(pygame.MOUSEMOTION, pos=(1, 1), rel=(1, 1))]
    assert frame(keys, *events) == []
    assert frame(keys, down("w"), down("z")) == ["forward"]


def test_keymap_override_file_changes_the_mapping(display, tmp_path):
    path = tmp_path / "keys.json"
    path.write_text(json.dumps({"up": "forward", "left ctrl": "attack"}))
    keys = KeyboardActions(SPACE, load_keymap(path, SPACE))
    assert frame(keys, down("w")) == []  # no longer bound
    assert frame(keys, down("up"), down("left ctrl")) == ["forward", "attack"]


def test_invalid_key_name_is_an_input_error_naming_it():
    with pytest.raises(InputError, match="notakey"):
        KeyboardActions(SPACE, {"notakey": "forward"})
    with pytest.raises(InputError, match="jump"):
        KeyboardActions(SPACE, {"w": "jump"})


# -- record() with the real ViZDoom engine ---------------------------------------------------------
FAST = {"size": 32, "fps": 1000.0}  # pacing far above the game's 17.5 fps keeps the tests quick


def script(events_at: dict[int, list[pygame.event.Event]]):
    """An ``on_frame`` hook posting the given events at the start of the given frames."""

    def on_frame(frame_number: int) -> None:
        for event in events_at.get(frame_number, []):
            pygame.event.post(event)

    return on_frame


def test_record_holding_w_then_closing_the_window(tmp_path):
    out = tmp_path / "human"
    hook = script({5: [down("w")], 15: [up("w")], 25: [pygame.event.Event(pygame.QUIT)]})
    result = record(out, seed=3, on_frame=hook, video=VideoSettings(codec="lossless"), **FAST)
    assert (result.episodes, result.frames, result.out) == (1, 25, out)

    dataset = open_dataset(out)
    assert [ep.length for ep in dataset.episodes] == [25]
    assert dataset.fps == 17.5  # the game's fps, whatever pace the loop ran at
    info = dataset.ours["source"]
    assert info["recorded_by"] == "human" and info["seed"] == 3
    assert (info["source"], info["scenario"], info["size"], info["frame_skip"]) == (
        "vizdoom",
        "my_way_home",
        32,
        2,
    )
    actions = dataset.actions(dataset.episodes[0])
    forward = dataset.action_names.index("forward")
    assert actions[:, forward].tolist() == [0.0] * 5 + [1.0] * 10 + [0.0] * 10
    assert np.delete(actions, forward, axis=1).sum() == 0
    frames = dataset.frames(dataset.episodes[0])
    assert frames.shape == (25, 32, 32, 3)

    # frame_t was stored with action_t: replaying the actions from the same seed gives exactly
    # the recorded frames (lossless video), and walking forward really changed the view.
    with make_source("vizdoom", scenario=None, size=32, frame_skip=None) as engine:
        replayed = [engine.reset(3)]
        for action in actions[:-1]:
            replayed.append(engine.step(action).frame)
    np.testing.assert_array_equal(frames, np.stack(replayed))
    assert not np.array_equal(frames[5], frames[15])


def test_esc_saves_the_episode_in_flight_and_a_second_session_appends(tmp_path):
    out = tmp_path / "human"
    escape = key_event(pygame.KEYDOWN, "escape")
    first = record(out, on_frame=script({2: [down("d")], 10: [escape]}), **FAST)
    assert (first.episodes, first.frames) == (1, 10)
    second = record(out, seed=1, max_frames=7, **FAST)
    assert (second.episodes, second.frames) == (1, 7)
    dataset = open_dataset(out)
    assert [ep.length for ep in dataset.episodes] == [10, 7]
    assert dataset.actions(dataset.episodes[0])[2:, dataset.action_names.index("strafe_right")].all()
    assert not (out / ".staging").exists()


def test_quitting_before_the_first_frame_writes_no_episode(tmp_path):
    result = record(tmp_path / "human", on_frame=script({0: [pygame.event.Event(pygame.QUIT)]}), **FAST)
    assert (result.episodes, result.frames) == (0, 0)
    assert open_dataset(tmp_path / "human").episodes == []


def test_episode_end_commits_it_and_starts_the_next(tmp_path):
    # basic ends after 300 tics; at 35 tics a frame that is 9 frames an episode.
    result = record(tmp_path / "human", scenario="basic", frame_skip=35, max_episodes=2, **FAST)
    dataset = open_dataset(tmp_path / "human")
    assert result.episodes == 2 and [ep.length for ep in dataset.episodes] == [9, 9]
    assert result.frames == 18


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_ctrl_c_and_sigterm_save_the_episode_in_flight(tmp_path, signum):
    handlers = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)

    def on_frame(frame_number: int) -> None:
        if frame_number == 8:
            os.kill(os.getpid(), signum)

    result = record(tmp_path / "human", on_frame=on_frame, **FAST)
    assert (result.episodes, result.frames) == (1, 8)
    assert [ep.length for ep in open_dataset(tmp_path / "human").episodes] == [8]
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == handlers


def test_window_shows_frames_scaled_up_and_follows_a_resize(tmp_path):
    screens: dict[int, np.ndarray] = {}

    def on_frame(frame_number: int) -> None:
        screens[frame_number] = pygame.surfarray.array3d(pygame.display.get_surface()).swapaxes(0, 1)
        if frame_number == 1:
            pygame.display.set_mode((300, 200), pygame.RESIZABLE)  # what a user's resize does

    record(tmp_path / "human", scale=8, max_frames=4, on_frame=on_frame, **FAST)
    frames = open_dataset(tmp_path / "human").frames(open_dataset(tmp_path / "human").episodes[0])
    assert screens[0].shape == (256, 256, 3)  # 32 px × scale 8 (within display_size 480)
    assert np.abs(screens[0][::8, ::8].astype(np.float32) - frames[0]).mean() < 6

    rect = fit_rect((32, 32), (300, 200))  # 6× → 192 × 192, centred
    assert screens[3].shape == (200, 300, 3)
    shown = screens[3][rect.top : rect.bottom : 6, rect.left : rect.right : 6]
    assert np.abs(shown.astype(np.float32) - frames[3]).mean() < 6
    assert screens[3][:, : rect.left].max() == 0 and screens[3][:, rect.right :].max() == 0


def test_fit_rect_uses_the_largest_integer_zoom_and_centres():
    assert fit_rect((64, 64), (480, 480)) == pygame.Rect(16, 16, 448, 448)
    assert fit_rect((64, 64), (640, 200)) == pygame.Rect(224, 4, 192, 192)
    assert fit_rect((64, 64), (40, 30)).size == (30, 30)  # smaller than a frame: scaled down


@pytest.mark.parametrize(
    "bad",
    [{"scale": 0}, {"fps": 0.0}, {"max_frames": 0}, {"max_episodes": -1}, {"display_size": 0}],
    ids=lambda bad: next(iter(bad)),
)
def test_bad_arguments_are_input_errors(tmp_path, bad):
    name = next(iter(bad))
    with pytest.raises(InputError, match=name):
        record(tmp_path / "human", **bad)
    assert not (tmp_path / "human").exists()


@pytest.mark.slow
def test_memory_stays_flat_over_10000_frames(tmp_path):
    def resident_mib() -> float:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

    resident: dict[int, float] = {}

    def on_frame(frame_number: int) -> None:
        if frame_number % 1000 == 0:
            resident[frame_number] = resident_mib()
        if frame_number % 37 == 0:  # hold w for 20 frames in every 37, tap space now and then
            pygame.event.post(down("w"))
        elif frame_number % 37 == 20:
            pygame.event.post(up("w"))
        elif frame_number % 37 == 30:
            pygame.event.post(down("space"))
            pygame.event.post(up("space"))

    result = record(tmp_path / "human", size=32, fps=100_000.0, max_frames=10_000, on_frame=on_frame)
    assert result.frames == 10_000 and result.episodes >= 9  # my_way_home times out every 1050 frames
    growth = resident[9000] - resident[2000]  # after warm-up (first episode, first encoder)
    assert growth < 20, resident


def test_without_a_display_record_says_so_and_writes_nothing(tmp_path) -> None:
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY", "SDL_VIDEODRIVER")}
    out = tmp_path / "human"
    command = [sys.executable, "-m", "wm_video", "record", "--out", str(out)]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "no display: run under xvfb-run" in result.stderr
    assert not out.exists()
