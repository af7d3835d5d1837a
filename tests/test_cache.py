"""The training cache (exact frames, staleness, crash safety) and the clip sampler (boundaries,
determinism, ranks, exact resume)."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import cv2
import numpy as np
import pytest

from wm_video.actions import ActionSpace
from wm_video.data import cache as cache_module
from wm_video.data.cache import build_cache, default_cache_dir, load_cache
from wm_video.data.reader import EpisodeDataset
from wm_video.data.sampler import ClipSampler
from wm_video.data.video import VideoSettings
from wm_video.data.writer import DatasetWriter
from wm_video.errors import DatasetError, InputError

SPACE = ActionSpace(("forward", "turn_left"), ("mouse_dx",))
LENGTHS = [12, 5, 20, 9]  # episode 1 is shorter than CLIP_LEN
CLIP_LEN = 8
SIZE = 16


def episode_frames(episode: int, length: int, size: int = SIZE) -> np.ndarray:
    """Red channel: a per-episode constant; green: the frame index; blue: noise (exactness check)."""
    rng = np.random.default_rng(episode)
    frames = rng.integers(0, 256, (length, size, size, 3), dtype=np.uint8)
    frames[..., 0] = 30 * (episode + 1)
    frames[..., 1] = np.arange(length, dtype=np.uint8)[:, None, None]
    return frames


def episode_actions(episode: int, length: int) -> np.ndarray:
    buttons = np.random.default_rng(100 + episode).integers(0, 2, (length, 2))
    delta = 1000.0 * episode + np.arange(length)  # which episode and frame an action row came from
    return np.concatenate([buttons, delta[:, None]], 1).astype(np.float32)


def write_episodes(root: Path, lengths: list[int], first: int = 0) -> None:
    writer = DatasetWriter(
        root, fps=17.5, action_space=SPACE, frame_shape=(SIZE, SIZE, 3), video=VideoSettings(codec="lossless")
    )
    with writer:
        for episode, length in enumerate(lengths, first):
            writer.write_episode(episode_frames(episode, length), episode_actions(episode, length))


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    root = tmp_path / "ds"
    write_episodes(root, LENGTHS)
    return root


@pytest.fixture
def decode_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the builds that decode video."""
    calls: list[int] = []
    original = cache_module._decode_into

    def counting(*args: object, **kwargs: object) -> None:
        calls.append(1)
        original(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(cache_module, "_decode_into", counting)
    return calls


def test_cache_holds_exactly_the_decoded_frames_and_actions(dataset: Path) -> None:
    cache = build_cache(dataset, size=SIZE, progress=False)
    assert cache.path == default_cache_dir(dataset, SIZE) == dataset / ".cache" / "frames-16"
    assert cache.frames.shape == (sum(LENGTHS), SIZE, SIZE, 3) and cache.frames.dtype == np.uint8
    assert isinstance(cache.frames, np.memmap) and not cache.frames.flags.writeable
    assert cache.num_episodes == 4 and cache.num_frames == sum(LENGTHS)
    assert cache.episode_starts.tolist() == [0, 12, 17, 37, 46]
    assert cache.episode_indices.tolist() == [0, 1, 2, 3]
    assert cache.action_names == SPACE.names and cache.fps == 17.5 and cache.size == SIZE
    for e, length in enumerate(LENGTHS):
        frames, actions = cache.episode(e)
        np.testing.assert_array_equal(frames, episode_frames(e, length))
        np.testing.assert_array_equal(actions, episode_actions(e, length))
    manifest = json.loads((cache.path / "manifest.json").read_text())
    assert manifest["num_frames"] == sum(LENGTHS) and manifest["size"] == SIZE
    assert manifest["action_names"] == list(SPACE.names) and manifest["fps"] == 17.5


def test_resized_cache_uses_inter_area(dataset: Path) -> None:
    cache = build_cache(dataset, size=8, progress=False)
    assert cache.path.name == "frames-8"
    assert cache.frames.shape == (sum(LENGTHS), 8, 8, 3)
    expected = [cv2.resize(f, (8, 8), interpolation=cv2.INTER_AREA) for f in episode_frames(2, 20)]
    np.testing.assert_array_equal(cache.episode(2)[0], np.stack(expected))


def test_cache_is_reused_until_the_dataset_changes(dataset: Path, decode_calls: list[int]) -> None:
    first = load_cache(dataset, size=SIZE, progress=False)
    stamp = (first.path / "manifest.json").stat().st_mtime_ns
    again = load_cache(dataset, size=SIZE, progress=False)
    assert len(decode_calls) == 1
    assert (again.path / "manifest.json").stat().st_mtime_ns == stamp
    assert build_cache(dataset, size=SIZE, progress=False).num_frames == sum(LENGTHS)
    assert len(decode_calls) == 1  # build_cache also reuses a fresh cache

    write_episodes(dataset, [6], first=len(LENGTHS))  # append one episode
    grown = load_cache(dataset, size=SIZE, progress=False)
    assert len(decode_calls) == 2
    assert grown.num_episodes == 5 and grown.num_frames == sum(LENGTHS) + 6
    np.testing.assert_array_equal(grown.episode(4)[0], episode_frames(4, 6))
    build_cache(dataset, size=SIZE, progress=False, force=True)
    assert len(decode_calls) == 3
    assert sorted(p.name for p in grown.path.parent.iterdir()) == [".frames-16.lock", "frames-16"]


def test_an_interrupted_build_leaves_no_cache_that_loads(
    dataset: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = EpisodeDataset.iter_frames

    def crash_on_episode_two(self: EpisodeDataset, ep: object) -> object:
        if ep.index == 2:  # type: ignore[attr-defined]
            raise RuntimeError("simulated crash mid-build")
        return original(self, ep)  # type: ignore[arg-type]

    monkeypatch.setattr(EpisodeDataset, "iter_frames", crash_on_episode_two)
    with pytest.raises(RuntimeError, match="simulated crash"):
        build_cache(dataset, size=SIZE, progress=False)
    target = default_cache_dir(dataset, SIZE)
    assert not target.exists()
    assert [p.name for p in target.parent.iterdir()] == [".frames-16.lock"]  # no half-built folder

    monkeypatch.setattr(EpisodeDataset, "iter_frames", original)
    cache = load_cache(dataset, size=SIZE, progress=False)
    np.testing.assert_array_equal(cache.episode(3)[0], episode_frames(3, 9))

    monkeypatch.setattr(EpisodeDataset, "iter_frames", crash_on_episode_two)
    with pytest.raises(RuntimeError):  # a crashed forced rebuild keeps the previous cache
        build_cache(dataset, size=SIZE, progress=False, force=True)
    monkeypatch.setattr(EpisodeDataset, "iter_frames", original)
    assert cache_module._open_cache(target, cache.fingerprint) is not None


def test_concurrent_loads_decode_once(dataset: Path, decode_calls: list[int]) -> None:
    """Ranks starting together: one builds under the lock, the others wait and open its cache."""
    results: list[int] = []
    threads = [
        threading.Thread(
            target=lambda: results.append(load_cache(dataset, size=SIZE, progress=False).num_frames)
        )
        for _ in range(3)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [sum(LENGTHS)] * 3 and len(decode_calls) == 1


def test_refuses_to_replace_a_folder_that_is_not_a_cache(dataset: Path, tmp_path: Path) -> None:
    other = tmp_path / "precious"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    with pytest.raises(InputError, match="not a training cache"):
        build_cache(dataset, size=SIZE, cache_dir=other, progress=False)
    assert (other / "notes.txt").read_text() == "keep me"
    with pytest.raises(DatasetError, match="does not exist"):
        load_cache(tmp_path / "missing", size=SIZE)
    assert not (tmp_path / "missing").exists()


@pytest.fixture
def cache(dataset: Path) -> cache_module.TrainingCache:
    return build_cache(dataset, size=SIZE, progress=False)


def test_clips_never_cross_episode_boundaries(cache: cache_module.TrainingCache) -> None:
    sampler = ClipSampler(cache, CLIP_LEN, seed=3)
    valid = {(e, s) for e, n in enumerate(LENGTHS) for s in range(n - CLIP_LEN + 1)}
    assert sampler.num_starts == len(sampler) == len(valid) == 20
    for _epoch in range(3):
        batch = sampler.sample_batch(len(sampler))  # exactly one epoch
        assert batch.frames.shape == (20, CLIP_LEN, SIZE, SIZE, 3)
        assert batch.actions.shape == (20, CLIP_LEN, 3)
        assert set(zip(batch.episode.tolist(), batch.start.tolist(), strict=True)) == valid
        for frames, actions, episode, start in zip(
            batch.frames, batch.actions, batch.episode, batch.start, strict=True
        ):
            assert (frames[..., 0] == 30 * (episode + 1)).all()  # one episode's colour throughout
            assert (frames[:, 0, 0, 1] == start + np.arange(CLIP_LEN)).all()
            assert (actions[:, 2] == 1000 * episode + start + np.arange(CLIP_LEN)).all()
    clip = next(sampler)
    np.testing.assert_array_equal(
        clip.frames, episode_frames(clip.episode, LENGTHS[clip.episode])[clip.start :][:CLIP_LEN]
    )
    assert sampler.state_dict() == {"epoch": 3, "position": 1}


def test_sampler_is_deterministic_for_a_seed(cache: cache_module.TrainingCache) -> None:
    def draws(seed: int) -> list[tuple[int, int]]:
        sampler = ClipSampler(cache, CLIP_LEN, seed=seed)
        return [(clip.episode, clip.start) for clip in (next(sampler) for _ in range(50))]

    assert draws(0) == draws(0)
    assert draws(0) != draws(1)
    first, second = draws(0)[:20], draws(0)[20:40]
    assert sorted(first) == sorted(second) and first != second  # each epoch reshuffles


def test_ranks_draw_disjoint_clips(cache: cache_module.TrainingCache) -> None:
    ranks = [ClipSampler(cache, CLIP_LEN, seed=7, rank=r, world_size=2) for r in range(2)]
    assert [len(s) for s in ranks] == [10, 10]
    drawn = [
        {(int(e), int(s)) for e, s in zip(b.episode, b.start, strict=True)}
        for b in (s.sample_batch(10) for s in ranks)
    ]
    assert len(drawn[0]) == len(drawn[1]) == 10
    assert not drawn[0] & drawn[1]
    with pytest.raises(InputError, match="rank"):
        ClipSampler(cache, CLIP_LEN, rank=2, world_size=2)


def test_resumed_sampler_continues_with_identical_clips(cache: cache_module.TrainingCache) -> None:
    original = ClipSampler(cache, CLIP_LEN, seed=11, rank=1, world_size=2)
    original.sample_batch(7)
    next(original)
    state = json.loads(json.dumps(original.state_dict()))
    assert state == {"epoch": 0, "position": 8}
    restored = ClipSampler(cache, CLIP_LEN, seed=11, rank=1, world_size=2)
    restored.load_state_dict(state)
    for _ in range(4):  # crosses epoch boundaries
        a, b = original.sample_batch(6), restored.sample_batch(6)
        np.testing.assert_array_equal(a.frames, b.frames)
        np.testing.assert_array_equal(a.actions, b.actions)
        np.testing.assert_array_equal(a.start, b.start)
    assert original.state_dict() == restored.state_dict() == {"epoch": 3, "position": 2}
    with pytest.raises(InputError, match="does not fit"):
        restored.load_state_dict({"epoch": 0, "position": 11})


def test_episode_subset_and_too_short_episodes(cache: cache_module.TrainingCache) -> None:
    held_out = ClipSampler(cache, CLIP_LEN, episodes=[3])
    assert {next(held_out).episode for _ in range(10)} == {3}
    with pytest.raises(InputError, match=r"clips of 21 frames: the longest episode has 20 frames"):
        ClipSampler(cache, 21)
    with pytest.raises(InputError, match=r"the longest episode has 5 frames"):
        ClipSampler(cache, CLIP_LEN, episodes=[1])
    with pytest.raises(InputError, match=r"episodes \[9\] are not in the cache"):
        ClipSampler(cache, CLIP_LEN, episodes=[9])
