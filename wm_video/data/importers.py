"""Importing recorded gameplay (a folder of ``name.mp4`` + ``name.jsonl`` pairs) as a v3.0 dataset.

One per-frame record per line, line i describing the input held while video frame i was shown.
The pair-finding, checking and streaming here serve every dialect; the OpenAI VPT dialect lives
in :mod:`wm_video.data.vpt`.

- **mp4+jsonl** (:func:`import_mp4_jsonl`, our own schema)::

      {"keys": ["w", "left"], "mouse_dx": 3.0, "mouse_dy": -1.5}

  ``keys`` (required): names of the keys/buttons held during the frame. ``mouse_dx``/``mouse_dy``
  (optional numbers): if any line of any file has one, the action gains the deltas "mouse_dx",
  "mouse_dy" (0 where a line omits them). Other fields are ignored. Buttons are ``buttons=`` (an
  unknown name is then an error) or the sorted union of all names. Names that are pygame key names
  ("w", "left", "space", "left shift", ...) get the default key binding key → same name.
Design choices:
- Pairs are the top-level ``*.mp4``/``*.jsonl`` files of SRC, matched by name and imported in
  sorted name order. A file without its partner is an error listing them: nothing is skipped.
- Everything checkable is checked before the first episode is written: every JSONL line, every
  video header (fps, size, and frame count when the header states it). Then each pair streams
  one frame at a time (decode → resize → :class:`EpisodeRecorder`), re-reading its JSONL, so
  memory does not grow with the dataset.
- An import is all or nothing: it builds the dataset in a hidden sibling folder and renames it to
  OUT only when every episode is in, so a failure never leaves half a dataset (and a re-run never
  duplicates episodes). OUT must not exist yet, or be an empty folder.
- Frames and records are aligned from the first frame, and their counts must agree. A recorder
  that drops the last frame or record can be admitted with ``length_tolerance=N``: up to N
  surplus frames or records at the end are dropped and reported in ``ImportResult.trimmed``.
"""

from __future__ import annotations

import json
import math
import shutil
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from tqdm import tqdm

from wm_video.actions import ActionSpace
from wm_video.data.lerobot import fps_problem
from wm_video.data.video import VideoProbe, VideoSettings, iter_video_frames, probe_video
from wm_video.data.writer import DatasetWriter
from wm_video.errors import InputError

#: Named pygame keys (``pygame.key.name`` spelling); any single character is a key name too.
PYGAME_KEY_NAMES = frozenset(
    ["left", "right", "up", "down", "space", "return", "tab", "escape", "backspace", "delete"]
    + ["insert", "home", "end", "page up", "page down", "left shift", "right shift", "left ctrl"]
    + ["right ctrl", "left alt", "right alt"]
    + [f"f{n}" for n in range(1, 13)]
)

MOUSE_DELTAS = ("mouse_dx", "mouse_dy")
FPS_TOLERANCE = 1e-3
_MP4_EXAMPLE = '{"keys": ["w", "left"], "mouse_dx": 0.0, "mouse_dy": 0.0}'


@dataclass(frozen=True)
class ImportResult:
    """What an import added to ``out``."""

    out: Path
    episodes: int  # episodes added by this import
    frames: int  # frames added by this import
    skipped: list[str] = field(default_factory=list)  # always empty: a bad pair is an error
    ignored_keys: dict[str, int] = field(default_factory=dict)  # key → records holding it (VPT)
    trimmed: dict[str, int] = field(default_factory=dict)  # name → tail items dropped (tolerance)


@dataclass(frozen=True)
class ImportOptions:
    """The knobs both importers share, checked before anything is read."""

    size: int | None
    fps: float | None
    video: VideoSettings
    progress: bool
    length_tolerance: int

    def __post_init__(self) -> None:
        if self.size is not None and (self.size < 2 or (self.video.codec == "h264-yuv420" and self.size % 2)):
            raise InputError(f"size must be ≥ 2 pixels, and even for yuv420p video; got {self.size}")
        problem = fps_problem(self.fps) if self.fps is not None else None
        if problem is not None:
            raise InputError(f"--fps: {problem}")
        if self.length_tolerance < 0:
            raise InputError(f"length_tolerance must be ≥ 0; got {self.length_tolerance}")


@dataclass(frozen=True)
class RecordingPair:
    name: str
    video: Path
    jsonl: Path


@dataclass(frozen=True)
class ParsedActions:
    actions: np.ndarray  # (T, A) float32, one row per JSONL record
    ignored: Counter[str]


Parser = Callable[[Path], ParsedActions]


# -- shared: finding pairs, reading records, writing episodes -----------------------------------
def find_pairs(src: Path) -> list[RecordingPair]:
    if not src.exists():
        raise InputError(f"{src}: no such folder; expected a folder of name.mp4 + name.jsonl pairs")
    if not src.is_dir():
        raise InputError(f"{src} is not a folder; expected a folder of name.mp4 + name.jsonl pairs")
    videos = {p.stem: p for p in src.iterdir() if p.suffix == ".mp4"}
    records = {p.stem: p for p in src.iterdir() if p.suffix == ".jsonl"}
    alone = sorted(videos.keys() ^ records.keys())
    if alone:
        lines = [
            f"{videos[n].name} lacks {n}.jsonl" if n in videos else f"{n}.jsonl lacks {n}.mp4" for n in alone
        ]
        more = f"; and {len(lines) - 10} more" if len(lines) > 10 else ""
        raise InputError(
            f"{src}: unpaired files (each name.mp4 needs a name.jsonl): {'; '.join(lines[:10])}{more}"
        )
    if not videos:
        raise InputError(
            f"{src} holds no name.mp4 + name.jsonl pairs; expected one video and one JSONL file "
            "of per-frame actions per episode"
        )
    return [RecordingPair(name, videos[name], records[name]) for name in sorted(videos)]


def read_jsonl(path: Path) -> Iterator[tuple[str, Any]]:
    """("file:line", decoded object) for each non-blank line."""
    try:
        with path.open(encoding="utf-8") as handle:
            for number, line in enumerate(handle, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except ValueError as exc:  # JSONDecodeError, or an integer of more than 4,300 digits
                    raise InputError(f"{path}:{number}: not valid JSON ({getattr(exc, 'msg', exc)})") from exc
                yield f"{path}:{number}", record
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: cannot read as UTF-8 text ({exc})") from exc


#: Actions are stored as float32: a number beyond this would become inf.
FLOAT32_MAX = float(np.finfo(np.float32).max)


def json_number(record: dict[str, Any], key: str, where: str, *, required: bool) -> float | None:
    """``record[key]`` as a float that float32 holds (actions are float32), or an error naming ``where``."""
    value = record.get(key)
    if value is None and not required:
        return None
    number = float("nan")
    if isinstance(value, int | float) and not isinstance(value, bool):
        try:
            number = float(value)
        except OverflowError:  # an integer too large for a float
            pass
    if not (math.isfinite(number) and abs(number) <= FLOAT32_MAX):
        raise InputError(
            f"{where}: {key!r} must be a finite number within ±{FLOAT32_MAX:.3g} (actions are float32); "
            f"got {value!r:.60}"
        )
    return number


def _common_fps(probes: list[VideoProbe]) -> float:
    first = probes[0]
    if fps_problem(first.fps) is not None:
        raise InputError(f"{first.path}: the video states no usable fps ({first.fps:g}); pass fps= (--fps)")
    for probe in probes[1:]:
        if not abs(probe.fps - first.fps) <= FPS_TOLERANCE:
            raise InputError(
                f"{probe.path} runs at {probe.fps:g} fps but {first.path.name} at {first.fps:g}; "
                "all videos of a dataset need the same fps (or pass fps= to override)"
            )
    return first.fps


def _frame_shape(probes: list[VideoProbe], size: int | None, video: VideoSettings) -> tuple[int, int, int]:
    if size is not None:
        return (size, size, 3)
    first = probes[0]
    for probe in probes[1:]:
        if (probe.width, probe.height) != (first.width, first.height):
            raise InputError(
                f"{probe.path} is {probe.width}x{probe.height} but {first.path.name} is "
                f"{first.width}x{first.height}; pass size= (--size N) to resize every frame to N×N"
            )
    if video.codec == "h264-yuv420" and (first.width % 2 or first.height % 2):
        raise InputError(
            f"{first.path} is {first.width}x{first.height}; H.264 yuv420p needs an even width and height: "
            "pass an even size= (--size N) to resize frames to N×N, or use the default codec"
        )
    return (first.height, first.width, 3)


def _mismatch(pair: RecordingPair, frames: int, records: int, tolerance: int) -> InputError:
    allowed = f" (length_tolerance={tolerance})" if tolerance else ""
    return InputError(
        f"{pair.video} has {frames} frames but {pair.jsonl.name} has {records} records{allowed}; "
        "each frame needs exactly one JSONL record"
    )


def import_pairs(
    src: Path,
    out: Path,
    pairs: list[RecordingPair],
    parse: Parser,
    space: ActionSpace,
    options: ImportOptions,
    task: str,
) -> ImportResult:
    """Check every pair, then stream each one into the dataset at ``out``."""
    counts = [len(parse(pair.jsonl).actions) for pair in pairs]  # validates every record first
    probes = [probe_video(pair.video) for pair in pairs]
    for pair, probe, count in zip(pairs, probes, counts, strict=True):
        if probe.frames is not None and abs(probe.frames - count) > options.length_tolerance:
            raise _mismatch(pair, probe.frames, count, options.length_tolerance)
    shape = _frame_shape(probes, options.size, options.video)
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise InputError(
            f"{out} already exists; an import creates a new dataset, so choose a new --out folder"
        )
    building = out.parent / f".{out.name}.importing"
    shutil.rmtree(building, ignore_errors=True)
    fps = options.fps if options.fps is not None else _common_fps(probes)
    ignored: Counter[str] = Counter()
    trimmed: dict[str, int] = {}
    frames_added = 0
    try:
        writer = DatasetWriter(
            building,
            fps=fps,
            action_space=space,
            frame_shape=shape,
            task=task,
            video=options.video,
            source_info={"src": str(src.resolve()), "episodes": [p.name for p in pairs]},
        )
        with (
            writer,
            tqdm(total=sum(counts), unit="frame", desc="importing", disable=not options.progress) as bar,
        ):
            for pair in pairs:
                parsed = parse(pair.jsonl)
                decoded = _record_episode(writer, pair, parsed.actions, shape, options, bar)
                ignored.update(parsed.ignored)
                if decoded != len(parsed.actions):
                    trimmed[pair.name] = abs(decoded - len(parsed.actions))
                frames_added += min(decoded, len(parsed.actions))
    except BaseException:
        shutil.rmtree(building, ignore_errors=True)
        raise
    if out.exists():
        out.rmdir()
    building.rename(out)
    return ImportResult(
        out=Path(out),
        episodes=len(pairs),
        frames=frames_added,
        ignored_keys=dict(ignored.most_common()),
        trimmed=trimmed,
    )


def _record_episode(
    writer: DatasetWriter,
    pair: RecordingPair,
    actions: np.ndarray,
    shape: tuple[int, int, int],
    options: ImportOptions,
    bar: tqdm,
) -> int:
    """Stream one video into a recorder next to its actions; returns the frames decoded."""
    height, width = shape[:2]
    recorder = writer.recorder()
    decoded = 0
    try:
        for frame in iter_video_frames(pair.video, episode=writer.num_episodes):
            if decoded < len(actions):  # surplus frames are only counted, for the check below
                if options.size is not None:
                    frame = cv2.resize(frame, (width, height), interpolation=cv2.INTER_AREA)
                elif frame.shape != shape:
                    raise InputError(f"{pair.video}: frame {decoded} is {frame.shape}, not {shape}")
                recorder.add(frame, actions[decoded])
                bar.update()
            decoded += 1
        if abs(decoded - len(actions)) > options.length_tolerance or min(decoded, len(actions)) == 0:
            raise _mismatch(pair, decoded, len(actions), options.length_tolerance)
    except BaseException:
        recorder.discard()
        raise
    recorder.finish()
    return decoded


# -- our mp4 + jsonl schema -----------------------------------------------------------------
def _mp4_record(record: Any, where: str) -> tuple[list[str], float | None, float | None]:
    if not isinstance(record, dict):
        raise InputError(f"{where}: expected a JSON object like {_MP4_EXAMPLE}; got {record!r:.60}")
    keys = record.get("keys")
    if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
        raise InputError(f"{where}: 'keys' must be a list of key names (strings); got {keys!r:.60}")
    dx = json_number(record, "mouse_dx", where, required=False)
    return keys, dx, json_number(record, "mouse_dy", where, required=False)


def import_mp4_jsonl(
    src: Path,
    out: Path,
    *,
    size: int | None = None,
    buttons: list[str] | None = None,
    fps: float | None = None,
    video: VideoSettings | None = None,
    progress: bool = True,
    length_tolerance: int = 0,
) -> ImportResult:
    """Import ``name.mp4`` + ``name.jsonl`` pairs (schema in the module docstring) into ``out``."""
    options = ImportOptions(size, fps, video or VideoSettings(), progress, length_tolerance)
    src = Path(src)
    pairs = find_pairs(src)
    allowed = set(buttons) if buttons is not None else None
    names: set[str] = set()
    has_mouse = False
    for pair in pairs:  # first pass: the button set and whether there are mouse deltas
        for where, record in read_jsonl(pair.jsonl):
            keys, dx, dy = _mp4_record(record, where)
            unknown = sorted(set(keys) - allowed) if allowed is not None else []
            if unknown:
                raise InputError(f"{where}: unknown key names {unknown}; buttons= are {buttons}")
            names.update(keys)
            has_mouse = has_mouse or dx is not None or dy is not None
    button_names = tuple(buttons) if buttons is not None else tuple(sorted(names))
    if not button_names and not has_mouse:
        raise InputError(f"{src}: no key names and no mouse fields in any JSONL file; nothing to import")
    keymap = {name: name for name in button_names if len(name) == 1 or name in PYGAME_KEY_NAMES}
    space = ActionSpace(button_names, MOUSE_DELTAS if has_mouse else (), keymap)

    def parse(path: Path) -> ParsedActions:
        rows = []
        for where, record in read_jsonl(path):
            keys, dx, dy = _mp4_record(record, where)
            deltas = {"mouse_dx": dx or 0.0, "mouse_dy": dy or 0.0} if has_mouse else None
            rows.append(space.from_pressed(keys, deltas))
        actions = np.stack(rows) if rows else np.zeros((0, space.size), np.float32)
        return ParsedActions(actions, Counter())

    return import_pairs(src, out, pairs, parse, space, options, f"mp4+jsonl import of {src.resolve().name}")
