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
from wm_video.bench.cli import register as register_bench
from wm_video.cli_args import Commands, add_cache_dir_flag, positive_float, positive_int
from wm_video.errors import run_program
from wm_video.eval.cli import register as register_eval
from wm_video.play.cli import register as register_play
from wm_video.train.cli import register as register_train

if TYPE_CHECKING:
    from wm_video.data.video import VideoSettings

Handler = Callable[[argparse.Namespace], int]

#: Command groups that live beside the code they drive; each adds its own subparser.
_REGISTERS: tuple[Callable[[Commands], None], ...] = (
    register_train,
    register_play,
    register_eval,
    register_bench,
)


def _video_settings(args: argparse.Namespace) -> VideoSettings:
    from wm_video.data.video import VideoSettings

    return VideoSettings(codec=args.codec, crf=args.crf, gop=args.gop)


def _add_video_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("video encoding")
    group.add_argument(
        "--codec",
        choices=["h264", "h264-yuv420", "lossless"],
        default="h264",
        help="h264: yuv444p, full colour (default); h264-yuv420: plays everywhere, blurs colour at small sizes; lossless: exact RGB",
    )
    group.add_argument(
        "--crf", type=int, default=14, help="H.264 quality, 0 (best) .. 51 (worst); default 14"
    )
    group.add_argument(
        "--gop",
        type=positive_int,
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
        "--size", type=positive_int, default=64, help="frames are size×size pixels (default 64)"
    )
    group.add_argument(
        "--frame-skip",
        type=positive_int,
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
    from wm_video.data.lerobot import declare_buttons
    from wm_video.data.validate import validate_dataset

    if args.buttons is not None:
        written = declare_buttons(args.dir, [b for b in args.buttons.split(",") if b])
        print(f"buttons declared in {written}")
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
        build_cache(args.dir, size=args.size, cache_root=args.cache_dir, force=True)
        if args.force
        else load_cache(args.dir, size=args.size, cache_root=args.cache_dir)
    )
    print(
        f"training cache: {cache.num_episodes} episodes, {cache.num_frames:,} frames at {cache.size}×{cache.size}"
    )
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
        type=positive_int,
        default=8,
        help="episodes the dataset should hold when done; rerunning resumes (default 8)",
    )
    group.add_argument(
        "--steps", type=positive_int, default=500, help="most frames per episode (default 500)"
    )
    group.add_argument("--workers", type=positive_int, default=2, help="engine processes (default 2)")
    group.add_argument(
        "--policy", default="explore", help="explore (default), random, or a JSONL action script to replay"
    )
    _add_video_flags(p)
    p.set_defaults(handler=_collect)

    p = commands.add_parser("record", help="play the real game in a window and record it as a dataset")
    p.add_argument("--out", type=Path, required=True, help="dataset folder (created, or appended to)")
    _add_source_flags(p)
    group = p.add_argument_group("window")
    group.add_argument("--scale", type=positive_int, default=8, help="integer zoom of the frames (default 8)")
    group.add_argument("--fps", type=positive_float, default=None, help="pace (default: the game's own fps)")
    group.add_argument(
        "--keymap", type=Path, default=None, help="JSON file {key name: button} overriding keys"
    )
    group.add_argument(
        "--max-episodes", type=positive_int, default=None, help="stop after this many episodes"
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
        "--size", type=positive_int, default=None, help="resize frames to size×size (vpt default 128)"
    )
    p.add_argument(
        "--buttons", default=None, help="mp4-jsonl: comma-separated button names (default: all seen)"
    )
    p.add_argument("--fps", type=positive_float, default=None, help="mp4-jsonl: override the videos' fps")
    _add_video_flags(p)
    p.set_defaults(handler=_import)

    p = commands.add_parser("inspect", help="validate a dataset and summarise it (exit 1 on any problem)")
    p.add_argument("dir", type=Path, help="dataset folder (LeRobot v3.0 or v2.1)")
    p.add_argument("--no-decode", action="store_true", help="check video headers only (fast)")
    p.add_argument(
        "--buttons",
        default=None,
        help="comma-separated names of the leading actions that are buttons (0/1), written to "
        "meta/wm_video.json; without that file they are inferred from the data",
    )
    p.add_argument(
        "--sheet", type=Path, default=None, help="also write a PNG grid of frames (episodes × time)"
    )
    p.set_defaults(handler=_inspect)

    p = commands.add_parser("cache", help="decode a dataset once into the training cache")
    p.add_argument("dir", type=Path, help="dataset folder")
    p.add_argument("--size", type=positive_int, default=64, help="training resolution (default 64)")
    p.add_argument("--force", action="store_true", help="rebuild even if the cache is current")
    add_cache_dir_flag(p)
    p.set_defaults(handler=_cache)

    for register in _REGISTERS:
        register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Handler = args.handler
    return run_program(f"wm-video {args.command}", lambda: handler(args))
