"""Pictures of a consistency run: PNG plots (matplotlib, Agg), frame grids and the side-by-side mp4.

Every plot takes one series per evaluated checkpoint ("model", and "baseline" with
``--baseline``), so two checkpoints share one set of axes. Files are written atomically.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np

from wm_video.data.video import VideoSettings, encode_video
from wm_video.eval.rollouts import ClipScores
from wm_video.eval.soak import SoakReference, SoakReport
from wm_video.fileio import atomic_write, atomic_write_png

if TYPE_CHECKING:
    from matplotlib.figure import Figure

COLOURS = {"model": "tab:blue", "baseline": "tab:orange"}


def _figure(
    rows: int = 1, cols: int = 1, size: tuple[float, float] = (7.0, 4.0)
) -> tuple[Figure, np.ndarray]:
    """A figure and its (rows, cols) array of axes, on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt.subplots(rows, cols, figsize=size, squeeze=False)


def _save(figure: Figure, path: Path) -> Path:
    import matplotlib.pyplot as plt

    figure.tight_layout()
    atomic_write(path, lambda tmp: figure.savefig(tmp, format="png", dpi=110))
    plt.close(figure)
    return path


def plot_drift(scores: dict[str, ClipScores], fps: float, path: Path) -> Path:
    """PSNR and SSIM against the real frames at every generated step, mean ± std over clips."""
    figure, axes = _figure(1, 2, (11.0, 4.0))
    for label, score in scores.items():
        steps = np.arange(1, score.horizon + 1)
        colour = COLOURS.get(label, None)
        for ax, curve, name in (
            (axes[0, 0], score.drift.psnr, "PSNR (dB)"),
            (axes[0, 1], score.drift.ssim, "SSIM"),
        ):
            mean, std = np.array(curve.mean), np.array(curve.std)
            ax.plot(steps, mean, color=colour, label=f"{label}, real actions")
            ax.fill_between(steps, mean - std, mean + std, color=colour, alpha=0.2)
            ax.set_ylabel(name)
        held = np.array(score.drift.held_psnr.mean)
        axes[0, 0].plot(
            steps, held, color=colour, linestyle=":", label=f"{label} clips, last real frame held"
        )
    for ax in axes[0]:
        ax.set_xlabel(f"generated frame (at {fps:g} fps: {1 / fps:.3f} s each)")
        ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=8)
    axes[0, 0].set_title("drift: autoregressive rollout vs the real frames")
    axes[0, 1].set_title("SSIM, mean ± std over clips")
    return _save(figure, path)


def plot_control(scores: dict[str, ClipScores], path: Path) -> Path:
    """ΔPSNR(t) = PSNR with the real actions − PSNR with random actions."""
    figure, axes = _figure()
    ax = axes[0, 0]
    for label, score in scores.items():
        steps = np.arange(1, score.horizon + 1)
        ax.plot(steps, score.control.delta_psnr, color=COLOURS.get(label), label=label)
        ax.scatter([score.control.t], [score.control.delta_psnr_t4], color=COLOURS.get(label), zorder=3)
    ax.axhline(0.0, color="grey", linewidth=0.8)
    ax.set_xlabel("generated frame t")
    ax.set_ylabel("ΔPSNR (dB)")
    ax.set_title("controllability: PSNR(real actions) − PSNR(random actions)")
    ax.legend()
    ax.grid(alpha=0.3)
    return _save(figure, path)


def plot_soak(reports: dict[str, SoakReport], reference: SoakReference, path: Path) -> Path:
    """Each frame statistic over the soak, with the data's 1st–99th percentile band."""
    names = ("sharpness", "spread", "mean", "histogram_distance", "change")
    figure, axes = _figure(len(names), 1, (10.0, 2.2 * len(names)))
    for ax, name in zip(axes[:, 0], names, strict=True):
        low, _, high = reference.percentiles[name]
        ax.axhspan(low, high, color="grey", alpha=0.15, label="real data, 1st–99th pct")
        for label, report in reports.items():
            values = report.stats[name]
            window = max(1, min(report.window, len(values)))
            smooth = np.convolve(values, np.ones(window) / window, mode="valid")
            ax.plot(np.arange(len(smooth)) + window // 2, smooth, color=COLOURS.get(label), label=label)
            if report.first_collapse is not None:
                ax.axvline(report.first_collapse, color=COLOURS.get(label), linestyle="--")
        ax.set_ylabel(name.replace("_", " "))
        ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=8)
    axes[0, 0].set_title("soak: frame statistics (rolling mean); dashed: first collapse")
    axes[-1, 0].set_xlabel("generated frame")
    return _save(figure, path)


def save_grid(rows: list[np.ndarray], path: Path, scale: int = 2) -> Path:
    """PNG of frame rows: each row (K, H, W, 3) uint8, all rows the same K; white gaps between."""
    gap = 2
    count, height, width = rows[0].shape[:3]
    grid = np.full((len(rows) * (height + gap) - gap, count * (width + gap) - gap, 3), 255, np.uint8)
    for r, row in enumerate(rows):
        for k in range(count):
            top, left = r * (height + gap), k * (width + gap)
            grid[top : top + height, left : left + width] = row[k]
    grid = cv2.resize(grid, None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST)
    return atomic_write_png(path, grid)


def side_by_side_frames(real: np.ndarray, generated: np.ndarray, scale: int = 2) -> np.ndarray:
    """Real | generated | difference for clips (B, T, H, W, 3) → video frames (T, B·H·s, 3·W·s, 3).

    The difference is |real − generated| averaged over channels, amplified ×3, as grey.
    """
    diff = np.abs(real.astype(np.int16) - generated.astype(np.int16)).mean(axis=-1, keepdims=True)
    diff = np.clip(diff * 3, 0, 255).astype(np.uint8).repeat(3, axis=-1)
    panel = np.concatenate((real, generated, diff), axis=3)  # (B, T, H, 3W, 3)
    video = np.concatenate(list(panel), axis=1)  # (T, B·H, 3W, 3)
    if scale > 1:
        video = video.repeat(scale, axis=1).repeat(scale, axis=2)
    return np.ascontiguousarray(video)


def write_side_by_side(real: np.ndarray, generated: np.ndarray, fps: float, path: Path) -> Path:
    """mp4 of real | generated | difference (see :func:`side_by_side_frames`), H.264 yuv444p."""
    frames = side_by_side_frames(real, generated)
    if frames.shape[1] % 2 or frames.shape[2] % 2:  # even sizes for every player
        frames = np.pad(frames, ((0, 0), (0, frames.shape[1] % 2), (0, frames.shape[2] % 2), (0, 0)))

    def write(tmp: Path) -> None:
        encode_video(tmp, frames, fps, VideoSettings())  # PyAV is told the format: mp4 under any name

    atomic_write(path, write)
    return path
