"""``wm-video eval``, "What a player sees": objects, shooting, texture, distribution distance, revisits.

PSNR rewards an average arena with nothing in it. This part of the consistency run measures what
a player notices, from the ground truth the engine recorded (:mod:`wm_video.data.truth`):

1. :func:`prepare` (once, shared by every checkpoint): the object model (:mod:`.objects`, cached)
   and what it sees on the held-out footage against the labels (its precision and recall), and on
   held-out frames without a monster with tile artefacts pasted in (:mod:`.tiles`); the
   real footage's presence and appearance rates; which clips start with a monster in view (for
   persistence: the drift clips that do, and more when too few do); revisits found in the recorded poses (:mod:`.revisits`); the engine playing
   "attack held" (:mod:`.shooting`); sets of real clips disjoint from the evaluation clips, as
   the Fréchet reference (:mod:`.frechet`; four such sets, as one set's distance varies by a factor
   of ~3 from draw to draw).
2. :func:`evaluate` (per checkpoint): the same figures on its frames — drift rollouts,
   teacher-forced frames, extra rollouts for persistence, revisits and held attack — plus texture
   (:mod:`.texture`), which needs no labels, and the object model on its soak
   (:class:`SoakObserver`).

A dataset without ground truth (Atari, imported footage) gets texture only, and the report says
why the rest was skipped.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from wm_video.data.cache import TrainingCache
from wm_video.data.truth import TruthCache
from wm_video.eval import presence, shooting, texture
from wm_video.eval.clips import EngineSpec, EvalClips
from wm_video.eval.loops import LoopConfig
from wm_video.eval.objects import ObjectConfig, TrainedObjects, cell_targets, load_or_train_objects, predict
from wm_video.eval.revisits import RevisitConfig, find_revisits
from wm_video.eval.tiles import colour_pool, paste_tiles
from wm_video.sources.truth import CLASS_ID

REPORTED = ("monster", "projectile", "flash")  # the classes that matter to a player, when learnt
FLOOR_SETS = 4  # sets of real clips the Fréchet distances are averaged over (and the floor's spread)
TILE_FRAMES = 512  # held-out frames without a monster that get tiles pasted, for the false-positive figure


@dataclass(frozen=True)
class PlayerConfig:
    persistence_clips: int = (
        8  # at least (the drift clips that qualify, topped up with rollouts of their own)
    )
    revisits: RevisitConfig = field(default_factory=RevisitConfig)
    objects: ObjectConfig = field(default_factory=ObjectConfig)
    soak_every: int = 4  # the object model reads one of every N chunks of 256 soak frames
    min_recall: float = (
        0.5  # a class the object model finds in fewer of the real frames showing it is not reported
    )


@dataclass
class Footage:
    """Labelled real frames of the evaluation episodes, as the object model sees them."""

    rows: np.ndarray  # (N,) cache rows, episode after episode
    spans: list[tuple[int, int]]  # (offset into rows, length) of each episode
    labels: np.ndarray  # (N, h, w) cells from the engine's labels
    seen: np.ndarray  # (N, h, w) cells predicted on the real frames
    features: np.ndarray  # (N, d)

    def sequences(self, shown: np.ndarray) -> list[np.ndarray]:
        return [shown[offset : offset + length] for offset, length in self.spans]

    def at(self, rows: np.ndarray) -> np.ndarray:
        """Positions in the footage of cache ``rows`` (any shape; every row must be in it)."""
        positions = np.searchsorted(self.rows, rows)
        if not np.array_equal(self.rows[np.minimum(positions, len(self.rows) - 1)], rows):
            raise ValueError("rows outside the labelled footage")
        return positions


@dataclass
class Setup:
    objects: TrainedObjects
    classes: list[str]  # reported classes the object model learnt
    footage: Footage
    sight_real: dict[str, presence.Sight]
    tile_frames: dict[str, float]  # monster in view on held-out monster-free frames, before / after tiles
    real_rates: dict[str, dict[str, float]]  # class → presence and appearances, labels and object model
    real_texture: dict[str, float]  # sharpness and high-frequency share of the footage
    persistence_drift: np.ndarray  # (B,) bool: drift clips whose last context frame shows a monster
    persistence_starts: np.ndarray  # (P,) cache rows of more such clip starts, rolled out for persistence
    revisits: list[tuple[int, int]]  # (row at t0, row at t1)
    held: shooting.HeldAttack | None
    floor_features: list[np.ndarray]  # sets (B, H, d) of real clips, each disjoint from the evaluation clips
    clip_rows: np.ndarray | None  # (B, L) cache rows of the evaluation clips (None: live clips)
    context: int
    horizon: int
    notes: list[str]


def _cells(objects: TrainedObjects, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    seen = predict(objects, frames)
    return seen.cells, seen.features


def shown_in(cells: np.ndarray, name: str) -> np.ndarray:
    """(..., h, w) cells → (...) bool: the class ``name`` is present (see :mod:`.presence`)."""
    return presence.present(cells, CLASS_ID[name], presence.min_cells(name))


def _rates(footage: Footage, cells: np.ndarray, name: str) -> dict[str, float]:
    shown = shown_in(cells, name)
    per_episode = [presence.appearances_per_1000(s) for s in footage.sequences(shown)]
    counted = [
        (a, len(s)) for a, s in zip(per_episode, footage.sequences(shown), strict=True) if np.isfinite(a)
    ]
    weighted = sum(a * n for a, n in counted) / max(sum(n for _, n in counted), 1)
    return {"presence": float(shown.mean()), "appearances_per_1000": float(weighted)}


def tile_false_positives(
    objects: TrainedObjects,
    footage: Footage,
    frames: np.ndarray,
    classes: np.ndarray,
    tiles: tuple[int, ...],
    rng: np.random.Generator,
) -> dict[str, float]:
    """How often the object model calls a monster in view on up to :data:`TILE_FRAMES` footage frames
    whose labels show none, as they are and with tile artefacts pasted over their background
    (frames (N, H, W, 3) and pixel class maps (N, H, W) of the footage; tile colours from its monsters)."""
    empty = np.flatnonzero(~shown_in(footage.labels, "monster"))
    chosen = np.sort(rng.choice(empty, min(len(empty), TILE_FRAMES), replace=False))
    if not len(chosen):
        return {"frames": 0, "before": float("nan"), "after": float("nan")}
    pool = colour_pool(frames, classes, rng)
    tiled, _ = paste_tiles(frames[chosen], classes[chosen], pool, tiles, rng)
    return {
        "frames": len(chosen),
        "before": float(shown_in(footage.seen[chosen], "monster").mean()),
        "after": float(shown_in(predict(objects, tiled).cells, "monster").mean()),
    }


def _episode_rows(cache: TrainingCache, episodes: list[int]) -> tuple[np.ndarray, list[tuple[int, int]]]:
    rows, spans, offset = [], [], 0
    for position, index in enumerate(cache.episode_indices.tolist()):
        if index in set(episodes):
            span = cache.episode_rows(position)
            rows.append(np.arange(span.start, span.stop))
            spans.append((offset, span.stop - span.start))
            offset += span.stop - span.start
    return np.concatenate(rows), spans


def prepare(
    cache: TrainingCache,
    truth: TruthCache,
    train_episodes: list[int],
    eval_episodes: list[int],
    clips: EvalClips,
    engine: EngineSpec | None,
    config: PlayerConfig,
    *,
    live: bool,
    loops: LoopConfig,
    context: int,
    horizon: int,
    seed: int,
    cache_dir: Any = None,
    stop: Callable[[], bool] | None = None,
    progress: bool = False,
    log: Callable[[str], None] = print,
) -> Setup:
    """Everything the checkpoints share (see the module doc)."""
    notes: list[str] = []
    train_rows, _ = _episode_rows(cache, train_episodes)
    log(f"object model on {len(train_rows)} frames of {len(train_episodes)} training episodes")
    objects = load_or_train_objects(
        cache,
        truth,
        train_rows,
        train_episodes,
        cache_dir=cache_dir,
        config=config.objects,
        stop=stop,
        progress=progress,
    )
    log(f"  {'reused' if objects.reused else 'trained and cached'}: {objects.path}")
    count = len(truth.class_names)
    rows, spans = _episode_rows(cache, eval_episodes)
    frames, pixel_classes = np.asarray(cache.frames[rows]), np.asarray(truth.classes[rows])
    labels = cell_targets(pixel_classes, count)
    seen, features = _cells(objects, frames)
    footage = Footage(rows, spans, labels, seen, features)
    real_texture = {
        "sharpness": float(texture.sharpness(frames).mean()),
        "high_frequency": float(texture.high_frequency_share(frames).mean()),
    }
    classes = [name for name in REPORTED if CLASS_ID[name] in objects.trained_classes]
    missing = [name for name in REPORTED if name not in classes]
    if missing:
        notes.append(
            f"not in the training footage often enough to learn (< {config.objects.min_train_cells} cells): "
            + ", ".join(missing)
        )
    sight_real = {n: presence.sight(seen, labels, CLASS_ID[n], presence.min_cells(n)) for n in classes}
    blind = [n for n in classes if not sight_real[n].frame_recall >= config.min_recall]
    if blind:
        notes.append(
            "not reported, the object model does not see them in the held-out real frames that show them "
            "(recall of 'in view' below "
            f"{config.min_recall}): " + ", ".join(f"{n} ({sight_real[n].frame_recall:.2f})" for n in blind)
        )
        classes = [n for n in classes if n not in blind]

    def rng(purpose: int) -> np.random.Generator:  # one stream per choice: one changes no other
        return np.random.default_rng([seed, purpose])

    tile_frames = {}
    if CLASS_ID["monster"] in objects.trained_classes:
        tile_frames = tile_false_positives(
            objects, footage, frames, pixel_classes, config.objects.tiles, rng(7)
        )
    real_rates = {
        n: {f"labels_{k}": v for k, v in _rates(footage, labels, n).items()}
        | {f"objects_{k}": v for k, v in _rates(footage, seen, n).items()}
        for n in classes
    }

    clip_rows = None
    if not live:
        position = {int(e): p for p, e in enumerate(cache.episode_indices.tolist())}
        first = (
            np.array([cache.episode_starts[position[int(e)]] for e in clips.episodes.tolist()]) + clips.starts
        )
        clip_rows = first[:, None] + np.arange(clips.length)
    # Persistence: the drift clips whose last context frame shows a monster, topped up with more
    # such clips from the footage (their own rollouts) when fewer than config.persistence_clips.
    persistence_drift = np.zeros(clips.count, bool)
    if clip_rows is not None and "monster" in classes:
        persistence_drift = shown_in(labels[footage.at(clip_rows[:, context - 1])], "monster")
    length, starts = context + horizon, []
    for offset, episode_length in spans:  # clip starts whose last context frame shows a monster
        for s in range(0, episode_length - length + 1, 4):
            if "monster" in classes and shown_in(labels[offset + s + context - 1], "monster"):
                starts.append(rows[offset + s])
    extra = min(len(starts), max(0, config.persistence_clips - int(persistence_drift.sum())))
    persistence_starts = (
        np.sort(rng(1).choice(starts, extra, replace=False)) if extra else np.empty(0, np.int64)
    )
    revisits = []
    for offset, episode_length in spans:
        pose = truth.state[rows[offset] : rows[offset] + episode_length]
        revisits += [
            (rows[offset] + a, rows[offset] + b) for a, b in find_revisits(pose, config.revisits, context - 1)
        ]
    if len(revisits) > config.revisits.count:
        revisits = [
            revisits[i] for i in sorted(rng(2).choice(len(revisits), config.revisits.count, replace=False))
        ]
    held = None
    if engine is None:
        notes.append("shooting with attack held skipped: the dataset does not record its engine")
    elif "flash" in classes:
        log(f"attack held for {horizon} frames on {engine}")
        held = shooting.hold_attack(
            engine, context=context, steps=horizon, seed=seed, config=loops, stop=stop
        )
    floors = [
        _floor_clips(footage, clip_rows, clips.count, context + horizon, rng(3 + k))
        for k in range(FLOOR_SETS)
    ]
    floor_features = [footage.features[floor][:, context:] for floor in floors if floor is not None]
    if not floor_features:
        notes.append("Fréchet distance skipped: too few held-out frames for a second, disjoint set of clips")
    return Setup(
        objects, classes, footage, sight_real, tile_frames, real_rates, real_texture, persistence_drift, persistence_starts,
        revisits, held,
        floor_features, clip_rows, context, horizon, notes,
    )  # fmt: skip


def _floor_clips(
    footage: Footage, clip_rows: np.ndarray | None, count: int, length: int, rng: np.random.Generator
) -> np.ndarray | None:
    """(count, length) indices into the footage of clips that share no frame with the evaluation
    clips (cache rows ``clip_rows``, None for live clips) nor with each other."""
    used = np.isin(footage.rows, clip_rows) if clip_rows is not None else np.zeros(len(footage.rows), bool)
    free = [
        offset + s
        for offset, episode_length in footage.spans
        for s in range(0, episode_length - length + 1)
        if not used[offset + s : offset + s + length].any()
    ]
    chosen: list[int] = []
    for s in rng.permutation(free).tolist():  # greedily, without overlaps between the chosen
        if all(abs(s - c) >= length for c in chosen):
            chosen.append(s)
        if len(chosen) == count:
            return np.asarray(sorted(chosen))[:, None] + np.arange(length)
    return None
