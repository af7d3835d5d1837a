"""Training and held-out episodes: one rule, used by every training program and evaluator.

The held-out episodes are the last ``ceil(holdout × E)`` episodes of the dataset (at least one
when there are two or more, none when there is one). ``collect`` gives episode i the seed
``seed + i``, so this splits by seed: held-out footage comes from engine runs the model never saw.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from wm_video.errors import InputError

DEFAULT_HOLDOUT = 0.1


@dataclass(frozen=True)
class EpisodeSplit:
    train: tuple[int, ...]  # dataset episode indices
    heldout: tuple[int, ...]


def split_episodes(episode_indices: Sequence[int], holdout: float = DEFAULT_HOLDOUT) -> EpisodeSplit:
    """Split the dataset's episode indices (in dataset order) into training and held-out ones."""
    if not 0.0 <= holdout < 1.0:
        raise InputError(f"holdout must be a fraction in [0, 1), got {holdout}")
    episodes = tuple(int(e) for e in episode_indices)
    count = len(episodes)
    heldout = 0 if count < 2 or holdout == 0 else min(count - 1, max(1, math.ceil(holdout * count)))
    return EpisodeSplit(train=episodes[: count - heldout], heldout=episodes[count - heldout :])
