"""Importers: mp4 + jsonl folders and OpenAI VPT recordings become datasets, or fail naming the file."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import numpy as np
import pytest
from conftest import smooth_frames

from wm_video.data import importers
from wm_video.data.importers import import_mp4_jsonl
from wm_video.data.reader import open_dataset
from wm_video.data.video import VideoSettings, encode_video
from wm_video.data.vpt import VPT_ACTION_SPACE, import_vpt
from wm_video.errors import DatasetError, InputError

LOSSLESS = VideoSettings(codec="lossless")


def write_pair(
    folder: Path, name: str, records: list, *, frames: int | None = None, size: int = 16, fps: float = 10.0
) -> np.ndarray:
    """name.mp4 (lossless, `frames` frames, default one per record) + name.jsonl; returns the frames."""
    folder.mkdir(parents=True, exist_ok=True)
    video = smooth_frames(len(records) if frames is None else frames, size, seed=len(name))
    encode_video(folder / f"{name}.mp4", video, fps, LOSSLESS)
    lines = [r if isinstance(r, str) else json.dumps(r) for r in records]
    (folder / f"{name}.jsonl").write_text("\n".join(lines) + "\n")
    return video


def import_folder(src: Path, out: Path, **kwargs: object) -> importers.ImportResult:
    return import_mp4_jsonl(src, out, video=LOSSLESS, progress=False, **kwargs)


# -- mp4 + jsonl --------------------------------------------------------------------------------
def test_mp4_jsonl_round_trip_is_exact(tmp_path: Path) -> None:
    src = tmp_path / "src"
    b_records = [{"keys": ["w"]}, {"keys": []}, {"keys": ["attack", "w"]}]
    a_records = [{"keys": ["left"], "mouse_dx": 2.5}, {"keys": ["w", "left"], "mouse_dy": -1}]
    b_frames = write_pair(src, "b", b_records)  # written first; imported second (sorted names)
    a_frames = write_pair(src, "a", a_records)

    result = import_folder(src, tmp_path / "out")

    assert (result.episodes, result.frames, result.skipped, result.trimmed) == (2, 5, [], {})
    ds = open_dataset(tmp_path / "out")
    space = ds.action_space
    assert space.buttons == ("attack", "left", "w") and space.deltas == ("mouse_dx", "mouse_dy")
    assert dict(space.default_keymap) == {"left": "left", "w": "w"}  # "attack" is no key name
    assert ds.fps == 10.0 and ds.frame_shape == (16, 16, 3)
    episode_a, episode_b = ds.episodes
    np.testing.assert_array_equal(ds.frames(episode_a), a_frames)
    np.testing.assert_array_equal(ds.frames(episode_b), b_frames)
    np.testing.assert_array_equal(ds.actions(episode_a), [[0, 1, 0, 2.5, 0], [0, 1, 1, 0, -1]])
    np.testing.assert_array_equal(ds.actions(episode_b), [[0, 0, 1, 0, 0], [0, 0, 0, 0, 0], [1, 0, 1, 0, 0]])


def test_given_buttons_fix_the_order_and_resize_works(tmp_path: Path) -> None:
    write_pair(tmp_path / "src", "a", [{"keys": ["w"]}, {"keys": ["s", "w"]}], size=20)
    import_mp4_jsonl(tmp_path / "src", tmp_path / "out", size=8, buttons=["w", "s", "jump"], progress=False)
    ds = open_dataset(tmp_path / "out")
    assert ds.action_space.buttons == ("w", "s", "jump") and ds.action_space.deltas == ()
    assert ds.frame_shape == (8, 8, 3) and ds.frames(ds.episodes[0]).shape == (2, 8, 8, 3)
    np.testing.assert_array_equal(ds.actions(ds.episodes[0]), [[1, 0, 0], [1, 1, 0]])


def test_unknown_name_with_given_buttons_names_file_and_line(tmp_path: Path) -> None:
    write_pair(tmp_path / "src", "a", [{"keys": ["w"]}, {"keys": []}, {"keys": ["w", "fly"]}])
    with pytest.raises(InputError, match=r"a\.jsonl:3: unknown key names \['fly'\]"):
        import_folder(tmp_path / "src", tmp_path / "out", buttons=["w"])
    assert not (tmp_path / "out").exists()  # checked before anything is written


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", r"a\.jsonl:2: not valid JSON"),
        ('{"keys": "w"}', r"a\.jsonl:2: 'keys' must be a list"),
        ('["w"]', r"a\.jsonl:2: expected a JSON object"),
        ('{"keys": [], "mouse_dx": "fast"}', r"a\.jsonl:2: 'mouse_dx' must be a finite number"),
    ],
)
def test_bad_jsonl_line_names_file_and_line(tmp_path: Path, line: str, message: str) -> None:
    write_pair(tmp_path / "src", "a", [{"keys": []}, line, {"keys": []}])
    with pytest.raises(InputError, match=message):
        import_folder(tmp_path / "src", tmp_path / "out")


def test_frame_count_mismatch_names_both_files(tmp_path: Path) -> None:
    write_pair(tmp_path / "src", "a", [{"keys": ["w"]}] * 4, frames=5)
    with pytest.raises(InputError, match=r"a\.mp4 has 5 frames but a\.jsonl has 4 records"):
        import_folder(tmp_path / "src", tmp_path / "out")


def test_mismatch_found_while_decoding_discards_the_episode(tmp_path: Path, monkeypatch) -> None:
    """A header without a frame count: the decode-time check catches it and drops that episode."""
    real_probe = importers.probe_video
    monkeypatch.setattr(
        importers, "probe_video", lambda path: dataclasses.replace(real_probe(path), frames=None)
    )
    write_pair(tmp_path / "src", "a", [{"keys": ["w"]}] * 3)
    write_pair(tmp_path / "src", "b", [{"keys": ["w"]}] * 6, frames=4)
    with pytest.raises(InputError, match=r"b\.mp4 has 4 frames but b\.jsonl has 6 records"):
        import_folder(tmp_path / "src", tmp_path / "out")
    # all or nothing: no half dataset at OUT, no leftover build folder, so a re-run starts clean
    assert not (tmp_path / "out").exists()
    assert not (tmp_path / ".out.importing").exists()


@pytest.mark.parametrize("missing", ["jsonl", "mp4"])
def test_unpaired_file_is_an_error(tmp_path: Path, missing: str) -> None:
    write_pair(tmp_path / "src", "a", [{"keys": []}])
    write_pair(tmp_path / "src", "b", [{"keys": []}])
    (tmp_path / "src" / f"b.{missing}").unlink()
    with pytest.raises(InputError, match=rf"unpaired files.*b\.\w+ lacks b\.{missing}"):
        import_folder(tmp_path / "src", tmp_path / "out")


def test_empty_missing_or_file_src(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match=r"holds no name\.mp4 \+ name\.jsonl pairs"):
        import_folder(tmp_path / "empty", tmp_path / "out")
    with pytest.raises(InputError, match="no such folder"):
        import_folder(tmp_path / "nowhere", tmp_path / "out")
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(InputError, match="is not a folder"):
        import_folder(tmp_path / "file.txt", tmp_path / "out")


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda path: path.write_bytes(b""), "empty"),
        (lambda path: path.write_bytes(b"\x00garbage" * 100), "cannot open video"),
        (truncate, ""),
    ],
    ids=["zero-byte", "garbage", "truncated"],
)
def test_broken_video_names_the_file(tmp_path: Path, damage, message: str) -> None:
    write_pair(tmp_path / "src", "a", [{"keys": ["w"]}] * 3)
    write_pair(tmp_path / "src", "b", [{"keys": ["w"]}] * 30, size=32)
    damage(tmp_path / "src" / "b.mp4")
    with pytest.raises(DatasetError, match=rf"{re.escape(str(tmp_path / 'src' / 'b.mp4'))}: .*{message}"):
        import_folder(tmp_path / "src", tmp_path / "out", size=16)


def test_videos_must_agree_on_fps_and_size(tmp_path: Path) -> None:
    write_pair(tmp_path / "fps", "a", [{"keys": ["w"]}] * 2, fps=10)
    write_pair(tmp_path / "fps", "b", [{"keys": ["w"]}] * 2, fps=12)
    with pytest.raises(InputError, match=r"b\.mp4 runs at 12 fps but a\.mp4 at 10"):
        import_folder(tmp_path / "fps", tmp_path / "out1")
    assert import_folder(tmp_path / "fps", tmp_path / "out2", fps=10).episodes == 2  # override

    write_pair(tmp_path / "size", "a", [{"keys": ["w"]}] * 2, size=16)
    write_pair(tmp_path / "size", "b", [{"keys": ["w"]}] * 2, size=24)
    with pytest.raises(InputError, match=r"b\.mp4 is 24x24 but a\.mp4 is 16x16; pass size="):
        import_folder(tmp_path / "size", tmp_path / "out3")


def test_odd_size_needs_resize_for_yuv420(tmp_path: Path) -> None:
    write_pair(tmp_path / "src", "a", [{"keys": ["w"]}] * 2, size=15)
    yuv420 = VideoSettings(codec="h264-yuv420")
    with pytest.raises(InputError, match=r"a\.mp4 is 15x15; H\.264 yuv420p needs an even width.*--size"):
        import_mp4_jsonl(tmp_path / "src", tmp_path / "out", video=yuv420, progress=False)
    assert (
        import_mp4_jsonl(tmp_path / "src", tmp_path / "out", size=16, video=yuv420, progress=False).frames
        == 2
    )
    assert (
        import_mp4_jsonl(tmp_path / "src", tmp_path / "out444", progress=False).frames == 2
    )  # yuv444p: any size


def test_existing_out_is_refused(tmp_path: Path) -> None:
    write_pair(tmp_path / "src", "a", [{"keys": ["w"]}] * 2)
    import_folder(tmp_path / "src", tmp_path / "out")
    with pytest.raises(InputError, match="out already exists; an import creates a new dataset"):
        import_folder(tmp_path / "src", tmp_path / "out", buttons=["w", "s"])
    assert len(open_dataset(tmp_path / "out").episodes) == 1


# -- OpenAI VPT ---------------------------------------------------------------------------------
def vpt_record(
    keys: list[str], buttons: list[int], dx: float = 0.0, dy: float = 0.0, hotbar: int = 0
) -> dict:
    return {
        "mouse": {"x": 320.0, "y": 180.0, "dx": dx, "dy": dy, "buttons": buttons, "newButtons": []},
        "keyboard": {"keys": keys, "newKeys": [], "chars": ""},
        "hotbar": hotbar,
        "isGuiOpen": False,
        "tick": 0,
    }


def vector(pressed: list[str], dx: float = 0.0, dy: float = 0.0) -> np.ndarray:
    return VPT_ACTION_SPACE.from_pressed(pressed, {"camera_dx": dx, "camera_dy": dy})


def test_vpt_actions_ignored_keys_and_resize(tmp_path: Path) -> None:
    records = [
        vpt_record(["key.keyboard.w", "key.keyboard.space"], [0], dx=3.5, dy=-2.0),
        vpt_record(["key.keyboard.t", "key.keyboard.left.shift"], [1, 2]),
        vpt_record(["key.keyboard.t", "key.keyboard.3"], [7], hotbar=2),  # key 3 and its slot change
        vpt_record([], [], hotbar=5),  # mouse wheel: slot 5 (0-based) → hotbar.6
    ]
    write_pair(tmp_path / "src", "rec", records, size=40, fps=20)

    result = import_vpt(tmp_path / "src", tmp_path / "out", size=32, progress=False)

    assert result.ignored_keys == {"key.keyboard.t": 2, "mouse.button.7": 1}
    ds = open_dataset(tmp_path / "out")
    assert ds.action_space == VPT_ACTION_SPACE and ds.fps == 20.0 and ds.frame_shape == (32, 32, 3)
    assert ds.frames(ds.episodes[0]).shape == (4, 32, 32, 3)
    expected = [
        vector(["forward", "jump", "attack"], 3.5, -2.0),
        vector(["sneak", "use", "pick_item"]),
        vector(["hotbar.3"]),
        vector(["hotbar.6"]),
    ]
    np.testing.assert_array_equal(ds.actions(ds.episodes[0]), expected)
    assert VPT_ACTION_SPACE.buttons[:3] == ("forward", "back", "left")
    assert VPT_ACTION_SPACE.default_keymap["left shift"] == "sneak"


@pytest.mark.parametrize(
    ("line", "message"),
    [('"text"', "expected a VPT record"), ('{"keyboard": {"keys": []}}', "expected a VPT record")],
)
def test_vpt_bad_record_names_file_and_line(tmp_path: Path, line: str, message: str) -> None:
    write_pair(tmp_path / "src", "rec", [vpt_record([], []), line], fps=20)
    with pytest.raises(InputError, match=rf"rec\.jsonl:2: {message}"):
        import_vpt(tmp_path / "src", tmp_path / "out", size=16, progress=False)


def test_vpt_length_tolerance_is_explicit_and_reported(tmp_path: Path) -> None:
    write_pair(tmp_path / "src", "rec", [vpt_record(["key.keyboard.w"], [])] * 5, frames=4, fps=20)
    with pytest.raises(InputError, match=r"rec\.mp4 has 4 frames but rec\.jsonl has 5 records"):
        import_vpt(tmp_path / "src", tmp_path / "out", size=16, progress=False)
    result = import_vpt(tmp_path / "src", tmp_path / "out", size=16, progress=False, length_tolerance=1)
    assert (result.frames, result.trimmed) == (4, {"rec": 1})
    assert open_dataset(tmp_path / "out").episodes[0].length == 4


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"size": 1}, "size must be ≥ 2 pixels"),
        ({"size": 15, "video": VideoSettings(codec="h264-yuv420")}, "even for yuv420p"),
        ({"fps": 0.0}, "fps must be a number from 0.1 to 1000"),
        ({"fps": 1e-9}, "fps must be a number from 0.1 to 1000"),  # issue 19: a ZeroDivisionError
        ({"fps": 1e12}, "fps must be a number from 0.1 to 1000"),
        ({"fps": float("nan")}, "fps must be a number from 0.1 to 1000"),
    ],
)
def test_bad_options_are_refused_before_reading(tmp_path: Path, kwargs: dict, message: str) -> None:
    write_pair(tmp_path / "src", "a", [{"keys": ["w"]}] * 2)
    with pytest.raises(InputError, match=message):
        import_mp4_jsonl(tmp_path / "src", tmp_path / "out", progress=False, **kwargs)
    assert not (tmp_path / "out").exists()
