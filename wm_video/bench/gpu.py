"""GPU check: the figures issue 17's targets name, in one table (``wm-video bench gpu``).

1. World step: :meth:`World.step <wm_video.engine.World.step>` of ``tiny`` and ``base`` (random
   weights) at batch 1 and 256, each way of running it: ``eager``; ``compiled``
   (``torch.compile(fullgraph=True)``, inductor's default mode); ``graphs`` (the compiled step
   captured and replayed as CUDA graphs, mode ``reduce-overhead``). Each row starts a fresh world
   (random context frames), warms it up (at least the KV ring's length; compiling happens there),
   then times ``steps`` steps, each a whole step with the frames copied to the host; ms/step is
   the median and frames/s counts every world of the batch (batch × 1000 / ms).
2. Training: ``train_steps`` steps of each preset's tokenizer, then of its dynamics model, by the
   training programs themselves (:func:`~wm_video.train.tokenizer.train_tokenizer`,
   :func:`~wm_video.train.dynamics.train_dynamics`: prefetch, mixed precision, optimizer, EMA) on
   a small dataset of moving gradients written to a temporary folder. tokens/s, frames/s and MFU
   are the training log's figures for its last window (the last quarter of the steps, past the
   warm-up and compilation); MFU needs the GPU's peak in ``GPU_PEAK_BF16_FLOPS``. Training
   compiles its step when ``compiled`` is among the modes.

Peak memory: on CUDA the most torch allocated during the row (reset before each); on a CPU the
process's peak RSS so far (it only grows). A mode the device cannot run (CUDA graphs on a CPU) is
a row that says why; so is a row that fails (out of memory, a compile error): the rest still runs.
On a CPU pass small ``presets``, ``batches``, ``steps`` and ``train_steps`` (see the README).
"""

from __future__ import annotations

import contextlib
import gc
import io
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from wm_video.bench.tokenizer import (
    check_device,
    check_timing_options,
    device_name,
    process_max_rss_bytes,
    time_steps,
)
from wm_video.bench.world import start_world, warmup_steps
from wm_video.device import DTYPE_NAMES
from wm_video.dynamics import DYNAMICS_PRESETS, DynamicsModel, dynamics_config
from wm_video.errors import InputError
from wm_video.threads import settle
from wm_video.tokenizer import VideoTokenizer, tokenizer_preset

#: Ways of running the world step: the ``World(compile=...)`` each passes.
MODES: dict[str, bool | str] = {"eager": False, "compiled": "default", "graphs": "reduce-overhead"}
CUDA_ONLY = {"graphs": "CUDA graphs need a CUDA device"}
#: ``--dtype`` → the training programs' ``--mixed-precision``.
MIXED_PRECISION = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}
#: Issue 17's GPU targets: world frames/s (all worlds of the batch together) and training MFU.
WORLD_TARGETS = {("tiny", 1): 1_000.0, ("tiny", 256): 20_000.0, ("base", 1): 60.0}
MFU_TARGETS = {("base", "dynamics"): 0.30, ("base", "tokenizer"): 0.30}
EPISODES, EPISODE_FRAMES = 4, 40  # the training dataset: enough for the programs' default clips (16)


@dataclass(frozen=True)
class WorldRow:
    preset: str
    batch: int
    mode: str
    ms_per_step: float | None = None  # median; None when not run
    frames_per_second: float | None = None  # batch × 1000 / ms_per_step
    peak_memory_bytes: int | None = None
    not_run: str | None = None  # "skipped: why" or "failed: the error"; None when it ran


@dataclass(frozen=True)
class TrainRow:
    preset: str
    model: str  # "tokenizer" or "dynamics"
    steps: int
    tokens_per_second: float | None = None  # the last log window
    frames_per_second: float | None = None
    mfu: float | None = None  # None: the device's peak is not known
    peak_memory_bytes: int | None = None
    not_run: str | None = None  # "failed: the error"; None when it ran


@dataclass(frozen=True)
class GpuBenchResult:
    device: str
    device_name: str
    torch_version: str
    dtype: str
    peak_memory_kind: str
    world_steps: int  # timed steps per world row
    train_batch: int  # clips per training step
    world: list[WorldRow]
    training: list[TrainRow]
    seconds: float  # the whole benchmark

    @property
    def on_gpu(self) -> bool:
        """Whether the targets apply: they are GPU targets; the table shows them only there."""
        return self.device.startswith("cuda")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def format(self) -> str:
        lines = [
            f"gpu bench: {self.device} ({self.device_name}), {self.dtype}, torch {self.torch_version}",
            f"world step: median of {self.world_steps} timed steps; frames/s counts every world of the batch",
            f"{'preset':<8}{'batch':>6}  {'mode':<10}{'ms/step':>10}{'frames/s':>12}{'peak MiB':>11}  target",
        ]
        for w in self.world:
            head = f"{w.preset:<8}{w.batch:>6}  {w.mode:<10}"
            if w.not_run is not None:
                lines.append(f"{head}{w.not_run}")
                continue
            assert w.ms_per_step is not None and w.frames_per_second is not None
            target = WORLD_TARGETS.get((w.preset, w.batch)) if self.on_gpu else None
            lines.append(
                f"{head}{w.ms_per_step:>10.3f}{w.frames_per_second:>12,.1f}{_mib(w.peak_memory_bytes):>11}  "
                + (
                    ""
                    if target is None
                    else _verdict(w.frames_per_second >= target, f"≥ {target:,.0f} frames/s")
                )
            )
        lines += [
            f"training: {self.train_batch} clips per step; rates over the last quarter of the steps",
            f"{'preset':<8}{'model':<11}{'steps':>6}{'tokens/s':>12}{'frames/s':>10}{'MFU':>7}{'peak MiB':>11}  target",
        ]
        for t in self.training:
            head = f"{t.preset:<8}{t.model:<11}{t.steps:>6}"
            if t.not_run is not None:
                lines.append(f"{head}  {t.not_run}")
                continue
            assert t.tokens_per_second is not None and t.frames_per_second is not None
            mfu = "n/a" if t.mfu is None else f"{t.mfu:.1%}"
            target = MFU_TARGETS.get((t.preset, t.model)) if self.on_gpu else None
            verdict = ""
            if target is not None:
                goal = f"≥ {target:.0%} MFU"
                verdict = f"{goal} (peak unknown)" if t.mfu is None else _verdict(t.mfu >= target, goal)
            lines.append(
                f"{head}{t.tokens_per_second:>12,.0f}{t.frames_per_second:>10,.1f}{mfu:>7}"
                f"{_mib(t.peak_memory_bytes):>11}  {verdict}"
            )
        lines.append(f"peak memory: {self.peak_memory_kind}; took {self.seconds:.0f} s")
        return "\n".join(lines)


def _mib(size: int | None) -> str:
    return "?" if size is None else f"{size / 2**20:,.0f}"


def _verdict(met: bool, goal: str) -> str:
    return f"{goal}: {'met' if met else 'missed'}"


def _failure(error: BaseException) -> str:
    """A failed row's reason, one line."""
    message = str(error).strip().splitlines()
    return f"failed: {type(error).__name__}" + (f": {message[0][:160]}" if message else "")


class _Memory:
    """Peak memory of one row: on CUDA reset before it and read after; on a CPU the process's peak RSS."""

    def __init__(self, where: torch.device) -> None:
        self.cuda = where.type == "cuda"
        self.where = where
        self.kind = (
            "CUDA max allocated by torch, per row" if self.cuda else "max RSS of the whole process so far"
        )

    @contextlib.contextmanager
    def row(self) -> Iterator[Callable[[], int]]:
        gc.collect()
        if self.cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.where)
        yield lambda: torch.cuda.max_memory_allocated(self.where) if self.cuda else process_max_rss_bytes()


def _world_row(
    preset: str,
    batch: int,
    mode: str,
    *,
    where: torch.device,
    dtype: torch.dtype,
    steps: int,
    warmup: int,
    memory: _Memory,
    progress: bool,
) -> WorldRow:
    if mode in CUDA_ONLY and where.type != "cuda":
        return WorldRow(preset, batch, mode, not_run=f"skipped: {CUDA_ONLY[mode]}")
    torch._dynamo.reset()  # each row compiles its own world from scratch
    with memory.row() as peak:
        try:
            tokenizer = VideoTokenizer(tokenizer_preset(preset)).to(where, dtype)
            dynamics = DynamicsModel(dynamics_config(preset, tokenizer.config, _action_space())).to(
                where, dtype
            )
            world, next_action = start_world(tokenizer, dynamics, batch_size=batch, compile=MODES[mode])
            label = f"{preset} batch {batch} {mode}"
            settle(lambda: world.step(next_action()), "step", warmup_steps(world, warmup))
            timing = time_steps(
                lambda: world.step(next_action()), 0, steps, where.type == "cuda", label, progress
            )
        except RuntimeError as error:  # out of memory, a compile error: this row only
            return WorldRow(preset, batch, mode, not_run=_failure(error))
        return WorldRow(preset, batch, mode, timing.median_ms, batch * 1000.0 / timing.median_ms, peak())


def _action_space() -> Any:
    from wm_video.sources.vizdoom import ACTION_SPACE  # the default world's buttons; no engine import

    return ACTION_SPACE


def moving_gradients(frames: int, size: int, seed: int) -> np.ndarray:
    """(frames, size, size, 3) uint8 footage of drifting sine gradients: compresses and trains like
    simple game footage (random noise would not)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) * (32.0 / size)
    phase = rng.uniform(0, 2 * np.pi, 3)
    t = np.arange(frames, dtype=np.float32)[:, None, None]
    channels = [127 + 120 * np.sin((x + 2 * t) / 5 + p) * np.cos((y - t) / 7) for p in phase]
    return np.clip(np.stack(channels, -1), 0, 255).astype(np.uint8)


def write_footage(root: Path, size: int) -> Path:
    """A dataset of ``EPISODES`` × ``EPISODE_FRAMES`` frames of :func:`moving_gradients` with random keys."""
    from wm_video.data.video import VideoSettings
    from wm_video.data.writer import DatasetWriter

    space = _action_space()
    rng = np.random.default_rng(0)
    with DatasetWriter(
        root,
        fps=17.5,
        action_space=space,
        frame_shape=(size, size, 3),
        task="bench gpu",
        video=VideoSettings(codec="lossless"),
    ) as writer:
        for episode in range(EPISODES):
            buttons = rng.integers(0, 2, (EPISODE_FRAMES, len(space.buttons)))
            deltas = rng.normal(size=(EPISODE_FRAMES, len(space.names) - len(space.buttons)))
            actions = np.concatenate([buttons, deltas], 1).astype(np.float32)
            writer.write_episode(moving_gradients(EPISODE_FRAMES, size, episode), actions)
    return root


def _train_rows(
    preset: str,
    folder: Path,
    *,
    where: torch.device,
    dtype: str,
    steps: int,
    batch: int,
    compile: bool,
    threads: int | None,
    memory: _Memory,
    progress: bool,
) -> list[TrainRow]:
    """``steps`` steps of the tokenizer, then of the dynamics model on its tokens."""
    from wm_video.train.common import read_log
    from wm_video.train.dynamics import DynamicsTrainOptions, train_dynamics
    from wm_video.train.session import SessionOptions
    from wm_video.train.tokenizer import TokenizerTrainOptions, train_tokenizer

    data = write_footage(folder / "data", tokenizer_preset(preset).image_size)
    session = SessionOptions(
        out=folder / "tokenizer",
        max_steps=steps,
        batch_size=batch,
        warmup_steps=min(steps, 10),
        mixed_precision=MIXED_PRECISION[dtype],
        cpu=where.type != "cuda",
        compile=compile,
        log_every=max(1, steps // 4),
        eval_every=0,
        save_every=steps,
        keep=1,
        progress=progress,
        threads=threads,
    )
    runs: list[tuple[str, Callable[[], object]]] = [
        ("tokenizer", lambda: train_tokenizer(TokenizerTrainOptions(data, session, preset=preset))),
        (
            "dynamics",
            lambda: train_dynamics(
                DynamicsTrainOptions(
                    data, folder / "tokenizer", replace(session, out=folder / "dynamics"), preset
                )
            ),
        ),
    ]
    rows = []
    for model, run in runs:
        with memory.row() as peak:
            try:
                with contextlib.redirect_stdout(io.StringIO()):  # the programs' own reports
                    run()
            except RuntimeError as error:
                rows.append(TrainRow(preset, model, steps, not_run=_failure(error)))
                continue
        last = [r for r in read_log(folder / model) if "tokens_per_s" in r][-1]
        rows.append(
            TrainRow(
                preset, model, steps, last["tokens_per_s"], last["frames_per_s"], last.get("mfu"), peak()
            )
        )
    return rows


def bench_gpu(
    *,
    presets: Sequence[str] = ("tiny", "base"),
    batches: Sequence[int] = (1, 256),
    modes: Sequence[str] = tuple(MODES),
    device: str = "auto",
    dtype: str = "bf16",
    steps: int = 100,
    warmup: int = 20,
    train_steps: int = 200,
    train_batch: int = 8,
    threads: int | None = None,
    progress: bool = False,
    work_dir: Path | None = None,
) -> GpuBenchResult:
    """Run the world rows then the training rows (see the module docstring). ``work_dir`` holds the
    training datasets and runs (default: a temporary folder, removed after)."""
    check_timing_options(steps, warmup, threads)
    unknown = [p for p in presets if p not in DYNAMICS_PRESETS] + [m for m in modes if m not in MODES]
    if unknown or dtype not in DTYPE_NAMES:
        raise InputError(
            f"unknown preset, mode or dtype {unknown or [dtype]}; presets {sorted(DYNAMICS_PRESETS)}, "
            f"modes {list(MODES)}, dtypes {list(DTYPE_NAMES)}"
        )
    if min(batches, default=1) < 1 or train_steps < 0 or train_batch < 1:
        raise InputError(
            f"batches and --train-batch must be ≥ 1 and --train-steps ≥ 0; got {list(batches)}, "
            f"{train_batch}, {train_steps}"
        )
    where, torch_dtype = check_device(device, dtype)
    memory = _Memory(where)
    started = time.perf_counter()
    world = [
        _world_row(
            p,
            b,
            m,
            where=where,
            dtype=torch_dtype,
            steps=steps,
            warmup=warmup,
            memory=memory,
            progress=progress,
        )
        for p in presets
        for b in batches
        for m in modes
    ]
    training: list[TrainRow] = []
    if train_steps:
        with (
            tempfile.TemporaryDirectory(prefix="wm-video-bench-gpu-")
            if work_dir is None
            else contextlib.nullcontext(str(work_dir)) as folder
        ):
            for preset in presets:
                training += _train_rows(
                    preset,
                    Path(folder) / preset,
                    where=where,
                    dtype=dtype,
                    steps=train_steps,
                    batch=train_batch,
                    compile="compiled" in modes,
                    threads=threads,
                    memory=memory,
                    progress=progress,
                )
    return GpuBenchResult(
        device=str(where),
        device_name=device_name(where),
        torch_version=torch.__version__,
        dtype=str(torch_dtype).removeprefix("torch."),
        peak_memory_kind=memory.kind,
        world_steps=steps,
        train_batch=train_batch,
        world=world,
        training=training,
        seconds=time.perf_counter() - started,
    )
