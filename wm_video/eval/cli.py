"""``wm-video eval``: score trained models on held-out footage."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from wm_video.cli_args import Commands, positive_int
from wm_video.errors import WMVideoError


def _eval_dynamics(args: argparse.Namespace) -> int:
    import torch

    from wm_video.checkpoint import load_dynamics, load_tokenizer
    from wm_video.data.cache import load_cache
    from wm_video.data.split import split_episodes
    from wm_video.data.tokens import load_token_cache
    from wm_video.engine import check_pair
    from wm_video.eval.dynamics import evaluate_dynamics
    from wm_video.fileio import atomic_write_json

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dynamics, checkpoint = load_dynamics(args.checkpoint, device=device, ema=not args.raw_weights)
    tokenizer_path = args.tokenizer or checkpoint.meta.get("tokenizer")
    if not tokenizer_path:
        raise WMVideoError(
            f"{checkpoint.path}: the checkpoint does not name its tokenizer; pass --tokenizer RUN"
        )
    tokenizer, _ = load_tokenizer(Path(tokenizer_path), device=device)
    check_pair(tokenizer, dynamics)
    data = args.data or checkpoint.meta.get("data")
    if data is None:
        raise WMVideoError(f"{checkpoint.path}: the checkpoint does not name its dataset; pass --data DIR")
    progress = sys.stderr.isatty()
    frames = load_cache(Path(data), size=tokenizer.config.image_size, progress=progress)
    tokens = load_token_cache(frames, tokenizer, progress=progress)
    if tuple(tokens.action_names) != dynamics.config.action_names:
        raise WMVideoError(
            f"{data}: its actions {list(tokens.action_names)} are not the model's {list(dynamics.config.action_names)}"
        )
    split = split_episodes(tokens.episode_indices.tolist(), checkpoint.meta.get("holdout", 0.1))
    which = "held-out episodes" if split.heldout and not args.all_episodes else "all episodes"
    episodes = list(split.heldout) if which == "held-out episodes" else tokens.episode_indices.tolist()
    report = evaluate_dynamics(
        tokenizer,
        dynamics,
        tokens,
        frames.frames,
        episodes,
        clips=args.clips,
        context=args.context,
        horizon=args.horizon,
        seed=args.seed,
    )
    print(
        f"{checkpoint.path} (step {checkpoint.step}, {'raw' if args.raw_weights else 'EMA'} weights) on {data}: {which}"
    )
    print(report.format())
    if args.json is not None:
        atomic_write_json(
            args.json, {"checkpoint": str(checkpoint.path), "step": checkpoint.step, **report.to_dict()}
        )
        print(f"report: {args.json}")
    return 0


def _eval(args: argparse.Namespace) -> int:
    import signal

    if args.what == "dynamics":
        return _eval_dynamics(args)

    import torch

    from wm_video.checkpoint import load_tokenizer
    from wm_video.data.cache import load_cache
    from wm_video.eval import evaluate_tokenizer
    from wm_video.eval.tokenizer import choose_episodes
    from wm_video.fileio import atomic_write_json

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model, checkpoint = load_tokenizer(args.checkpoint, device=device, ema=not args.raw_weights)
    data = args.data or checkpoint.meta.get("data")
    if data is None:
        raise WMVideoError(f"{checkpoint.path}: the checkpoint does not name its dataset; pass --data DIR")
    cache = load_cache(Path(data), size=model.config.image_size, progress=sys.stderr.isatty())
    episodes, which = choose_episodes(
        cache, args.episodes, all_episodes=args.all_episodes, holdout=checkpoint.meta.get("holdout")
    )
    interrupted: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: interrupted.append(signum))
    try:
        report = evaluate_tokenizer(
            model,
            cache,
            episodes=episodes,
            max_frames_per_episode=args.max_frames,
            chunk_frames=args.chunk_frames,
            progress=sys.stderr.isatty(),
            stop=lambda: bool(interrupted),
        )
    finally:
        signal.signal(signal.SIGINT, previous)
    print(
        f"{checkpoint.path} (step {checkpoint.step}, {'raw' if args.raw_weights else 'EMA'} weights) on {data}: {which}"
    )
    print(report.format())
    if args.json is not None:
        atomic_write_json(
            args.json, {"checkpoint": str(checkpoint.path), "step": checkpoint.step, **report.to_dict()}
        )
        print(f"report: {args.json}")
    if interrupted:
        return 130
    return 0


def register(commands: Commands) -> None:
    """Add ``wm-video eval``."""
    p = commands.add_parser("eval", help="evaluate a trained model on held-out footage")
    p.add_argument(
        "what",
        choices=["tokenizer", "dynamics"],
        help="tokenizer: PSNR, SSIM, codebook use, bits per frame; dynamics: teacher-forced next-frame PSNR, "
        "ΔPSNR(t=4) and drift over a rollout",
    )
    p.add_argument("--checkpoint", type=Path, required=True, help="run folder or checkpoint step folder")
    p.add_argument(
        "--data", type=Path, default=None, help="dataset folder (default: the one it was trained on)"
    )
    group = p.add_argument_group("which frames")
    group.add_argument(
        "--episodes", default=None, help="comma-separated episode indices (default: held-out ones)"
    )
    group.add_argument("--all-episodes", action="store_true", help="every episode of the dataset")
    group.add_argument(
        "--max-frames", type=positive_int, default=None, help="at most this many frames per episode"
    )
    group = p.add_argument_group("run")
    group.add_argument("--device", choices=["cpu", "cuda"], default=None, help="default: cuda when present")
    group.add_argument(
        "--chunk-frames", type=positive_int, default=64, help="frames decoded per forward pass (default 64)"
    )
    group.add_argument("--raw-weights", action="store_true", help="the trained weights instead of their EMA")
    group.add_argument("--json", type=Path, default=None, help="also write the report as JSON")
    group = p.add_argument_group("dynamics")
    group.add_argument(
        "--tokenizer", type=Path, default=None, help="tokenizer (default: the one it was trained with)"
    )
    group.add_argument("--clips", type=positive_int, default=16, help="held-out clips scored (default 16)")
    group.add_argument(
        "--context", type=positive_int, default=4, help="real frames before a rollout (default 4)"
    )
    group.add_argument(
        "--horizon", type=positive_int, default=16, help="frames generated per rollout (default 16)"
    )
    group.add_argument("--seed", type=int, default=0, help="which clips, and the sampling noise (default 0)")
    p.set_defaults(handler=_eval)
