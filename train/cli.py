"""``wm-video train``: the training programs, each also runnable as ``python -m wm_video.train.<program>``."""

from __future__ import annotations

import argparse

from wm_video.cli_args import Commands


def _train(args: argparse.Namespace) -> int:
    from wm_video.train.dynamics import main as train_dynamics_main
    from wm_video.train.tokenizer import main as train_tokenizer_main

    programs = {"tokenizer": train_tokenizer_main, "dynamics": train_dynamics_main}
    return programs[args.program](args.program_args, prog=f"wm-video train {args.program}")


def register(commands: Commands) -> None:
    """Add ``wm-video train``."""
    p = commands.add_parser(
        "train",
        help="train a model (tokenizer, dynamics); `wm-video train dynamics --help` lists its flags",
        description="Train a model. Every program also runs under `accelerate launch` / `torchrun` "
        "as `python -m wm_video.train.<program>`.",
    )
    p.add_argument("program", choices=["tokenizer", "dynamics"], help="what to train")
    p.add_argument("program_args", nargs=argparse.REMAINDER, help="the program's own flags")
    p.set_defaults(handler=_train)
