"""Train the dynamics model: ``wm-video train dynamics --data DIR --tokenizer RUN --preset tiny --out RUN``.

The dataset is decoded into the frame cache and tokenized once by the tokenizer into a token
cache (:mod:`wm_video.data.tokens`, progress bar); clips of tokens and actions then train the
model with the masked-token objective from a corrupted context
(:mod:`wm_video.dynamics.objective`). Same program on a CPU, one GPU, or several processes under
``accelerate launch`` / ``torchrun`` (``python -m wm_video.train.dynamics …``); a run resumes
when the command is run again with the same ``--out`` (:mod:`wm_video.train.session`).

Written to RUN: ``run.json``, ``log.jsonl`` (loss and masked-token accuracy every
``--log-every`` steps; every ``--eval-every`` steps, on held-out clips with the EMA model:
teacher-forced next-frame PSNR, token accuracy, and ΔPSNR at t = 4),
``samples/step-*.png`` (real frames above the teacher-forced predictions) and ``checkpoints/``
(the tokenizer checkpoint used is recorded in ``meta.tokenizer``, so play and eval find it).

``--object-weight`` and ``--token-change-weight`` weight the tokens where the game happens
(:class:`~wm_video.dynamics.objective.TokenWeightConfig`); the object weight reads the dataset's
labels (:mod:`wm_video.data.objects`), and with them the log also has ``object_token_accuracy``.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from wm_video.checkpoint import load_checkpoint, load_tokenizer, load_weights, resolve_checkpoint
from wm_video.data.cache import load_cache
from wm_video.data.lerobot import read_info
from wm_video.data.objects import load_object_masks, require_labels, token_objects
from wm_video.data.reader import open_dataset
from wm_video.data.sampler import ClipSampler
from wm_video.data.split import DEFAULT_HOLDOUT, split_episodes
from wm_video.data.tokens import TokenCache, load_token_cache, tokenizer_fingerprint
from wm_video.dynamics import (
    DYNAMICS_PRESETS,
    CorruptionConfig,
    DynamicsConfig,
    DynamicsModel,
    TokenWeightConfig,
    dynamics_config,
    masked_token_loss,
    with_digit_chain,
)
from wm_video.engine import World
from wm_video.errors import EXIT_STOPPED, InputError
from wm_video.eval.clips import EvalClips, clip_history
from wm_video.eval.rollouts import evaluate_clips
from wm_video.tokenizer import VideoTokenizer
from wm_video.train.common import save_comparison_grid
from wm_video.train.options import add_chain_digits_flag, add_init_flag, add_token_weight_flags
from wm_video.train.prefetch import Batch
from wm_video.train.remap import ActionMapping, remap_action_weights
from wm_video.train.session import (
    SessionOptions,
    StepResult,
    TrainingSession,
    add_session_flags,
    run_training_program,
    session_options,
)

PROBE_CLIPS = 6  # held-out clips scored at every eval step
PROBE_CONTEXT = 4  # real frames before the rollouts that measure ΔPSNR
PROBE_HORIZON = 4  # ΔPSNR(t = 4), as Genie reports it


@dataclass(frozen=True)
class DynamicsTrainOptions:
    data: Path
    tokenizer: Path
    session: SessionOptions
    preset: str = "tiny"
    clip_len: int = 16
    holdout: float = DEFAULT_HOLDOUT
    corruption: CorruptionConfig = CorruptionConfig()
    weighting: TokenWeightConfig = TokenWeightConfig()  # extra loss weight on object and changed tokens
    init: Path | None = None  # start from this dynamics checkpoint (fine-tuning; actions matched by name)
    chain_digits: bool = False  # draw a token's digits in turn (added at zero to an init without a chain)


@dataclass(frozen=True)
class DynamicsTrainResult:
    run: Path
    step: int
    probe: dict[str, float]  # the last held-out evaluation ({} if none ran)
    seconds: float
    stopped_early: bool
    stopped_by_signal: bool = False  # Ctrl-C or SIGTERM: the program exits 130


def action_scale(tokens: TokenCache, buttons: int, episodes: Sequence[int]) -> tuple[float, ...]:
    """1 for each button; each delta's standard deviation over the training episodes (1 where it never moves)."""
    position = {int(e): i for i, e in enumerate(tokens.episode_indices.tolist())}
    rows = [tokens.episode(position[int(e)])[1] for e in episodes]
    std = (
        np.concatenate(rows)[:, buttons:].std(axis=0) if rows else np.zeros(tokens.actions.shape[1] - buttons)
    )
    return (1.0,) * buttons + tuple(float(s) if s > 1e-6 else 1.0 for s in std)


def _check_same_tokenizer(out: Path, tokenizer_path: Path, tokenizer_id: str) -> None:
    """A run resumes only with the tokenizer it was trained on (``--tokenizer RUN`` names that run's newest
    checkpoint, which moves on while it trains)."""
    if not (out / "checkpoints").exists():
        return
    try:
        saved = load_checkpoint(out, kind="dynamics", with_training_state=False)
    except InputError:
        return  # no complete checkpoint: nothing to resume; the session reports anything else
    recorded = saved.meta.get("tokenizer_fingerprint")
    if recorded is not None and recorded != tokenizer_id:
        raise InputError(
            f"{out} was trained with the tokenizer {saved.meta.get('tokenizer')}, and {tokenizer_path} has other "
            f"weights; pass --tokenizer {saved.meta.get('tokenizer')} to resume, or use a new --out"
        )


class Probe:
    """Held-out clips scored with the EMA model at every eval step (always the same clips), by the
    consistency run's own measurements (:func:`wm_video.eval.rollouts.evaluate_clips`)."""

    def __init__(
        self,
        tokens: TokenCache,
        frames: np.ndarray,
        episodes: Sequence[int],
        device: torch.device,
        history_frames: int = 0,
    ) -> None:
        length = PROBE_CONTEXT + PROBE_HORIZON
        sampler = ClipSampler(tokens, length, seed=12345, episodes=episodes)
        picked = sampler.sample_batch(PROBE_CLIPS)
        rows = tokens.rows_of(picked.episode, picked.start)
        self.frames = np.stack([frames[r : r + length] for r in rows])  # (B, T, H, W, 3) of the token rows
        self.actions = picked.actions.astype(np.float32)  # (B, T, A)
        # The frames before each clip: the world resets read them, as the token cache did (issue 17).
        self.history = clip_history(tokens, frames, picked.episode, picked.start, history_frames)
        self.clips = EvalClips(
            self.frames, self.actions, picked.episode, picked.start, "held-out probe", self.history
        )
        rng = np.random.default_rng(12345)  # random actions: rows drawn from anywhere in the data
        self.random_actions = tokens.actions[rng.integers(0, tokens.num_frames, (PROBE_CLIPS, PROBE_HORIZON))]

    def __call__(
        self, tokenizer: VideoTokenizer, model: DynamicsModel
    ) -> tuple[dict[str, float], np.ndarray]:
        """The held-out metrics, and the teacher-forced frames 1 … L − 1, uint8 (B, L − 1, H, W, 3), where
        L is the clip or, when shorter, the model's window + 1 frames."""
        scores = evaluate_clips(tokenizer, model, self.clips, self.random_actions, context=PROBE_CONTEXT, seed=0)
        teacher = scores.teacher
        metrics = {
            "heldout_next_psnr": teacher.psnr,
            "heldout_token_accuracy": teacher.token_accuracy,
            "heldout_code_bits": teacher.code_bits,
            # nan when no token changed code: left out of the log
            **({"heldout_changed_code_bits": teacher.changed_code_bits} if math.isfinite(teacher.changed_code_bits) else {}),
            "heldout_tokenizer_psnr": teacher.tokenizer_psnr,
            "heldout_repeat_psnr": teacher.repeat_psnr,
            "heldout_tokenized_repeat_psnr": teacher.tokenized_repeat_psnr,
            "heldout_delta_psnr_t4": scores.control.delta_psnr_t4,
        }
        return metrics, scores.teacher_generated

    @torch.inference_mode()
    def video(self, tokenizer: VideoTokenizer, model: DynamicsModel) -> np.ndarray:
        """The first clip as uint8 (T, 3, H, 2W): real frames left, the model's rollout under the real
        actions right (the first PROBE_CONTEXT frames are the real context on both sides)."""
        world = World(tokenizer, model, batch_size=PROBE_CLIPS)
        actions = self.actions
        context, taken = self.frames[:, :PROBE_CONTEXT], actions[:, : PROBE_CONTEXT - 1]
        shown = [world.reset(context, taken, history=self.history)[0]]
        for t in range(PROBE_HORIZON):
            shown.append(world.step(actions[:, PROBE_CONTEXT - 1 + t])[0])
        generated = np.concatenate([self.frames[0, : PROBE_CONTEXT - 1], np.stack(shown)])  # (T, H, W, 3)
        return np.concatenate([self.frames[0], generated], axis=2).transpose(0, 3, 1, 2)


def initial_model(
    init: Path, config: DynamicsConfig, chain_digits: bool = False
) -> tuple[DynamicsModel, DynamicsConfig, ActionMapping]:
    """A model of ``init``'s shape (its EMA weights) for this data's ``config`` actions and scales,
    given chained digits (at zero) when ``chain_digits`` and it has none."""
    source = load_checkpoint(init, kind="dynamics", with_training_state=False)
    source_config = DynamicsConfig.from_dict(source.config)
    if (source_config.grid_size, source_config.levels) != (config.grid_size, config.levels):
        raise InputError(
            f"{source.path}: predicts {source_config.grid_size}×{source_config.grid_size} tokens of levels "
            f"{list(source_config.levels)}, the tokenizer makes {config.grid_size}×{config.grid_size} of "
            f"{list(config.levels)}; fine-tune with the tokenizer this model was trained with"
        )
    target = replace(
        source_config,
        action_names=config.action_names,
        action_buttons=config.action_buttons,
        action_scale=config.action_scale,
    )
    weights, mapping = remap_action_weights(source.ema_weights or source.weights, source_config, target)
    model = DynamicsModel(target)
    load_weights(model, weights, source.path)
    if chain_digits:
        model = with_digit_chain(model)
    return model, model.config, mapping


def train_dynamics(options: DynamicsTrainOptions) -> DynamicsTrainResult:
    if options.clip_len < 2:
        raise InputError(f"--clip-len must be ≥ 2 (a frame and the one it predicts), got {options.clip_len}")
    read_info(options.data)  # a clear error for a missing or foreign folder before the run folder is made
    if options.weighting.needs_objects:
        require_labels(options.data)
    tokenizer_path = resolve_checkpoint(options.tokenizer)
    tokenizer, _ = load_tokenizer(tokenizer_path)  # a wrong checkpoint fails before the run folder is made
    tokenizer_id = tokenizer_fingerprint(tokenizer)
    _check_same_tokenizer(options.session.out, tokenizer_path, tokenizer_id)
    dataset = open_dataset(options.data)
    space, fps = dataset.action_space, dataset.fps
    session = TrainingSession(
        kind="dynamics",
        options=options.session,
        program_options={
            "data": str(options.data),
            "tokenizer": str(tokenizer_path),
            "preset": options.preset,
            "clip_len": options.clip_len,
            "holdout": options.holdout,
            "corruption": asdict(options.corruption),
            "token_weights": asdict(options.weighting),
            **({"init": str(resolve_checkpoint(options.init))} if options.init is not None else {}),
        },
    )
    o = options.session
    tokenizer = tokenizer.to(session.device)
    with session.accelerator.main_process_first():
        frames = load_cache(
            options.data,
            size=tokenizer.config.image_size,
            cache_root=o.cache_dir,
            progress=session.is_main and o.progress,
        )
        tokens = load_token_cache(
            frames, tokenizer, device=session.device, progress=session.is_main and o.progress
        )
        masks = None
        if options.weighting.needs_objects:
            masks = load_object_masks(
                options.data, frames, cache_root=o.cache_dir, progress=session.is_main and o.progress
            )
    split = split_episodes(tokens.episode_indices.tolist(), options.holdout)
    lengths = dict(zip(tokens.episode_indices.tolist(), tokens.episode_lengths.tolist(), strict=True))
    train_episodes = [e for e in split.train if lengths[e] >= options.clip_len]
    if not train_episodes:
        raise InputError(
            f"{options.data}: no training episode has {options.clip_len} frames; lower --clip-len"
        )
    sampler = ClipSampler(
        tokens,
        options.clip_len,
        seed=o.seed,
        rank=session.rank,
        world_size=session.world_size,
        episodes=train_episodes,
        masks=masks,
    )
    probe_length = PROBE_CONTEXT + PROBE_HORIZON
    probe_episodes = [e for e in split.heldout if lengths[e] >= probe_length] or [
        e for e in split.train if lengths[e] >= probe_length
    ]
    reach = tokenizer.config.encoder_reach
    probe = Probe(tokens, frames.frames, probe_episodes, session.device, reach) if probe_episodes else None
    scale = action_scale(tokens, len(space.buttons), train_episodes)
    config = dynamics_config(options.preset, tokenizer.config, space, scale)
    torch.manual_seed(o.seed)
    mapping: ActionMapping | None = None
    if options.init is not None:
        initial, config, mapping = initial_model(options.init, config, options.chain_digits)
    else:
        config = replace(config, chain_digits=options.chain_digits)
        initial = DynamicsModel(config)
    model, _, ema, _ = session.prepare(initial, config.to_dict(), sampler)
    core = session.core  # the unwrapped model: the loss reads its digits and mask id
    assert isinstance(core, DynamicsModel)
    meta: dict[str, Any] = {
        "data": str(options.data),
        # Relative to the step directory (RUN/checkpoints/step-N), so runs moved together still pair up.
        "tokenizer": os.path.relpath(tokenizer_path.resolve(), (o.out / "checkpoints" / "step-0").resolve()),
        "tokenizer_fingerprint": tokenizer_id,
        "holdout": options.holdout,
        "heldout_episodes": list(split.heldout),
        "probe_is_heldout": bool(split.heldout and probe_episodes and probe_episodes[0] in split.heldout),
    }
    if options.init is not None and mapping is not None:
        meta["finetuned_from"] = str(resolve_checkpoint(options.init).resolve())
        meta["actions"] = {
            "kept": list(mapping.kept),
            "new": list(mapping.new),
            "dropped": list(mapping.dropped),
        }
    parameters = sum(p.numel() for p in model.parameters())
    if session.is_main:
        origin = f"from {options.init} ({mapping.describe()})" if mapping is not None else options.preset
        print(
            f"dynamics {origin}: {parameters / 1e6:.1f} M parameters, {config.tokens_per_frame} tokens/frame, "
            f"{config.decode_passes} passes; actions {list(config.action_names)}; {tokens.num_frames:,} frames, "
            f"{len(train_episodes)} training / {len(split.heldout)} held-out episodes; {session.world_size} "
            f"process(es) on {session.device}, precision {session.precision}",
            flush=True,
        )

    patch_size = tokenizer.config.patch_size

    def draw() -> Batch:
        batch = sampler.sample_batch(o.batch_size)
        # tokens stay in the cache's narrow dtype (uint16) until they reach the device
        drawn = {"tokens": torch.from_numpy(batch.frames), "actions": torch.from_numpy(batch.actions)}
        if batch.masks is not None:  # (B, T, H, W) → (B, T, N) uint8, 1 on object tokens
            drawn["objects"] = torch.from_numpy(token_objects(batch.masks, patch_size))
        return drawn

    def step_loss(batch: Batch) -> StepResult:
        tokens = batch["tokens"].long()  # (B, T, N)
        losses = masked_token_loss(
            core,
            tokens,
            batch["actions"],
            options.corruption,
            forward=model,
            weighting=options.weighting,
            objects=batch.get("objects"),
        )
        metrics = {"token_accuracy": losses.accuracy}
        if losses.object_accuracy is not None:
            metrics["object_token_accuracy"] = losses.object_accuracy
        return StepResult(losses.total, metrics)

    def evaluate(at: int) -> dict[str, float]:
        assert probe is not None and isinstance(ema.model, DynamicsModel)
        metrics, generated = probe(tokenizer, ema.model)
        grid = save_comparison_grid(
            probe.frames[:, 1 : 1 + generated.shape[1]], generated, session.out / "samples" / f"step-{at:08d}.png"
        )
        session.logger.log_image(at, "samples", grid)
        if session.logger.wants_media:
            session.logger.log_video(at, "rollout", probe.video(tokenizer, ema.model), fps=fps)
        tqdm.write(
            f"step {at}: held-out next-frame PSNR {metrics['heldout_next_psnr']:.2f} dB "
            f"(tokenizer {metrics['heldout_tokenizer_psnr']:.2f}, repeat {metrics['heldout_repeat_psnr']:.2f}, "
            f"tokenized {metrics['heldout_tokenized_repeat_psnr']:.2f}), "
            f"ΔPSNR(t=4) {metrics['heldout_delta_psnr_t4']:+.2f} dB"
        )
        return metrics

    result = session.run(
        draw=draw,
        step=step_loss,
        probe=evaluate if probe is not None else None,
        meta=meta,
        frames_per_batch=o.batch_size * (options.clip_len - 1),
        tokens_per_frame=config.tokens_per_frame,
    )
    return DynamicsTrainResult(
        session.out, result.step, result.probe, result.seconds, result.stopped_early, result.stopped_by_signal
    )


def build_parser(prog: str = "wm-video train dynamics") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog, description="Train the action-conditioned dynamics model on a dataset's tokens."
    )
    data = parser.add_argument_group("data and model")
    data.add_argument("--data", type=Path, required=True, help="dataset folder (LeRobot v3.0/v2.1)")
    data.add_argument("--tokenizer", type=Path, required=True, help="tokenizer run folder or checkpoint")
    data.add_argument(
        "--preset", choices=sorted(DYNAMICS_PRESETS), default="tiny", help="model size (default tiny)"
    )
    data.add_argument("--clip-len", type=int, default=16, help="frames per training clip (default 16)")
    data.add_argument(
        "--holdout",
        type=float,
        default=DEFAULT_HOLDOUT,
        help="fraction of episodes held out, the last ones (default 0.1)",
    )
    add_init_flag(data, "dynamics")
    add_chain_digits_flag(data)
    robust = parser.add_argument_group("context corruption (robustness to the model's own mistakes)")
    defaults = CorruptionConfig()
    robust.add_argument(
        "--token-noise",
        type=float,
        default=defaults.token_noise,
        help=f"max share of a context frame's tokens replaced by random codes (default {defaults.token_noise})",
    )
    robust.add_argument(
        "--repeat-frames",
        type=float,
        default=defaults.repeat_frames,
        help=f"probability a context frame repeats the one before it (default {defaults.repeat_frames})",
    )
    robust.add_argument(
        "--own-frames",
        type=float,
        default=defaults.own_frames,
        help="probability a context frame after the first is the model's own sample of it (one all-masked pass, "
        "no gradient; about a quarter more time per step), so that a monster it drew badly is still read as "
        f"one (default {defaults.own_frames})",
    )
    add_token_weight_flags(parser.add_argument_group("loss weighting (where the game happens)"))
    add_session_flags(parser, SessionOptions(out=Path("run"), lr=3e-4, eval_every=250))
    return parser


def main(argv: Sequence[str] | None = None, prog: str = "wm-video train dynamics") -> int:
    args = build_parser(prog).parse_args(argv)

    def run() -> int:
        options = DynamicsTrainOptions(
            data=args.data,
            tokenizer=args.tokenizer,
            session=session_options(args),
            preset=args.preset,
            clip_len=args.clip_len,
            holdout=args.holdout,
            corruption=CorruptionConfig(
                token_noise=args.token_noise, repeat_frames=args.repeat_frames, own_frames=args.own_frames
            ),
            init=args.init,
            chain_digits=args.chain_digits,
            weighting=TokenWeightConfig(
                object_weight=args.object_weight, change_weight=args.token_change_weight
            ),
        )
        result = train_dynamics(options)
        if result.probe:
            print(
                f"{result.run}: step {result.step}, held-out next-frame PSNR {result.probe['heldout_next_psnr']:.2f} dB, "
                f"ΔPSNR(t=4) {result.probe['heldout_delta_psnr_t4']:+.2f} dB ({result.seconds:.0f} s)"
            )
        return EXIT_STOPPED if result.stopped_by_signal else 0

    return run_training_program(prog, run)


if __name__ == "__main__":
    sys.exit(main(prog="python -m wm_video.train.dynamics"))
