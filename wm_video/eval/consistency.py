"""``wm-video eval``: the whole consistency run of a dynamics checkpoint (and an optional baseline).

Order of work, each part on the same clips and seed for every checkpoint, the headline first and
the longest last:
1. real clips (held-out episodes of the dataset, or live episodes on the engine);
2. per checkpoint: teacher-forced next frame, drift and controllability (:mod:`.rollouts`);
3. action accuracy with the cached inverse-dynamics model (:mod:`.idm`) on real and generated pairs;
4. what a player sees (:mod:`.player`, :mod:`.player_scores`): objects, shooting, texture, a
   Fréchet distance and places revisited, from the engine's ground truth when the dataset has it;
5. loop closure on the real engine (:mod:`.loops`), when the engine is known and runs here;
6. a soak rollout under the exploration policy (:mod:`.soak`), read by the object model too;
7. the report folder (:mod:`.report`, :mod:`.plots`).

Stopping (Ctrl-C, SIGTERM): the part in progress ends at its next step (a soak keeps the frames
it made), the later parts are left out, and the result says where it stopped
(:attr:`ConsistencyResult.incomplete`), so the report holds everything finished. Stopped before
the first checkpoint's rollouts ended, there is nothing to report: :class:`EvalInterrupted`.

Defaults follow the anchors: the horizon is 3 s of game time at the data's fps (GameNGen's
"PSNR after 3 s"), ΔPSNR is read at t = 4 (Genie). The soak is 2,000 frames by default (about two
minutes on a 2-core CPU), so the whole run of a small world stays within minutes; ``--soak 10000``
is the long one.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from wm_video.data.cache import TrainingCache
from wm_video.data.split import split_episodes
from wm_video.data.truth import TruthCache, load_truth_cache
from wm_video.dynamics import DynamicsModel
from wm_video.engine import check_batch_fits, check_pair
from wm_video.errors import InputError
from wm_video.eval.clips import (
    EvalClips,
    EvalInterrupted,
    check_stop,
    clips_from_cache,
    collect_live,
    engine_of_dataset,
    parse_engine,
)
from wm_video.eval.idm import (
    ActionScores,
    IDMConfig,
    TrainedIDM,
    load_or_train_idm,
    pair_rows,
    readable_buttons,
    score_actions,
    with_readable,
)
from wm_video.eval.loops import LoopConfig, LoopReport, loop_closure
from wm_video.eval.player import PlayerConfig, Setup, prepare
from wm_video.eval.player_scores import ModelView, SoakObserver, texture_only
from wm_video.eval.player_scores import evaluate as evaluate_player
from wm_video.eval.rollouts import ClipScores, evaluate_clips
from wm_video.eval.soak import (
    SoakReference,
    SoakReport,
    footage_collapse,
    footage_percentiles,
    reference_statistics,
    soak,
)
from wm_video.eval.tokenizer import reconstruct_episode
from wm_video.tokenizer import VideoTokenizer

PARTS = ("teacher", "drift", "actions", "loops", "soak", "player")
REFERENCE_FRAMES = 2000  # real frames the soak thresholds are taken from
HELDOUT_PAIRS = 4000  # at most this many real held-out pairs for the IDM's reference score
SOAK_FRAMES = 2000  # the default soak; --soak 10000 for the long one


@dataclass(frozen=True)
class ConsistencyConfig:
    clips: int = 16  # clips (or live episodes) rolled out together
    context: int = 4  # real frames before each rollout
    horizon: int | None = None  # generated frames per rollout; None: 3 s of game time
    soak: int = SOAK_FRAMES  # frames of the soak rollout (0: skip)
    seed: int = 0
    episodes: tuple[int, ...] | None = None  # dataset episodes to draw clips from; None: held-out
    live: str | None = None  # "vizdoom[:SCENARIO]": play live episodes instead of dataset clips
    actions: str = "explore"  # the live action program: explore, random or a JSONL script
    skip: frozenset[str] = frozenset()  # parts of PARTS not to run ("loops", "soak", "actions")
    video_clips: int = 4  # clips shown in samples.mp4
    idm: IDMConfig = field(default_factory=IDMConfig)
    loops: LoopConfig = field(default_factory=LoopConfig)
    idm_cache: Path | None = None  # None: beside the frame cache (also holds the object model)
    player: PlayerConfig = field(default_factory=PlayerConfig)

    def __post_init__(self) -> None:
        if self.clips < 1 or self.context < 1 or (self.horizon is not None and self.horizon < 1):
            raise InputError(
                f"clips, context and horizon must be ≥ 1; got {self.clips}, {self.context}, {self.horizon}"
            )
        if self.soak < 0:
            raise InputError(f"--soak is a number of frames ≥ 0 (0 skips it); got {self.soak}")
        unknown = sorted(self.skip - set(PARTS))
        if unknown:
            raise InputError(f"--skip: unknown parts {unknown}; choose from {list(PARTS)}")


@dataclass
class Model:
    """A checkpoint under evaluation."""

    label: str  # "model" or "baseline"
    path: Path
    step: int
    tokenizer_path: str
    tokenizer: VideoTokenizer
    dynamics: DynamicsModel
    meta: dict[str, Any]  # the checkpoint's meta (data, holdout, tokenizer)

    @property
    def weights_sha256(self) -> str:
        from wm_video.data.tokens import tokenizer_fingerprint  # hashes any module's state dict

        return tokenizer_fingerprint(self.dynamics)


@dataclass
class ModelResult:
    model: Model
    clips: ClipScores
    actions: dict[str, ActionScores]  # "real clips", "teacher-forced", "rollout", "random-action rollout"
    loops: LoopReport | None
    soak: SoakReport | None
    seconds: dict[str, float]
    player: ModelView | None = None


@dataclass
class ConsistencyResult:
    config: ConsistencyConfig
    data: Path
    fps: float
    clips: EvalClips
    results: list[ModelResult]
    idm: TrainedIDM | None
    idm_heldout: ActionScores | None
    reference: SoakReference | None
    notes: list[str]
    seconds: float
    extra: dict[str, Any] = field(default_factory=dict)
    incomplete: str | None = None  # the part a stop interrupted (None: the run finished)
    player: Setup | None = None  # what "What a player sees" shares across checkpoints
    player_skipped: str | None = None  # why the parts that need the engine's ground truth were not run
    contaminated: list[int] = field(default_factory=list)  # evaluated episodes the instruments trained on

    @property
    def readable_buttons(self) -> list[str]:
        """Buttons the IDM reads from real frames (see :func:`wm_video.eval.idm.readable_buttons`)."""
        real = self.idm_heldout or (self.results[0].actions.get("real clips") if self.results else None)
        return readable_buttons(real) if real is not None else []


def _pairs(clips: EvalClips, scores: ClipScores) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(before, after, actions) frame pairs for the IDM, flattened over clips and steps."""
    c, frames, actions = scores.context, clips.frames, clips.actions

    def flat(array: np.ndarray) -> np.ndarray:
        return array.reshape(-1, *array.shape[2:])

    real_before, real_after = frames[:, c - 1 : -1], frames[:, c:]
    rollout_actions = actions[:, c - 1 : -1]
    generated_before = np.concatenate((frames[:, c - 1 : c], scores.generated[:, :-1]), axis=1)
    random_before = np.concatenate((frames[:, c - 1 : c], scores.generated_random[:, :-1]), axis=1)
    length = scores.teacher_length
    return {
        "real clips": (flat(real_before), flat(real_after), flat(rollout_actions)),
        "teacher-forced": (
            flat(frames[:, : length - 1]),
            flat(scores.teacher_generated),
            flat(actions[:, : length - 1]),
        ),
        "rollout": (flat(generated_before), flat(scores.generated), flat(rollout_actions)),
        "random-action rollout": (
            flat(random_before),
            flat(scores.generated_random),
            flat(scores.random_actions),
        ),
    }


def run_consistency(
    models: list[Model],
    cache: TrainingCache,
    data: Path,
    holdout: float,
    config: ConsistencyConfig,
    *,
    stop: Callable[[], bool] | None = None,
    progress: bool = False,
    log: Callable[[str], None] = print,
) -> ConsistencyResult:
    """Evaluate ``models`` (the first is the one under test) on ``cache``'s dataset; see the module doc."""
    started = time.perf_counter()
    first = models[0]
    for m in models:
        check_pair(m.tokenizer, m.dynamics)
        if tuple(cache.action_names) != m.dynamics.config.action_names:
            raise InputError(
                f"{data}: its actions {list(cache.action_names)} are not {m.path}'s {list(m.dynamics.config.action_names)}"
            )
    fps, notes = float(cache.fps), []
    horizon = config.horizon or max(1, round(3 * fps))
    length = config.context + horizon
    for m in models:
        check_batch_fits(m.tokenizer, m.dynamics, config.clips, length, "ask for fewer --clips")
    split = split_episodes(cache.episode_indices.tolist(), holdout)
    train_episodes = list(split.train)
    contaminated: list[int] = []
    if config.episodes is not None:
        eval_episodes, which = list(config.episodes), f"episodes {list(config.episodes)}"
        contaminated = sorted(set(eval_episodes) & set(train_episodes))
        if contaminated:
            warning = (
                f"CONTAMINATED: episodes {contaminated} are training episodes; the inverse-dynamics and "
                "object models trained on them, so their scores on these real frames (IDM F1, object "
                "precision and recall) are inflated. Evaluate on held-out episodes for honest references"
            )
            notes.append(warning)
            log(f"warning: {warning}")
    elif split.heldout:
        eval_episodes, which = list(split.heldout), f"held-out episodes {list(split.heldout)}"
    else:
        eval_episodes, which = (
            cache.episode_indices.tolist(),
            "all episodes (the dataset has no held-out one)",
        )
        notes.append("the dataset has a single episode: clips come from the episode the model trained on")
    if config.live:
        engine = parse_engine(config.live, cache.size, None)
        log(f"playing {config.clips} live episodes of {length} frames on {engine} under '{config.actions}'")
        clips = collect_live(
            engine,
            config.actions,
            episodes=config.clips,
            length=length,
            seed=config.seed,
            action_names=first.dynamics.config.action_names,
            stop=stop,
        )
    else:
        clips = clips_from_cache(
            cache,
            eval_episodes,
            config.clips,
            length,
            seed=config.seed,
            origin=f"dataset {data}, {which}",
            history_frames=max(m.tokenizer.config.encoder_reach for m in models),  # as the token cache
        )
    rng = np.random.default_rng(config.seed)
    random_actions = cache.actions[rng.integers(0, cache.num_frames, (clips.count, horizon))]  # (B, H, A)
    results: list[ModelResult] = []
    idm, idm_heldout, reference = None, None, None
    footage: dict[str, Any] = {}
    setup, skipped = None, None
    real = _Footage(cache, eval_episodes, log)
    part = "rollouts"  # the part in progress, for the report of a stopped run
    try:
        for m in models:
            tick = time.perf_counter()
            log(
                f"{m.label}: rollouts of {clips.count} clips, {config.context} context + {horizon} generated frames"
            )
            scores = evaluate_clips(
                m.tokenizer,
                m.dynamics,
                clips,
                random_actions,
                context=config.context,
                seed=config.seed,
                stop=stop,
                progress=progress,
            )
            seconds = {"rollouts": time.perf_counter() - tick}
            results.append(ModelResult(m, scores, {}, None, None, seconds))
        part = "action accuracy"
        idm, idm_heldout = _action_accuracy(
            results, clips, cache, config, train_episodes, eval_episodes, notes, stop, progress, log
        )
        part = "what a player sees"
        if "player" in config.skip:
            skipped = "left out with --skip player"
        elif (truth := load_truth_cache(data, size=cache.size, progress=progress)) is None:
            skipped = (
                f"{data} holds no ground truth from the engine (Atari or imported footage, or ViZDoom footage "
                "collected before wm-video recorded it; `wm-video collect --relabel DATA` adds it when a replay "
                "reproduces the footage)"
            )
            for r in results:  # texture needs no labels
                r.player = texture_only(clips, r.clips, r.model.tokenizer)
        else:
            setup = _player(
                results,
                cache,
                truth,
                data,
                clips,
                real,
                config,
                train_episodes,
                eval_episodes,
                horizon,
                stop,
                progress,
                log,
            )
        part = "loop closure"
        if "loops" not in config.skip:
            engine_spec = (
                parse_engine(config.live, cache.size) if config.live else engine_of_dataset(data, cache.size)
            )
            if engine_spec is None:
                notes.append(f"loop closure skipped: {data} does not record its engine; pass --live ENGINE")
            else:
                log(f"loop closure on {engine_spec}")
                loops = loop_closure(
                    {m.label: (m.tokenizer, m.dynamics) for m in models},
                    engine_spec,
                    context=config.context,
                    seed=config.seed,
                    config=config.loops,
                    stop=stop,
                )
                for r in results:
                    r.loops = loops.get(r.model.label)
        part = "soak"
        if config.soak and "soak" not in config.skip:
            rows = pair_rows(cache, train_episodes)
            rows = np.sort(rng.choice(rows, min(len(rows), REFERENCE_FRAMES), replace=False))
            reference = reference_statistics(
                np.asarray(cache.frames[rows]), np.asarray(cache.frames[rows + 1])
            )
            if not config.live:  # the detector's false alarms on real held-out footage
                footage = _footage_collapse(real.frames, real.rebuilt(first), reference, fps)
            for r in results:
                tick = time.perf_counter()
                log(f"{r.model.label}: soak of {config.soak} frames")
                observer = None
                if setup is not None and r.player is not None:
                    observer = SoakObserver(setup.objects, setup.classes, config.player.soak_every)
                r.soak = soak(
                    r.model.tokenizer,
                    r.model.dynamics,
                    clips.frames[0, : config.context],
                    clips.actions[0, : config.context - 1],
                    reference,
                    steps=config.soak,
                    seed=config.seed,
                    window=max(2, round(2 * fps)),
                    stop=stop,
                    progress=progress,
                    observe=observer,
                )
                if observer is not None and r.player is not None:
                    r.player.soak = observer.result()
                r.seconds["soak"] = time.perf_counter() - tick
                check_stop(stop)  # a stopped soak returns the frames it made; the run ends here
        incomplete = None
    except EvalInterrupted:
        if not results:
            raise  # stopped before the first rollouts ended: nothing to report
        incomplete = part
        log(f"stopped during {part}: the report holds the parts finished before it")
    return ConsistencyResult(
        config,
        Path(data),
        fps,
        clips,
        results,
        idm,
        idm_heldout,
        reference,
        notes,
        time.perf_counter() - started,
        {"footage_collapse": footage} if footage else {},
        incomplete,
        setup,
        skipped,
        contaminated,
    )


def _player(
    results: list[ModelResult],
    cache: TrainingCache,
    truth: TruthCache,
    data: Path,
    clips: EvalClips,
    real: _Footage,
    config: ConsistencyConfig,
    train_episodes: list[int],
    eval_episodes: list[int],
    horizon: int,
    stop: Callable[[], bool] | None,
    progress: bool,
    log: Callable[[str], None],
) -> Setup:
    """What a player sees: the shared setup (object model, references), then each model's figures."""
    engine = parse_engine(config.live, cache.size) if config.live else engine_of_dataset(data, cache.size)
    tiles = tuple(sorted({r.model.tokenizer.config.patch_size for r in results}))  # the artefacts' sides
    player = replace(config.player, objects=replace(config.player.objects, tiles=tiles))
    setup = prepare(
        cache, truth, train_episodes, eval_episodes, clips, engine, player, live=bool(config.live),
        loops=config.loops, context=config.context, horizon=horizon, seed=config.seed,
        cache_dir=config.idm_cache, stop=stop, progress=progress, log=log,
    )  # fmt: skip
    for r in results:
        tick = time.perf_counter()
        log(f"{r.model.label}: what a player sees")
        r.player = evaluate_player(
            setup, cache, truth, clips, r.clips, r.model.tokenizer, r.model.dynamics,
            np.concatenate(real.rebuilt(r.model)), seed=config.seed, stop=stop,
        )  # fmt: skip
        r.seconds["player"] = time.perf_counter() - tick
    return setup


class _Footage:
    """The evaluation episodes' real frames, and the same through each checkpoint's tokenizer
    (reconstructed once per tokenizer, on first use: the soak's references and the player's)."""

    def __init__(self, cache: TrainingCache, eval_episodes: list[int], log: Callable[[str], None]) -> None:
        self._cache, self._log = cache, log
        wanted = set(eval_episodes)
        self._positions = [i for i, e in enumerate(cache.episode_indices.tolist()) if e in wanted]
        self._frames: list[np.ndarray] | None = None
        self._rebuilt: dict[str, list[np.ndarray]] = {}

    @property
    def frames(self) -> list[np.ndarray]:
        if self._frames is None:
            self._frames = [
                np.array(self._cache.frames[self._cache.episode_rows(i)]) for i in self._positions
            ]
        return self._frames

    def rebuilt(self, model: Model) -> list[np.ndarray]:
        if model.tokenizer_path not in self._rebuilt:
            self._log(f"{model.label}: the evaluation episodes through its tokenizer")
            self._rebuilt[model.tokenizer_path] = [
                reconstruct_episode(model.tokenizer, f) for f in self.frames
            ]
        return self._rebuilt[model.tokenizer_path]


def _action_accuracy(
    results: list[ModelResult],
    clips: EvalClips,
    cache: TrainingCache,
    config: ConsistencyConfig,
    train_episodes: list[int],
    eval_episodes: list[int],
    notes: list[str],
    stop: Callable[[], bool] | None,
    progress: bool,
    log: Callable[[str], None],
) -> tuple[TrainedIDM | None, ActionScores | None]:
    """Train (or reuse) the IDM and score every model's frame pairs with it (their ``actions``)."""
    buttons = results[0].model.dynamics.config.action_names[: results[0].model.dynamics.config.action_buttons]
    if "actions" in config.skip:
        return None, None
    if not buttons:
        notes.append("the actions have no buttons: action accuracy is not measured")
        return None, None
    log(f"inverse-dynamics model on {len(train_episodes)} training episodes")
    idm = load_or_train_idm(
        cache,
        train_episodes,
        buttons,
        cache_dir=config.idm_cache,
        config=config.idm,
        seed=config.seed,
        stop=stop,
        progress=progress,
    )
    log(f"  {'reused' if idm.reused else 'trained and cached'}: {idm.path}")
    idm_heldout, readable = None, None
    if not config.live:
        rows = pair_rows(cache, eval_episodes)
        rows = rows[np.linspace(0, len(rows) - 1, min(len(rows), HELDOUT_PAIRS)).round().astype(int)]
        idm_heldout = score_actions(idm, cache.frames[rows], cache.frames[rows + 1], cache.actions[rows])
        readable = readable_buttons(idm_heldout)
        idm_heldout = with_readable(idm_heldout, readable)
    for r in results:
        check_stop(stop)
        actions = {name: score_actions(idm, *pair) for name, pair in _pairs(clips, r.clips).items()}
        if readable is None:  # live: from the real frames of the clips
            readable = readable_buttons(actions["real clips"])
        r.actions = {name: with_readable(value, readable) for name, value in actions.items()}
    return idm, idm_heldout


def _footage_collapse(
    episodes_frames: list[np.ndarray], rebuilt: list[np.ndarray], reference: SoakReference, fps: float
) -> dict[str, Any]:
    """The collapse detector on the real held-out episodes (its false alarms), and on the same
    episodes through the tokenizer under test (``rebuilt``): what a rollout decoded through it could
    look like at best."""
    window = max(2, round(2 * fps))
    return {
        "episodes": len(episodes_frames),
        "flagged": footage_collapse(episodes_frames, reference, window),
        "tokenizer_flagged": footage_collapse(rebuilt, reference, window),
        "tokenizer_percentiles": footage_percentiles(rebuilt, reference),
    }


def load_models(
    checkpoint: Path,
    baseline: Path | None,
    *,
    tokenizer: Path | None,
    device: str,
    raw_weights: bool = False,
    dtype: str = "fp32",
    sampling: dict[str, Any] | None = None,
) -> list[Model]:
    """The checkpoint under test and the optional baseline, each with the tokenizer it records,
    in ``dtype`` (``fp32``, ``bf16``, ``fp16``). ``sampling`` replaces the tested world's own
    sampling settings (the baseline keeps its own)."""
    from wm_video.checkpoint import load_dynamics, load_tokenizer, recorded_tokenizer
    from wm_video.device import resolve_dtype
    from wm_video.dynamics import update_sampling

    float_type = resolve_dtype(dtype, device)
    models = []
    for label, path in (("model", checkpoint), ("baseline", baseline)):
        if path is None:
            continue
        dynamics, saved = load_dynamics(path, device=device, ema=not raw_weights)
        if label == "model" and sampling:
            update_sampling(dynamics, sampling)
        recorded = (tokenizer if label == "model" else None) or recorded_tokenizer(saved)
        tokenizer_model, _ = load_tokenizer(recorded, device=device)
        tokenizer_model, dynamics = tokenizer_model.to(dtype=float_type), dynamics.to(dtype=float_type)
        models.append(
            Model(label, saved.path, saved.step, str(recorded), tokenizer_model, dynamics, saved.meta)
        )
    return models
