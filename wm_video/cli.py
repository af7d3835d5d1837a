"""The ``wm-video`` command: a thin face over the library, one subcommand per job.

Each subcommand parses its flags (grouped by topic, each with help) and calls one library
function; errors meant for users (:class:`WMVideoError`) print as one line naming the file and
exit with status 2, never as a traceback. Heavy modules are imported inside the handlers so
``wm-video --help`` stays instant.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from wm_video import __version__
from wm_video.errors import WMVideoError

if TYPE_CHECKING:
    from wm_video.data.video import VideoSettings

Handler = Callable[[argparse.Namespace], int]

#: `wm-video bench --preset` choices: the keys of wm_video.dynamics.DYNAMICS_PRESETS, written out so
#: `--help` does not import torch (tests/test_bench_world.py checks they agree).
WORLD_PRESETS = ("tiny", "base")


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be ≥ 1, got {value}")
    return value


def _video_settings(args: argparse.Namespace) -> VideoSettings:
    from wm_video.data.video import VideoSettings

    return VideoSettings(codec=args.codec, crf=args.crf, gop=args.gop)


def _add_video_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("video encoding")
    group.add_argument(
        "--codec",
        choices=["h264", "lossless"],
        default="h264",
        help="h264: yuv444p, full colour (default); h264-yuv420: plays everywhere, blurs colour at small sizes; lossless: exact RGB",
    )
    group.add_argument(
        "--crf", type=int, default=14, help="H.264 quality, 0 (best) .. 51 (worst); default 14"
    )
    group.add_argument(
        "--gop",
        type=_positive_int,
        default=16,
        help="keyframe interval in frames: the most frames decoded to reach any frame (default 16)",
    )


def _add_source_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("game source")
    group.add_argument(
        "--source", default="vizdoom", choices=["vizdoom", "atari"], help="game engine (default vizdoom)"
    )
    group.add_argument(
        "--scenario",
        default=None,
        help="ViZDoom scenario (my_way_home, basic, …) or map (freedoom1:E1M1); Atari game (Breakout)",
    )
    group.add_argument(
        "--size", type=_positive_int, default=64, help="frames are size×size pixels (default 64)"
    )
    group.add_argument(
        "--frame-skip",
        type=_positive_int,
        default=None,
        help="engine tics per recorded frame (ViZDoom default 2 → 17.5 fps; Atari 4 → 15 fps)",
    )
    group.add_argument("--seed", type=int, default=0, help="episode i uses seed + i (default 0)")


# -- handlers --------------------------------------------------------------------------------------
def _collect(args: argparse.Namespace) -> int:
    from wm_video.collect import collect

    result = collect(
        args.out,
        source=args.source,
        scenario=args.scenario,
        episodes=args.episodes,
        steps=args.steps,
        seed=args.seed,
        size=args.size,
        frame_skip=args.frame_skip,
        workers=args.workers,
        policy=args.policy,
        video=_video_settings(args),
    )
    print(
        f"{args.out}: {result.episodes_written} episodes, {result.frames_written:,} frames written "
        f"in {result.seconds:.1f} s ({result.frames_per_second:,.0f} frames/s)"
    )
    return 0


def _record(args: argparse.Namespace) -> int:
    from wm_video.play.record import record

    result = record(
        args.out,
        source=args.source,
        scenario=args.scenario,
        size=args.size,
        frame_skip=args.frame_skip,
        scale=args.scale,
        fps=args.fps,
        keymap_path=args.keymap,
        seed=args.seed,
        max_episodes=args.max_episodes,
        video=_video_settings(args),
    )
    print(f"{args.out}: {result.episodes} episodes, {result.frames:,} frames recorded")
    return 0


def _import(args: argparse.Namespace) -> int:
    from wm_video.data.importers import import_mp4_jsonl
    from wm_video.data.vpt import import_vpt

    if args.format == "mp4-jsonl":
        buttons = [b for b in args.buttons.split(",") if b] if args.buttons else None
        result = import_mp4_jsonl(
            args.src,
            args.out,
            size=args.size,
            buttons=buttons,
            fps=args.fps,
            video=_video_settings(args),
        )
    else:
        result = import_vpt(args.src, args.out, size=args.size or 128, video=_video_settings(args))
    print(f"{args.out}: imported {result.episodes} episodes, {result.frames:,} frames")
    return 0


def _inspect(args: argparse.Namespace) -> int:
    from wm_video.data.validate import validate_dataset

    report = validate_dataset(args.dir, decode=not args.no_decode, progress=sys.stderr.isatty())
    print(report.format())
    if args.sheet is not None and report.ok:
        from wm_video.data.reader import open_dataset
        from wm_video.data.sheet import contact_sheet

        print(f"contact sheet: {contact_sheet(open_dataset(args.dir), args.sheet)}")
    return 0 if report.ok else 1


def _cache(args: argparse.Namespace) -> int:
    from wm_video.data.cache import build_cache, load_cache

    cache = (
        build_cache(args.dir, size=args.size, force=True)
        if args.force
        else load_cache(args.dir, size=args.size)
    )
    print(
        f"training cache: {cache.num_episodes} episodes, {cache.num_frames:,} frames at {cache.size}×{cache.size}"
    )
    return 0


def _bench(args: argparse.Namespace) -> int:
    from wm_video.bench import bench_data

    result = bench_data(
        size=args.size,
        workers=args.workers,
        episodes=args.episodes,
        steps=args.steps,
        repeats=args.repeats,
        clip_len=args.clip_len,
        batch_size=args.batch_size,
        progress=sys.stderr.isatty(),
    )
    print(result.format())
    return 0


def _train(args: argparse.Namespace) -> int:
    from wm_video.train.dynamics import main as train_dynamics_main
    from wm_video.train.tokenizer import main as train_tokenizer_main

    programs = {"tokenizer": train_tokenizer_main, "dynamics": train_dynamics_main}
    return programs[args.program](args.program_args, prog=f"wm-video train {args.program}")


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


def _bench_tokenizer(args: argparse.Namespace) -> int:
    from wm_video.bench.tokenizer import bench_tokenizer

    result = bench_tokenizer(
        preset=None if args.checkpoint else args.preset,
        checkpoint=args.checkpoint,
        device=args.device,
        dtype=args.dtype,
        steps=args.steps,
        warmup=args.warmup,
        threads=args.threads,
        progress=sys.stderr.isatty(),
    )
    print(result.format())
    return 0


def _bench_world(args: argparse.Namespace) -> int:
    from wm_video.bench.world import bench_world
    from wm_video.fileio import atomic_write_json

    result = bench_world(
        preset=args.preset,
        checkpoint=args.checkpoint,
        tokenizer=args.tokenizer,
        device=args.device,
        dtype=args.dtype,
        steps=args.steps,
        warmup=args.warmup,
        threads=args.threads,
        compile=args.compile,
        progress=sys.stderr.isatty(),
    )
    print(result.format())
    if args.json is not None:
        atomic_write_json(args.json, result.to_dict())
        print(f"report: {args.json}")
    return 0


# -- parser ----------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="wm-video", description=__doc__.splitlines()[0] if __doc__ else None
    )
    parser.add_argument("--version", action="version", version=f"wm-video {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = commands.add_parser(
        "collect", help="record footage from a real game engine under an exploration policy"
    )
    p.add_argument("--out", type=Path, required=True, help="dataset folder (created, or appended to)")
    _add_source_flags(p)
    group = p.add_argument_group("collection")
    group.add_argument(
        "--episodes",
        type=_positive_int,
        default=8,
        help="episodes the dataset should hold when done; rerunning resumes (default 8)",
    )
    group.add_argument(
        "--steps", type=_positive_int, default=500, help="most frames per episode (default 500)"
    )
    group.add_argument("--workers", type=_positive_int, default=2, help="engine processes (default 2)")
    group.add_argument(
        "--policy", default="explore", help="explore (default), random, or a JSONL action script to replay"
    )
    _add_video_flags(p)
    p.set_defaults(handler=_collect)

    p = commands.add_parser("record", help="play the real game in a window and record it as a dataset")
    p.add_argument("--out", type=Path, required=True, help="dataset folder (created, or appended to)")
    _add_source_flags(p)
    group = p.add_argument_group("window")
    group.add_argument(
        "--scale", type=_positive_int, default=8, help="integer zoom of the frames (default 8)"
    )
    group.add_argument("--fps", type=float, default=None, help="pace (default: the game's own fps)")
    group.add_argument(
        "--keymap", type=Path, default=None, help="JSON file {key name: button} overriding keys"
    )
    group.add_argument(
        "--max-episodes", type=_positive_int, default=None, help="stop after this many episodes"
    )
    _add_video_flags(p)
    p.set_defaults(handler=_record)

    p = commands.add_parser("import", help="turn recordings (mp4 + per-frame action logs) into a dataset")
    p.add_argument(
        "format", choices=["mp4-jsonl", "vpt"], help="mp4-jsonl: name.mp4 + name.jsonl; vpt: OpenAI VPT"
    )
    p.add_argument("src", type=Path, help="folder of recordings")
    p.add_argument("--out", type=Path, required=True, help="dataset folder to create")
    p.add_argument(
        "--size", type=_positive_int, default=None, help="resize frames to size×size (vpt default 128)"
    )
    p.add_argument(
        "--buttons", default=None, help="mp4-jsonl: comma-separated button names (default: all seen)"
    )
    p.add_argument("--fps", type=float, default=None, help="mp4-jsonl: override the videos' fps")
    _add_video_flags(p)
    p.set_defaults(handler=_import)

    p = commands.add_parser("inspect", help="validate a dataset and summarise it (exit 1 on any problem)")
    p.add_argument("dir", type=Path, help="dataset folder (LeRobot v3.0 or v2.1)")
    p.add_argument("--no-decode", action="store_true", help="check video headers only (fast)")
    p.add_argument(
        "--sheet", type=Path, default=None, help="also write a PNG grid of frames (episodes × time)"
    )
    p.set_defaults(handler=_inspect)

    p = commands.add_parser("cache", help="decode a dataset once into the training cache")
    p.add_argument("dir", type=Path, help="dataset folder")
    p.add_argument("--size", type=_positive_int, default=64, help="training resolution (default 64)")
    p.add_argument("--force", action="store_true", help="rebuild even if the cache is current")
    p.set_defaults(handler=_cache)

    p = commands.add_parser(
        "train",
        help="train a model (tokenizer, dynamics); `wm-video train dynamics --help` lists its flags",
        description="Train a model. Every program also runs under `accelerate launch` / `torchrun` "
        "as `python -m wm_video.train.<program>`.",
    )
    p.add_argument("program", choices=["tokenizer", "dynamics"], help="what to train")
    p.add_argument("program_args", nargs=argparse.REMAINDER, help="the program's own flags")
    p.set_defaults(handler=_train)

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
        "--max-frames", type=_positive_int, default=None, help="at most this many frames per episode"
    )
    group = p.add_argument_group("run")
    group.add_argument("--device", choices=["cpu", "cuda"], default=None, help="default: cuda when present")
    group.add_argument(
        "--chunk-frames", type=_positive_int, default=64, help="frames decoded per forward pass (default 64)"
    )
    group.add_argument("--raw-weights", action="store_true", help="the trained weights instead of their EMA")
    group.add_argument("--json", type=Path, default=None, help="also write the report as JSON")
    group = p.add_argument_group("dynamics")
    group.add_argument(
        "--tokenizer", type=Path, default=None, help="tokenizer (default: the one it was trained with)"
    )
    group.add_argument("--clips", type=_positive_int, default=16, help="held-out clips scored (default 16)")
    group.add_argument(
        "--context", type=_positive_int, default=4, help="real frames before a rollout (default 4)"
    )
    group.add_argument(
        "--horizon", type=_positive_int, default=16, help="frames generated per rollout (default 16)"
    )
    group.add_argument("--seed", type=int, default=0, help="which clips, and the sampling noise (default 0)")
    p.set_defaults(handler=_eval)

    bench = commands.add_parser(
        "bench",
        help="measure speed and print medians: the playable world, or WHAT (data, tokenizer)",
        description="Without WHAT: ms per generated frame of a playable world at batch 1 (dynamics "
        "trunk and head passes, decode, whole step), frames/s beside the limit the device's measured "
        "matmul peak sets. With WHAT: another benchmark; `wm-video bench WHAT --help` lists its flags.",
    )
    group = bench.add_argument_group("model")
    which = group.add_mutually_exclusive_group()
    which.add_argument(
        "--preset", choices=WORLD_PRESETS, default="tiny", help="a preset with random weights (default tiny)"
    )
    which.add_argument(
        "--checkpoint", type=Path, default=None, help="a trained dynamics run or checkpoint instead"
    )
    group.add_argument(
        "--tokenizer",
        type=Path,
        default=None,
        help="tokenizer run (default: the checkpoint's or the preset's)",
    )
    group = bench.add_argument_group("run")
    group.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="default cpu")
    group.add_argument(
        "--dtype", choices=["float32", "bfloat16", "float16"], default="float32", help="default float32"
    )
    group.add_argument("--steps", type=_positive_int, default=300, help="timed steps per loop (default 300)")
    group.add_argument(
        "--warmup", type=int, default=30, help="untimed steps first, at least the context window (default 30)"
    )
    group.add_argument("--threads", type=_positive_int, default=None, help="torch CPU threads (default: all)")
    group.add_argument("--compile", action="store_true", help="torch.compile the dynamics step, as play can")
    group.add_argument("--json", type=Path, default=None, help="also write the figures as JSON")
    bench.set_defaults(handler=_bench_world)
    benches = bench.add_subparsers(
        dest="what", required=False, metavar="[WHAT]", title="other benchmarks (WHAT)"
    )
    p = benches.add_parser("data", help="collection, cache build and sampler frames/s")
    p.add_argument("--size", type=_positive_int, default=64, help="frame size (default 64)")
    p.add_argument("--workers", type=_positive_int, default=2, help="collection workers (default 2)")
    p.add_argument(
        "--episodes", type=_positive_int, default=8, help="episodes per collection repeat (default 8)"
    )
    p.add_argument("--steps", type=_positive_int, default=500, help="steps per episode (default 500)")
    p.add_argument(
        "--repeats", type=_positive_int, default=3, help="repeats; medians are reported (default 3)"
    )
    p.add_argument("--clip-len", type=_positive_int, default=16, help="frames per sampled clip (default 16)")
    p.add_argument(
        "--batch-size", type=_positive_int, default=32, help="clips per sampled batch (default 32)"
    )
    p.set_defaults(handler=_bench)
    p = benches.add_parser("tokenizer", help="streaming encode and decode, ms per frame at batch 1")
    group = p.add_argument_group("model")
    group.add_argument("--preset", default="tiny", help="a preset with random weights (default tiny)")
    group.add_argument("--checkpoint", type=Path, default=None, help="a trained run or checkpoint instead")
    group = p.add_argument_group("run")
    group.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="default cpu")
    group.add_argument(
        "--dtype", choices=["float32", "bfloat16", "float16"], default="float32", help="default float32"
    )
    group.add_argument(
        "--steps", type=_positive_int, default=300, help="timed frames per operation (default 300)"
    )
    group.add_argument("--warmup", type=int, default=30, help="untimed frames first (default 30)")
    group.add_argument("--threads", type=_positive_int, default=None, help="torch CPU threads (default: all)")
    p.set_defaults(handler=_bench_tokenizer)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Handler = args.handler
    try:
        return handler(args)
    except WMVideoError as exc:
        print(f"wm-video {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"wm-video {args.command}: interrupted", file=sys.stderr)
        return 130
