"""Places revisited: moments of recorded play where the player comes back to where they stood.

Loop closure (:mod:`.loops`) scripts returns; recorded play has its own. From the poses the
engine recorded (x, y, angle; :mod:`wm_video.data.truth`), a **revisit** is a pair of frames
(t0, t1) of one episode with

- t1 − t0 between ``min_gap`` and ``max_gap`` frames,
- the pose at t1 within ``position`` map units and ``angle`` degrees of the pose at t0,
- and in between the player went away: the view turned at least ``away_angle`` degrees from
  the angle at t0, or the player moved at least ``away_distance`` units from where they stood.

For each t0 the first such t1 is taken, and the next search starts after t1, so revisits of one
episode do not overlap. The model is driven from the real context ending at t0 with the real
actions between t0 and t1, and its frame at t1 is compared with the real one (PSNR, and the
IoU of the objects seen). The game sets a floor of its own — monsters move, doors open — so
the real frame at t0 is compared with the real frame at t1 in the same way, beside it.
HY-WorldPlay reports long-term revisit PSNR of 18.94 dB on its own data (Matrix-Game 2.0: 9.57).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class RevisitConfig:
    min_gap: int = 16  # frames between the two visits, at least
    max_gap: int = 96  # at most (the rollout length)
    position: float = 24.0  # map units (the player is 32 wide)
    angle: float = 10.0  # degrees
    away_angle: float = 90.0
    away_distance: float = 128.0
    count: int = 12  # revisits evaluated at most (spread over the episodes, chosen by seed)


def angle_difference(a: np.ndarray, b: np.ndarray | float) -> np.ndarray:
    """Signed smallest difference a − b in degrees, in [-180, 180)."""
    return (np.asarray(a) - b + 180.0) % 360.0 - 180.0


def find_revisits(pose: np.ndarray, config: RevisitConfig, first: int = 0) -> list[tuple[int, int]]:
    """Revisits (t0, t1) in one episode's poses (T, 3+) of x, y, angle; t0 ≥ ``first``."""
    xy, angle = pose[:, :2].astype(np.float64), pose[:, 2].astype(np.float64)
    found, t0 = [], first
    while t0 + config.min_gap < len(pose):
        last = min(len(pose), t0 + config.max_gap + 1)
        distance = np.linalg.norm(xy[t0:last] - xy[t0], axis=1)
        turn = np.abs(angle_difference(angle[t0:last], angle[t0]))
        away = np.maximum.accumulate((turn >= config.away_angle) | (distance >= config.away_distance))
        back = (distance <= config.position) & (turn <= config.angle) & away
        back[: config.min_gap] = False
        hits = np.flatnonzero(back)
        if hits.size:
            found.append((t0, t0 + int(hits[0])))
            t0 += int(hits[0]) + 1
        else:
            t0 += 1
    return found


@dataclass
class RevisitScores:
    revisits: int
    gaps: list[int]  # t1 − t0 of each
    model_psnr: float  # dB, generated frame at t1 vs the real one (mean)
    floor_psnr: float  # dB, real frame at t0 vs real frame at t1: what the game itself changes
    model_iou: float  # object IoU, generated vs real at t1 (object model vs labels), pooled
    floor_iou: float  # labels at t0 vs labels at t1
    per_revisit_model_psnr: list[float]
    per_revisit_floor_psnr: list[float]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
