"""Atari 2600 games (gymnasium + ale-py) as a frame source.

Design choices:
- Buttons are joystick parts, "up", "down", "left", "right", "fire", kept only where the
  game's minimal action set uses them (Breakout: fire/left/right; Freeway: up/down).
- A multi-hot press maps to the discrete action whose meaning is exactly that set
  (up+right+fire → "UPRIGHTFIRE"). Opposite directions cancel (up+down → neither), as on a
  real joystick. A combination the game does not offer keeps the largest subset it does
  offer; among equal-sized subsets "fire" is dropped first, then left/right, then up/down,
  so movement wins over shooting (Breakout: right+fire → RIGHT). The empty set is NOOP.
  The whole table is built once (at most 2^5 entries) by :func:`build_action_table`.
- Sticky actions are off (``repeat_action_probability=0``) and ``reset(seed=...)`` seeds
  the emulator, so a seed and an action sequence give the same frames every time.
- Frames (210×160) are squeezed to size×size with cv2 INTER_AREA; fps = 60 / frameskip.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from wm_video.actions import ActionSpace
from wm_video.errors import InputError
from wm_video.sources.base import Source, StepResult

#: The Atari 2600 runs at 60 frames per second; footage fps = ATARI_FPS / frameskip.
ATARI_FPS = 60

#: Button names in action-vector order (those the game uses are kept, in this order).
JOYSTICK = ("up", "down", "left", "right", "fire")
#: When a pressed combination is not offered, equal-sized subsets are preferred that drop
#: buttons earlier in this list.
DROP_ORDER = ("fire", "left", "right", "up", "down")
_OPPOSITES = (("up", "down"), ("left", "right"))
DEFAULT_KEYMAP: dict[str, str] = {"w": "up", "s": "down", "a": "left", "d": "right", "space": "fire"}

_MEANING_TOKENS = re.compile(r"UP|DOWN|LEFT|RIGHT|FIRE")


def meaning_buttons(meaning: str) -> frozenset[str]:
    """Buttons behind an ALE action meaning: "UPRIGHTFIRE" → {"up", "right", "fire"}, "NOOP" → {}."""
    if meaning == "NOOP":
        return frozenset()
    tokens = _MEANING_TOKENS.findall(meaning)
    if "".join(tokens) != meaning:
        raise InputError(f"cannot read Atari action meaning {meaning!r}")
    return frozenset(token.lower() for token in tokens)


def build_action_table(meanings: Sequence[str]) -> tuple[tuple[str, ...], dict[frozenset[str], int]]:
    """Buttons a game uses, and every combination of them → index of its discrete action."""
    offered = {meaning_buttons(meaning): index for index, meaning in enumerate(meanings)}
    if frozenset() not in offered:
        raise InputError(f"an Atari action set without NOOP is not supported: {list(meanings)}")
    used = set().union(*offered)
    buttons = tuple(name for name in JOYSTICK if name in used)
    table: dict[frozenset[str], int] = {}
    for count in range(len(buttons) + 1):
        for combination in itertools.combinations(buttons, count):
            pressed = set(combination)
            for first, second in _OPPOSITES:
                if first in pressed and second in pressed:
                    pressed -= {first, second}
            table[frozenset(combination)] = offered[_best_offered(frozenset(pressed), offered)]
    return buttons, table


def _best_offered(pressed: frozenset[str], offered: dict[frozenset[str], int]) -> frozenset[str]:
    if pressed in offered:
        return pressed
    # Largest subset first; ties go to the subset whose dropped buttons come earliest in DROP_ORDER.
    for size in range(len(pressed) - 1, -1, -1):
        candidates = [frozenset(kept) for kept in itertools.combinations(sorted(pressed), size)]
        candidates = [kept for kept in candidates if kept in offered]
        if candidates:
            return min(candidates, key=lambda kept: sorted(DROP_ORDER.index(b) for b in pressed - kept))
    return frozenset()


def available_games() -> list[str]:
    """Game names with an "ALE/<name>-v5" environment, e.g. "Breakout"."""
    import ale_py
    import gymnasium as gym

    gym.register_envs(ale_py)
    return sorted(name[4:-3] for name in gym.registry if name.startswith("ALE/") and name.endswith("-v5"))


def normalize_game_id(game: str) -> str:
    """ "Breakout", "breakout", "BreakoutNoFrameskip-v4", "ALE/Breakout-v5" → "ALE/Breakout-v5"."""
    name = re.sub(r"^ALE/|(NoFrameskip)?-v\d+$", "", game.strip())
    games = available_games()
    by_lower = {known.lower(): known for known in games}
    if name.lower() not in by_lower:
        raise InputError(f"unknown Atari game {game!r}; choose one of {games}")
    return f"ALE/{by_lower[name.lower()]}-v5"


@dataclass(frozen=True)
class AtariConfig:
    """Which game and how to film it."""

    #: "Breakout", "Pong", "ALE/MsPacman-v5"...
    game: str = "Breakout"
    #: Frames are size×size pixels.
    size: int = 64
    #: Emulator frames per recorded frame (each action is held this long); fps = 60 / frameskip.
    frameskip: int = 4
    #: Probability that the emulator repeats the previous action (ALE "sticky actions"); 0 keeps runs deterministic.
    repeat_action_probability: float = 0.0

    def __post_init__(self) -> None:
        if not isinstance(self.size, int) or not 8 <= self.size <= 1024:
            raise InputError(
                f"size must be an integer pixel count between 8 and 1024 (e.g. 64); got {self.size!r}"
            )
        if not isinstance(self.frameskip, int) or not 1 <= self.frameskip <= ATARI_FPS:
            raise InputError(
                f"frameskip must be an integer from 1 to 60 (4 gives 15 fps); got {self.frameskip!r}"
            )
        if not 0.0 <= self.repeat_action_probability < 1.0:
            raise InputError(
                f"repeat_action_probability must lie in [0, 1) (0 = deterministic); got {self.repeat_action_probability!r}"
            )
        object.__setattr__(self, "game", normalize_game_id(self.game))

    @property
    def fps(self) -> float:
        return ATARI_FPS / self.frameskip


class AtariSource(Source):
    """One ALE emulator behind gymnasium, reset for every episode."""

    def __init__(self, config: AtariConfig) -> None:
        import ale_py
        import gymnasium as gym

        gym.register_envs(ale_py)
        self.config = config
        self._env = gym.make(
            config.game,
            frameskip=config.frameskip,
            repeat_action_probability=config.repeat_action_probability,
        )
        buttons, self._table = build_action_table(self._env.unwrapped.get_action_meanings())  # type: ignore[attr-defined]
        keymap = {key: button for key, button in DEFAULT_KEYMAP.items() if button in buttons}
        self.action_space = ActionSpace(buttons=buttons, default_keymap=keymap)
        self.fps = config.fps
        self.frame_shape = (config.size, config.size, 3)
        self.task = f"atari {config.game[4:-3]}"
        self._last_frame: np.ndarray | None = None

    def discrete_action(self, action: np.ndarray) -> int:
        """Index of the game's discrete action for a multi-hot action vector."""
        pressed = frozenset(self.action_space.pressed(np.asarray(action)))
        return self._table[pressed]

    def _frame(self, observation: np.ndarray) -> np.ndarray:
        size = self.config.size
        frame = cv2.resize(
            observation, (size, size), interpolation=cv2.INTER_AREA
        )  # (210,160,3) → (size,size,3)
        self._last_frame = np.ascontiguousarray(frame, dtype=np.uint8)
        return self._last_frame

    def reset(self, seed: int) -> np.ndarray:
        observation, _ = self._env.reset(seed=int(seed) % (2**32))
        return self._frame(observation)

    def step(self, action: np.ndarray) -> StepResult:
        if self._last_frame is None:
            raise RuntimeError("call reset(seed) before step(action)")
        observation, _, terminated, truncated, _ = self._env.step(self.discrete_action(action))
        return StepResult(frame=self._frame(observation), done=bool(terminated or truncated))

    def close(self) -> None:
        self._env.close()
