"""Reading LeRobot datasets (v3.0 and v2.1): episodes, their actions and their frames.

Opening a dataset reads only metadata; frames are decoded on demand (the training cache does it
once). Every inconsistency raises :class:`DatasetError` naming the episode and the file.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from wm_video.actions import ActionSpace
from wm_video.data import lerobot
from wm_video.data.video import iter_video_frames
from wm_video.errors import DatasetError


@dataclass(frozen=True)
class EpisodeRef:
    """Where one episode lives on disk."""

    index: int
    length: int
    data_path: Path
    video_path: Path
    from_timestamp: float  # where the episode starts inside its video file (v3.0 packs several)
    first_row: int  # global `index` of its first frame (dataset_from_index)
    end_row: int  # global `index` one past its last frame (dataset_to_index)
    policy: str | None = None  # who played it, where the episode table says ("explore", "hunt"…)


@lru_cache(maxsize=4)
def _read_parquet(path: Path, mtime_ns: int) -> pa.Table:
    try:
        return pq.read_table(path)
    except (OSError, pa.ArrowException) as exc:
        raise DatasetError(f"cannot read parquet file: {exc}", path=path) from exc


def read_parquet(path: Path, episode: int | None = None) -> pa.Table:
    """Read a parquet file (memoised by path and modification time)."""
    if not path.exists():
        raise DatasetError("data file is missing", path=path, episode=episode)
    return _read_parquet(path, path.stat().st_mtime_ns)


class EpisodeDataset:
    """A LeRobot dataset on disk."""

    def __init__(self, root: Path, *, video_key: str | None = None) -> None:
        self.root = Path(root)
        self.info = lerobot.read_info(self.root)
        self.version: str = self.info["codebase_version"]
        self.fps = float(self.info["fps"])
        keys = lerobot.video_keys(self.info)
        if video_key is not None and video_key not in keys:
            raise DatasetError(
                f"no video feature {video_key!r}; found {keys}", path=lerobot.info_path(self.root)
            )
        self.video_key = video_key or (
            lerobot.DEFAULT_VIDEO_KEY if lerobot.DEFAULT_VIDEO_KEY in keys else keys[0]
        )
        self.action_names = lerobot.action_names(self.info)
        self.ours: dict[str, Any] = lerobot.read_ours(self.root)
        self.episodes = self._read_v3_episodes() if self.version == "v3.0" else self._read_v2_episodes()
        self.inferred_buttons = not self.ours  # True: which actions are buttons was read off the data
        self.action_space = self._action_space() if self.ours else self._inferred_action_space()

    # -- metadata -------------------------------------------------------------------------------
    @property
    def frame_shape(self) -> tuple[int, int, int]:
        """(H, W, C) of the video feature as declared (LeRobot writes HWC or CHW; we report HWC)."""
        spec = self.info["features"][self.video_key]
        shape = [int(d) for d in spec["shape"]]
        names = spec.get("names") or []
        if names and names[0] in ("c", "channel", "channels"):
            return (shape[1], shape[2], shape[0])
        return (shape[0], shape[1], shape[2])

    @property
    def num_frames(self) -> int:
        return sum(ep.length for ep in self.episodes)

    def _action_space(self) -> ActionSpace:
        """Buttons and deltas as meta/wm_video.json declares them."""
        path = lerobot.ours_path(self.root)
        buttons = [str(b) for b in self.ours.get("buttons", [])]
        deltas = [str(d) for d in self.ours.get("deltas", [])]
        if buttons + deltas != self.action_names:
            raise DatasetError(
                f"meta/wm_video.json buttons {buttons} + deltas {deltas} do not match the action names "
                f"in meta/info.json {self.action_names}",
                path=path,
            )
        keymap = {str(k): str(v) for k, v in self.ours.get("keymap", {}).items()}
        unknown = sorted(set(keymap.values()) - set(buttons))
        if unknown:
            raise DatasetError(
                f"keymap names unknown action names {unknown}; buttons are {buttons}", path=path
            )
        return ActionSpace(tuple(buttons), tuple(deltas), keymap)

    def _inferred_action_space(self) -> ActionSpace:
        """A dataset without meta/wm_video.json (written by LeRobot itself): its leading action
        entries whose every value is 0 or 1, and whose names do not say continuous (``mouse_dx``,
        ``camera_x``, ``joint_3``...), are buttons; the rest are continuous deltas."""
        binary = np.ones(len(self.action_names), dtype=bool)
        for path in dict.fromkeys(ep.data_path for ep in self.episodes):
            table = read_parquet(path)
            if "action" not in table.column_names or len(table) == 0:
                continue
            values = table.column("action").combine_chunks().flatten().to_numpy(zero_copy_only=False)
            if values.size % len(self.action_names) == 0:
                rows = values.reshape(-1, len(self.action_names))
                binary &= ((rows == 0) | (rows == 1)).all(axis=0)
        buttons = 0
        while (
            buttons < len(binary) and binary[buttons] and not _sounds_continuous(self.action_names[buttons])
        ):
            buttons += 1
        return ActionSpace(tuple(self.action_names[:buttons]), tuple(self.action_names[buttons:]))

    def _read_v3_episodes(self) -> list[EpisodeRef]:
        meta_dir = self.root / "meta" / "episodes"
        files = sorted(meta_dir.glob("chunk-*/file-*.parquet"))
        if not files:
            if int(self.info.get("total_episodes", 0)) == 0:
                return []
            raise DatasetError("no episode metadata (meta/episodes/chunk-*/file-*.parquet)", path=meta_dir)
        rows = [row for path in files for row in read_parquet(path).to_pylist()]
        key = self.video_key
        needed = ["episode_index", "length", "data/chunk_index", "data/file_index", "dataset_from_index"]
        needed += [f"videos/{key}/chunk_index", f"videos/{key}/file_index", f"videos/{key}/from_timestamp"]
        episodes = []
        for row in sorted(rows, key=lambda r: r.get("episode_index", -1)):
            missing = [column for column in needed if row.get(column) is None]
            if missing:
                raise DatasetError(
                    f"episode metadata lacks {missing}", path=files[0], episode=row.get("episode_index")
                )
            try:
                episodes.append(self._v3_episode(row))
            except (TypeError, ValueError, OverflowError) as exc:
                raise DatasetError(
                    f"episode metadata holds a value of the wrong type ({exc})",
                    path=files[0],
                    episode=row.get("episode_index"),
                ) from exc
        return episodes

    def _v3_episode(self, row: dict[str, Any]) -> EpisodeRef:
        key, first = self.video_key, int(row["dataset_from_index"])
        return EpisodeRef(
            index=int(row["episode_index"]),
            length=int(row["length"]),
            data_path=self.root
            / self.info["data_path"].format(
                chunk_index=int(row["data/chunk_index"]), file_index=int(row["data/file_index"])
            ),
            video_path=self.root
            / self.info["video_path"].format(
                video_key=key,
                chunk_index=int(row[f"videos/{key}/chunk_index"]),
                file_index=int(row[f"videos/{key}/file_index"]),
            ),
            from_timestamp=float(row[f"videos/{key}/from_timestamp"]),
            first_row=first,
            end_row=int(row.get("dataset_to_index", first + int(row["length"]))),
            policy=str(row[lerobot.POLICY_COLUMN]) if row.get(lerobot.POLICY_COLUMN) else None,
        )

    def _read_v2_episodes(self) -> list[EpisodeRef]:
        path = self.root / "meta" / "episodes.jsonl"
        if not path.exists():
            raise DatasetError("meta/episodes.jsonl is missing", path=path)
        chunks_size = int(self.info.get("chunks_size", lerobot.CHUNKS_SIZE))
        episodes, first_row = [], 0
        for line_number, line in enumerate(path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                index, length = int(row["episode_index"]), int(row["length"])
            except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
                raise DatasetError(f"line {line_number} is not an episode record: {exc}", path=path) from exc
            chunk = index // chunks_size
            fields = {"episode_chunk": chunk, "episode_index": index, "video_key": self.video_key}
            episodes.append(
                EpisodeRef(
                    index=index,
                    length=length,
                    data_path=self.root / self.info["data_path"].format(**fields),
                    video_path=self.root / self.info["video_path"].format(**fields),
                    from_timestamp=0.0,
                    first_row=first_row,
                    end_row=first_row + length,
                )
            )
            first_row += length
        return sorted(episodes, key=lambda ep: ep.index)

    # -- per-episode data -------------------------------------------------------------------------
    def episode(self, index: int) -> EpisodeRef:
        for ep in self.episodes:
            if ep.index == index:
                return ep
        raise DatasetError(
            f"no episode {index}; the dataset holds {len(self.episodes)} episodes", path=self.root
        )

    def _rows(self, ep: EpisodeRef) -> pa.Table:
        table = read_parquet(ep.data_path, ep.index)
        if "episode_index" not in table.column_names:
            raise DatasetError(
                "data file lacks the 'episode_index' column", path=ep.data_path, episode=ep.index
            )
        column = table.column("episode_index").to_numpy()
        rows = np.flatnonzero(column == ep.index)
        if len(rows) != ep.length:
            raise DatasetError(
                f"metadata says {ep.length} frames but the data file has {len(rows)} rows",
                path=ep.data_path,
                episode=ep.index,
            )
        subset = table.take(pa.array(rows))
        if "frame_index" in subset.column_names:
            order = np.argsort(subset.column("frame_index").to_numpy(), kind="stable")
            subset = subset.take(pa.array(order))
        return subset

    def actions(self, ep: EpisodeRef) -> np.ndarray:
        """(T, A) float32 actions of an episode."""
        rows = self._rows(ep)
        if "action" not in rows.column_names:
            raise DatasetError("data file lacks the 'action' column", path=ep.data_path, episode=ep.index)
        column = rows.column("action").combine_chunks()
        size = len(self.action_names)
        values = column.flatten().to_numpy(zero_copy_only=False).astype(np.float32)
        if values.size != ep.length * size:
            raise DatasetError(
                f"actions hold {values.size} values; expected {ep.length} frames × {size} names",
                path=ep.data_path,
                episode=ep.index,
            )
        return values.reshape(ep.length, size)

    def timestamps(self, ep: EpisodeRef) -> np.ndarray:
        rows = self._rows(ep)
        if "timestamp" not in rows.column_names:
            raise DatasetError("data file lacks the 'timestamp' column", path=ep.data_path, episode=ep.index)
        return rows.column("timestamp").to_numpy().astype(np.float64)

    def iter_frames(self, ep: EpisodeRef) -> Iterator[np.ndarray]:
        """Decode an episode's frames in order, (H, W, 3) uint8 each; exactly ``ep.length`` of them."""
        count = 0
        for frame in iter_video_frames(
            ep.video_path, episode=ep.index, start_time=ep.from_timestamp, max_frames=ep.length
        ):
            count += 1
            yield frame
        if count != ep.length:
            raise DatasetError(
                f"video holds {count} frames for this episode but it has {ep.length} action rows "
                "(truncated video, or frames and actions of different lengths)",
                path=ep.video_path,
                episode=ep.index,
            )

    def frames(self, ep: EpisodeRef) -> np.ndarray:
        """(T, H, W, 3) uint8 frames of an episode."""
        return np.stack(list(self.iter_frames(ep)))


#: Words in an action's name that make it continuous even when its values happen to be 0 or 1.
_CONTINUOUS_WORDS = frozenset(
    "dx dy dz mouse camera delta axis joint pos position vel velocity x y z yaw pitch roll angle".split()
)


def _sounds_continuous(name: str) -> bool:
    return bool(_CONTINUOUS_WORDS & set(re.split(r"[^a-z0-9]+", name.lower())))


def open_dataset(root: Path, *, video_key: str | None = None) -> EpisodeDataset:
    """Open a LeRobot v3.0 or v2.1 dataset for reading."""
    return EpisodeDataset(root, video_key=video_key)
