"""``wm-video finetune --data DIR --from CKPT --out RUN``: adapt a trained world to new footage.

One command, two phases (three with ``--table-steps``), each a normal training run that resumes
when the command is run again:

1. ``RUN/tokenizer``: the tokenizer that ``CKPT`` was trained with (found through its
   ``meta.tokenizer``, relative paths read from the checkpoint's folder, as
   :func:`wm_video.engine.load_world` does) fine-tuned on the new frames, or one of its shape
   trained from scratch (``--fresh-tokenizer``). Footage of another size is resized to the
   tokenizer's (the training cache does it), so any resolution works. With ``--table-steps N``
   this phase trains ``RUN/first`` instead, and ``RUN/tokenizer`` is that tokenizer with a code
   table added to its decoder (:func:`wm_video.tokenizer.model.with_code_embedding`), trained N
   steps more: the long recipe's tokenizer, which keeps a ball a pixel wide.
2. ``RUN/dynamics``: ``CKPT``'s dynamics model fine-tuned on the new tokens and actions. The
   action set may differ: actions matched by name keep their embedding, new ones start from zero
   (:mod:`wm_video.train.remap`); the delta scales are measured on the new data.

``--tokenizer-steps 0`` keeps the tokenizer as it is. ``RUN/dynamics`` then plays like any
trained world: ``wm-video play --checkpoint RUN/dynamics``.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from wm_video.checkpoint import Checkpoint, load_checkpoint, recorded_tokenizer, resolve_checkpoint
from wm_video.data.objects import require_labels
from wm_video.dynamics import CorruptionConfig, TokenWeightConfig
from wm_video.errors import EXIT_STOPPED, InputError
from wm_video.tokenizer import TokenizerConfig
from wm_video.tokenizer.adversarial import AdversarialConfig
from wm_video.train.cli import FINETUNE_TEXT
from wm_video.train.dynamics import DynamicsTrainOptions, train_dynamics
from wm_video.train.options import SessionOptions, add_finetune_flags, session_options
from wm_video.train.session import run_training_program
from wm_video.train.tokenizer import (
    TokenizerTrainOptions,
    TokenizerTrainResult,
    adversarial_config,
    train_tokenizer,
)


@dataclass(frozen=True)
class FinetuneOptions:
    data: Path
    source: Path  # a dynamics run folder or checkpoint
    session: SessionOptions  # shared by both phases; ``out`` is the parent of RUN/tokenizer and RUN/dynamics
    tokenizer_steps: int = 500
    dynamics_steps: int = 2000
    clip_len: int | None = None  # dynamics clip length; None: the source run's
    tokenizer_lr: float | None = 5e-4  # None: the session's lr
    tokenizer_batch_size: int | None = None  # None: the session's batch size
    change_weight: float = 50.0  # the tokenizer loss's weight on changed pixels (wm_video.tokenizer.loss)
    change_reference: str = "previous"
    frequency_weight: float = 0.0  # the tokenizer loss's amplitude-spectrum term
    adversarial: AdversarialConfig = AdversarialConfig()  # the tokenizer's discriminator (always fresh)
    fresh_tokenizer: bool = False  # train a tokenizer of the world's shape from scratch instead
    tokenizer_object_weight: float = 0.0  # the tokenizer loss's weight on object pixels (the labels)
    code_embedding: bool = False  # the tokenizer's decoder reads a vector per code (wm_video.tokenizer.model)
    table_steps: int = 0  # > 0: RUN/first without the code table, then these steps with it in RUN/tokenizer
    weighting: TokenWeightConfig = TokenWeightConfig()  # the dynamics loss's weight on object/changed tokens
    chain_digits: bool = False  # the dynamics model draws a token's digits in turn (added to the source's)


@dataclass(frozen=True)
class FinetuneResult:
    tokenizer: Path  # the tokenizer the dynamics model now reads (RUN/tokenizer, or the source's)
    dynamics: Path  # RUN/dynamics
    tokenizer_step: int | None  # None when the tokenizer was kept as it is
    dynamics_step: int | None  # None when the tokenizer phase was stopped early
    stopped_early: bool
    stopped_by_signal: bool = False  # Ctrl-C or SIGTERM: the program exits 130


def _program_option(checkpoint: Checkpoint, key: str, default: Any) -> Any:
    """An option of the run that saved ``checkpoint`` (kept in ``meta.run.program``)."""
    return checkpoint.meta.get("run", {}).get("program", {}).get(key, default)


def _dynamics_started(run: Path) -> Checkpoint | None:
    """RUN/dynamics's newest checkpoint, if the dynamics phase has saved one."""
    try:
        return load_checkpoint(run, kind="dynamics", with_training_state=False)
    except InputError:
        return None


def _check(options: FinetuneOptions) -> None:
    for name in ("tokenizer_steps", "dynamics_steps", "table_steps"):
        if getattr(options, name) < 0 or (name == "dynamics_steps" and options.dynamics_steps < 1):
            raise InputError(f"--{name.replace('_', '-')} must be ≥ {int(name == 'dynamics_steps')}")
    if options.table_steps > 0 and options.code_embedding:
        raise InputError(
            "--code-embedding trains the code table from the first step and --table-steps adds it after "
            "--tokenizer-steps; give one of them"
        )
    if options.table_steps > 0 and options.tokenizer_steps == 0:
        raise InputError(
            "--table-steps continues the tokenizer phase; give --tokenizer-steps too (the long recipe: 2500)"
        )
    if options.tokenizer_object_weight > 0 and options.tokenizer_steps > 0:
        require_labels(options.data, "--tokenizer-object-weight")
    if options.weighting.needs_objects:
        require_labels(options.data)


def finetune(options: FinetuneOptions) -> FinetuneResult:
    """All phases. ``--max-minutes`` is the budget of the whole command: each tokenizer phase may use
    its share (its steps / all steps, and never more than is left) and the dynamics phase the rest;
    a tokenizer phase that runs out of its share hands over to the next phase with the tokenizer it
    reached. Once the dynamics phase has saved a checkpoint, its tokenizer is fixed: running the
    command again skips the tokenizer phases and continues the dynamics model."""
    _check(options)
    started = time.monotonic()
    budget = options.session.max_minutes
    total_steps = options.tokenizer_steps + options.table_steps + options.dynamics_steps

    def minutes_left() -> float | None:
        return None if budget is None else budget - (time.monotonic() - started) / 60

    source = load_checkpoint(options.source, kind="dynamics", with_training_state=False)
    tokenizer = recorded_tokenizer(source)
    tokenizer_checkpoint = load_checkpoint(tokenizer, kind="tokenizer", with_training_state=False)
    out = Path(options.session.out)
    phases = 3 if options.table_steps > 0 else 2
    tokenizer_step: int | None = None
    begun = _dynamics_started(out / "dynamics")
    if begun is not None and options.tokenizer_steps > 0:
        tokenizer = recorded_tokenizer(begun)
        print(
            f"{'phases 1-2/3' if phases == 3 else 'phase 1/2'} done: {out / 'dynamics'} trains on the "
            f"tokenizer {tokenizer}; continuing the dynamics model",
            flush=True,
        )
    elif options.tokenizer_steps > 0:
        origin = (
            "a fresh tokenizer of its shape"
            if options.fresh_tokenizer
            else f"the tokenizer {resolve_checkpoint(tokenizer)}"
        )
        first = out / ("first" if options.table_steps > 0 else "tokenizer")
        # (folder, steps, init, code table, what it does): the table phase continues the first one
        plan: list[tuple[Path, int, Path | None, bool, str]] = [
            (first, options.tokenizer_steps, None if options.fresh_tokenizer else tokenizer,
             options.code_embedding, f"training {origin}"),
        ]  # fmt: skip
        if options.table_steps > 0:
            doing = f"adding a code table to {first} and training it"
            plan.append((out / "tokenizer", options.table_steps, first, True, doing))
        for number, (folder, steps, init, code_embedding, doing) in enumerate(plan, start=1):
            print(f"phase {number}/{phases}: {doing} on {options.data}", flush=True)
            left = minutes_left()
            minutes = None if budget is None or left is None else min(budget * steps / total_steps, left)
            phase = _train_tokenizer_phase(
                options,
                tokenizer_checkpoint,
                replace(options.session, out=folder, max_steps=steps, max_minutes=minutes),
                init=init,
                code_embedding=code_embedding,
            )
            if phase.stopped_by_signal:  # a stop for time hands over to the next phase
                return FinetuneResult(folder, out / "dynamics", phase.step, None, True, True)
            tokenizer, tokenizer_step = folder, phase.step
    left = minutes_left()
    if left is not None and left <= 0:
        print(
            f"no time left for phase {phases}/{phases}; run the same command again to train the dynamics model",
            flush=True,
        )
        return FinetuneResult(tokenizer, out / "dynamics", tokenizer_step, None, True)
    corruption = _program_option(source, "corruption", {})
    print(f"phase {phases}/{phases}: fine-tuning the dynamics model {source.path} on {options.data}", flush=True)
    phase2 = train_dynamics(
        DynamicsTrainOptions(
            data=options.data,
            tokenizer=tokenizer,
            session=replace(
                options.session, out=out / "dynamics", max_steps=options.dynamics_steps, max_minutes=left
            ),
            clip_len=options.clip_len or int(_program_option(source, "clip_len", 16)),
            holdout=float(_program_option(source, "holdout", 0.1)),
            corruption=CorruptionConfig(**corruption) if corruption else CorruptionConfig(),
            weighting=options.weighting,
            init=source.path,
            chain_digits=options.chain_digits,
        )
    )
    return FinetuneResult(
        tokenizer,
        out / "dynamics",
        tokenizer_step,
        phase2.step,
        phase2.stopped_early,
        phase2.stopped_by_signal,
    )


def _train_tokenizer_phase(
    options: FinetuneOptions,
    world_tokenizer: Checkpoint,
    session: SessionOptions,
    *,
    init: Path | None,
    code_embedding: bool,
) -> TokenizerTrainResult:
    """One tokenizer phase: from ``init``, or fresh in the shape of the world's tokenizer."""
    return train_tokenizer(
        TokenizerTrainOptions(
            data=options.data,
            session=replace(
                session,
                lr=options.tokenizer_lr or options.session.lr,
                batch_size=options.tokenizer_batch_size or options.session.batch_size,
            ),
            clip_len=int(_program_option(world_tokenizer, "clip_len", 8)),
            change_weight=options.change_weight,
            change_reference=options.change_reference,
            object_weight=options.tokenizer_object_weight,
            frequency_weight=options.frequency_weight,
            adversarial=options.adversarial,
            init=init,
            config=TokenizerConfig.from_dict(world_tokenizer.config) if init is None else None,
            code_embedding=code_embedding,
        )
    )


def build_parser(prog: str = "wm-video finetune") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, **FINETUNE_TEXT)
    add_finetune_flags(parser)
    return parser


def run_finetune(args: argparse.Namespace, prog: str = "wm-video finetune") -> int:
    """Fine-tune from parsed :func:`~wm_video.train.options.add_finetune_flags` flags; the exit status."""

    def run() -> int:
        result = finetune(
            FinetuneOptions(
                data=args.data,
                source=args.source,
                session=session_options(args),
                tokenizer_steps=args.tokenizer_steps,
                dynamics_steps=args.dynamics_steps,
                clip_len=args.clip_len,
                tokenizer_lr=args.tokenizer_lr,
                tokenizer_batch_size=args.tokenizer_batch_size,
                change_weight=args.change_weight,
                change_reference=args.change_reference,
                frequency_weight=args.frequency_weight,
                adversarial=adversarial_config(args),
                fresh_tokenizer=args.fresh_tokenizer,
                tokenizer_object_weight=args.tokenizer_object_weight,
                code_embedding=args.code_embedding,
                table_steps=args.table_steps,
                weighting=TokenWeightConfig(
                    object_weight=args.object_weight, change_weight=args.token_change_weight
                ),
                chain_digits=args.chain_digits,
            )
        )
        if not result.stopped_early:
            out = args.out
            print(
                f"fine-tuned world: {result.dynamics} (tokenizer {result.tokenizer}); play it with "
                f"`wm-video play --checkpoint {out}`, score it with `wm-video eval dynamics --checkpoint {out}`"
            )
        return EXIT_STOPPED if result.stopped_by_signal else 0

    return run_training_program(prog, run)


def main(argv: Sequence[str] | None = None, prog: str = "wm-video finetune") -> int:
    return run_finetune(build_parser(prog).parse_args(argv), prog)


if __name__ == "__main__":
    sys.exit(main(prog="python -m wm_video.train.finetune"))
