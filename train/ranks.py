"""Noticing a frozen or dead process of a multi-process run, and saying which one it is.

Without this, a process stopped by SIGSTOP (or on a hung machine) leaves the others waiting in a
collective with no output, and a crashed one ends the job in raw gloo/torchrun tracebacks.

Each process runs a small thread that bumps a counter of its own in the process group's store
(the rendezvous store ``torchrun`` and ``accelerate launch`` already run) every
:data:`BEAT_S` seconds and reads the others'. The thread keeps beating while its process waits
in a collective, so a counter that stops moving means a process that is frozen or gone:

- a counter unchanged for ``stale_after_s`` seconds: the watcher prints which rank, and since
  when, and ends its own process with exit status 2 (the launcher then stops the rest);
- a collective that fails (a peer's connection closed): :func:`rank_failure` turns the error
  into one line naming the ranks whose counters stopped.

Both say that the run folder keeps its last complete checkpoint, so rerunning resumes.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path
from typing import Any, ClassVar

from wm_video.errors import EXIT_ERROR, WMVideoError

BEAT_S = 1.0  # seconds between heartbeats
_KEY = "wm-video/heartbeat/{rank}"


class RankFailure(WMVideoError):
    """Another process of the run froze or died."""


class RankWatch:
    """Heartbeats of every rank through ``store``; the one active watch is :attr:`active`."""

    active: ClassVar[RankWatch | None] = None

    def __init__(self, store: Any, *, rank: int, world_size: int, stale_after_s: float, out: Path) -> None:
        self.store, self.rank, self.world_size = store, rank, world_size
        self.stale_after_s, self.out = stale_after_s, Path(out)
        self._stop = threading.Event()
        self._beats = 0
        self._seen: dict[int, tuple[int, float]] = {}  # rank → (its counter, when it last moved)
        self._thread = threading.Thread(target=self._run, name="wm-video rank watch", daemon=True)

    @classmethod
    def start_for_process_group(cls, *, stale_after_s: float, out: Path) -> RankWatch | None:
        """A started watch over the default process group's store, or None on a single process."""
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
            return None
        store = dist.distributed_c10d._get_default_store()
        watch = cls(
            store,
            rank=dist.get_rank(),
            world_size=dist.get_world_size(),
            stale_after_s=stale_after_s,
            out=out,
        )
        watch.start()
        return watch

    def start(self) -> None:
        self._beat()
        RankWatch.active = self
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if RankWatch.active is self:
            RankWatch.active = None

    def _beat(self) -> None:
        self._beats += 1
        self.store.set(_KEY.format(rank=self.rank), str(self._beats))

    def _counters(self) -> dict[int, int]:
        counters = {}
        for rank in range(self.world_size):
            key = _KEY.format(rank=rank)
            if rank != self.rank and self.store.check([key]):
                counters[rank] = int(self.store.get(key))
        return counters

    def _observe(self, now: float) -> None:
        for rank, counter in self._counters().items():
            if self._seen.get(rank, (None, 0.0))[0] != counter:
                self._seen[rank] = (counter, now)

    def silent_ranks(self, now: float | None = None) -> dict[int, float]:
        """Ranks whose counter has not moved, and for how many seconds (those seen at all)."""
        now = time.monotonic() if now is None else now
        return {rank: now - moved for rank, (_, moved) in self._seen.items() if now - moved > 3 * BEAT_S}

    def _run(self) -> None:
        started = time.monotonic()
        while not self._stop.wait(BEAT_S):
            now = time.monotonic()
            try:
                self._beat()
                self._observe(now)
            except Exception:  # the store is gone: the run is ending, the main thread will say why
                return
            missing = [r for r in range(self.world_size) if r != self.rank and r not in self._seen]
            stale = {r: s for r, s in self.silent_ranks(now).items() if s > self.stale_after_s}
            if missing and now - started > self.stale_after_s:
                stale |= {r: now - started for r in missing}
            if stale:
                print(f"wm-video train: error: {self.describe(stale)}", file=sys.stderr, flush=True)
                os._exit(EXIT_ERROR)

    def describe(self, silent: dict[int, float]) -> str:
        ranks = ", ".join(f"rank {r} (silent for {s:.0f} s)" for r, s in sorted(silent.items()))
        return (
            f"rank {self.rank}: {ranks} of {self.world_size} stopped answering: frozen (SIGSTOP, a hung "
            f"machine) or dead; stopping. {self.out} keeps its last complete checkpoint: rerun the same "
            "command to resume"
        )

    def failure(self, error: BaseException) -> RankFailure:
        """The error of a failed collective, as one line naming the ranks that went silent."""
        deadline = time.monotonic() + 4 * BEAT_S
        while not self.silent_ranks() and time.monotonic() < deadline:
            time.sleep(BEAT_S / 2)
            try:
                self._observe(time.monotonic())
            except Exception:
                break
        silent = self.silent_ranks()
        if silent:
            return RankFailure(self.describe(silent))
        return RankFailure(
            f"rank {self.rank}: a collective operation with the other processes failed ({str(error)[:200]}); "
            f"another process died or lost its connection. {self.out} keeps its last complete checkpoint"
        )


def rank_failure(error: BaseException) -> BaseException:
    """``error`` as a :class:`RankFailure` when it is a collective's failure during a watched run,
    else ``error`` itself."""
    watch = RankWatch.active
    if watch is None or not isinstance(error, RuntimeError) or isinstance(error, WMVideoError):
        return error
    text = str(error)
    if not any(
        word in text for word in ("gloo", "Connection", "Timed out", "NCCL", "closed by peer", "Broken pipe")
    ):
        return error
    return watch.failure(error)
