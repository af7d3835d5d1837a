"""Object figures from cell class maps: presence, persistence, appearances, mask IoU, and how well
the object model sees (precision and recall against the engine's labels).

Everything here is plain numpy on class maps (..., h, w) of cell class ids — the object model's
predictions (:mod:`.objects`) or the engine's labels turned into cells
(:func:`~wm_video.eval.objects.cell_targets`) — so the same functions score real, reconstructed
and generated frames.

Definitions:
- **present**: a class covers at least ``min_cells`` cells of a frame (:data:`MIN_CELLS`: 2
  cells = 8 pixels at 64 px for a monster, one for the flash). Fewer is a speck a player
  hardly sees and the object model cannot be sure of.
- **persistence** at t: of the clips whose last real context frame shows the class, the share
  whose frame t (generated or real) still shows it; and "kept", the share of those whose real
  frame t shows it where the generated frame t does too (1 for a model that keeps what the game
  keeps, whatever the real footage does; 0 for one that blanks objects).
- **appearances** per 1,000 frames: frames that show the class when none of the
  :data:`APPEARANCE_GAP` frames before them did (a monster walking into view, a flash starting).
- **IoU** per class over a set of frames: cells in both masks / cells in either (summed over frames).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

MIN_CELLS = {"monster": 2, "flash": 1, "projectile": 1}
DEFAULT_MIN_CELLS = 2
APPEARANCE_GAP = 2  # frames without the class before a frame that shows it, for an appearance
PERSISTENCE_STEPS = (4, 16, 52)


def min_cells(name: str) -> int:
    return MIN_CELLS.get(name, DEFAULT_MIN_CELLS)


def present(cells: np.ndarray, class_id: int, least: int) -> np.ndarray:
    """(..., h, w) class maps → (...) bool: the class covers at least ``least`` cells."""
    return (cells == class_id).sum(axis=(-2, -1)) >= least


def appearances_per_1000(shown: np.ndarray, gap: int = APPEARANCE_GAP) -> float:
    """Appearances per 1,000 frames in sequences ``shown`` (..., T) bool; frames with fewer than
    ``gap`` frames before them are not counted (nor are they in the denominator)."""
    shown = np.asarray(shown, dtype=bool)
    if shown.shape[-1] <= gap:
        return float("nan")
    before = np.zeros_like(shown[..., gap:])
    for k in range(1, gap + 1):
        before |= shown[..., gap - k : shown.shape[-1] - k]
    events = shown[..., gap:] & ~before
    return 1000.0 * float(events.sum()) / float(events.size)


@dataclass
class Persistence:
    clips: int  # clips whose last context frame shows the class
    steps: list[int]
    generated: list[float]  # share of those clips whose generated frame t shows it
    real: list[float]  # the same for the real frame t
    kept: list[float]  # of the clips whose real frame t shows it, the share whose generated one does
    tokenizer: list[float] = field(default_factory=list)  # the real frames' reconstructions, where measured

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def persistence(
    start: np.ndarray, generated: np.ndarray, real: np.ndarray, steps: tuple[int, ...] = PERSISTENCE_STEPS
) -> Persistence:
    """``start`` (B,) bool: the class in the last context frame; ``generated``, ``real`` (B, H) bool
    per generated step 1 … H. Steps beyond H are dropped."""
    chosen = np.flatnonzero(start)
    steps = tuple(t for t in steps if t <= generated.shape[1])
    g, r = generated[chosen], real[chosen]

    def share(values: np.ndarray) -> float:
        return float(values.mean()) if values.size else float("nan")

    return Persistence(
        len(chosen),
        list(steps),
        [share(g[:, t - 1]) for t in steps],
        [share(r[:, t - 1]) for t in steps],
        [share(g[r[:, t - 1], t - 1]) for t in steps],
    )


def iou(predicted: np.ndarray, target: np.ndarray, class_id: int) -> float:
    """Cells in both masks over cells in either, summed over all frames (NaN when neither has any)."""
    p, t = predicted == class_id, target == class_id
    union = float((p | t).sum())
    return float((p & t).sum()) / union if union else float("nan")


@dataclass
class Sight:
    """How well the object model sees one class, against the engine's labels."""

    frames: int
    cell_precision: float
    cell_recall: float
    frame_precision: float  # "present" predicted where the labels say present
    frame_recall: float
    label_rate: float  # share of frames the labels say present
    predicted_rate: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def sight(predicted: np.ndarray, target: np.ndarray, class_id: int, least: int) -> Sight:
    """Precision and recall of predicted cell maps against labelled ones, both (..., h, w)."""
    p, t = predicted == class_id, target == class_id
    hits = float((p & t).sum())
    fp, ft = present(predicted, class_id, least).ravel(), present(target, class_id, least).ravel()

    def ratio(a: float, b: float) -> float:
        return a / b if b else float("nan")

    return Sight(
        int(fp.size),
        ratio(hits, float(p.sum())),
        ratio(hits, float(t.sum())),
        ratio(float((fp & ft).sum()), float(fp.sum())),
        ratio(float((fp & ft).sum()), float(ft.sum())),
        float(ft.mean()) if ft.size else float("nan"),
        float(fp.mean()) if fp.size else float("nan"),
    )
