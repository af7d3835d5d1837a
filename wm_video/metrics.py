"""Image and token metrics: per-frame PSNR and SSIM, and how much of a codebook is in use.

Frames are (..., C, H, W) tensors of any dtype (uint8 straight from a video is fine); the math is
float64 on the frames' device and each function returns one value per frame, shape ``(...)``.
Callers average per-frame values ("per-frame mean PSNR"), which weighs every frame alike; a
PSNR of the whole clip's MSE would let a few badly reconstructed frames hide among good ones.

SSIM follows Wang et al. 2004 ("Image quality assessment: from error visibility to structural
similarity"): an 11×11 Gaussian window with σ = 1.5, K1 = 0.01, K2 = 0.03, computed per channel
and averaged over the channels and the valid pixels (no padding, so every window lies inside the
frame). It equals scikit-image's ``structural_similarity(..., gaussian_weights=True, sigma=1.5,
use_sample_covariance=False, data_range=...)``; unlike Wang's MATLAB code it does not first
downsample frames larger than 256 px.

Frame statistics (:func:`frame_statistics`, :func:`colour_histogram`, :func:`histogram_distance`)
summarise single frames for the soak test of ``wm-video eval``: a world collapsing into a blur,
a flat colour or noise shows in them long before anyone watches 10,000 frames.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03


def _check_pair(prediction: Tensor, target: Tensor, name: str) -> None:
    if prediction.shape != target.shape:
        raise ValueError(
            f"{name}: prediction {tuple(prediction.shape)} and target {tuple(target.shape)} differ"
        )
    if prediction.dim() < 3:
        raise ValueError(f"{name}: frames must be shaped (..., C, H, W); got {tuple(prediction.shape)}")


def psnr(prediction: Tensor, target: Tensor, data_range: float = 255.0) -> Tensor:
    """Per-frame PSNR in dB over the last three dims (C, H, W): (..., C, H, W) → (...), float64.

    ``data_range`` is the span of pixel values (255 for uint8, 2 for [-1, 1]). A frame equal to
    its target has zero error and a PSNR of +inf; a caller that averages should decide what an
    exact frame counts as (the tokenizer evaluator caps it).
    """
    _check_pair(prediction, target, "psnr")
    error = prediction.double() - target.double()
    mse = error.square().mean(dim=(-3, -2, -1))
    return 10.0 * torch.log10(data_range**2 / mse)  # mse 0 → +inf


def _gaussian(size: int, sigma: float, device: torch.device) -> Tensor:
    """(size,) float64 Gaussian weights centred on the middle tap, summing to 1."""
    offsets = torch.arange(size, dtype=torch.float64, device=device) - (size - 1) / 2
    weights = torch.exp(-0.5 * (offsets / sigma) ** 2)
    return weights / weights.sum()


def _valid_filter(length: int, window: int, device: torch.device) -> Tensor:
    """(length − window + 1, length) matrix whose row i puts the Gaussian on pixels i … i + window − 1."""
    weights = _gaussian(window, SSIM_SIGMA, device)
    outputs = length - window + 1
    matrix = torch.zeros(outputs, length, dtype=torch.float64, device=device)
    columns = torch.arange(outputs, device=device)[:, None] + torch.arange(window, device=device)  # (H', k)
    return matrix.scatter_(1, columns, weights.expand(outputs, window))


def ssim(prediction: Tensor, target: Tensor, data_range: float = 255.0) -> Tensor:
    """Per-frame SSIM (Wang et al. 2004) over (..., C, H, W) → (...), float64 in [-1, 1].

    Frames smaller than the 11-pixel window along a side use a window as long as that side
    (same σ = 1.5, a single valid position along it), so tiny test frames still get a value.
    """
    _check_pair(prediction, target, "ssim")
    *batch, channels, height, width = prediction.shape
    x = prediction.double().reshape(-1, channels, height, width)  # (B, C, H, W)
    y = target.double().reshape(-1, channels, height, width)
    # Separable Gaussian as two banded matrices ('valid': no padding), (H', H) and (W', W):
    # blur(X) = rows @ X @ colsᵀ per channel. The same sums as a grouped conv2d, ~10× faster on
    # CPUs in float64 for 64–128 px frames.
    rows = _valid_filter(height, min(SSIM_WINDOW, height), x.device)
    cols = _valid_filter(width, min(SSIM_WINDOW, width), x.device)
    frames = x.shape[0]
    stacked = torch.cat((x, y, x * x, y * y, x * y))  # (5B, C, H, W)
    moments = rows @ stacked @ cols.T  # (5B, C, H', W')
    mean_x, mean_y, mean_xx, mean_yy, mean_xy = moments.split(frames)
    var_x = mean_xx - mean_x.square()
    var_y = mean_yy - mean_y.square()
    cov_xy = mean_xy - mean_x * mean_y
    c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
    ssim_map = ((2 * mean_x * mean_y + c1) * (2 * cov_xy + c2)) / (
        (mean_x.square() + mean_y.square() + c1) * (var_x + var_y + c2)
    )
    return ssim_map.mean(dim=(-3, -2, -1)).reshape(batch)


@dataclass(frozen=True)
class CodebookUsage:
    used: int  # distinct codes that occur
    codebook_size: int
    fraction: float  # used / codebook_size
    perplexity: float  # exp(entropy in nats) of the codes' empirical distribution; ≤ used


def codebook_usage_from_counts(counts: Tensor, codebook_size: int) -> CodebookUsage:
    """Usage from occurrence counts of distinct codes (zeros allowed, in any order)."""
    counts = counts.double().flatten()
    counts = counts[counts > 0]
    total = counts.sum().item()
    if total == 0:
        return CodebookUsage(used=0, codebook_size=codebook_size, fraction=0.0, perplexity=0.0)
    probabilities = counts / total
    entropy = -(probabilities * probabilities.log()).sum().item()
    used = int(counts.numel())
    return CodebookUsage(used, codebook_size, used / codebook_size, math.exp(entropy))


def codebook_usage(tokens: Tensor, codebook_size: int) -> CodebookUsage:
    """How many of ``codebook_size`` codes the integer ``tokens`` (any shape) use, and how evenly.

    Perplexity is exp of the entropy of the empirical code distribution: the number of equally
    likely codes that would be as unpredictable (``used`` when all occur equally often).
    """
    if codebook_size < 1:
        raise ValueError(f"codebook_usage: codebook_size must be ≥ 1, got {codebook_size}")
    if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= codebook_size):
        raise ValueError(
            f"codebook_usage: tokens span [{int(tokens.min())}, {int(tokens.max())}], "
            f"outside a codebook of {codebook_size}"
        )
    _, counts = torch.unique(tokens.flatten(), return_counts=True)
    return codebook_usage_from_counts(counts, codebook_size)


# -- frame statistics (collapse detection in long rollouts) ------------------------------------------
HISTOGRAM_BINS = 16


def frame_statistics(frames: Tensor) -> dict[str, Tensor]:
    """Per-frame summary of uint8-range frames (..., C, H, W) → each statistic shaped (...), float64.

    - ``mean``: mean pixel value (0–255 for uint8): a world fading to black or white moves it.
    - ``spread``: standard deviation over all pixels and channels: a grey blur or a flat colour lowers it.
    - ``sharpness``: mean absolute response of the 4-neighbour Laplacian on the channel mean,
      over interior pixels: a blur lowers it, noise raises it far above footage.
    """
    if frames.dim() < 3 or frames.shape[-1] < 3 or frames.shape[-2] < 3:
        raise ValueError(
            f"frame_statistics: frames must be (..., C, H, W) with H, W ≥ 3; got {tuple(frames.shape)}"
        )
    x = frames.double()
    gray = x.mean(dim=-3)  # (..., H, W)
    laplacian = (
        4 * gray[..., 1:-1, 1:-1]
        - gray[..., :-2, 1:-1]
        - gray[..., 2:, 1:-1]
        - gray[..., 1:-1, :-2]
        - gray[..., 1:-1, 2:]
    )
    return {
        "mean": x.mean(dim=(-3, -2, -1)),
        "spread": x.flatten(-3).std(dim=-1, unbiased=False),
        "sharpness": laplacian.abs().mean(dim=(-2, -1)),
    }


def colour_histogram(frames: Tensor, bins: int = HISTOGRAM_BINS, data_range: float = 255.0) -> Tensor:
    """Normalised per-channel histograms of frames (..., C, H, W) → (..., C·bins), each channel's
    block summing to 1/C (so the whole vector sums to 1); values are binned over [0, data_range]."""
    if frames.dim() < 3:
        raise ValueError(f"colour_histogram: frames must be (..., C, H, W); got {tuple(frames.shape)}")
    *batch, channels, height, width = frames.shape
    index = (frames.double() / data_range * bins).floor().clamp(0, bins - 1).long()
    index = index.reshape(-1, channels, height * width)  # (F, C, P)
    offsets = (torch.arange(channels, device=frames.device) * bins)[None, :, None]
    counts = torch.zeros(index.shape[0], channels * bins, dtype=torch.float64, device=frames.device)
    counts.scatter_add_(
        1, (index + offsets).flatten(1), torch.ones_like(index.flatten(1), dtype=torch.float64)
    )
    return (counts / (channels * height * width)).reshape(*batch, channels * bins)


def histogram_distance(histograms: Tensor, reference: Tensor) -> Tensor:
    """Total-variation distance (½ L1) between normalised histograms (..., K) and a reference (K,):
    0 for the same colour distribution, 1 for disjoint ones."""
    if histograms.shape[-1] != reference.shape[-1]:
        raise ValueError(
            f"histogram_distance: {histograms.shape[-1]} bins against a reference of {reference.shape[-1]}"
        )
    return 0.5 * (histograms.double() - reference.double()).abs().sum(dim=-1)
