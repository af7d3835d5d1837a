"""A dataset's static background: the per-pixel median of its frames.

In games filmed by a fixed camera (Atari, most 2-D games) the median over many frames is the
playfield without what moves: the paddle, the ball, the cars. The tokenizer's loss can weight
the pixels that differ from it (:mod:`wm_video.tokenizer.loss`), and the sprite detector
(:mod:`wm_video.eval.sprites`) finds objects as the pixels that differ from it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from wm_video.data.cache import TrainingCache
from wm_video.errors import InputError

MEDIAN_FRAMES = 2000  # at most this many frames, evenly spaced, enter the median


def median_frame(
    cache: TrainingCache, episodes: Sequence[int], max_frames: int = MEDIAN_FRAMES
) -> np.ndarray:
    """The per-pixel median (H, W, 3) uint8 of the frames of ``episodes`` (dataset episode indices),
    from at most ``max_frames`` of them taken at an even stride."""
    position = {int(e): i for i, e in enumerate(cache.episode_indices.tolist())}
    if not episodes or any(int(e) not in position for e in episodes):
        raise InputError(f"{cache.path}: cannot take a median frame of episodes {list(episodes)}")
    slices = [cache.episode_rows(position[int(e)]) for e in episodes]
    rows = np.concatenate([np.arange(s.start, s.stop) for s in slices])
    stride = max(1, len(rows) // max_frames)
    return np.median(np.asarray(cache.frames[rows[::stride]]), axis=0).round().astype(np.uint8)
