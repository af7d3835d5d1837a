"""ViZDoom as a frame source: scenarios shipped with the package, or Freedoom maps.

Design choices:
- Headless and lean: no window, no sound, no depth/automap/audio buffers. With
  ``ground_truth`` the labels buffer and six game variables are on and :meth:`truth` describes
  each frame (:mod:`wm_video.sources.truth`); neither changes a rendered frame (the
  ``collect --relabel`` test replays an unlabelled dataset bit-exactly). The engine renders
  at RES_160X120 RGB24 (its fastest mode) and frames are resized to ``size``×``size`` with
  cv2 INTER_AREA (a 4:3 → 1:1 squeeze, as in GameNGen-style datasets).
- Every scenario gets the same 8 buttons (``set_available_buttons``) whatever its .cfg says,
  so datasets from different scenarios share one action space.
- Freedoom maps (``freedoom1:E1M1``, ``freedoom2:MAP01``) set the WAD and map directly; the
  shipped ``freedoom1.cfg`` turns on audio and automap buffers and hangs without a window.
- Deterministic: ``set_seed(seed)`` before every ``new_episode``. The engine is initialised
  once; a later reset with any seed replays exactly what a fresh instance would, whatever
  episodes ran before and however they ended (checked in tests/test_sources.py). That needs a
  throwaway start that runs a few tics before each reset (see :meth:`VizDoomSource.reset`).
- The engine writes ``_vizdoom.ini`` and a ``_vizdoom/`` folder into its working directory;
  both go into a private temporary directory removed on ``close``.
- The engine is a child process of whoever creates the source; on Linux it is started through a
  small wrapper that has the kernel kill it when that process dies, even by SIGKILL, so no
  engine outlives a killed ``collect`` or one of its workers.
- When the episode ends (timeout, exit or death) ViZDoom has no state to show, so ``step``
  returns the last frame it had with ``done=True``.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import tempfile
import threading
import weakref
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import cv2
import numpy as np

from wm_video.actions import ActionSpace
from wm_video.errors import InputError
from wm_video.signals import exec_dying_with_parent
from wm_video.sources.base import Source, StepResult
from wm_video.sources.truth import FrameTruth, frame_truth

#: Doom's simulation rate (tics per second); footage fps = TICRATE / frame_skip.
TICRATE = 35

#: Our button names, in action-vector order, with the ViZDoom button each drives.
BUTTONS: tuple[tuple[str, str], ...] = (
    ("forward", "MOVE_FORWARD"),
    ("back", "MOVE_BACKWARD"),
    ("strafe_left", "MOVE_LEFT"),
    ("strafe_right", "MOVE_RIGHT"),
    ("turn_left", "TURN_LEFT"),
    ("turn_right", "TURN_RIGHT"),
    ("attack", "ATTACK"),
    ("use", "USE"),
)

DEFAULT_KEYMAP: dict[str, str] = {
    "w": "forward",
    "s": "back",
    "a": "strafe_left",
    "d": "strafe_right",
    "left": "turn_left",
    "right": "turn_right",
    "space": "attack",
    "e": "use",
}

#: Game variables recorded with ground truth, in the order of ``truth.STATE_NAMES``.
_GAME_VARIABLES = ("POSITION_X", "POSITION_Y", "ANGLE", "HEALTH", "SELECTED_WEAPON_AMMO", "KILLCOUNT")

ACTION_SPACE = ActionSpace(buttons=tuple(name for name, _ in BUTTONS), default_keymap=DEFAULT_KEYMAP)

_FREEDOOM_MAPS = {
    "freedoom1": re.compile(r"E[1-4]M[1-9]"),
    "freedoom2": re.compile(r"MAP(0[1-9]|[12][0-9]|3[0-2])"),
}
_FREEDOOM_EXAMPLES = "freedoom1:E1M1 … freedoom1:E4M9, freedoom2:MAP01 … freedoom2:MAP32"
_CHDIR_LOCK = threading.Lock()
#: Tics run in a throwaway episode before each reset (see ``VizDoomSource.reset``); 4 sufficed.
_SETTLE_TICS = 12
#: Multiplayer scenarios whose WADs crash (segfault) a single-player engine in vizdoom 1.3.
_MULTIPLAYER_ONLY = frozenset({"cig", "multi_duel"})


def _package_dir() -> Path:
    import vizdoom

    return Path(vizdoom.__file__).parent


def available_scenarios() -> list[str]:
    """Scenario names shipped with the installed vizdoom package (.cfg files with their own WAD)."""
    names = []
    for cfg in sorted((_package_dir() / "scenarios").glob("*.cfg")):
        match = re.search(
            r"^\s*doom_scenario_path\s*=\s*(\S+)", cfg.read_text(errors="replace"), re.MULTILINE
        )
        # doom.cfg, freedoom1.cfg, oblige.cfg... name no scenario WAD of their own: not standalone.
        if match and (cfg.parent / match.group(1)).is_file() and cfg.stem not in _MULTIPLAYER_ONLY:
            names.append(cfg.stem)
    return names


@dataclass(frozen=True)
class VizDoomConfig:
    """What to play and how to film it."""

    #: A shipped scenario name ("my_way_home") or a Freedoom map ("freedoom1:E1M1", "freedoom2:MAP01").
    scenario: str = "my_way_home"
    #: Frames are size×size pixels.
    size: int = 64
    #: Doom tics per recorded frame (each action is held this long); fps = 35 / frame_skip.
    frame_skip: int = 2
    #: Draw the status bar (health, ammo) into the frames.
    render_hud: bool = False
    #: Episode length limit in tics; None keeps the scenario's own (Freedoom maps: none).
    episode_timeout: int | None = None
    #: Record what the engine knows per frame (labels buffer, pose, health…): see ``truth()``.
    ground_truth: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.size, int) or not 8 <= self.size <= 1024:
            raise InputError(
                f"size must be an integer pixel count between 8 and 1024 (e.g. 64); got {self.size!r}"
            )
        if not isinstance(self.frame_skip, int) or not 1 <= self.frame_skip <= TICRATE:
            raise InputError(
                f"frame_skip must be an integer from 1 to {TICRATE} tics (2 gives 17.5 fps); got {self.frame_skip!r}"
            )
        if self.episode_timeout is not None and (
            not isinstance(self.episode_timeout, int) or self.episode_timeout < 1
        ):
            raise InputError(
                f"episode_timeout is a positive number of tics (35 per second) or None; got {self.episode_timeout!r}"
            )
        if ":" in self.scenario:
            wad, _, level = self.scenario.partition(":")
            wad, level = wad.lower(), level.upper()
            if wad not in _FREEDOOM_MAPS or not _FREEDOOM_MAPS[wad].fullmatch(level):
                raise InputError(
                    f"unknown Freedoom map {self.scenario!r}; spell it like {_FREEDOOM_EXAMPLES}"
                )
            object.__setattr__(self, "scenario", f"{wad}:{level}")
        elif self.scenario not in available_scenarios():
            raise InputError(
                f"unknown ViZDoom scenario {self.scenario!r}; choose one of {available_scenarios()} "
                f"or a Freedoom map like {_FREEDOOM_EXAMPLES}"
            )

    @property
    def fps(self) -> float:
        return TICRATE / self.frame_skip


class VizDoomSource(Source):
    """One ViZDoom engine, initialised once and reset for every episode."""

    action_space = ACTION_SPACE

    def __init__(self, config: VizDoomConfig) -> None:
        import vizdoom as vzd

        self.config = config
        self.fps = config.fps
        self.frame_shape = (config.size, config.size, 3)
        self.task = f"vizdoom {config.scenario}"
        self._home = tempfile.mkdtemp(prefix="wm_video_vizdoom_")
        self._game = vzd.DoomGame()
        self._finalizer = weakref.finalize(self, _shutdown, self._game, self._home)
        self._configure(vzd)
        self._last_frame: np.ndarray | None = None
        self._last_state: Any = None
        with _CHDIR_LOCK:  # the engine creates ./_vizdoom in its working directory
            previous = os.getcwd()
            os.chdir(self._home)
            try:
                self._game.init()
            finally:
                os.chdir(previous)

    def _configure(self, vzd: ModuleType) -> None:
        game, config, package = self._game, self.config, _package_dir()
        if ":" in config.scenario:
            wad, level = config.scenario.split(":")
            game.set_doom_game_path(str(package / f"{wad}.wad"))
            game.set_doom_map(level)
        else:
            game.load_config(str(package / "scenarios" / f"{config.scenario}.cfg"))
        game.set_doom_config_path(os.path.join(self._home, "vizdoom.ini"))
        if sys.platform == "linux":  # the engine dies with this process
            game.set_vizdoom_path(str(exec_dying_with_parent(str(package / "vizdoom"), Path(self._home))))
        game.set_mode(vzd.Mode.PLAYER)
        game.set_window_visible(False)
        game.set_sound_enabled(False)
        game.set_console_enabled(False)
        for enable_buffer in (
            game.set_audio_buffer_enabled,
            game.set_automap_buffer_enabled,
            game.set_depth_buffer_enabled,
            game.set_notifications_buffer_enabled,
            game.set_objects_info_enabled,
            game.set_sectors_info_enabled,
        ):
            enable_buffer(False)
        game.set_screen_resolution(vzd.ScreenResolution.RES_160X120)
        game.set_screen_format(vzd.ScreenFormat.RGB24)
        game.set_render_hud(config.render_hud)
        game.set_render_messages(False)
        game.set_available_buttons([getattr(vzd.Button, engine_name) for _, engine_name in BUTTONS])
        game.set_labels_buffer_enabled(config.ground_truth)
        game.set_available_game_variables(
            [getattr(vzd.GameVariable, name) for name in _GAME_VARIABLES] if config.ground_truth else []
        )
        if config.episode_timeout is not None:
            game.set_episode_timeout(config.episode_timeout)

    def _frame(self) -> np.ndarray:
        state = self._game.get_state()
        self._last_state = state
        screen = state.screen_buffer  # (120, 160, 3) uint8
        size = self.config.size
        frame = cv2.resize(screen, (size, size), interpolation=cv2.INTER_AREA)  # (size, size, 3)
        self._last_frame = np.ascontiguousarray(frame, dtype=np.uint8)
        return self._last_frame

    def reset(self, seed: int) -> np.ndarray:
        # A throwaway start that runs a few tics first. An episode that ended in the player's death
        # leaves engine state behind that survives one new_episode: the weapon's raise and bob in
        # frames 1-6 of the next episode then depended on how the episode before it ended, so a
        # collection worker's output depended on its history (19 of 120 episodes of a collection
        # differed there from a clean replay of their seed and actions). A few tics clear it.
        self._game.new_episode()
        self._game.set_action([0.0] * len(BUTTONS))
        for _ in range(_SETTLE_TICS):
            self._game.advance_action(1)
        self._game.set_seed(int(seed) % (2**32))
        self._game.new_episode()
        return self._frame()

    def step(self, action: np.ndarray) -> StepResult:
        if self._last_frame is None:
            raise RuntimeError("call reset(seed) before step(action)")
        if self._game.is_episode_finished():
            return StepResult(frame=self._last_frame, done=True)
        pressed = [1.0 if value > 0.5 else 0.0 for value in np.asarray(action)[: len(BUTTONS)]]
        reward = float(self._game.make_action(pressed, self.config.frame_skip))
        if self._game.is_episode_finished():
            return StepResult(frame=self._last_frame, done=True, reward=reward)
        return StepResult(frame=self._frame(), done=False, reward=reward)

    def truth(self) -> FrameTruth | None:
        if not self.config.ground_truth or self._last_state is None:
            return None
        state = self._last_state
        return frame_truth(
            state.labels_buffer, state.labels, state.screen_buffer, state.game_variables, self.config.size
        )

    def close(self) -> None:
        self._finalizer()


def _shutdown(game: Any, home: str) -> None:
    try:
        game.close()
    finally:
        shutil.rmtree(home, ignore_errors=True)
