"""'What a player sees': the object model learns a labelled object; persistence, appearances, the
flash figure, the Fréchet distance and the revisit search behave as their definitions say."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from wm_video.data.cache import TrainingCache
from wm_video.data.truth import TruthCache
from wm_video.eval import frechet, presence
from wm_video.eval.objects import ObjectConfig, _blur, cell_targets, load_or_train_objects, predict
from wm_video.eval.revisits import RevisitConfig, find_revisits
from wm_video.eval.shooting import flash_scores
from wm_video.sources.truth import CLASS_ID, CLASSES, STATE_NAMES

SIZE = 32
MONSTER = CLASS_ID["monster"]


def synthetic(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Grey floor with noise; a red 6×8 'monster' at a random place in 70 % of the frames; its labels."""
    rng = np.random.default_rng(seed)
    frames = np.clip(rng.normal(110, 12, (count, SIZE, SIZE, 3)), 0, 255).astype(np.uint8)
    classes = np.zeros((count, SIZE, SIZE), np.uint8)
    for i in range(count):
        if rng.random() < 0.7:
            y, x = rng.integers(0, SIZE - 8), rng.integers(0, SIZE - 6)
            frames[i, y : y + 8, x : x + 6] = (200, 30, 30)
            classes[i, y : y + 8, x : x + 6] = MONSTER
    return frames, classes


def caches(tmp: Path, frames: np.ndarray, classes: np.ndarray) -> tuple[TrainingCache, TruthCache]:
    n = len(frames)
    cache = TrainingCache(
        tmp / "frames", frames, np.zeros((n, 1), np.float32), np.array([0, n]), np.array([0]), 17.5, ("forward",),
        SIZE, "synthetic",
    )  # fmt: skip
    truth = TruthCache(
        tmp / "truth", classes, np.zeros((n, len(STATE_NAMES)), np.float32), np.zeros(n, np.float32),
        np.zeros(n, bool), CLASSES, STATE_NAMES, "synthetic",
    )  # fmt: skip
    return cache, truth


@pytest.fixture(scope="module")
def learnt(tmp_path_factory: pytest.TempPathFactory):
    torch.set_num_threads(1)
    tmp = tmp_path_factory.mktemp("objects")
    frames, classes = synthetic(256, 0)
    cache, truth = caches(tmp, frames, classes)
    config = ObjectConfig(width=8, steps=150, batch_size=16, lr=5e-3)
    objects = load_or_train_objects(cache, truth, np.arange(256), [0], cache_dir=tmp, config=config)
    return objects, cache, truth, config, tmp


def test_the_object_model_learns_a_synthetic_labelled_object(learnt) -> None:
    objects, cache, truth, config, tmp = learnt
    assert not objects.reused and objects.trained_classes == [MONSTER]
    frames, classes = synthetic(64, 1)  # frames it never saw
    seen = predict(objects, frames)
    target = cell_targets(classes, len(CLASSES))
    assert seen.cells.shape == (64, SIZE // 2, SIZE // 2) and seen.features.shape == (64, 32)
    assert presence.iou(seen.cells, target, MONSTER) > 0.6
    sight = presence.sight(seen.cells, target, MONSTER, 2)
    assert sight.frame_precision > 0.9 and sight.frame_recall > 0.9
    again = load_or_train_objects(cache, truth, np.arange(256), [0], cache_dir=tmp, config=config)
    assert again.reused and np.array_equal(predict(again, frames).cells, seen.cells)


def test_persistence_is_one_for_real_clips_and_zero_for_a_model_that_blanks_objects(learnt) -> None:
    objects = learnt[0]
    rng = np.random.default_rng(2)
    clips, horizon = 6, 8
    frames = np.clip(rng.normal(110, 12, (clips, horizon + 1, SIZE, SIZE, 3)), 0, 255).astype(np.uint8)
    for b in range(clips):  # a monster walks across, in view in every frame
        for t in range(horizon + 1):
            frames[b, t, 10:18, 2 + 2 * t : 8 + 2 * t] = (200, 30, 30)
    real = presence.present(predict(objects, frames[:, 1:]).cells, MONSTER, 2)
    start = presence.present(predict(objects, frames[:, 0]).cells, MONSTER, 2)
    assert start.all() and real.all()
    as_generated = presence.persistence(start, real, real, steps=(1, 4, 8))
    assert as_generated.generated == as_generated.real == as_generated.kept == [1.0, 1.0, 1.0]
    blank = np.clip(rng.normal(110, 12, frames[:, 1:].shape), 0, 255).astype(np.uint8)
    blanked = presence.present(predict(objects, blank).cells, MONSTER, 2)
    gone = presence.persistence(start, blanked, real, steps=(1, 4, 8))
    assert gone.generated == gone.kept == [0.0, 0.0, 0.0] and gone.real == [1.0, 1.0, 1.0]


def test_appearances_count_a_class_coming_into_view() -> None:
    shown = np.zeros(1000, bool)
    shown[100:120] = shown[500:510] = True
    shown[511] = True  # back after 1 frame away: a flicker, not an appearance (gap 2)
    assert presence.appearances_per_1000(shown) == pytest.approx(2 * 1000 / 998)
    assert presence.appearances_per_1000(np.ones(50, bool)) == 0.0


def test_the_flash_figure_tells_refire_from_none() -> None:
    refire = np.zeros((2, 52), bool)
    for start in range(3, 52, 7):  # the pistol: 2 flash frames every 7
        refire[:, start : start + 2] = True
    once = np.zeros((2, 52), bool)
    once[:, 3:5] = True
    held, single = flash_scores(refire), flash_scores(once)
    assert held.refire_period == 7 and held.onsets_per_clip == 7 and held.flash_rate == pytest.approx(14 / 52)
    assert single.onsets_per_clip == 1 and np.isnan(single.refire_period)
    assert flash_scores(np.zeros((2, 52), bool)).flash_rate == 0


def test_frechet_distance_is_zero_for_a_set_and_itself_and_grows_with_blur(learnt) -> None:
    objects = learnt[0]
    frames, _ = synthetic(4 * 24, 3)
    clips = frames.reshape(4, 24, SIZE, SIZE, 3)

    def descriptors(sigma: float) -> np.ndarray:
        x = torch.from_numpy(clips.reshape(-1, SIZE, SIZE, 3)).permute(0, 3, 1, 2).float()
        blurred = (
            _blur(x, torch.full((len(x),), sigma)).round().clamp(0, 255).byte().permute(0, 2, 3, 1).numpy()
        )
        features = predict(objects, blurred.reshape(clips.shape)).features
        return frechet.window_descriptors(features)

    sharp = descriptors(0.0)
    assert frechet.frechet_distance(sharp, sharp) == pytest.approx(0.0, abs=1e-6)
    slight, strong = (
        frechet.frechet_distance(sharp, descriptors(0.8)),
        frechet.frechet_distance(sharp, descriptors(2.0)),
    )
    assert 0 < slight < strong


def test_revisit_search_finds_a_planted_return() -> None:
    length = 120
    pose = np.zeros((length, 3))
    pose[:, 0] = 100.0
    pose[20:60, 2] = np.linspace(0, 180, 40)  # turn round…
    pose[60:90, 2] = np.linspace(180, 360, 30)  # …and on, back to where the view started
    pose[90:, 2] = 0.0
    found = find_revisits(pose, RevisitConfig(min_gap=16, max_gap=96))
    assert found and found[0][0] == 0 and 85 <= found[0][1] <= 90
    still = np.zeros((length, 3))  # never looked away: the same view is no revisit
    assert find_revisits(still, RevisitConfig()) == []


def test_a_soak_that_empties_the_world_is_flagged() -> None:
    from wm_video.eval.player_scores import SoakView

    view = SoakView(
        3000,
        [0, 1000, 2000],
        {"monster": [0.7, 0.3, 0.1]},
        {"monster": [9.0, 4.0, 1.0]},
        [5.0] * 3,
        [0.1] * 3,
    )
    assert view.emptied("monster", 0.8) == 2000  # 0.1 < 25 % of 0.8; 0.3 is not
    assert view.emptied("monster", 0.2) is None and view.emptied("flash", 0.5) is None
