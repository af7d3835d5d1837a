"""``wm-video train``, ``finetune``, ``plot`` and ``export``: the training programs (each also runnable
as ``python -m wm_video.train.<program>``), fine-tuning on new footage, the curves, and shipping."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from wm_video.cli_args import Commands, add_sampling_flags, sampling_overrides
from wm_video.train.options import add_finetune_flags

DESCRIPTION = (
    "Fine-tune a trained tokenizer and dynamics model on new footage (another game or action set too): "
    "RUN/tokenizer (after RUN/first with --table-steps), then RUN/dynamics. Run the same command again "
    "to resume."
)
#: The fine-tune recipe ``finetune --help`` ends with; the README's walkthrough measures it.
RECIPE = """recipe (a new 64x64 game, e.g. Atari Breakout, on a 2-core CPU, at most 30 minutes):
  wm-video finetune --data DATA --from checkpoints/default --out RUN \\
    --fresh-tokenizer --tokenizer-steps 1600 --dynamics-steps 500 --batch-size 4 \\
    --clip-len 10 --lr 6e-4 --warmup-steps 20 --max-minutes 28
A tokenizer trained from scratch on the new game beats the world's own fine-tuned in this time
(sharper, and it keeps a moving paddle); its defaults (--tokenizer-lr 5e-4, --change-weight 50)
weight its loss toward small moving objects; --max-minutes is the budget of both phases together.
Play or score the result with --guidance 1.5 (action guidance: the paddle follows the keys
more often). README.md, "Fine-tuning on your own footage", gives the figures this reaches (the
ball is still mostly lost on a CPU's steps). The longer run there (2.3-2.5 hours here, beside
other work) keeps the ball in the tokenizer and, played with --guidance 1.5, makes the paddle
follow the keys:
  wm-video finetune --data DATA --from checkpoints/default --out RUN \\
    --fresh-tokenizer --tokenizer-steps 2500 --table-steps 1500 --dynamics-steps 2000 \\
    --batch-size 4 --clip-len 10 --lr 6e-4 --warmup-steps 20"""
#: How the fine-tune parser describes itself, as ``wm-video finetune`` and as ``python -m wm_video.train.finetune``.
FINETUNE_TEXT: dict[str, Any] = {
    "description": DESCRIPTION,
    "epilog": RECIPE,
    "formatter_class": argparse.RawDescriptionHelpFormatter,
}


def _train(args: argparse.Namespace) -> int:
    from wm_video.train.dynamics import main as train_dynamics_main
    from wm_video.train.reward import main as train_reward_main
    from wm_video.train.tokenizer import main as train_tokenizer_main

    programs = {
        "tokenizer": train_tokenizer_main,
        "dynamics": train_dynamics_main,
        "reward": train_reward_main,
    }
    return programs[args.program](args.program_args, prog=f"wm-video train {args.program}")


def _finetune(args: argparse.Namespace) -> int:
    from wm_video.train.finetune import run_finetune

    return run_finetune(args)


def _plot(args: argparse.Namespace) -> int:
    from wm_video.train.plot import run_plot

    return run_plot(args)


def _export(args: argparse.Namespace) -> int:
    from wm_video.export import describe, export_world

    result = export_world(
        args.checkpoint, args.out, tokenizer=args.tokenizer, dtype=args.dtype, sampling=sampling_overrides(args)
    )
    print(describe(result))
    return 0


def register(commands: Commands) -> None:
    """Add ``wm-video train``, ``finetune``, ``plot`` and ``export``."""
    p = commands.add_parser(
        "train",
        help="train a model (tokenizer, dynamics, reward); `wm-video train dynamics --help` lists its flags",
        description="Train a model. Every program also runs under `accelerate launch` / `torchrun` "
        "as `python -m wm_video.train.<program>`.",
    )
    p.add_argument(
        "program",
        choices=["tokenizer", "dynamics", "reward"],
        help="what to train (reward: the reward and episode-end model of a world env)",
    )
    p.add_argument("program_args", nargs=argparse.REMAINDER, help="the program's own flags")
    p.set_defaults(handler=_train)

    f = commands.add_parser(
        "finetune",
        help="adapt a trained world (tokenizer and dynamics) to new footage, another action set too",
        **FINETUNE_TEXT,
    )
    add_finetune_flags(f)
    f.set_defaults(handler=_finetune)

    plot = commands.add_parser(
        "plot",
        help="draw a run's training curves (log.jsonl) into a PNG",
        description="Draw training curves from RUN/log.jsonl, one panel per metric, runs overlaid.",
    )
    plot.add_argument("runs", nargs="+", help="run folders (each has a log.jsonl)")
    plot.add_argument("--out", default=None, help="PNG to write (default: RUN/curves.png of the first run)")
    plot.add_argument(
        "--metrics", default=None, help="comma-separated metrics to draw, e.g. loss,lr (default: all logged)"
    )
    plot.set_defaults(handler=_plot)

    export = commands.add_parser(
        "export",
        help="write a trained world (dynamics + its tokenizer + start frames) into one folder to ship",
        description="Copy a dynamics checkpoint, its tokenizer and a held-out start into a self-contained "
        "folder (inference weights only), e.g. checkpoints/NAME; play and eval take it as --checkpoint.",
    )
    export.add_argument("checkpoint", type=Path, help="dynamics run folder or checkpoint")
    export.add_argument("--out", type=Path, required=True, help="folder to write (created or replaced)")
    export.add_argument(
        "--tokenizer", type=Path, default=None, help="tokenizer checkpoint (default: the one it records)"
    )
    export.add_argument(
        "--dtype",
        choices=["float16", "bfloat16", "float32"],
        default="float16",
        help="how the weights are stored (default float16: half the size; loaded back as float32)",
    )
    add_sampling_flags(export.add_argument_group("how the world draws its frames (stored in the world)"))
    export.set_defaults(handler=_export)
