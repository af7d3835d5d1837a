"""A Fréchet distance between real and generated clips, with the real-vs-real floor that gives it a scale.

FVD needs an I3D network trained on Kinetics, which cannot be downloaded here. Instead the frame
encoder is the object model's bottleneck (:mod:`.objects`: trained by ``wm-video eval`` itself
on the training episodes, 32 numbers per frame), and a clip is described over sliding windows
of :data:`WINDOW` frames: the mean of the frame features and the mean absolute change between
consecutive ones (so motion counts, not only content). The distance between two sets of window
descriptors is Fréchet's between Gaussians fitted to them:

    |μ₁ − μ₂|² + Tr(Σ₁ + Σ₂ − 2 (Σ₁^½ Σ₂ Σ₁^½)^½)

computed with symmetric eigendecompositions (no scipy). A finite sample makes it positive even
for two sets from the same footage, so the report always shows, beside it, the distance between
two disjoint sets of real held-out clips of the same size (the floor). 0 = the same set.
"""

from __future__ import annotations

import numpy as np

WINDOW = 4


def window_descriptors(features: np.ndarray, window: int = WINDOW) -> np.ndarray:
    """Frame features (B, T, d) → descriptors (B · (T − window + 1), 2d) of every window of
    ``window`` frames: mean feature and mean |change| between consecutive frames."""
    b, t, d = features.shape
    if t < window:
        raise ValueError(f"clips of {t} frames are shorter than the {window}-frame window")
    views = np.lib.stride_tricks.sliding_window_view(features, window, axis=1)  # (B, T-w+1, d, w)
    mean = views.mean(axis=-1)
    change = np.abs(np.diff(views, axis=-1)).mean(axis=-1)
    return np.concatenate((mean, change), axis=-1).reshape(-1, 2 * d).astype(np.float64)


def _sqrt_psd(matrix: np.ndarray) -> np.ndarray:
    values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T


def frechet_distance(first: np.ndarray, second: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to samples (N, d) and (M, d)."""
    if len(first) < 2 or len(second) < 2:
        return float("nan")
    mu1, mu2 = first.mean(axis=0), second.mean(axis=0)
    s1, s2 = np.cov(first, rowvar=False), np.cov(second, rowvar=False)
    root = _sqrt_psd(s1)
    cross = _sqrt_psd(root @ s2 @ root)
    value = float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(cross))
    return max(value, 0.0)
