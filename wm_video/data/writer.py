"""Writing LeRobot v3.0 datasets one episode at a time, safely.

An episode is committed in this order: its video is moved into place, its parquet file is
written beside it (atomically), then the episode table (meta/episodes/...parquet) gains a row —
that write is the commit point — and finally info.json and stats.json are refreshed. A crash
at any moment loses at most the episode being committed; files of uncommitted episodes are
overwritten when the writer next opens the dataset. Opening an existing dataset appends to it,
after checking that fps, frame shape and action names match.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from wm_video.actions import ActionSpace
from wm_video.data import lerobot, truth
from wm_video.data.video import VideoEncoder, VideoSettings, encode_video, probe_video
from wm_video.errors import DatasetError, InputError
from wm_video.fileio import atomic_write, atomic_write_json, signals_deferred

STAGING_DIR = ".staging"


def _write_parquet(path: Path, table: pa.Table) -> None:
    atomic_write(path, lambda tmp: pq.write_table(table, tmp))


def episodes_table(rows: list[dict[str, Any]]) -> pa.Table:
    """The episode table from its rows; a column some rows lack (an episode appended by a program
    that records no policy, or before it did) is null there rather than dropped."""
    columns = list(dict.fromkeys(key for row in rows for key in row))
    return pa.Table.from_pylist([{key: row.get(key) for key in columns} for row in rows])


def tasks_table(tasks: list[str]) -> pa.Table:
    """meta/tasks.parquet as LeRobot reads it with pandas: the task string is the index."""
    table = pa.table(
        {"task_index": pa.array(range(len(tasks)), pa.int64()), "task": pa.array(tasks, pa.string())}
    )
    pandas_meta = {
        "index_columns": ["task"],
        "column_indexes": [],
        "columns": [
            {
                "name": "task_index",
                "field_name": "task_index",
                "pandas_type": "int64",
                "numpy_type": "int64",
                "metadata": None,
            },
            {
                "name": "task",
                "field_name": "task",
                "pandas_type": "unicode",
                "numpy_type": "object",
                "metadata": None,
            },
        ],
        "creator": {"library": "wm-video", "version": "1"},
        "pandas_version": "2.2.0",
    }
    return table.replace_schema_metadata({b"pandas": json.dumps(pandas_meta).encode()})


def frames_table(
    actions: np.ndarray,
    *,
    fps: float,
    episode_index: int,
    first_index: int,
    extra: dict[str, pa.Array] | None = None,
) -> pa.Table:
    """Per-frame rows of one episode (``extra``: more per-frame columns, e.g. the ground truth)."""
    length, size = actions.shape
    flat = pa.array(actions.astype(np.float32).reshape(-1), pa.float32())
    offsets = pa.array(np.arange(0, (length + 1) * size, size, dtype=np.int32))
    return pa.table(
        {
            "action": pa.ListArray.from_arrays(offsets, flat),
            **(extra or {}),
            "timestamp": pa.array((np.arange(length) / fps).astype(np.float32)),
            "frame_index": pa.array(np.arange(length, dtype=np.int64)),
            "episode_index": pa.array(np.full(length, episode_index, dtype=np.int64)),
            "index": pa.array(np.arange(first_index, first_index + length, dtype=np.int64)),
            "task_index": pa.array(np.zeros(length, dtype=np.int64)),
        }
    )


class DatasetWriter:
    """Create a v3.0 dataset, or open one for appending episodes."""

    def __init__(
        self,
        root: Path,
        *,
        fps: float,
        action_space: ActionSpace,
        frame_shape: tuple[int, int, int],
        task: str = "",
        video: VideoSettings | None = None,
        video_key: str = lerobot.DEFAULT_VIDEO_KEY,
        source_info: dict[str, Any] | None = None,
        ground_truth: bool = False,
        columns: dict[str, dict[str, Any]] | None = None,
    ) -> None:
        self.root = Path(root)
        #: More per-frame columns each episode brings (name → its meta/info.json feature), e.g. a
        #: dreamed dataset's predicted ``next.reward``; not for the ground truth's own columns.
        self.columns = dict(columns or {})
        self.ground_truth = ground_truth  # episodes carry the engine's ground truth (data/truth.py)
        self.fps = float(fps)
        self.action_space = action_space
        self.frame_shape = tuple(int(d) for d in frame_shape)
        self.video = video or VideoSettings()
        self.video_key = video_key
        if len(self.frame_shape) != 3 or self.frame_shape[2] != 3:
            raise InputError(f"frame_shape must be (H, W, 3); got {frame_shape}")
        if self.root.exists() and not self.root.is_dir():
            raise InputError(f"{self.root} exists and is not a folder")
        self.root.mkdir(parents=True, exist_ok=True)
        if lerobot.info_path(self.root).exists():
            self._open_existing()
        elif any(p.name != STAGING_DIR for p in self.root.iterdir()):
            raise InputError(
                f"{self.root} is not empty and holds no dataset (meta/info.json); choose a new folder"
            )
        else:
            self._create(task, source_info or {})
        shutil.rmtree(self.staging_dir, ignore_errors=True)
        self.staging_dir.mkdir(parents=True)

    # -- setup --------------------------------------------------------------------------------
    def _create(self, task: str, source_info: dict[str, Any]) -> None:
        self.info = lerobot.make_info(
            fps=self.fps,
            video_key=self.video_key,
            frame_shape=self.frame_shape,  # type: ignore[arg-type]
            action_names=list(self.action_space.names),
            codec=self.video.codec_name,
            pix_fmt=self.video.pix_fmt,
        )
        if self.ground_truth:
            self.info["features"].update(truth.truth_features(self.frame_shape, self.fps))  # type: ignore[arg-type]
        self.info["features"].update(self.columns)
        self.episodes: list[dict[str, Any]] = []
        self.action_stats: dict[str, np.ndarray] | None = None
        self.task = task
        _write_parquet(self.root / "meta" / "tasks.parquet", tasks_table([task]))
        atomic_write_json(
            lerobot.ours_path(self.root),
            {
                "buttons": list(self.action_space.buttons),
                "deltas": list(self.action_space.deltas),
                "keymap": dict(self.action_space.default_keymap),
                "source": source_info,
                "video": {"codec": self.video.codec, "crf": self.video.crf, "gop": self.video.gop},
                **({"ground_truth": truth.truth_spec()} if self.ground_truth else {}),
            },
        )
        atomic_write_json(lerobot.info_path(self.root), self.info)

    def _open_existing(self) -> None:
        info = lerobot.read_info(self.root)
        path = lerobot.info_path(self.root)
        if info["codebase_version"] != lerobot.CODEBASE_VERSION:
            raise DatasetError(f"can only append to {lerobot.CODEBASE_VERSION} datasets", path=path)
        problems = []
        if abs(float(info["fps"]) - self.fps) > 1e-6:
            problems.append(f"fps {info['fps']} (this run: {self.fps:g})")
        names = lerobot.action_names(info)
        if names != list(self.action_space.names):
            problems.append(f"action names {names} (this run: {list(self.action_space.names)})")
        shape = tuple(info["features"].get(self.video_key, {}).get("shape", ()))
        if shape != self.frame_shape:
            problems.append(f"{self.video_key} shape {list(shape)} (this run: {list(self.frame_shape)})")
        stored = (
            lerobot.read_json(lerobot.ours_path(self.root), "meta/wm_video.json").get("video")
            if (lerobot.ours_path(self.root).exists())
            else None
        )
        wanted = {"codec": self.video.codec, "crf": self.video.crf, "gop": self.video.gop}
        if stored and stored != wanted:
            problems.append(f"video settings {stored} (this run: {wanted})")
        if truth.has_truth(info) != self.ground_truth:
            problems.append(
                f"ground truth {'recorded' if truth.has_truth(info) else 'absent'} "
                f"(this run: {'records it' if self.ground_truth else 'has none'})"
            )
        missing = sorted(set(self.columns) - set(info["features"]))
        if missing:
            problems.append(f"no columns {missing} (this run writes them)")
        if problems:
            raise DatasetError("cannot append, the dataset differs: " + "; ".join(problems), path=path)
        self.info = info
        tasks = self.root / "meta" / "tasks.parquet"
        self.task = str(pq.read_table(tasks).column("task")[0]) if tasks.exists() else ""
        meta = self.root / lerobot.EPISODES_META_PATH
        self.episodes = pq.read_table(meta).to_pylist() if meta.exists() else []
        stats_path = self.root / "meta" / "stats.json"
        stats = (
            lerobot.read_json(stats_path, "meta/stats.json").get("action") if stats_path.exists() else None
        )
        self.action_stats = {k: np.asarray(v, dtype=np.float64) for k, v in stats.items()} if stats else None
        if (info.get("total_episodes"), info.get("total_frames")) != (self.num_episodes, self.num_frames):
            self._repair()

    # -- public API -----------------------------------------------------------------------------
    @property
    def num_episodes(self) -> int:
        return len(self.episodes)

    @property
    def num_frames(self) -> int:
        return int(self.episodes[-1]["dataset_to_index"]) if self.episodes else 0

    @property
    def staging_dir(self) -> Path:
        return self.root / STAGING_DIR

    def staging_path(self, episode_index: int) -> Path:
        """Where a worker may encode the mp4 of ``episode_index`` before it is committed."""
        return self.staging_dir / f"episode_{episode_index:06d}.mp4"

    def write_episode(
        self, frames: np.ndarray, actions: np.ndarray, columns: dict[str, np.ndarray] | None = None
    ) -> int:
        """Encode and commit one episode (with the writer's extra ``columns``, one value per frame); returns its index."""
        if len(frames) != len(actions):
            raise InputError(
                f"an episode needs as many actions as frames; got {len(frames)} frames, {len(actions)} actions"
            )
        staged = self.staging_path(self.num_episodes)
        encode_video(staged, frames, self.fps, self.video)
        return self.commit_episode(staged, actions, columns=columns)

    def recorder(self) -> EpisodeRecorder:
        """A streaming recorder for one episode (frames arrive one at a time)."""
        return EpisodeRecorder(self)

    def commit_episode(
        self,
        video_file: Path,
        actions: np.ndarray,
        ground_truth: truth.EpisodeTruth | None = None,
        columns: dict[str, np.ndarray] | None = None,
        *,
        policy: str = "",
    ) -> int:
        """Move an encoded episode video into the dataset with its actions (and, in a dataset that
        records it, its ground truth; the writer's extra ``columns``); returns its index. ``policy``
        (who played the episode) goes into its row of the episode table as "policy"."""
        actions = np.asarray(actions, dtype=np.float32)
        columns = columns or {}
        if set(columns) != set(self.columns) or any(len(v) != len(actions) for v in columns.values()):
            raise InputError(
                f"{self.root}: each episode brings the columns {sorted(self.columns)}, one value per frame; "
                f"got {sorted(columns)} for {len(actions)} frames"
            )
        if (ground_truth is not None) != self.ground_truth or (
            ground_truth is not None and len(ground_truth) != len(actions)
        ):
            raise InputError(
                f"{self.root}: the dataset {'records' if self.ground_truth else 'has no'} ground truth; "
                f"this episode has {'none' if ground_truth is None else f'{len(ground_truth)} frames of it'}"
            )
        self.action_space.check(actions)
        index = self.num_episodes
        probe = probe_video(video_file, episode=index)
        if (probe.height, probe.width) != self.frame_shape[:2]:
            raise DatasetError(
                f"video is {probe.width}x{probe.height}, dataset frames are "
                f"{self.frame_shape[1]}x{self.frame_shape[0]}",
                path=video_file,
                episode=index,
            )
        if probe.frames is not None and probe.frames != len(actions):
            raise DatasetError(
                f"video has {probe.frames} frames but {len(actions)} actions were given",
                path=video_file,
                episode=index,
            )
        chunk, file = divmod(index, lerobot.CHUNKS_SIZE)
        video_path = self.root / lerobot.VIDEO_PATH_V3.format(
            video_key=self.video_key, chunk_index=chunk, file_index=file
        )
        data_path = self.root / lerobot.DATA_PATH_V3.format(chunk_index=chunk, file_index=file)
        video_path.parent.mkdir(parents=True, exist_ok=True)
        first, length = self.num_frames, len(actions)
        row = {
            "episode_index": index,
            "tasks": [self.task],
            "length": length,
            "data/chunk_index": chunk,
            "data/file_index": file,
            "dataset_from_index": first,
            "dataset_to_index": first + length,
            f"videos/{self.video_key}/chunk_index": chunk,
            f"videos/{self.video_key}/file_index": file,
            f"videos/{self.video_key}/from_timestamp": 0.0,
            f"videos/{self.video_key}/to_timestamp": length / self.fps,
            "meta/episodes/chunk_index": 0,
            "meta/episodes/file_index": 0,
            **({lerobot.POLICY_COLUMN: policy} if policy else {}),
        }
        with signals_deferred():  # Ctrl-C or SIGTERM wait until the metadata agrees again
            os.replace(video_file, video_path)
            if ground_truth is not None:
                row.update(truth.place_truth(self.root, ground_truth, chunk, file, self.fps))
            extra = truth.truth_columns(ground_truth) if ground_truth is not None else {}
            extra.update({name: pa.array(np.asarray(values)) for name, values in columns.items()})
            _write_parquet(
                data_path,
                frames_table(actions, fps=self.fps, episode_index=index, first_index=first, extra=extra),
            )
            _write_parquet(self.root / lerobot.EPISODES_META_PATH, episodes_table([*self.episodes, row]))
            self.episodes.append(row)  # committed: the episode table on disk holds it
            self._update_stats(actions)
            self._write_info()
        return index

    def close(self) -> None:
        shutil.rmtree(self.staging_dir, ignore_errors=True)

    def __enter__(self) -> DatasetWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- helpers --------------------------------------------------------------------------------
    def _write_info(self) -> None:
        self.info.update(
            total_episodes=self.num_episodes,
            total_frames=self.num_frames,
            splits={"train": f"0:{self.num_episodes}"},
        )
        atomic_write_json(lerobot.info_path(self.root), self.info)

    def _repair(self) -> None:
        """A process killed mid-commit (SIGKILL, power loss) can leave info.json and stats.json one
        episode behind the episode table, which is the commit point: bring them up to date."""
        self.action_stats = None
        for row in self.episodes:
            chunk, file = int(row["data/chunk_index"]), int(row["data/file_index"])
            table = pq.read_table(self.root / lerobot.DATA_PATH_V3.format(chunk_index=chunk, file_index=file))
            values = table.column("action").combine_chunks().flatten().to_numpy(zero_copy_only=False)
            self._update_stats(values.reshape(len(table), -1).astype(np.float32))
        self._write_info()

    def _update_stats(self, actions: np.ndarray) -> None:
        """Merge this episode's action statistics into meta/stats.json (exact in float64)."""
        values = actions.astype(np.float64)
        count = float(len(values))
        new = {"sum": values.sum(0), "sumsq": (values**2).sum(0), "min": values.min(0), "max": values.max(0)}
        old = self.action_stats
        if old is not None:
            old_count = float(old["count"][0])
            old_sum = old["mean"] * old_count
            old_sumsq = (old["std"] ** 2 + old["mean"] ** 2) * old_count
            new = {
                "sum": new["sum"] + old_sum,
                "sumsq": new["sumsq"] + old_sumsq,
                "min": np.minimum(new["min"], old["min"]),
                "max": np.maximum(new["max"], old["max"]),
            }
            count += old_count
        mean = new["sum"] / count
        std = np.sqrt(np.maximum(new["sumsq"] / count - mean**2, 0.0))
        self.action_stats = {
            "mean": mean,
            "std": std,
            "min": new["min"],
            "max": new["max"],
            "count": np.array([count]),
        }
        atomic_write_json(
            self.root / "meta" / "stats.json",
            {"action": {k: [float(x) for x in v] for k, v in self.action_stats.items()}},
        )


class EpisodeRecorder:
    """Streams one episode to the staging area; ``finish()`` commits it, ``discard()`` drops it."""

    def __init__(self, writer: DatasetWriter) -> None:
        self.writer = writer
        self.actions: list[np.ndarray] = []
        self._encoder: VideoEncoder | None = None
        self._path = writer.staging_path(writer.num_episodes)

    def __len__(self) -> int:
        return len(self.actions)

    def add(self, frame: np.ndarray, action: np.ndarray) -> None:
        if self._encoder is None:
            height, width = self.writer.frame_shape[:2]
            self._encoder = VideoEncoder(
                self._path, fps=self.writer.fps, width=width, height=height, settings=self.writer.video
            )
        self._encoder.write(frame)
        self.actions.append(np.asarray(action, dtype=np.float32))

    def finish(self) -> int | None:
        """Commit the episode; returns its index, or None when it holds no frame."""
        if self._encoder is None:
            return None
        self._encoder.close()
        self._encoder = None
        return self.writer.commit_episode(self._path, np.stack(self.actions))

    def discard(self) -> None:
        if self._encoder is not None:
            self._encoder.close()
            self._encoder = None
        self._path.unlink(missing_ok=True)
        self.actions.clear()
