"""``wm-video bench``: speed of the playable world, the tokenizer and the data path, as medians."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from wm_video.cli_args import (
    Commands,
    add_compile_flag,
    add_device_flag,
    add_dtype_flag,
    add_progress_flag,
    add_threads_flag,
    device_and_threads,
    positive_int,
)

if TYPE_CHECKING:
    from wm_video.bench.envs import EnvBenchResult
    from wm_video.bench.gpu import GpuBenchResult
    from wm_video.bench.world import WorldBenchResult

#: `wm-video bench --preset` choices: the keys of wm_video.dynamics.DYNAMICS_PRESETS, written out so
#: `--help` does not import torch (tests/test_bench_world.py checks they agree).
WORLD_PRESETS = ("tiny", "base")
#: `wm-video bench gpu --modes` choices: the keys of wm_video.bench.gpu.MODES (checked by tests/test_bench_gpu.py).
GPU_BENCH_MODES = ("eager", "compiled", "graphs")


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
        progress=not args.no_progress,
    )
    print(result.format())
    return 0


def _bench_tokenizer(args: argparse.Namespace) -> int:
    from wm_video.bench.tokenizer import bench_tokenizer

    device = device_and_threads(args)  # the threads are chosen during the warm-up
    result = bench_tokenizer(
        preset=None if args.checkpoint else args.preset,
        checkpoint=args.checkpoint,
        device=device,
        dtype=args.dtype,
        steps=args.steps,
        warmup=args.warmup,
        progress=not args.no_progress,
    )
    print(result.format())
    return 0


def _report(result: WorldBenchResult | GpuBenchResult | EnvBenchResult, json_path: Path | None) -> int:
    """Print the table; with ``--json``, also write the figures there."""
    from wm_video.fileio import atomic_write_json

    print(result.format())
    if json_path is not None:
        atomic_write_json(json_path, result.to_dict())
        print(f"report: {json_path}")
    return 0


def _bench_world(args: argparse.Namespace) -> int:
    from wm_video.bench.world import bench_world

    device = device_and_threads(args)  # the threads are chosen during the warm-up
    result = bench_world(
        preset=args.preset,
        checkpoint=args.checkpoint,
        tokenizer=args.tokenizer,
        device=device,
        dtype=args.dtype,
        steps=args.steps,
        warmup=args.warmup,
        compile=args.compile,
        progress=not args.no_progress,
    )
    return _report(result, args.json)


def _bench_gpu(args: argparse.Namespace) -> int:
    from wm_video.bench.gpu import bench_gpu

    device = device_and_threads(args)
    result = bench_gpu(
        presets=args.presets,
        batches=args.batches,
        modes=args.modes,
        device=device,
        dtype=args.dtype,
        steps=args.steps,
        warmup=args.warmup,
        train_steps=args.train_steps,
        train_batch=args.train_batch,
        threads=args.threads,
        progress=not args.no_progress,
    )
    return _report(result, args.json)


def _bench_env(args: argparse.Namespace) -> int:
    from wm_video.bench.envs import bench_envs

    device = device_and_threads(args)
    result = bench_envs(
        checkpoint=args.checkpoint,
        counts=args.envs,
        steps=args.steps,
        repeats=args.repeats,
        warmup=args.warmup,
        device=device,
        reward=args.reward,
        progress=not args.no_progress,
    )
    return _report(result, args.json)


def register(commands: Commands) -> None:
    """Add ``wm-video bench``."""
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
    add_device_flag(group)
    add_dtype_flag(group)
    group.add_argument("--steps", type=positive_int, default=300, help="timed steps per loop (default 300)")
    group.add_argument(
        "--warmup", type=int, default=30, help="untimed steps first, at least the context window (default 30)"
    )
    add_threads_flag(group)
    add_compile_flag(group)
    group.add_argument("--json", type=Path, default=None, help="also write the figures as JSON")
    add_progress_flag(group)
    bench.set_defaults(handler=_bench_world, command_name="bench")
    benches = bench.add_subparsers(
        dest="what", required=False, metavar="[WHAT]", title="other benchmarks (WHAT)"
    )
    p = benches.add_parser("data", help="collection, cache build and sampler frames/s")
    p.add_argument("--size", type=positive_int, default=64, help="frame size (default 64)")
    p.add_argument("--workers", type=positive_int, default=2, help="collection workers (default 2)")
    p.add_argument(
        "--episodes", type=positive_int, default=8, help="episodes per collection repeat (default 8)"
    )
    p.add_argument("--steps", type=positive_int, default=500, help="steps per episode (default 500)")
    p.add_argument(
        "--repeats", type=positive_int, default=3, help="repeats; medians are reported (default 3)"
    )
    p.add_argument("--clip-len", type=positive_int, default=16, help="frames per sampled clip (default 16)")
    p.add_argument("--batch-size", type=positive_int, default=32, help="clips per sampled batch (default 32)")
    add_progress_flag(p)
    p.set_defaults(handler=_bench, command_name="bench data")
    p = benches.add_parser("tokenizer", help="streaming encode and decode, ms per frame at batch 1")
    group = p.add_argument_group("model")
    group.add_argument("--preset", default="tiny", help="a preset with random weights (default tiny)")
    group.add_argument("--checkpoint", type=Path, default=None, help="a trained run or checkpoint instead")
    group = p.add_argument_group("run")
    add_device_flag(group)
    add_dtype_flag(group)
    group.add_argument(
        "--steps", type=positive_int, default=300, help="timed frames per operation (default 300)"
    )
    group.add_argument("--warmup", type=int, default=30, help="untimed frames first (default 30)")
    add_threads_flag(group)
    add_progress_flag(group)
    p.set_defaults(handler=_bench_tokenizer, command_name="bench tokenizer")
    p = benches.add_parser(
        "env",
        help="frames/s of a gymnasium WorldVectorEnv at 1, 8 and 32 worlds",
        description="Frames/s of wm_video.envs.WorldVectorEnv (one batched world, random actions) at each "
        "--envs count: median ms per env.step over --repeats rounds that time every count in turn, and "
        "the load average before and after.",
    )
    group = p.add_argument_group("world")
    group.add_argument(
        "--checkpoint", type=Path, default=None, help="the world (default: the shipped default world)"
    )
    group.add_argument(
        "--reward",
        type=Path,
        default=None,
        help="a reward model folder to step with (default: the checkpoint's, if any)",
    )
    group = p.add_argument_group("run")
    group.add_argument(
        "--envs", nargs="+", type=positive_int, default=[1, 8, 32], help="numbers of worlds (default: 1 8 32)"
    )
    group.add_argument(
        "--steps", type=positive_int, default=20, help="timed steps per count and round (default 20)"
    )
    group.add_argument("--repeats", type=positive_int, default=3, help="rounds over the counts (default 3)")
    group.add_argument("--warmup", type=int, default=10, help="untimed steps first, per count (default 10)")
    add_device_flag(group)
    add_threads_flag(group)
    group.add_argument("--json", type=Path, default=None, help="also write the figures as JSON")
    add_progress_flag(group)
    p.set_defaults(handler=_bench_env, command_name="bench env")
    p = benches.add_parser(
        "gpu",
        help="the GPU check: world step eager/compiled/CUDA graphs, training tokens/s and MFU",
        description="World step of each preset at each batch, eager, compiled and captured as CUDA "
        "graphs (frames/s of all worlds together), then --train-steps training steps of each preset's "
        "tokenizer and dynamics model on a small generated dataset (tokens/s, frames/s, MFU), with peak "
        "memory and issue 17's targets. The defaults are the GPU check (minutes on one H100/H200); on a "
        "CPU pass small shapes, e.g. --presets tiny --batches 1 --modes eager --steps 5 --train-steps 4 "
        "--train-batch 1 --dtype fp32. A mode the device cannot run is a row saying why.",
    )
    group = p.add_argument_group("what")
    group.add_argument(
        "--presets",
        nargs="+",
        choices=WORLD_PRESETS,
        default=list(WORLD_PRESETS),
        help="model presets, random weights (default: tiny base)",
    )
    group.add_argument(
        "--batches",
        nargs="+",
        type=positive_int,
        default=[1, 256],
        help="worlds stepped together (default: 1 256)",
    )
    group.add_argument(
        "--modes",
        nargs="+",
        choices=GPU_BENCH_MODES,
        default=list(GPU_BENCH_MODES),
        help="how the world step runs: eager, compiled (torch.compile), graphs (compiled and captured as "
        "CUDA graphs; CUDA only) (default: all three; with compiled, training compiles its step too)",
    )
    group = p.add_argument_group("run")
    add_device_flag(group)
    add_dtype_flag(group, default="bf16")
    group.add_argument(
        "--steps", type=positive_int, default=100, help="timed world steps per row (default 100)"
    )
    group.add_argument(
        "--warmup",
        type=int,
        default=20,
        help="untimed world steps first, at least the context window; compiling happens here (default 20)",
    )
    group.add_argument(
        "--train-steps",
        type=int,
        default=200,
        help="training steps per model; 0 skips training (default 200)",
    )
    group.add_argument(
        "--train-batch", type=positive_int, default=8, help="clips per training step (default 8)"
    )
    add_threads_flag(group)
    group.add_argument("--json", type=Path, default=None, help="also write the figures as JSON")
    add_progress_flag(group)
    p.set_defaults(handler=_bench_gpu, command_name="bench gpu")
