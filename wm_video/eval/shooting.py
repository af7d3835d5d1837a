"""Shooting: does the gun flash when fired, and again and again while attack is held?

The engine re-fires while the button is held (the pistol every 7 frames at 17.5 fps), drawing
its muzzle flash for 2–3 frames each time. A world model may draw one flash and then never
again. Two measures, from a flash series (frame shows the flash: the object model's cells, or
the engine's labels):

- **flash rate**: the share of frames showing the flash;
- **re-fire period**: the median number of frames between two consecutive flash onsets (an onset
  is a flash frame after a frame without one) within a clip; NaN with fewer than two onsets.
  ``onsets`` counts them, so "one flash and then none" shows as 1 onset per clip.

:func:`hold_attack` plays the same program — attack held for ``steps`` frames after the
loop-closure warm-up (:func:`wm_video.eval.loops.warm_start`) — on the real engine, with its
ground truth, and returns the frames and the engine's flash series; the model is driven with
the same program from the same context by the caller.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from wm_video.eval.clips import EngineSpec, check_stop
from wm_video.eval.loops import LoopConfig, warm_start


@dataclass
class FlashScores:
    clips: int
    frames: int  # per clip
    flash_rate: float  # share of frames with the flash
    onsets_per_clip: float
    refire_period: float  # median frames between consecutive onsets; NaN with < 2 onsets in every clip

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def flash_scores(shown: np.ndarray) -> FlashScores:
    """From flash series (B, T) bool."""
    shown = np.asarray(shown, dtype=bool)
    onsets = shown.copy()
    onsets[:, 1:] &= ~shown[:, :-1]
    intervals = [np.diff(np.flatnonzero(row)) for row in onsets]
    gaps = np.concatenate(intervals) if intervals else np.empty(0)
    return FlashScores(
        int(shown.shape[0]),
        int(shown.shape[1]),
        float(shown.mean()) if shown.size else float("nan"),
        float(onsets.sum(axis=1).mean()) if shown.size else float("nan"),
        float(np.median(gaps)) if gaps.size else float("nan"),
    )


@dataclass
class HeldAttack:
    """The engine under the program: context, frames, labels of its flashes."""

    context_frames: np.ndarray  # (S, C, H, W, 3)
    context_actions: np.ndarray  # (S, C − 1, A)
    program: np.ndarray  # (steps, A): attack held
    frames: np.ndarray  # (S, steps, H, W, 3) the engine's frames after each action
    classes: np.ndarray  # (S, steps, H, W) the engine's class maps of those frames


def hold_attack(
    engine: EngineSpec,
    *,
    context: int,
    steps: int,
    seed: int,
    config: LoopConfig,
    stop: Callable[[], bool] | None = None,
) -> HeldAttack | None:
    """Play "attack held for ``steps`` frames" from ``config.starts`` warm starts on the engine with
    its ground truth; None when its actions have no ``attack`` button."""
    with engine.open(ground_truth=True) as source:
        if "attack" not in source.action_space.buttons:
            return None
        program = np.stack([source.action_space.from_pressed(["attack"])] * steps)
        contexts, frames, classes = [], [], []
        for i in range(config.starts):
            check_stop(stop)
            warm_frames, warm_actions = warm_start(source, seed + i, config)
            contexts.append((warm_frames[-context:], warm_actions[-context:-1]))
            shown, labels = [], []
            for action in program:
                shown.append(source.step(action).frame)  # an episode that ends repeats its last frame
                known = source.truth()
                labels.append(known.classes if known is not None else np.zeros(shown[-1].shape[:2], np.uint8))
            frames.append(np.stack(shown))
            classes.append(np.stack(labels))
    return HeldAttack(
        np.stack([c for c, _ in contexts]),
        np.stack([a for _, a in contexts]),
        program,
        np.stack(frames),
        np.stack(classes),
    )
