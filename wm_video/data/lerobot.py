"""The LeRobot dataset layout, as read and written here.

v3.0 (written and read)::

    meta/info.json                                   fps, features, path templates, totals
    meta/stats.json                                  action statistics
    meta/tasks.parquet                               task string (pandas index) → task_index
    meta/episodes/chunk-000/file-000.parquet         one row per episode: length, data and video
                                                     file indices, dataset_from/to_index,
                                                     videos/<key>/from_/to_timestamp
    data/chunk-XXX/file-XXX.parquet                  per frame: action, timestamp, frame_index,
                                                     episode_index, index, task_index
    videos/<video_key>/chunk-XXX/file-XXX.mp4        the image stream
    meta/wm_video.json                               ours: which action names are buttons vs
                                                     deltas, the keymap, the source settings

v3.0 lets a file hold several episodes (located by row range and timestamps); this writer puts
one episode in each data and video file, so an episode is committed atomically and a collection
can append to a dataset without rewriting video. Readers handle both.

v2.1 (read only)::

    meta/info.json, meta/episodes.jsonl (episode_index, tasks, length), meta/tasks.jsonl
    data/chunk-XXX/episode_XXXXXX.parquet, videos/chunk-XXX/<video_key>/episode_XXXXXX.mp4
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from wm_video.errors import DatasetError

CODEBASE_VERSION = "v3.0"
READABLE_VERSIONS = ("v3.0", "v2.1", "v2.0")
DEFAULT_VIDEO_KEY = "observation.image"
CHUNKS_SIZE = 1000
DATA_PATH_V3 = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
VIDEO_PATH_V3 = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
EPISODES_META_PATH = "meta/episodes/chunk-000/file-000.parquet"
#: Our column of the episode table: the policy that played each episode ("explore", "hunt"…).
POLICY_COLUMN = "policy"
TIMESTAMP_TOLERANCE_S = 1e-4  # the tolerance LeRobot itself uses between timestamps and fps


def info_path(root: Path) -> Path:
    return Path(root) / "meta" / "info.json"


def ours_path(root: Path) -> Path:
    return Path(root) / "meta" / "wm_video.json"


def scalar_feature(dtype: str) -> dict[str, Any]:
    return {"dtype": dtype, "shape": [1], "names": None}


def make_info(
    *,
    fps: float,
    video_key: str,
    frame_shape: tuple[int, int, int],
    action_names: list[str],
    codec: str,
    pix_fmt: str,
) -> dict[str, Any]:
    """A fresh v3.0 meta/info.json with no episodes."""
    height, width, channels = frame_shape
    fps_value: float | int = int(fps) if float(fps).is_integer() else float(fps)
    return {
        "codebase_version": CODEBASE_VERSION,
        "robot_type": None,
        "total_episodes": 0,
        "total_frames": 0,
        "total_tasks": 1,
        "chunks_size": CHUNKS_SIZE,
        "data_files_size_in_mb": 100,
        "video_files_size_in_mb": 500,
        "fps": fps_value,
        "splits": {"train": "0:0"},
        "data_path": DATA_PATH_V3,
        "video_path": VIDEO_PATH_V3,
        "features": {
            video_key: {
                "dtype": "video",
                "shape": [height, width, channels],
                "names": ["height", "width", "channels"],
                "info": {
                    "video.height": height,
                    "video.width": width,
                    "video.codec": codec,
                    "video.pix_fmt": pix_fmt,
                    "video.is_depth_map": False,
                    "video.fps": fps_value,
                    "video.channels": channels,
                    "has_audio": False,
                },
            },
            "action": {"dtype": "float32", "shape": [len(action_names)], "names": list(action_names)},
            "timestamp": scalar_feature("float32"),
            "frame_index": scalar_feature("int64"),
            "episode_index": scalar_feature("int64"),
            "index": scalar_feature("int64"),
            "task_index": scalar_feature("int64"),
        },
    }


def read_json(path: Path, what: str) -> Any:
    if not path.exists():
        raise DatasetError(f"{what} is missing", path=path)
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:  # ValueError: JSONDecodeError, huge integers
        raise DatasetError(f"{what} is not valid JSON: {exc}", path=path) from exc


#: The frame rates a dataset may declare (and ``import --fps`` accept): a slide show to a high-speed camera.
FPS_RANGE = (0.1, 1000.0)


def fps_problem(fps: Any) -> str | None:
    """Why ``fps`` cannot be a dataset's frame rate, or None when it can."""
    low, high = FPS_RANGE
    if isinstance(fps, bool) or not isinstance(fps, int | float) or not low <= fps <= high:
        return f"fps must be a number from {low:g} to {high:g}; found {fps!r}"
    return None


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def read_info(root: Path) -> dict[str, Any]:
    """Read meta/info.json and check every part that anything else relies on: the types of fps,
    features, path templates and totals, the action and video features' shapes and names."""
    root = Path(root)
    if not root.exists():
        raise DatasetError("dataset folder does not exist", path=root)
    if root.is_dir() and not any(root.iterdir()):
        raise DatasetError("dataset folder is empty (expected meta/info.json, data/ and videos/)", path=root)
    path = info_path(root)
    info = read_json(path, "meta/info.json (is this a LeRobot dataset?)")
    if not isinstance(info, dict):
        raise DatasetError("meta/info.json must hold a JSON object", path=path)
    version = info.get("codebase_version")
    if version not in READABLE_VERSIONS:
        raise DatasetError(f"codebase_version {version!r} is not one of {READABLE_VERSIONS}", path=path)
    for key in ("fps", "features", "data_path", "video_path"):
        if key not in info:
            raise DatasetError(f"meta/info.json lacks {key!r}", path=path)
    problem = fps_problem(info["fps"])
    if problem is not None:
        raise DatasetError(problem, path=path)
    for key in ("total_episodes", "total_frames", "chunks_size"):
        if key in info and not _is_count(info[key]):
            raise DatasetError(f"{key} must be a whole number ≥ 0; found {info[key]!r:.40}", path=path)
    features = info["features"]
    if not isinstance(features, dict):
        raise DatasetError(f"'features' must be a JSON object; found {type(features).__name__}", path=path)
    action = features.get("action")
    if not isinstance(action, dict):
        raise DatasetError(f"no 'action' feature; features are {sorted(features)}", path=path)
    if action.get("dtype") not in ("float32", "float64"):
        raise DatasetError(f"'action' must be float32; found {action.get('dtype')!r}", path=path)
    shape = action.get("shape")
    if not (isinstance(shape, list) and len(shape) == 1 and _is_count(shape[0]) and shape[0] > 0):
        raise DatasetError(f"'action' needs a shape [N] with N ≥ 1; found {shape!r:.40}", path=path)
    keys = video_keys(info)
    if not keys:
        raise DatasetError(f"no video feature (dtype 'video'); features are {sorted(features)}", path=path)
    for key in keys:
        shape = features[key].get("shape")
        if not (isinstance(shape, list) and len(shape) == 3 and all(_is_count(d) and d > 0 for d in shape)):
            raise DatasetError(
                f"video feature {key!r} needs a shape of 3 sizes; found {shape!r:.40}", path=path
            )
    fields = (
        {"chunk_index": 0, "file_index": 0, "video_key": keys[0]}
        if version == "v3.0"
        else {"episode_chunk": 0, "episode_index": 0, "video_key": keys[0]}
    )
    for key in ("data_path", "video_path"):
        template = info[key]
        try:
            if not isinstance(template, str):
                raise TypeError(f"a {type(template).__name__}, not a string")
            template.format(**fields)
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            raise DatasetError(
                f"{key} must be a path template with the fields {sorted(fields)}; {info[key]!r:.60} fails ({exc})",
                path=path,
            ) from exc
    action_names(info, path)
    return info


def video_keys(info: dict[str, Any]) -> list[str]:
    return [
        key
        for key, spec in info["features"].items()
        if isinstance(spec, dict) and spec.get("dtype") == "video"
    ]


def action_names(info: dict[str, Any], path: Path | str = "meta/info.json") -> list[str]:
    """Flat list of action entry names (LeRobot allows a list, or a dict of lists)."""
    action = info["features"]["action"]
    names = action.get("names")
    size = int(action["shape"][0])
    if isinstance(names, dict):
        names = [name for group in names.values() for name in (group if isinstance(group, list) else [group])]
    if names is not None and not (isinstance(names, list) and all(isinstance(n, str) for n in names)):
        raise DatasetError(f"action names must be a list of strings; found {names!r:.60}", path=path)
    if not names:
        names = [f"action_{i}" for i in range(size)]
    if len(names) != size:
        raise DatasetError(f"action has shape [{size}] but {len(names)} names", path=path)
    if len(set(names)) != len(names):
        raise DatasetError(f"action names repeat: {names}", path=path)
    return list(names)


def read_ours(root: Path) -> dict[str, Any]:
    """meta/wm_video.json, checked (buttons and deltas: lists of names; keymap: key → button), or {}."""
    path = ours_path(root)
    if not path.exists():
        return {}
    ours = read_json(path, "meta/wm_video.json")
    if not isinstance(ours, dict):
        raise DatasetError(
            f"meta/wm_video.json must hold a JSON object; found {type(ours).__name__}", path=path
        )
    for key in ("buttons", "deltas"):
        value = ours.get(key, [])
        if not (isinstance(value, list) and all(isinstance(n, str) for n in value)):
            raise DatasetError(f"{key!r} must be a list of action names; found {value!r:.60}", path=path)
    keymap = ours.get("keymap", {})
    if not (isinstance(keymap, dict) and all(isinstance(v, str) for v in keymap.values())):
        raise DatasetError(f"'keymap' must map key names to button names; found {keymap!r:.60}", path=path)
    if not isinstance(ours.get("source", {}), dict):
        raise DatasetError(f"'source' must be a JSON object; found {ours['source']!r:.60}", path=path)
    return ours


def declare_buttons(root: Path, buttons: list[str]) -> Path:
    """Write which actions are buttons into meta/wm_video.json (created if absent; its other keys
    kept). Buttons are the leading entries of the action vector; the rest are continuous."""
    from wm_video.fileio import atomic_write_json

    info = read_info(root)
    names = action_names(info, info_path(root))
    if buttons != names[: len(buttons)]:
        raise DatasetError(
            f"--buttons {','.join(buttons)}: buttons must be the first entries of the action vector, "
            f"in order; its entries are {names}",
            path=info_path(root),
        )
    ours = read_ours(root)
    keymap = {key: button for key, button in ours.get("keymap", {}).items() if button in buttons}
    ours.update(buttons=buttons, deltas=names[len(buttons) :], keymap=keymap)
    atomic_write_json(ours_path(root), ours)
    return ours_path(root)
