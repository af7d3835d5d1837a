"""A contact sheet: one picture of what a dataset holds, to look at rather than read about.

Rows are episodes (spread evenly over the dataset), columns are frames spread evenly over each
episode, each captioned with the buttons held. Frames are decoded on demand (a few per episode).
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from wm_video.data.reader import EpisodeDataset
from wm_video.errors import InputError


def _caption(tile: np.ndarray, text: str, y: int) -> None:
    for colour, thickness in (((0, 0, 0), 2), ((255, 255, 255), 1)):  # outlined, readable anywhere
        cv2.putText(tile, text, (2, y), cv2.FONT_HERSHEY_PLAIN, 0.75, colour, thickness, cv2.LINE_AA)


def contact_sheet(
    ds: EpisodeDataset, path: Path, *, episodes: int = 6, frames_per_episode: int = 8, tile: int = 128
) -> Path:
    """Write a PNG grid of frames (rows: episodes, columns: time) with held buttons; returns its path."""
    if not ds.episodes:
        raise InputError(f"{ds.root}: the dataset holds no episodes to draw")
    if Path(path).suffix.lower() != ".png":
        raise InputError(f"{path}: the contact sheet is a PNG; give a path ending in .png")
    rows = []
    picked = np.unique(
        np.linspace(0, len(ds.episodes) - 1, min(episodes, len(ds.episodes))).round().astype(int)
    )
    for position in picked:
        ep = ds.episodes[position]
        wanted = set(
            np.linspace(0, ep.length - 1, min(frames_per_episode, ep.length)).round().astype(int).tolist()
        )
        actions = ds.actions(ep)
        tiles = []
        for t, frame in enumerate(ds.iter_frames(ep)):
            if t not in wanted:
                continue
            big = cv2.resize(frame, (tile, tile), interpolation=cv2.INTER_NEAREST)  # (tile, tile, 3) RGB
            _caption(big, f"ep{ep.index} t{t}", 12)
            held = ds.action_space.pressed(actions[t]) if ds.action_space.buttons else []
            for line, name in enumerate(reversed(held[:4])):
                _caption(big, name, tile - 4 - 12 * line)
            tiles.append(big)
        tiles += [np.zeros_like(tiles[0])] * (frames_per_episode - len(tiles))
        rows.append(np.concatenate(tiles, axis=1))
    sheet = np.concatenate(rows, axis=0)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR)):
        raise InputError(f"{path}: could not write the contact sheet")
    return Path(path)
