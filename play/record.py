"""Record a person playing a real game into a LeRobot dataset (``wm-video record``).

Each frame, in this order: show frame_t, wait for the frame's time (``Clock.tick(fps)``), read
the events, turn the keys into action_t, record (frame_t, action_t), step the engine. This is
the collection convention: a frame is stored with the action taken while it was on screen.

Design choices:
- The real engine runs headless; pygame only shows its frames, scaled up by an integer factor
  with nearest neighbour (letterboxed; a window smaller than one frame scales it down to fit).
  The window is resizable and the picture follows its size.
- When the engine ends an episode it is committed and the next starts with the next seed.
  Esc, closing the window, Ctrl-C and SIGTERM stop the loop at a frame boundary (a flag, not
  an exception in the middle of an encode) and the episode in flight is saved; an empty one is
  not. A second Ctrl-C raises KeyboardInterrupt at once, and the episode is still saved if its
  frames and actions agree.
- ``on_frame(frame_number)`` runs at the start of every frame, before events are read: tests
  and scripts post events there with ``pygame.event.post`` and drive the real loop.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, is_dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pygame

from wm_video.actions import load_keymap
from wm_video.data.video import VideoSettings
from wm_video.data.writer import DatasetWriter, EpisodeRecorder
from wm_video.errors import InputError, WMVideoError
from wm_video.play.keys import KeyboardActions
from wm_video.signals import StopFlag
from wm_video.sources.base import Source

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RecordResult:
    """What one recording session wrote."""

    episodes: int  # episodes written by this session (the dataset may hold more)
    frames: int  # frames written by this session
    out: Path


def fit_rect(frame_size: tuple[int, int], window_size: tuple[int, int]) -> pygame.Rect:
    """Where a (w, h) frame goes in a (W, H) window: the largest integer zoom that fits, centred.

    A window smaller than the frame gets the frame scaled down to fit, keeping its aspect.
    """
    (width, height), (win_width, win_height) = frame_size, window_size
    zoom = min(win_width // width, win_height // height)
    if zoom >= 1:
        size = (width * zoom, height * zoom)
    else:
        ratio = min(win_width / width, win_height / height)
        size = (max(1, int(width * ratio)), max(1, int(height * ratio)))
    rect = pygame.Rect((0, 0), size)
    rect.center = (win_width // 2, win_height // 2)
    return rect


#: SDL's drivers that show nothing: it falls back to "offscreen" when no display is reachable.
INVISIBLE_DRIVERS = ("offscreen", "dummy")
NO_DISPLAY_HINT = "run under xvfb-run, or collect footage with `wm-video collect`"


def open_display(hint: str) -> None:
    """Start pygame's display, or fail with one line when nothing can be shown.

    Without a display SDL does not fail: it falls back to an invisible offscreen window, and a
    game would play into it until killed. An invisible driver asked for by name
    (``SDL_VIDEODRIVER=dummy``, as the tests do) is kept. ``hint`` says what to do instead.
    """
    try:
        pygame.display.init()
    except pygame.error as exc:
        raise WMVideoError(f"no display ({exc}): {hint}") from None
    driver = pygame.display.get_driver()
    if driver in INVISIBLE_DRIVERS and os.environ.get("SDL_VIDEODRIVER", "").strip().lower() != driver:
        pygame.display.quit()
        raise WMVideoError(f"no display: {hint}")


def check_display(hint: str) -> None:
    """Fail at once, before slow work, when nothing can be shown (see :func:`open_display`); the
    display is closed again, so that SDL keeps no signal handlers of its own meanwhile."""
    open_display(hint)
    pygame.display.quit()


class FrameView:
    """A resizable window showing (H, W, 3) uint8 frames scaled with nearest neighbour."""

    def __init__(self, frame_shape: tuple[int, int, int], *, scale: int, display_size: int) -> None:
        height, width = frame_shape[:2]
        zoom = max(1, min(scale, display_size // max(height, width)))
        pygame.display.set_mode((width * zoom, height * zoom), pygame.RESIZABLE)
        self._frame = pygame.Surface((width, height))
        self._window_size: tuple[int, int] | None = None
        self._rect = pygame.Rect(0, 0, 0, 0)
        self._scaled = self._frame

    def _layout(self, screen: pygame.Surface) -> None:
        if screen.get_size() == self._window_size:
            return
        self._window_size = screen.get_size()
        self._rect = fit_rect(self._frame.get_size(), self._window_size)
        self._scaled = pygame.Surface(self._rect.size, 0, self._frame)
        screen.fill((0, 0, 0))  # letterbox bars

    def draw(self, frame: np.ndarray) -> pygame.Surface:
        """Blit ``frame`` scaled into the window without showing it yet; returns the window surface."""
        screen = pygame.display.get_surface()
        if screen is None:
            raise RuntimeError("the pygame window is gone")
        self._layout(screen)
        pygame.surfarray.blit_array(self._frame, frame.swapaxes(0, 1))  # (H, W, 3) → (W, H, 3)
        pygame.transform.scale(self._frame, self._rect.size, self._scaled)
        screen.blit(self._scaled, self._rect.topleft)
        return screen

    @property
    def rect(self) -> pygame.Rect:
        """Where the frame lies in the window (after the last draw)."""
        return self._rect

    def show(self, frame: np.ndarray) -> None:
        self.draw(frame)
        pygame.display.flip()


def _save(recorder: EpisodeRecorder, *, quiet: bool = False) -> int:
    """Commit an episode in flight and return its frame count; an empty one is dropped (0).

    ``quiet``: on the way out after an error or a forced interrupt, a failed save is logged and
    the episode discarded rather than raised, so the first error is the one reported.
    """
    length = len(recorder)
    if length == 0:
        recorder.discard()
        return 0
    try:
        index = recorder.finish()
    except Exception:
        if not quiet:
            raise
        log.exception("the episode in flight could not be saved; it was dropped")
        recorder.discard()
        return 0
    log.info("saved episode %s (%d frames)", index, length)
    return length


def _source_info(
    engine: Source, *, source: str, scenario: str | None, size: int, frame_skip: int | None, seed: int
) -> dict[str, Any]:
    """What the dataset says about its footage: as asked, then the engine's resolved config (as collect)."""
    config = getattr(engine, "config", None)
    resolved = asdict(config) if is_dataclass(config) and not isinstance(config, type) else {}
    info: dict[str, Any] = {"source": source, "scenario": scenario, "size": size, "frame_skip": frame_skip}
    return {**info, **resolved, "seed": seed, "recorded_by": "human"}


def record(
    out: Path,
    *,
    source: str = "vizdoom",
    scenario: str | None = None,
    size: int = 64,
    frame_skip: int | None = None,
    scale: int = 8,
    fps: float | None = None,
    keymap_path: Path | None = None,
    seed: int = 0,
    max_episodes: int | None = None,
    max_frames: int | None = None,
    display_size: int = 480,
    video: VideoSettings | None = None,
    on_frame: Callable[[int], None] | None = None,
) -> RecordResult:
    """Let a person play ``source`` in a window and record every frame with its action into ``out``.

    ``scale`` is the integer zoom the window opens with, reduced so its side stays within
    ``display_size`` pixels. ``fps`` paces the loop (default: the source's own fps; the dataset
    always declares the source fps). ``max_episodes`` / ``max_frames`` stop after that many
    episodes ended by the engine / frames in all. ``video`` sets the encoding (default H.264).
    ``on_frame(frame_number)`` is called at the
    start of each frame with the number of frames recorded so far in this session.
    """
    from wm_video.sources import make_source

    for name, value in (("scale", scale), ("display_size", display_size)):
        if not isinstance(value, int) or value < 1:
            raise InputError(f"{name} must be a positive integer; got {value!r}")
    for name, limit in (("max_episodes", max_episodes), ("max_frames", max_frames)):
        if limit is not None and (not isinstance(limit, int) or limit < 1):
            raise InputError(f"{name} must be a positive integer or None; got {limit!r}")
    if fps is not None and not fps > 0:
        raise InputError(f"fps must be a positive number of frames per second; got {fps!r}")

    out = Path(out)
    check_display(NO_DISPLAY_HINT)  # before the engine starts and the dataset is created
    engine = make_source(source, scenario=scenario, size=size, frame_skip=frame_skip)
    try:
        keymap = load_keymap(keymap_path, engine.action_space) if keymap_path is not None else None
        keys = KeyboardActions(engine.action_space, keymap)
        writer = DatasetWriter(
            out,
            fps=engine.fps,
            action_space=engine.action_space,
            frame_shape=engine.frame_shape,
            task=engine.task,
            video=video,
            source_info=_source_info(
                engine, source=source, scenario=scenario, size=size, frame_skip=frame_skip, seed=seed
            ),
        )
    except BaseException:
        engine.close()
        raise

    flag = StopFlag()
    episodes = frames = recorded = 0
    recorder = writer.recorder()

    def save(quiet: bool = False) -> None:
        nonlocal episodes, frames
        written = _save(recorder, quiet=quiet)
        episodes += written > 0
        frames += written

    # Our handlers go in before SDL starts, so SDL leaves SIGINT and SIGTERM to them.
    with flag:
        try:
            open_display(NO_DISPLAY_HINT)
            view = FrameView(engine.frame_shape, scale=scale, display_size=display_size)
            clock = pygame.time.Clock()
            log.info("keys: %s · Esc saves and quits", keys.describe())
            episode_seed = seed + writer.num_episodes  # episode i uses seed + i, as in collect
            frame = engine.reset(episode_seed)
            while True:
                view.show(frame)
                clock.tick(fps or engine.fps)
                if on_frame is not None:
                    on_frame(recorded)
                for event in pygame.event.get():
                    if event.type == pygame.QUIT:
                        flag.request("window closed")
                    elif event.type == pygame.KEYDOWN and event.key == pygame.K_ESCAPE:
                        flag.request("Esc")
                    else:
                        keys.handle(event)
                if flag.reason is not None:
                    break
                action = keys.action()
                recorder.add(frame, action)
                recorded += 1
                pygame.display.set_caption(
                    f"wm-video record · episode {writer.num_episodes} · frame {len(recorder)} · "
                    f"keys: {' '.join(keys.held_names()) or '-'} · Esc: save and quit"
                )
                result = engine.step(action)
                frame = result.frame
                if result.done:
                    save()
                    recorder = writer.recorder()
                    if max_episodes is not None and episodes >= max_episodes:
                        break
                    episode_seed += 1
                    frame = engine.reset(episode_seed)
                if max_frames is not None and recorded >= max_frames:
                    break
        except KeyboardInterrupt:  # a second Ctrl-C, or one outside the main thread
            flag.reason = "interrupted"
            save(quiet=True)
        except BaseException:
            save(quiet=True)
            raise
        else:
            save()
        finally:
            writer.close()
            engine.close()
            pygame.display.quit()
    if flag.reason is not None:
        log.info("stopped (%s)", flag.reason)
    return RecordResult(episodes=episodes, frames=frames, out=out)
