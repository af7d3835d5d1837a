"""Datasets on disk: write → read round trips, the layouts we read, and every bad-input case."""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import SPACE, TinyDataset, make_dataset, open_writer, random_actions, smooth_frames

from wm_video.actions import ActionSpace
from wm_video.data import lerobot
from wm_video.data.reader import open_dataset
from wm_video.data.validate import validate_dataset
from wm_video.data.video import VideoSettings, encode_video
from wm_video.data.writer import DatasetWriter, frames_table
from wm_video.errors import DatasetError


def test_lossless_round_trip_is_exact(tiny_dataset: TinyDataset) -> None:
    ds = open_dataset(tiny_dataset.root)
    assert ds.version == "v3.0" and ds.fps == 17.5 and ds.frame_shape == (32, 32, 3)
    assert ds.action_space == SPACE
    assert [ep.length for ep in ds.episodes] == [12, 7, 20]
    for ep, frames, actions in zip(ds.episodes, tiny_dataset.frames, tiny_dataset.actions, strict=True):
        np.testing.assert_array_equal(ds.frames(ep), frames)
        np.testing.assert_array_equal(ds.actions(ep), actions)
        np.testing.assert_allclose(ds.timestamps(ep), np.arange(ep.length) / 17.5, atol=1e-6)


def test_h264_round_trip_error_is_bounded(tmp_path: Path) -> None:
    data = make_dataset(tmp_path / "ds", [24], size=64, codec="h264")
    decoded = open_dataset(data.root).frames(open_dataset(data.root).episodes[0]).astype(np.float64)
    mse = np.mean((decoded - data.frames[0]) ** 2)
    psnr = 10 * np.log10(255**2 / mse)
    assert psnr > 35, f"H.264 yuv444p at crf 14 should be near-transparent, got {psnr:.1f} dB"


def test_metadata_follows_lerobot_v3(tiny_dataset: TinyDataset) -> None:
    root = tiny_dataset.root
    info = json.loads((root / "meta/info.json").read_text())
    assert info["codebase_version"] == "v3.0"
    assert info["total_episodes"] == 3 and info["total_frames"] == 39
    assert info["features"]["action"] == {
        "dtype": "float32",
        "shape": [3],
        "names": ["forward", "turn_left", "mouse_dx"],
    }
    assert info["features"]["observation.image"]["dtype"] == "video"
    episodes = pq.read_table(root / "meta/episodes/chunk-000/file-000.parquet").to_pylist()
    assert [e["dataset_from_index"] for e in episodes] == [0, 12, 19]
    rows = pq.read_table(root / "data/chunk-000/file-002.parquet")
    assert rows.column_names == ["action", "timestamp", "frame_index", "episode_index", "index", "task_index"]
    assert rows.column("index").to_pylist() == list(range(19, 39))
    tasks = pq.read_table(root / "meta/tasks.parquet")
    assert tasks.column("task").to_pylist() == ["test"]


def test_append_continues_and_checks_compatibility(tiny_dataset: TinyDataset) -> None:
    with open_writer(tiny_dataset.root) as writer:
        assert writer.num_episodes == 3
        writer.write_episode(smooth_frames(5, 32, 9), random_actions(5, 9))
    assert len(open_dataset(tiny_dataset.root).episodes) == 4
    other = ActionSpace(("forward", "back"))
    with pytest.raises(DatasetError, match="action names"):
        DatasetWriter(tiny_dataset.root, fps=17.5, action_space=other, frame_shape=(32, 32, 3))
    with pytest.raises(DatasetError, match="fps"):
        DatasetWriter(tiny_dataset.root, fps=30, action_space=SPACE, frame_shape=(32, 32, 3))


def test_reads_v21_layout(tiny_dataset: TinyDataset, tmp_path: Path) -> None:
    src, root = open_dataset(tiny_dataset.root), tmp_path / "v21"
    info = json.loads((tiny_dataset.root / "meta/info.json").read_text())
    info.update(
        codebase_version="v2.1",
        data_path="data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet",
        video_path="videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4",
    )
    (root / "meta").mkdir(parents=True)
    (root / "meta/info.json").write_text(json.dumps(info))
    lines = [
        json.dumps({"episode_index": ep.index, "tasks": ["test"], "length": ep.length}) for ep in src.episodes
    ]
    (root / "meta/episodes.jsonl").write_text("\n".join(lines) + "\n")
    for ep in src.episodes:
        data = root / f"data/chunk-000/episode_{ep.index:06d}.parquet"
        video = root / f"videos/chunk-000/observation.image/episode_{ep.index:06d}.mp4"
        for source, target in ((ep.data_path, data), (ep.video_path, video)):
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(source, target)
    ds = open_dataset(root)
    assert ds.version == "v2.1" and len(ds.episodes) == 3
    # no wm_video.json (as LeRobot writes it): the leading all-0-or-1 entries are read as buttons
    assert (ds.action_space.buttons, ds.action_space.deltas) == (("forward", "turn_left"), ("mouse_dx",))
    np.testing.assert_array_equal(ds.frames(ds.episodes[1]), tiny_dataset.frames[1])
    np.testing.assert_array_equal(ds.actions(ds.episodes[2]), tiny_dataset.actions[2])
    assert validate_dataset(root).ok


def test_reads_v3_files_holding_several_episodes(tmp_path: Path) -> None:
    """LeRobot packs episodes into shared files; they are found by row range and timestamps."""
    root, fps, lengths = tmp_path / "packed", 10.0, [9, 14]
    frames = [smooth_frames(n, 32, i) for i, n in enumerate(lengths)]
    actions = [random_actions(n, i) for i, n in enumerate(lengths)]
    info = lerobot.make_info(
        fps=fps,
        video_key="observation.image",
        frame_shape=(32, 32, 3),
        action_names=list(SPACE.names),
        codec="h264",
        pix_fmt="rgb24",
    )
    info.update(total_episodes=2, total_frames=sum(lengths))
    (root / "meta").mkdir(parents=True)
    (root / "meta/info.json").write_text(json.dumps(info))
    video = root / "videos/observation.image/chunk-000/file-000.mp4"
    video.parent.mkdir(parents=True)
    encode_video(video, np.concatenate(frames), fps, VideoSettings(codec="lossless", gop=4))
    tables = [frames_table(a, fps=fps, episode_index=i, first_index=9 * i) for i, a in enumerate(actions)]
    (root / "data/chunk-000").mkdir(parents=True)
    pq.write_table(pa.concat_tables(tables), root / "data/chunk-000/file-000.parquet")
    rows = [
        {
            "episode_index": i,
            "length": n,
            "data/chunk_index": 0,
            "data/file_index": 0,
            "dataset_from_index": 9 * i,
            "dataset_to_index": 9 * i + n,
            "videos/observation.image/chunk_index": 0,
            "videos/observation.image/file_index": 0,
            "videos/observation.image/from_timestamp": 0.9 * i,
            "videos/observation.image/to_timestamp": 0.9 * i + n / fps,
        }
        for i, n in enumerate(lengths)
    ]
    (root / "meta/episodes/chunk-000").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows), root / "meta/episodes/chunk-000/file-000.parquet")
    ds = open_dataset(root)
    for ep in ds.episodes:
        np.testing.assert_array_equal(ds.frames(ep), frames[ep.index])
        np.testing.assert_array_equal(ds.actions(ep), actions[ep.index])
    assert validate_dataset(root).ok


# -- bad input: every case names the episode and the file ---------------------------------------------
def _video(root: Path, episode: int) -> Path:
    return root / f"videos/observation.image/chunk-000/file-{episode:03d}.mp4"


def _data(root: Path, episode: int) -> Path:
    return root / f"data/chunk-000/file-{episode:03d}.parquet"


def _zero_bytes(root: Path) -> None:
    _video(root, 1).write_bytes(b"")


def _truncated(root: Path) -> None:
    data = _video(root, 1).read_bytes()
    _video(root, 1).write_bytes(data[: len(data) // 2])


def _garbage(root: Path) -> None:
    _video(root, 1).write_bytes(np.random.default_rng(0).bytes(4000))


def _missing_video(root: Path) -> None:
    _video(root, 1).unlink()


def _fewer_frames(root: Path) -> None:
    encode_video(_video(root, 1), smooth_frames(5, 32, 1), 17.5, VideoSettings(codec="lossless"))


def _more_frames(root: Path) -> None:
    encode_video(_video(root, 1), smooth_frames(9, 32, 1), 17.5, VideoSettings(codec="lossless"))


def _wrong_fps(root: Path) -> None:
    encode_video(_video(root, 1), smooth_frames(7, 32, 1), 30.0, VideoSettings(codec="lossless"))


def _wrong_resolution(root: Path) -> None:
    encode_video(_video(root, 1), smooth_frames(7, 16, 1), 17.5, VideoSettings(codec="lossless"))


def _rewrite_rows(root: Path, column: str, values: pa.Array) -> None:
    table = pq.read_table(_data(root, 1))
    table = table.set_column(table.column_names.index(column), column, values)
    pq.write_table(table, _data(root, 1))


def _timestamps_off(root: Path) -> None:
    _rewrite_rows(root, "timestamp", pa.array((np.arange(7) / 30.0).astype(np.float32)))


def _button_not_binary(root: Path) -> None:
    actions = random_actions(7, 1)
    actions[3, 0] = 0.5
    flat = pa.array(actions.reshape(-1))
    _rewrite_rows(
        root, "action", pa.ListArray.from_arrays(pa.array(np.arange(0, 22, 3, dtype=np.int32)), flat)
    )


def _missing_rows(root: Path) -> None:
    pq.write_table(pq.read_table(_data(root, 1)).slice(0, 5), _data(root, 1))


BAD_CASES = {
    "zero-byte video": (_zero_bytes, "empty \\(0 bytes\\)"),
    "truncated video": (_truncated, "cannot open video|cannot be decoded|holds \\d+ frames"),
    "undecodable video": (_garbage, "cannot open video"),
    "missing video": (_missing_video, "video file is missing"),
    "fewer frames than actions": (
        _fewer_frames,
        "video holds 5 frames but episode\\(s\\) 1 have 7 action rows",
    ),
    "more frames than actions": (
        _more_frames,
        "video holds 9 frames but episode\\(s\\) 1 have 7 action rows",
    ),
    "wrong video fps": (_wrong_fps, "video runs at 30 fps but the dataset declares 17.5"),
    "wrong resolution": (_wrong_resolution, "video is 16×16 but the dataset declares 32×32"),
    "timestamps off fps": (_timestamps_off, "timestamps are off the declared 17.5 fps"),
    "action outside space": (_button_not_binary, "actions outside the declared space"),
    "rows missing": (_missing_rows, "metadata says 7 frames but the data file has 5 rows"),
}


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_bad_episode_is_reported_with_episode_and_file(tiny_dataset: TinyDataset, case: str) -> None:
    damage, message = BAD_CASES[case]
    damage(tiny_dataset.root)
    report = validate_dataset(tiny_dataset.root)
    assert not report.ok
    assert len(report.problems) == 1, report.problems
    problem = report.problems[0]
    assert "episode 1" in problem, problem
    assert ("file-001.mp4" in problem) or ("file-001.parquet" in problem), problem
    assert re.search(message, problem), problem


@pytest.mark.parametrize("case", ["zero-byte video", "truncated video", "fewer frames than actions"])
def test_reading_a_bad_episode_raises_naming_it(tiny_dataset: TinyDataset, case: str) -> None:
    BAD_CASES[case][0](tiny_dataset.root)
    ds = open_dataset(tiny_dataset.root)
    with pytest.raises(DatasetError, match="episode 1, .*file-001.mp4"):
        ds.frames(ds.episodes[1])


def test_unknown_action_names_are_refused(tiny_dataset: TinyDataset) -> None:
    ours = lerobot.ours_path(tiny_dataset.root)
    meta = json.loads(ours.read_text())
    meta["keymap"]["space"] = "jump"
    ours.write_text(json.dumps(meta))
    with pytest.raises(DatasetError, match=r"wm_video.json: keymap names unknown action names \['jump'\]"):
        open_dataset(tiny_dataset.root)
    meta["buttons"] = ["forward", "strafe"]
    ours.write_text(json.dumps(meta))
    report = validate_dataset(tiny_dataset.root)
    assert not report.ok and "do not match the action names" in report.problems[0]


@pytest.mark.parametrize("setup", ["missing", "empty", "not a dataset"])
def test_folder_errors(tmp_path: Path, setup: str) -> None:
    root = tmp_path / "ds"
    if setup != "missing":
        root.mkdir()
    if setup == "not a dataset":
        (root / "clip.mp4").write_bytes(b"")
    expected = {"missing": "does not exist", "empty": "folder is empty", "not a dataset": "meta/info.json"}[
        setup
    ]
    with pytest.raises(DatasetError, match=expected):
        open_dataset(root)
    assert expected in validate_dataset(root).problems[0]


def test_writer_refuses_mismatched_lengths_and_foreign_folders(tmp_path: Path) -> None:
    writer = DatasetWriter(tmp_path / "ds", fps=10, action_space=SPACE, frame_shape=(32, 32, 3))
    with pytest.raises(ValueError, match="as many actions as frames"):
        writer.write_episode(smooth_frames(5, 32, 0), random_actions(4, 0))
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("hi")
    with pytest.raises(ValueError, match="not empty and holds no dataset"):
        DatasetWriter(tmp_path / "other", fps=10, action_space=SPACE, frame_shape=(32, 32, 3))


def test_interrupted_commit_loses_only_that_episode(
    tiny_dataset: TinyDataset, monkeypatch: pytest.MonkeyPatch
) -> None:
    import wm_video.data.writer as writer_module

    writer = open_writer(tiny_dataset.root)

    def crash(*args: object, **kwargs: object) -> None:
        raise OSError("disk gone")

    monkeypatch.setattr(writer_module, "_write_parquet", crash)
    with pytest.raises(OSError):
        writer.write_episode(smooth_frames(6, 32, 5), random_actions(6, 5))
    monkeypatch.undo()
    assert len(open_dataset(tiny_dataset.root).episodes) == 3
    assert validate_dataset(tiny_dataset.root).ok  # the orphaned video is not part of the dataset
    with open_writer(tiny_dataset.root) as again:
        again.write_episode(smooth_frames(6, 32, 5), random_actions(6, 5))
    assert validate_dataset(tiny_dataset.root).ok


def test_writer_repairs_metadata_left_behind_by_a_killed_process(tiny_dataset: TinyDataset) -> None:
    """The episode table is the commit point; info.json and stats.json catch up on the next open."""
    info_path = lerobot.info_path(tiny_dataset.root)
    stats_path = tiny_dataset.root / "meta/stats.json"
    good_info, good_stats = json.loads(info_path.read_text()), json.loads(stats_path.read_text())
    info_path.write_text(json.dumps({**good_info, "total_episodes": 2, "total_frames": 19}))
    stats_path.write_text(
        json.dumps({"action": {k: [0.0] * len(v) for k, v in good_stats["action"].items()}})
    )
    assert not validate_dataset(tiny_dataset.root).ok
    open_writer(tiny_dataset.root).close()
    assert json.loads(info_path.read_text()) == good_info
    repaired = json.loads(stats_path.read_text())["action"]
    for key, values in good_stats["action"].items():
        np.testing.assert_allclose(repaired[key], values, rtol=1e-6, atol=1e-9)
    assert validate_dataset(tiny_dataset.root).ok


@pytest.fixture
def sigint_handler() -> Iterator[None]:
    """Python's own SIGINT handler for the test, whatever this process inherited: a shell starts a
    background job (``pytest … &``) with SIGINT ignored, and then no Ctrl-C ever raises. That, not
    timing, is why this test once failed with "DID NOT RAISE" in a full run started that way."""
    import signal

    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, before)


@pytest.mark.usefixtures("sigint_handler")
def test_signals_wait_for_the_end_of_a_commit() -> None:
    import signal

    from wm_video.fileio import signals_deferred

    steps = []
    with pytest.raises(KeyboardInterrupt):
        with signals_deferred():
            signal.raise_signal(signal.SIGINT)
            steps.append("finished the commit")
    assert steps == ["finished the commit"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_dataset_without_wm_video_json_gets_buttons_inferred_said_and_overridable(
    tiny_dataset: TinyDataset, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 19: a dataset written by LeRobot itself (no meta/wm_video.json) read every action as continuous."""
    from wm_video.cli import main

    root = tiny_dataset.root
    lerobot.ours_path(root).unlink()
    assert main(["inspect", str(root), "--no-decode"]) == 0
    out = capsys.readouterr().out
    assert "buttons inferred from the data" in out and "['forward', 'turn_left']" in out and "2 buttons" in out
    assert main(["inspect", str(root), "--no-decode", "--buttons", "forward"]) == 0
    assert "1 buttons, 2 continuous" in capsys.readouterr().out
    ds = open_dataset(root)
    assert (ds.action_space.buttons, ds.action_space.deltas) == (("forward",), ("turn_left", "mouse_dx"))
    assert main(["inspect", str(root), "--buttons", "mouse_dx"]) == 2  # buttons lead the vector
    assert "first entries of the action vector" in capsys.readouterr().err


def test_a_held_signal_goes_to_the_handler_in_place_before_the_commit() -> None:
    import signal

    from wm_video.fileio import signals_deferred

    received: list[int] = []
    before = signal.signal(signal.SIGTERM, lambda signum, frame: received.append(signum))
    try:
        with signals_deferred():
            signal.raise_signal(signal.SIGTERM)
            assert received == []  # held during the commit
        assert received == [signal.SIGTERM]  # delivered once, after it
    finally:
        signal.signal(signal.SIGTERM, before)


def test_a_held_signal_stays_ignored_when_it_was_ignored() -> None:
    """A background job ignores SIGINT; a commit must not turn it into a KeyboardInterrupt."""
    import signal

    from wm_video.fileio import signals_deferred

    before = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with signals_deferred():
            signal.raise_signal(signal.SIGINT)
        assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, before)
