"""The engine's ground truth beside the frames: stored as LeRobot features, read back, cached.

A dataset collected from ViZDoom (:mod:`wm_video.sources.truth`) holds, per frame:

- ``observation.state`` (float32 vector: x, y, angle, health, ammo, kills), ``next.reward``
  (float32, what action t earned) and ``next.done`` (bool, action t ended the episode): LeRobot's
  own names for these, in the per-frame parquet file beside ``action``;
- ``observation.labels``: the class map of every frame as a lossless (libx264rgb, qp 0) mp4 of
  the footage's size, class id c drawn as grey level ``LEVEL_STEP`` · c so that any player shows
  it; an ordinary LeRobot video feature with its own ``videos/observation.labels/...`` files;
- ``labels/chunk-XXX/file-XXX.parquet`` (ours, named in ``meta/wm_video.json``): one row per
  labelled object and frame: frame_index, object_id, name, category, class_id and its box in
  frame pixels.

``meta/wm_video.json`` lists the classes and state names under ``ground_truth``. Training reads
only the frames and actions and never looks at these. :func:`load_truth_cache` decodes the class
maps once into ``<root>/.cache/truth-<size>/`` (rows aligned with the frame cache, rebuilt
with it), which evaluation reads.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from wm_video.data import lerobot
from wm_video.data.cache import (
    MANIFEST_FILE,
    build_folder,
    build_lock,
    dataset_fingerprint,
    default_cache_dir,
)
from wm_video.data.reader import EpisodeDataset, EpisodeRef, open_dataset, read_parquet
from wm_video.data.video import VideoEncoder, VideoSettings, iter_video_frames
from wm_video.errors import DatasetError, InputError
from wm_video.fileio import atomic_write, atomic_write_json
from wm_video.sources.truth import CLASSES, OBJECT_COLUMNS, STATE_NAMES, FrameTruth

LABELS_KEY = "observation.labels"
STATE_KEY = "observation.state"
REWARD_KEY = "next.reward"
DONE_KEY = "next.done"
OBJECTS_PATH = "labels/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
LEVEL_STEP = 28  # grey level of class id 1 in the labels video (8 → 224)
LABELS_VIDEO = VideoSettings(codec="lossless")
TRUTH_CACHE_VERSION = 1
_OBJECT_TYPES = (pa.int64(), pa.string(), pa.string(), pa.int8(), *[pa.float32()] * 4)


# -- writing ---------------------------------------------------------------------------------------
def truth_features(frame_shape: tuple[int, int, int], fps: float) -> dict[str, Any]:
    """The meta/info.json features a dataset with ground truth adds."""
    height, width, _ = frame_shape
    fps_value: float | int = int(fps) if float(fps).is_integer() else float(fps)
    return {
        STATE_KEY: {"dtype": "float32", "shape": [len(STATE_NAMES)], "names": list(STATE_NAMES)},
        REWARD_KEY: lerobot.scalar_feature("float32"),
        DONE_KEY: lerobot.scalar_feature("bool"),
        LABELS_KEY: {
            "dtype": "video",
            "shape": [height, width, 3],
            "names": ["height", "width", "channels"],
            "info": {
                "video.height": height,
                "video.width": width,
                "video.codec": "h264",
                "video.pix_fmt": LABELS_VIDEO.pix_fmt,
                "video.is_depth_map": False,
                "video.fps": fps_value,
                "video.channels": 3,
                "has_audio": False,
            },
        },
    }


def truth_spec() -> dict[str, Any]:
    """What meta/wm_video.json says about the ground truth (under "ground_truth")."""
    return {
        "classes": list(CLASSES),
        "state": list(STATE_NAMES),
        "labels_video": LABELS_KEY,
        "label_level_step": LEVEL_STEP,
        "objects_path": OBJECTS_PATH,
        "object_columns": list(OBJECT_COLUMNS),
    }


def has_truth(info: dict[str, Any]) -> bool:
    """Whether a dataset's meta/info.json declares the ground-truth features."""
    features = info.get("features", {})
    return all(key in features for key in (STATE_KEY, REWARD_KEY, DONE_KEY, LABELS_KEY))


@dataclass(frozen=True)
class EpisodeTruth:
    """One episode's ground truth, its labels video already encoded (in a staging folder)."""

    state: np.ndarray  # (T, len(STATE_NAMES)) float32
    reward: np.ndarray  # (T,) float32: reward of action t
    done: np.ndarray  # (T,) bool: action t ended the episode
    labels_video: Path
    objects: pa.Table  # OBJECT_COLUMNS + frame_index

    def __len__(self) -> int:
        return len(self.state)


class TruthRecorder:
    """Streams one episode's class maps into a lossless mp4 and gathers the rest."""

    def __init__(self, labels_video: Path, fps: float, size: int) -> None:
        self.path = Path(labels_video)
        self._encoder = VideoEncoder(self.path, fps=fps, width=size, height=size, settings=LABELS_VIDEO)
        self._states: list[np.ndarray] = []
        self._objects: list[tuple[Any, ...]] = []
        self.rewards: list[float] = []
        self.dones: list[bool] = []

    def add_frame(self, truth: FrameTruth) -> None:
        self._encoder.write(class_map_to_rgb(truth.classes))
        self._objects += [(len(self._states), *row) for row in truth.objects]
        self._states.append(truth.state)

    def add_step(self, reward: float, done: bool) -> None:
        self.rewards.append(float(reward))
        self.dones.append(bool(done))

    def finish(self) -> EpisodeTruth:
        """Close the video; one reward and done per frame are required."""
        self._encoder.close()
        frames = len(self._states)
        if len(self.rewards) != frames:
            raise RuntimeError(f"ground truth of {frames} frames has {len(self.rewards)} rewards")
        width = len(OBJECT_COLUMNS) + 1
        columns: list[Any] = [[row[i] for row in self._objects] for i in range(width)]
        objects = pa.table(
            {
                name: pa.array(list(values), kind)
                for name, values, kind in zip(
                    ("frame_index", *OBJECT_COLUMNS), columns, (pa.int64(), *_OBJECT_TYPES), strict=True
                )
            }
        )
        return EpisodeTruth(
            np.stack(self._states).astype(np.float32),
            np.asarray(self.rewards, dtype=np.float32),
            np.asarray(self.dones, dtype=bool),
            self.path,
            objects,
        )

    def discard(self) -> None:
        self._encoder.close()
        self.path.unlink(missing_ok=True)


def class_map_to_rgb(classes: np.ndarray) -> np.ndarray:
    """(H, W) class ids → (H, W, 3) uint8 grey frame for the labels video."""
    grey = (classes.astype(np.uint16) * LEVEL_STEP).clip(0, 255).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=2)


def rgb_to_class_map(frame: np.ndarray) -> np.ndarray:
    """Inverse of :func:`class_map_to_rgb` (rounds, so a lossy re-encode still reads right)."""
    return np.rint(frame[..., 0].astype(np.float32) / LEVEL_STEP).astype(np.uint8)


def truth_columns(truth: EpisodeTruth) -> dict[str, pa.Array]:
    """Per-frame parquet columns of one episode's ground truth."""
    length, size = truth.state.shape
    offsets = pa.array(np.arange(0, (length + 1) * size, size, dtype=np.int32))
    return {
        STATE_KEY: pa.ListArray.from_arrays(offsets, pa.array(truth.state.reshape(-1), pa.float32())),
        REWARD_KEY: pa.array(truth.reward, pa.float32()),
        DONE_KEY: pa.array(truth.done, pa.bool_()),
    }


def place_truth(root: Path, truth: EpisodeTruth, chunk: int, file: int, fps: float) -> dict[str, Any]:
    """Move the labels video into place and write the object table; returns the episode-table
    columns of the labels video."""
    video = Path(root) / lerobot.VIDEO_PATH_V3.format(
        video_key=LABELS_KEY, chunk_index=chunk, file_index=file
    )
    video.parent.mkdir(parents=True, exist_ok=True)
    os.replace(truth.labels_video, video)
    objects = Path(root) / OBJECTS_PATH.format(chunk_index=chunk, file_index=file)
    objects.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(objects, lambda tmp: pq.write_table(truth.objects, tmp))
    return {
        f"videos/{LABELS_KEY}/chunk_index": chunk,
        f"videos/{LABELS_KEY}/file_index": file,
        f"videos/{LABELS_KEY}/from_timestamp": 0.0,
        f"videos/{LABELS_KEY}/to_timestamp": len(truth) / fps,
    }


# -- reading ---------------------------------------------------------------------------------------
def _rows(ds: EpisodeDataset, ep: EpisodeRef) -> pa.Table:
    table = read_parquet(ep.data_path, ep.index)
    rows = np.flatnonzero(table.column("episode_index").to_numpy() == ep.index)
    subset = table.take(pa.array(rows))
    missing = [k for k in (STATE_KEY, REWARD_KEY, DONE_KEY) if k not in subset.column_names]
    if missing:
        raise DatasetError(
            f"data file lacks the ground-truth columns {missing}", path=ep.data_path, episode=ep.index
        )
    return subset.take(pa.array(np.argsort(subset.column("frame_index").to_numpy(), kind="stable")))


def read_state(ds: EpisodeDataset, ep: EpisodeRef) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(state (T, S) float32, reward (T,) float32, done (T,) bool) of an episode."""
    rows = _rows(ds, ep)
    values = rows.column(STATE_KEY).combine_chunks().flatten().to_numpy(zero_copy_only=False)
    if values.size != ep.length * len(STATE_NAMES):
        raise DatasetError(
            f"{STATE_KEY} holds {values.size} values; expected {ep.length} frames × {len(STATE_NAMES)}",
            path=ep.data_path,
            episode=ep.index,
        )
    reward = rows.column(REWARD_KEY).to_numpy().astype(np.float32)
    done = rows.column(DONE_KEY).to_numpy(zero_copy_only=False).astype(bool)
    return values.reshape(ep.length, -1).astype(np.float32), reward, done


def labels_video_path(ds: EpisodeDataset, ep: EpisodeRef) -> Path:
    chunk, file = divmod(ep.index, lerobot.CHUNKS_SIZE)
    return ds.root / lerobot.VIDEO_PATH_V3.format(video_key=LABELS_KEY, chunk_index=chunk, file_index=file)


def iter_class_maps(ds: EpisodeDataset, ep: EpisodeRef) -> Iterator[np.ndarray]:
    """The class maps (H, W) uint8 of an episode, exactly ``ep.length`` of them."""
    path, count = labels_video_path(ds, ep), 0
    for frame in iter_video_frames(path, episode=ep.index, max_frames=ep.length):
        count += 1
        yield rgb_to_class_map(frame)
    if count != ep.length:
        raise DatasetError(
            f"labels video holds {count} frames for an episode of {ep.length}", path=path, episode=ep.index
        )


def read_objects(ds: EpisodeDataset, ep: EpisodeRef) -> pa.Table:
    """The object table of an episode (one row per labelled object and frame)."""
    chunk, file = divmod(ep.index, lerobot.CHUNKS_SIZE)
    return read_parquet(ds.root / OBJECTS_PATH.format(chunk_index=chunk, file_index=file), ep.index)


def truth_bytes_per_frame(ds: EpisodeDataset) -> dict[str, float]:
    """Bytes per frame on disk: the labels videos, the object tables, the image videos (for scale)."""
    frames = max(ds.num_frames, 1)

    def size(paths: list[Path]) -> float:
        return sum(p.stat().st_size for p in paths if p.is_file()) / frames

    return {
        "labels_video": size(list((ds.root / "videos" / LABELS_KEY).rglob("*.mp4"))),
        "objects": size(list((ds.root / "labels").rglob("*.parquet"))),
        "frames_video": size(list((ds.root / "videos" / ds.video_key).rglob("*.mp4"))),
    }


# -- the truth cache ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class TruthCache:
    """Decoded ground truth, rows aligned with the frame cache of the same dataset and size."""

    path: Path
    classes: np.ndarray  # (N, size, size) uint8 class ids (memmap)
    state: np.ndarray  # (N, S) float32
    reward: np.ndarray  # (N,) float32
    done: np.ndarray  # (N,) bool
    class_names: tuple[str, ...]
    state_names: tuple[str, ...]
    fingerprint: str


def _open_truth(path: Path, fingerprint: str) -> TruthCache | None:
    try:
        manifest = json.loads((path / MANIFEST_FILE).read_text())
        if manifest.get("version") != TRUTH_CACHE_VERSION or manifest.get("fingerprint") != fingerprint:
            return None
        count, size = int(manifest["num_frames"]), int(manifest["size"])
        classes = np.memmap(path / "classes.u8", dtype=np.uint8, mode="r", shape=(count, size, size))
        return TruthCache(
            path,
            classes,
            np.load(path / "state.npy"),
            np.load(path / "reward.npy"),
            np.load(path / "done.npy"),
            tuple(manifest["classes"]),
            tuple(manifest["state"]),
            fingerprint,
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _decode_truth(tmp: Path, root: Path, size: int, fingerprint: str, progress: bool) -> None:
    ds = open_dataset(root)
    count = ds.num_frames
    classes = np.memmap(tmp / "classes.u8", dtype=np.uint8, mode="w+", shape=(count, size, size))
    state = np.empty((count, len(STATE_NAMES)), dtype=np.float32)
    reward, done = np.empty(count, dtype=np.float32), np.empty(count, dtype=bool)
    row = 0
    with tqdm(total=count, desc="decoding the ground truth", unit="frame", disable=not progress) as bar:
        for ep in ds.episodes:
            state[row : row + ep.length], reward[row : row + ep.length], done[row : row + ep.length] = (
                read_state(ds, ep)
            )
            for t, classes_t in enumerate(iter_class_maps(ds, ep)):
                if classes_t.shape != (size, size):
                    classes_t = cv2.resize(classes_t, (size, size), interpolation=cv2.INTER_NEAREST)
                classes[row + t] = classes_t
            row += ep.length
            bar.update(ep.length)
    classes.flush()
    del classes
    for name, array in (("state", state), ("reward", reward), ("done", done)):
        np.save(tmp / f"{name}.npy", array)
    spec = ds.ours.get("ground_truth", {})
    atomic_write_json(
        tmp / MANIFEST_FILE,
        {
            "version": TRUTH_CACHE_VERSION,
            "fingerprint": fingerprint,
            "size": size,
            "num_frames": count,
            "classes": spec.get("classes", list(CLASSES)),
            "state": spec.get("state", list(STATE_NAMES)),
        },
    )


def load_truth_cache(
    root: Path, *, size: int, cache_root: Path | None = None, progress: bool = True
) -> TruthCache | None:
    """The dataset's ground truth at ``size`` (decoded once into ``truth-<size>/`` beside the frame
    cache: ``<root>/.cache/`` unless ``cache_root`` or ``$WM_VIDEO_CACHE_DIR`` moves it), or None when
    the dataset has none (Atari, imported footage, data collected before it existed)."""
    root = Path(root)
    if not has_truth(lerobot.read_info(root)):
        return None
    target = default_cache_dir(root, size, cache_root).parent / f"truth-{size}"
    fingerprint = dataset_fingerprint(root, size)
    if (cache := _open_truth(target, fingerprint)) is not None:
        return cache
    with build_lock(target):
        if (cache := _open_truth(target, fingerprint)) is None:
            build_folder(
                target, "truth cache", lambda tmp: _decode_truth(tmp, root, size, fingerprint, progress)
            )
            cache = _open_truth(target, fingerprint)
    if cache is None:  # pragma: no cover - only if the folder is changed under us
        raise InputError(f"{target}: the truth cache just built cannot be opened")
    return cache


# -- validation (``wm-video inspect``) ---------------------------------------------------------------
def check_truth(ds: EpisodeDataset, *, decode: bool) -> tuple[list[str], list[str]]:
    """(summary lines, problems) of a dataset's ground truth; ([], []) when it has none."""
    if not has_truth(ds.info):
        return [], []
    problems: list[str] = []
    frames_with: dict[int, int] = {}
    for ep in ds.episodes:
        try:
            read_state(ds, ep)
            objects = read_objects(ds, ep)
            if decode:
                sum(1 for _ in iter_class_maps(ds, ep))  # raises when the count differs
            elif not labels_video_path(ds, ep).is_file():
                raise DatasetError(
                    "labels video is missing", path=labels_video_path(ds, ep), episode=ep.index
                )
        except (DatasetError, OSError, pa.ArrowException) as exc:
            problems.append(str(exc))
            continue
        pairs = set(
            zip(
                objects.column("frame_index").to_pylist(), objects.column("class_id").to_pylist(), strict=True
            )
        )
        for _, class_id in pairs:
            frames_with[class_id] = frames_with.get(class_id, 0) + 1
    sizes = truth_bytes_per_frame(ds)
    classes = ds.ours.get("ground_truth", {}).get("classes", list(CLASSES))
    shares = ", ".join(
        f"{classes[k]} {100 * n / max(ds.num_frames, 1):.0f} %"
        for k, n in sorted(frames_with.items())
        if k < len(classes)
    )
    lines = [
        f"ground truth  {', '.join(STATE_NAMES)}; reward; done; labels of {len(classes)} classes "
        f"({sizes['labels_video']:.0f} + {sizes['objects']:.0f} bytes per frame: labels video + object table)",
        f"  frames with a labelled {shares or 'object: none'}",
    ]
    return lines, problems
