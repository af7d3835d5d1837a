"""A training run's frame, shared by every training program: Accelerate, the run folder, the
schedule, EMA, checkpoints and resume, logging, and stopping.

A program builds its model, optimizer and sampler, hands them to :class:`TrainingSession`, and
keeps only its own step and evaluation. The run folder holds ``run.json`` (options),
``log.jsonl`` and ``checkpoints/`` (:mod:`wm_video.checkpoint`); a session opened on a folder
that has a checkpoint resumes from it: weights, EMA, optimizer, sampler position and RNG states.

Several processes (``torchrun`` / ``accelerate launch``): every rank builds the same model, then
seeds its RNGs apart; a save gathers each rank's RNG states (as plain lists: tensors do not pass
through ``all_gather_object``) and rank 0 writes; a failed save raises on every rank, so none
waits forever at a barrier. A run resumed with the same number of ranks continues bit-identically.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType, broadcast_object_list, gather_object
from torch import nn

from wm_video.checkpoint import load_checkpoint, load_weights, resolve_checkpoint, save_checkpoint
from wm_video.data.sampler import CLIP_TRACE_ENV, ClipSampler
from wm_video.errors import InputError
from wm_video.fileio import atomic_write_json
from wm_video.signals import StopFlag
from wm_video.train.common import (
    EMA,
    RunLogger,
    choose_mixed_precision,
    rng_state,
    rng_state_from_lists,
    rng_state_to_lists,
    seed_ranks,
    set_rng_state,
)
from wm_video.train.options import (  # noqa: F401  (re-exported: the programs import them from here)
    SessionOptions,
    add_session_flags,
    check_session_options,
    session_options,
)

MAX_SKIPPED_STEPS = 10  # non-finite gradients in a row before the run stops


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
        # cpu=True on a machine without a GPU too: only then does Accelerate join the processes of
        # torchrun / accelerate launch over gloo (MULTI_CPU) instead of running each one alone.
        self.accelerator = Accelerator(
            cpu=on_cpu, mixed_precision=self.precision, gradient_accumulation_steps=options.grad_accum
        )
        if self.accelerator.distributed_type == DistributedType.FSDP:
            raise InputError(
                "FSDP is not supported: the EMA and the checkpoints read whole weights. Every preset fits "
                "on one GPU; choose multi-GPU (DDP) in `accelerate config`"
            )
        self.is_main = self.accelerator.is_main_process
        self.rank = self.accelerator.process_index
        self.world_size = self.accelerator.num_processes
        self.device = self.accelerator.device
        if self.out.exists() and any(self.out.iterdir()) and not (self.out / "run.json").exists():
            raise InputError(
                f"{self.out} exists and is not a wm-video run folder (no run.json); choose a new --out"
            )
        self.accelerator.wait_for_everyone()  # every rank has checked before the main one writes
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
        """Resume weights and state if the run has a checkpoint; returns (model, optimizer, ema, step).

        Every rank builds the same initial model (the program seeds torch first); then each rank's
        RNGs are seeded apart (the corruption noise differs across ranks), or restored on resume.
        """
        self.config = config
        self.sampler = sampler
        optimizer = adamw(model, self.options)
        ema = EMA(model, self.options.ema_decay)
        seed_ranks(self.options.seed, self.rank)
        trace = os.environ.get(CLIP_TRACE_ENV)
        if trace:
            sampler.trace_to(Path(trace) / f"clips-rank{self.rank}.txt")
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
            sampler.load_state_dict(state["sampler"], saved_world_size=state.get("world_size"))
        saved_rngs = state.get("rng")
        if isinstance(saved_rngs, dict):  # saved by one process before per-rank states were kept
            saved_rngs = [saved_rngs]
        if saved_rngs and len(saved_rngs) == self.world_size:
            set_rng_state(saved_rngs[self.rank])
        elif saved_rngs and self.is_main:
            print(
                f"note: {path.name} was saved by {len(saved_rngs)} process(es) and this run has "
                f"{self.world_size}: random states start afresh and the clip order is rescaled, "
                "so the run continues but is not bit-identical to an uninterrupted one",
                flush=True,
            )
        if self.is_main:
            print(f"resuming {self.out} from step {checkpoint.step} ({path.name})", flush=True)
        return checkpoint.step

    def save(self, step: int, meta: dict[str, Any]) -> None:
        """Checkpoint at ``step``. Every rank calls it (each rank's RNG state is gathered); the main
        process writes. A failed save (disk full, …) raises the same InputError on every rank."""
        if self.world_size > 1:  # as plain lists: tensors do not survive all_gather_object's unpickler
            rngs = [rng_state_from_lists(r) for r in gather_object([rng_state_to_lists(rng_state())])]
        else:
            rngs = [rng_state()]
        self.accelerator.wait_for_everyone()
        error: list[str | None] = [None]
        if self.is_main:
            try:
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
                        "world_size": self.world_size,
                        "rng": rngs,  # one state per rank, in rank order
                    },
                    meta={"run": self.run_config, **meta},
                    keep=self.options.keep,
                )
            except InputError as err:
                error = [str(err)]
        if self.world_size > 1:
            broadcast_object_list(error, from_process=0)
        if error[0] is not None:
            raise InputError(error[0])

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
            self.logger.log(step + 1, {"skipped_nonfinite": 1.0})  # step + 1: as the loop counts it
            if self.skipped_in_a_row >= MAX_SKIPPED_STEPS:
                raise InputError(
                    f"{self.skipped_in_a_row} optimizer steps in a row had non-finite gradients; "
                    f"stopping at step {step + 1}. Lower --lr or check the data; {self.out} keeps the last good checkpoint"
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
        """Close the logs. The process group stays up (``finetune`` runs two sessions in one
        process); a program's ``main`` ends it with :func:`end_processes`."""
        self.logger.close()


def end_processes() -> None:
    """Leave the process group of a multi-process run (at the end of a program's ``main``)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
