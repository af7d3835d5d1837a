"""A small object model: which object class covers each 2×2-pixel cell of a frame.

An evaluation instrument, like the inverse-dynamics model (:mod:`.idm`): trained by ``wm-video
eval`` on the real frames of the training episodes against the engine's class maps
(:mod:`wm_video.data.truth`) and cached, then applied to real, tokenizer-reconstructed and
generated frames, which have no labels of their own. Nothing is downloaded.

Design choices:
- Per cell, not per pixel: a U-Net of three stride-2 stages (32 → 16 → 8 cells at 64 px) with
  skips, predicting at half the frame's resolution. At 64 px that is 32×32 cells of 2×2 px:
  a far monster (1×4 px) still fills a cell, and the model costs ~30 MFLOP a frame, so 10,000
  soak frames take seconds. Targets: a cell takes the object class covering at least one of its
  4 pixels (the largest such), else background.
- Robust to the blur a world model's frames have: half of every training batch is blurred
  (Gaussian, σ up to 1.2 px) so that a smoothed monster is still a monster.
- Blind to tile artefacts: in a quarter of every training batch, grid-aligned blocks of the
  tokenizer's patch size in monster and blood colours, single and in mosaics, are pasted over the
  background and labelled background (:mod:`.tiles`), before the blur. The model's own
  precision and recall on held-out real frames and on their tokenizer reconstructions are
  reported beside every figure it feeds (:mod:`.presence`).
- Loss: cross-entropy with class weights 1/√(share of cells), normalised, so rare classes (the
  flash: 0.2 % of cells) count.
- The bottleneck averaged over space (32 numbers, :meth:`ObjectModel.run`) is the frame
  encoder of the Fréchet distance (:mod:`.frechet`).
- Cached in ``<cache dir>/objects-<key>/`` (safetensors + JSON); the key hashes the truth
  cache's fingerprint, the training episodes, the config, the seed and :data:`OBJECTS_VERSION`.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from tqdm import tqdm

from wm_video.data.cache import TrainingCache
from wm_video.data.truth import TruthCache
from wm_video.errors import InputError
from wm_video.eval.clips import check_stop
from wm_video.eval.tiles import colour_pool, paste_tiles
from wm_video.fileio import atomic_write, atomic_write_json

OBJECTS_VERSION = 2  # 2: tile artefacts as hard negatives
CELL = 2  # pixels per cell side


@dataclass(frozen=True)
class ObjectConfig:
    width: int = 16  # channels at 1/2 resolution (doubles at 1/4; the bottleneck has BOTTLENECK)
    steps: int = 600
    batch_size: int = 32
    lr: float = 3e-3
    blur_max: float = 1.2  # σ (px) of the strongest training blur
    seed: int = 0
    min_train_cells: int = 200  # a class with fewer cells in the training frames is not learnt (nor reported)
    tile_share: float = 0.25  # share of each batch with tile artefacts pasted over its background
    tiles: tuple[int, ...] = (8,)  # their sides (px): the evaluated tokenizers' patch sizes

    def __post_init__(self) -> None:
        if (
            min(self.width, self.steps, self.batch_size) < 1
            or self.lr <= 0
            or self.blur_max < 0
            or not 0 <= self.tile_share <= 1
            or not self.tiles
            or min(self.tiles) < 1
        ):
            raise InputError(
                "object model width, steps, batch_size must be ≥ 1, lr > 0, blur_max ≥ 0, tile_share in "
                f"[0, 1], tiles a non-empty list of sides ≥ 1; got {self}"
            )


BOTTLENECK = 32


def _block(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride, 1), nn.GroupNorm(4, c_out), nn.ReLU())


class ObjectModel(nn.Module):
    """uint8 frames (B, H, W, 3) → class logits per cell (B, classes, H/2, W/2)."""

    def __init__(self, classes: int, config: ObjectConfig) -> None:
        super().__init__()
        self.config, c = config, config.width
        self.stem = nn.Sequential(
            nn.Conv2d(3, c, 4, 2, 1), nn.GroupNorm(4, c), nn.ReLU(), _block(c, c)
        )  # 1/2
        self.down1 = nn.Sequential(_block(c, 2 * c, 2), _block(2 * c, 2 * c))  # 1/4
        self.down2 = nn.Sequential(_block(2 * c, BOTTLENECK, 2), _block(BOTTLENECK, BOTTLENECK))  # 1/8
        self.up1 = _block(2 * c + BOTTLENECK, 2 * c)
        self.up2 = nn.Sequential(nn.Conv2d(3 * c, c, 1), nn.ReLU(), _block(c, c))
        self.head = nn.Conv2d(c, classes, 1)

    @staticmethod
    def prepare(frames: Tensor) -> Tensor:
        """uint8 (B, H, W, 3) → float (B, 3, H, W) in [-1, 1]."""
        return frames.permute(0, 3, 1, 2).float().div(127.5).sub(1.0)

    def _encode(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        half = self.stem(x)  # (B, c, H/2, W/2)
        quarter = self.down1(half)  # (B, 2c, H/4, W/4)
        return half, quarter, self.down2(quarter)  # (B, BOTTLENECK, H/8, W/8)

    def run(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Prepared frames (B, 3, H, W) → (logits (B, classes, H/2, W/2), features (B, BOTTLENECK):
        the bottleneck averaged over space)."""
        half, quarter, bottom = self._encode(x)
        up = F.interpolate(bottom, scale_factor=2, mode="nearest")
        quarter = self.up1(torch.cat((quarter, up), 1))
        up = F.interpolate(quarter, scale_factor=2, mode="nearest")
        return self.head(self.up2(torch.cat((half, up), 1))), bottom.mean(dim=(2, 3))

    def forward(self, x: Tensor) -> Tensor:
        return self.run(x)[0]


def cell_targets(classes: np.ndarray, count: int) -> np.ndarray:
    """Class maps (B, H, W) → cell targets (B, H/2, W/2): the object class covering most of a
    cell's 4 pixels (at least one), else background (0)."""
    b, h, w = classes.shape
    blocks = classes.reshape(b, h // CELL, CELL, w // CELL, CELL)
    counts = np.stack([(blocks == k).sum(axis=(2, 4)) for k in range(1, count)], axis=-1)  # (B, h, w, K-1)
    best = counts.argmax(axis=-1)
    return np.where(counts.max(axis=-1) > 0, best + 1, 0).astype(np.int64)


def _blur(x: Tensor, sigma: Tensor) -> Tensor:
    """Per-sample Gaussian blur of (B, 3, H, W) with σ (B,) (0: unchanged); a 5-tap separable kernel."""
    taps = torch.arange(-2, 3, dtype=x.dtype)
    kernel = torch.exp(-0.5 * (taps[None] / sigma.clamp(min=1e-3)[:, None]) ** 2)
    kernel = torch.where(sigma[:, None] > 0, kernel, (taps[None] == 0).to(x.dtype))
    kernel = kernel / kernel.sum(dim=1, keepdim=True)  # (B, 5)
    b, c, h, w = x.shape
    flat = x.reshape(1, b * c, h, w)
    k = kernel.repeat_interleave(c, dim=0)  # (B·C, 5)
    flat = F.conv2d(F.pad(flat, (2, 2, 0, 0), mode="replicate"), k[:, None, None, :], groups=b * c)
    flat = F.conv2d(F.pad(flat, (0, 0, 2, 2), mode="replicate"), k[:, None, :, None], groups=b * c)
    return flat.reshape(b, c, h, w)


@dataclass
class TrainedObjects:
    model: ObjectModel
    classes: tuple[str, ...]
    trained_classes: list[int]  # class ids with enough cells in the training frames to learn
    path: Path | None
    reused: bool
    train_frames: int


def _cache_key(truth: TruthCache, episodes: list[int], config: ObjectConfig) -> str:
    text = json.dumps(
        {
            "v": OBJECTS_VERSION,
            "truth": truth.fingerprint,
            "episodes": sorted(episodes),
            "config": asdict(config),
        },
        sort_keys=True,
    )
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def train_objects(
    cache: TrainingCache,
    truth: TruthCache,
    rows: np.ndarray,
    *,
    config: ObjectConfig,
    stop: Callable[[], bool] | None = None,
    progress: bool = False,
) -> tuple[ObjectModel, np.ndarray]:
    """Train on the frames ``rows`` of the cache; returns the model and the cell count per class."""
    count = len(truth.class_names)
    if len(rows) < config.batch_size:
        raise InputError(
            f"{truth.path}: {len(rows)} training frames; the object model needs {config.batch_size}"
        )
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    targets = np.concatenate(
        [
            cell_targets(np.asarray(truth.classes[rows[i : i + 2048]]), count)
            for i in range(0, len(rows), 2048)
        ]
    )  # (R, h, w)
    cells = np.bincount(targets.ravel(), minlength=count).astype(np.float64)
    sample = np.sort(rng.choice(len(rows), min(len(rows), 512), replace=False))
    pool = colour_pool(np.asarray(cache.frames[rows[sample]]), np.asarray(truth.classes[rows[sample]]), rng)
    weights = 1.0 / np.sqrt(np.maximum(cells / cells.sum(), 1e-6))
    weights = np.where(cells > 0, weights, 0.0)
    weights = torch.from_numpy(weights / weights[cells > 0].mean()).float()
    model = ObjectModel(count, config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=1e-4)
    warmup = max(1, config.steps // 10)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * s / config.steps))
    )
    model.train()
    for _ in tqdm(range(config.steps), desc="object model", disable=not progress, leave=False):
        check_stop(stop)
        batch = np.sort(rng.choice(len(rows), config.batch_size, replace=False))
        frames = np.asarray(cache.frames[rows[batch]])
        tiled = np.flatnonzero(rng.random(len(batch)) < config.tile_share)
        if len(tiled):
            frames[tiled] = paste_tiles(
                frames[tiled], np.asarray(truth.classes[rows[batch[tiled]]]), pool, config.tiles, rng
            )[0]
        x = ObjectModel.prepare(torch.from_numpy(frames))
        sigma = torch.from_numpy(rng.uniform(0, config.blur_max, len(batch)) * (rng.random(len(batch)) < 0.5))
        x = _blur(x, sigma.float())
        loss = F.cross_entropy(model(x), torch.from_numpy(targets[batch]), weight=weights)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
    return model.eval(), cells


def load_or_train_objects(
    cache: TrainingCache,
    truth: TruthCache,
    rows: np.ndarray,
    episodes: list[int],
    *,
    cache_dir: Path | None = None,
    config: ObjectConfig | None = None,
    stop: Callable[[], bool] | None = None,
    progress: bool = False,
) -> TrainedObjects:
    """The cached object model for these training episodes (frames ``rows``); trained if missing."""
    config = config or ObjectConfig()
    folder = (Path(cache_dir) if cache_dir is not None else Path(cache.path).parent) / (
        f"objects-{_cache_key(truth, episodes, config)}"
    )
    weights, info = folder / "objects.safetensors", folder / "objects.json"
    count = len(truth.class_names)
    if weights.is_file() and info.is_file():
        model = ObjectModel(count, config)
        try:
            model.load_state_dict(load_file(weights))
            cells = np.asarray(json.loads(info.read_text())["cells"])
        except (RuntimeError, OSError, ValueError, KeyError) as exc:
            raise InputError(f"{weights}: cannot load the cached object model ({exc}); delete it") from exc
        reused = True
    else:
        model, cells = train_objects(cache, truth, rows, config=config, stop=stop, progress=progress)
        atomic_write(weights, lambda tmp: save_file(model.state_dict(), str(tmp)))
        atomic_write_json(
            info,
            {
                "version": OBJECTS_VERSION,
                "truth": str(truth.path),
                "fingerprint": truth.fingerprint,
                "episodes": sorted(episodes),
                "classes": list(truth.class_names),
                "cells": cells.tolist(),
                "config": asdict(config),
                "train_frames": len(rows),
            },
        )
        reused = False
    trained = [k for k in range(1, count) if cells[k] >= config.min_train_cells]
    return TrainedObjects(model.eval(), truth.class_names, trained, folder, reused, len(rows))


@dataclass
class ObjectPredictions:
    cells: np.ndarray  # (..., H/2, W/2) uint8 class ids
    features: np.ndarray  # (..., BOTTLENECK) float32


@torch.inference_mode()
def predict(objects: TrainedObjects, frames: np.ndarray, chunk: int = 256) -> ObjectPredictions:
    """Cell classes and frame features of uint8 frames (..., H, W, 3), in batches of ``chunk``."""
    lead = frames.shape[:-3]
    flat = frames.reshape(-1, *frames.shape[-3:])
    cells, features = [], []
    for i in range(0, len(flat), chunk):
        logits, frame_features = objects.model.run(
            ObjectModel.prepare(torch.from_numpy(np.ascontiguousarray(flat[i : i + chunk])))
        )
        cells.append(logits.argmax(dim=1).to(torch.uint8).numpy())
        features.append(frame_features.numpy())
    h, w = frames.shape[-3] // CELL, frames.shape[-2] // CELL
    if not cells:
        return ObjectPredictions(np.zeros((*lead, h, w), np.uint8), np.zeros((*lead, BOTTLENECK), np.float32))
    return ObjectPredictions(
        np.concatenate(cells).reshape(*lead, h, w), np.concatenate(features).reshape(*lead, BOTTLENECK)
    )
