"""``wm-video eval``: score trained models on held-out footage.

``wm-video eval`` is the consistency run of a dynamics checkpoint, written as a report folder;
``eval tokenizer``, ``eval dynamics`` and ``eval sprites`` are quick checks printed to the terminal,
each with its own ``--help``. ``eval dynamics`` is a preset of the consistency run (its first parts, a short
horizon), so both give the same numbers for the same clips.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from wm_video.cli_args import (
    Commands,
    add_cache_dir_flag,
    add_compile_flag,
    add_device_flag,
    add_dtype_flag,
    add_progress_flag,
    add_sampling_flags,
    add_threads_flag,
    device_and_threads,
    positive_int,
    sampling_overrides,
)
from wm_video.errors import EXIT_STOPPED, InputError
from wm_video.fileio import check_output_folder
from wm_video.signals import StopFlag

if TYPE_CHECKING:
    from wm_video.checkpoint import Checkpoint
    from wm_video.eval.consistency import ConsistencyConfig, ConsistencyResult, Model

#: The soak's default length: ConsistencyConfig's, written out so that `--help` does not import torch
#: (tests/test_eval_consistency.py checks they agree).
SOAK_FRAMES = 2000


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _print_quick_report(args: argparse.Namespace, checkpoint: Checkpoint, data: object, which: str, report: Any) -> None:
    """Print a quick check's report (``report.format()``), and write it as JSON with ``--json``."""
    from wm_video.fileio import atomic_write_json

    weights = "raw" if args.raw_weights else "EMA"
    print(f"{checkpoint.path} (step {checkpoint.step}, {weights} weights) on {data}: {which}")
    print(report.format())
    if args.json is not None:
        atomic_write_json(
            args.json, {"checkpoint": str(checkpoint.path), "step": checkpoint.step, **report.to_dict()}
        )
        print(f"report: {args.json}")


def _consistency(
    args: argparse.Namespace, config: ConsistencyConfig
) -> tuple[list[Model], ConsistencyResult | None]:
    """Load the models and run ``config`` on their dataset; the result is None when a stop came
    before anything was measured. ``--episodes``, when given, replaces ``config.episodes`` once checked
    against the dataset."""
    import dataclasses

    from wm_video.data.cache import load_cache
    from wm_video.data.split import choose_episodes
    from wm_video.engine import compiled_worlds
    from wm_video.eval.clips import EvalInterrupted
    from wm_video.eval.consistency import load_models, run_consistency

    device = device_and_threads(args, _stderr)
    models = load_models(
        args.checkpoint,
        getattr(args, "baseline", None),
        tokenizer=args.tokenizer,
        device=device,
        raw_weights=args.raw_weights,
        dtype=args.dtype,
        sampling=sampling_overrides(args),
    )
    data = args.data or models[0].meta.get("data")
    if data is None:
        raise InputError(f"{models[0].path}: the checkpoint does not name its dataset; pass --data DIR")
    progress = not args.no_progress
    cache = load_cache(
        Path(data), size=models[0].tokenizer.config.image_size, cache_root=args.cache_dir, progress=progress
    )
    if args.episodes is not None:
        chosen, _ = choose_episodes(cache.episode_indices.tolist(), args.episodes)
        config = dataclasses.replace(config, episodes=tuple(chosen))
    try:
        with StopFlag() as stop, compiled_worlds(args.compile):
            result = run_consistency(
                models,
                cache,
                Path(data),
                float(models[0].meta.get("holdout", 0.1)),
                config,
                stop=lambda: stop.requested,
                progress=progress,
                log=_stderr,
            )
    except EvalInterrupted:
        return models, None
    return models, result


def _eval_consistency(args: argparse.Namespace) -> int:
    from wm_video.eval.consistency import ConsistencyConfig
    from wm_video.eval.idm import IDMConfig
    from wm_video.eval.report import write_report

    if args.checkpoint is None or args.out is None:
        raise InputError(
            "the consistency run writes a report folder (report.md, plots, videos): pass --out REPORT and "
            "--checkpoint RUN; the quick checks are `wm-video eval tokenizer` and `wm-video eval dynamics`"
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
    _, result = _consistency(args, config)
    if result is None:
        print("wm-video eval: stopped before the first rollouts ended; no report was written", file=sys.stderr)
        return EXIT_STOPPED
    report = write_report(result, args.out)
    for r in result.results:
        drift, control = r.clips.drift, r.clips.control
        print(
            f"{r.model.label} {r.model.path} (step {r.model.step}): teacher-forced {r.clips.teacher.psnr:.2f} dB, "
            f"after {r.clips.horizon} frames {drift.psnr.mean[-1]:.2f} ± {drift.psnr.std[-1]:.2f} dB, "
            f"ΔPSNR(t={control.t}) {control.delta_psnr_t4:+.2f} dB"
        )
    if result.incomplete is not None:
        print(f"report (incomplete: stopped during {result.incomplete}): {report}")
        return EXIT_STOPPED
    print(f"report: {report}")
    return 0


def _eval_dynamics(args: argparse.Namespace) -> int:
    from wm_video.eval.dynamics import quick_config, summary, summary_dict
    from wm_video.fileio import atomic_write_json

    config = quick_config(
        clips=args.clips,
        context=args.context,
        horizon=args.horizon,
        seed=args.seed,
    )
    models, result = _consistency(args, config)
    if result is None:
        print("wm-video eval dynamics: stopped before the rollouts ended; nothing to show", file=sys.stderr)
        return EXIT_STOPPED
    weights = "raw" if args.raw_weights else "EMA"
    print(f"{models[0].path} (step {models[0].step}, {weights} weights) on {result.data}")
    print(summary(result))
    if args.json is not None:
        atomic_write_json(args.json, summary_dict(result))
        print(f"report: {args.json}")
    return 0


def _eval_tokenizer(args: argparse.Namespace) -> int:
    from wm_video.checkpoint import load_tokenizer
    from wm_video.data.cache import load_cache
    from wm_video.data.split import choose_episodes
    from wm_video.eval import evaluate_tokenizer

    device = device_and_threads(args, _stderr)
    model, checkpoint = load_tokenizer(args.checkpoint, device=device, ema=not args.raw_weights)
    data = args.data or checkpoint.meta.get("data")
    if data is None:
        raise InputError(f"{checkpoint.path}: the checkpoint does not name its dataset; pass --data DIR")
    progress = not args.no_progress
    cache = load_cache(Path(data), size=model.config.image_size, cache_root=args.cache_dir, progress=progress)
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
            progress=progress,
            stop=lambda: stop.requested,
        )
    _print_quick_report(args, checkpoint, data, which, report)
    return EXIT_STOPPED if stop.requested else 0


def _eval_sprites(args: argparse.Namespace) -> int:
    from wm_video.checkpoint import load_checkpoint, load_tokenizer, recorded_tokenizer
    from wm_video.data.cache import load_cache
    from wm_video.data.split import choose_episodes, split_episodes
    from wm_video.engine import load_world
    from wm_video.eval.clips import engine_of_dataset
    from wm_video.eval.sprites import dataset_game, evaluate_sprites

    device = device_and_threads(args, _stderr)
    checkpoint = load_checkpoint(args.checkpoint, with_training_state=False)
    world = None
    if checkpoint.kind == "dynamics":
        world = load_world(
            args.checkpoint,
            tokenizer=args.tokenizer,
            device=device,
            batch_size=args.clips,
            seed=args.seed,
            sampling=sampling_overrides(args),
        )
        tokenizer = world.tokenizer
        tokenizer_path = args.tokenizer or recorded_tokenizer(checkpoint)
        tokenizer_meta = load_checkpoint(tokenizer_path, with_training_state=False).meta
    else:
        tokenizer, _ = load_tokenizer(args.checkpoint, device=device, ema=not args.raw_weights)
        tokenizer_meta = checkpoint.meta
    data = args.data or checkpoint.meta.get("data") or tokenizer_meta.get("data")
    if data is None:
        raise InputError(f"{checkpoint.path}: the checkpoint does not name its dataset; pass --data DIR")
    game = args.game or dataset_game(Path(data))
    if game is None:
        raise InputError(f"{data}: not an Atari dataset written by `wm-video collect`; name the game with --game")
    progress = not args.no_progress
    cache = load_cache(
        Path(data), size=tokenizer.config.image_size, cache_root=args.cache_dir, progress=progress
    )
    holdout = checkpoint.meta.get("holdout", tokenizer_meta.get("holdout"))
    everything = cache.episode_indices.tolist()
    episodes, which = choose_episodes(everything, args.episodes, all_episodes=args.all_episodes, holdout=holdout)
    train = list(split_episodes(everything, 0.1 if holdout is None else float(holdout)).train) or everything
    engine = engine_of_dataset(Path(data), cache.size)
    if world is not None and engine is None:
        _stderr(f"note: {data} does not record its engine; the motion check is skipped")
    with StopFlag() as stop:
        report = evaluate_sprites(
            tokenizer,
            cache,
            game=game,
            train_episodes=train,
            episodes=episodes,
            max_frames=args.max_frames,
            world=world if engine is not None else None,
            open_engine=engine.open if engine is not None else None,
            engine_seed=engine.seed if engine is not None else 0,
            clips=args.clips,
            context=args.context,
            horizon=args.horizon or 8,
            seed=args.seed,
            stop=lambda: stop.requested,
            strip=args.strip,
        )
    _print_quick_report(args, checkpoint, data, which, report)
    if args.strip is not None:
        if report.strip:
            print(f"strip: {args.strip} ({report.strip})")
        else:
            _stderr(f"note: no strip written to {args.strip}: no held-out frame shows a sprite to draw")
    return EXIT_STOPPED if stop.requested else 0


# -- flags -----------------------------------------------------------------------------------------
def _model_flags(parser: argparse.ArgumentParser, what: str, *, required: bool = True) -> None:
    group = parser.add_argument_group("model and data")
    group.add_argument(
        "--checkpoint",
        type=Path,
        required=required,
        default=None,
        help=f"{what} run or checkpoint step folder (or an exported world, or a `finetune --out` folder)" + ("" if required else "; required"),
    )
    group.add_argument(
        "--data", type=Path, default=None, help="dataset folder (default: the one it was trained on)"
    )
    add_cache_dir_flag(group)
    if "dynamics" in what:
        group.add_argument(
            "--tokenizer", type=Path, default=None, help="tokenizer (default: the one it was trained with)"
        )
    group.add_argument("--raw-weights", action="store_true", help="the trained weights instead of their EMA")


def _clip_flags(parser: argparse.ArgumentParser, horizon_help: str) -> None:
    group = parser.add_argument_group("clips")
    group.add_argument(
        "--episodes", default=None, help="comma-separated episode indices to draw clips from (default: held-out ones)"
    )
    group.add_argument(
        "--clips", type=positive_int, default=16, help="held-out clips (or live episodes) scored (default 16)"
    )
    group.add_argument(
        "--context", type=positive_int, default=4, help="real frames before a rollout (default 4)"
    )
    group.add_argument("--horizon", type=positive_int, default=None, help=horizon_help)
    group.add_argument("--seed", type=int, default=0, help="which clips, and the sampling noise (default 0)")


def _run_flags(parser: argparse.ArgumentParser, *, json: bool, worlds: bool = True) -> None:
    """``worlds``: the run steps generated worlds (``--dtype``, ``--compile``)."""
    group = parser.add_argument_group("run")
    add_device_flag(group)
    if worlds:
        add_dtype_flag(group)
        add_compile_flag(group)
        add_sampling_flags(group)
    add_threads_flag(group)
    add_progress_flag(group)
    if json:
        group.add_argument("--json", type=Path, default=None, help="also write the numbers as JSON")


def register(commands: Commands) -> None:
    """Add ``wm-video eval`` with its quick checks ``eval tokenizer``, ``eval dynamics`` and ``eval sprites``."""
    p = commands.add_parser(
        "eval",
        help="score a trained world: the full consistency run as a report, or a quick check (WHAT)",
        description="Without WHAT: the consistency run of a dynamics checkpoint (what a player sees: objects, "
        "shooting, texture, a Fréchet distance, places revisited; teacher-forced next frame, drift, "
        "controllability, action accuracy, loop closure, soak), written as a report folder (--out). "
        "Ctrl-C writes the parts finished so far, marked incomplete. With WHAT: a quick check printed to "
        "the terminal; `wm-video eval WHAT --help` lists its flags.",
    )
    _model_flags(p, "dynamics", required=False)
    _clip_flags(p, "frames generated per rollout (default: 3 s of game time at the data's fps)")
    group = p.add_argument_group("report")
    group.add_argument(
        "--out", type=Path, default=None, help="report folder: report.md, metrics.json, plots, mp4 (required)"
    )
    group.add_argument(
        "--baseline", type=Path, default=None, help="a second dynamics run scored on the same clips"
    )
    group.add_argument(
        "--soak",
        type=int,
        default=SOAK_FRAMES,
        help=f"frames of the long rollout under exploration (default {SOAK_FRAMES}; 10000 for the long "
        "soak; 0 skips it)",
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
        help="live action program: explore, random, hunt (ViZDoom: aims at the monsters in view), a JSONL "
        "script or a mix like mix:hunt=0.5,random=0.5 (default explore)",
    )
    group.add_argument(
        "--skip",
        default=None,
        help="comma-separated parts to leave out: actions, loops, soak, player (what a player sees)",
    )
    group.add_argument(
        "--idm-steps",
        type=positive_int,
        default=None,
        help="training steps of the inverse-dynamics model (default 1200)",
    )
    group.add_argument(
        "--idm-cache",
        type=Path,
        default=None,
        help="folder for the cached IDM and object model (default: beside the frame cache)",
    )
    _run_flags(p, json=False)
    p.set_defaults(handler=_eval_consistency, command_name="eval")

    quick = p.add_subparsers(dest="what", required=False, metavar="[WHAT]", title="quick checks (WHAT)")
    t = quick.add_parser(
        "tokenizer",
        help="PSNR, SSIM, codebook use and bits per frame of a tokenizer on held-out episodes",
        description="Reconstruct held-out episodes with a tokenizer and print PSNR, SSIM, codebook use "
        "and bits per frame.",
    )
    _model_flags(t, "tokenizer")
    group = t.add_argument_group("frames")
    group.add_argument(
        "--episodes", default=None, help="comma-separated episode indices (default: held-out ones)"
    )
    group.add_argument("--all-episodes", action="store_true", help="every episode of the dataset")
    group.add_argument(
        "--max-frames", type=positive_int, default=None, help="at most this many frames per episode"
    )
    group.add_argument(
        "--chunk-frames", type=positive_int, default=64, help="frames decoded per forward pass (default 64)"
    )
    _run_flags(t, json=True, worlds=False)
    t.set_defaults(handler=_eval_tokenizer, command_name="eval tokenizer")

    d = quick.add_parser(
        "dynamics",
        help="teacher-forced next-frame PSNR, ΔPSNR(t=4) and drift of a dynamics model, printed",
        description="The quick check of a dynamics model: the first parts of the consistency run "
        "(teacher-forced next frame, drift, controllability) on held-out clips with a short horizon, "
        "printed to the terminal. `wm-video eval --out REPORT` adds action accuracy, loop closure, the "
        "soak and plots.",
    )
    _model_flags(d, "dynamics")
    _clip_flags(d, "frames generated per rollout (default 16)")
    _run_flags(d, json=True)
    d.set_defaults(handler=_eval_dynamics, command_name="eval dynamics")

    s = quick.add_parser(
        "sprites",
        help="Atari: are the paddle and ball kept by the tokenizer, and does the player move under the keys "
        "as in the real game",
        description="Find the game's sprites (paddle, ball) with a pixel detector fitted to the training "
        "episodes, and count how often the tokenizer's reconstructions of held-out frames keep them. Given "
        "a dynamics checkpoint, also press each button from held-out states in the world and in the real "
        "engine (recorded by `wm-video collect`) and compare how far the player moves.",
    )
    _model_flags(s, "tokenizer or dynamics")
    _clip_flags(s, "frames the button is held in the motion check (default 8)")
    group = s.add_argument_group("sprites")
    group.add_argument(
        "--game",
        default=None,
        help="the Atari game whose sprites to look for (Breakout, Pong; default: the one the dataset "
        "was collected from)",
    )
    group.add_argument(
        "--strip",
        type=Path,
        default=None,
        help="write a PNG of the first motion branch per button: the real engine's frames above the world's "
        "(for a tokenizer, or without the motion check: 8 held-out frames with the ball above their reconstructions)",
    )
    group.add_argument("--all-episodes", action="store_true", help="every episode of the dataset")
    group.add_argument(
        "--max-frames", type=positive_int, default=None, help="at most this many frames per episode"
    )
    _run_flags(s, json=True)
    s.set_defaults(handler=_eval_sprites, command_name="eval sprites")
