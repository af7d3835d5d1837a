"""The play window: events → keys and commands, the session's step, the picture and the HUD.

Each frame, in this order: run ``on_frame`` (tests and scripts post events there), read every
event (held keys and quick taps both register; see :mod:`wm_video.play.keys`), run the
commands, step the world with this frame's action unless paused, draw the picture (scaled by
an integer zoom, letterboxed in a resizable window) and the HUD, flip, wait for the frame's time.

Staying up (RELIABILITY row 12):
- closing the window, Esc, Ctrl-C and SIGTERM end the loop at a frame boundary; a recording in
  progress is committed;
- losing focus releases every key and pauses until focus returns (a key released in another
  window never sends its KEYUP);
- keys that are neither bound nor commands are ignored; a resized window re-lays the picture;
- an exception while stepping the world is shown in the HUD and pauses play: P tries again,
  Enter resets; an error while recording drops that recording and play goes on.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pygame

from wm_video import threads
from wm_video.cli_args import counted
from wm_video.play.hud import Hud
from wm_video.play.keymap import COMMAND_KEYS
from wm_video.play.keys import KeyboardActions, resolve_key
from wm_video.play.record import FrameView, open_display
from wm_video.play.recording import RecordingResult
from wm_video.play.session import PlaySession
from wm_video.signals import StopFlag

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WindowResult:
    frames: int  # frames generated in the session
    recordings: tuple[RecordingResult, ...]
    screenshots: tuple[Path, ...]
    stopped_by: str  # "Esc", "window closed", a signal name, or "max frames"


def _stamp() -> str:
    return time.strftime("%Y%m%d-%H%M%S")


class PlayWindow:
    """Runs one session in a window until the player quits."""

    def __init__(
        self,
        session: PlaySession,
        keys: KeyboardActions,
        *,
        fps: float,
        scale: int = 8,
        out_dir: Path = Path("recordings"),
        display_size: int = 720,
        show_hud: bool = True,
    ) -> None:
        self.session, self.keys, self.fps, self.out_dir = session, keys, fps, Path(out_dir)
        self.scale, self.display_size = scale, display_size
        self.hud = Hud(show=show_hud)
        self.paused = False
        self.focus_lost = False
        self.recordings: list[RecordingResult] = []
        self.screenshots: list[Path] = []
        self._commands = {resolve_key(name): command for name, command in COMMAND_KEYS.items()}
        self._screen: pygame.Surface | None = None

    # -- commands --------------------------------------------------------------------------------
    def command(self, name: str) -> None:
        """Run a play command by name (see :data:`~wm_video.play.keymap.COMMAND_KEYS`)."""
        session, hud = self.session, self.hud
        if name == "reset":
            self._keep(session.stop_recording())
            session.reset()
            hud.error, self.paused = None, False
            hud.say(f"reset to {session.start.label}" if session.shadow is None else "reset: new real episode")
        elif name == "pause":
            self.paused = not self.paused
            if not self.paused:
                hud.error = None
        elif name == "rewind":
            if not session.rewind_enabled:
                hud.say("rewind is off in shadow mode (the real engine cannot rewind); Tab resyncs")
                return
            self._keep(session.stop_recording())
            hud.say(f"rewound {session.rewind() / self.fps:.1f} s")
        elif name == "screenshot":
            if self._screen is not None:
                path = self.out_dir / f"screenshot-{_stamp()}-{session.total_frames}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                pygame.image.save(self._screen, str(path))
                self.screenshots.append(path)
                hud.say(f"screenshot {path}")
        elif name == "record":
            if session.recorder is not None:
                self._keep(session.stop_recording())
            else:
                video = self.out_dir / f"play-{_stamp()}.mp4"
                session.start_recording(dataset=self.out_dir / "dataset", video=video)
                hud.say(f"recording → {self.out_dir / 'dataset'} and {video} (F5 stops)")
        elif name == "hud":
            hud.show = not hud.show
        elif name == "resync":
            hud.say("resynced from the real frames" if session.resync() else "resync needs --shadow")

    def _keep(self, result: RecordingResult | None) -> None:
        if result is None:
            return
        self.recordings.append(result)
        self.hud.say(result.describe())
        log.info("%s", result.describe())

    # -- the loop --------------------------------------------------------------------------------
    def _events(self, flag: StopFlag) -> None:
        for event in pygame.event.get():
            if event.type == pygame.QUIT:
                flag.request("window closed")
            elif event.type == pygame.KEYDOWN and event.key in self._commands and not self.keys.binds(event.key):
                command = self._commands[event.key]
                if command == "quit":
                    flag.request("Esc")
                else:
                    self._safely(self.command, command)
            else:
                if event.type == pygame.WINDOWFOCUSLOST:
                    self.focus_lost = True
                elif event.type == pygame.WINDOWFOCUSGAINED:
                    self.focus_lost = False
                self.keys.handle(event)

    def _safely(self, call: Callable[..., object], *args: object) -> bool:
        """Run ``call(*args)``; a failure is shown in the HUD (and logged) and play pauses."""
        try:
            call(*args)
        except Exception as exc:  # shown, not fatal: WMVideoError, torch errors, a full disk …
            log.exception("play: %s", exc)
            self.hud.error = f"frame {self.session.total_frames}: {type(exc).__name__}: {exc}"[:160]
            self.paused = True
            if self.session.recorder is not None:
                self.session.recorder.discard()
                self.session.recorder = None
            return False
        return True

    def hud_lines(self) -> list[str]:
        session = self.session
        held = " ".join(self.keys.held_names()) or "-"
        tuner = threads.current()
        using = f" · {counted(tuner.threads, 'thread')}" if tuner is not None else ""
        lines = [
            f"{session.generated_fps():5.1f} frames/s generated (target {self.fps:g}) · "
            f"model {session.model_ms:5.1f} ms/frame{using}",
            f"frame {session.frame_count} · keys {held}",
        ]
        if session.psnr is not None:
            lines.append(f"real | generated · PSNR {session.psnr:5.1f} dB · Tab resyncs")
        state = [
            "PAUSED" if self.paused else "",
            "no focus" if self.focus_lost else "",
            f"REC {session.recorder.frames}" if session.recorder is not None else "",
        ]
        if any(state):
            lines.append(" · ".join(s for s in state if s))
        return lines

    def run(self, *, max_frames: int | None = None, on_frame: Callable[[int], None] | None = None) -> WindowResult:
        """Play until the player quits (or ``max_frames`` frames were generated)."""
        flag = StopFlag()
        with flag:
            try:
                open_display("use --headless (or run under xvfb-run)")
                view = FrameView(
                    self.session.picture().shape, scale=self.scale, display_size=self.display_size  # type: ignore[arg-type]
                )
                pygame.display.set_caption("wm-video play · Esc quits · H HUD · F5 record · F12 screenshot")
                clock = pygame.time.Clock()
                shown = 0
                while True:
                    if on_frame is not None:
                        on_frame(shown)
                    self._events(flag)
                    if flag.reason is not None:
                        break
                    action = self.keys.action()  # taps are consumed every frame, paused or not
                    if not (self.paused or self.focus_lost):
                        self._safely(self.session.step, action)
                    picture: np.ndarray = self.session.picture()
                    self._screen = view.draw(picture)
                    self.hud.draw(self._screen, self.hud_lines())
                    pygame.display.flip()
                    clock.tick(self.fps)
                    shown += 1
                    if max_frames is not None and self.session.total_frames >= max_frames:
                        flag.request("max frames")
                        break
            finally:
                self._keep(self.session.close())
                pygame.display.quit()
        return WindowResult(
            frames=self.session.total_frames,
            recordings=tuple(self.recordings),
            screenshots=tuple(self.screenshots),
            stopped_by=flag.reason or "interrupted",
        )
