"""``wm-video finetune --data DIR --from CKPT --out RUN``: adapt a trained world to new footage.

One command, two phases, each a normal training run that resumes when the command is run again:

1. ``RUN/tokenizer``: the tokenizer that ``CKPT`` was trained with (found through its
   ``meta.tokenizer``, relative paths read from the checkpoint's folder, as
   :func:`wm_video.engine.load_world` does) fine-tuned on the new frames. Footage of another size
   is resized to the tokenizer's (the training cache does it), so any resolution works.
2. ``RUN/dynamics``: ``CKPT``'s dynamics model fine-tuned on the new tokens and actions. The
   action set may differ: actions matched by name keep their embedding, new ones start from zero
   (:mod:`wm_video.train.remap`); the delta scales are measured on the new data.

``--tokenizer-steps 0`` keeps the tokenizer as it is. ``RUN/dynamics`` then plays like any
trained world: ``wm-video play --checkpoint RUN/dynamics``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from wm_video.checkpoint import Checkpoint, load_checkpoint, recorded_tokenizer, resolve_checkpoint
from wm_video.dynamics import CorruptionConfig
from wm_video.errors import EXIT_STOPPED, InputError
from wm_video.train.cli import DESCRIPTION
from wm_video.train.dynamics import DynamicsTrainOptions, train_dynamics
from wm_video.train.options import SessionOptions, add_finetune_flags, session_options
from wm_video.train.session import run_training_program
from wm_video.train.tokenizer import TokenizerTrainOptions, train_tokenizer


@dataclass(frozen=True)
class FinetuneOptions:
    data: Path
    source: Path  # a dynamics run folder or checkpoint
    session: SessionOptions  # shared by both phases; ``out`` is the parent of RUN/tokenizer and RUN/dynamics
    tokenizer_steps: int = 500
    dynamics_steps: int = 2000
    clip_len: int | None = None  # dynamics clip length; None: the source run's


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


def finetune(options: FinetuneOptions) -> FinetuneResult:
    for name in ("tokenizer_steps", "dynamics_steps"):
        if getattr(options, name) < 0 or (name == "dynamics_steps" and options.dynamics_steps < 1):
            raise InputError(f"--{name.replace('_', '-')} must be ≥ {int(name == 'dynamics_steps')}")
    source = load_checkpoint(options.source, kind="dynamics", with_training_state=False)
    tokenizer = recorded_tokenizer(source)
    tokenizer_checkpoint = load_checkpoint(tokenizer, kind="tokenizer", with_training_state=False)
    out = Path(options.session.out)
    tokenizer_step: int | None = None
    if options.tokenizer_steps > 0:
        print(
            f"phase 1/2: fine-tuning the tokenizer {resolve_checkpoint(tokenizer)} on {options.data}",
            flush=True,
        )
        phase1 = train_tokenizer(
            TokenizerTrainOptions(
                data=options.data,
                session=replace(options.session, out=out / "tokenizer", max_steps=options.tokenizer_steps),
                clip_len=int(_program_option(tokenizer_checkpoint, "clip_len", 8)),
                init=tokenizer,
            )
        )
        if phase1.stopped_early:
            return FinetuneResult(
                out / "tokenizer", out / "dynamics", phase1.step, None, True, phase1.stopped_by_signal
            )
        tokenizer, tokenizer_step = out / "tokenizer", phase1.step
    corruption = _program_option(source, "corruption", {})
    print(f"phase 2/2: fine-tuning the dynamics model {source.path} on {options.data}", flush=True)
    phase2 = train_dynamics(
        DynamicsTrainOptions(
            data=options.data,
            tokenizer=tokenizer,
            session=replace(options.session, out=out / "dynamics", max_steps=options.dynamics_steps),
            clip_len=options.clip_len or int(_program_option(source, "clip_len", 16)),
            holdout=float(_program_option(source, "holdout", 0.1)),
            corruption=CorruptionConfig(**corruption) if corruption else CorruptionConfig(),
            init=source.path,
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


def build_parser(prog: str = "wm-video finetune") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=DESCRIPTION)
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
            )
        )
        if not result.stopped_early:
            print(
                f"fine-tuned world: {result.dynamics} (tokenizer {result.tokenizer}); play it with "
                f"`wm-video play --checkpoint {result.dynamics}`"
            )
        return EXIT_STOPPED if result.stopped_by_signal else 0

    return run_training_program(prog, run)


def main(argv: Sequence[str] | None = None, prog: str = "wm-video finetune") -> int:
    return run_finetune(build_parser(prog).parse_args(argv), prog)


if __name__ == "__main__":
    sys.exit(main(prog="python -m wm_video.train.finetune"))
