"""A small reward and episode-end model: what the engine would have scored for a generated step.

Trained (``wm-video train reward``) on real consecutive frames of a dataset that recorded the
engine's reward and episode end (ViZDoom's ground truth, :mod:`wm_video.data.truth`), it reads
(frame t, frame t + 1, action t) and predicts the reward of action t and whether frame t + 1 is
the episode's last (the next action ends it: in Doom, the player dies). A world env steps with
it (:class:`RewardModel` is a reward function: ``(before, after, actions)`` → rewards and ends).

Design choices:
- The frame-pair network is the inverse-dynamics model's (:class:`~wm_video.eval.idm.InverseDynamics`:
  both frames and their difference at 32 px, four stride-2 convolutions), its output a feature
  vector; the action joins it before a two-layer head of reward-class logits and an end logit.
- Rewards are classes: the distinct values of the training pairs' rewards (Doom's Defend the
  Center: 0 and +1 per kill; at most :data:`MAX_CLASSES`). The prediction is the likeliest value,
  so quiet steps score exactly 0. The reward the engine gives on the ending action itself (the
  death penalty, −1 there) has no frame after it to learn from; it is added when an end is
  predicted (``end_reward``: its mean over the training episodes).
- Rare events: the losses weight each class by 1/√frequency (and the end logit by √(negatives /
  positives)); then the decision thresholds (how likely a nonzero reward or an end must be) are
  chosen for the best F1 on calibration episodes the model did not train on (the last 10 % of the
  training episodes). On Doom footage the kill ranking was good (AUC 0.995 on held-out pairs)
  but the argmax of the weighted model fired 4× too often.
- Scored on held-out episodes: precision and recall of reward events (positive and negative
  rewards) and of episode ends, exactly on the step and within ± ``tolerance`` steps.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from tqdm import tqdm

from wm_video.data.lerobot import read_json
from wm_video.envs.world_env import StepRewards
from wm_video.errors import DatasetError, InputError
from wm_video.eval.idm import IDMConfig, InverseDynamics, pair_frames, warmup_cosine
from wm_video.fileio import atomic_write, atomic_write_json

REWARD_VERSION = 1
REWARD_FILE = "reward.json"  # written last: a folder without it holds no reward model
WEIGHTS_FILE = "reward.safetensors"
MAX_CLASSES = 16
MIN_PAIRS = 16


@dataclass(frozen=True)
class RewardConfig:
    input_size: int = 32  # frames are area-resized to this many pixels a side
    channels: int = 16  # width of the first convolution (doubles twice)
    hidden: int = 64  # width of the pair features and the head
    steps: int = 2000  # optimizer steps
    batch_size: int = 64
    lr: float = 2e-3

    def __post_init__(self) -> None:
        if self.input_size < 16 or self.input_size % 16:
            raise InputError(f"input_size must be a multiple of 16, at least 16; got {self.input_size}")
        if min(self.channels, self.hidden, self.steps, self.batch_size) < 1 or not self.lr > 0:
            raise InputError(f"channels, hidden, steps and batch_size must be ≥ 1 and lr > 0; got {self}")


class RewardNet(nn.Module):
    """(frame t, frame t + 1) uint8 (B, H, W, 3) each, action t (B, A) → (reward logits (B, C), end logit (B,))."""

    def __init__(self, actions: int, classes: int, config: RewardConfig) -> None:
        super().__init__()
        pair = IDMConfig(input_size=config.input_size, channels=config.channels)
        self.pairs = InverseDynamics(config.hidden, pair)  # its "button logits" serve as pair features
        self.head = nn.Sequential(
            nn.ReLU(),
            nn.Linear(config.hidden + actions, config.hidden),
            nn.ReLU(),
            nn.Linear(config.hidden, classes + 1),
        )

    def forward(self, before: Tensor, after: Tensor, actions: Tensor) -> tuple[Tensor, Tensor]:
        out = self.head(torch.cat((self.pairs(before, after), actions.float()), 1))  # (B, C + 1)
        return out[:, :-1], out[:, -1]


@dataclass
class RewardModel:
    """A trained :class:`RewardNet` with what its outputs mean; callable as a world's reward function."""

    net: RewardNet
    values: tuple[float, ...]  # the reward of each class
    end_reward: float  # added when an end is predicted (the engine's reward of the ending action)
    action_names: tuple[str, ...]
    config: RewardConfig
    info: dict[str, Any] = field(default_factory=dict)  # what reward.json says: data, scores…

    event_threshold: float = (
        0.5  # a step earns a nonzero reward when its likeliest nonzero class is this likely
    )
    end_threshold: float = 0.5  # a step ends the episode when the end is this likely

    @torch.inference_mode()
    def probabilities(
        self, before: np.ndarray, after: np.ndarray, actions: np.ndarray, chunk: int = 256
    ) -> tuple[np.ndarray, np.ndarray]:
        """(reward-class probabilities (P, C), end probabilities (P,)) for uint8 frame pairs
        (P, H, W, 3) each and actions (P, A)."""
        actions = np.asarray(actions, dtype=np.float32)
        if actions.ndim != 2 or actions.shape[1] != len(self.action_names):
            raise InputError(
                f"this reward model reads {len(self.action_names)} actions ({', '.join(self.action_names)}); "
                f"got actions shaped {actions.shape}"
            )
        classes, ends = [np.zeros((0, len(self.values)), np.float32)], [np.zeros(0, np.float32)]
        for i in range(0, len(after), chunk):
            logits, end = self.net(
                torch.from_numpy(np.ascontiguousarray(before[i : i + chunk])),
                torch.from_numpy(np.ascontiguousarray(after[i : i + chunk])),
                torch.from_numpy(actions[i : i + chunk]),
            )
            classes.append(logits.float().softmax(1).numpy())
            ends.append(torch.sigmoid(end.float()).numpy())
        return np.concatenate(classes), np.concatenate(ends)

    def decide(self, classes: np.ndarray, ends: np.ndarray) -> StepRewards:
        """Rewards and ends from :meth:`probabilities` under the model's thresholds."""
        values = np.asarray(self.values, dtype=np.float32)
        index = classes.argmax(1)
        if 0.0 in self.values:  # a quiet step unless a nonzero reward is likely enough
            nonzero = classes.copy()
            nonzero[:, self.values.index(0.0)] = -1.0
            likeliest = nonzero.argmax(1)
            chosen = nonzero[np.arange(len(classes)), likeliest] >= self.event_threshold
            index = np.where(chosen, likeliest, self.values.index(0.0))
        terminated = ends >= self.end_threshold
        return StepRewards((values[index] + self.end_reward * terminated).astype(np.float32), terminated)

    def predict(self, before: np.ndarray, after: np.ndarray, actions: np.ndarray) -> StepRewards:
        """Rewards (P,) and ends (P,) for uint8 frame pairs (P, H, W, 3) each and actions (P, A)."""
        return self.decide(*self.probabilities(before, after, actions))

    def __call__(self, before: np.ndarray, after: np.ndarray, actions: np.ndarray) -> StepRewards:
        return self.predict(before, after, actions)


@dataclass(frozen=True)
class RewardData:
    """Real footage with its recorded reward and ends: rows of consecutive frames, episode after episode."""

    frames: np.ndarray  # (N, S, S, 3) uint8
    actions: np.ndarray  # (N, A) float32
    reward: np.ndarray  # (N,) float32: what action t earned
    done: np.ndarray  # (N,) bool: action t ended the episode
    starts: np.ndarray  # (E + 1,) int64 first row of each episode, then N

    def pairs(self, episodes: list[int]) -> np.ndarray:
        """Rows t of the episodes (positions) whose frame t + 1 is in the same episode."""
        rows = [np.arange(self.starts[e], self.starts[e + 1] - 1) for e in episodes]
        return np.concatenate(rows) if rows else np.empty(0, dtype=np.int64)

    def ends(self, episodes: list[int]) -> np.ndarray:
        return np.asarray([self.starts[e + 1] - 1 for e in episodes], dtype=np.int64)


@dataclass(frozen=True)
class RecordedFootage:
    """A dataset's real footage as the reward model reads it, and which episodes are held out."""

    data: RewardData
    action_names: tuple[str, ...]
    train: list[int]  # positions of the training episodes in ``data``
    heldout: list[int]
    episode_indices: np.ndarray  # (E,) the dataset's episode index of each position


def recorded_footage(
    root: Path, *, size: int = 64, holdout: float = 0.1, cache_dir: Path | None = None, progress: bool = True
) -> RecordedFootage:
    """The frame cache and the recorded reward and ends of the dataset ``root`` (its ground truth)."""
    from wm_video.data.cache import load_cache
    from wm_video.data.split import split_episodes
    from wm_video.data.truth import load_truth_cache

    cache = load_cache(Path(root), size=size, cache_root=cache_dir, progress=progress)
    truth = load_truth_cache(Path(root), size=size, progress=progress)
    if truth is None:
        raise InputError(
            f"{root}: the dataset recorded no reward or episode ends (no ground truth); collect one from "
            "ViZDoom with `wm-video collect` (it records them by default)"
        )
    indices = cache.episode_indices
    split = split_episodes(indices.tolist(), holdout)
    position = {int(index): e for e, index in enumerate(indices.tolist())}
    data = RewardData(cache.frames, cache.actions, truth.reward, truth.done, cache.episode_starts)
    return RecordedFootage(
        data,
        tuple(cache.action_names),
        [position[i] for i in split.train],
        [position[i] for i in split.heldout],
        indices,
    )


def _targets(data: RewardData, rows: np.ndarray, values: tuple[float, ...]) -> tuple[np.ndarray, np.ndarray]:
    """(reward class (P,), end (P,)) of pair rows: frame t + 1 is the last when action t + 1 ended the episode."""
    classes = np.searchsorted(np.asarray(values, dtype=np.float32), data.reward[rows])
    return classes, data.done[rows + 1]


def train_reward(
    data: RewardData,
    episodes: list[int],
    action_names: tuple[str, ...],
    *,
    config: RewardConfig | None = None,
    seed: int = 0,
    progress: bool = False,
    calibration: list[int] | None = None,
) -> RewardModel:
    """Train on the consecutive frame pairs of ``episodes`` (positions in ``data``); then choose the
    decision thresholds on the ``calibration`` episodes (default: 0.5)."""
    config = config or RewardConfig()
    rows = data.pairs(episodes)
    if len(rows) < MIN_PAIRS:
        raise InputError(
            f"{len(rows)} consecutive frame pairs to learn from; the reward model needs {MIN_PAIRS}"
        )
    values = tuple(float(v) for v in np.unique(data.reward[rows]))
    if len(values) > MAX_CLASSES:
        raise InputError(
            f"the recorded rewards take {len(values)} values; the reward model learns at most {MAX_CLASSES} "
            "(it classifies them)"
        )
    classes, ends = _targets(data, rows, values)
    last = data.ends(episodes)
    end_reward = float(data.reward[last][data.done[last]].mean()) if data.done[last].any() else 0.0
    torch.manual_seed(seed)
    net = RewardNet(len(action_names), len(values), config)
    counts = np.bincount(classes, minlength=len(values)).clip(1)
    class_weight = torch.from_numpy((counts.sum() / counts) ** 0.5).float()
    class_weight /= class_weight.min()
    end_rate = float(ends.mean()) if len(ends) else 0.0
    end_weight = torch.tensor(math.sqrt((1 - end_rate) / end_rate) if 0 < end_rate < 1 else 1.0)
    optimizer, schedule = warmup_cosine(net, config.lr, config.steps)
    small, first, second = pair_frames(data.frames, rows, config.input_size)  # pairs' frames, resized once
    rng = np.random.default_rng(seed)
    net.train()
    for _ in tqdm(range(config.steps), desc="reward model", disable=not progress, leave=False):
        batch = rng.choice(len(rows), min(config.batch_size, len(rows)), replace=False)
        logits, end = net(
            torch.from_numpy(small[first[batch]]),
            torch.from_numpy(small[second[batch]]),
            torch.from_numpy(data.actions[rows[batch]]),
        )
        loss = F.cross_entropy(logits, torch.from_numpy(classes[batch]), weight=class_weight)
        loss = loss + F.binary_cross_entropy_with_logits(
            end, torch.from_numpy(ends[batch]).float(), pos_weight=end_weight
        )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
    model = RewardModel(net.eval(), values, end_reward, tuple(action_names), config)
    if calibration:
        calibrate(model, data, calibration)
    return model


THRESHOLDS = np.round(np.arange(0.05, 1.0, 0.05), 2)


def _best_threshold(scores: np.ndarray, events: np.ndarray) -> float:
    """The threshold of :data:`THRESHOLDS` with the best F1 of ``scores ≥ threshold`` against ``events``
    (0.5 when there is no event to find)."""
    if not events.any():
        return 0.5
    f1 = [
        2 * float((events & (scores >= t)).sum()) / (events.sum() + (scores >= t).sum()) for t in THRESHOLDS
    ]
    return float(THRESHOLDS[int(np.argmax(f1))])


def calibrate(model: RewardModel, data: RewardData, episodes: list[int]) -> None:
    """Set the model's thresholds to those with the best F1 on ``episodes`` (not trained on)."""
    rows = data.pairs(episodes)
    classes, ends = model.probabilities(data.frames[rows], data.frames[rows + 1], data.actions[rows])
    target, end_target = _targets(data, rows, model.values)
    if 0.0 in model.values:
        zero = model.values.index(0.0)
        nonzero = np.delete(classes, zero, axis=1)
        score = nonzero.max(1) if nonzero.shape[1] else np.zeros(len(rows))
        model.event_threshold = _best_threshold(score, target != zero)
    model.end_threshold = _best_threshold(ends, end_target)


# -- scores ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class EventScore:
    events: int  # in the recorded footage
    predicted: int
    precision: (
        float  # share of predicted events with a recorded one within the tolerance (NaN: none predicted)
    )
    recall: float  # share of recorded events with a predicted one within the tolerance (NaN: none recorded)
    precision_exact: float  # the same, on the very step
    recall_exact: float


def _match(truth: list[np.ndarray], predicted: list[np.ndarray], tolerance: int) -> EventScore:
    """Precision and recall of event steps, per episode (arrays of step numbers)."""

    def near(a: np.ndarray, b: np.ndarray, k: int) -> int:
        return int(sum(np.any(np.abs(b - x) <= k) for x in a)) if len(b) else 0

    events, shown = sum(len(t) for t in truth), sum(len(p) for p in predicted)

    def ratio(hits: int, total: int) -> float:
        return hits / total if total else float("nan")

    pairs = list(zip(truth, predicted, strict=True))
    return EventScore(
        events,
        shown,
        ratio(sum(near(p, t, tolerance) for t, p in pairs), shown),
        ratio(sum(near(t, p, tolerance) for t, p in pairs), events),
        ratio(sum(near(p, t, 0) for t, p in pairs), shown),
        ratio(sum(near(t, p, 0) for t, p in pairs), events),
    )


def score_reward(
    model: RewardModel, data: RewardData, episodes: list[int], tolerance: int = 2
) -> dict[str, EventScore]:
    """Precision and recall on ``episodes`` of positive rewards, negative rewards and episode ends."""
    truth: dict[str, list[np.ndarray]] = {"positive reward": [], "negative reward": [], "episode end": []}
    found: dict[str, list[np.ndarray]] = {name: [] for name in truth}
    for e in episodes:
        rows = data.pairs([e])
        predicted = model.predict(data.frames[rows], data.frames[rows + 1], data.actions[rows])
        reward = predicted.reward - model.end_reward * predicted.terminated  # the pair's own reward
        _, ends = _targets(data, rows, model.values)
        for name, real, guess in (
            ("positive reward", data.reward[rows] > 0, reward > 0),
            ("negative reward", data.reward[rows] < 0, reward < 0),
            ("episode end", ends, predicted.terminated),
        ):
            truth[name].append(np.flatnonzero(real))
            found[name].append(np.flatnonzero(guess))
    return {name: _match(truth[name], found[name], tolerance) for name in truth}


def format_scores(scores: dict[str, EventScore], tolerance: int) -> str:
    lines = [
        f"{'event':<16} {'recorded':>8} {'predicted':>9} {'precision':>9} {'recall':>7}   (exact step: P / R)"
    ]
    for name, s in scores.items():
        lines.append(
            f"{name:<16} {s.events:>8} {s.predicted:>9} {s.precision:>9.2f} {s.recall:>7.2f}   "
            f"({s.precision_exact:.2f} / {s.recall_exact:.2f})"
        )
    lines.append(
        f"(an event counts as found within ±{tolerance} steps; NaN: none recorded or none predicted)"
    )
    return "\n".join(lines)


# -- files -----------------------------------------------------------------------------------------
def save_reward(model: RewardModel, folder: Path, info: dict[str, Any]) -> Path:
    """Write ``folder/reward.safetensors`` then ``folder/reward.json`` (the completion marker)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / REWARD_FILE).unlink(missing_ok=True)
    atomic_write(folder / WEIGHTS_FILE, lambda tmp: save_file(model.net.state_dict(), str(tmp)))
    record = {
        "version": REWARD_VERSION,
        "config": asdict(model.config),
        "values": list(model.values),
        "end_reward": model.end_reward,
        "event_threshold": model.event_threshold,
        "end_threshold": model.end_threshold,
        "action_names": list(model.action_names),
        **info,
    }
    atomic_write_json(folder / REWARD_FILE, record)
    model.info = record
    return folder


def load_reward(folder: Path) -> RewardModel:
    """The reward model ``wm-video train reward --out FOLDER`` wrote."""
    folder = Path(folder)
    path = folder / REWARD_FILE
    if not path.is_file():
        raise InputError(f"{path}: no reward model here (train one with `wm-video train reward`)")
    try:
        record = read_json(path, REWARD_FILE)
    except DatasetError as exc:
        raise InputError(str(exc)) from exc
    try:
        if record.get("version") != REWARD_VERSION:
            raise InputError(
                f"{path}: reward model version {record.get('version')}; this program reads {REWARD_VERSION}"
            )
        config = RewardConfig(**record["config"])
        values = tuple(float(v) for v in record["values"])
        names = tuple(str(n) for n in record["action_names"])
        net = RewardNet(len(names), len(values), config)
        net.load_state_dict(load_file(str(folder / WEIGHTS_FILE)))
    except (KeyError, TypeError, RuntimeError, OSError) as exc:
        raise InputError(f"{path}: not a reward model this program can load ({exc})") from exc
    return RewardModel(
        net.eval(),
        values,
        float(record.get("end_reward", 0.0)),
        names,
        config,
        record,
        float(record.get("event_threshold", 0.5)),
        float(record.get("end_threshold", 0.5)),
    )
