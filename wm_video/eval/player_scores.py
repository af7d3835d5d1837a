"""One checkpoint's "What a player sees" figures (what the checkpoints share: :mod:`.player`).

Real frames are judged by the engine's labels (the truth: is a monster there?) and by the object
model (what the instrument makes of real frames: a like-for-like reference); generated frames by
the object model alone, whose precision and recall on real and reconstructed frames the report
shows beside them.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from wm_video.data.cache import TrainingCache
from wm_video.data.truth import TruthCache
from wm_video.dynamics import DynamicsModel
from wm_video.engine import World
from wm_video.eval import frechet, presence, shooting, texture
from wm_video.eval.clips import EvalClips
from wm_video.eval.objects import ObjectPredictions, TrainedObjects, cell_targets, predict
from wm_video.eval.player import Setup, shown_in
from wm_video.eval.presence import Persistence, Sight
from wm_video.eval.revisits import RevisitScores
from wm_video.eval.rollouts import ClipScores, frame_scores, rollout
from wm_video.eval.tokenizer import reconstruct_episode
from wm_video.sources.truth import CLASS_ID
from wm_video.tokenizer import VideoTokenizer

SEGMENT = 1000  # soak frames per row of the soak table
EMPTY_SHARE = 0.25  # a soak segment showing a class this much less often than the footage has "emptied"


@dataclass
class SoakView:
    """The object model and texture measures over a soak, per segment of :data:`SEGMENT` frames."""

    observed: int  # frames the object model read (a sample of the soak: PlayerConfig.soak_every)
    segments: list[int]  # first frame of each segment
    presence: dict[str, list[float]]  # class → share of observed frames showing it, per segment
    appearances_per_1000: dict[str, list[float]]
    sharpness: list[float]
    high_frequency: list[float]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def emptied(self, name: str, real_presence: float) -> int | None:
        """First frame of the first segment where ``name`` is in view in less than :data:`EMPTY_SHARE`
        of the share of frames the real footage shows it in: the world has emptied. None: never."""
        for start, share in zip(self.segments, self.presence.get(name, []), strict=False):
            if share < EMPTY_SHARE * real_presence:
                return start
        return None


class SoakObserver:
    """Called by the soak with each chunk of frames (first frame index, frames); reads one in ``every``."""

    def __init__(self, objects: TrainedObjects, classes: list[str], every: int) -> None:
        self.objects, self.classes, self.every = objects, classes, max(1, every)
        self._chunks = 0
        self._parts: list[tuple[int, dict[str, np.ndarray], np.ndarray, np.ndarray]] = []

    def __call__(self, first: int, frames: np.ndarray) -> None:
        self._chunks += 1
        if (self._chunks - 1) % self.every:
            return
        cells = predict(self.objects, frames).cells
        shown = {name: shown_in(cells, name) for name in self.classes}
        self._parts.append((first, shown, texture.sharpness(frames), texture.high_frequency_share(frames)))

    def result(self) -> SoakView:
        segments = sorted({first // SEGMENT * SEGMENT for first, *_ in self._parts})
        view = SoakView(sum(len(p[2]) for p in self._parts), segments, {}, {}, [], [])
        for segment in segments:
            parts = [p for p in self._parts if p[0] // SEGMENT * SEGMENT == segment]
            for name in self.classes:
                shown = [p[1][name] for p in parts]
                view.presence.setdefault(name, []).append(float(np.concatenate(shown).mean()))
                events = sum(
                    presence.appearances_per_1000(s) * (len(s) - presence.APPEARANCE_GAP) for s in shown
                )
                counted = sum(len(s) - presence.APPEARANCE_GAP for s in shown)
                view.appearances_per_1000.setdefault(name, []).append(
                    events / counted if counted > 0 else float("nan")
                )
            view.sharpness.append(float(np.concatenate([p[2] for p in parts]).mean()))
            view.high_frequency.append(float(np.concatenate([p[3] for p in parts]).mean()))
        return view


@dataclass
class ModelView:
    presence: dict[str, dict[str, float]] = field(default_factory=dict)  # class → where → share of frames
    persistence: dict[str, Persistence] = field(default_factory=dict)
    appearances: dict[str, dict[str, float]] = field(
        default_factory=dict
    )  # class → generated / tokenizer, per 1,000
    teacher_iou: dict[str, dict[str, float]] = field(
        default_factory=dict
    )  # class → generated / real / tokenizer
    sight_tokenizer: dict[str, Sight] = field(default_factory=dict)
    flash_held: dict[str, shooting.FlashScores] = field(default_factory=dict)
    flash_real_actions: dict[str, shooting.FlashScores] = field(default_factory=dict)
    texture: texture.TextureCurve | None = None
    frechet: dict[str, float] = field(
        default_factory=dict
    )  # generated / tokenizer / real (the floor): mean, min, max
    revisits: RevisitScores | None = None
    soak: SoakView | None = None
    tokenizer_footage: dict[str, float] = field(default_factory=dict)  # the footage through the tokenizer
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {k: _plain(v) for k, v in vars(self).items()}


def _plain(value: Any) -> Any:
    if hasattr(value, "to_dict"):
        return value.to_dict()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


@dataclass
class _Model:
    tokenizer: VideoTokenizer
    dynamics: DynamicsModel
    seed: int
    stop: Callable[[], bool] | None

    def roll(self, frames: np.ndarray, actions: np.ndarray, program: np.ndarray) -> np.ndarray:
        """From context frames (B, C, …) and the C − 1 actions between them, generate (B, S, …)."""
        world = World(self.tokenizer, self.dynamics, batch_size=len(frames), seed=self.seed)
        return rollout(world, frames, actions, program, seed=self.seed, stop=self.stop)


def evaluate(
    setup: Setup,
    cache: TrainingCache,
    truth: TruthCache,
    clips: EvalClips,
    scores: ClipScores,
    tokenizer: VideoTokenizer,
    dynamics: DynamicsModel,
    rebuilt: np.ndarray,
    *,
    seed: int,
    stop: Callable[[], bool] | None = None,
) -> ModelView:
    """One checkpoint's figures; ``rebuilt`` (N, H, W, 3): the footage through its tokenizer."""
    started, view, model = time.perf_counter(), ModelView(), _Model(tokenizer, dynamics, seed, stop)
    footage, c = setup.footage, setup.context
    seen_rebuilt = predict(setup.objects, rebuilt)
    for name in setup.sight_real:  # every learnt class, reported or not
        k, least = CLASS_ID[name], presence.min_cells(name)
        view.sight_tokenizer[name] = presence.sight(seen_rebuilt.cells, footage.labels, k, least)
    for name in setup.classes:
        view.tokenizer_footage[f"{name} presence"] = float(shown_in(seen_rebuilt.cells, name).mean())
    view.tokenizer_footage["sharpness"] = float(texture.sharpness(rebuilt).mean())
    view.tokenizer_footage["high_frequency"] = float(texture.high_frequency_share(rebuilt).mean())
    generated, real = predict(setup.objects, scores.generated), predict(setup.objects, clips.frames[:, c:])
    labels = None  # (B, L, h, w) the clips' labelled cells (dataset clips only)
    if setup.clip_rows is not None:
        cells = cell_targets(np.asarray(truth.classes[setup.clip_rows.ravel()]), len(truth.class_names))
        labels = cells.reshape(*setup.clip_rows.shape, *cells.shape[-2:])
        rebuilt_clips = rebuilt[footage.at(setup.clip_rows)]
    else:  # live clips are not in the footage: reconstruct them
        rebuilt_clips = np.stack([reconstruct_episode(tokenizer, clip) for clip in clips.frames])
    rebuilt_future = predict(setup.objects, rebuilt_clips[:, c:])
    _objects(setup, scores, (generated, real, rebuilt_future), labels, seen_rebuilt, view)
    extra = _persistence(setup, cache, truth, model, (generated, rebuilt_future, labels), seen_rebuilt, view)
    for name in setup.classes:
        sequences = [shown_in(generated.cells, name)] + (
            [extra] if name == "monster" and extra is not None else []
        )
        events = sum(
            presence.appearances_per_1000(s) * s[:, presence.APPEARANCE_GAP :].size for s in sequences
        )
        view.appearances[name] = {
            "generated": events / sum(s[:, presence.APPEARANCE_GAP :].size for s in sequences),
            "tokenizer": footage_appearances(setup, seen_rebuilt.cells, name),
        }
    if setup.held is not None:
        held = setup.held
        program = np.broadcast_to(held.program, (len(held.frames), *held.program.shape)).copy()
        attack = predict(setup.objects, model.roll(held.context_frames, held.context_actions, program))
        engine_labels = cell_targets(
            held.classes.reshape(-1, *held.classes.shape[-2:]), len(truth.class_names)
        )
        view.flash_held = {
            "model": shooting.flash_scores(shown_in(attack.cells, "flash")),
            "engine (labels)": shooting.flash_scores(
                shown_in(engine_labels, "flash").reshape(held.frames.shape[:2])
            ),
            "engine (object model)": shooting.flash_scores(
                shown_in(predict(setup.objects, held.frames).cells, "flash")
            ),
            "engine through the tokenizer": shooting.flash_scores(
                shown_in(
                    predict(setup.objects, _through(tokenizer, held.context_frames, held.frames)).cells,
                    "flash",
                )
            ),
        }
    marks = sorted({t for t in (1, 4, 16, scores.horizon) if t <= scores.horizon})
    view.texture = texture.texture_curve(scores.generated, clips.frames[:, c:], rebuilt_clips[:, c:], marks)
    if setup.floor_features:  # each distance averaged over the real reference sets
        references = [frechet.window_descriptors(f) for f in setup.floor_features]
        for name, features in (
            ("generated", generated.features),
            ("tokenizer", rebuilt_future.features),
            ("real", real.features),
        ):
            distances = [
                frechet.frechet_distance(frechet.window_descriptors(features), r) for r in references
            ]
            view.frechet[name] = float(np.mean(distances))
            view.frechet[f"{name} min"], view.frechet[f"{name} max"] = (
                float(min(distances)),
                float(max(distances)),
            )
    view.revisits = _revisits(setup, cache, truth, model)
    view.seconds = time.perf_counter() - started
    return view


def texture_only(clips: EvalClips, scores: ClipScores, tokenizer: VideoTokenizer) -> ModelView:
    """Texture alone (it needs no labels): for footage without the engine's ground truth."""
    c = scores.context
    rebuilt = np.stack([reconstruct_episode(tokenizer, clip) for clip in clips.frames])[:, c:]
    marks = sorted({t for t in (1, 4, 16, scores.horizon) if t <= scores.horizon})
    return ModelView(texture=texture.texture_curve(scores.generated, clips.frames[:, c:], rebuilt, marks))


def _through(tokenizer: VideoTokenizer, context: np.ndarray, frames: np.ndarray) -> np.ndarray:
    """``frames`` (B, S, …) reconstructed by the tokenizer after their context (B, C, …)."""
    clips = np.concatenate((context, frames), axis=1)
    return np.stack([reconstruct_episode(tokenizer, clip) for clip in clips])[:, context.shape[1] :]


def footage_appearances(setup: Setup, cells: np.ndarray, name: str) -> float:
    """Appearances per 1,000 frames of the evaluation footage, from its cells (N, h, w)."""
    sequences = setup.footage.sequences(shown_in(cells, name))
    counted = [(presence.appearances_per_1000(s), len(s) - presence.APPEARANCE_GAP) for s in sequences]
    counted = [(a, n) for a, n in counted if n > 0]
    return sum(a * n for a, n in counted) / max(sum(n for _, n in counted), 1)


def _objects(
    setup: Setup,
    scores: ClipScores,
    predicted: tuple[ObjectPredictions, ObjectPredictions, ObjectPredictions],
    labels: np.ndarray | None,
    seen_rebuilt: ObjectPredictions,
    view: ModelView,
) -> None:
    """Presence on the drift clips, IoU of teacher-forced frames, the flash under the real actions;
    ``predicted``: the object model on the generated, the real and the reconstructed frames."""
    c, (generated, real, rebuilt) = setup.context, predicted
    for name in setup.classes:
        view.presence[name] = {
            "generated": float(shown_in(generated.cells, name).mean()),
            "real (object model)": float(shown_in(real.cells, name).mean()),
            "tokenizer": float(shown_in(rebuilt.cells, name).mean()),
        }
        if labels is not None:
            view.presence[name]["real (labels)"] = float(shown_in(labels[:, c:], name).mean())
    if "flash" in setup.classes:
        view.flash_real_actions = {
            "generated": shooting.flash_scores(shown_in(generated.cells, "flash")),
            "real (object model)": shooting.flash_scores(shown_in(real.cells, "flash")),
            "tokenizer": shooting.flash_scores(shown_in(rebuilt.cells, "flash")),
        }
        if labels is not None:
            view.flash_real_actions["real (labels)"] = shooting.flash_scores(shown_in(labels[:, c:], "flash"))
    if labels is None or setup.clip_rows is None:
        return
    length = scores.teacher_length  # teacher-forced frames are frames 1 … L − 1 of each clip
    teacher = predict(setup.objects, scores.teacher_generated).cells
    positions = setup.footage.at(setup.clip_rows[:, 1:length])
    for name in setup.classes:
        k, target = CLASS_ID[name], labels[:, 1:length]
        view.teacher_iou[name] = {
            "generated": presence.iou(teacher, target, k),
            "real": presence.iou(setup.footage.seen[positions], target, k),
            "tokenizer": presence.iou(seen_rebuilt.cells[positions], target, k),
        }


def _persistence(
    setup: Setup,
    cache: TrainingCache,
    truth: TruthCache,
    model: _Model,
    drift: tuple[ObjectPredictions, ObjectPredictions, np.ndarray | None],
    seen_rebuilt: ObjectPredictions,
    view: ModelView,
) -> np.ndarray | None:
    """Persistence over the clips that start with a monster in view: the qualifying drift clips
    (``drift``: the object model on their generated and reconstructed frames, and their labelled
    cells) and, when too few qualify, rollouts of more such clips (``seen_rebuilt``: the object
    model on the reconstructed footage). Returns the monster series (P, H) of the extra rollouts,
    for the appearance count."""
    c, h, count = setup.context, setup.horizon, len(truth.class_names)
    generated, rebuilt, labels = drift
    chosen = np.flatnonzero(setup.persistence_drift)
    shown = [shown_in(generated.cells[chosen], "monster")]
    real = [shown_in(labels[chosen, c:], "monster")] if labels is not None else []
    kept = [shown_in(rebuilt.cells[chosen], "monster")]
    extra = None
    if len(setup.persistence_starts):
        rows = setup.persistence_starts[:, None] + np.arange(c + h)  # (P, C + H)
        frames = np.asarray(cache.frames[rows.ravel()]).reshape(*rows.shape, *cache.frames.shape[1:])
        actions = cache.actions[rows]
        rolled = model.roll(frames[:, :c], actions[:, : c - 1], actions[:, c - 1 : -1])
        extra = shown_in(predict(setup.objects, rolled).cells, "monster")
        shown.append(extra)
        labelled = cell_targets(np.asarray(truth.classes[rows[:, c:].ravel()]), count)
        real.append(shown_in(labelled, "monster").reshape(len(rows), h))
        kept.append(shown_in(seen_rebuilt.cells[setup.footage.at(rows[:, c:])], "monster"))
    if not real or sum(len(x) for x in shown) == 0:
        return extra
    starts = np.ones(sum(len(x) for x in shown), bool)
    result = presence.persistence(starts, np.concatenate(shown), np.concatenate(real))
    result.tokenizer = presence.persistence(starts, np.concatenate(kept), np.concatenate(real)).generated
    view.persistence["monster"] = result
    return extra


def _revisits(setup: Setup, cache: TrainingCache, truth: TruthCache, model: _Model) -> RevisitScores | None:
    """Drive the model from t0's context with the real actions to t1; compare its frame at t1."""
    if not setup.revisits:
        return None
    c = setup.context
    gaps = np.array([b - a for a, b in setup.revisits])
    at_return = np.empty((len(gaps), *cache.frames.shape[1:]), np.uint8)  # (R, H, W, 3)
    order = np.argsort(gaps, kind="stable")
    for group in (order[: len(order) // 2], order[len(order) // 2 :]):  # shorter returns roll fewer steps
        if not len(group):
            continue
        first = np.array([setup.revisits[i][0] for i in group]) - (c - 1)  # first context row
        context_rows = first[:, None] + np.arange(c)
        frames = np.asarray(cache.frames[context_rows.ravel()]).reshape(
            *context_rows.shape, *cache.frames.shape[1:]
        )
        steps = np.arange(gaps[group].max())
        last = (first + c - 1 + gaps[group] - 1)[:, None]
        action_rows = np.minimum(first[:, None] + c - 1 + steps, last)  # padded after the return
        generated = model.roll(frames, cache.actions[context_rows[:, :-1]], cache.actions[action_rows])
        at_return[group] = generated[np.arange(len(group)), gaps[group] - 1]
    t0 = np.array([a for a, _ in setup.revisits])
    t1 = np.array([b for _, b in setup.revisits])
    real_t0, real_t1 = np.asarray(cache.frames[t0]), np.asarray(cache.frames[t1])
    model_psnr, floor_psnr = frame_scores(at_return, real_t1)[0], frame_scores(real_t0, real_t1)[0]
    count, k = len(truth.class_names), CLASS_ID["monster"]
    labels_t0 = cell_targets(np.asarray(truth.classes[t0]), count)
    labels_t1 = cell_targets(np.asarray(truth.classes[t1]), count)
    return RevisitScores(
        len(gaps),
        gaps.tolist(),
        float(model_psnr.mean()),
        float(floor_psnr.mean()),
        presence.iou(predict(setup.objects, at_return).cells, labels_t1, k),
        presence.iou(labels_t0, labels_t1, k),
        model_psnr.tolist(),
        floor_psnr.tolist(),
    )
