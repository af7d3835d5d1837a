"""Errors that reach users: each names the file (and episode) it is about and what was expected."""

from __future__ import annotations

from pathlib import Path


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
