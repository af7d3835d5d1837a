"""Collection with real engines: datasets come out whole, identical for a seed, and resumable."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from wm_video.collect import collect
from wm_video.data.reader import open_dataset
from wm_video.data.video import VideoSettings
from wm_video.errors import DatasetError, InputError
from wm_video.sources import make_source

LOSSLESS = VideoSettings(codec="lossless")


def episodes_of(root) -> list[tuple[list[str], np.ndarray]]:
    """(frame hashes, actions) of every episode."""
    dataset = open_dataset(root)
    return [
        (
            [hashlib.sha1(frame.tobytes()).hexdigest() for frame in dataset.iter_frames(ep)],
            dataset.actions(ep),
        )
        for ep in dataset.episodes
    ]


def same(first, second) -> bool:
    return len(first) == len(second) and all(
        hashes_a == hashes_b and np.array_equal(actions_a, actions_b)
        for (hashes_a, actions_a), (hashes_b, actions_b) in zip(first, second, strict=True)
    )


@pytest.fixture(scope="module")
def two_episodes(tmp_path_factory):
    root = tmp_path_factory.mktemp("collect") / "ds"
    result = collect(root, episodes=2, steps=20, seed=5, size=32, workers=2, progress=False, video=LOSSLESS)
    return root, result


def test_collect_writes_a_dataset(two_episodes):
    root, result = two_episodes
    assert result.episodes_written == 2 and result.total_episodes == 2
    assert result.frames_written == 40 and result.frames_per_second > 0 and result.out == root
    dataset = open_dataset(root)
    assert dataset.fps == 17.5 and dataset.frame_shape == (32, 32, 3)
    assert [ep.length for ep in dataset.episodes] == [20, 20]
    info = json.loads((root / "meta" / "wm_video.json").read_text())
    assert info["source"]["scenario"] == "my_way_home" and info["source"]["seed"] == 5
    assert not (root / ".staging").exists()


def test_collect_is_deterministic_and_resumable(two_episodes, tmp_path):
    root, _ = two_episodes
    reference = episodes_of(root)
    assert reference[0][0] != reference[1][0]  # seeds 5 and 6 differ
    again = tmp_path / "again"
    collect(again, episodes=2, steps=20, seed=5, size=32, workers=2, progress=False, video=LOSSLESS)
    assert same(episodes_of(again), reference)
    # interrupted after one episode, then rerun for the total (in-process this time): same dataset
    resumed = tmp_path / "resumed"
    collect(resumed, episodes=1, steps=20, seed=5, size=32, workers=1, progress=False, video=LOSSLESS)
    result = collect(
        resumed, episodes=2, steps=20, seed=5, size=32, workers=1, progress=False, video=LOSSLESS
    )
    assert result.episodes_written == 1 and result.total_episodes == 2
    assert same(episodes_of(resumed), reference)
    # a finished dataset is left alone
    result = collect(
        resumed, episodes=2, steps=20, seed=5, size=32, workers=1, progress=False, video=LOSSLESS
    )
    assert result.episodes_written == 0 and result.total_episodes == 2


def test_recorded_actions_replay_to_recorded_frames(two_episodes):
    """actions[t] is the action taken at frame t and leads to frame t+1."""
    root, _ = two_episodes
    dataset = open_dataset(root)
    ep = dataset.episodes[1]
    frames, actions = dataset.frames(ep), dataset.actions(ep)
    with make_source("vizdoom", scenario="my_way_home", size=32, frame_skip=None) as source:
        replayed = [source.reset(5 + 1)]
        replayed += [source.step(action).frame for action in actions[:-1]]
    assert np.array_equal(np.stack(replayed), frames)


def test_collect_stops_when_a_script_ends(tmp_path):
    script = tmp_path / "turn.jsonl"
    script.write_text('{"buttons": ["turn_left"]}\n' * 5)
    root = tmp_path / "ds"
    result = collect(root, episodes=1, steps=20, size=32, workers=1, policy=str(script), progress=False)
    assert result.frames_written == 5
    assert open_dataset(root).episodes[0].length == 5


def test_collect_appends_only_to_a_matching_dataset(two_episodes):
    root, _ = two_episodes
    with pytest.raises(InputError, match="size"):
        collect(root, episodes=3, steps=5, size=4, workers=1, progress=False)
    with pytest.raises(DatasetError, match="shape"):
        collect(root, episodes=3, steps=5, size=48, workers=1, progress=False)
    assert len(open_dataset(root).episodes) == 2


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"scenario": "nowhere"}, "unknown ViZDoom scenario"),
        ({"source": "quake"}, "unknown source"),
        ({"policy": "wander"}, "'explore', 'random', 'hunt', the path"),
        ({"episodes": 0}, "episodes"),
        ({"workers": 0}, "workers"),
        ({"seed": -1}, "seed"),
    ],
)
def test_collect_rejects_bad_input_before_writing(tmp_path, kwargs, message):
    root = tmp_path / "ds"
    arguments = {"episodes": 1, "steps": 5, "size": 32, "workers": 1, "progress": False} | kwargs
    with pytest.raises(InputError, match=message):
        collect(root, **arguments)
    assert not root.exists()
