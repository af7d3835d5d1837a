"""What the training programs share: precision choice, EMA, the stop flag, RNG state, run logs.

Each piece is small and testable alone; :mod:`wm_video.train.session` runs the loop over them.
"""

from __future__ import annotations

import copy
import json
import random
import time
import uuid
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch import nn

from wm_video.errors import InputError
from wm_video.fileio import atomic_write, atomic_write_png, atomic_write_text
from wm_video.train.options import PRECISIONS, REPORT_TO


def cpu_has_amx() -> bool:
    """True when this CPU multiplies bf16 matrices in AMX tiles (then bf16 beats fp32 by ~4×)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "amx_bf16" in flags


def choose_mixed_precision(requested: str, *, on_cpu: bool) -> str:
    """``auto``: bf16 on a GPU that has it (else fp16); on a CPU bf16 only with AMX, else fp32 ("no").

    Without AMX, bf16 autocast on a CPU converts every operand and runs slower than fp32 (measured
    0.5–0.6× on this project's 2-core machine), so it is not a default there.
    """
    if requested not in PRECISIONS:
        raise InputError(f"mixed precision must be one of {', '.join(PRECISIONS)}; got {requested!r}")
    if requested != "auto":
        if requested == "fp16" and on_cpu:
            raise InputError("fp16 mixed precision needs a GPU; use bf16 or no on a CPU")
        return requested
    if not on_cpu and torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if cpu_has_amx() else "no"


def use_tf32(device: torch.device) -> None:
    """On a GPU, let float32 matmuls and convolutions use TF32 tensor cores (float32 range, 10-bit
    mantissa products): the float32 parts of a step, the loss and anything autocast leaves alone."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


class EMA:
    """An exponential moving average of a model's weights, kept in float32 beside it.

    The decay ramps up as min(decay, (1 + step) / (10 + step)) so early averages are not
    dominated by the random initialisation.
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise InputError(f"EMA decay must lie in (0, 1), got {decay}")
        self.decay = decay
        self.model = copy.deepcopy(model).float().eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module, step: int, skip: torch.Tensor | None = None) -> None:
        """Move the average towards ``model``'s weights; not at all where ``skip`` (a () bool device
        tensor: the optimizer step was skipped) is true, decided on the device without a host read."""
        decay = min(self.decay, (1 + step) / (10 + step))
        ema_params: list[torch.Tensor] = list(self.model.parameters())
        params = [p.detach().float() for p in model.parameters()]
        if skip is None:
            torch._foreach_lerp_(ema_params, params, 1.0 - decay)
        else:  # the weight as a device tensor (one per parameter: a lone tensor would be read as a Python scalar)
            weight = (~skip).float() * (1.0 - decay)
            torch._foreach_lerp_(ema_params, params, [weight] * len(ema_params))
        for ema_buffer, buffer in zip(self.model.buffers(), model.buffers(), strict=True):
            ema_buffer.copy_(buffer)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.model.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.model.load_state_dict(state)


def rng_state() -> dict[str, Any]:
    """Python, numpy and torch (CPU and CUDA) RNG states, in a form a checkpoint can store."""
    numpy_state: tuple[Any, ...] = tuple(np.random.get_state(legacy=True))
    return {
        "python": random.getstate(),
        "numpy": [numpy_state[0], torch.from_numpy(np.asarray(numpy_state[1]).copy()), *numpy_state[2:]],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def rng_state_to_lists(state: dict[str, Any]) -> dict[str, Any]:
    """``state`` with tensors as lists of ints: plain data that can travel between processes."""
    name, keys, *rest = state["numpy"]
    return {
        "python": state["python"],
        "numpy": [name, keys.tolist(), *rest],
        "torch": state["torch"].tolist(),
        "cuda": [s.tolist() for s in state["cuda"]],
    }


def rng_state_from_lists(state: dict[str, Any]) -> dict[str, Any]:
    """The inverse of :func:`rng_state_to_lists`."""
    name, keys, *rest = state["numpy"]
    return {
        "python": state["python"],
        "numpy": [name, torch.from_numpy(np.asarray(keys, dtype=np.uint32)), *rest],
        "torch": torch.tensor(state["torch"], dtype=torch.uint8),
        "cuda": [torch.tensor(s, dtype=torch.uint8) for s in state["cuda"]],
    }


def seed_ranks(seed: int, rank: int) -> None:
    """Seed python, numpy and torch with a seed of their own for each (seed, rank)."""
    derived = int(np.random.SeedSequence([seed, rank, 0x5EED]).generate_state(1)[0])
    random.seed(derived)
    np.random.seed(derived)
    torch.manual_seed(derived)


# Dense bf16 tensor-core peaks (FLOP/s) as the vendors state them, by a name fragment of
# torch.cuda.get_device_name(); an MFU estimate is only logged for GPUs listed here.
GPU_PEAK_BF16_FLOPS: dict[str, float] = {
    "H200": 989e12,
    "H100": 989e12,
    "A100": 312e12,
    "L40S": 362e12,
    "L4": 121e12,
    "A10": 125e12,
    "RTX 4090": 165e12,
    "RTX 3090": 71e12,
}


def peak_flops(device: torch.device) -> float | None:
    """The bf16 peak of ``device`` if it is a GPU named in :data:`GPU_PEAK_BF16_FLOPS`, else None."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((flops for key, flops in GPU_PEAK_BF16_FLOPS.items() if key in name), None)


def matmul_parameters(model: nn.Module) -> int:
    """Weights that multiply every token: those of linear and convolution layers. Embedding tables
    (a lookup), positions, biases and norms do next to no arithmetic and are left out."""
    layers = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
    return sum(m.weight.numel() for m in model.modules() if isinstance(m, layers))


def train_flops_per_frame(parameters: int, tokens_per_frame: int) -> float:
    """Training FLOPs for one frame, the usual estimate: 6 × matmul parameters
    (:func:`matmul_parameters`) × tokens, forward and backward; attention is left out."""
    return 6.0 * parameters * tokens_per_frame


def throughput(
    frames: int,
    seconds: float,
    *,
    tokens_per_frame: int,
    flops_per_frame: float,
    peak: float | None,
    world: int,
) -> dict[str, float]:
    """frames/s and tokens/s over all processes, and MFU when the peak is known (all ranks' peaks)."""
    frames_per_s = frames / max(seconds, 1e-9)
    metrics = {"frames_per_s": frames_per_s, "tokens_per_s": frames_per_s * tokens_per_frame}
    if peak is not None:
        metrics["mfu"] = frames_per_s * flops_per_frame / (peak * world)
    return metrics


class NonFiniteWatch:
    """Skipped optimizer steps, counted on the device so that no step waits for the host:
    how many in the current log window, and the longest run of them in a row. Read at log steps."""

    def __init__(self, device: torch.device) -> None:
        self.skipped = torch.zeros((), dtype=torch.long, device=device)  # in this window
        self.in_a_row = torch.zeros((), dtype=torch.long, device=device)  # ending at the last step
        self.longest = torch.zeros((), dtype=torch.long, device=device)  # in this window

    def record(self, nonfinite: torch.Tensor) -> None:
        """One optimizer step; ``nonfinite`` a () bool tensor: it was skipped."""
        bad = nonfinite.long()
        self.skipped += bad
        self.in_a_row.mul_(bad).add_(bad)  # +1 on a skip, back to 0 on a good step
        torch.maximum(self.longest, self.in_a_row, out=self.longest)

    def values(self) -> list[torch.Tensor]:
        """(skipped, longest) for the window: read with the other logged scalars, in one transfer."""
        return [self.skipped, self.longest]

    def new_window(self) -> None:
        self.skipped.zero_()
        self.longest.copy_(self.in_a_row)


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy(), *rest))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class RunLogger:
    """Metrics to ``RUN/log.jsonl`` always (one JSON object per line), and to wandb when asked.

    Only the main process logs (``enabled``). wandb honours WANDB_MODE (online, offline,
    disabled); its run id is kept in ``RUN/wandb-id`` so a resumed run continues the same curves.
    """

    def __init__(
        self, run_dir: Path, *, enabled: bool, report_to: str, project: str, config: dict[str, Any]
    ) -> None:
        if report_to not in REPORT_TO:
            raise InputError(f"--report-to must be one of {', '.join(REPORT_TO)}; got {report_to!r}")
        self.enabled = enabled
        self.path = Path(run_dir) / "log.jsonl"
        self._wandb: Any = None
        if not enabled:
            return
        if report_to == "wandb":
            import wandb

            id_file = Path(run_dir) / "wandb-id"
            run_id = id_file.read_text().strip() if id_file.exists() else uuid.uuid4().hex[:12]
            id_file.write_text(run_id + "\n")
            self._wandb = wandb.init(
                project=project,
                id=run_id,
                resume="allow",
                dir=str(run_dir),
                config=config,
                name=Path(run_dir).name,
            )

    def log(self, step: int, metrics: dict[str, float]) -> None:
        if not self.enabled:
            return
        record = {"step": step, "time": round(time.time(), 3), **metrics}
        try:
            with self.path.open("a") as handle:
                handle.write(json.dumps(record) + "\n")
        except OSError as err:  # a full disk: name the log (a failed write() names no file)
            raise OSError(err.errno, err.strerror, str(self.path)) from err
        if self._wandb is not None:
            self._wandb.log(metrics, step=step)

    def truncate_after(self, step: int) -> None:
        """Drop the records of steps after ``step``: a run resumed from a checkpoint at ``step``
        redoes them, and would otherwise log them twice (a torn last line goes too)."""
        if not self.enabled or not self.path.exists():
            return
        kept = [record for record in read_log(self.path.parent) if int(record.get("step", 0)) <= step]
        atomic_write_text(self.path, "".join(json.dumps(record) + "\n" for record in kept))

    def log_image(self, step: int, key: str, path: Path) -> None:
        if self.enabled and self._wandb is not None:
            import wandb

            self._wandb.log({key: wandb.Image(str(path))}, step=step)

    @property
    def wants_media(self) -> bool:
        """True when images and videos go somewhere (wandb): worth the time to make them."""
        return self.enabled and self._wandb is not None

    def log_video(self, step: int, key: str, frames: np.ndarray, fps: float) -> Path | None:
        """Sample frames, uint8 (T, 3, H, W), to ``RUN/samples/<key>-step-N.mp4`` and to wandb.

        Only when wandb is on (the local run keeps its PNG grids); returns the mp4 written.
        """
        if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[1] != 3:
            raise InputError(f"a video must be uint8 (T, 3, H, W); got {frames.dtype} {frames.shape}")
        if not (self.enabled and self._wandb is not None):
            return None
        import wandb

        from wm_video.data.video import VideoSettings, encode_video

        path = self.path.parent / "samples" / f"{key}-step-{step:08d}.mp4"
        path.parent.mkdir(parents=True, exist_ok=True)
        # yuv420 (even sizes): the mp4 plays in browsers, where wandb shows it
        height, width = frames.shape[2] // 2 * 2, frames.shape[3] // 2 * 2
        clip = np.ascontiguousarray(frames.transpose(0, 2, 3, 1)[:, :height, :width])  # (T, H, W, 3)

        def write(tmp: Path) -> None:
            encode_video(tmp, clip, fps, VideoSettings(codec="h264-yuv420"))

        atomic_write(path, write)
        self._wandb.log({key: wandb.Video(str(path), format="mp4")}, step=step)
        return path

    def close(self) -> None:
        if self._wandb is not None:
            self._wandb.finish()
            self._wandb = None


def read_log(run_dir: Path) -> list[dict[str, Any]]:
    """The records of ``RUN/log.jsonl`` (a torn last line, from a kill mid-write, is skipped)."""
    path = Path(run_dir) / "log.jsonl"
    records = []
    for line in path.read_text().splitlines() if path.exists() else []:
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def save_comparison_grid(real: np.ndarray, generated: np.ndarray, path: Path, scale: int = 2) -> Path:
    """PNG of clips as row pairs: real frames above, generated below. Both uint8 (B, T, H, W, 3)."""
    if real.shape != generated.shape or real.ndim != 5:
        raise InputError(
            f"grid needs two (B, T, H, W, 3) arrays of one shape; got {real.shape}, {generated.shape}"
        )
    batch, frames, height, width, _ = real.shape
    gap = 2
    grid = np.full((batch * (2 * height + gap) - gap, frames * (width + gap) - gap, 3), 255, np.uint8)
    for b in range(batch):
        for row, source in enumerate((real, generated)):
            top = b * (2 * height + gap) + row * height
            for t in range(frames):
                left = t * (width + gap)
                grid[top : top + height, left : left + width] = source[b, t]
    grid = cv2.resize(grid, None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST)
    return atomic_write_png(path, grid)
