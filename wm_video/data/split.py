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


def choose_episodes(
    available: Sequence[int], spec: str | None, *, all_episodes: bool = False, holdout: float | None = None
) -> tuple[list[int], str]:
    """The episodes an evaluation scores, and how they were chosen: ``spec`` (``--episodes 3,7,9``,
    each one the dataset holds), every episode, or by default the held-out ones of
    :func:`split_episodes` (all of them if none is held out)."""
    everything = [int(e) for e in available]
    if spec is not None:
        try:
            asked = [int(part) for part in spec.split(",") if part.strip()]
        except ValueError:
            raise InputError(
                f"--episodes takes comma-separated episode indices like 3,7,9; got {spec!r}"
            ) from None
        unknown = sorted(set(asked) - set(everything))
        if not asked or unknown:
            shown = f"{everything[0]}..{everything[-1]}" if everything else "none"
            raise InputError(
                f"--episodes {spec!r}: {'no episode given' if not asked else f'no episode {unknown}'} in the "
                f"dataset (it holds {len(everything)} episodes: {shown})"
            )
        return asked, f"episodes {asked}"
    if all_episodes:
        return everything, "all episodes"
    fraction = DEFAULT_HOLDOUT if holdout is None else float(holdout)
    heldout = list(split_episodes(everything, fraction).heldout)
    if heldout:
        return heldout, f"held-out episodes {heldout} (last {fraction:.0%})"
    return everything, "all episodes (the dataset has no held-out one)"
