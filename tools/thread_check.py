"""Does the automatic thread count hold up? Headless play of the shipped world, quiet and loaded, interleaved.

    python tools/thread_check.py --rounds 3

Each round plays ``--frames`` frames (``wm-video play --headless``) with no thread flag, with
``--threads 1`` and with ``--threads N`` (N = the CPUs), first on the machine as it is ("quiet"),
then while one busy process per CPU runs beside it ("loaded"). Medians of frames/s per setting
are printed with the load averages seen, and the ratio of the automatic choice to the best fixed
setting of the same condition. The issue's bar: loaded, the automatic choice within 1.5× of the
best fixed setting; quiet, no slower than before (44 frames/s with 2 threads on a 2-core CPU).
``--loaded-collapse-frames`` shortens the loaded runs of N threads, which can take minutes.
``--passive`` adds ``--threads N`` under ``OMP_WAIT_POLICY=PASSIVE`` (idle OpenMP threads sleep
instead of spinning; libgomp reads it when torch loads, so it is set for the whole process).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import re
import statistics
import subprocess
import sys
import time

RATE = re.compile(r"played [\d,]+ frames in [\d.]+ s: ([\d.]+) frames/s")


def busy(seconds: float) -> None:
    end = time.monotonic() + seconds
    count = 0
    while time.monotonic() < end:
        count += 1


def play(threads: int | None, frames: int, passive: bool = False) -> float:
    command = ["wm-video", "play", "--headless", "--frames", str(frames), "--no-progress"]
    if threads is not None:
        command += ["--threads", str(threads)]
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY")}
    if passive:
        env["OMP_WAIT_POLICY"] = "PASSIVE"
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=3600)
    match = RATE.search(result.stdout)
    if result.returncode != 0 or match is None:
        sys.exit(f"{' '.join(command)} failed:\n{result.stderr[-2000:]}")
    chosen = [line for line in result.stderr.splitlines() if line.startswith("threads:")]
    if chosen:
        print(f"      {chosen[-1]}", flush=True)
    return float(match.group(1))


def _name(threads: int | str | None, cpus: int) -> str:
    if threads is None:
        return "auto"
    return f"--threads {cpus} PASSIVE" if threads == "passive" else f"--threads {threads}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="rounds of every setting (default 3)")
    parser.add_argument("--frames", type=int, default=300, help="frames per run (default 300)")
    parser.add_argument(
        "--loaded-collapse-frames",
        type=int,
        default=100,
        help="frames of the loaded runs with every thread, which can crawl (default 100)",
    )
    parser.add_argument("--passive", action="store_true", help="also --threads N with OMP_WAIT_POLICY=PASSIVE")
    args = parser.parse_args()
    cpus = len(os.sched_getaffinity(0))
    settings: list[int | str | None] = [None, 1, cpus] + (["passive"] if args.passive else [])
    rates: dict[tuple[str, int | str | None], list[float]] = {}
    loads: dict[str, list[str]] = {"quiet": [], "loaded": []}
    for round_index in range(args.rounds):
        for condition in ("quiet", "loaded"):
            workers = []
            if condition == "loaded":
                workers = [multiprocessing.Process(target=busy, args=(7200,)) for _ in range(cpus)]
                for worker in workers:
                    worker.start()
                time.sleep(2)
            try:
                for threads in settings if round_index % 2 == 0 else reversed(settings):
                    frames = args.frames
                    if condition == "loaded" and threads in (cpus, "passive") and cpus > 1:
                        frames = args.loaded_collapse_frames
                    passive = threads == "passive"
                    rate = play(cpus if isinstance(threads, str) else threads, frames, passive)
                    load = " ".join(open("/proc/loadavg").read().split()[:3])
                    loads[condition].append(load)
                    rates.setdefault((condition, threads), []).append(rate)
                    name = _name(threads, cpus)
                    print(f"round {round_index + 1} {condition:<6} {name:<12} {rate:6.1f} frames/s  (load {load})", flush=True)
            finally:
                for worker in workers:
                    worker.terminate()
                    worker.join()
    print("\nmedian frames/s")
    for condition in ("quiet", "loaded"):
        medians = {t: statistics.median(rates[(condition, t)]) for t in settings}
        best = max(medians[t] for t in (1, cpus))
        cells = "  ".join(f"{_name(t, cpus)} {medians[t]:.1f}" for t in settings)
        print(f"{condition:<6} {cells}  best fixed / auto = {best / medians[None]:.2f}  (load averages {', '.join(loads[condition])})")


if __name__ == "__main__":
    main()
