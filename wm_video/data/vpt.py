"""Importing OpenAI VPT recordings (Minecraft contractor data) as a v3.0 dataset.

The recordings are 20 fps 640×360 mp4 files, each with a JSONL file whose line i holds ``keyboard.keys`` ("key.keyboard.w", ...), ``mouse.buttons`` (0 attack, 1 use, 2 pick
item), ``mouse.dx``/``mouse.dy`` and optionally ``hotbar`` (selected slot 0..8). Keys outside
:data:`VPT_BUTTONS` (chat, escape, ...) are dropped and counted in
``ImportResult.ignored_keys``. ``camera_dx``/``camera_dy`` are the raw mouse movement in the
recorder's pixels (not degrees: MineRL turns 1 px into 360/2400 = 0.15°), including while a
GUI is open, when the mouse moves a cursor instead of the camera. A change of ``hotbar`` (the
mouse wheel, which has no key) presses ``hotbar.N`` for that frame.

The shared machinery (pairs, checks, all-or-nothing streaming) is in :mod:`wm_video.data.importers`.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np

from wm_video.actions import ActionSpace
from wm_video.data.importers import (
    ImportOptions,
    ImportResult,
    ParsedActions,
    find_pairs,
    import_pairs,
    json_number,
    read_jsonl,
)
from wm_video.data.video import VideoSettings
from wm_video.errors import InputError

#: VPT keyboard key → our button name.
VPT_KEYS: dict[str, str] = {
    f"key.keyboard.{key}": button
    for key, button in {
        **{"w": "forward", "s": "back", "a": "left", "d": "right", "space": "jump", "left.shift": "sneak"},
        **{"left.control": "sprint", "e": "inventory", "q": "drop", "f": "swap_hands"},
        **{str(n): f"hotbar.{n}" for n in range(1, 10)},
    }.items()
}
VPT_MOUSE_BUTTONS: dict[int, str] = {0: "attack", 1: "use", 2: "pick_item"}
VPT_BUTTONS: tuple[str, ...] = (
    ("forward", "back", "left", "right", "jump", "sneak", "sprint", "attack", "use", "pick_item")
    + ("inventory", "drop", "swap_hands")
    + tuple(f"hotbar.{n}" for n in range(1, 10))
)
VPT_KEYMAP: dict[str, str] = {
    **{"w": "forward", "s": "back", "a": "left", "d": "right", "space": "jump"},
    **{"left shift": "sneak", "left ctrl": "sprint", "e": "inventory", "q": "drop", "f": "swap_hands"},
    **{str(n): f"hotbar.{n}" for n in range(1, 10)},
}
VPT_ACTION_SPACE = ActionSpace(VPT_BUTTONS, ("camera_dx", "camera_dy"), VPT_KEYMAP)
VPT_TASK = "minecraft (OpenAI VPT recording)"


def _parse_vpt(path: Path) -> ParsedActions:
    index = {name: i for i, name in enumerate(VPT_ACTION_SPACE.names)}
    rows: list[np.ndarray] = []
    ignored: Counter[str] = Counter()
    last_hotbar: int | None = None
    for where, record in read_jsonl(path):
        keyboard = record.get("keyboard") if isinstance(record, dict) else None
        mouse = record.get("mouse") if isinstance(record, dict) else None
        if not isinstance(keyboard, dict) or not isinstance(mouse, dict):
            raise InputError(f"{where}: expected a VPT record, an object with 'keyboard' and 'mouse' objects")
        keys, clicks = keyboard.get("keys"), mouse.get("buttons")
        if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
            raise InputError(f"{where}: keyboard.keys must be a list of strings; got {keys!r:.60}")
        if not isinstance(clicks, list) or not all(isinstance(b, int) for b in clicks):
            raise InputError(f"{where}: mouse.buttons must be a list of integers; got {clicks!r:.60}")
        row = VPT_ACTION_SPACE.zeros()
        for key in keys:
            if key in VPT_KEYS:
                row[index[VPT_KEYS[key]]] = 1.0
            else:
                ignored[key] += 1
        for click in clicks:
            if click in VPT_MOUSE_BUTTONS:
                row[index[VPT_MOUSE_BUTTONS[click]]] = 1.0
            else:
                ignored[f"mouse.button.{click}"] += 1
        hotbar = record.get("hotbar")
        if isinstance(hotbar, int) and not isinstance(hotbar, bool) and 0 <= hotbar <= 8:
            if last_hotbar is not None and hotbar != last_hotbar:  # wheel scrolls have no key
                row[index[f"hotbar.{hotbar + 1}"]] = 1.0
            last_hotbar = hotbar
        row[index["camera_dx"]] = json_number(mouse, "dx", where, required=True)
        row[index["camera_dy"]] = json_number(mouse, "dy", where, required=True)
        rows.append(row)
    actions = np.stack(rows) if rows else np.zeros((0, VPT_ACTION_SPACE.size), np.float32)
    return ParsedActions(actions, ignored)


def import_vpt(
    src: Path,
    out: Path,
    *,
    size: int | None = 128,
    video: VideoSettings | None = None,
    progress: bool = True,
    length_tolerance: int = 0,
) -> ImportResult:
    """Import OpenAI VPT recordings (``name.mp4`` + ``name.jsonl``) into ``out``, frames size×size."""
    options = ImportOptions(size, None, video or VideoSettings(), progress, length_tolerance)
    return import_pairs(
        Path(src), out, find_pairs(Path(src)), _parse_vpt, VPT_ACTION_SPACE, options, VPT_TASK
    )
