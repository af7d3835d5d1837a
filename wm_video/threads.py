"""Torch's CPU thread count, chosen by measurement while a program runs.

Why measure: a small model at batch 1 runs a few hundred small operations per frame, and each
parallel one waits for its slowest thread. On a 2-core CPU that other programs keep busy, one of
torch's two threads is often descheduled while the other spins at the barrier: the shipped world
ran at 0.8 frames/s with torch's default of two threads and at 17.9 with one. On a quiet machine
two threads win (44 against 32 frames/s). No fixed number suits both, and a laptop moves
between them, so the programs time the work they are doing:

- **A trial.** The first units of a kind of work (a played frame, a rollout step, an optimizer
  step: see :func:`timed`) run in blocks of ``trial_steps`` at each candidate count (1, 2, 4 …
  up to the CPUs this process may use), in the order A B … B A so that a load that changes
  during the trial weighs on every candidate alike; the first unit after a switch is not counted.
  The lowest median wins, and the choice is printed. A candidate whose median is already twice
  the best one's is dropped at once, so a trial on a busy machine costs a few slow units, not
  blocks of them; a single unit four times the best median drops it at once.
- **Re-checks.** The tuner then watches the median of the last units. It runs the trial again
  when that median exceeds ``degrade`` × the median the choice was made on (the machine got
  busy), or when ``recheck_seconds`` have passed (it may have gone quiet); each re-check that
  confirms the choice doubles that wait (up to 16 minutes), so a steady machine pays for few of
  them. A changed choice is printed.
- **When nothing is chosen.** ``--threads N`` (or the ``OMP_NUM_THREADS`` environment variable)
  fixes the count; so does a CUDA device, where the CPU threads hardly matter, and a run of
  several processes (``torchrun`` gives each one thread).

OpenMP's wait policy: with ``OMP_WAIT_POLICY=PASSIVE`` idle threads sleep at once instead of
spinning, which limits the damage of two threads on a busy machine, but it costs a quiet
machine about a third of its speed here (each of the few hundred parallel regions of a frame
then wakes a sleeping thread); choosing the count by measurement keeps the quiet speed and avoids
the busy-machine collapse, so the policy is left to the user (it must be set before torch starts).

The thread count is process-wide state (:func:`torch.set_num_threads`), so the tuner is too:
a program calls :func:`configure` once, and library loops wrap each unit of work in
:func:`timed` (or call :func:`lap` once per unit), which do nothing when no tuner is configured.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from wm_video.cli_args import counted

if TYPE_CHECKING:
    import torch

TRIAL_STEPS = 4  # counted units per candidate per round
ROUNDS = 2  # A B then B A
CUT = 2.0  # a candidate whose median is this many times the best so far is dropped from the trial
COLLAPSE = 4.0  # and one whose any unit is this many times the best median, at once
DEGRADE = 1.5  # re-run the trial when the recent median exceeds this × the chosen median
RECHECK_SECONDS = 60.0  # and after this long, to notice a machine that went quiet; doubled (up to
MAX_RECHECK_SECONDS = 960.0  # this) each time a re-check confirms the choice, reset when it changes
WINDOW = 8  # recent units whose median is watched


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask where the platform has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def candidate_counts(cpus: int) -> tuple[int, ...]:
    """1, 2, 4 … below ``cpus``, and ``cpus`` itself."""
    counts = {cpus}
    count = 1
    while count < cpus:
        counts.add(count)
        count *= 2
    return tuple(sorted(counts))


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


@dataclass
class _Trial:
    """The timing of candidates for one kind of work."""

    plan: list[tuple[int, bool]]  # (threads, scored) per unit still to run
    samples: dict[int, list[float]] = field(default_factory=dict)

    def medians(self) -> dict[int, float]:
        return {n: statistics.median(s) for n, s in self.samples.items() if s}


@dataclass
class _Choice:
    threads: int
    median: float  # seconds per unit when chosen
    at: float  # clock time of the choice
    medians: dict[int, float]
    recheck: float  # seconds after ``at`` when the trial runs again


class ThreadTuner:
    """Chooses torch's intra-op thread count from the timings of units of work (see the module doc).

    ``fixed`` (a count) disables the choice. ``observe(seconds, label)`` reports a unit that ran
    at :attr:`threads`; it may change :attr:`threads` (and torch's setting) for the next unit.
    Each ``label`` (a kind of work) keeps its own choice.
    """

    def __init__(
        self,
        fixed: int | None = None,
        *,
        candidates: Sequence[int] | None = None,
        trial_steps: int = TRIAL_STEPS,
        rounds: int = ROUNDS,
        degrade: float = DEGRADE,
        recheck_seconds: float = RECHECK_SECONDS,
        why_fixed: str = "--threads",
        log: Callable[[str], None] | None = _stderr,
        clock: Callable[[], float] = time.perf_counter,
        set_threads: Callable[[int], None] | None = None,
    ) -> None:
        if fixed is not None and fixed < 1:
            raise ValueError(f"threads must be ≥ 1, got {fixed}")
        self.candidates = tuple(candidates) if candidates is not None else candidate_counts(available_cpus())
        self.fixed = fixed if fixed is not None else (self.candidates[0] if len(self.candidates) == 1 else None)
        self.why_fixed = why_fixed if fixed is not None else "one CPU"
        self.trial_steps, self.rounds = trial_steps, rounds
        self.degrade, self.recheck_seconds = degrade, recheck_seconds
        if set_threads is None:
            import torch

            set_threads = torch.set_num_threads
        self.log, self.clock, self._set = log, clock, set_threads
        # until a trial has chosen, work runs as torch would run it: on every CPU
        self.threads = self.fixed if self.fixed is not None else self.candidates[-1]
        self._set(self.threads)
        self.label: str | None = None  # the kind of work last reported
        self._choices: dict[str, _Choice] = {}
        self._trial: _Trial | None = None
        self._recent: deque[float] = deque(maxlen=WINDOW)
        self.trials = 0  # trials run (for the tests and the curious)
        self._lap_at: float | None = None

    @property
    def adaptive(self) -> bool:
        return self.fixed is None

    def _switch(self, threads: int) -> None:
        if threads != self.threads:
            self.threads = threads
            self._set(threads)

    def _start_trial(self) -> None:
        plan: list[tuple[int, bool]] = []
        for round_index in range(self.rounds):  # 1 thread first: it never collapses, so it sets the bar
            for threads in self.candidates if round_index % 2 == 0 else reversed(self.candidates):
                plan.append((threads, False))  # the first unit after a switch warms the new threads up
                plan += [(threads, True)] * self.trial_steps
        self._trial = _Trial(plan)
        self.trials += 1
        self._switch(plan[0][0])

    def _finish_trial(self, trial: _Trial) -> None:
        medians = trial.medians()
        best = min(medians, key=medians.__getitem__)
        label = self.label or ""
        previous = self._choices.get(label)
        recheck = self.recheck_seconds
        if previous is not None and previous.threads == best:  # confirmed: look again less often
            recheck = min(2 * previous.recheck, max(MAX_RECHECK_SECONDS, self.recheck_seconds))
        self._choices[label] = _Choice(best, medians[best], self.clock(), medians, recheck)
        self._trial = None
        self._recent.clear()
        self._switch(best)
        if self.log is not None and (previous is None or previous.threads != best):
            self.log(f"threads: {self.describe()}")

    def _observe_trial(self, trial: _Trial, seconds: float) -> None:
        threads, scored = trial.plan.pop(0)
        if scored:
            trial.samples.setdefault(threads, []).append(seconds)
        medians = trial.medians()
        mine = trial.samples.get(threads, [])
        others = [m for n, m in medians.items() if n != threads and len(trial.samples[n]) >= 2]
        collapsed = others and seconds > COLLAPSE * min(others)  # even a warm-up unit tells this
        if others and (collapsed or (len(mine) >= 2 and medians[threads] > CUT * min(others))):
            trial.plan = [(n, c) for n, c in trial.plan if n != threads]  # clearly slower: drop it
            trial.samples.setdefault(threads, [seconds])  # (shown in the printed choice)
        if trial.plan:
            self._switch(trial.plan[0][0])
        else:
            self._finish_trial(trial)

    def observe(self, seconds: float, label: str = "") -> None:
        """A unit of ``label`` work took ``seconds`` at :attr:`threads`; choose the count for the next one."""
        if not self.adaptive:
            return
        if label != self.label:  # another kind of work: its own choice, or a trial
            self.label, self._trial = label, None
            self._recent.clear()
            known = self._choices.get(label)
            if known is not None and self.clock() - known.at < known.recheck:
                self._switch(known.threads)
            else:
                self._start_trial()
            return  # this unit ran under the previous label's setting
        if self._trial is not None:
            self._observe_trial(self._trial, seconds)
            return
        choice = self._choices[label]
        self._recent.append(seconds)
        slower = len(self._recent) == WINDOW and statistics.median(self._recent) > self.degrade * choice.median
        if slower:
            choice.recheck = self.recheck_seconds  # the machine changed: watch it closely again
        if slower or self.clock() - choice.at > choice.recheck:
            self._start_trial()

    def settled(self, label: str = "") -> bool:
        """Whether the count for ``label`` is chosen and no trial is running (always, when fixed)."""
        return not self.adaptive or (label == self.label and label in self._choices and self._trial is None)

    def lap(self, label: str = "") -> None:
        """Report the time since the previous ``lap`` as one unit of ``label`` work (the first call
        starts the clock): for loops whose steps all pass one place, such as a training step."""
        now = self.clock()
        if self._lap_at is not None:
            self.observe(now - self._lap_at, label)
        self._lap_at = now

    @contextmanager
    def step(self, label: str = "") -> Iterator[None]:
        """Time the block as one unit of ``label`` work."""
        began = self.clock()
        yield
        self.observe(self.clock() - began, label)

    def describe(self) -> str:
        """The count in use and why, e.g. ``2 (by timing: 1 thread 31.0 ms, 2 threads 22.6 ms a unit)``."""
        if not self.adaptive:
            return f"{self.threads} (fixed by {self.why_fixed})"
        choice = self._choices.get(self.label) if self.label is not None else None
        if choice is None:
            return f"{self.threads} (being timed: {', '.join(map(str, self.candidates))})"
        timings = ", ".join(f"{counted(n, 'thread')} {1000 * m:.1f} ms" for n, m in sorted(choice.medians.items()))
        unit = f" a {self.label}" if self.label else " a unit"
        return f"{choice.threads} (by timing: {timings}{unit}; --threads N fixes it)"


_TUNER: ThreadTuner | None = None


def configure(
    threads: int | None,
    *,
    device: str | torch.device = "cpu",
    processes: int = 1,
    log: Callable[[str], None] | None = _stderr,
) -> ThreadTuner:
    """Set up this process's thread count: ``threads`` fixes it; None chooses it by timing (on a CPU,
    in a single process, unless ``OMP_NUM_THREADS`` is set). Returns the process's tuner."""
    import torch

    global _TUNER
    why = "--threads"
    if threads is None and os.environ.get("OMP_NUM_THREADS", "").isdigit():
        threads, why = int(os.environ["OMP_NUM_THREADS"]), "OMP_NUM_THREADS"
    if threads is None and (torch.device(device).type != "cpu" or processes > 1):
        threads, why = torch.get_num_threads(), "torch's default (a GPU run)" if processes == 1 else "torchrun"
    _TUNER = ThreadTuner(threads, why_fixed=why, log=log)  # it prints a count it chooses, not a fixed one
    return _TUNER


def current() -> ThreadTuner | None:
    """The process's tuner, if :func:`configure` was called."""
    return _TUNER


def reset() -> None:
    """Forget the process's tuner (the thread count stays as it is)."""
    global _TUNER
    _TUNER = None


@contextmanager
def timed(label: str) -> Iterator[None]:
    """Time the block as one unit of ``label`` work for the process's tuner (nothing without one)."""
    tuner = _TUNER
    if tuner is None or not tuner.adaptive:
        yield
        return
    with tuner.step(label):
        yield


def settle(step: Callable[[], object], label: str, at_least: int) -> int:
    """Run ``step`` ``at_least`` times, and on until the process's tuner has chosen the thread count
    for ``label``: the warm-up of a benchmark, which then times one fixed setting. Returns the runs."""
    runs = 0
    while runs < at_least or (_TUNER is not None and not _TUNER.settled(label)):
        with timed(label):
            step()
        runs += 1
    return runs


def lap(label: str) -> None:
    """The time since the previous ``lap(label)`` is one unit of ``label`` work for the process's tuner."""
    if _TUNER is not None and _TUNER.adaptive:
        _TUNER.lap(label)
