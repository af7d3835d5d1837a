"""The training cache: every frame decoded once into a uint8 memory map (clips: :mod:`.sampler`).

Training must never wait on video decoding, so a dataset is decoded once, at the training
resolution, into ``<root>/.cache/frames-<size>/``, or, when the dataset's folder cannot be
written (read-only storage) or should not be, under a cache root given as ``--cache-dir`` or the
environment variable ``WM_VIDEO_CACHE_DIR`` (:func:`default_cache_dir`)::

    frames.u8          raw (N, size, size, 3) uint8, all episodes back to back in episode order
    actions.npy        (N, A) float32
    episodes.npy       (E + 1,) int64 row offsets: episode e is rows starts[e]:starts[e + 1]
    episode_index.npy  (E,) int64 the dataset's episode indices
    manifest.json      {fingerprint, size, num_frames, action_names, fps, version}; written last

Design choices:
- Built in a temporary sibling folder and renamed into place only when complete, under a lock
  file (several ranks may call :func:`load_cache` at once; one builds, the others wait and
  open it). A crash leaves no folder that loads; leftovers are removed by the next build.
- The fingerprint hashes meta/info.json, the episode metadata files and (name, size, mtime_ns)
  of every data and video file, plus ``size`` and :data:`CACHE_VERSION`: appending an episode
  or re-encoding a video makes the cache stale, and :func:`load_cache` rebuilds it.
- The dataset is validated as it is decoded, by the checks ``wm-video inspect`` runs
  (:mod:`wm_video.data.validate`): a video of another resolution or fps, timestamps off the fps,
  NaN or out-of-range actions, an episode outside its video stop the build naming the episode
  and file, so nothing ``inspect`` rejects is ever trained or evaluated on. A cache is built once
  per fingerprint, and so are the checks.
- The free space is checked first and the frames file is allocated in full before decoding
  (``posix_fallocate``): a full disk is an error naming the figures, never a SIGBUS from a memory
  map written past the disk's end, and the partial build is removed.
- Decoding streams one episode at a time straight into the preallocated memmap (frames are
  never all held in RAM); frames of another size are resized with ``cv2.INTER_AREA`` (a
  non-square source is stretched to square). One process: on 2 cores a second decoding
  process gave 1.4× with fork (unsafe once torch has started threads) and nothing with spawn.
  Most of the time is PyAV's rgb24 conversion, which a reused VideoReformatter makes ~3× faster.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from wm_video.data import lerobot
from wm_video.data.reader import EpisodeRef, open_dataset
from wm_video.data.validate import check_episode_rows, check_video_file
from wm_video.errors import DatasetError, InputError
from wm_video.fileio import atomic_write_json, check_output_folder
from wm_video.memory import check_disk

try:  # POSIX; elsewhere concurrent builders are not serialised
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

CACHE_VERSION = 1
FRAMES_FILE = "frames.u8"
MANIFEST_FILE = "manifest.json"


CACHE_DIR_ENV = "WM_VIDEO_CACHE_DIR"  # a cache root for every dataset, e.g. when datasets are read-only


def default_cache_dir(root: Path, size: int, cache_root: Path | None = None) -> Path:
    """Where the cache of ``root`` at ``size`` goes: ``<root>/.cache/frames-<size>``, beside the data
    it was decoded from; or, given a ``cache_root`` (``--cache-dir``, else ``$WM_VIDEO_CACHE_DIR``),
    ``<cache_root>/<dataset name>-<hash of its absolute path>/frames-<size>``."""
    cache_root = cache_root or (Path(os.environ[CACHE_DIR_ENV]) if os.environ.get(CACHE_DIR_ENV) else None)
    if cache_root is None:
        return Path(root) / ".cache" / f"frames-{size}"
    absolute = Path(root).resolve()
    tag = hashlib.sha256(str(absolute).encode()).hexdigest()[:12]
    return Path(cache_root) / f"{absolute.name or 'dataset'}-{tag}" / f"frames-{size}"


def new_memmap(path: Path, dtype: np.dtype | type, shape: tuple[int, ...], what: str) -> np.memmap:
    """A memmap of ``shape`` written at ``path``, its bytes allocated on disk first.

    A memory map written past the end of a full disk kills the process with SIGBUS (no message,
    the disk left full); allocating the file in full first turns that into an error now.
    """
    nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
    check_disk(nbytes, path.parent, what, "free some space, or put the cache elsewhere with --cache-dir")
    with open(path, "wb") as handle:
        try:
            if nbytes:
                os.posix_fallocate(handle.fileno(), 0, nbytes)
        except OSError as err:
            raise OSError(err.errno, err.strerror, str(path)) from err
    return np.memmap(path, dtype=dtype, mode="r+", shape=shape)


def dataset_fingerprint(root: Path, size: int) -> str:
    """Hash of everything the cache depends on (metadata contents, data/video file stats)."""
    root = Path(root)
    digest = hashlib.sha256(f"wm-video cache v{CACHE_VERSION} size={size}\n".encode())
    meta = [root / "meta" / "info.json", root / "meta" / "episodes.jsonl"]
    meta += sorted((root / "meta" / "episodes").rglob("*.parquet"))
    for path in meta:
        if path.is_file():
            digest.update(f"{path.relative_to(root)}\n".encode())
            digest.update(path.read_bytes())
    media = sorted((root / "data").rglob("*.parquet")) + sorted((root / "videos").rglob("*.mp4"))
    for path in media:
        try:
            stat = path.stat()
        except FileNotFoundError:  # removed while we listed (a writer replacing it), or a dangling link
            continue
        except OSError as err:  # a symbolic link loop, a permission
            raise DatasetError(f"cannot read the file ({err.strerror})", path=path) from err
        digest.update(f"{path.relative_to(root)} {stat.st_size} {stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


class EpisodeRows:
    """Episode bookkeeping of a cache whose rows are frames in episode order (frame and token caches)."""

    episode_starts: np.ndarray  # (E + 1,) int64: episode e is rows starts[e]:starts[e + 1]
    episode_indices: np.ndarray  # (E,) int64, the dataset's episode indices

    @property
    def num_frames(self) -> int:
        return int(self.episode_starts[-1])

    @property
    def num_episodes(self) -> int:
        return len(self.episode_indices)

    @property
    def episode_lengths(self) -> np.ndarray:
        return np.diff(self.episode_starts)

    def rows_of(self, episodes: np.ndarray, starts: np.ndarray) -> np.ndarray:
        """The row of frame ``starts[i]`` of dataset episode ``episodes[i]`` (indices, not positions), (B,)."""
        first_row = dict(zip(self.episode_indices.tolist(), self.episode_starts[:-1].tolist(), strict=True))
        return np.array([first_row[int(e)] + int(s) for e, s in zip(episodes, starts, strict=True)], np.int64)

    def episode_rows(self, e: int) -> slice:
        """The rows of the e-th cached episode (position, not index)."""
        if not 0 <= e < self.num_episodes:
            raise InputError(f"episode position {e} is out of range; the cache holds {self.num_episodes}")
        return slice(int(self.episode_starts[e]), int(self.episode_starts[e + 1]))


@dataclass(frozen=True)
class TrainingCache(EpisodeRows):
    """A decoded dataset: frames (memmap, read-only), actions and episode boundaries."""

    path: Path
    frames: np.ndarray  # (N, size, size, 3) uint8 memmap
    actions: np.ndarray  # (N, A) float32
    episode_starts: np.ndarray  # (E + 1,) int64
    episode_indices: np.ndarray  # (E,) int64, the dataset's episode indices
    fps: float
    action_names: tuple[str, ...]
    size: int
    fingerprint: str

    def episode(self, e: int) -> tuple[np.ndarray, np.ndarray]:
        """(frames (T, H, W, 3), actions (T, A)) views of the e-th cached episode (position, not index)."""
        rows = self.episode_rows(e)
        return self.frames[rows], self.actions[rows]


def _open_cache(path: Path, fingerprint: str) -> TrainingCache | None:
    """The cache at ``path``, or None when it is missing, incomplete or of another fingerprint."""
    try:
        manifest = json.loads((path / MANIFEST_FILE).read_text())
        if manifest.get("version") != CACHE_VERSION:
            return None
        if manifest.get("fingerprint") != fingerprint:
            return None
        size, count = int(manifest["size"]), int(manifest["num_frames"])
        if (path / FRAMES_FILE).stat().st_size != count * size * size * 3:
            return None
        starts = np.load(path / "episodes.npy")
        frames = np.memmap(path / FRAMES_FILE, dtype=np.uint8, mode="r", shape=(count, size, size, 3))
        return TrainingCache(
            path=path,
            frames=frames,
            actions=np.load(path / "actions.npy"),
            episode_starts=starts,
            episode_indices=np.load(path / "episode_index.npy"),
            fps=float(manifest["fps"]),
            action_names=tuple(manifest["action_names"]),
            size=size,
            fingerprint=str(manifest["fingerprint"]),
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


@contextmanager
def build_lock(target: Path) -> Iterator[None]:
    """Hold the lock file ``.<name>.lock`` beside ``target``: one process builds it at a time."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{target.name}.lock", "a") as handle:
        if fcntl is not None:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            if fcntl is not None:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def build_folder(target: Path, what: str, fill: Callable[[Path], None]) -> None:
    """Build a cache folder: ``fill`` a temporary sibling (its manifest last), then rename it into place.

    Call it holding :func:`build_lock`. A folder with files but no manifest is refused, not
    replaced; leftovers of crashed builds are removed first; a failure leaves ``target`` as it was.
    """
    if target.exists() and any(target.iterdir()) and not (target / MANIFEST_FILE).exists():
        raise InputError(f"{target} is not a {what} (no {MANIFEST_FILE}); refusing to replace it")
    for pattern in (f".{target.name}.tmp-*", f".{target.name}.old-*") if fcntl else ():
        for leftover in target.parent.glob(pattern):  # from crashed builds (we hold the lock)
            shutil.rmtree(leftover, ignore_errors=True)
    tmp = target.parent / f".{target.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    # said even with --no-progress: a large dataset's cache takes minutes, once
    print(f"building the {what} {target} (once; later runs reuse it)", file=sys.stderr, flush=True)
    try:
        fill(tmp)
        old = target.parent / f".{target.name}.old-{uuid.uuid4().hex[:8]}"
        if target.exists():
            os.replace(target, old)
        os.replace(tmp, target)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _decode_into(tmp: Path, root: Path, size: int, fingerprint: str, progress: bool) -> None:
    """Decode every episode of the dataset at ``root`` into a cache folder ``tmp``."""
    dataset = open_dataset(root)
    episodes = dataset.episodes
    lengths = np.array([ep.length for ep in episodes], dtype=np.int64)
    if not episodes or lengths.sum() == 0:
        raise DatasetError("the dataset holds no frames; nothing to cache", path=root)
    starts = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    count = int(starts[-1])
    by_video: dict[Path, list[EpisodeRef]] = {}
    for ep in episodes:
        by_video.setdefault(ep.video_path, []).append(ep)
    for path, sharing in by_video.items():  # resolution, fps, every episode inside its file
        check_video_file(dataset, path, sharing, decode=False)
    frames = new_memmap(tmp / FRAMES_FILE, np.uint8, (count, size, size, 3), "the training cache")
    actions = np.empty((count, len(dataset.action_names)), dtype=np.float32)
    with tqdm(
        total=count, desc="decoding into the training cache", unit="frame", disable=not progress
    ) as bar:
        for ep, start in zip(episodes, starts[:-1], strict=True):
            actions[start : start + ep.length] = check_episode_rows(dataset, ep, int(start))
            row = int(start)
            for frame in dataset.iter_frames(ep):  # raises if the count differs from ep.length
                if frame.shape[:2] != (size, size):
                    frame = cv2.resize(frame, (size, size), interpolation=cv2.INTER_AREA)
                frames[row] = frame
                row += 1
            bar.update(ep.length)
    frames.flush()
    del frames
    np.save(tmp / "actions.npy", actions)
    np.save(tmp / "episodes.npy", starts)
    np.save(tmp / "episode_index.npy", np.array([ep.index for ep in episodes], dtype=np.int64))
    for name in (FRAMES_FILE, "actions.npy", "episodes.npy", "episode_index.npy"):
        with open(tmp / name, "rb+") as handle:
            os.fsync(handle.fileno())
    names, fps = list(dataset.action_names), dataset.fps
    manifest = dict(fingerprint=fingerprint, size=size, num_frames=count, action_names=names, fps=fps)
    atomic_write_json(tmp / MANIFEST_FILE, {**manifest, "version": CACHE_VERSION})  # completion marker


def _check_size(size: int) -> None:
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise InputError(f"cache frame size must be a positive integer (pixels); got {size!r}")


def build_cache(
    root: Path,
    *,
    size: int,
    cache_dir: Path | None = None,
    cache_root: Path | None = None,
    progress: bool = True,
    force: bool = False,
) -> TrainingCache:
    """Decode the dataset at ``root`` into a cache of size×size frames; reuse a fresh one unless ``force``.

    ``cache_dir`` (the folder itself) defaults to :func:`default_cache_dir` of ``cache_root``.
    """
    _check_size(size)
    root = Path(root)
    lerobot.read_info(root)  # a clear error for a missing or foreign folder, before creating .cache
    target = Path(cache_dir) if cache_dir is not None else default_cache_dir(root, size, cache_root)
    try:
        check_output_folder(target, "the training cache folder")
    except InputError as err:
        raise InputError(
            f"{err}. The cache goes beside the dataset unless told otherwise: pass --cache-dir DIR "
            f"or set {CACHE_DIR_ENV}=DIR to put it under DIR"
        ) from err
    with build_lock(target):
        fingerprint = dataset_fingerprint(root, size)
        if not force and (cache := _open_cache(target, fingerprint)) is not None:
            return cache
        build_folder(
            target, "training cache", lambda tmp: _decode_into(tmp, root, size, fingerprint, progress)
        )
        cache = _open_cache(target, fingerprint)
    if cache is None:  # pragma: no cover - only if the folder is changed under us
        raise DatasetError("the cache just built cannot be opened", path=target)
    return cache


def load_cache(
    root: Path,
    *,
    size: int,
    cache_dir: Path | None = None,
    cache_root: Path | None = None,
    progress: bool = True,
) -> TrainingCache:
    """Open the cache of ``root`` at ``size``; build it first when missing or stale.

    ``cache_dir`` (the folder itself) defaults to :func:`default_cache_dir` of ``cache_root``.
    """
    _check_size(size)
    target = Path(cache_dir) if cache_dir is not None else default_cache_dir(root, size, cache_root)
    if (cache := _open_cache(target, dataset_fingerprint(root, size))) is not None:
        return cache
    return build_cache(root, size=size, cache_dir=target, progress=progress)
