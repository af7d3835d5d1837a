"""``wm-video eval``: score trained models on held-out footage."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from wm_video.cli_args import Commands, add_cache_dir_flag, positive_int
from wm_video.device import resolve_device
from wm_video.errors import InputError, WMVideoError
from wm_video.fileio import check_output_folder
from wm_video.signals import StopFlag

if TYPE_CHECKING:
    from wm_video.checkpoint import Checkpoint


def _print_summary(
    args: argparse.Namespace, checkpoint: Checkpoint, data: object, which: str, report: Any
) -> None:
    """Print a quick check's report (and write it as JSON with --json)."""
    from wm_video.fileio import atomic_write_json

    weights = "raw" if args.raw_weights else "EMA"
    print(f"{checkpoint.path} (step {checkpoint.step}, {weights} weights) on {data}: {which}")
    print(report.format())
    if args.json is not None:
        atomic_write_json(
            args.json, {"checkpoint": str(checkpoint.path), "step": checkpoint.step, **report.to_dict()}
        )
        print(f"report: {args.json}")


def _eval_dynamics(args: argparse.Namespace) -> int:

    from wm_video.checkpoint import load_dynamics, load_tokenizer, recorded_tokenizer
    from wm_video.data.cache import load_cache
    from wm_video.data.split import choose_episodes
    from wm_video.data.tokens import load_token_cache
    from wm_video.engine import check_pair
    from wm_video.eval.dynamics import evaluate_dynamics

    device = resolve_device(args.device)
    dynamics, checkpoint = load_dynamics(args.checkpoint, device=device, ema=not args.raw_weights)
    tokenizer, _ = load_tokenizer(args.tokenizer or recorded_tokenizer(checkpoint), device=device)
    check_pair(tokenizer, dynamics)
    data = args.data or checkpoint.meta.get("data")
    if data is None:
        raise WMVideoError(f"{checkpoint.path}: the checkpoint does not name its dataset; pass --data DIR")
    progress = sys.stderr.isatty()
    frames = load_cache(
        Path(data), size=tokenizer.config.image_size, cache_root=args.cache_dir, progress=progress
    )
    tokens = load_token_cache(frames, tokenizer, progress=progress)
    if tuple(tokens.action_names) != dynamics.config.action_names:
        raise WMVideoError(
            f"{data}: its actions {list(tokens.action_names)} are not the model's {list(dynamics.config.action_names)}"
        )
    episodes, which = choose_episodes(
        tokens.episode_indices.tolist(),
        args.episodes,
        all_episodes=args.all_episodes,
        holdout=checkpoint.meta.get("holdout"),
    )
    report = evaluate_dynamics(
        tokenizer,
        dynamics,
        tokens,
        frames.frames,
        episodes,
        clips=args.clips,
        context=args.context,
        horizon=args.horizon or 16,
        seed=args.seed,
    )
    _print_summary(args, checkpoint, data, which, report)
    return 0


def _eval_consistency(args: argparse.Namespace) -> int:

    import dataclasses

    import torch

    from wm_video.data.cache import load_cache
    from wm_video.data.split import choose_episodes
    from wm_video.eval.clips import EvalInterrupted
    from wm_video.eval.consistency import ConsistencyConfig, load_models, run_consistency
    from wm_video.eval.idm import IDMConfig
    from wm_video.eval.report import write_report

    if args.out is None:
        raise InputError(
            "wm-video eval: the consistency run writes a report folder; pass --out REPORT "
            "(or name a quick check: `eval tokenizer` / `eval dynamics`)"
        )
    check_output_folder(args.out, "--out (the report folder)")  # before the work, not after
    config = ConsistencyConfig(
        clips=args.clips,
        context=args.context,
        horizon=args.horizon,
        soak=args.soak,
        seed=args.seed,
        live=args.live,
        actions=args.actions,
        skip=frozenset(part for part in (args.skip or "").split(",") if part),
        idm=IDMConfig() if args.idm_steps is None else IDMConfig(steps=args.idm_steps),
        idm_cache=args.idm_cache,
    )
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    models = load_models(
        args.checkpoint, args.baseline, tokenizer=args.tokenizer, device=device, raw_weights=args.raw_weights
    )
    data = args.data or models[0].meta.get("data")
    if data is None:
        raise InputError(f"{models[0].path}: the checkpoint does not name its dataset; pass --data DIR")
    progress = sys.stderr.isatty()
    cache = load_cache(
        Path(data), size=models[0].tokenizer.config.image_size, cache_root=args.cache_dir, progress=progress
    )
    if args.episodes is not None:
        chosen, _ = choose_episodes(cache.episode_indices.tolist(), args.episodes)
        config = dataclasses.replace(config, episodes=tuple(chosen))
    try:
        with StopFlag() as stop:
            result = run_consistency(
                models,
                cache,
                Path(data),
                float(models[0].meta.get("holdout", 0.1)),
                config,
                stop=lambda: stop.requested,
                progress=progress,
                log=lambda line: print(line, file=sys.stderr),
            )
    except EvalInterrupted:
        print("wm-video eval: interrupted; no report was written", file=sys.stderr)
        return 130
    report = write_report(result, args.out)
    for r in result.results:
        drift, control = r.clips.drift, r.clips.control
        print(
            f"{r.model.label} {r.model.path} (step {r.model.step}): teacher-forced {r.clips.teacher.psnr:.2f} dB, "
            f"after {r.clips.horizon} frames {drift.psnr.mean[-1]:.2f} ± {drift.psnr.std[-1]:.2f} dB, "
            f"ΔPSNR(t={control.t}) {control.delta_psnr_t4:+.2f} dB"
        )
    print(f"report: {report}")
    return 0


def _eval(args: argparse.Namespace) -> int:

    if args.what == "dynamics":
        return _eval_dynamics(args)
    if args.what is None:
        return _eval_consistency(args)

    from wm_video.checkpoint import load_tokenizer
    from wm_video.data.cache import load_cache
    from wm_video.data.split import choose_episodes
    from wm_video.eval import evaluate_tokenizer

    device = resolve_device(args.device)
    model, checkpoint = load_tokenizer(args.checkpoint, device=device, ema=not args.raw_weights)
    data = args.data or checkpoint.meta.get("data")
    if data is None:
        raise WMVideoError(f"{checkpoint.path}: the checkpoint does not name its dataset; pass --data DIR")
    cache = load_cache(
        Path(data), size=model.config.image_size, cache_root=args.cache_dir, progress=sys.stderr.isatty()
    )
    episodes, which = choose_episodes(
        cache.episode_indices.tolist(),
        args.episodes,
        all_episodes=args.all_episodes,
        holdout=checkpoint.meta.get("holdout"),
    )
    with StopFlag() as stop:
        report = evaluate_tokenizer(
            model,
            cache,
            episodes=episodes,
            max_frames_per_episode=args.max_frames,
            chunk_frames=args.chunk_frames,
            progress=sys.stderr.isatty(),
            stop=lambda: stop.requested,
        )
    _print_summary(args, checkpoint, data, which, report)
    if stop.requested:
        return 130
    return 0


def register(commands: Commands) -> None:
    """Add ``wm-video eval``."""
    p = commands.add_parser(
        "eval",
        help="evaluate a trained model: the consistency run of a dynamics checkpoint, or a quick check",
        description="Without WHAT: the full consistency run of a dynamics checkpoint (teacher-forced next "
        "frame, drift, controllability, action accuracy, loop closure, soak) written as a report folder "
        "(--out). With WHAT: a quick check printed to the terminal.",
    )
    p.add_argument(
        "what",
        nargs="?",
        choices=["tokenizer", "dynamics"],
        default=None,
        help="quick checks: tokenizer (PSNR, SSIM, codebook use, bits per frame) or dynamics (teacher-forced "
        "next-frame PSNR, ΔPSNR and drift, printed); omit for the full consistency run",
    )
    p.add_argument("--checkpoint", type=Path, required=True, help="run folder or checkpoint step folder")
    p.add_argument(
        "--data", type=Path, default=None, help="dataset folder (default: the one it was trained on)"
    )
    add_cache_dir_flag(p)
    group = p.add_argument_group("which frames")
    group.add_argument(
        "--episodes", default=None, help="comma-separated episode indices (default: held-out ones)"
    )
    group.add_argument("--all-episodes", action="store_true", help="every episode of the dataset")
    group.add_argument(
        "--max-frames", type=positive_int, default=None, help="at most this many frames per episode"
    )
    group = p.add_argument_group("run")
    group.add_argument(
        "--device", default=None, help="torch device: cpu, cuda, cuda:1, ... (default: cuda when present)"
    )
    group.add_argument(
        "--chunk-frames", type=positive_int, default=64, help="frames decoded per forward pass (default 64)"
    )
    group.add_argument("--raw-weights", action="store_true", help="the trained weights instead of their EMA")
    group.add_argument("--json", type=Path, default=None, help="also write the report as JSON")
    group = p.add_argument_group("dynamics")
    group.add_argument(
        "--tokenizer", type=Path, default=None, help="tokenizer (default: the one it was trained with)"
    )
    group.add_argument(
        "--clips", type=positive_int, default=16, help="held-out clips (or live episodes) scored (default 16)"
    )
    group.add_argument(
        "--context", type=positive_int, default=4, help="real frames before a rollout (default 4)"
    )
    group.add_argument(
        "--horizon",
        type=positive_int,
        default=None,
        help="frames generated per rollout (default: 3 s of game time for the full run, 16 for `dynamics`)",
    )
    group.add_argument("--seed", type=int, default=0, help="which clips, and the sampling noise (default 0)")
    group = p.add_argument_group("consistency run (no WHAT)")
    group.add_argument(
        "--out", type=Path, default=None, help="report folder: report.md, metrics.json, plots, mp4"
    )
    group.add_argument(
        "--baseline", type=Path, default=None, help="a second dynamics run scored on the same clips"
    )
    group.add_argument(
        "--soak",
        type=int,
        default=10_000,
        help="frames of the long rollout under exploration (default 10000; 0 skips)",
    )
    group.add_argument(
        "--live",
        default=None,
        metavar="ENGINE[:SCENARIO]",
        help="play live episodes on the real engine (e.g. vizdoom:my_way_home) instead of dataset clips; "
        "--clips of them, under --actions",
    )
    group.add_argument(
        "--actions",
        default="explore",
        help="live action program: explore, random or a JSONL script (default explore)",
    )
    group.add_argument(
        "--skip", default=None, help="comma-separated parts to leave out: actions, loops, soak"
    )
    group.add_argument(
        "--idm-steps",
        type=positive_int,
        default=None,
        help="training steps of the inverse-dynamics model (default 1200)",
    )
    group.add_argument(
        "--threads",
        type=positive_int,
        default=None,
        help="CPU threads for torch (default: torch's choice, one per core); 1 is often faster for small "
        "models on a busy machine",
    )
    group.add_argument(
        "--idm-cache",
        type=Path,
        default=None,
        help="folder for the cached IDM (default: beside the frame cache)",
    )
    p.set_defaults(handler=_eval)
