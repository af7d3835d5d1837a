"""What the engine knows about each frame: the ground truth that evaluation scores frames against.

ViZDoom gives, per frame, a labels buffer (the value of the object drawn at each pixel, 0 for
walls and 1 for floor and ceiling) with a list of the labelled objects (name, category,
bounding box), and game variables (position, angle, health, ammo, kills). This module turns
them into what wm-video stores beside the frames (:mod:`wm_video.data.truth`):

- a **class map** per frame at the footage's size: one of :data:`CLASSES` per pixel. The
  engine's label values are per-frame instance numbers, so they are mapped to classes through
  the object list. The player's weapon is an object of category ``Self``; its muzzle flash is
  drawn as part of it and is told apart by colour (pixels of the weapon with red ≥ 200 and
  green ≥ 100: 157 of them on a pistol flash frame at 160×120, 38 on its dimmer second frame,
  2 on any other frame of Defend the Center, Defend the Line and Deadly Corridor). The 160×120
  (4:3) map is squeezed to ``size``×``size`` like the frames, by coverage: an output pixel takes
  the object class covering most of it when that class covers at least :data:`MIN_COVERAGE` of
  it (so a 2-pixel bullet puff can survive the downscale), else background;
- the **state** vector :data:`STATE_NAMES` (map units, degrees, the engine's counts);
- the **object table**: one row per labelled object and frame, its box in output pixels.

Categories come from ViZDoom 1.3 (``vizdoom.get_default_categories()``): monsters are
``Monster``; projectiles and bullet puffs are ``Explosive`` (so are barrels, told apart by name);
corpses are named ``Dead…``; blood is ``Gibs`` or ``Gore``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

#: Object classes, in class-id order (id 0 is everything that is no object: walls, floor, sky).
CLASSES: tuple[str, ...] = (
    "background",
    "monster",
    "corpse",
    "projectile",
    "blood",
    "item",
    "weapon",
    "flash",
    "other",
)
CLASS_ID = {name: i for i, name in enumerate(CLASSES)}
#: The per-frame state vector, in order: map units (x, y), degrees (angle), then the engine's counts.
STATE_NAMES: tuple[str, ...] = ("x", "y", "angle", "health", "ammo", "kills")
#: An output pixel takes an object's class when the object covers at least this share of it.
MIN_COVERAGE = 0.3
#: Flash pixels: weapon pixels at least this red and this green (the pistol's flash is white/orange).
FLASH_MIN_RED, FLASH_MIN_GREEN = 200, 100
_ITEM_CATEGORIES = frozenset(
    {"Ammo", "Armor", "Artifact", "Health", "Key", "Power", "Powerup", "PuzzleItem", "QuestItem", "Weapon"}
)
_BLOOD_CATEGORIES = frozenset({"Gibs", "Gore"})
#: Object table columns, as stored (see :mod:`wm_video.data.truth`).
OBJECT_COLUMNS: tuple[str, ...] = ("object_id", "name", "category", "class_id", "x", "y", "width", "height")


def object_class(name: str, category: str) -> int:
    """The class id of a labelled object from its ViZDoom name and category."""
    if category == "Self":
        return CLASS_ID["weapon"]
    if name.startswith("Dead"):
        return CLASS_ID["corpse"]
    if category == "Monster":
        return CLASS_ID["monster"]
    if category in _BLOOD_CATEGORIES:
        return CLASS_ID["blood"]
    if category in _ITEM_CATEGORIES:
        return CLASS_ID["item"]
    if category == "Explosive" and "Barrel" not in name:
        return CLASS_ID["projectile"]
    return CLASS_ID["other"]


def full_class_map(labels_buffer: np.ndarray, labels: list[Any], screen: np.ndarray) -> np.ndarray:
    """Class ids (H, W) uint8 at the engine's resolution from its labels buffer (H, W), the labels
    of that frame (objects with ``value``, ``object_name``, ``object_category``) and the RGB screen."""
    lookup = np.zeros(256, dtype=np.uint8)  # label value → class id; unlisted values are background
    for label in labels:
        lookup[int(label.value)] = object_class(str(label.object_name), str(label.object_category))
    classes = lookup[labels_buffer]
    weapon = classes == CLASS_ID["weapon"]
    if weapon.any():
        flash = weapon & (screen[..., 0] >= FLASH_MIN_RED) & (screen[..., 1] >= FLASH_MIN_GREEN)
        classes[flash] = CLASS_ID["flash"]
    return classes


def squeeze_class_map(classes: np.ndarray, size: int) -> np.ndarray:
    """A class map (H, W) resized to (size, size) by coverage (see the module doc)."""
    best = np.zeros((size, size), dtype=np.float32)
    out = np.zeros((size, size), dtype=np.uint8)
    for class_id in np.unique(classes).tolist():
        if class_id == 0:
            continue
        cover = cv2.resize(
            (classes == class_id).astype(np.float32), (size, size), interpolation=cv2.INTER_AREA
        )
        wins = (cover >= MIN_COVERAGE) & (cover > best)
        out[wins], best[wins] = class_id, cover[wins]
    return out


@dataclass(frozen=True)
class FrameTruth:
    """The engine's knowledge of one frame."""

    state: np.ndarray  # (len(STATE_NAMES),) float32
    classes: np.ndarray  # (size, size) uint8 class ids
    objects: list[tuple[Any, ...]]  # one tuple of OBJECT_COLUMNS per labelled object


def frame_truth(
    labels_buffer: np.ndarray, labels: list[Any], screen: np.ndarray, state: np.ndarray, size: int
) -> FrameTruth:
    """Ground truth of one ViZDoom frame, at the footage's ``size``."""
    height, width = labels_buffer.shape
    sx, sy = size / width, size / height
    objects = [
        (
            int(label.object_id),
            str(label.object_name),
            str(label.object_category),
            object_class(str(label.object_name), str(label.object_category)),
            float(label.x) * sx,
            float(label.y) * sy,
            float(label.width) * sx,
            float(label.height) * sy,
        )
        for label in labels
    ]
    classes = squeeze_class_map(full_class_map(labels_buffer, labels, screen), size)
    return FrameTruth(np.asarray(state, dtype=np.float32), classes, objects)
