"""Atomic file writes: write beside the target, flush, fsync, then rename over it.

A reader never sees a half-written file; a crash leaves either the old file or the new one.
Files get the usual permissions (0666 less the umask, as ``open`` gives), not the 0600 of a
temporary file.
"""

from __future__ import annotations

import errno
import json
import os
import re
import signal
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from wm_video.errors import InputError

if TYPE_CHECKING:
    from torch import Tensor


@cache
def file_mode() -> int:
    """The mode ``open`` gives a new file: 0666 less the process's umask (read once)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp_path)`` then move the finished file to ``path``."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as err:  # name the file meant, not a temporary one (or none)
        raise OSError(err.errno, err.strerror, str(path)) from err
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        os.chmod(tmp, file_mode())
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        tmp.unlink(missing_ok=True)
        if isinstance(err, OSError) and err.filename in (None, str(tmp)):
            raise OSError(err.errno, err.strerror, str(path)) from err
        raise


def atomic_write_text(path: Path, text: str) -> None:
    def write(tmp: Path) -> None:
        tmp.write_text(text)

    atomic_write(path, write)


def atomic_write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2) + "\n")


def atomic_write_png(path: Path, image: Any) -> Path:
    """Write a uint8 RGB image (H, W, 3) as a PNG, atomically; returns the path."""
    import cv2

    ok, encoded = cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    if not ok:  # pragma: no cover - cv2 fails only on unsupported arrays
        raise OSError(f"could not encode {path} as PNG")

    def write(tmp: Path) -> None:
        tmp.write_bytes(encoded.tobytes())

    atomic_write(Path(path), write)
    return Path(path)


def write_safetensors(path: Path, tensors: dict[str, Tensor]) -> None:
    """safetensors' ``save_file``, its I/O failures raised as ``OSError`` naming ``path`` (a full
    disk reads as ENOSPC, like every other writer's), so that they are reported in one line."""
    from safetensors import SafetensorError
    from safetensors.torch import save_file

    try:
        save_file(tensors, str(path))
    except SafetensorError as err:
        code = re.search(r"os error (\d+)", str(err))
        if code is None:
            raise
        number = int(code.group(1))
        raise OSError(number, os.strerror(number), str(path)) from err


def check_output_folder(path: Path, what: str = "--out") -> Path:
    """Refuse an output folder that cannot be one, before any work is done: a file, a symbolic
    link loop, or a place that cannot be written (read-only, no permission). Returns ``path``."""
    path = Path(path)
    try:
        path.stat()
    except FileNotFoundError:
        pass
    except OSError as err:  # a symlink loop (ELOOP), a file as a parent (ENOTDIR), ...
        raise InputError(f"{path}: cannot be used as {what} ({err.strerror})") from err
    if path.exists() and not path.is_dir():
        raise InputError(f"{path}: is a file; {what} must be a folder (new, or one this program wrote)")
    existing = path
    while not existing.exists():
        if existing.is_symlink():
            raise InputError(f"{existing}: a dangling symbolic link; {what} must be a folder")
        existing = existing.parent
    if not existing.is_dir():
        raise InputError(f"{existing}: is a file; {what} must be a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        reason = "read-only file system" if _read_only(existing) else "no permission to write"
        raise InputError(f"{existing}: {reason}; choose another {what}")
    return path


def _read_only(path: Path) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def is_read_only_error(err: BaseException) -> bool:
    return isinstance(err, OSError) and err.errno in (errno.EROFS, errno.EACCES, errno.EPERM)


@contextmanager
def signals_deferred() -> Iterator[None]:
    """Hold SIGINT and SIGTERM for the duration of a short multi-file commit, then deliver them.

    Files written one after another (a video, its rows, the episode table) then never disagree
    because Ctrl-C or a scheduler's SIGTERM landed between two of them.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []

    def hold(signum: int, frame: object) -> None:
        received.append(signum)

    previous: dict[signal.Signals, Any] = {
        sig: signal.signal(sig, hold) for sig in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        yield
    finally:
        for sig, restore in previous.items():
            signal.signal(sig, signal.SIG_DFL if restore is None else restore)
        for signum in received:
            signal.raise_signal(signum)
