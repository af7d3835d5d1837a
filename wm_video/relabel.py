"""``wm-video collect --relabel DIR``: recover the ground truth of a dataset recorded without it.

ViZDoom is deterministic for a seed and an action sequence, and ``collect`` (and ``record``)
give episode i the seed ``seed + i`` and store every action. So an episode can be replayed on
the engine with the ground truth switched on (:mod:`wm_video.sources.truth`) — but only if the
replay shows exactly the recorded frames, which is checked for every frame before anything is
written:

- lossless footage is compared pixel for pixel; H.264 footage is compared after encoding the
  replay with the dataset's own settings (x264 is deterministic for the same frames, settings
  and one thread), so "exact" means the same decoded pixels;
- the replayed episode must also end where the recording ended (the game over at the same step,
  or still running at the recorded length).

When any episode differs nothing is written and the error names the episodes and frames that
differ. Datasets collected before the engine's reset was made independent of the episode before
it (a death left the next episode's weapon animation shifted for its first 1–6 frames) differ
in about one episode of five and cannot be relabelled; collect them again, which now records
the ground truth. Otherwise the truth is committed episode by episode (labels video, object
table, the data file rewritten with the new columns, each atomically), then the episode table,
``meta/wm_video.json`` and last ``meta/info.json``, whose new features are the commit point: an
interrupted relabel leaves a dataset that reads as before and can be relabelled again.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from wm_video.data import lerobot, truth
from wm_video.data.reader import EpisodeDataset, EpisodeRef, open_dataset, read_parquet
from wm_video.data.video import VideoSettings, encode_video, read_video
from wm_video.errors import DatasetError, InputError
from wm_video.fileio import atomic_write, atomic_write_json, signals_deferred
from wm_video.sources import TRUTH_SOURCES, Source, make_source

STAGING = ".relabel"


@dataclass(frozen=True)
class RelabelResult:
    episodes: int
    frames: int
    seconds: float
    bytes_per_frame: dict[str, float]


@dataclass(frozen=True)
class _Mismatch:
    episode: int
    frames: list[int]  # frame indices that differ
    max_difference: int  # largest |Δ| in a pixel channel
    note: str = ""  # e.g. the episode ended at another step


def _engine(ds: EpisodeDataset) -> tuple[Source, int]:
    """The recorded engine with ground truth on, and the dataset's base seed."""
    recorded = ds.ours.get("source")
    name = recorded.get("source") if isinstance(recorded, dict) else None
    if name not in TRUTH_SOURCES or not isinstance(recorded.get("seed"), int):  # type: ignore[union-attr]
        raise InputError(
            f"{ds.root}: cannot relabel: meta/wm_video.json does not name an engine that gives ground "
            f"truth ({sorted(TRUTH_SOURCES)}) with its seed (found {name!r}); only footage recorded "
            "from ViZDoom by `wm-video collect` or `wm-video record` can be replayed"
        )
    assert isinstance(recorded, dict)
    options = {
        k: v
        for k, v in recorded.items()
        if k
        not in ("source", "scenario", "size", "frame_skip", "policy", "seed", "recorded_by", "ground_truth")
    }
    source = make_source(
        str(name),
        scenario=recorded.get("scenario"),
        size=int(recorded.get("size", ds.frame_shape[0])),
        frame_skip=recorded.get("frame_skip"),
        ground_truth=True,
        **options,
    )
    return source, int(recorded["seed"])


def _replay(
    source: Source, seed: int, actions: np.ndarray, recorder: truth.TruthRecorder
) -> tuple[np.ndarray, str]:
    """Frames (T, H, W, 3) of the episode replayed under ``actions``, recording its truth; and a
    note when it ended at another step than the recording."""
    frames, note = [source.reset(seed)], ""
    for t, action in enumerate(actions):
        known = source.truth()
        if known is None:  # pragma: no cover - TRUTH_SOURCES give it
            raise RuntimeError(f"{source.task} gave no ground truth")
        recorder.add_frame(known)
        result = source.step(action)
        recorder.add_step(result.reward, result.done)
        if t + 1 < len(actions):
            if result.done:
                note = f"the replay ended after {t + 1} frames; the recording has {len(actions)}"
                frames += [frames[-1]] * (len(actions) - t - 1)
                for _ in range(len(actions) - t - 1):  # keep the recorder's lengths consistent
                    recorder.add_frame(known)
                    recorder.add_step(0.0, True)
                break
            frames.append(result.frame)
    return np.stack(frames), note


def _as_stored(frames: np.ndarray, fps: float, video: VideoSettings, scratch: Path) -> np.ndarray:
    """The replayed frames as the dataset would hold them: lossless as they are, H.264 round-tripped."""
    if video.codec == "lossless":
        return frames
    path = scratch / "replay.mp4"
    encode_video(path, frames, fps, video)
    return read_video(path)


def _compare(ds: EpisodeDataset, ep: EpisodeRef, replayed: np.ndarray, note: str) -> _Mismatch | None:
    recorded = ds.frames(ep)
    difference = np.abs(recorded.astype(np.int16) - replayed.astype(np.int16)).reshape(len(recorded), -1)
    differing = np.flatnonzero(difference.max(axis=1) > 0).tolist()
    if not differing and not note:
        return None
    return _Mismatch(ep.index, differing, int(difference.max()), note)


def _describe(mismatches: list[_Mismatch], episodes: int) -> str:
    shown = "; ".join(
        f"episode {m.episode}: "
        + (
            f"{'frame' if len(m.frames) == 1 else 'frames'} {_ranges(m.frames)} "
            f"{'differs' if len(m.frames) == 1 else 'differ'} (max |Δ| {m.max_difference})"
            if m.frames
            else ""
        )
        + (f"{', ' if m.frames else ''}{m.note}" if m.note else "")
        for m in mismatches[:6]
    )
    more = f"; and {len(mismatches) - 6} more" if len(mismatches) > 6 else ""
    last = max((f for m in mismatches for f in m.frames), default=None)
    start_only = last is not None and last < 8 and not any(m.note for m in mismatches)
    why = (
        " All differences lie in the first 8 frames of an episode: the dataset was collected before "
        "wm-video made an episode's start independent of how the episode before it ended (a death "
        "shifted the next weapon animation)."
        if start_only
        else ""
    )
    return (
        f"cannot relabel: replaying the recorded seeds and actions does not reproduce the frames of "
        f"{len(mismatches)} of {episodes} episodes ({shown}{more}).{why} Nothing was written; collect "
        "the footage again with `wm-video collect`, which records the ground truth."
    )


def _ranges(values: list[int]) -> str:
    return ", ".join(str(v) for v in values[:8]) + (f" … ({len(values)} in all)" if len(values) > 8 else "")


def _commit(ds: EpisodeDataset, staged: dict[int, truth.EpisodeTruth]) -> None:
    root = ds.root
    rows = read_parquet(root / lerobot.EPISODES_META_PATH).to_pylist()
    by_index = {int(row["episode_index"]): row for row in rows}
    for ep in ds.episodes:
        episode_truth = staged[ep.index]
        chunk, file = divmod(ep.index, lerobot.CHUNKS_SIZE)
        table = pq.read_table(ep.data_path)
        table = table.drop_columns(
            [c for c in (truth.STATE_KEY, truth.REWARD_KEY, truth.DONE_KEY) if c in table.column_names]
        )
        for name, column in truth.truth_columns(episode_truth).items():
            table = table.append_column(name, column)
        with signals_deferred():
            by_index[ep.index].update(truth.place_truth(root, episode_truth, chunk, file, ds.fps))
            atomic_write(ep.data_path, lambda tmp, table=table: pq.write_table(table, tmp))  # type: ignore[misc]
    atomic_write(
        root / lerobot.EPISODES_META_PATH, lambda tmp: pq.write_table(pa.Table.from_pylist(rows), tmp)
    )
    ours = dict(ds.ours)
    ours["ground_truth"] = truth.truth_spec()
    atomic_write_json(lerobot.ours_path(root), ours)
    info = dict(ds.info)
    info["features"] = {**info["features"], **truth.truth_features(ds.frame_shape, ds.fps)}
    atomic_write_json(lerobot.info_path(root), info)  # the commit point


def _check_layout(ds: EpisodeDataset) -> None:
    if ds.version != lerobot.CODEBASE_VERSION:
        raise InputError(f"{ds.root}: cannot relabel a {ds.version} dataset; only {lerobot.CODEBASE_VERSION}")
    for ep in ds.episodes:
        chunk, file = divmod(ep.index, lerobot.CHUNKS_SIZE)
        expected = ds.root / lerobot.DATA_PATH_V3.format(chunk_index=chunk, file_index=file)
        if ep.data_path != expected or len(read_parquet(ep.data_path, ep.index)) != ep.length:
            raise InputError(
                f"{ep.data_path}: cannot relabel: episode {ep.index} does not have a data file of its own "
                "(as `wm-video collect` writes them)"
            )


def relabel(root: Path, *, progress: bool = True, stop: Callable[[], bool] | None = None) -> RelabelResult:
    """Replay every episode of the dataset at ``root`` and add its ground truth (see the module doc)."""
    started = time.perf_counter()
    ds = open_dataset(root)
    if truth.has_truth(ds.info):
        raise InputError(f"{root}: the dataset already holds the ground truth; nothing to relabel")
    if not ds.episodes:
        raise InputError(f"{root}: the dataset holds no episodes")
    _check_layout(ds)
    video = VideoSettings(**ds.ours.get("video", {}))
    staging = Path(root) / STAGING
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    source, seed = _engine(ds)
    staged: dict[int, truth.EpisodeTruth] = {}
    mismatches: list[_Mismatch] = []
    try:
        with (
            tempfile.TemporaryDirectory() as scratch,
            tqdm(total=ds.num_frames, desc="replaying", unit="frame", disable=not progress) as bar,
        ):
            for ep in ds.episodes:
                if stop is not None and stop():
                    raise KeyboardInterrupt
                recorder = truth.TruthRecorder(
                    staging / f"{ep.index:06d}.labels.mp4", ds.fps, ds.frame_shape[0]
                )
                replayed, note = _replay(source, seed + ep.index, ds.actions(ep), recorder)
                staged[ep.index] = recorder.finish()
                mismatch = _compare(ds, ep, _as_stored(replayed, ds.fps, video, Path(scratch)), note)
                if mismatch is not None:
                    mismatches.append(mismatch)
                bar.update(ep.length)
                bar.set_postfix(differing=len(mismatches))
        if mismatches:
            raise DatasetError(_describe(mismatches, len(ds.episodes)), path=root)
        _commit(ds, staged)
    finally:
        source.close()
        shutil.rmtree(staging, ignore_errors=True)
    return RelabelResult(
        len(ds.episodes),
        ds.num_frames,
        time.perf_counter() - started,
        truth.truth_bytes_per_frame(open_dataset(root)),
    )
