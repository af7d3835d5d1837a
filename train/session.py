"""A training run's frame, shared by every training program: Accelerate, the run folder, the
schedule, the loop, EMA, checkpoints and resume, logging, and stopping.

A program builds its model and sampler, hands them to :class:`TrainingSession`, and supplies three
functions to :meth:`TrainingSession.run`: ``draw`` (the next batch on the host, run ahead on a
thread, :mod:`wm_video.train.prefetch`), ``step`` (one batch's loss on the device) and ``probe``
(the held-out check at eval steps). The session owns the rest: accumulation, clipping, the
non-finite guard, EMA, the log, eval and save cadence, stopping, and the end of the run. The run
folder holds ``run.json`` (options), ``log.jsonl`` and ``checkpoints/`` (:mod:`wm_video.checkpoint`);
a session opened on a folder that has a checkpoint resumes from it: weights, EMA, optimizer,
sampler position and RNG states.

No step waits for the host: the gradient norm, the decision to skip a non-finite step (the fused
AdamW kernel takes it as ``found_inf``, as it does from a GradScaler) and the count of skipped
steps stay on the device until a log step, where they are read once, with the losses. The stop
flag (Ctrl-C, SIGTERM, ``--max-minutes``) is polled at log steps too.

Several processes (``torchrun`` / ``accelerate launch``): every rank builds the same model, then
seeds its RNGs apart; a save gathers each rank's RNG states (as plain lists: tensors do not pass
through ``all_gather_object``) and rank 0 writes; a failed save, whatever the error, raises on
every rank, so none waits forever at a collective. A run resumed with the same number of ranks
continues bit-identically. Every rank agrees on why a run stopped (a signal on any rank outranks
the time budget), and a frozen or dead rank is named (:mod:`wm_video.train.ranks`).

A program may train a discriminator beside its model (the tokenizer's adversarial loss,
:mod:`wm_video.tokenizer.adversarial`): it is prepared like the model (wrapped for several
processes), its parameters are a group of the same optimizer with their own betas, no weight
decay and a constant learning rate (one step, one clip each, one non-finite guard and one
GradScaler for both), its loss is
returned beside the model's and backpropagated with it, and its weights are saved in the
checkpoint's training state (the model's weights stay the model's alone) and restored on resume.

One process at a time trains in a run folder (:mod:`wm_video.train.runlock`); a damaged newest
checkpoint is passed over on resume, and the log's records past the checkpoint resumed from are
dropped (those steps are done again).
"""

from __future__ import annotations

import os
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType, broadcast_object_list, gather_object
from torch import Tensor, nn
from tqdm import tqdm

from wm_video import threads
from wm_video.checkpoint import load_checkpoint, load_weights, save_checkpoint
from wm_video.data.sampler import CLIP_TRACE_ENV, ClipSampler
from wm_video.errors import InputError, os_error_line, run_program
from wm_video.fileio import atomic_write_json
from wm_video.memory import check_fits, training_step_bytes
from wm_video.signals import StopFlag
from wm_video.train.common import (
    EMA,
    NonFiniteWatch,
    RunLogger,
    choose_mixed_precision,
    matmul_parameters,
    peak_flops,
    rng_state,
    rng_state_from_lists,
    rng_state_to_lists,
    seed_ranks,
    set_rng_state,
    throughput,
    train_flops_per_frame,
    use_tf32,
)
from wm_video.train.options import (  # noqa: F401  (re-exported: the programs import them from here)
    SessionOptions,
    add_session_flags,
    check_session_options,
    session_options,
)
from wm_video.train.prefetch import Batch, Prefetcher
from wm_video.train.ranks import RankWatch, rank_failure
from wm_video.train.runlock import LOCK_FILE, RunLock

MAX_SKIPPED_STEPS = 10  # non-finite gradients in a row before the run stops
_STOP_REASONS = ("", "time budget", "SIGTERM", "SIGINT")  # agreed across ranks by their maximum


@dataclass(frozen=True)
class StepResult:
    """One batch's training step: the loss to minimise, and the scalars to log (detached () tensors,
    read only at log steps)."""

    loss: Tensor
    metrics: dict[str, Tensor]
    discriminator_loss: Tensor | None = None  # backpropagated with ``loss``; moves only the discriminator


@dataclass(frozen=True)
class RunResult:
    step: int  # the step the run ended at
    probe: dict[str, float]  # the last held-out check ({} if none ran)
    seconds: float
    stopped_early: bool  # Ctrl-C, SIGTERM or the time budget, before --max-steps
    stopped_by_signal: bool = False  # Ctrl-C or SIGTERM (on any rank): the program exits 130


def decays(module: nn.Module, name: str) -> bool:
    """Weight decay applies to the weights of matrix multiplications and embedding tables only: not
    to biases, norms, learned position tables or attention time biases."""
    matrices = (nn.Linear, nn.Embedding, nn.Conv1d, nn.Conv2d, nn.Conv3d)
    return name == "weight" and isinstance(module, matrices)


DISCRIMINATOR_BETAS = (0.5, 0.9)  # Adam betas of a discriminator's parameters (VQGAN, MAGVIT)


def adamw(
    model: nn.Module, options: SessionOptions, discriminator: nn.Module | None = None
) -> torch.optim.AdamW:
    """AdamW with weight decay on the parameters :func:`decays` names; a ``discriminator``'s
    parameters form a third group (marked ``"discriminator"``: the session sets its learning rate
    apart), Adam with :data:`DISCRIMINATOR_BETAS` and no weight decay."""
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for module in model.modules():
        for name, parameter in module.named_parameters(recurse=False):
            if parameter.requires_grad:
                (decay if decays(module, name) else no_decay).append(parameter)
    groups = [
        {"params": decay, "weight_decay": options.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    if discriminator is not None:
        groups.append(
            {
                "params": list(discriminator.parameters()),
                "weight_decay": 0.0,
                "betas": DISCRIMINATOR_BETAS,
                "discriminator": True,
            }
        )
    # fused: one kernel for all parameters (on a CPU the default per-tensor loop is ~7× slower), and
    # it skips a step on the device when given found_inf (see TrainingSession._optimizer_step).
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
        use_tf32(self.accelerator.device)
        if self.accelerator.distributed_type == DistributedType.FSDP:
            raise InputError(
                "FSDP is not supported: the EMA and the checkpoints read whole weights. Every preset fits "
                "on one GPU; choose multi-GPU (DDP) in `accelerate config`"
            )
        self.is_main = self.accelerator.is_main_process
        self.rank = self.accelerator.process_index
        self.world_size = self.accelerator.num_processes
        self.device = self.accelerator.device
        threads.configure(options.threads, device=self.device, processes=self.world_size)
        if self.out.exists() and not (self.out / "run.json").exists():
            if any(p.name != LOCK_FILE for p in self.out.iterdir()):
                raise InputError(
                    f"{self.out} exists and is not a wm-video run folder (no run.json); choose a new --out"
                )
        self.lock = RunLock(self.out)
        # one run per folder; the other ranks wait until the main process holds it (or failed to)
        self._on_every_rank(self.lock.acquire if self.is_main else None, "to lock the run folder")
        self.watch = RankWatch.start_for_process_group(stale_after_s=options.rank_timeout, out=self.out)
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
        self.started = time.monotonic()
        self.current_step = 0  # the (0-based) optimizer step being trained, for step-dependent losses
        self.discriminator: nn.Module | None = None  # as prepared (wrapped), when the program trains one
        self.core_discriminator: nn.Module | None = None  # unwrapped: what the checkpoint holds
        self.discriminator_lr: float | None = None  # constant; None: the model's schedule

    # -- model, optimizer, resume ------------------------------------------------------------------
    def prepare(
        self,
        model: nn.Module,
        config: dict[str, Any],
        sampler: ClipSampler,
        discriminator: nn.Module | None = None,
        discriminator_lr: float | None = None,
    ) -> tuple[nn.Module, torch.optim.Optimizer, EMA, int]:
        """Resume weights and state if the run has a checkpoint; returns (model, optimizer, ema, step):
        the model as prepared for training (wrapped for several processes), and the step to start at.

        Every rank builds the same initial model (the program seeds torch first); then each rank's
        RNGs are seeded apart (the corruption noise differs across ranks), or restored on resume.
        A ``discriminator`` trained beside the model is prepared too (``self.discriminator``, and
        unwrapped ``self.core_discriminator``); the step function returns its loss. It learns at the
        constant ``discriminator_lr`` (None: the model's learning rate and schedule).
        """
        self.config = config
        self.sampler = sampler
        check_fits(
            training_step_bytes(config, batch=self.options.batch_size, frames=sampler.clip_len),
            f"a training step of --batch-size {self.options.batch_size} clips of {sampler.clip_len} frames",
            "lower --batch-size (and raise --grad-accum to keep the global batch)",
            device=str(self.device),
        )
        optimizer = adamw(model, self.options, discriminator)
        self.discriminator_lr = discriminator_lr
        ema = EMA(model, self.options.ema_decay)
        seed_ranks(self.options.seed, self.rank)
        trace = os.environ.get(CLIP_TRACE_ENV)
        if trace:
            sampler.trace_to(Path(trace) / f"clips-rank{self.rank}.txt")
        step = 0
        if (self.out / "checkpoints").exists():
            step = self._resume(model, optimizer, ema, sampler, discriminator)
        ema.model.to(self.device)
        self.core_discriminator = discriminator
        if discriminator is None:
            prepared_model, prepared_optimizer = self.accelerator.prepare(model, optimizer)
        else:
            prepared_model, self.discriminator, prepared_optimizer = self.accelerator.prepare(
                model, discriminator, optimizer
            )
        self.model, self.optimizer, self.ema = prepared_model, prepared_optimizer, ema
        self.core = model  # unwrapped: what the EMA follows and the checkpoint holds
        self.torch_optimizer = optimizer
        self.sampler_state = sampler.state_dict()  # of the batches trained on (the prefetch runs ahead)
        self.start_step = step
        return prepared_model, prepared_optimizer, ema, step

    def _on_every_rank(self, action: Callable[[], object] | None, what: str) -> None:
        """Run ``action`` on the main process (the others pass None) and let every rank hear how it
        went, so that none waits forever at the next collective. Whatever it raises is raised on every
        rank: the main process's own error there; on the others the same InputError (a user-facing
        OSError, such as a full disk, as its one line), or a RuntimeError saying the main process
        failed ``what`` and naming the error."""
        failure: list[tuple[bool, str] | None] = [None]  # (a user-facing error?, message)
        error: Exception | None = None
        try:
            if action is not None:
                action()
        except Exception as exc:
            error = exc
            line = os_error_line(exc) if isinstance(exc, OSError) else None
            if isinstance(exc, InputError):
                failure = [(True, str(exc))]
            elif line is not None:
                failure = [(True, line)]
            else:
                failure = [(False, f"{type(exc).__name__}: {exc}")]
        if self.world_size > 1:
            broadcast_object_list(failure, from_process=0)
        if error is not None:
            raise error
        if failure[0] is not None:
            user_facing, message = failure[0]
            if user_facing:
                raise InputError(message)
            raise RuntimeError(f"the main process failed {what}: {message}")

    def _resume(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        ema: EMA,
        sampler: ClipSampler,
        discriminator: nn.Module | None,
    ) -> int:
        with warnings.catch_warnings(record=True) as passed_over:  # a damaged newest checkpoint
            warnings.simplefilter("always")
            checkpoint = load_checkpoint(self.out, kind=self.kind)
        path = checkpoint.path
        if self.is_main:
            for warning in passed_over:
                print(f"warning: {warning.message}", file=sys.stderr, flush=True)
            self.logger.truncate_after(checkpoint.step)  # the steps after it are done again
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
        if not state and self.is_main:  # an older checkpoint, loaded because the newest is damaged
            print(
                f"note: {path.name} keeps no training state (only a run's two newest checkpoints do): the "
                "optimizer, random states and clip order start afresh",
                flush=True,
            )
        if "optimizer" in state:
            saved_groups = len(state["optimizer"]["param_groups"])
            if saved_groups != len(optimizer.param_groups):  # a discriminator in one run and not the other
                had = "with" if saved_groups > len(optimizer.param_groups) else "without"
                raise InputError(
                    f"{path}: this run was trained {had} a discriminator (--adversarial-weight); resume it "
                    "as it was, or use a new --out"
                )
            optimizer.load_state_dict(state["optimizer"])
        if discriminator is not None and "discriminator" in state:
            load_weights(discriminator, state["discriminator"], path)
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
        process writes. A failed save (disk full, a crash, …) raises on every rank: the main process's
        own error there, the same InputError or a RuntimeError naming it on the others."""
        if self.world_size > 1:  # as plain lists: tensors do not survive all_gather_object's unpickler
            rngs = [rng_state_from_lists(r) for r in gather_object([rng_state_to_lists(rng_state())])]
        else:
            rngs = [rng_state()]
        self.accelerator.wait_for_everyone()

        def write() -> None:
            save_checkpoint(
                self.out,
                kind=self.kind,
                config=self.config,
                step=step,
                weights=self.core.state_dict(),
                ema_weights=self.ema.state_dict(),
                training_state={
                    "optimizer": self.optimizer.state_dict(),
                    "sampler": self.sampler_state,
                    "world_size": self.world_size,
                    "rng": rngs,  # one state per rank, in rank order
                    **(
                        {"discriminator": self.core_discriminator.state_dict()}
                        if self.core_discriminator is not None
                        else {}
                    ),
                },
                meta={"run": self.run_config, **meta},
                keep=self.options.keep,
            )

        self._on_every_rank(write if self.is_main else None, f"to save step {step}")

    # -- the loop ----------------------------------------------------------------------------------------
    def run(
        self,
        *,
        draw: Callable[[], Batch],
        step: Callable[[Batch], StepResult],
        probe: Callable[[int], dict[str, float]] | None,
        meta: dict[str, Any],
        frames_per_batch: int,
        tokens_per_frame: int,
    ) -> RunResult:
        """Train from the prepared step to ``--max-steps`` (or until stopped), then save and close.

        ``draw()`` returns the next batch as host tensors (called on the prefetch thread, in order);
        ``step(batch)`` computes its loss on the device (under autocast; compiled with ``--compile``);
        ``probe(step)`` scores the EMA model on the main process at eval steps and returns metrics to
        log. Every checkpoint carries ``meta`` and the last probe's metrics (``meta["probe"]``).
        """
        o, accelerator = self.options, self.accelerator
        at = self.start_step
        forward = step
        if o.compile:
            # fallback_random: random ops draw from torch's generator as in eager mode, so a compiled
            # run resumes exactly and matches an eager one.
            forward = torch.compile(step, dynamic=False, options={"fallback_random": True})
        frames_per_step = frames_per_batch * o.grad_accum * self.world_size
        flops_per_frame = train_flops_per_frame(matmul_parameters(self.core), tokens_per_frame)
        peak = peak_flops(self.device)
        watch = NonFiniteWatch(self.device)
        last_probe: dict[str, float] = {}
        last_saved, stopped = at, False
        bar = tqdm(total=o.max_steps, initial=at, disable=not (self.is_main and o.progress), unit="step")
        batches = Prefetcher(
            draw, self.sampler.state_dict, count=(o.max_steps - at) * o.grad_accum, device=self.device
        )
        window_start, window_frames = time.perf_counter(), 0
        try:
            with self.stop:
                while at < o.max_steps:
                    self.current_step = at
                    for _ in range(o.grad_accum):
                        batch, sampler_state = batches.next()
                        with accelerator.accumulate(*self._trained()):
                            with accelerator.autocast():
                                result = forward(batch)
                            loss = result.loss
                            if result.discriminator_loss is not None:
                                loss = loss + result.discriminator_loss
                            accelerator.backward(loss)
                            grad_norm = self._optimizer_step(at, watch)
                        self.sampler_state = sampler_state
                    at += 1
                    window_frames += frames_per_step
                    bar.update(1)
                    logs = at % o.log_every == 0 or at == o.max_steps
                    if logs:
                        scalars = self._read(result, grad_norm, watch)  # waits for the device
                        rates = throughput(
                            window_frames,
                            time.perf_counter() - window_start,
                            tokens_per_frame=tokens_per_frame,
                            flops_per_frame=flops_per_frame,
                            peak=peak,
                            world=self.world_size,
                        )
                        self._log(at, scalars, rates, bar)
                        window_start, window_frames = time.perf_counter(), 0
                    if (
                        probe is not None
                        and self.is_main
                        and o.eval_every
                        and (at % o.eval_every == 0 or at == o.max_steps)
                    ):
                        last_probe = probe(at)
                        self.logger.log(at, last_probe)
                    if at % o.save_every == 0:
                        self.save(at, {**meta, "probe": last_probe})
                        last_saved = at
                    if logs and self.should_stop():
                        stopped = at < o.max_steps
                        break
        finally:
            batches.close()
            bar.close()
        self.finish(at, last_saved, {**meta, "probe": last_probe}, stopped)
        return RunResult(at, last_probe, time.monotonic() - self.started, stopped, self.stopped_by_signal)

    def _trained(self) -> list[nn.Module]:
        """The prepared modules this run trains: the model, and the discriminator if it has one."""
        return [self.model] if self.discriminator is None else [self.model, self.discriminator]

    def _optimizer_step(self, step: int, watch: NonFiniteWatch) -> Tensor | None:
        """After backward, at a sync step: set the lr, clip, step, update the EMA; returns the gradient
        norm (a device tensor), or None between sync steps.

        A non-finite norm skips the step on the device: the fused AdamW kernel leaves weights and
        moments alone when ``found_inf`` is set (with fp16, the GradScaler sets it itself from the
        gradients, and updates its scale whether or not the step ran). The norm is the same on every
        rank (gradients are averaged first), so ranks agree on skipping. A discriminator's
        gradients are clipped apart from the model's (its loss has another scale), and either norm
        being non-finite skips the step.
        """
        threads.lap("training step")  # the time since the last call: a whole step, data to update
        if not self.accelerator.sync_gradients:
            return None
        for group in self.optimizer.param_groups:
            constant = group.get("discriminator") and self.discriminator_lr is not None
            group["lr"] = self.discriminator_lr if constant else self.options.lr_at(step)
        grad_norm = self.accelerator.clip_grad_norm_(self.model.parameters(), self.options.grad_clip)
        nonfinite = ~torch.isfinite(grad_norm)
        if self.discriminator is not None:  # unscaled already (fp16) by the model's clip above
            discriminator_norm = nn.utils.clip_grad_norm_(self.discriminator.parameters(), self.options.grad_clip)
            nonfinite = nonfinite | ~torch.isfinite(discriminator_norm)
        if self.accelerator.scaler is None:
            self.torch_optimizer.found_inf = nonfinite.float()  # type: ignore[attr-defined]
        try:
            self.optimizer.step()
        finally:
            if hasattr(self.torch_optimizer, "found_inf"):
                del self.torch_optimizer.found_inf
        self.optimizer.zero_grad(set_to_none=True)
        watch.record(nonfinite)
        self.ema.update(self.core, step + 1, skip=nonfinite)
        return grad_norm

    def _read(self, result: StepResult, grad_norm: Tensor | None, watch: NonFiniteWatch) -> dict[str, float]:
        """At a log step: the step's loss and metrics, the gradient norm and the window's skip counts,
        read from the device in one transfer (the only place the loop waits for it)."""
        names = ["loss", *result.metrics, "grad_norm", "skipped_nonfinite", "longest_skip_run"]
        norm = grad_norm if grad_norm is not None else torch.full((), float("nan"), device=self.device)
        tensors = [result.loss.detach(), *result.metrics.values(), norm, *watch.values()]
        values = torch.stack([t.float().reshape(()) for t in tensors]).tolist()
        watch.new_window()
        return dict(zip(names, values, strict=True))

    def _log(self, step: int, scalars: dict[str, float], rates: dict[str, float], bar: tqdm) -> None:
        """Log a step's scalars (the skip count only when there were skips); stop the run when too
        many steps in a row were skipped."""
        longest = int(scalars.pop("longest_skip_run"))
        skipped = int(scalars.pop("skipped_nonfinite"))
        metrics = {**scalars, "lr": self.options.lr_at(step - 1), **rates}
        if skipped:
            metrics["skipped_nonfinite"] = skipped
        self.logger.log(step, metrics)
        shown = {name: f"{value:.4g}" for name, value in scalars.items() if name != "grad_norm"}
        shown["fps"] = f"{rates['frames_per_s']:.0f}"
        bar.set_postfix(shown)
        if self.is_main and not self.options.progress:  # no bar to show them: a line per log step
            fields = ", ".join(f"{name} {value}" for name, value in shown.items())
            print(f"step {step}/{self.options.max_steps}: {fields}", flush=True)
        if longest >= MAX_SKIPPED_STEPS:
            raise InputError(
                f"{longest} optimizer steps in a row had non-finite gradients; stopping at step {step}. "
                f"Lower --lr or check the data; {self.out} keeps the last good checkpoint"
            )

    def should_stop(self) -> bool:
        """Ctrl-C/SIGTERM or the time budget, agreed across ranks (any rank stopping stops all,
        and every rank learns why: a signal on any rank outranks the budget); asked at log steps."""
        reason = 0  # index into _STOP_REASONS
        if self.stop.signal_name:
            reason = (
                _STOP_REASONS.index(self.stop.signal_name) if self.stop.signal_name in _STOP_REASONS else 2
            )
        elif (
            self.options.max_minutes is not None
            and time.monotonic() - self.started > 60 * self.options.max_minutes
        ):
            reason = 1
        if self.world_size > 1:
            flag = torch.tensor([float(reason)], device=self.device)
            reason = int(self.accelerator.reduce(flag, reduction="max").item())
        if reason >= 2 and not self.stop.signal_name:  # the signal reached another rank
            self.stop.signal_name = f"{_STOP_REASONS[reason]} on another process"
        return reason > 0

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

    @property
    def stopped_by_signal(self) -> bool:
        """True when Ctrl-C or SIGTERM (on any rank) stopped the run: its exit status is 130."""
        return bool(self.stop.signal_name)

    def close(self) -> None:
        """Close the logs and release the run folder. The process group stays up (``finetune`` runs
        two sessions in one process); a program's ``main`` ends it with :func:`end_processes`."""
        self.logger.close()
        if self.watch is not None:
            self.watch.stop()
        self.lock.release()


def run_training_program(prog: str, body: Callable[[], int]) -> int:
    """A training program's exit status (:func:`~wm_video.errors.run_program`, a frozen or dead
    rank named in one line); the process group is left at the end, however it ends."""
    try:
        return run_program(prog, body, translate=rank_failure)
    finally:
        end_processes()


def end_processes() -> None:
    """Leave the process group of a multi-process run (at the end of a program's ``main``)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
