"""Validating a dataset end to end and summarising it (``wm-video inspect``).

Every check that training relies on, with every problem collected rather than stopping at the
first: metadata, per-episode rows, frame indices and timestamps against the declared fps,
action values against the declared space, and the videos themselves — present, non-empty,
decodable, of the declared resolution and fps, and holding exactly as many frames as the
episodes that point into them have action rows (each episode's start inside its file included).
Each problem names the episode and the file.

The same checks guard every other reader: :func:`check_episode_rows` and :func:`check_video_file`
run when the training cache is built (:mod:`wm_video.data.cache`), which training, eval and play
read, so what ``inspect`` rejects never reaches a model. A cache is built once per dataset
fingerprint, so the checks run once per fingerprint too.
"""

from __future__ import annotations

import math
import statistics
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from wm_video.data import lerobot
from wm_video.data.reader import EpisodeDataset, EpisodeRef
from wm_video.data.video import iter_video_frames, probe_video
from wm_video.errors import DatasetError, WMVideoError


@dataclass(frozen=True)
class ActionSummary:
    name: str
    kind: str  # "button" or "delta"
    mean: float  # fraction of frames pressed, for a button
    std: float


@dataclass
class InspectReport:
    root: Path
    version: str = "?"
    fps: float = float("nan")
    video_key: str = "?"
    resolution: tuple[int, int] = (0, 0)  # (H, W)
    episodes: int = 0
    frames: int = 0
    episode_lengths: list[int] = field(default_factory=list)
    policies: dict[str, int] = field(default_factory=dict)  # episodes per recorded policy
    actions: list[ActionSummary] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    decoded: bool = False
    notes: list[str] = field(default_factory=list)  # facts worth knowing that are not problems
    ground_truth: list[str] = field(default_factory=list)  # summary lines (data/truth.py)

    @property
    def ok(self) -> bool:
        return not self.problems

    def format(self) -> str:
        lines = [f"dataset     {self.root}  (LeRobot {self.version})"]
        if self.episodes:
            lengths = self.episode_lengths
            lines += [
                f"episodes    {self.episodes:,}    frames {self.frames:,}    fps {self.fps:g}    "
                f"resolution {self.resolution[1]}×{self.resolution[0]}    video '{self.video_key}'",
                f"length      min {min(lengths)}   median {statistics.median(lengths):g}   max {max(lengths)}"
                f"   ({_duration(self.frames / self.fps)} of footage)",
            ]
        if self.policies:
            shares = ", ".join(
                f"{name} {count} ({100 * count / max(self.episodes, 1):.0f} %)"
                for name, count in sorted(self.policies.items(), key=lambda item: (-item[1], item[0]))
            )
            lines.append(f"policies    {shares}")
        if self.actions:
            buttons = [a for a in self.actions if a.kind == "button"]
            deltas = [a for a in self.actions if a.kind == "delta"]
            lines.append(f"actions     {len(buttons)} buttons, {len(deltas)} continuous")
            width = max(len(a.name) for a in self.actions)
            for a in buttons:
                bar = "█" * round(a.mean * 20) + "·" * (20 - round(a.mean * 20))
                lines.append(f"  {a.name:<{width}}  {bar} {100 * a.mean:5.1f} % of frames")
            for a in deltas:
                lines.append(f"  {a.name:<{width}}  mean {a.mean:+.3f}  std {a.std:.3f}")
        lines += self.ground_truth
        lines += [f"note        {note}" for note in self.notes]
        if not self.decoded:
            lines.append("videos      headers checked only (--no-decode)")
        if self.problems:
            lines.append(f"PROBLEMS ({len(self.problems)}):")
            lines += [f"  - {p}" for p in self.problems]
        else:
            lines.append("OK: no problems found")
        return "\n".join(lines)


def _duration(seconds: float) -> str:
    return f"{seconds:.1f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def check_episode_rows(ds: EpisodeDataset, ep: EpisodeRef, position: int) -> np.ndarray:
    """Check one episode's parquet rows and its place in the dataset; return its actions.

    ``position``: the global ``index`` its first frame must have (the frames of the episodes before it).
    """
    if ep.length < 1:
        raise DatasetError(
            f"episode length {ep.length}; an episode holds at least one frame",
            path=ep.data_path,
            episode=ep.index,
        )
    if (ep.first_row, ep.end_row) != (position, position + ep.length):
        raise DatasetError(
            f"dataset_from/to_index are {ep.first_row}..{ep.end_row} but the episode's {ep.length} frames "
            f"follow the {position} before it, so {position}..{position + ep.length} was expected",
            path=lerobot.info_path(ds.root).parent / "episodes",
            episode=ep.index,
        )
    if not (math.isfinite(ep.from_timestamp) and ep.from_timestamp >= 0):
        raise DatasetError(
            f"from_timestamp {ep.from_timestamp} is not a time ≥ 0 in its video",
            path=ep.video_path,
            episode=ep.index,
        )
    actions = ds.actions(ep)
    timestamps = ds.timestamps(ep)
    expected = np.arange(ep.length) / ds.fps
    slack = max(lerobot.TIMESTAMP_TOLERANCE_S, 4 * float(np.spacing(np.float32(expected[-1]))))
    error = np.abs((timestamps - timestamps[0]) - expected)
    if not (error <= slack).all():
        bad = int(np.argmax(~(error <= slack)))
        raise DatasetError(
            f"timestamps are off the declared {ds.fps:g} fps: frame {bad} is at {timestamps[bad]:.4f} s, "
            f"expected {timestamps[0] + expected[bad]:.4f} s",
            path=ep.data_path,
            episode=ep.index,
        )
    try:
        ds.action_space.check(actions)
    except WMVideoError as exc:
        raise DatasetError(
            f"actions outside the declared space {list(ds.action_names)}: {exc}",
            path=ep.data_path,
            episode=ep.index,
        ) from exc
    return actions


def check_video_file(ds: EpisodeDataset, path: Path, episodes: list[EpisodeRef], *, decode: bool) -> None:
    """Check a video file against the dataset's declared resolution and fps, and that it holds the
    frames of every episode pointing into it (counted by decoding it when ``decode``, else from
    its header when the header says)."""
    first = episodes[0].index
    probe = probe_video(path, episode=first)
    height, width, _ = ds.frame_shape
    if (probe.height, probe.width) != (height, width):
        raise DatasetError(
            f"video is {probe.width}×{probe.height} but the dataset declares {width}×{height}",
            path=path,
            episode=first,
        )
    if not abs(probe.fps - ds.fps) <= 0.01:
        raise DatasetError(
            f"video runs at {probe.fps:g} fps but the dataset declares {ds.fps:g}", path=path, episode=first
        )
    held = sum(1 for _ in iter_video_frames(path, episode=first)) if decode else probe.frames
    if held is None:
        return
    expected = sum(ep.length for ep in episodes)
    if decode and held != expected:
        names = ", ".join(str(ep.index) for ep in episodes)
        raise DatasetError(
            f"video holds {held} frames but episode(s) {names} have {expected} action rows "
            "(truncated video, or frames and actions of different lengths)",
            path=path,
            episode=first if len(episodes) == 1 else None,
        )
    for ep in episodes:
        start = round(ep.from_timestamp * ds.fps)
        if start + ep.length > held:
            raise DatasetError(
                f"the episode's frames {start}..{start + ep.length - 1} (from_timestamp {ep.from_timestamp:g} s) "
                f"lie past the end of its video, which holds {held} frames",
                path=path,
                episode=ep.index,
            )


def describe_inference(ds: EpisodeDataset) -> str | None:
    """What was read off the data of a dataset without meta/wm_video.json, or None."""
    if not ds.inferred_buttons:
        return None
    buttons, deltas = list(ds.action_space.buttons), list(ds.action_space.deltas)
    return (
        f"no meta/wm_video.json: buttons inferred from the data (leading actions whose values are all 0 or 1): "
        f"{buttons or 'none'}; continuous: {deltas or 'none'}; `wm-video inspect DIR --buttons a,b` declares them"
    )


def validate_dataset(root: Path, *, decode: bool = True, progress: bool = False) -> InspectReport:
    """Check a dataset and summarise it; problems are collected in ``report.problems``."""
    report = InspectReport(root=Path(root), decoded=decode)
    try:
        ds = EpisodeDataset(root)
    except WMVideoError as exc:
        report.problems.append(str(exc))
        return report
    report.version, report.fps, report.video_key = ds.version, ds.fps, ds.video_key
    report.resolution = ds.frame_shape[:2]
    report.episodes, report.frames = len(ds.episodes), ds.num_frames
    report.episode_lengths = [ep.length for ep in ds.episodes]
    report.policies = dict(Counter(ep.policy or "not recorded" for ep in ds.episodes))
    if set(report.policies) == {"not recorded"}:
        report.policies = {}
    if not ds.episodes:
        report.problems.append(f"{root}: the dataset holds no episodes")
        return report
    declared = int(ds.info.get("total_frames", report.frames))
    if declared != report.frames:
        report.problems.append(
            f"{lerobot.info_path(Path(root))}: total_frames {declared} ≠ {report.frames} in the episode table "
            "(a write was cut short; appending to the dataset, e.g. re-running collect, repairs it)"
        )

    inferred = describe_inference(ds)
    if inferred is not None:
        report.notes.append(inferred)
    sums = np.zeros(len(ds.action_names))
    squares = np.zeros(len(ds.action_names))
    by_video: dict[Path, list[EpisodeRef]] = defaultdict(list)
    position = 0
    for ep in tqdm(ds.episodes, desc="checking episodes", unit="ep", disable=not progress):
        by_video[ep.video_path].append(ep)
        try:
            actions = check_episode_rows(ds, ep, position)
        except WMVideoError as exc:
            report.problems.append(str(exc))
            continue
        finally:
            position += ep.length
        sums += actions.sum(0)
        squares += (actions.astype(np.float64) ** 2).sum(0)
    for path, episodes in tqdm(by_video.items(), desc="checking videos", unit="file", disable=not progress):
        try:
            check_video_file(ds, path, episodes, decode=decode)
        except WMVideoError as exc:
            report.problems.append(str(exc))

    from wm_video.data.truth import check_truth  # truth's cache reads cache.py, which reads this module

    report.ground_truth, truth_problems = check_truth(ds, decode=decode)
    report.problems += truth_problems
    mean = sums / max(report.frames, 1)
    std = np.sqrt(np.maximum(squares / max(report.frames, 1) - mean**2, 0))
    buttons = set(ds.action_space.buttons)
    report.actions = [
        ActionSummary(name, "button" if name in buttons else "delta", float(m), float(s))
        for name, m, s in zip(ds.action_names, mean, std, strict=True)
    ]
    return report
