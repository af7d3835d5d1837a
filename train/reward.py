"""``wm-video train reward``: the reward and episode-end model a world env scores its steps with.

Trains :class:`~wm_video.envs.reward.RewardNet` on a dataset's real consecutive frames with the
reward and episode end the engine recorded (ViZDoom's ground truth), then scores it on the
held-out episodes (the last 10 %): precision and recall of positive rewards (kills in Defend the
Center), negative rewards and episode ends (deaths). Writes OUT/reward.safetensors and
OUT/reward.json (config, scores); a world env reads the folder (``reward=OUT``), and an exported
world folder with a ``reward/`` inside uses it by default.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from wm_video.cli_args import (
    add_cache_dir_flag,
    add_progress_flag,
    add_threads_flag,
    positive_float,
    positive_int,
)
from wm_video.errors import run_program


def build_parser(prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument(
        "--data", type=Path, required=True, help="dataset with recorded reward and ends (ViZDoom)"
    )
    parser.add_argument("--out", type=Path, required=True, help="folder to write the reward model into")
    group = parser.add_argument_group("training")
    group.add_argument("--steps", type=positive_int, default=2000, help="optimizer steps (default 2000)")
    group.add_argument(
        "--batch-size", type=positive_int, default=64, help="frame pairs per step (default 64)"
    )
    group.add_argument("--lr", type=positive_float, default=2e-3, help="peak learning rate (default 2e-3)")
    group.add_argument(
        "--input-size",
        type=positive_int,
        default=32,
        help="frames are resized to this many px, a multiple of 16 (default 32)",
    )
    group.add_argument(
        "--size", type=positive_int, default=64, help="the frame cache's resolution (default 64)"
    )
    group.add_argument(
        "--holdout", type=float, default=0.1, help="share of episodes held out for the scores (default 0.1)"
    )
    group.add_argument(
        "--calibration",
        type=float,
        default=0.1,
        help="share of the training episodes kept out of training to choose the decision thresholds (default 0.1)",
    )
    group.add_argument(
        "--tolerance",
        type=int,
        default=2,
        help="an event counts as found within ± this many steps (default 2)",
    )
    group.add_argument("--seed", type=int, default=0, help="weights and batches (default 0)")
    add_threads_flag(group)
    add_progress_flag(group)
    add_cache_dir_flag(group)
    return parser


def main(argv: Sequence[str] | None = None, prog: str = "wm-video train reward") -> int:
    args = build_parser(prog).parse_args(argv)

    def run() -> int:
        from wm_video import threads
        from wm_video.envs.reward import (
            RewardConfig,
            format_scores,
            recorded_footage,
            save_reward,
            score_reward,
            train_reward,
        )
        from wm_video.errors import InputError

        if args.tolerance < 0:
            raise InputError(f"--tolerance is a number of steps ≥ 0; got {args.tolerance}")
        threads.configure(args.threads, device="cpu")
        config = RewardConfig(
            input_size=args.input_size, steps=args.steps, batch_size=args.batch_size, lr=args.lr
        )
        progress = not args.no_progress and sys.stderr.isatty()
        footage = recorded_footage(
            args.data, size=args.size, holdout=args.holdout, cache_dir=args.cache_dir, progress=progress
        )
        started = time.perf_counter()
        from wm_video.data.split import split_episodes

        split = split_episodes(footage.train, args.calibration)  # positions; the last share calibrates
        model = train_reward(
            footage.data,
            list(split.train),
            footage.action_names,
            config=config,
            seed=args.seed,
            progress=progress,
            calibration=list(split.heldout),
        )
        seconds = time.perf_counter() - started
        scores = score_reward(model, footage.data, footage.heldout or footage.train, args.tolerance)
        heldout = [int(footage.episode_indices[e]) for e in footage.heldout]
        save_reward(
            model,
            args.out,
            {
                "data": str(args.data),
                "heldout_episodes": heldout,
                "train_seconds": round(seconds, 1),
                "tolerance": args.tolerance,
                "scores": {name: asdict(score) for name, score in scores.items()},
            },
        )
        scored = f"held-out episodes {heldout}" if heldout else "the training episodes (none held out)"
        print(
            f"{args.out}: reward values {list(model.values)}, end reward {model.end_reward:+g}; thresholds: "
            f"event {model.event_threshold:g}, end {model.end_threshold:g}; trained in {seconds:.0f} s"
        )
        print(f"on {scored}:")
        print(format_scores(scores, args.tolerance))
        return 0

    return run_program(prog, run)


if __name__ == "__main__":
    raise SystemExit(main())
