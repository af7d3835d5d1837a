"""The engine's ground truth: collected beside the frames, read back, cached, checked by inspect;
``collect --relabel`` reproduces the recorded frames bit-exactly before it adds it, or says it cannot."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from wm_video.cli import main as cli_main
from wm_video.collect import collect
from wm_video.data import truth
from wm_video.data.reader import open_dataset
from wm_video.data.validate import validate_dataset
from wm_video.data.video import VideoSettings, encode_video, read_video
from wm_video.errors import DatasetError
from wm_video.relabel import relabel
from wm_video.sources.truth import CLASS_ID, STATE_NAMES

ARGS = dict(scenario="defend_the_center", episodes=2, steps=40, seed=3, size=32, workers=1, progress=False)


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    root = tmp_path_factory.mktemp("truth") / "ds"
    collect(root, video=VideoSettings(codec="lossless"), **ARGS)
    return root


def test_collect_records_the_ground_truth(labelled) -> None:
    ds = open_dataset(labelled)
    assert truth.has_truth(ds.info) and ds.ours["ground_truth"]["state"] == list(STATE_NAMES)
    ep = ds.episodes[0]
    state, reward, done = truth.read_state(ds, ep)
    assert state.shape == (ep.length, len(STATE_NAMES)) and reward.shape == done.shape == (ep.length,)
    assert state[0, STATE_NAMES.index("health")] == 100
    classes = np.stack(list(truth.iter_class_maps(ds, ep)))
    assert classes.shape == (ep.length, 32, 32) and (classes == CLASS_ID["weapon"]).any(axis=(1, 2)).all()
    objects = truth.read_objects(ds, ep)
    assert "Self" in objects.column("category").to_pylist()
    cache = truth.load_truth_cache(labelled, size=32, progress=False)
    assert cache is not None and cache.classes.shape == (ds.num_frames, 32, 32)
    assert np.array_equal(cache.classes[: ep.length], classes) and np.array_equal(
        cache.state[: ep.length], state
    )
    report = validate_dataset(labelled)
    assert report.ok and "ground truth" in report.format()


def test_inspect_names_a_broken_labels_video(labelled, tmp_path) -> None:
    root = tmp_path / "ds"
    shutil.copytree(labelled, root)
    video = truth.labels_video_path(open_dataset(root), open_dataset(root).episodes[1])
    frames = read_video(video)
    encode_video(video, frames[:-3], 17.5, truth.LABELS_VIDEO)  # three label frames short
    report = validate_dataset(root)
    assert not report.ok and any("episode 1" in p and "labels video" in p for p in report.problems)


def _unlabelled(tmp_path, codec: str):
    root = tmp_path / f"plain-{codec}"
    collect(root, video=VideoSettings(codec=codec), ground_truth=False, **ARGS)
    assert not truth.has_truth(open_dataset(root).info)
    return root


@pytest.mark.parametrize("codec", ["lossless", "h264"])
def test_relabel_reproduces_the_frames_and_adds_the_same_truth(labelled, tmp_path, codec) -> None:
    root = _unlabelled(tmp_path, codec)
    result = relabel(root, progress=False)
    assert result.episodes == 2 and result.bytes_per_frame["labels_video"] > 0
    got, want = open_dataset(root), open_dataset(labelled)
    assert truth.has_truth(got.info) and validate_dataset(root).ok
    for a, b in zip(got.episodes, want.episodes, strict=True):
        assert all(
            np.array_equal(x, y)
            for x, y in zip(truth.read_state(got, a), truth.read_state(want, b), strict=True)
        )
        assert np.array_equal(
            np.stack(list(truth.iter_class_maps(got, a))), np.stack(list(truth.iter_class_maps(want, b)))
        )
    with pytest.raises(Exception, match="already holds the ground truth"):
        relabel(root, progress=False)


def test_relabel_says_it_cannot_when_a_frame_differs(tmp_path, capsys) -> None:
    root = _unlabelled(tmp_path, "lossless")
    ds = open_dataset(root)
    ep = ds.episodes[1]
    frames = ds.frames(ep)
    frames[17, 5, 5] ^= 0xFF  # one pixel of one frame: no longer what the engine shows
    encode_video(ep.video_path, frames, ds.fps, VideoSettings(codec="lossless"))
    info_before = (root / "meta" / "info.json").read_text()
    with pytest.raises(DatasetError, match=r"episode 1: frame 17 differs"):
        relabel(root, progress=False)
    assert (root / "meta" / "info.json").read_text() == info_before and not (
        root / "videos" / truth.LABELS_KEY
    ).exists()
    assert cli_main(["collect", "--relabel", str(root)]) == 2
    assert "cannot relabel" in capsys.readouterr().err
    assert json.loads(info_before)["total_episodes"] == 2


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["collect"], "pass --out DIR"),
        (["collect", "--out", "A", "--relabel", "B"], "leave out --out"),
        (["collect", "--relabel", "MISSING"], "does not exist"),
    ],
)
def test_collect_and_relabel_bad_input_is_one_line(tmp_path, capsys, argv, message) -> None:
    argv = [str(tmp_path / a) if a in ("A", "B", "MISSING") else a for a in argv]
    assert cli_main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err
