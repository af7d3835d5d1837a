"""Ctrl-C and SIGTERM as a flag that long loops poll at their boundaries.

Training polls it between optimizer steps (then saves), play between frames, evaluation between
batches. A signal only sets the flag, so no loop is torn in the middle of a write; a second Ctrl-C
while a stop is pending raises KeyboardInterrupt at once, for a user who really means it. Signals
can be caught only in the main thread; elsewhere the flag is never set by a signal.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import Any

_PR_SET_PDEATHSIG = 1  # linux/prctl.h


class StopFlag:
    """Use as ``with StopFlag() as stop:``; poll ``stop.requested``. Loops may also ``request(reason)``."""

    def __init__(self) -> None:
        self.reason: str | None = None  # why the loop stops: a signal name, or what the loop gave
        self.signal_name = ""  # the signal received, if any
        self._previous: dict[int, Any] = {}

    @property
    def requested(self) -> bool:
        return self.reason is not None

    def request(self, reason: str) -> None:
        """Ask the loop to stop (Esc, a closed window, a time budget); the first reason is kept."""
        self.reason = self.reason or reason

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signal_name = signal.Signals(signum).name
        self.request(self.signal_name)

    def __enter__(self) -> StopFlag:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, signal.SIG_DFL if handler is None else handler)
        self._previous.clear()


def die_with_parent(signum: int = signal.SIGTERM, *, parent: int | None = None) -> None:
    """Have the kernel send ``signum`` to this process when its parent dies, even by SIGKILL (Linux;
    elsewhere nothing happens). ``parent``: the pid expected as parent; if it is already gone, exit now.

    A worker process or engine otherwise outlives a killed parent, adopted by init, and runs on.
    """
    if sys.platform != "linux":
        return
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(signum))
    if parent is not None and os.getppid() != parent:  # it died before the call above
        os._exit(1)


def exec_dying_with_parent(real: str, folder: Path) -> Path:
    """Write ``folder/<name of real>``: an executable that execs ``real`` (with its arguments) after
    asking for SIGKILL when its parent, the process calling this, dies. For engines started by
    libraries that spawn them as child processes (ViZDoom), so they never outlive their caller."""
    wrapper = Path(folder) / Path(real).name
    wrapper.write_text(
        f"#!{sys.executable} -SE\n"
        "import ctypes, os, signal, sys\n"
        f"ctypes.CDLL(None).prctl({_PR_SET_PDEATHSIG}, signal.SIGKILL)\n"
        f"if os.getppid() != {os.getpid()}:\n"
        "    sys.exit(1)\n"
        f"os.execv({real!r}, [{real!r}] + sys.argv[1:])\n"
    )
    wrapper.chmod(0o755)
    return wrapper
