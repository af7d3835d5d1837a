"""``wm-video plot RUN [RUN …] [--out PNG]``: training curves from the runs' ``log.jsonl``.

No notebook needed: one PNG with a panel per metric (loss, learning rate, frames/s, held-out
scores, …), every run given drawn in its own colour so runs can be compared. matplotlib draws
off-screen (Agg), so it works over ssh and in CI.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from pathlib import Path

from wm_video.errors import InputError
from wm_video.fileio import atomic_write
from wm_video.train.common import read_log

SKIPPED = {"step", "time"}


def curves(run: Path) -> dict[str, tuple[list[int], list[float]]]:
    """metric → (steps, values) of a run's log, in step order (non-finite values left out)."""
    records = read_log(run)
    if not records:
        raise InputError(f"{run}: no training log ({Path(run) / 'log.jsonl'} is missing or empty)")
    found: dict[str, tuple[list[int], list[float]]] = {}
    for record in sorted(records, key=lambda r: r.get("step", 0)):
        for key, value in record.items():
            if key in SKIPPED or not isinstance(value, int | float) or not math.isfinite(value):
                continue
            steps, values = found.setdefault(key, ([], []))
            steps.append(int(record["step"]))
            values.append(float(value))
    return found


def plot_runs(runs: Sequence[Path], out: Path, metrics: Sequence[str] | None = None) -> Path:
    """Draw the curves of ``runs`` into the PNG ``out``; ``metrics`` picks panels (default: all logged)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    logs = {Path(run): curves(run) for run in runs}
    available = sorted({key for found in logs.values() for key in found})
    chosen = list(metrics) if metrics else available
    unknown = [m for m in chosen if m not in available]
    if unknown:
        raise InputError(f"no run logged {unknown}; logged metrics: {', '.join(available)}")
    columns = min(3, len(chosen))
    rows = math.ceil(len(chosen) / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(4.5 * columns, 3.2 * rows), squeeze=False)
    for panel, metric in zip(axes.flat, chosen, strict=False):
        for run, found in logs.items():
            if metric in found:
                steps, values = found[metric]
                panel.plot(steps, values, marker="." if len(steps) < 30 else None, label=run.name)
        panel.set_title(metric)
        panel.set_xlabel("step")
        if metric in ("loss", "mse", "lr") and all(
            v > 0 for f in logs.values() for v in f.get(metric, ([], []))[1]
        ):
            panel.set_yscale("log")
        panel.grid(alpha=0.3)
    for panel in list(axes.flat)[len(chosen) :]:
        panel.axis("off")
    if len(logs) > 1:
        axes.flat[0].legend()
    figure.tight_layout()
    atomic_write(Path(out), lambda tmp: figure.savefig(tmp, format="png", dpi=100))
    plt.close(figure)
    return Path(out)


def run_plot(args: argparse.Namespace) -> int:
    """The ``wm-video plot`` handler: ``args.runs``, ``args.out``, ``args.metrics``."""
    runs = [Path(run) for run in args.runs]
    out = Path(args.out) if args.out else runs[0] / "curves.png"
    metrics = [m.strip() for m in args.metrics.split(",") if m.strip()] if args.metrics else None
    path = plot_runs(runs, out, metrics)  # an error is reported by wm_video.errors.run_program
    print(f"wrote {path}")
    return 0
