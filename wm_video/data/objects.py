"""Where the game happens: per-frame object masks from the engine's labels, for loss weighting.

In ViZDoom footage the static arena fills the frame, and a plain mean over pixels or tokens
spends the model on it: a monster (a few pixels to a few dozen at 64 px) vanishes in the
tokenizer and then in the dynamics. A dataset collected with ground truth
(:mod:`wm_video.data.truth`) holds a class map per frame; the training programs turn it into an
object mask and weight the loss there (``--object-weight``: :mod:`wm_video.tokenizer.loss`,
:mod:`wm_video.dynamics.objective`).

Design choices:
- **Which classes**: :data:`OBJECT_CLASSES`, what a player watches and the model loses: monsters,
  corpses, projectiles and bullet puffs, blood, and the muzzle flash. Not the weapon (a large
  sprite at a fixed place, which every model keeps), not items (static pick-ups, part of the
  arena), not ``other`` (barrels, decorations).
- **No new file**: the truth cache (``<root>/.cache/truth-<size>/classes.u8``, one uint8 class
  id per pixel at the training size, rows aligned with the frame and token caches) is decoded
  once per dataset and fingerprint; the mask is a 256-entry lookup on it, per batch
  (:class:`ObjectMasks`), far cheaper than the model step it feeds.
- **Per token, any pixel counts** (:func:`token_objects`): a token is an object token when any
  pixel of its patch is. A distant monster covers a tenth of an 8×8 patch; weighting by
  coverage would give it almost nothing, and those small ones are what vanish.
- **A dataset without labels is an error**, in one line naming it, when a weight is asked for:
  training silently unweighted would waste hours on a run that is not the one asked for.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from wm_video.data.cache import TrainingCache
from wm_video.data.lerobot import read_info
from wm_video.data.truth import has_truth, load_truth_cache
from wm_video.errors import InputError

#: The classes of :data:`wm_video.sources.truth.CLASSES` that count as objects.
OBJECT_CLASSES: tuple[str, ...] = ("monster", "corpse", "projectile", "blood", "flash")


class ObjectMasks:
    """Per-frame object masks (N, H, W) uint8 (1: object pixel), read row by row from class maps.

    Sliced like an array (``masks[a:b]``, ``masks[rows]``), so :class:`~wm_video.data.sampler.ClipSampler`
    cuts clips from it as from the frame or token cache it is aligned with.
    """

    def __init__(self, classes: np.ndarray, class_names: Sequence[str]) -> None:
        self.classes = classes  # (N, H, W) uint8 class ids (a memmap)
        self.lookup = np.zeros(256, dtype=np.uint8)  # class id → 1 for the object classes
        for name in OBJECT_CLASSES:
            if name in class_names:
                self.lookup[list(class_names).index(name)] = 1

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.classes.shape)

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(np.uint8)

    def __len__(self) -> int:
        return len(self.classes)

    def __getitem__(self, rows: slice | np.ndarray | int) -> np.ndarray:
        return self.lookup[self.classes[rows]]


def require_labels(root: Path, flag: str = "--object-weight") -> None:
    """An :class:`InputError` naming the dataset and ``flag`` unless the dataset holds the labels."""
    if not has_truth(read_info(root)):
        raise InputError(
            f"{root}: {flag} needs the engine's labels (observation.labels), which this dataset has not; "
            f"collect it with ViZDoom (`wm-video collect` records them), add them to ViZDoom footage "
            f"with `wm-video collect --relabel`, or drop {flag}"
        )


def load_object_masks(
    root: Path,
    frames: TrainingCache,
    *,
    flag: str = "--object-weight",
    cache_root: Path | None = None,
    progress: bool = True,
) -> ObjectMasks:
    """The object masks of the dataset at ``root``, rows and size those of its frame cache ``frames``.
    A dataset without labels is an :class:`InputError` naming it and ``flag``."""
    require_labels(root, flag)
    truth = load_truth_cache(root, size=frames.size, cache_root=cache_root, progress=progress)
    assert truth is not None  # require_labels saw the labels declared
    if len(truth.classes) != frames.num_frames:  # pragma: no cover - both caches share the dataset fingerprint
        raise InputError(f"{truth.path}: {len(truth.classes)} labelled frames for {frames.num_frames} frames")
    return ObjectMasks(truth.classes, truth.class_names)


def token_objects(masks: np.ndarray, patch_size: int) -> np.ndarray:
    """(…, H, W) object masks → (…, N) uint8: 1 where any pixel of the token's patch is an object.

    Tokens in the tokenizer's raster order (row of patches by row; ``(gh gw)``)."""
    *lead, height, width = masks.shape
    grid_h, grid_w = height // patch_size, width // patch_size
    patches = masks.reshape(*lead, grid_h, patch_size, grid_w, patch_size)  # (…, gh, p, gw, p)
    return patches.max(axis=(-3, -1)).reshape(*lead, grid_h * grid_w)
