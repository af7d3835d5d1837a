"""Atomic file writes: write beside the target, flush, fsync, then rename over it.

A reader never sees a half-written file; a crash leaves either the old file or the new one.
"""

from __future__ import annotations

import json
import os
import signal
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp_path)`` then move the finished file to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
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
