"""One process at a time in a run folder: an advisory lock that names its holder.

Two trainings writing into one ``--out`` would replace each other's checkpoints, interleave
``log.jsonl`` and leave a ``run.json`` describing only one of them. The main process of a run holds
an exclusive ``flock`` on ``RUN/.lock`` from start to end; the kernel releases it when the process
ends, however it ends, so a crashed run never leaves a stale lock. The file holds who has it (pid,
host, start time, command), which a refused second run prints.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import IO, ClassVar

from wm_video.errors import InputError

try:  # POSIX
    import fcntl
except ImportError:  # pragma: no cover - elsewhere runs are not locked
    fcntl = None  # type: ignore[assignment]

LOCK_FILE = ".lock"


class RunLock:
    """``with RunLock(run_dir):`` or ``acquire()`` / ``release()``; refuses with an InputError naming the holder.

    A process may take over a lock it holds itself (a session of it that ended in an error without
    releasing it): only another process is refused.
    """

    _held: ClassVar[dict[Path, RunLock]] = {}  # this process's locks, by lock file

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / LOCK_FILE
        self._handle: IO[str] | None = None

    def acquire(self) -> RunLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        key = self.path.resolve()
        if key in RunLock._held:
            RunLock._held[key].release()
        handle = open(self.path, "a+")
        if fcntl is not None:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.seek(0)
                holder = handle.read().strip()
                handle.close()
                raise InputError(
                    f"{self.path.parent}: another training is running in this run folder ({_describe(holder)}); "
                    "wait for it to end, stop it, or choose another --out"
                ) from None
        handle.seek(0)
        handle.truncate()
        me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(), "argv": sys.argv}
        handle.write(json.dumps(me) + "\n")
        handle.flush()
        self._handle = handle
        RunLock._held[key] = self
        return self

    def release(self) -> None:
        if self._handle is not None:
            self._handle.close()  # closing the file releases the lock
            self._handle = None
            RunLock._held.pop(self.path.resolve(), None)

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def _describe(holder: str) -> str:
    try:
        info = json.loads(holder)
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(info["started"])))
        command = " ".join(str(part) for part in info.get("argv", []))[:120]
        return f"pid {info['pid']} on {info['host']}, since {started}: {command}"
    except (ValueError, KeyError, TypeError):
        return "its holder did not say who it is"
