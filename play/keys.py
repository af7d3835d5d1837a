"""Keyboard → action vectors, one per frame, from pygame events.

Design choices:
- The keymap is data: ``{pygame key name: button name}`` (``pygame.key.name`` spelling, e.g.
  "w", "left", "space"). Names are resolved to key codes once, on construction; an unknown key
  name or button name is an :class:`~wm_video.errors.InputError` naming it.
- State comes from the events themselves, never from ``pygame.key.get_pressed()``: that misses
  a key pressed and released between two frames, and does not see events posted by tests or
  other programs. Two sets are kept: keys *held* (KEYDOWN adds, KEYUP removes) and keys
  *tapped* since the last frame (KEYDOWN adds, ``action()`` clears). A frame's buttons are the
  union, so a quick tap counts for exactly one frame and a held key for every frame it is down.
- Losing focus (WINDOWFOCUSLOST, or ACTIVEEVENT losing input focus) releases every held key:
  the KEYUP of a key released in another window never arrives.
- Keys not in the keymap are ignored.
- Mouse-x turning is optional (``mouse_turn``): the horizontal motion of a frame
  (MOUSEMOTION ``rel``, summed) becomes the ``mouse_dx`` delta when the space has one, else
  presses ``turn_right`` / ``turn_left`` for that frame when it exceeds ``mouse_threshold``
  pixels. Without it, deltas are not produced; their entries stay 0.
- Nothing here records or draws: the recorder and the play loop both use it.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping

import numpy as np
import pygame

from wm_video.actions import ActionSpace
from wm_video.errors import InputError

#: ACTIVEEVENT ``state`` bit for keyboard (input) focus, as in SDL 1.2's SDL_APPINPUTFOCUS.
_APP_INPUT_FOCUS = 2


def resolve_key(name: str) -> int:
    """The pygame key code of a key name (``pygame.key.name`` spelling); InputError if unknown."""
    with warnings.catch_warnings():
        # key_code warns before pygame.init(); name → code lookups do not need the display.
        warnings.simplefilter("ignore")
        try:
            return int(pygame.key.key_code(name))
        except ValueError:
            raise InputError(
                f"unknown key name {name!r} in the keymap; use pygame's key names "
                "(e.g. 'w', 'left', 'space', 'left shift')"
            ) from None


class KeyboardActions:
    """Turns pygame key events into one action vector per frame.

    Per frame: call ``handle(event)`` for every event from ``pygame.event.get()``, then
    ``action()`` once.
    """

    def __init__(
        self,
        space: ActionSpace,
        keymap: Mapping[str, str] | None = None,
        *,
        mouse_turn: bool = False,
        mouse_threshold: float = 2.0,
    ) -> None:
        self.space = space
        if mouse_turn and "mouse_dx" not in space.deltas and not {"turn_left", "turn_right"} <= set(
            space.buttons
        ):
            raise InputError(
                "mouse turning needs a 'mouse_dx' delta or 'turn_left' and 'turn_right' buttons; "
                f"this world has {list(space.names)}"
            )
        self.mouse_turn = mouse_turn
        self.mouse_threshold = float(mouse_threshold)
        self._mouse_dx = 0.0
        self.keymap: dict[str, str] = dict(space.default_keymap if keymap is None else keymap)
        if not self.keymap:
            raise InputError(f"the keymap is empty; map keys to the buttons {list(space.buttons)}")
        unknown = sorted(set(self.keymap.values()) - set(space.buttons))
        if unknown:
            raise InputError(f"keymap names unknown buttons {unknown}; buttons are {list(space.buttons)}")
        #: key code → (key name, button name)
        self._bindings: dict[int, tuple[str, str]] = {}
        for key_name, button in self.keymap.items():
            code = resolve_key(key_name)
            if code in self._bindings:
                other = self._bindings[code][0]
                raise InputError(f"keys {other!r} and {key_name!r} in the keymap are the same key")
            self._bindings[code] = (key_name, button)
        self._held: set[int] = set()
        self._tapped: set[int] = set()

    def handle(self, event: pygame.event.Event) -> None:
        """Update key state from one event; events that are not about mapped keys are ignored."""
        if event.type == pygame.KEYDOWN:
            key = getattr(event, "key", None)
            if key in self._bindings:
                self._held.add(key)
                self._tapped.add(key)
        elif event.type == pygame.KEYUP:
            self._held.discard(getattr(event, "key", None))
        elif event.type == pygame.MOUSEMOTION and self.mouse_turn:
            self._mouse_dx += float(getattr(event, "rel", (0, 0))[0])
        elif event.type == pygame.WINDOWFOCUSLOST or (
            event.type == pygame.ACTIVEEVENT
            and not getattr(event, "gain", 1)
            and getattr(event, "state", 0) & _APP_INPUT_FOCUS
        ):
            self.release_all()

    def action(self) -> np.ndarray:
        """This frame's action vector (float32, ``space.size``); starts the next frame."""
        keys = self._held | self._tapped
        self._tapped.clear()
        pressed = {self._bindings[key][1] for key in keys}
        deltas: dict[str, float] = {}
        dx, self._mouse_dx = self._mouse_dx, 0.0
        if self.mouse_turn and "mouse_dx" in self.space.deltas:
            deltas["mouse_dx"] = dx
        elif self.mouse_turn and abs(dx) > self.mouse_threshold:
            pressed.add("turn_right" if dx > 0 else "turn_left")
        return self.space.from_pressed(pressed, deltas)

    def release_all(self) -> None:
        """Release every held key (focus lost); taps already seen still count for this frame."""
        self._held.clear()
        self._mouse_dx = 0.0

    def binds(self, key: int) -> bool:
        """Whether the key code ``key`` plays a button."""
        return key in self._bindings

    def held_names(self) -> list[str]:
        """Key names held down now, in keymap order (for a HUD)."""
        return [name for code, (name, _) in self._bindings.items() if code in self._held]

    def describe(self) -> str:
        """One line listing the bindings, e.g. ``w forward · s back · left turn_left``."""
        return " · ".join(f"{name} {button}" for name, button in self._bindings.values())
