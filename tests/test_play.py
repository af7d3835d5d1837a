"""`wm-video play`: the real window loop under SDL's dummy driver, headless runs, shadow mode, rewind.

The world is the `tiny` preset with random weights (what the model predicts does not matter
here; what the player's keys do, what is recorded and what survives does). Events go through
pygame's real queue, posted from the window's ``on_frame`` hook, as in tests/test_record.py.
"""

from __future__ import annotations

import os

os.environ["SDL_VIDEODRIVER"] = "dummy"  # before pygame opens a display
os.environ.setdefault("SDL_AUDIODRIVER", "dummy")

import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pygame
import pytest
from conftest import TinyDataset

from wm_video.cli import main
from wm_video.data.reader import open_dataset
from wm_video.data.validate import validate_dataset
from wm_video.data.video import probe_video
from wm_video.engine import World
from wm_video.errors import InputError
from wm_video.play.keymap import COMMAND_KEYS, derive_keymap
from wm_video.play.keys import KeyboardActions, resolve_key
from wm_video.play.session import PlaySession, Shadow
from wm_video.play.start import StartContext, load_start, open_world, parse_start
from wm_video.play.window import PlayWindow
from wm_video.sources.base import Source, StepResult
from wm_video.sources.vizdoom import ACTION_SPACE

SPACE = ACTION_SPACE  # the default world's 8 buttons, as the tiny preset uses them


@pytest.fixture(scope="module")
def world() -> World:
    return open_world(None, preset="tiny", seed=0)


def grey_start(value: int = 90) -> StartContext:
    return StartContext(np.full((1, 64, 64, 3), value, dtype=np.uint8), None, "grey")


def event(kind: int, name: str) -> pygame.event.Event:
    return pygame.event.Event(kind, key=resolve_key(name))


def vector(*buttons: str) -> list[float]:
    return SPACE.from_pressed(buttons).tolist()


# -- keys ------------------------------------------------------------------------------------------
def test_keymap_is_derived_from_the_action_names() -> None:
    keymap = derive_keymap(SPACE, reserved=frozenset(COMMAND_KEYS))
    assert keymap == {
        "w": "forward",
        "s": "back",
        "a": "strafe_left",
        "d": "strafe_right",
        "left": "turn_left",
        "right": "turn_right",
        "space": "attack",
        "e": "use",
    }
    from wm_video.actions import ActionSpace

    odd = ActionSpace(("forward", "p", "jump_twice", "h"))
    derived = derive_keymap(odd, dataset_keymap={"f": "forward"}, reserved=frozenset(COMMAND_KEYS))
    assert derived["f"] == "forward"  # the dataset's keymap wins
    assert "p" not in derived and "h" not in derived  # command keys are never handed out
    assert sorted(derived.values()) == ["forward", "h", "jump_twice", "p"]  # every button has a key


def test_keymap_file_overrides(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    path.write_text('{"up": "forward", "k": "attack"}')
    assert derive_keymap(SPACE, path=path) == {"up": "forward", "k": "attack"}
    path.write_text('{"up": "fly"}')
    with pytest.raises(InputError, match="fly"):
        derive_keymap(SPACE, path=path)


def test_mouse_x_turns_when_asked() -> None:
    keys = KeyboardActions(SPACE, derive_keymap(SPACE), mouse_turn=True)
    keys.handle(pygame.event.Event(pygame.MOUSEMOTION, rel=(6, 1)))
    keys.handle(pygame.event.Event(pygame.MOUSEMOTION, rel=(5, 0)))
    assert keys.action().tolist() == vector("turn_right")
    keys.handle(pygame.event.Event(pygame.MOUSEMOTION, rel=(1, 0)))  # under the threshold
    assert keys.action().tolist() == vector()
    keys.handle(pygame.event.Event(pygame.MOUSEMOTION, rel=(-9, 0)))
    assert keys.action().tolist() == vector("turn_left")
    assert KeyboardActions(SPACE).action().tolist() == vector()  # off by default
    from wm_video.actions import ActionSpace

    with pytest.raises(InputError, match="mouse turning"):
        KeyboardActions(ActionSpace(("jump",), (), {"space": "jump"}), mouse_turn=True)


def test_window_taps_and_holds_become_the_recorded_actions(world: World, tmp_path: Path) -> None:
    """Posted KEYDOWN/KEYUP → the action vectors the world was stepped with, read back from the F5 recording."""
    session = PlaySession(world, grey_start(), fps=1000.0)
    keys = KeyboardActions(SPACE, derive_keymap(SPACE))
    script: dict[int, list[pygame.event.Event]] = {
        0: [event(pygame.KEYDOWN, "f5")],  # start recording before frame 0 is stepped
        1: [event(pygame.KEYDOWN, "w")],  # hold forward …
        2: [event(pygame.KEYDOWN, "left"), event(pygame.KEYUP, "left")],  # … and tap turn_left
        3: [event(pygame.KEYDOWN, "space")],
        4: [event(pygame.KEYUP, "w"), event(pygame.KEYUP, "space")],
        5: [pygame.event.Event(pygame.KEYDOWN, key=pygame.K_F7)],  # unknown keys are ignored
        6: [event(pygame.KEYDOWN, "d"), pygame.event.Event(pygame.WINDOWFOCUSLOST)],  # focus lost: released
        7: [pygame.event.Event(pygame.WINDOWFOCUSGAINED)],
        8: [event(pygame.KEYDOWN, "f5")],  # stop recording
        9: [pygame.event.Event(pygame.QUIT)],  # closing the window ends the loop
    }

    def on_frame(number: int) -> None:
        for posted in script.get(number, []):
            pygame.event.post(posted)

    window = PlayWindow(session, keys, fps=1000.0, scale=2, out_dir=tmp_path)
    result = window.run(on_frame=on_frame)
    assert result.stopped_by == "window closed"
    (recording,) = result.recordings
    assert recording.dataset == tmp_path / "dataset" and recording.video is not None
    dataset = open_dataset(tmp_path / "dataset")
    actions = dataset.actions(dataset.episodes[0]).tolist()
    # frame 6 is not stepped (focus lost), so 7 steps were recorded: frames 0-5 and 7.
    assert actions == [
        vector(),
        vector("forward"),
        vector("forward", "turn_left"),
        vector("forward", "attack"),
        vector(),
        vector(),
        vector(),  # D was down when focus left: released, and not stepped while unfocused
    ]
    assert validate_dataset(tmp_path / "dataset").ok
    assert probe_video(recording.video).frames == 7


def test_an_error_on_a_frame_is_shown_not_fatal(world: World, tmp_path: Path, monkeypatch) -> None:
    session = PlaySession(world, grey_start(), fps=1000.0)
    real_step = session.step
    calls = {"n": 0}

    def flaky_step(action: np.ndarray) -> np.ndarray:
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("injected model failure")
        return real_step(action)

    monkeypatch.setattr(session, "step", flaky_step)
    window = PlayWindow(session, KeyboardActions(SPACE), fps=1000.0, scale=1, out_dir=tmp_path)
    seen: dict[str, object] = {}

    def on_frame(number: int) -> None:
        if number == 4:
            seen["error"], seen["paused"] = window.hud.error, window.paused
            pygame.event.post(event(pygame.KEYDOWN, "p"))  # resume
        if number == 8:
            pygame.event.post(event(pygame.KEYDOWN, "escape"))

    result = window.run(on_frame=on_frame)
    assert "injected model failure" in str(seen["error"]) and seen["paused"] is True
    assert result.stopped_by == "Esc" and result.frames == 2 + 4  # 2 before the error, 4 after P
    assert window.hud.error is None


# -- session -----------------------------------------------------------------------------------------
def test_snapshot_restore_replays_the_same_frames(world: World) -> None:
    rng = np.random.default_rng(0)
    actions = (rng.random((6, SPACE.size)) < 0.3).astype(np.float32)
    world.reset(np.full((2, 64, 64, 3), 70, dtype=np.uint8))
    for action in actions[:3]:
        world.step(action)
    saved = world.snapshot()
    first = [world.step(a) for a in actions[3:]]
    world.restore(saved)
    again = [world.step(a) for a in actions[3:]]
    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(a, b)
    assert saved.nbytes > 0


def test_rewind_goes_back_a_few_seconds(world: World) -> None:
    session = PlaySession(world, grey_start(), fps=4.0, rewind_seconds=2.0)  # a snapshot every 4 frames
    action = SPACE.from_pressed(["forward"])
    for _ in range(13):
        session.step(action)
    kept = session.frame
    assert session.rewind() == 13 - 4  # snapshots at 0, 4, 8, 12; the ring keeps 3: back to 4
    assert session.frame_count == 4
    for _ in range(9):
        session.step(action)
    np.testing.assert_array_equal(session.frame, kept)  # same seed, counters restored: same future
    session.reset()
    assert session.frame_count == 0


# -- start ---------------------------------------------------------------------------------------------
def test_start_from_specs(tmp_path: Path) -> None:
    image = tmp_path / "start.png"
    cv2.imwrite(str(image), np.full((120, 160, 3), (10, 20, 30), dtype=np.uint8))
    context = load_start(str(image), space=SPACE, context_frames=8)
    assert context.frames.shape == (1, 120, 160, 3) and tuple(context.frames[0, 0, 0]) == (30, 20, 10)
    with pytest.raises(InputError, match="no such image or dataset"):
        parse_start(str(tmp_path / "missing:1:2"))
    with pytest.raises(InputError, match="dataset folder"):
        parse_start(f"{image}:0:3")


def test_start_from_a_dataset_defaults_to_a_held_out_episode(tiny_dataset: TinyDataset) -> None:
    context = load_start(str(tiny_dataset.root), space=SPACE, context_frames=8)  # episodes 0, 1, 2
    assert context.label == f"{tiny_dataset.root} episode 2 frames 0-7"  # 2 is held out, not 0
    np.testing.assert_array_equal(context.frames, tiny_dataset.frames[2][:8])
    assert load_start(f"{tiny_dataset.root}:0", space=SPACE, context_frames=8).label.endswith("episode 0 frames 0-7")


# -- the command ---------------------------------------------------------------------------------------
def test_headless_run_writes_exactly_n_frames_and_a_dataset_to_start_from(tmp_path: Path, capsys) -> None:
    start = tmp_path / "start.png"
    cv2.imwrite(str(start), np.full((64, 64, 3), 100, dtype=np.uint8))
    video, data = tmp_path / "run.mp4", tmp_path / "data"
    argv = ["play", "--preset", "tiny", "--headless", "--start-from", str(start), "--frames", "12", "--guidance", "2"]
    assert main([*argv, "--actions", "random", "--record", str(video), "--record-dataset", str(data)]) == 0
    out = capsys.readouterr().out
    assert "played 12 frames" in out and "resident memory" in out
    assert probe_video(video).frames == 12
    assert validate_dataset(data).ok
    recorded = open_dataset(data)
    context = load_start(f"{data}:0:5", space=SPACE, context_frames=8)
    assert context.frames.shape == (6, 64, 64, 3)
    assert context.actions is not None
    np.testing.assert_array_equal(context.actions, recorded.actions(recorded.episodes[0])[:5])
    # The frames before the context come along for the tokenizer's encoder (issue 17), fewer at the start.
    footage = recorded.frames(recorded.episodes[0])
    context = load_start(f"{data}:0:10", space=SPACE, context_frames=4, history_frames=3)
    np.testing.assert_array_equal(context.frames, footage[7:11])
    assert context.history is not None
    np.testing.assert_array_equal(context.history, footage[4:7])
    context = load_start(f"{data}:0:5", space=SPACE, context_frames=4, history_frames=3)
    assert context.history is not None
    np.testing.assert_array_equal(context.history, footage[:2])


class CountingSource(Source):
    """Frame t is filled with t (shadow mode's bookkeeping, without an engine)."""

    action_space, fps, frame_shape, task = SPACE, 10.0, (8, 8, 3), "count"

    def reset(self, seed: int) -> np.ndarray:
        self.t = 0
        return np.zeros(self.frame_shape, np.uint8)

    def step(self, action: np.ndarray) -> StepResult:
        self.t += 1
        return StepResult(np.full(self.frame_shape, self.t, np.uint8), False)


def test_headless_refuses_the_hunt_policy(tmp_path: Path, capsys) -> None:
    argv = ["play", "--preset", "tiny", "--headless", "--frames", "2", "--actions", "mix:hunt=1,explore=1"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "hunt aims with the real engine's ground truth" in err and "Traceback" not in err


def test_a_shadow_resync_gives_the_frames_before_its_context_to_the_encoder() -> None:
    shadow = Shadow(CountingSource(), seed=0, context_frames=3, history_frames=2)
    shadow.reset()
    for _ in range(9):
        shadow.step(SPACE.zeros())
    start = shadow.context()
    assert start.frames[:, 0, 0, 0].tolist() == [7, 8, 9] and start.actions is not None
    assert start.history is not None and start.history[:, 0, 0, 0].tolist() == [5, 6]


def test_shadow_mode_steps_vizdoom_beside_the_model(tmp_path: Path, capsys) -> None:
    video = tmp_path / "shadow.mp4"
    argv = ["play", "--preset", "tiny", "--headless", "--shadow", "--frames", "6", "--record", str(video)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "mean PSNR of generated vs real frames" in out
    probe = probe_video(video)
    assert probe.frames == 6 and probe.width > 2 * probe.height  # real | generated side by side


def test_missing_default_checkpoint_says_what_to_do(tmp_path: Path, monkeypatch, capsys) -> None:
    import wm_video.play.start as start

    monkeypatch.setattr(start, "DEFAULT_CHECKPOINT", tmp_path / "checkpoints" / "default")
    assert main(["play", "--headless", "--frames", "1"]) == 2
    err = capsys.readouterr().err
    assert "checkpoints/default" in err and "--checkpoint RUN" in err and "--preset tiny" in err


def test_cli_presets_agree_with_the_library() -> None:
    from wm_video.dynamics import DYNAMICS_PRESETS
    from wm_video.play.cli import PRESETS

    assert set(PRESETS) == set(DYNAMICS_PRESETS)


def test_memory_stays_flat_over_a_headless_run(world: World) -> None:
    """A short soak (the 10,000-frame one is `wm-video play --headless --frames 10000`): RSS does not creep."""
    from wm_video.play.headless import run_headless
    from wm_video.sources.policies import load_policy

    session = PlaySession(world, grey_start(), fps=4.0)  # the rewind ring is full after 12 frames
    result = run_headless(session, load_policy("random", SPACE), frames=120, warmup=30)
    assert result.frames == 120 and result.model_ms_median > 0
    assert result.rss_end_bytes - result.rss_start_bytes < 16 * 2**20, result.format()


# -- a newcomer's first minutes ----------------------------------------------------------------------
def test_without_a_display_play_says_so_instead_of_playing_into_nothing(tmp_path: Path) -> None:
    """No DISPLAY, no SDL_VIDEODRIVER: SDL falls back to an invisible offscreen window, which play refuses."""
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY", "SDL_VIDEODRIVER")}
    command = [sys.executable, "-m", "wm_video", "play", "--preset", "tiny"]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert "no display: use --headless (or run under xvfb-run)" in result.stderr
    assert "Traceback" not in result.stderr


def test_sdl_dummy_driver_asked_for_by_name_is_kept() -> None:
    from wm_video.play.record import open_display

    assert os.environ["SDL_VIDEODRIVER"] == "dummy"
    open_display("unused")  # no error: the tests (and users who mean it) ask for the dummy driver
    assert pygame.display.get_driver() == "dummy"
    pygame.display.quit()


def test_the_hud_shows_the_rate_generated_frames_arrive_at(world: World) -> None:
    session = PlaySession(world, grey_start(), fps=17.5)
    assert session.generated_fps() == 0.0  # nothing generated yet
    session.step(SPACE.from_pressed([]))
    assert len(session._arrivals) == 1  # each generated frame is stamped
    session._arrivals.clear()
    session._arrivals.extend([100.0, 100.1, 100.2, 100.3, 100.4])  # (no timing in the test: stamps set)
    assert session.generated_fps(100.4) == pytest.approx(10.0)
    assert session.generated_fps(110.0) == 0.0  # paused, or a model that takes seconds: 0, not 17.5
    window = PlayWindow(session, KeyboardActions(SPACE), fps=17.5)
    assert "frames/s generated (target 17.5)" in window.hud_lines()[0]
    assert "model" in window.hud_lines()[0] and "ms/frame" in window.hud_lines()[0]


def test_frames_ends_a_window_session_and_max_frames_still_works(tmp_path: Path, capsys, caplog) -> None:
    argv = ["play", "--preset", "tiny", "--out", str(tmp_path), "--threads", "1"]
    assert main([*argv, "--frames", "3"]) == 0
    assert "played 3 frames (stopped: max frames)" in capsys.readouterr().out
    assert main([*argv, "--max-frames", "2"]) == 0  # the old name, with a note
    assert "played 2 frames" in capsys.readouterr().out and "--max-frames is now --frames" in caplog.text


def test_a_recording_is_described_for_a_player(tmp_path: Path) -> None:
    from wm_video.play.recording import RecordingResult

    result = RecordingResult(42, tmp_path / "dataset", 3, tmp_path / "play.mp4")
    assert result.describe() == f"saved 42 frames: episode 3 of {tmp_path / 'dataset'}, video {tmp_path / 'play.mp4'}"
    assert RecordingResult(1, None, None, tmp_path / "a.mp4").describe() == f"saved 1 frame: video {tmp_path / 'a.mp4'}"
    assert RecordingResult(0, None, None, None).describe().startswith("nothing recorded")


def test_default_outputs_stay_out_of_the_repository() -> None:
    from wm_video.play.cli import DEFAULT_OUT

    repository = Path(__file__).resolve().parents[1]
    assert DEFAULT_OUT.is_absolute() and repository not in DEFAULT_OUT.parents
