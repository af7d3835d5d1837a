"""Errors that reach users: each names the file (and episode) it is about and what was expected.

Every program ends the same way (:func:`exit_status`): a :class:`WMVideoError`, or an
``OSError`` a user can act on (a full disk, a read-only location, a symbolic-link loop), prints
one line naming the file and exits with :data:`EXIT_ERROR`; anything else is a bug and keeps its
traceback. The exit statuses are listed in README.md ("Exit statuses").
"""

from __future__ import annotations

import errno
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

#: Exit statuses of every wm-video program.
EXIT_OK = 0  # done (also: a training stopped by its --max-minutes budget, checkpoint saved)
EXIT_PROBLEMS = 1  # `inspect` found problems in the dataset
EXIT_ERROR = 2  # bad input, or a fault such as a full disk: one line naming the file
EXIT_STOPPED = 130  # stopped by Ctrl-C or SIGTERM (128 + SIGINT); what was done is saved


class WMVideoError(Exception):
    """Base class for errors the command line reports as one clear line (no traceback)."""


class InputError(WMVideoError, ValueError):
    """A user-supplied argument or file is not what was expected."""


class DatasetError(WMVideoError, ValueError):
    """A dataset on disk is missing, malformed or inconsistent.

    The message always names the dataset file and, where there is one, the episode.
    """

    def __init__(self, message: str, *, path: Path | str | None = None, episode: int | None = None) -> None:
        where = []
        if episode is not None:
            where.append(f"episode {episode}")
        if path is not None:
            where.append(str(path))
        prefix = f"{', '.join(where)}: " if where else ""
        super().__init__(prefix + message)
        self.path = Path(path) if path is not None else None
        self.episode = episode


#: OSErrors that come from where a user pointed a program, not from a bug: what to do about each.
_ACTIONABLE = {
    errno.ENOSPC: "disk full{free}: free some space or write elsewhere, then run again",
    errno.EDQUOT: "disk quota exceeded{free}: free some space or write elsewhere, then run again",
    errno.EROFS: "read-only file system: write elsewhere (--out; the training cache: --cache-dir or "
    "WM_VIDEO_CACHE_DIR)",
    errno.EACCES: "permission denied: write elsewhere, or change the permissions",
    errno.EPERM: "operation not permitted: write elsewhere, or change the permissions",
    errno.ELOOP: "a symbolic link loop: the link points (through others) back at itself",
    errno.ENOTDIR: "a file stands where a folder is needed",
    errno.EISDIR: "a folder stands where a file is needed",
    errno.ENAMETOOLONG: "file name too long",
    errno.EIO: "input/output error: the storage failed",
}


def is_disk_full(err: BaseException) -> bool:
    return isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT)


def os_error_line(err: OSError) -> str | None:
    """One line for an OSError a user can act on, naming the file; None for any other OSError."""
    template = _ACTIONABLE.get(err.errno or 0)
    if template is None:
        return None
    path = err.filename if err.filename is not None else None
    free = ""
    if is_disk_full(err) and path is not None:
        existing = Path(os.fsdecode(path))
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
        try:
            free = f" ({shutil.disk_usage(existing).free / 2**20:,.1f} MiB free there)"
        except OSError:
            pass
    message = template.format(free=free)
    return f"{os.fsdecode(path)}: {message}" if path is not None else message


def exit_status(prog: str, exc: BaseException) -> int | None:
    """Report a user-facing error as one line on stderr and return its exit status, or None
    when ``exc`` is a bug (the caller re-raises it, traceback and all)."""
    if isinstance(exc, WMVideoError):
        line: str | None = str(exc)
    elif isinstance(exc, OSError):
        line = os_error_line(exc)
    elif isinstance(exc, MemoryError):
        line = "out of memory: ask for less (a smaller --batch-size, --clips or --size)"
    else:
        line = None
    if line is None:
        return None
    print(f"{prog}: error: {line}", file=sys.stderr)
    return EXIT_ERROR


def run_program(
    prog: str,
    body: Callable[[], int],
    *,
    translate: Callable[[BaseException], BaseException] = lambda exc: exc,
) -> int:
    """Run a program's ``body`` and return its exit status: a user-facing error (after ``translate``)
    is one line and :data:`EXIT_ERROR`, Ctrl-C :data:`EXIT_STOPPED`; a bug keeps its traceback."""
    try:
        return body()
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return EXIT_STOPPED
    except Exception as exc:
        status = exit_status(prog, translate(exc))
        if status is None:
            raise
        return status
