"""Tile artefacts, synthesised: the hard negatives that teach the object model (:mod:`.objects`) what
is not a monster.

A world model whose tokenizer codes 8×8-pixel patches can draw, where monsters would be, red and
purple blocks on that grid: single tiles or mosaics of them, each tile flat or smoothly shaded. An
object model trained only on real frames calls them monsters (a tile world scored "monster in view"
in 86 % of its soak frames while showing no monster). So a share of every training batch gets such
tiles pasted over its background, labelled background; the same paste on held-out frames without a
monster gives the report's false-positive figure (:func:`tile_false_positives`).

Design choices:
- Grid-aligned blocks of the tokenizer's patch side (``tiles``: every patch size of the evaluated
  tokenizers), pasted only where a whole block is background in the engine's class map, so an
  object pixel is never covered and the labels stay true as they are.
- Groups: a single tile or a mosaic of up to 4×4 tiles with holes, around a free block, 1–3 a frame.
- Fill: flat, or shaded bilinearly between four corner colours, plus a little noise; colours drawn
  from the monster and blood pixels of the training frames (their brightness jittered), a quarter
  of them any colour at all, so that the model learns the shape, not just the colour.
"""

from __future__ import annotations

import numpy as np

from wm_video.sources.truth import CLASS_ID

COLOUR_CLASSES = ("monster", "blood")  # whose pixels the tiles are coloured from
POOL = 4096  # colours kept in a pool
MOSAIC = 4  # tiles per side of the largest mosaic
GROUPS = 3  # most tile groups per frame
RANDOM_COLOUR = 0.25  # share of tile colours drawn uniformly instead of from the pool


def colour_pool(frames: np.ndarray, classes: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(≤ POOL, 3) uint8 colours of the :data:`COLOUR_CLASSES` pixels of frames (N, H, W, 3) with
    class maps (N, H, W); empty when they show none."""
    mask = np.isin(classes, [CLASS_ID[name] for name in COLOUR_CLASSES])
    colours = frames[mask]  # (P, 3)
    if len(colours) > POOL:
        colours = colours[rng.choice(len(colours), POOL, replace=False)]
    return colours.astype(np.uint8)


def _colour(pool: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    if len(pool) == 0 or rng.random() < RANDOM_COLOUR:
        return rng.uniform(0, 255, 3)
    return pool[rng.integers(len(pool))] * rng.uniform(0.6, 1.3)


def _fill(tile: int, pool: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(tile, tile, 3) float: flat, or bilinear between four corner colours; plus noise."""
    if rng.random() < 0.4:
        block = np.broadcast_to(_colour(pool, rng), (tile, tile, 3)).copy()
    else:
        corners = np.stack([_colour(pool, rng) for _ in range(4)]).reshape(2, 2, 3)
        ramp = np.linspace(0.0, 1.0, tile)
        top = corners[0, 0] * (1 - ramp[:, None]) + corners[0, 1] * ramp[:, None]  # (tile, 3) along x
        bottom = corners[1, 0] * (1 - ramp[:, None]) + corners[1, 1] * ramp[:, None]
        block = top[None] * (1 - ramp[:, None, None]) + bottom[None] * ramp[:, None, None]  # (y, x, 3)
    return block + rng.normal(0.0, rng.uniform(0, 12), block.shape)


def paste_tiles(
    frames: np.ndarray,
    classes: np.ndarray,
    pool: np.ndarray,
    tiles: tuple[int, ...],
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """Frames (B, H, W, 3) uint8 with tile groups pasted over whole background blocks of their class
    maps (B, H, W); returns (the new frames, (B, H, W) bool: the pixels pasted). The class maps stay
    true as they are: every pasted pixel was background."""
    out, pasted = frames.copy(), np.zeros(classes.shape, bool)
    h, w = classes.shape[1:]
    for b in range(len(frames)):
        tile = int(tiles[rng.integers(len(tiles))])
        rows, cols = h // tile, w // tile
        # (rows, cols): blocks that are background throughout
        free = (classes[b, : rows * tile, : cols * tile].reshape(rows, tile, cols, tile) == 0).all(
            axis=(1, 3)
        )
        anchors = np.argwhere(free)  # (F, 2) blocks a group can start from
        for _ in range(int(rng.integers(1, GROUPS + 1)) if len(anchors) else 0):
            size = (1, 1) if rng.random() < 0.4 else tuple(rng.integers(1, MOSAIC + 1, 2))
            ay, ax = anchors[rng.integers(len(anchors))]
            top, left = ay - int(rng.integers(size[0])), ax - int(rng.integers(size[1]))  # the anchor inside
            for y in range(max(0, top), min(rows, top + size[0])):
                for x in range(max(0, left), min(cols, left + size[1])):
                    if free[y, x] and (
                        (y, x) == (ay, ax) or rng.random() < 0.85
                    ):  # holes, never at the anchor
                        area = (b, slice(y * tile, (y + 1) * tile), slice(x * tile, (x + 1) * tile))
                        out[area] = np.clip(_fill(tile, pool, rng), 0, 255).astype(np.uint8)
                        pasted[area] = True
    return out, pasted
