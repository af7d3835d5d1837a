"""The thread count chosen by timing (wm_video/threads.py), on simulated machines: no real timing."""

from __future__ import annotations

from pathlib import Path

import pytest

from wm_video import threads
from wm_video.threads import ThreadTuner, candidate_counts


class Machine:
    """A fake CPU: a unit of work costs ``cost[load][threads]`` seconds; a clock that advances by it."""

    def __init__(self, cost: dict[str, dict[int, float]]) -> None:
        self.cost, self.load, self.now, self.threads = cost, "quiet", 0.0, -1
        self.settings: list[int] = []

    def set_threads(self, count: int) -> None:
        self.threads = count
        self.settings.append(count)

    def clock(self) -> float:
        return self.now

    def run(self, tuner: ThreadTuner, units: int, label: str = "frame") -> list[int]:
        """Run ``units`` units; the thread count each one ran at."""
        used = []
        for _ in range(units):
            used.append(self.threads)
            with tuner.step(label):
                self.now += self.cost[self.load][self.threads]
        return used


# The shipped world on 2 cores: two threads win on a quiet machine and collapse on a busy one.
COST = {"quiet": {1: 0.031, 2: 0.023}, "busy": {1: 0.056, 2: 1.2}}


def tuner_on(machine: Machine, **kwargs: object) -> ThreadTuner:
    lines: list[str] = []
    tuner = ThreadTuner(
        candidates=(1, 2), clock=machine.clock, set_threads=machine.set_threads, log=lines.append, **kwargs
    )
    tuner.lines = lines  # type: ignore[attr-defined]
    return tuner


def test_candidates_are_powers_of_two_and_every_cpu() -> None:
    assert candidate_counts(1) == (1,)
    assert candidate_counts(2) == (1, 2)
    assert candidate_counts(6) == (1, 2, 4, 6)
    assert candidate_counts(16) == (1, 2, 4, 8, 16)


@pytest.mark.parametrize(("load", "best"), [("quiet", 2), ("busy", 1)])
def test_the_trial_keeps_the_faster_count_and_says_so(load: str, best: int) -> None:
    machine = Machine(COST)
    machine.load = load
    tuner = tuner_on(machine)
    machine.run(tuner, 40)
    assert tuner.threads == best and machine.threads == best
    assert machine.run(tuner, 5) == [best] * 5
    assert tuner.trials == 1
    assert tuner.lines == [f"threads: {tuner.describe()}"]  # type: ignore[attr-defined]
    assert tuner.describe().startswith(f"{best} (by timing: 1 thread ") and "2 threads" in tuner.describe()


def test_a_collapsing_count_is_dropped_after_two_units() -> None:
    machine = Machine(COST)
    machine.load = "busy"
    tuner = tuner_on(machine)
    used = machine.run(tuner, 30)
    # the first unit of a label is not scored; then a single unit at 2 threads: 20× the best median
    assert used[1:].count(2) == 1


def test_a_machine_that_gets_busy_is_noticed_and_one_that_gets_quiet_too() -> None:
    machine = Machine(COST)
    tuner = tuner_on(machine, recheck_seconds=30.0)
    machine.run(tuner, 40)
    assert tuner.threads == 2
    machine.load = "busy"
    machine.run(tuner, 40)
    assert tuner.threads == 1 and tuner.trials == 2  # frames got 50× slower: a new trial at once
    machine.load = "quiet"
    machine.run(tuner, 40)
    assert tuner.threads == 1  # one thread got faster, not slower: nothing to notice yet
    machine.run(tuner, int(31 / COST["quiet"][1]))  # the periodic re-check
    assert tuner.threads == 2
    assert [line.split(" (")[0] for line in tuner.lines] == ["threads: 2", "threads: 1", "threads: 2"]  # type: ignore[attr-defined]


def test_each_kind_of_work_keeps_its_own_choice() -> None:
    cost = {"quiet": {1: 0.01, 2: 0.02}}
    machine = Machine(cost)
    tuner = tuner_on(machine)
    machine.run(tuner, 30, label="soak")
    assert tuner.threads == 1
    machine.cost = {"quiet": {1: 0.02, 2: 0.01}}
    machine.run(tuner, 30, label="rollout")
    assert tuner.threads == 2
    machine.run(tuner, 1, label="soak")  # back to a known kind: its choice, no trial
    assert tuner.threads == 1 and tuner.trials == 2


def test_a_fixed_count_is_never_changed() -> None:
    machine = Machine(COST)
    tuner = ThreadTuner(3, clock=machine.clock, set_threads=machine.set_threads, log=None)
    machine.cost = {"quiet": {3: 0.05}}
    machine.run(tuner, 50)
    assert machine.settings == [3] and tuner.describe() == "3 (fixed by --threads)"


def test_configure_respects_omp_num_threads_and_timed_is_inert_without_a_tuner(monkeypatch) -> None:
    import torch

    before = torch.get_num_threads()
    try:
        threads.reset()
        with threads.timed("frame"):
            pass  # no tuner: nothing happens
        monkeypatch.setenv("OMP_NUM_THREADS", "1")
        tuner = threads.configure(None, log=None)
        assert not tuner.adaptive and tuner.threads == 1 and "OMP_NUM_THREADS" in tuner.describe()
        monkeypatch.delenv("OMP_NUM_THREADS")
        assert not threads.configure(None, processes=2, log=None).adaptive  # torchrun's ranks
        assert threads.configure(2, log=None).threads == 2 == torch.get_num_threads()
    finally:
        threads.reset()
        torch.set_num_threads(before)


def test_a_benchmark_warms_up_until_the_count_is_chosen(monkeypatch) -> None:
    machine = Machine(COST)
    tuner = tuner_on(machine)
    monkeypatch.setattr(threads, "_TUNER", tuner)
    runs = threads.settle(lambda: setattr(machine, "now", machine.now + COST["quiet"][machine.threads]), "step", 3)
    assert tuner.settled("step") and tuner.threads == 2
    assert runs > 3  # more than the warm-up asked for: the trial needed them
    assert threads.settle(lambda: None, "step", 3) == 3  # chosen already: just the warm-up


def test_laps_between_calls_are_the_units_a_training_loop_reports() -> None:
    machine = Machine(COST)
    tuner = tuner_on(machine)
    for _ in range(40):  # one call per training step; the step's work happens between calls
        tuner.lap("training step")
        machine.now += COST["quiet"][machine.threads]
    assert tuner.settled("training step") and tuner.threads == 2


def test_training_programs_take_threads() -> None:
    import argparse

    from wm_video.train.options import SessionOptions, add_session_flags, session_options

    parser = argparse.ArgumentParser()
    add_session_flags(parser, SessionOptions(out=Path("run")))
    assert session_options(parser.parse_args(["--out", "run", "--threads", "1"])).threads == 1
    assert session_options(parser.parse_args(["--out", "run"])).threads is None


def test_confirmed_choices_are_checked_less_and_less_often() -> None:
    machine = Machine(COST)
    machine.load = "busy"
    tuner = tuner_on(machine, recheck_seconds=10.0)
    machine.run(tuner, int(200 / COST["busy"][1]))  # 200 s of steady load
    # re-checks after 10, 20, 40, 80 s of confirmations (not 20 of them, one every 10 s)
    assert 4 <= tuner.trials <= 6


def test_work_without_a_label_is_timed_too() -> None:
    machine = Machine(COST)
    tuner = ThreadTuner(candidates=(1, 2), clock=machine.clock, set_threads=machine.set_threads, log=None)
    for _ in range(30):
        with tuner.step():
            machine.now += COST["quiet"][machine.threads]
    assert tuner.settled() and tuner.threads == 2 and tuner.describe().endswith("a unit; --threads N fixes it)")
