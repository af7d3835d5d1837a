"""A training run's frame, shared by every training program: Accelerate, the run folder, the
schedule, EMA, checkpoints and resume, logging, and stopping.

A program builds its model, optimizer and sampler, hands them to :class:`TrainingSession`, and
keeps only its own step and evaluation. The run folder holds ``run.json`` (options),
``log.jsonl`` and ``checkpoints/`` (:mod:`wm_video.checkpoint`); a session opened on a folder
that has a checkpoint resumes from it: weights, EMA, optimizer, sampler position and RNG states.
"""

from __future__ import annotations

import argparse
import math
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from torch import nn

from wm_video.checkpoint import load_checkpoint, load_weights, resolve_checkpoint, save_checkpoint
from wm_video.data.sampler import ClipSampler
from wm_video.errors import InputError
from wm_video.fileio import atomic_write_json
from wm_video.train.common import (
    EMA,
    PRECISIONS,
    REPORT_TO,
    RunLogger,
    StopFlag,
    choose_mixed_precision,
    rng_state,
    set_rng_state,
)

MAX_SKIPPED_STEPS = 10  # non-finite gradients in a row before the run stops


@dataclass(frozen=True)
class SessionOptions:
    out: Path
    max_steps: int = 20_000
    max_minutes: float | None = None
    batch_size: int = 8  # clips per process per step
    lr: float = 5e-4
    min_lr_ratio: float = 0.1
    warmup_steps: int = 200
    weight_decay: float = 0.01
    grad_accum: int = 1
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    seed: int = 0
    mixed_precision: str = "auto"
    cpu: bool = False
    log_every: int = 10
    eval_every: int = 250
    save_every: int = 1000
    keep: int = 3
    report_to: str = "none"
    wandb_project: str = "wm-video"
    progress: bool = True

    def lr_at(self, step: int) -> float:
        """Linear warm-up, then cosine decay to ``min_lr_ratio`` × lr at ``max_steps``."""
        if step < self.warmup_steps:
            return self.lr * (step + 1) / self.warmup_steps
        span = max(1, self.max_steps - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / span)
        return self.lr * (
            self.min_lr_ratio + (1 - self.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
        )


def add_session_flags(parser: argparse.ArgumentParser, defaults: SessionOptions) -> None:
    """The flags every training program shares, grouped by topic, with ``defaults`` shown."""
    d = defaults
    run = parser.add_argument_group("run")
    run.add_argument(
        "--out", type=Path, required=True, help="run folder; an existing run resumes from its last checkpoint"
    )
    run.add_argument(
        "--max-steps", type=int, default=d.max_steps, help=f"optimizer steps in all (default {d.max_steps})"
    )
    run.add_argument(
        "--max-minutes", type=float, default=None, help="stop (and save) after this much wall time"
    )
    run.add_argument("--seed", type=int, default=d.seed, help=f"model init and clip order (default {d.seed})")
    run.add_argument(
        "--save-every",
        type=int,
        default=d.save_every,
        help=f"steps between checkpoints (default {d.save_every})",
    )
    run.add_argument("--keep", type=int, default=d.keep, help=f"checkpoints kept (default {d.keep})")
    run.add_argument(
        "--log-every", type=int, default=d.log_every, help=f"steps between log lines (default {d.log_every})"
    )
    run.add_argument(
        "--eval-every",
        type=int,
        default=d.eval_every,
        help=f"steps between held-out checks (default {d.eval_every})",
    )
    opt = parser.add_argument_group("optimisation")
    opt.add_argument(
        "--batch-size",
        type=int,
        default=d.batch_size,
        help=f"clips per process per step (default {d.batch_size})",
    )
    opt.add_argument("--lr", type=float, default=d.lr, help=f"peak AdamW learning rate (default {d.lr})")
    opt.add_argument(
        "--warmup-steps", type=int, default=d.warmup_steps, help=f"linear warm-up (default {d.warmup_steps})"
    )
    opt.add_argument(
        "--weight-decay",
        type=float,
        default=d.weight_decay,
        help=f"AdamW weight decay (default {d.weight_decay})",
    )
    opt.add_argument(
        "--grad-accum",
        type=int,
        default=d.grad_accum,
        help="batches accumulated per optimizer step (default 1)",
    )
    opt.add_argument(
        "--grad-clip", type=float, default=d.grad_clip, help=f"gradient norm clip (default {d.grad_clip})"
    )
    opt.add_argument(
        "--ema-decay",
        type=float,
        default=d.ema_decay,
        help=f"EMA of weights for evaluation (default {d.ema_decay})",
    )
    hw = parser.add_argument_group("hardware")
    hw.add_argument(
        "--mixed-precision",
        choices=PRECISIONS,
        default=d.mixed_precision,
        help="auto: bf16 on GPUs and on CPUs with AMX, fp32 on other CPUs (default auto)",
    )
    hw.add_argument("--cpu", action="store_true", help="train on the CPU even when a GPU is present")
    log = parser.add_argument_group("logging")
    log.add_argument(
        "--report-to", choices=REPORT_TO, default=d.report_to, help="also log to wandb (WANDB_MODE honoured)"
    )
    log.add_argument(
        "--wandb-project", default=d.wandb_project, help=f"wandb project (default {d.wandb_project})"
    )
    log.add_argument("--no-progress", action="store_true", help="no progress bar")


def session_options(args: argparse.Namespace) -> SessionOptions:
    """The :class:`SessionOptions` of parsed :func:`add_session_flags` flags, checked."""
    values = {f.name: getattr(args, f.name) for f in fields(SessionOptions) if hasattr(args, f.name)}
    options = SessionOptions(**values, progress=not args.no_progress)
    check_session_options(options)
    return options


def check_session_options(o: SessionOptions) -> None:
    for name in ("max_steps", "batch_size", "grad_accum", "log_every", "eval_every", "save_every", "keep"):
        if getattr(o, name) < 1:
            raise InputError(f"--{name.replace('_', '-')} must be ≥ 1, got {getattr(o, name)}")
    if o.lr <= 0 or o.warmup_steps < 0 or o.grad_clip <= 0:
        raise InputError("--lr and --grad-clip must be > 0 and --warmup-steps ≥ 0")
    if o.max_minutes is not None and o.max_minutes <= 0:
        raise InputError(f"--max-minutes must be > 0, got {o.max_minutes}")


def adamw(model: nn.Module, options: SessionOptions) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only (not on norms, biases or other 1-D parameters)."""
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    groups = [
        {"params": decay, "weight_decay": options.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    # fused: one kernel for all parameters; on a CPU the default per-tensor loop is ~7× slower.
    return torch.optim.AdamW(groups, lr=options.lr, betas=(0.9, 0.99), fused=True)


class TrainingSession:
    """One run: owns the Accelerator, run folder, EMA, logger and stop flag; saves and resumes."""

    def __init__(self, *, kind: str, options: SessionOptions, program_options: dict[str, Any]) -> None:
        check_session_options(options)
        self.kind = kind
        self.options = options
        self.out = Path(options.out)
        on_cpu = options.cpu or not torch.cuda.is_available()
        self.precision = choose_mixed_precision(options.mixed_precision, on_cpu=on_cpu)
        self.accelerator = Accelerator(
            cpu=options.cpu, mixed_precision=self.precision, gradient_accumulation_steps=options.grad_accum
        )
        self.is_main = self.accelerator.is_main_process
        self.rank = self.accelerator.process_index
        self.world_size = self.accelerator.num_processes
        self.device = self.accelerator.device
        if self.out.exists() and any(self.out.iterdir()) and not (self.out / "run.json").exists():
            raise InputError(
                f"{self.out} exists and is not a wm-video run folder (no run.json); choose a new --out"
            )
        self.run_config = {
            "kind": kind,
            "program": program_options,
            "session": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(options).items()},
            "mixed_precision": self.precision,
            "world_size": self.world_size,
            "device": str(self.device),
            "torch": torch.__version__,
        }
        if self.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            atomic_write_json(self.out / "run.json", self.run_config)
        self.accelerator.wait_for_everyone()
        self.logger = RunLogger(
            self.out,
            enabled=self.is_main,
            report_to=options.report_to,
            project=options.wandb_project,
            config=self.run_config,
        )
        self.stop = StopFlag()
        self.skipped_in_a_row = 0
        self.started = time.monotonic()

    # -- model, optimizer, resume ------------------------------------------------------------------
    def prepare(
        self, model: nn.Module, config: dict[str, Any], sampler: ClipSampler
    ) -> tuple[nn.Module, torch.optim.Optimizer, EMA, int]:
        """Resume weights and state if the run has a checkpoint; returns (model, optimizer, ema, step)."""
        self.config = config
        self.sampler = sampler
        optimizer = adamw(model, self.options)
        ema = EMA(model, self.options.ema_decay)
        step = 0
        if (self.out / "checkpoints").exists():
            step = self._resume(model, optimizer, ema, sampler)
        ema.model.to(self.device)
        prepared_model, prepared_optimizer = self.accelerator.prepare(model, optimizer)
        self.model, self.optimizer, self.ema = prepared_model, prepared_optimizer, ema
        return prepared_model, prepared_optimizer, ema, step

    def _resume(
        self, model: nn.Module, optimizer: torch.optim.Optimizer, ema: EMA, sampler: ClipSampler
    ) -> int:
        path = resolve_checkpoint(self.out)
        checkpoint = load_checkpoint(path, kind=self.kind)
        if checkpoint.config != self.config:
            changed = sorted(
                k
                for k in set(checkpoint.config) | set(self.config)
                if checkpoint.config.get(k) != self.config.get(k)
            )
            raise InputError(
                f"{path}: this run was trained with a different model config ({', '.join(changed)}); use a new --out"
            )
        load_weights(model, checkpoint.weights, path)
        if checkpoint.ema_weights is not None:
            ema.load_state_dict(checkpoint.ema_weights)
        state = checkpoint.training_state or {}
        if "optimizer" in state:
            optimizer.load_state_dict(state["optimizer"])
        if "sampler" in state:
            sampler.load_state_dict(state["sampler"])
        if "rng" in state and self.world_size == 1:
            set_rng_state(state["rng"])
        if self.is_main:
            print(f"resuming {self.out} from step {checkpoint.step} ({path.name})", flush=True)
        return checkpoint.step

    def save(self, step: int, meta: dict[str, Any]) -> None:
        """Checkpoint at ``step`` (every rank calls it; the main process writes)."""
        self.accelerator.wait_for_everyone()
        if self.is_main:
            save_checkpoint(
                self.out,
                kind=self.kind,
                config=self.config,
                step=step,
                weights=self.accelerator.unwrap_model(self.model).state_dict(),
                ema_weights=self.ema.state_dict(),
                training_state={
                    "optimizer": self.optimizer.state_dict(),
                    "sampler": self.sampler.state_dict(),
                    "rng": rng_state(),
                },
                meta={"run": self.run_config, **meta},
                keep=self.options.keep,
            )
        self.accelerator.wait_for_everyone()

    # -- the step --------------------------------------------------------------------------------------
    def optimizer_step(self, step: int) -> tuple[bool, float]:
        """After backward: at a sync step set the lr, clip, and step unless the gradient is not finite.

        Returns (stepped, grad_norm). The gradient norm is the same on every rank (gradients are
        averaged first), so ranks agree on skipping. Too many non-finite steps in a row stop the run.
        """
        if not self.accelerator.sync_gradients:
            return False, math.nan
        for group in self.optimizer.param_groups:
            group["lr"] = self.options.lr_at(step)
        grad_norm = float(self.accelerator.clip_grad_norm_(self.model.parameters(), self.options.grad_clip))
        if not math.isfinite(grad_norm):
            self.optimizer.zero_grad(set_to_none=True)
            self.skipped_in_a_row += 1
            self.logger.log(step, {"skipped_nonfinite": 1.0})
            if self.skipped_in_a_row >= MAX_SKIPPED_STEPS:
                raise InputError(
                    f"{self.skipped_in_a_row} optimizer steps in a row had non-finite gradients; "
                    f"stopping at step {step}. Lower --lr or check the data; {self.out} keeps the last good checkpoint"
                )
            return False, grad_norm
        self.skipped_in_a_row = 0
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return True, grad_norm

    def should_stop(self) -> bool:
        """Ctrl-C/SIGTERM or the time budget, agreed across ranks (any rank stopping stops all)."""
        stop = self.stop.requested
        if self.options.max_minutes is not None:
            stop = stop or time.monotonic() - self.started > 60 * self.options.max_minutes
        if self.world_size > 1:
            flag = torch.tensor([float(stop)], device=self.device)
            stop = bool(self.accelerator.reduce(flag, reduction="sum").item() > 0)
        return stop

    def finish(self, step: int, last_saved: int, meta: dict[str, Any], stopped: bool) -> None:
        """End the run: save ``step`` unless it is saved already, say how to resume when it stopped early, close."""
        if step != last_saved:
            self.save(step, meta)
        if self.is_main and stopped:
            reason = self.stop.signal_name or "time budget"
            print(
                f"stopped at step {step} ({reason}); checkpoint saved, run the same command to resume",
                flush=True,
            )
        self.close()

    def close(self) -> None:
        self.logger.close()
        self.accelerator.end_training()
