"""Tile artefacts as hard negatives: the paste keeps the labels true and is deterministic, and an
object model trained with it calls pasted tiles background while one trained without calls them
monsters (a world drawing red 8-pixel tiles must not score as a world full of monsters)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from test_eval_player import caches

from wm_video.eval import presence
from wm_video.eval.objects import ObjectConfig, TrainedObjects, cell_targets, predict, train_objects
from wm_video.eval.tiles import colour_pool, paste_tiles
from wm_video.sources.truth import CLASS_ID, CLASSES

SIZE, TILE = 32, 8
MONSTER = CLASS_ID["monster"]


def blobs(count: int, seed: int, share: float = 0.7) -> tuple[np.ndarray, np.ndarray]:
    """Grey floor with noise; in ``share`` of the frames a red disc 'monster' (radius 3–5 px, centred
    anywhere, so not on the 8-px grid), shaded; its labels."""
    rng = np.random.default_rng(seed)
    frames = np.clip(rng.normal(110, 12, (count, SIZE, SIZE, 3)), 0, 255).astype(np.uint8)
    classes = np.zeros((count, SIZE, SIZE), np.uint8)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    for i in range(count):
        if rng.random() < share:
            radius = rng.uniform(3, 5)
            cy, cx = rng.uniform(radius, SIZE - radius, 2)
            disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2
            shade = 1.0 - 0.4 * (yy - cy + radius) / (2 * radius)  # lit from above
            frames[i][disc] = (np.array([210.0, 40.0, 40.0]) * shade[disc, None]).astype(np.uint8)
            classes[i][disc] = MONSTER
    return frames, classes


def test_tiles_cover_only_whole_background_blocks_on_the_grid_and_repeat_per_seed() -> None:
    frames, classes = blobs(64, 0, share=0.9)
    pool = colour_pool(frames, classes, np.random.default_rng(0))
    assert len(pool) and (pool[:, 0] > pool[:, 1]).all()  # the monsters' reds
    tiled, pasted = paste_tiles(frames, classes, pool, (TILE,), np.random.default_rng(1))
    assert pasted.any(axis=(1, 2)).all()  # every frame got tiles
    assert not (pasted & (classes > 0)).any()  # no object pixel covered …
    assert np.array_equal(tiled[classes > 0], frames[classes > 0])  # … nor changed
    assert np.array_equal(tiled[~pasted], frames[~pasted])
    blocks = pasted.reshape(64, SIZE // TILE, TILE, SIZE // TILE, TILE)
    assert (blocks.all(axis=(2, 4)) == blocks.any(axis=(2, 4))).all()  # whole grid blocks only
    again, pasted_again = paste_tiles(frames, classes, pool, (TILE,), np.random.default_rng(1))
    assert np.array_equal(again, tiled) and np.array_equal(pasted_again, pasted)
    other, _ = paste_tiles(frames, classes, pool, (TILE,), np.random.default_rng(2))
    assert not np.array_equal(other, tiled)
    full = np.full_like(classes, MONSTER)  # nothing is background: nothing is pasted
    assert not paste_tiles(frames, full, pool, (TILE,), np.random.default_rng(1))[1].any()


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, TrainedObjects]:
    torch.set_num_threads(1)
    tmp: Path = tmp_path_factory.mktemp("tiles")
    frames, classes = blobs(256, 3)
    cache, truth = caches(tmp, frames, classes)
    trained = {}
    for name, share, steps in (("with tiles", 0.5, 400), ("without", 0.0, 150)):
        config = ObjectConfig(width=8, steps=steps, batch_size=16, lr=5e-3, tile_share=share, tiles=(TILE,))
        model, _ = train_objects(cache, truth, np.arange(256), config=config)
        trained[name] = TrainedObjects(model, CLASSES, [MONSTER], None, False, 256)
    return trained


def test_an_object_model_trained_with_tiles_calls_them_background_and_still_finds_monsters(models) -> None:
    empty, empty_classes = blobs(64, 4, share=0.0)
    monsters, monster_classes = blobs(64, 5, share=1.0)
    pool = colour_pool(monsters, monster_classes, np.random.default_rng(0))
    tiled, pasted = paste_tiles(empty, empty_classes, pool, (TILE,), np.random.default_rng(6))
    assert pasted.mean() > 0.1

    def in_view(objects: TrainedObjects, frames: np.ndarray) -> float:
        return float(presence.present(predict(objects, frames).cells, MONSTER, 2).mean())

    assert in_view(models["without"], tiled) > 0.5  # the instrument this guards against
    assert in_view(models["with tiles"], tiled) < 0.3
    seen = predict(models["with tiles"], monsters).cells
    sight = presence.sight(seen, cell_targets(monster_classes, len(CLASSES)), MONSTER, 2)
    assert sight.frame_recall > 0.9 and sight.cell_precision > 0.7
