"""A small inverse-dynamics model (IDM): which buttons were held between two consecutive frames.

It is an evaluation instrument, not a world model: trained on the real consecutive frame pairs
of a dataset's training episodes, it then reads generated frame pairs. If a world model obeys
its actions, the IDM recovers them from its frames about as well as from real ones (MineWorld
scores its videos this way); a model that ignores actions leaves the IDM guessing. Nothing in
it is game-specific, so it works for any dataset with button actions.

Design choices:
- Input: frame t, frame t + 1 and their difference, area-resized to ``input_size`` (32 px is
  enough to see a turn or a step; 1,200 steps on 8,714 pairs took under 90 s on one busy core); four
  stride-2 convolutions, pooled to 2×2 (left/right stays visible), one linear layer of button
  logits. Loss: binary cross-entropy per button with ``pos_weight`` = negatives / positives, so
  rarely pressed buttons are not ignored.
- Cached: ``<frame cache's parent>/idm-<key>/idm.safetensors`` (+ ``idm.json``), the key hashing
  the frame cache's fingerprint, the training episodes, the config, the seed and
  :data:`IDM_VERSION`; a second evaluation of the same dataset loads it instead of training.
- Scores (:func:`score_actions`): per-button accuracy and F1 over the buttons that vary in the
  training data (pressed in 1–99 % of pairs; a button never pressed tells nothing), their mean
  F1, and the share of pairs whose every varying button is right.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from tqdm import tqdm

from wm_video.data.cache import TrainingCache
from wm_video.errors import InputError
from wm_video.eval.clips import check_stop
from wm_video.fileio import atomic_write, atomic_write_json

IDM_VERSION = 1
MIN_PAIRS = 16  # fewer real training pairs than this cannot train an IDM
VARYING_MIN = 0.01  # a button pressed in fewer (or more than 1 − this) of the pairs is not scored


@dataclass(frozen=True)
class IDMConfig:
    input_size: int = 32  # frames are area-resized to this many pixels a side
    channels: int = 16  # width of the first convolution (doubles twice)
    steps: int = 1200  # optimizer steps
    batch_size: int = 64
    lr: float = 2e-3

    def __post_init__(self) -> None:
        if self.input_size < 16 or self.input_size % 16:
            raise InputError(f"IDM input_size must be a multiple of 16, at least 16; got {self.input_size}")
        if min(self.channels, self.steps, self.batch_size) < 1 or self.lr <= 0:
            raise InputError(f"IDM channels, steps and batch_size must be ≥ 1 and lr > 0; got {self}")


class InverseDynamics(nn.Module):
    """(frame t, frame t + 1) uint8 (B, H, W, 3) each → button logits (B, buttons)."""

    def __init__(self, buttons: int, config: IDMConfig) -> None:
        super().__init__()
        self.config = config
        c = config.channels
        widths = [9, c, 2 * c, 4 * c, 4 * c]
        layers: list[nn.Module] = []
        for w_in, w_out in zip(widths[:-1], widths[1:], strict=True):
            layers += [nn.Conv2d(w_in, w_out, 4, stride=2, padding=1), nn.GroupNorm(4, w_out), nn.ReLU()]
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(2))
        self.head = nn.Linear(4 * widths[-1], buttons)

    def prepare(self, before: Tensor, after: Tensor) -> Tensor:
        """uint8 (B, H, W, 3) pairs → float (B, 9, S, S): both frames in [-1, 1] and their difference."""
        size = self.config.input_size
        x = torch.stack((before, after), 1).float().div(127.5).sub(1.0)  # (B, 2, H, W, 3)
        x = x.permute(0, 1, 4, 2, 3).flatten(1, 2)  # (B, 6, H, W)
        if x.shape[-1] != size or x.shape[-2] != size:
            x = F.interpolate(x, size=(size, size), mode="area")
        return torch.cat((x, x[:, 3:] - x[:, :3]), 1)  # (B, 9, S, S)

    def forward(self, before: Tensor, after: Tensor) -> Tensor:
        return self.head(self.features(self.prepare(before, after)).flatten(1))


def pair_rows(cache: TrainingCache, episodes: list[int]) -> np.ndarray:
    """Rows r of the frame cache whose next row r + 1 is in the same episode, for ``episodes``."""
    wanted = set(episodes)
    rows = [
        np.arange(cache.episode_starts[e], cache.episode_starts[e + 1] - 1)
        for e, index in enumerate(cache.episode_indices.tolist())
        if index in wanted
    ]
    return np.concatenate(rows) if rows else np.empty(0, dtype=np.int64)


def resized_rows(frames: np.ndarray, rows: np.ndarray, size: int, chunk: int = 1024) -> np.ndarray:
    """The frames (N, S, S, 3) of ``rows`` area-resized to ``size`` px, uint8 (R, size, size, 3), in chunks."""
    out = np.empty((len(rows), size, size, 3), dtype=np.uint8)
    for i in range(0, len(rows), chunk):
        block = torch.from_numpy(np.asarray(frames[rows[i : i + chunk]])).permute(0, 3, 1, 2).float()
        small = F.interpolate(block, size=(size, size), mode="area") if block.shape[-1] != size else block
        out[i : i + chunk] = small.round().clamp(0, 255).byte().permute(0, 2, 3, 1).numpy()
    return out


def pair_frames(frames: np.ndarray, rows: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every frame of the pairs (row, row + 1) resized once to ``size`` px: (frames (F, size, size, 3),
    positions in them of each pair's first frame (P,), of its second (P,))."""
    needed = np.union1d(rows, rows + 1)
    small = resized_rows(frames, needed, size)
    return small, np.searchsorted(needed, rows), np.searchsorted(needed, rows + 1)


def warmup_cosine(
    model: nn.Module, lr: float, steps: int
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW (weight decay 1e-4) with a linear warm-up over a tenth of ``steps``, then a cosine to 0."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    warmup = max(1, steps // 10)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * step / steps))
    )
    return optimizer, schedule


def varying_buttons(pressed: np.ndarray) -> list[int]:
    """Columns of a (P, buttons) 0/1 array pressed in between 1 % and 99 % of the rows."""
    rate = pressed.mean(axis=0)
    return [i for i, r in enumerate(rate.tolist()) if VARYING_MIN <= r <= 1 - VARYING_MIN]


@dataclass
class TrainedIDM:
    model: InverseDynamics
    buttons: tuple[str, ...]
    varying: list[int]  # button columns scored
    path: Path | None  # where it is cached
    reused: bool  # loaded from the cache instead of trained
    train_pairs: int


def _cache_key(cache: TrainingCache, episodes: list[int], config: IDMConfig, buttons: int, seed: int) -> str:
    text = json.dumps(
        {
            "v": IDM_VERSION,
            "data": cache.fingerprint,
            "episodes": sorted(episodes),
            "config": asdict(config),
            "buttons": buttons,
            "seed": seed,
        },
        sort_keys=True,
    )
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def train_idm(
    cache: TrainingCache,
    episodes: list[int],
    buttons: int,
    *,
    config: IDMConfig | None = None,
    seed: int = 0,
    stop: Callable[[], bool] | None = None,
    progress: bool = False,
) -> tuple[InverseDynamics, int]:
    """Train on the consecutive frame pairs of ``episodes``; the first ``buttons`` action columns."""
    config = config or IDMConfig()
    rows = pair_rows(cache, episodes)
    if len(rows) < MIN_PAIRS:
        raise InputError(
            f"{cache.path}: {len(rows)} consecutive frame pairs in the training episodes; the inverse-"
            f"dynamics model needs at least {MIN_PAIRS}"
        )
    if buttons < 1:
        raise InputError(
            f"{cache.path}: the actions have no buttons, so there is nothing for an IDM to predict"
        )
    torch.manual_seed(seed)
    model = InverseDynamics(buttons, config)
    pressed = (cache.actions[rows, :buttons] > 0.5).astype(np.float32)
    positives = pressed.mean(axis=0).clip(1e-3, 1 - 1e-3)
    pos_weight = torch.from_numpy((1 - positives) / positives).float()
    optimizer, schedule = warmup_cosine(model, config.lr, config.steps)
    small, first, second = pair_frames(cache.frames, rows, config.input_size)
    rng = np.random.default_rng(seed)
    model.train()
    for _ in tqdm(range(config.steps), desc="inverse dynamics", disable=not progress, leave=False):
        check_stop(stop)
        batch = rng.choice(len(rows), min(config.batch_size, len(rows)), replace=False)
        before = torch.from_numpy(small[first[batch]])
        after = torch.from_numpy(small[second[batch]])
        target = torch.from_numpy(pressed[batch])
        loss = F.binary_cross_entropy_with_logits(model(before, after), target, pos_weight=pos_weight)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
    return model.eval(), len(rows)


def load_or_train_idm(
    cache: TrainingCache,
    episodes: list[int],
    button_names: tuple[str, ...],
    *,
    cache_dir: Path | None = None,
    config: IDMConfig | None = None,
    seed: int = 0,
    stop: Callable[[], bool] | None = None,
    progress: bool = False,
) -> TrainedIDM:
    """The cached IDM for this dataset, its training episodes and config; trained and saved if missing."""
    config = config or IDMConfig()
    buttons = len(button_names)
    key = _cache_key(cache, episodes, config, buttons, seed)
    folder = Path(cache_dir) if cache_dir is not None else Path(cache.path).parent
    folder = folder / f"idm-{key}"
    weights, info = folder / "idm.safetensors", folder / "idm.json"
    rows = pair_rows(cache, episodes)
    varying = varying_buttons(cache.actions[rows, :buttons] > 0.5)
    if weights.is_file() and info.is_file():
        model = InverseDynamics(buttons, config)
        try:
            model.load_state_dict(load_file(weights))
        except (RuntimeError, OSError) as exc:
            raise InputError(
                f"{weights}: cannot load the cached inverse-dynamics model ({exc}); delete it"
            ) from exc
        return TrainedIDM(model.eval(), button_names, varying, folder, True, len(rows))
    model, pairs = train_idm(cache, episodes, buttons, config=config, seed=seed, stop=stop, progress=progress)
    atomic_write(weights, lambda tmp: save_file(model.state_dict(), str(tmp)))
    atomic_write_json(
        info,
        {
            "version": IDM_VERSION,
            "data": str(cache.path),
            "fingerprint": cache.fingerprint,
            "episodes": sorted(episodes),
            "buttons": list(button_names),
            "config": asdict(config),
            "seed": seed,
            "train_pairs": pairs,
        },
    )
    return TrainedIDM(model, button_names, varying, folder, False, pairs)


@dataclass
class ActionScores:
    pairs: int
    accuracy: dict[str, float]  # per varying button: share of pairs predicted right
    f1: dict[str, float]  # per varying button
    mean_f1: float  # over varying buttons
    exact: float  # share of pairs with every varying button right
    readable_mean_f1: float | None = (
        None  # over the buttons the IDM reads from real frames (see readable_buttons)
    )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


READABLE_F1 = 0.5  # a button the IDM finds with F1 ≥ this on real pairs is "readable" from frames


def readable_buttons(real: ActionScores) -> list[str]:
    """Buttons whose effect the IDM sees in real frames (F1 ≥ 0.5 on real pairs). Others (in Doom:
    "use" on nothing, "attack" without a target, a strafe into a wall) leave the frames unchanged
    and would only add chance-level noise to a mean."""
    return [name for name, f1 in real.f1.items() if f1 >= READABLE_F1]


def with_readable(scores: ActionScores, buttons: list[str]) -> ActionScores:
    """``scores`` with ``readable_mean_f1`` set to the mean F1 over ``buttons`` (None when empty)."""
    values = [scores.f1[b] for b in buttons if b in scores.f1]
    return replace(scores, readable_mean_f1=float(np.mean(values)) if values else None)


@torch.inference_mode()
def predict_buttons(idm: TrainedIDM, before: np.ndarray, after: np.ndarray, chunk: int = 256) -> np.ndarray:
    """0/1 button predictions (P, buttons) for uint8 frame pairs (P, H, W, 3) each."""
    out = []
    for i in range(0, len(before), chunk):
        logits = idm.model(
            torch.from_numpy(np.ascontiguousarray(before[i : i + chunk])),
            torch.from_numpy(np.ascontiguousarray(after[i : i + chunk])),
        )
        out.append((logits > 0).numpy())
    return np.concatenate(out) if out else np.empty((0, len(idm.buttons)), dtype=bool)


def score_actions(
    idm: TrainedIDM, before: np.ndarray, after: np.ndarray, actions: np.ndarray
) -> ActionScores:
    """How well the IDM recovers ``actions`` (P, A) from pairs (P, H, W, 3) of uint8 frames."""
    if not (len(before) == len(after) == len(actions)) or len(before) == 0:
        raise InputError(
            f"need as many frame pairs as actions (≥ 1); got {len(before)}, {len(after)}, {len(actions)}"
        )
    predicted = predict_buttons(idm, before, after)  # (P, buttons)
    truth = actions[:, : len(idm.buttons)] > 0.5
    accuracy, f1 = {}, {}
    for i in idm.varying:
        name, p, t = idm.buttons[i], predicted[:, i], truth[:, i]
        accuracy[name] = float((p == t).mean())
        hits = float((p & t).sum())
        f1[name] = 2 * hits / max(float(p.sum() + t.sum()), 1.0)
    columns = idm.varying or list(range(len(idm.buttons)))
    exact = float((predicted[:, columns] == truth[:, columns]).all(axis=1).mean())
    mean_f1 = float(np.mean(list(f1.values()))) if f1 else float("nan")
    return ActionScores(len(before), accuracy, f1, mean_f1, exact)
