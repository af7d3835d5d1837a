"""Gymnasium action spaces for a world's actions, and back to the world's action vectors.

A world reads one float32 vector per step (buttons multi-hot, then deltas; see
:mod:`wm_video.actions`). An agent may prefer another view of the same actions:

- ``"buttons"`` (the default): ``MultiBinary(buttons)`` when the world has buttons only,
  ``Box`` when it has deltas only, and ``Dict(buttons=MultiBinary, deltas=Box)`` when it has both;
- ``"discrete"``: ``Discrete(K)`` over K button combinations: the ones a dataset's actions used
  (most used first), or a list the caller gives (``[["forward"], ["turn_left", "attack"], []]``).
  Deltas are held at 0.

Deltas are bounded by ``DELTA_BOUND`` × the model's ``action_scale`` (the checker warns on
unbounded spaces; a world reads each delta divided by its scale).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from gymnasium import spaces

from wm_video.actions import ActionSpace
from wm_video.errors import InputError

ACTION_TYPES = ("buttons", "discrete")
DELTA_BOUND = 10.0  # deltas lie in ± this many of the model's action_scale
MAX_COMBINATIONS = 64  # a dataset's combinations beyond the 64 most used are dropped


def used_combinations(actions: np.ndarray, buttons: int, limit: int = MAX_COMBINATIONS) -> list[np.ndarray]:
    """The distinct button rows of (N, A) ``actions``, most used first (ties: in order of appearance)."""
    rows = np.asarray(actions)[:, :buttons] > 0.5  # (N, buttons)
    unique, first, counts = np.unique(rows, axis=0, return_index=True, return_counts=True)
    order = sorted(range(len(unique)), key=lambda i: (-counts[i], first[i]))
    return [unique[i].astype(np.float32) for i in order[:limit]]


def dataset_combinations(root: Path, space: ActionSpace) -> list[np.ndarray]:
    """The button combinations a dataset's episodes used (its actions must be ``space``'s)."""
    from wm_video.data.reader import open_dataset

    dataset = open_dataset(Path(root))
    if tuple(dataset.action_space.names) != tuple(space.names):
        raise InputError(
            f"{root}: its actions {list(dataset.action_space.names)} are not this world's {list(space.names)}"
        )
    actions = np.concatenate([dataset.actions(ref) for ref in dataset.episodes])
    return used_combinations(actions, len(space.buttons))


@dataclass(frozen=True)
class ActionAdapter:
    """One gymnasium action space over a world's actions, and the conversion to its vectors."""

    space: ActionSpace
    scale: tuple[float, ...]  # the model's action_scale, one per action
    combinations: tuple[tuple[float, ...], ...] = ()  # discrete: the button rows, in order

    @property
    def discrete(self) -> bool:
        return bool(self.combinations)

    def gym_space(self) -> spaces.Space[Any]:
        """The gymnasium space of one world's action."""
        buttons, deltas = len(self.space.buttons), len(self.space.deltas)
        if self.discrete:
            return spaces.Discrete(len(self.combinations))
        bound = np.asarray(self.scale[buttons:], dtype=np.float32) * DELTA_BOUND
        box = spaces.Box(-bound, bound, dtype=np.float32) if deltas else None
        if deltas and not buttons:
            assert box is not None
            return box
        binary = spaces.MultiBinary(buttons)
        return spaces.Dict({"buttons": binary, "deltas": box}) if box is not None else binary

    def vectors(self, actions: Any, count: int) -> np.ndarray:
        """``count`` actions of :meth:`gym_space` (batched: leading axis ``count``) → (count, A) float32."""
        size, buttons = self.space.size, len(self.space.buttons)
        out = np.zeros((count, size), dtype=np.float32)
        if self.discrete:
            index = np.asarray(actions, dtype=np.int64).reshape(count)
            if index.min() < 0 or index.max() >= len(self.combinations):
                raise InputError(
                    f"discrete actions are 0..{len(self.combinations) - 1}; got {index.tolist()}"
                )
            out[:, :buttons] = np.asarray(self.combinations, dtype=np.float32)[index]
            return out
        if isinstance(actions, dict):
            pressed, deltas = actions.get("buttons"), actions.get("deltas")
        elif buttons:
            pressed, deltas = actions, None
        else:
            pressed, deltas = None, actions
        if buttons:
            out[:, :buttons] = (np.asarray(pressed).reshape(count, buttons) > 0).astype(np.float32)
        if len(self.space.deltas):
            out[:, buttons:] = np.asarray(deltas, dtype=np.float32).reshape(count, -1)
        return out


def action_adapter(
    space: ActionSpace,
    scale: Sequence[float],
    action_type: str = "buttons",
    combinations: Sequence[Sequence[str]] | Path | str | None = None,
) -> ActionAdapter:
    """An :class:`ActionAdapter` for a world's ``space``: ``action_type`` ``"buttons"`` or ``"discrete"``
    (``combinations``: lists of button names, or a dataset folder whose actions give them)."""
    if action_type not in ACTION_TYPES:
        raise InputError(f"action_type must be one of {list(ACTION_TYPES)}; got {action_type!r}")
    if action_type == "buttons":
        if combinations is not None:
            raise InputError("combinations go with action_type='discrete'")
        return ActionAdapter(space, tuple(float(s) for s in scale))
    if not space.buttons:
        raise InputError("a discrete action space needs a world with buttons; this one has deltas only")
    if combinations is None:
        raise InputError(
            "action_type='discrete' needs combinations: lists of button names, or a dataset folder "
            "whose actions give them"
        )
    if isinstance(combinations, str | Path):
        rows = dataset_combinations(Path(combinations), space)
    else:
        if any(isinstance(names, str) for names in combinations):
            raise InputError(
                'combinations are lists of button names, e.g. [["forward"], ["turn_left", "attack"], []]'
            )
        rows = [space.from_pressed(list(names))[: len(space.buttons)] for names in combinations]
    if not rows:
        raise InputError("a discrete action space needs at least one combination")
    return ActionAdapter(
        space, tuple(float(s) for s in scale), tuple(tuple(float(v) for v in row) for row in rows)
    )
