"""Tokenizer benchmark: milliseconds per frame of the streaming encoder and decoder at batch 1.

This is the cost that play pays each frame: :class:`~wm_video.tokenizer.TokenizerStream`
decodes one frame of generated tokens (and, when real frames are fed in, encodes one). Each
measurement uses its own stream and a fixed random input:

- decode: ``stream.decode_tokens`` of one random token frame (B = 1, N tokens);
- encode: ``stream.encode`` of one random frame in [-1, 1].

The stream runs on between steps, so after the untimed warm-up (at least ``temporal_window − 1``
frames) its time-window cache is full, as it is in play. Every one of ``steps`` timed steps is
read with :func:`time.perf_counter` (after :func:`torch.cuda.synchronize` on CUDA); the median,
10th and 90th percentiles are reported, and frames/s from the median.

Weights are random for a preset (speed does not depend on them) or loaded from a checkpoint.
Run ``wm-video bench tokenizer --help``.
"""

from __future__ import annotations

import platform
import resource
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from wm_video.device import resolve_device, resolve_dtype
from wm_video.errors import InputError
from wm_video.threads import settle
from wm_video.tokenizer import TokenizerConfig, VideoTokenizer, tokenizer_preset


@dataclass(frozen=True)
class FrameTiming:
    """Per-frame wall time of one streaming operation over ``steps`` timed steps."""

    median_ms: float
    p10_ms: float
    p90_ms: float
    steps: int

    @property
    def frames_per_second(self) -> float:
        return 1000.0 / self.median_ms

    @classmethod
    def from_seconds(cls, seconds: Sequence[float]) -> FrameTiming:
        p10, median, p90 = np.percentile(np.asarray(seconds) * 1000.0, [10, 50, 90])
        return cls(float(median), float(p10), float(p90), len(seconds))


@dataclass(frozen=True)
class TokenizerBenchResult:
    """Setup, model figures and the encode/decode timings of one tokenizer benchmark run."""

    model: str  # "preset tiny" or "checkpoint <path>"
    device: str  # as requested, e.g. "cpu", "cuda"
    device_name: str  # CPU model or GPU name
    torch_version: str
    dtype: str
    threads: int  # torch intra-op threads during the run
    params_encoder: int  # parameters of model.encoder (the transformer stack)
    params_decoder: int  # parameters of model.decoder (the transformer stack)
    params_total: int  # every parameter, embeddings and heads included
    image_size: int
    tokens_per_frame: int
    codebook_size: int
    bits_per_frame: float
    encode_gflop_per_frame: float  # estimate, see frame_flops()
    decode_gflop_per_frame: float
    peak_memory_bytes: int
    peak_memory_kind: str  # what peak_memory_bytes measures
    warmup: int  # untimed steps before each measurement
    encode: FrameTiming
    decode: FrameTiming

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for name in ("encode", "decode"):
            data[name]["frames_per_second"] = getattr(self, name).frames_per_second
        return data

    def format(self) -> str:
        """A printable table: one row per operation, then the setup."""
        lines = [
            f"tokenizer bench: streaming, batch 1, {self.decode.steps} timed steps after {self.warmup} warm-up",
            f"{'per frame':<10}{'median ms':>11}{'p10 ms':>9}{'p90 ms':>9}{'frames/s':>10}",
        ]
        for name in ("encode", "decode"):
            timing: FrameTiming = getattr(self, name)
            lines.append(
                f"{name:<10}{timing.median_ms:>11.3f}{timing.p10_ms:>9.3f}{timing.p90_ms:>9.3f}"
                f"{timing.frames_per_second:>10.1f}"
            )
        lines += [
            f"model        {self.model}",
            f"device       {self.device}: {self.device_name}",
            f"dtype        {self.dtype} (torch {self.torch_version})",
            f"threads      {self.threads}",
            f"params       {self.params_total / 1e6:.2f} M total: encoder stack {self.params_encoder / 1e6:.2f} M, "
            f"decoder stack {self.params_decoder / 1e6:.2f} M",
            f"tokens/frame {self.tokens_per_frame} ({self.image_size} px, codebook {self.codebook_size:,})",
            f"bits/frame   {self.bits_per_frame:.0f}",
            f"GFLOP/frame  encode {self.encode_gflop_per_frame:.3f}, decode {self.decode_gflop_per_frame:.3f} (estimate)",
            f"peak memory  {self.peak_memory_bytes / 2**20:,.1f} MiB ({self.peak_memory_kind})",
        ]
        return "\n".join(lines)


# -- model figures ---------------------------------------------------------------------------------
def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def frame_flops(config: TokenizerConfig, linear_modules: Sequence[nn.Module], layers: int) -> int:
    """Estimated FLOPs of one streamed frame through one side (encoder or decoder) of the tokenizer.

    ``2 × W × N + 4 × N × (N + window − 1) × dim × layers`` where N = tokens_per_frame and
    W = the number of weights (not biases) of every ``nn.Linear`` inside ``linear_modules``:
    each token goes through each linear layer once (a multiply and an add per weight), and in
    each block every token's query meets N keys of its own frame and ``temporal_window − 1``
    cached keys of earlier frames, for the scores and again for the weighted sum of values
    (2 × 2 FLOPs per key per channel). Norms, softmax, GELU and FSQ are left out.
    """
    tokens = config.tokens_per_frame
    weights = sum(
        m.weight.numel() for module in linear_modules for m in module.modules() if isinstance(m, nn.Linear)
    )
    attention = 4 * tokens * (tokens + config.temporal_window - 1) * config.dim * layers
    return 2 * weights * tokens + attention


# -- setup -----------------------------------------------------------------------------------------
def check_timing_options(steps: int, warmup: int, threads: int | None) -> None:
    if steps < 1:
        raise InputError(f"steps must be ≥ 1; got {steps}")
    if warmup < 0:
        raise InputError(f"warmup must be ≥ 0; got {warmup}")
    if threads is not None and threads < 1:
        raise InputError(f"threads must be ≥ 1; got {threads}")


def check_device(device: str, dtype: str) -> tuple[torch.device, torch.dtype]:
    """The device and dtype a benchmark runs with (see :mod:`wm_video.device`)."""
    where = resolve_device(device)
    return torch.device(where), resolve_dtype(dtype, where)


def device_name(where: torch.device) -> str:
    if where.type == "cuda":
        return torch.cuda.get_device_name(where)
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            name = next(line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{name}, {torch.get_num_threads()} torch threads"


def process_max_rss_bytes() -> int:
    """Peak resident memory of the whole process so far (Python, torch, every earlier allocation)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # macOS reports bytes, Linux KiB


def _load_model(
    preset: str | None, checkpoint: Path | None, where: torch.device
) -> tuple[VideoTokenizer, str]:
    if checkpoint is not None:
        from wm_video.checkpoint import load_tokenizer  # only when a checkpoint is asked for

        model, _ = load_tokenizer(checkpoint, ema=True, device=where)
        return model, f"checkpoint {checkpoint}"
    if preset is None:
        raise InputError("give a tokenizer preset or a checkpoint to benchmark")
    return VideoTokenizer(tokenizer_preset(preset)), f"preset {preset}"


# -- timing ----------------------------------------------------------------------------------------
def time_steps(
    step: Callable[[], object], warmup: int, steps: int, cuda: bool, label: str, progress: bool
) -> FrameTiming:
    """Call ``step`` ``warmup`` times untimed (and on until the thread count for it is chosen, when a
    tuner chooses it: :func:`wm_video.threads.settle`), then ``steps`` times, timing each call."""
    if warmup:
        settle(step, label, warmup)
    seconds = []
    for _ in tqdm(range(steps), desc=label, disable=not progress, leave=False):
        if cuda:
            torch.cuda.synchronize()
        started = time.perf_counter()
        step()
        if cuda:
            torch.cuda.synchronize()
        seconds.append(time.perf_counter() - started)
    return FrameTiming.from_seconds(seconds)


def bench_tokenizer(
    *,
    preset: str | None = "tiny",
    checkpoint: Path | None = None,
    device: str = "cpu",
    dtype: str = "float32",
    steps: int = 300,
    warmup: int = 30,
    threads: int | None = None,
    progress: bool = False,
) -> TokenizerBenchResult:
    """Time the streaming encoder and decoder of a tokenizer, one frame at a time at batch 1.

    ``checkpoint``, when given, is loaded (EMA weights) instead of building ``preset`` with
    random weights. ``threads`` sets :func:`torch.set_num_threads` for the run only; without it, a
    thread tuner configured by the program (:mod:`wm_video.threads`) chooses the count during the warm-ups.
    """
    check_timing_options(steps, warmup, threads)
    where, torch_dtype = check_device(device, dtype)
    cuda = where.type == "cuda"

    threads_before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        model, label = _load_model(preset, checkpoint, where)
        model = model.to(device=where, dtype=torch_dtype).eval()
        config = model.config
        if cuda:
            torch.cuda.reset_peak_memory_stats(where)

        generator = torch.Generator().manual_seed(0)
        size, tokens = config.image_size, config.tokens_per_frame
        frame = torch.rand(1, 3, size, size, generator=generator) * 2 - 1  # (1, 3, H, W) in [-1, 1]
        frame = frame.to(where, torch_dtype)
        token_frame = torch.randint(config.codebook_size, (1, tokens), generator=generator)  # (1, N)
        token_frame = token_frame.to(where)
        # Fill the time-window cache before timing, as in play.
        untimed = max(warmup, config.temporal_window - 1)
        with torch.inference_mode():
            decoder = model.stream(batch_size=1)
            decode = time_steps(
                lambda: decoder.decode_tokens(token_frame), untimed, steps, cuda, "decode", progress
            )
            encoder = model.stream(batch_size=1)
            encode = time_steps(lambda: encoder.encode(frame), untimed, steps, cuda, "encode", progress)

        encoder_side = [model.patch_embed, model.encoder, model.to_latent]
        decoder_side = model.decoder_parts()
        encode_flops = frame_flops(config, encoder_side, config.encoder_layers)
        decode_flops = frame_flops(config, decoder_side, config.decoder_layers)
        if cuda:
            peak, peak_kind = torch.cuda.max_memory_allocated(where), "CUDA max allocated by torch"
        else:
            peak, peak_kind = process_max_rss_bytes(), "max RSS of the whole process"
        return TokenizerBenchResult(
            model=label,
            device=str(where),
            device_name=device_name(where),
            torch_version=torch.__version__,
            dtype=str(torch_dtype).removeprefix("torch."),
            threads=torch.get_num_threads(),
            params_encoder=count_parameters(model.encoder),
            params_decoder=count_parameters(model.decoder),
            params_total=count_parameters(model),
            image_size=size,
            tokens_per_frame=tokens,
            codebook_size=config.codebook_size,
            bits_per_frame=config.bits_per_frame,
            encode_gflop_per_frame=encode_flops / 1e9,
            decode_gflop_per_frame=decode_flops / 1e9,
            peak_memory_bytes=peak,
            peak_memory_kind=peak_kind,
            warmup=untimed,
            encode=encode,
            decode=decode,
        )
    finally:
        torch.set_num_threads(threads_before)
