"""Tokenizer evaluation: reconstruct whole episodes and measure what a viewer would see.

Design choices:
- Episodes run in chunks of ``chunk_frames`` frames (batch of one episode), each chunk preceded
  by :func:`context_frames` earlier frames whose outputs are thrown away. A token's time
  attention reaches ``temporal_window − 1`` frames back *per block*, and the decoder reads codes
  the encoder made from earlier frames still, so a reconstructed frame depends on
  ``(encoder_layers + decoder_layers) × (temporal_window − 1)`` frames before it, not only on
  ``temporal_window − 1``. With that much context a chunked run equals a whole-episode run (to
  float rounding) while memory stays bounded by the chunk.
- Reconstructions are rounded to uint8 (:func:`~wm_video.tokenizer.pixels.to_uint8_frames`)
  before any metric: the numbers describe the frames a player is shown.
- PSNR and SSIM are per frame and averaged over frames (:mod:`wm_video.metrics`). A frame
  reproduced exactly has infinite PSNR; it counts as :data:`PSNR_CAP_DB` in every average and
  percentile (above any uint8 frame with one wrong value, up to ~230 px), and the report says
  how many such frames there were.
- Codes are counted over every frame evaluated (distinct codes and perplexity), without ever
  holding all tokens at once.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from einops import rearrange
from torch import Tensor
from tqdm import tqdm

from wm_video.data.cache import TrainingCache
from wm_video.errors import InputError
from wm_video.metrics import codebook_usage_from_counts, psnr, ssim
from wm_video.tokenizer import TokenizerConfig, VideoTokenizer
from wm_video.tokenizer.pixels import to_model_pixels, to_uint8_frames

PSNR_CAP_DB = 100.0  # what a frame reproduced exactly (PSNR +inf) counts as in averages


def context_frames(config: TokenizerConfig) -> int:
    """Earlier frames a reconstructed frame depends on: each encoder and decoder block looks
    ``temporal_window − 1`` frames further back."""
    return (config.encoder_layers + config.decoder_layers) * (config.temporal_window - 1)


@dataclass
class ReconstructedChunk:
    start: int  # the chunk's first frame within the episode
    target: Tensor  # (T, H, W, 3) uint8, the real frames
    tokens: Tensor  # (T, N) int64
    reconstruction: Tensor  # (T, 3, H, W) float, [-1, 1] scale, not clamped


def reconstruct_chunks(
    model: VideoTokenizer,
    frames: np.ndarray,
    *,
    chunk_frames: int = 64,
    context: int | None = None,
    device: torch.device | str | None = None,
) -> Iterator[ReconstructedChunk]:
    """Encode and decode an episode's uint8 frames (T, H, W, 3) chunk by chunk, in order.

    ``context`` defaults to :func:`context_frames`, which makes the chunks equal a single pass
    over the whole episode. ``device`` defaults to the model's. The model is used as it is
    (call ``model.eval()`` first).
    """
    if chunk_frames < 1:
        raise InputError(f"chunk_frames must be ≥ 1, got {chunk_frames}")
    parameter = next(model.parameters())
    device = parameter.device if device is None else torch.device(device)
    context = context_frames(model.config) if context is None else context
    for start in range(0, len(frames), chunk_frames):
        first, stop = max(0, start - context), min(len(frames), start + chunk_frames)
        target = torch.from_numpy(np.array(frames[first:stop])).to(device)  # (T, H, W, 3), a copy
        with torch.inference_mode():
            pixels = to_model_pixels(target, device).to(parameter.dtype).unsqueeze(0)  # (1, T, 3, H, W)
            output = model(pixels)
        skip = start - first  # context frames: computed only for what follows them
        yield ReconstructedChunk(
            start=start,
            target=target[skip:],
            tokens=output.encoding.tokens[0, skip:],
            reconstruction=output.reconstruction[0, skip:],
        )


def reconstruct_episode(model: VideoTokenizer, frames: np.ndarray, *, chunk_frames: int = 64) -> np.ndarray:
    """The tokenizer's reconstruction of an episode's uint8 frames (T, H, W, 3), as uint8 frames."""
    chunks = reconstruct_chunks(model, frames, chunk_frames=chunk_frames)
    return np.concatenate([to_uint8_frames(chunk.reconstruction).cpu().numpy() for chunk in chunks])


@dataclass
class TokenizerReport:
    """How well a tokenizer reconstructs episodes (uint8 frames, per-frame metrics)."""

    frames: int
    episodes: list[int]  # dataset episode indices evaluated (the last one may be partial)
    psnr_mean: float  # dB, per-frame mean
    psnr_median: float
    psnr_p05: float  # 5th percentile: the worst frames
    ssim_mean: float  # per-frame mean
    codebook_used: int
    codebook_size: int
    codebook_fraction: float
    perplexity: float
    tokens_per_frame: int
    bits_per_frame: float
    seconds: float
    complete: bool  # False when stopped early
    exact_frames: int = 0  # frames reproduced exactly, counted as PSNR_CAP_DB
    per_episode: list[dict[str, Any]] = field(default_factory=list)  # episode, frames, psnr, ssim

    def to_dict(self) -> dict[str, Any]:
        """JSON-able fields; a value that is not finite (NaN when no frame was evaluated) is None."""
        return finite_or_none(asdict(self))

    def format(self) -> str:
        """A readable multi-line table."""
        rate = self.frames / self.seconds if self.seconds > 0 else 0.0
        state = "" if self.complete else "  (stopped early: partial results)"
        lines = [
            f"tokenizer evaluation: {len(self.episodes)} episode{'s' * (len(self.episodes) != 1)}, {self.frames} frames, "
            f"{self.seconds:.1f} s ({rate:.1f} frames/s){state}",
            f"  PSNR (per-frame mean)   {self.psnr_mean:8.2f} dB",
            f"  PSNR (median frame)     {self.psnr_median:8.2f} dB",
            f"  PSNR (5th percentile)   {self.psnr_p05:8.2f} dB   worst frames",
            f"  SSIM (per-frame mean)   {self.ssim_mean:8.4f}",
            f"  codebook used           {self.codebook_used:8d} / {self.codebook_size} "
            f"({100 * self.codebook_fraction:.1f} %)",
            f"  code perplexity         {self.perplexity:8.1f}",
            f"  tokens per frame        {self.tokens_per_frame:8d}   ({self.bits_per_frame:.0f} bits)",
        ]
        if self.exact_frames:
            lines.append(f"  {self.exact_frames} frames reproduced exactly, counted as {PSNR_CAP_DB:.0f} dB")
        if self.per_episode:
            lines += ["", "  episode   frames   PSNR dB     SSIM"]
            lines += [
                f"  {row['episode']:7d} {row['frames']:8d} {row['psnr']:9.2f} {row['ssim']:8.4f}"
                for row in self.per_episode
            ]
        return "\n".join(lines)


def evaluate_tokenizer(
    model: VideoTokenizer,
    cache: TrainingCache,
    *,
    episodes: Sequence[int] | None = None,
    max_frames_per_episode: int | None = None,
    chunk_frames: int = 64,
    device: torch.device | str | None = None,
    progress: bool = True,
    stop: Callable[[], bool] | None = None,
) -> TokenizerReport:
    """Reconstruct ``episodes`` (dataset episode indices; None: every cached episode) and measure.

    ``max_frames_per_episode`` keeps each episode's first frames only. ``device``: None runs
    where the model is; otherwise the model is moved there. ``stop`` is polled before every
    chunk; once it returns True the report of the frames done so far comes back with
    ``complete=False``. The model is put in eval mode and back in its former mode afterwards.
    """
    size = model.config.image_size
    if cache.size != size:
        raise InputError(
            f"the cache holds {cache.size}×{cache.size} frames; this tokenizer takes {size}×{size} "
            f"(load the cache with size={size})"
        )
    if max_frames_per_episode is not None and max_frames_per_episode < 1:
        raise InputError(f"max_frames_per_episode must be ≥ 1, got {max_frames_per_episode}")
    if chunk_frames < 1:
        raise InputError(f"chunk_frames must be ≥ 1, got {chunk_frames}")
    chosen = _episode_positions(cache, episodes)
    if device is not None:
        model.to(device)
    run_device = next(model.parameters()).device
    metrics_device = torch.device("cpu") if run_device.type == "mps" else run_device  # MPS: no float64
    lengths = [len(cache.episode(position)[0]) for _, position in chosen]
    if max_frames_per_episode is not None:
        lengths = [min(length, max_frames_per_episode) for length in lengths]

    started, was_training = time.perf_counter(), model.training
    model.eval()
    counter = _CodeCounter()
    psnr_frames: list[Tensor] = []  # per episode, (T,) float64
    ssim_frames: list[Tensor] = []
    per_episode: list[dict[str, Any]] = []
    complete = True
    try:
        bar = tqdm(total=sum(lengths), desc="evaluating tokenizer", unit="frame", disable=not progress)
        with bar:
            for (index, position), length in zip(chosen, lengths, strict=True):
                frames = cache.episode(position)[0][:length]
                chunks = reconstruct_chunks(model, frames, chunk_frames=chunk_frames, device=run_device)
                episode_psnr: list[Tensor] = []
                episode_ssim: list[Tensor] = []
                done = 0
                while done < length:
                    if stop is not None and stop():  # before the next chunk is computed
                        complete = False
                        break
                    chunk = next(chunks)
                    # uint8, what a viewer sees: (T, H, W, 3) → (T, 3, H, W) for the metrics
                    seen, real = (
                        rearrange(frames_u8, "t h w c -> t c h w").to(metrics_device)
                        for frames_u8 in (to_uint8_frames(chunk.reconstruction), chunk.target)
                    )
                    episode_psnr.append(psnr(seen, real).cpu())
                    episode_ssim.append(ssim(seen, real).cpu())
                    counter.add(chunk.tokens)
                    done += len(chunk.target)
                    bar.update(len(chunk.target))
                if done:
                    psnr_frames.append(torch.cat(episode_psnr))
                    ssim_frames.append(torch.cat(episode_ssim))
                    per_episode.append(
                        dict(
                            episode=index,
                            frames=done,
                            psnr=psnr_frames[-1].clamp(max=PSNR_CAP_DB).mean().item(),
                            ssim=ssim_frames[-1].mean().item(),
                        )
                    )
                if not complete:
                    break
    finally:
        model.train(was_training)

    all_psnr = torch.cat(psnr_frames).numpy() if psnr_frames else np.zeros(0)
    all_ssim = torch.cat(ssim_frames).numpy() if ssim_frames else np.zeros(0)
    capped = np.minimum(all_psnr, PSNR_CAP_DB)
    usage = codebook_usage_from_counts(counter.counts, model.config.codebook_size)
    evaluated = len(all_psnr) > 0
    nan = float("nan")
    return TokenizerReport(
        frames=len(all_psnr),
        episodes=[row["episode"] for row in per_episode],
        psnr_mean=float(capped.mean()) if evaluated else nan,
        psnr_median=float(np.median(capped)) if evaluated else nan,
        psnr_p05=float(np.percentile(capped, 5)) if evaluated else nan,
        ssim_mean=float(all_ssim.mean()) if evaluated else nan,
        codebook_used=usage.used,
        codebook_size=usage.codebook_size,
        codebook_fraction=usage.fraction,
        perplexity=usage.perplexity,
        tokens_per_frame=model.config.tokens_per_frame,
        bits_per_frame=model.config.bits_per_frame,
        seconds=time.perf_counter() - started,
        complete=complete,
        exact_frames=int(np.isinf(all_psnr).sum()),
        per_episode=per_episode,
    )


class _CodeCounter:
    """Occurrences of each distinct code seen so far (sparse: codebooks may be large)."""

    def __init__(self) -> None:
        self.codes = torch.zeros(0, dtype=torch.int64)
        self.counts = torch.zeros(0, dtype=torch.int64)

    def add(self, tokens: Tensor) -> None:
        codes, counts = torch.unique(tokens.flatten(), return_counts=True)
        codes = torch.cat((self.codes, codes.cpu()))
        counts = torch.cat((self.counts, counts.cpu()))
        self.codes, slots = torch.unique(codes, return_inverse=True)
        self.counts = torch.zeros(len(self.codes), dtype=torch.int64).index_add_(0, slots, counts)


def _episode_positions(cache: TrainingCache, episodes: Sequence[int] | None) -> list[tuple[int, int]]:
    """(dataset episode index, position in the cache) of each requested episode, in the order given."""
    available = [int(e) for e in cache.episode_indices]
    if episodes is None:
        return [(index, position) for position, index in enumerate(available)]
    position_of = {index: position for position, index in enumerate(available)}
    unknown = [int(e) for e in episodes if int(e) not in position_of]
    if unknown:
        raise InputError(
            f"episode{'s' if len(unknown) > 1 else ''} {', '.join(map(str, unknown))} not in the cache at "
            f"{cache.path}; it holds episodes {_ranges(available)}"
        )
    chosen = dict.fromkeys(int(e) for e in episodes)  # drop repeats, keep order
    return [(index, position_of[index]) for index in chosen]


def _ranges(values: Sequence[int]) -> str:
    """[0, 1, 2, 5, 7, 8] → '0–2, 5, 7–8'."""
    parts: list[str] = []
    for value in sorted(values):
        if parts and value == int(parts[-1].split("–")[-1]) + 1:
            parts[-1] = f"{parts[-1].split('–')[0]}–{value}"
        else:
            parts.append(str(value))
    return ", ".join(parts)


def finite_or_none(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: finite_or_none(item) for key, item in value.items()}
    if isinstance(value, list):
        return [finite_or_none(item) for item in value]
    return value
