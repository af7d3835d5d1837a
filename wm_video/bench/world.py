"""World benchmark: milliseconds per generated frame of a playable :class:`~wm_video.engine.World`.

This is what a player waits for each frame, at batch 1. The world is reset from a few random
frames, then stepped with random valid actions (buttons multi-hot, each held with probability
1/4; deltas normal, times their scale). Untimed warm-up steps come first (at least
``context_frames + sink_frames``, so the trunk's KV ring is full and the sink has left the
window, as in play). Three timed loops of ``steps`` steps follow, each step read with
:func:`time.perf_counter` and :func:`torch.cuda.synchronize` on CUDA around every timed part:

1. ``advance`` (the dynamics: one trunk pass, P head passes) and ``render`` (the tokenizer's
   decoder step, to uint8 pixels on the device), timed separately within each step;
2. the dynamics split as :meth:`World._advance_eager` runs it: the trunk pass
   (:meth:`World.trunk_step`: with guidance, both streams) and the P head passes together (``world.sampler``).
   With ``compile=True`` these are the eager pieces; loops 1 and 3 run the compiled step;
3. ``step``: :meth:`World.step` as play calls it, advance + render + the copy to the host.

Medians, 10th and 90th percentiles are reported. Frames/s = 1000 / (median advance + median
render); the median of the whole ``step`` is a second figure. The FLOPs of a frame are an
estimate (:func:`trunk_flops`, :func:`head_pass_flops` and the tokenizer's
:func:`~wm_video.bench.tokenizer.frame_flops` for the decoder); dividing a measured peak
matmul throughput (:func:`matmul_peak_flops`, a large square matmul in the bench dtype) by them
gives a physical limit on frames/s for this device, printed beside the measured figure.

Weights are random for a preset (speed does not depend on them) or loaded from a checkpoint.
Run ``wm-video bench --help``.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from tqdm import tqdm

from wm_video.actions import ActionSpace
from wm_video.bench.tokenizer import (
    FrameTiming,
    check_device,
    check_timing_options,
    count_parameters,
    device_name,
    frame_flops,
    process_max_rss_bytes,
    time_steps,
)
from wm_video.dynamics import DYNAMICS_PRESETS, DynamicsConfig, DynamicsModel, dynamics_config
from wm_video.engine import TrunkStep, World
from wm_video.errors import InputError
from wm_video.threads import settle
from wm_video.tokenizer import VideoTokenizer, tokenizer_preset

#: Side of the square matmul timed for the peak throughput, per device type.
PEAK_MATMUL_SIZE: dict[str, int] = {"cpu": 2048, "cuda": 8192}
CONTEXT_FRAMES = 4  # random frames the world is reset from
TIMINGS = ("advance", "trunk", "head", "render", "step")


@dataclass(frozen=True)
class WorldBenchResult:
    """Setup, model figures and the per-frame timings of one world benchmark run."""

    model: str  # "preset tiny (random weights)" or "checkpoint <path>"
    device: str  # as requested, e.g. "cpu", "cuda"
    device_name: str  # CPU model or GPU name
    torch_version: str
    dtype: str
    threads: int  # torch intra-op threads during the run
    compiled: bool  # World(compile=True): advance, render and the whole step went through torch.compile
    params_trunk: int  # dynamics parameters used once per frame: action MLP, token embedding, trunk
    params_head: int  # dynamics parameters used once per pass: head embedding, condition, blocks, logits
    params_decoder: int  # tokenizer decoder side: from_latent, code embedding, positions, decoder stack, to_pixels
    image_size: int
    tokens_per_frame: int
    passes: int  # head passes per generated frame
    guidance: float  # action guidance (1: off); on, the trunk and the head each run on two streams
    context_frames: int  # frames in the trunk's rolling window
    sink_frames: int
    trunk_gflop_per_frame: float  # estimates, see trunk_flops(), head_pass_flops(), frame_flops()
    head_gflop_per_frame: float  # all passes together
    decode_gflop_per_frame: float
    matmul_size: int  # side of the square matmul behind peak_tflops
    peak_tflops: float  # measured matmul throughput on this device in this dtype, TFLOP/s
    peak_memory_bytes: int
    peak_memory_kind: str  # what peak_memory_bytes measures
    warmup: int  # untimed steps before the timed loops
    advance: FrameTiming  # World.advance: the dynamics
    trunk: FrameTiming  # its trunk pass
    head: FrameTiming  # its P head passes together
    render: FrameTiming  # World.render: the tokenizer's decoder step
    step: FrameTiming  # World.step: advance + render + copy to the host

    @property
    def frames_per_second(self) -> float:
        """1000 / (median advance ms + median render ms)."""
        return 1000.0 / (self.advance.median_ms + self.render.median_ms)

    @property
    def gflop_per_frame(self) -> float:
        return self.trunk_gflop_per_frame + self.head_gflop_per_frame + self.decode_gflop_per_frame

    @property
    def limit_frames_per_second(self) -> float:
        """Frames/s if every FLOP of a frame ran at the measured matmul peak."""
        return self.peak_tflops * 1e3 / self.gflop_per_frame

    @property
    def share_of_limit(self) -> float:
        """Measured frames/s ÷ the limit (1.0: the device's matmul peak is reached)."""
        return self.frames_per_second / self.limit_frames_per_second

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for name in TIMINGS:
            data[name]["frames_per_second"] = getattr(self, name).frames_per_second
        for name in ("frames_per_second", "gflop_per_frame", "limit_frames_per_second", "share_of_limit"):
            data[name] = getattr(self, name)
        return data

    def format(self) -> str:
        """A printable table: one row per timed part, the frames/s and their limit, then the setup."""
        eager = " (eager)" if self.compiled else ""
        rows = (
            ("advance", "advance (dynamics)"),
            ("trunk", f"  trunk pass{eager}"),
            ("head", f"  {self.passes} head passes{eager}"),
            ("render", "render (decode)"),
            ("step", "step (+ to host)"),
        )
        lines = [
            f"world bench: batch 1, {self.step.steps} timed steps after {self.warmup} warm-up (KV ring full)",
            f"{'per frame':<22}{'median ms':>11}{'p10 ms':>9}{'p90 ms':>9}{'frames/s':>10}",
        ]
        for name, label in rows:
            timing: FrameTiming = getattr(self, name)
            lines.append(
                f"{label:<22}{timing.median_ms:>11.3f}{timing.p10_ms:>9.3f}{timing.p90_ms:>9.3f}"
                f"{timing.frames_per_second:>10.1f}"
            )
        lines += [
            f"frames/s     {self.frames_per_second:.1f} (1000 / (advance + render medians)); "
            f"whole step median {self.step.frames_per_second:.1f}",
            f"limit        {self.limit_frames_per_second:,.0f} FPS at {self.peak_tflops:.3g} TFLOP/s "
            f"(measured matmul peak, {self.matmul_size}² {self.dtype}); measured FPS is "
            f"{self.share_of_limit:.1%} of it",
            f"GFLOP/frame  {self.gflop_per_frame:.3f}: trunk {self.trunk_gflop_per_frame:.3f}, "
            f"head {self.head_gflop_per_frame:.3f} ({self.passes} passes), "
            f"decode {self.decode_gflop_per_frame:.3f} (estimate)",
            f"model        {self.model}{', compiled' if self.compiled else ''}",
            f"device       {self.device}: {self.device_name}",
            f"dtype        {self.dtype} (torch {self.torch_version})",
            f"threads      {self.threads}",
            f"params       trunk {self.params_trunk / 1e6:.2f} M, head {self.params_head / 1e6:.2f} M, "
            f"tokenizer decoder {self.params_decoder / 1e6:.2f} M",
            f"tokens/frame {self.tokens_per_frame} ({self.image_size} px), {self.passes} passes, "
            f"context {self.context_frames} frames + {self.sink_frames} sink"
            + (f", guidance {self.guidance:g} (trunk and head on 2 streams)" if self.guidance != 1 else ""),
            f"peak memory  {self.peak_memory_bytes / 2**20:,.1f} MiB ({self.peak_memory_kind})",
        ]
        return "\n".join(lines)


# -- model figures ---------------------------------------------------------------------------------
def _linear_weights(modules: Sequence[nn.Module]) -> int:
    """Weights (not biases) of every ``nn.Linear`` inside ``modules``."""
    return sum(m.weight.numel() for module in modules for m in module.modules() if isinstance(m, nn.Linear))


def trunk_flops(model: DynamicsModel) -> int:
    """Estimated FLOPs of one trunk pass over a frame (the action embedded once, N tokens through the trunk).

    ``2 × A + 2 × W × N + 4 × N × (S + W_f) × N × dim × layers`` where A = the action MLP's
    weights, W = the weights of every ``nn.Linear`` of the trunk, N = tokens_per_frame,
    S + W_f = sink plus window frames: a step attends over every cache slot (empty ones are
    masked, not skipped), for the scores and again for the weighted sum of values. Norms,
    softmax, GELU and embedding lookups are left out.
    """
    c = model.config
    tokens, slots = c.tokens_per_frame, c.sink_frames + c.context_frames
    attention = 4 * tokens * slots * tokens * c.dim * c.trunk_layers
    return 2 * _linear_weights([model.action_embed]) + 2 * _linear_weights([model.trunk]) * tokens + attention


def head_pass_flops(model: DynamicsModel) -> int:
    """Estimated FLOPs of one head pass: ``2 × W × N + 4 × N × N × dim × head_layers``.

    W = the weights of ``head_condition``, the head blocks, the output layer ``to_logits`` and
    the chained digits' layers where the model has them (all run on every pass); each token
    attends to the N tokens of the frame being decided.
    """
    c = model.config
    weights = _linear_weights([model.head_condition, model.head_blocks, model.to_logits, *_chain(model)])
    return 2 * weights * c.tokens_per_frame + 4 * c.tokens_per_frame**2 * c.dim * c.head_layers


def _chain(model: DynamicsModel) -> list[nn.Module]:
    """The chained digits' layers (``chain_in`` once a pass; ``chain_out``'s slices add up to one
    run of it over the C − 1 channels), where the model has them."""
    return [model.chain_in, model.chain_out] if model.config.chain_digits else []


def _trunk_side(model: DynamicsModel) -> list[nn.Module | nn.Parameter]:
    return [model.action_embed, model.token_embed, model.trunk_pos, model.trunk]


def _head_side(model: DynamicsModel) -> list[nn.Module | nn.Parameter]:
    return [
        model.head_embed,
        model.head_pos,
        model.head_condition,
        model.head_blocks,
        model.head_norm,
        model.to_logits,
        *([model.digit_embed] if model.config.chain_digits else []),
        *_chain(model),
    ]


def _count(parts: Sequence[nn.Module | nn.Parameter]) -> int:
    return sum(p.numel() if isinstance(p, nn.Parameter) else count_parameters(p) for p in parts)


def matmul_peak_flops(where: torch.device, dtype: torch.dtype, size: int, repeats: int = 5) -> float:
    """FLOP/s of a ``size``² @ ``size``² matmul on ``where`` in ``dtype``: the median of ``repeats`` after 2 untimed."""
    generator = torch.Generator().manual_seed(0)
    left = torch.randn(size, size, generator=generator).to(where, dtype)
    right = torch.randn(size, size, generator=generator).to(where, dtype)
    cuda = where.type == "cuda"
    with torch.inference_mode():
        for _ in range(2):  # untimed, at the thread count in use
            torch.mm(left, right)
        timing = time_steps(lambda: torch.mm(left, right), 0, repeats, cuda, "matmul", False)
    return 2 * size**3 / (timing.median_ms / 1000.0)


# -- setup -----------------------------------------------------------------------------------------
def _default_action_space() -> ActionSpace:
    from wm_video.sources.vizdoom import ACTION_SPACE  # the default world's 8 buttons; no engine import

    return ACTION_SPACE


def _load_models(
    preset: str, checkpoint: Path | None, tokenizer: Path | None, where: torch.device
) -> tuple[VideoTokenizer, DynamicsModel, str]:
    """EMA weights from a checkpoint, or the preset with random weights (on the given tokenizer, if any)."""
    from wm_video.checkpoint import load_tokenizer
    from wm_video.engine import load_world

    if checkpoint is None and preset not in DYNAMICS_PRESETS:
        raise InputError(f"unknown dynamics preset {preset!r}; choose one of {sorted(DYNAMICS_PRESETS)}")
    if checkpoint is not None:
        loaded = load_world(checkpoint, tokenizer=tokenizer, device=where)
        label = f"checkpoint {checkpoint}" + (f" with tokenizer {tokenizer}" if tokenizer is not None else "")
        return loaded.tokenizer, loaded.dynamics, label
    if tokenizer is not None:
        tokenizer_model, _ = load_tokenizer(tokenizer, device=where)
        label = f"preset {preset} (random weights) on tokenizer {tokenizer}"
    else:
        tokenizer_model = VideoTokenizer(tokenizer_preset(preset))
        label = f"preset {preset} (random weights)"
    dynamics = DynamicsModel(dynamics_config(preset, tokenizer_model.config, _default_action_space()))
    return tokenizer_model, dynamics, label


def random_actions(config: DynamicsConfig, count: int, generator: torch.Generator) -> Tensor:
    """(count, A) float32 valid actions: each button held with probability 1/4, deltas normal × scale."""
    buttons = (torch.rand(count, config.action_buttons, generator=generator) < 0.25).float()
    scales = torch.tensor(config.scales[config.action_buttons :], dtype=torch.float32)
    deltas = torch.randn(count, len(scales), generator=generator) * scales
    return torch.cat((buttons, deltas), dim=1)


def start_world(
    tokenizer: VideoTokenizer, dynamics: DynamicsModel, *, batch_size: int, compile: bool | str
) -> tuple[World, Callable[[], Tensor]]:
    """A :class:`World` of ``batch_size`` worlds reset from ``CONTEXT_FRAMES`` random frames each, and
    a function returning the next (B, A) random valid actions on the device (64 steps' worth, cycled)."""
    world = World(tokenizer, dynamics, batch_size=batch_size, compile=compile)
    config = dynamics.config
    generator = torch.Generator().manual_seed(0)
    size = world.image_size
    frames = torch.randint(
        0, 256, (batch_size, CONTEXT_FRAMES, size, size, 3), dtype=torch.uint8, generator=generator
    )
    taken = random_actions(config, batch_size * (CONTEXT_FRAMES - 1), generator)
    world.reset(frames.numpy(), taken.view(batch_size, CONTEXT_FRAMES - 1, -1).numpy(), seed=0)
    actions = random_actions(config, 64 * batch_size, generator).view(64, batch_size, -1).to(world.device)
    return world, itertools.cycle(actions).__next__


def warmup_steps(world: World, warmup: int) -> int:
    """Untimed steps before timing: ``warmup``, and at least enough to fill the trunk's KV ring
    (context + sink frames) and the decoder's temporal window, as in play."""
    config = world.dynamics.config
    return max(warmup, config.context_frames + config.sink_frames, world.tokenizer.config.temporal_window - 1)


# -- timing ----------------------------------------------------------------------------------------
def time_parts(
    parts: Sequence[Callable[[], object]], steps: int, cuda: bool, label: str, progress: bool
) -> list[FrameTiming]:
    """Call the ``parts`` in order ``steps`` times, timing each part of each step on its own."""
    seconds: list[list[float]] = [[] for _ in parts]
    for _ in tqdm(range(steps), desc=label, disable=not progress, leave=False):
        if cuda:
            torch.cuda.synchronize()
        previous = time.perf_counter()
        for part, spent in zip(parts, seconds, strict=True):
            part()
            if cuda:
                torch.cuda.synchronize()
            now = time.perf_counter()
            spent.append(now - previous)
            previous = now
    return [FrameTiming.from_seconds(spent) for spent in seconds]


class _StepParts:
    """A world step cut into calls without arguments for the timers; they pass values on through ``self``.

    ``advance`` then ``render`` is :meth:`World.step` without the copy to the host; ``trunk``
    then ``head`` is :meth:`World._advance_eager`'s dynamics, cut after the trunk pass.
    """

    def __init__(self, world: World, next_action: Callable[[], Tensor]) -> None:
        self.world, self.next_action = world, next_action
        self.tokens = torch.empty(0)
        self.step: TrunkStep | None = None

    def advance(self) -> None:
        self.tokens = self.world.advance(self.next_action())

    def render(self) -> None:
        self.world.render(self.tokens)

    def trunk(self) -> None:
        self.step = self.world.trunk_step(self.next_action())

    def head(self) -> None:
        world, step = self.world, self.step
        assert step is not None, "trunk() runs before head()"
        stream = step.stream
        world.current.copy_(world.sampler(stream.state, stream.action_embedding, world.seed, world.counter, step.reference))
        world.counter += 1


def bench_world(
    *,
    preset: str = "tiny",
    checkpoint: Path | None = None,
    tokenizer: Path | None = None,
    device: str = "cpu",
    dtype: str = "float32",
    steps: int = 300,
    warmup: int = 30,
    threads: int | None = None,
    compile: bool = False,
    progress: bool = False,
) -> WorldBenchResult:
    """Time a playable world frame by frame at batch 1 (see the module docstring).

    ``checkpoint`` (a dynamics run or step folder, EMA weights) replaces ``preset``;
    ``tokenizer`` replaces the tokenizer the checkpoint records, or the preset's random one.
    ``threads`` sets :func:`torch.set_num_threads` for the run only; without it, a thread tuner
    configured by the program (:mod:`wm_video.threads`) chooses the count during the warm-up.
    """
    check_timing_options(steps, warmup, threads)
    where, torch_dtype = check_device(device, dtype)
    cuda = where.type == "cuda"

    threads_before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        tokenizer_model, dynamics, label = _load_models(preset, checkpoint, tokenizer, where)
        tokenizer_model = tokenizer_model.to(device=where, dtype=torch_dtype).eval()
        dynamics = dynamics.to(device=where, dtype=torch_dtype).eval()
        if cuda:
            torch.cuda.reset_peak_memory_stats(where)
        world, next_action = start_world(tokenizer_model, dynamics, batch_size=1, compile=compile)
        config = dynamics.config
        untimed = settle(lambda: world.step(next_action()), "step", warmup_steps(world, warmup))

        parts = _StepParts(world, next_action)
        with torch.inference_mode():
            advance, render = time_parts(
                [parts.advance, parts.render], steps, cuda, "advance, render", progress
            )
            trunk, head = time_parts([parts.trunk, parts.head], steps, cuda, "trunk, head", progress)
        step = time_steps(lambda: world.step(next_action()), 0, steps, cuda, "step", progress)

        if cuda:
            peak, peak_kind = torch.cuda.max_memory_allocated(where), "CUDA max allocated by torch"
        else:
            peak, peak_kind = process_max_rss_bytes(), "max RSS of the whole process"
        matmul_size = PEAK_MATMUL_SIZE.get(where.type, PEAK_MATMUL_SIZE["cpu"])
        peak_flops = matmul_peak_flops(where, torch_dtype, matmul_size)

        decoder_side = tokenizer_model.decoder_parts()
        t = tokenizer_model.config
        streams = 2 if world.sampler.guided else 1  # action guidance's reference stream doubles the dynamics
        return WorldBenchResult(
            model=label,
            device=str(where),
            device_name=device_name(where),
            torch_version=torch.__version__,
            dtype=str(torch_dtype).removeprefix("torch."),
            threads=torch.get_num_threads(),
            compiled=compile,
            params_trunk=_count(_trunk_side(dynamics)),
            params_head=_count(_head_side(dynamics)),
            params_decoder=_count([*decoder_side, tokenizer_model.decoder_pos]),
            image_size=world.image_size,
            tokens_per_frame=config.tokens_per_frame,
            passes=world.sampler.passes,
            guidance=world.sampler.config.guidance,
            context_frames=config.context_frames,
            sink_frames=config.sink_frames,
            trunk_gflop_per_frame=streams * trunk_flops(dynamics) / 1e9,
            head_gflop_per_frame=streams * world.sampler.passes * head_pass_flops(dynamics) / 1e9,
            decode_gflop_per_frame=frame_flops(t, decoder_side, t.decoder_layers) / 1e9,
            matmul_size=matmul_size,
            peak_tflops=peak_flops / 1e12,
            peak_memory_bytes=peak,
            peak_memory_kind=peak_kind,
            warmup=untimed,
            advance=advance,
            trunk=trunk,
            head=head,
            render=render,
            step=step,
        )
    finally:
        torch.set_num_threads(threads_before)
