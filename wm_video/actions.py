"""Action spaces and keymaps, shared by sources, datasets, play and eval.

An action is one float32 vector: a multi-hot block over named buttons (1.0 pressed, 0.0 not),
followed by optional continuous deltas (e.g. mouse dx). The names are stored in the dataset
(`action.names` in meta/info.json) so a model and a player agree on what each entry means.

A keymap is plain data: keyboard key name (pygame's `pygame.key.name` spelling, e.g. "w",
"left", "space") → button name.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from wm_video.errors import InputError


@dataclass(frozen=True)
class ActionSpace:
    """Named buttons (multi-hot) plus optional continuous deltas."""

    buttons: tuple[str, ...]
    deltas: tuple[str, ...] = ()
    default_keymap: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        names = self.names
        if not names:
            raise InputError("an action space needs at least one button or delta name")
        if len(set(names)) != len(names):
            dupes = sorted({n for n in names if names.count(n) > 1})
            raise InputError(f"action names must be unique; repeated: {dupes}")
        unknown = sorted(set(self.default_keymap.values()) - set(self.buttons))
        if unknown:
            raise InputError(
                f"keymap maps keys to unknown buttons {unknown}; buttons are {list(self.buttons)}"
            )

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self.buttons) + tuple(self.deltas)

    @property
    def size(self) -> int:
        return len(self.buttons) + len(self.deltas)

    def zeros(self) -> np.ndarray:
        return np.zeros(self.size, dtype=np.float32)

    def from_pressed(self, pressed: Iterable[str], deltas: Mapping[str, float] | None = None) -> np.ndarray:
        """Action vector from pressed button names and delta values; unknown names are an error."""
        vector = self.zeros()
        index = {name: i for i, name in enumerate(self.names)}
        for name in pressed:
            if name not in index or name in self.deltas:
                raise InputError(f"unknown button {name!r}; buttons are {list(self.buttons)}")
            vector[index[name]] = 1.0
        for name, value in (deltas or {}).items():
            if name not in self.deltas:
                raise InputError(f"unknown delta {name!r}; deltas are {list(self.deltas)}")
            vector[index[name]] = float(value)
        return vector

    def pressed(self, action: np.ndarray) -> list[str]:
        """Names of the buttons held in an action vector."""
        return [
            name for name, value in zip(self.buttons, action[: len(self.buttons)], strict=True) if value > 0.5
        ]

    def check(self, actions: np.ndarray) -> None:
        """Raise if an (N, size) array is not a valid sequence of actions in this space."""
        if actions.ndim != 2 or actions.shape[1] != self.size:
            raise InputError(f"actions must have shape (N, {self.size}); got {tuple(actions.shape)}")
        finite = np.isfinite(actions)
        if not finite.all():
            row, column = np.argwhere(~finite)[0]
            raise InputError(
                f"actions contain NaN or inf (frame {row}: {self.names[column]!r} = {actions[row, column]})"
            )
        buttons = actions[:, : len(self.buttons)]
        binary = np.isin(buttons, (0.0, 1.0))
        if not binary.all():
            row, column = np.argwhere(~binary)[0]
            raise InputError(
                f"button entries must be 0 or 1 (frame {row}: {self.names[column]!r} = {buttons[row, column]:g})"
            )


def load_keymap(path: Path, space: ActionSpace) -> dict[str, str]:
    """Read a keymap override file: a JSON object {key name: button name}."""
    try:
        keymap = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(f"{path}: cannot read keymap ({exc})") from exc
    if not isinstance(keymap, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in keymap.items()
    ):
        raise InputError(f"{path}: a keymap is a JSON object of key name → button name")
    unknown = sorted(set(keymap.values()) - set(space.buttons))
    if unknown:
        raise InputError(f"{path}: unknown buttons {unknown}; this world's buttons are {list(space.buttons)}")
    return keymap
