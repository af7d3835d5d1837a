"""The one interface every game source implements.

A source is a real engine behind gym-like calls: ``reset(seed)`` returns the first frame,
``step(action)`` returns the next frame and whether the episode ended. Frames are uint8
arrays of shape (H, W, 3) at the source's configured size; actions are float32 vectors
in the source's :class:`~wm_video.actions.ActionSpace`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from wm_video.actions import ActionSpace

if TYPE_CHECKING:
    from wm_video.sources.truth import FrameTruth


@dataclass(frozen=True)
class StepResult:
    frame: np.ndarray  # (H, W, 3) uint8
    done: bool
    reward: float = 0.0  # what the game awarded for this action (ViZDoom's scenario reward)


class Source(ABC):
    """A real game engine producing frames for actions."""

    #: Buttons and deltas this source understands, with its default keymap.
    action_space: ActionSpace
    #: Frames per second of the produced footage (e.g. ViZDoom: 35 / frame_skip).
    fps: float
    #: (H, W, 3) of the frames returned by reset and step.
    frame_shape: tuple[int, int, int]
    #: Short description written into datasets (LeRobot "task").
    task: str

    @abstractmethod
    def reset(self, seed: int) -> np.ndarray:
        """Start a new episode, deterministic for ``seed``; returns the first frame."""

    @abstractmethod
    def step(self, action: np.ndarray) -> StepResult:
        """Apply one action (float32 vector in ``action_space``) and return the next frame."""

    def truth(self) -> FrameTruth | None:
        """What the engine knows about the frame last returned (labels, pose…); None when the
        source gives no ground truth (see :mod:`wm_video.sources.truth`)."""
        return None

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release the engine."""

    def __enter__(self) -> Source:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
