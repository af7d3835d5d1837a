"""Batched rollouts on real clips: teacher-forced next frame, drift, and controllability curves.

Design choices:
- One :class:`~wm_video.engine.World` with a batch of all clips steps every clip together, so a
  horizon of H frames costs H batched steps; the random-action rollout restarts the same world
  with the same seed, so the two rollouts differ only in their actions (Genie's ΔtPSNR).
- Scores are per frame on uint8 pixels: PSNR (capped at 100 dB, so an exact frame does not make
  the mean infinite) and SSIM (Wang et al., :mod:`wm_video.metrics`), kept per clip and step
  (B, H) so the report can show the mean and the spread across clips at every step.
- The drift curve comes with a floor: the last real context frame held still, scored at the
  same steps (what a frozen world would get). A model below it has learnt nothing useful.
- **Teacher forcing** (:func:`teacher_forced`): every frame t + 1 of a clip is generated from
  the real frames ≤ t and action a_t (the full MaskGIT decode, as in play), then decoded by the
  tokenizer after the real codes of the frames before it. Two references come with it: the
  tokenizer's own reconstruction of the real tokens (the ceiling) and simply repeating frame t
  (what a model that learnt nothing about motion would score), as it is and as the tokenizer shows it:
  frame t encoded again as t + 1, after the real frames, and decoded. The second is the floor in
  the tokenizer's own space: where frames barely change (Breakout) the real frame repeated scores
  above any tokenizer's ceiling, while a world that beats the tokenized repeat has learnt motion.
  It reads the first ``context_frames + 1`` frames of each clip: the model's whole window. With
  it, the bits the model needs for each real token (``−log2 p(code)``, the whole frame masked),
  over all tokens and over those that change code: where a world loses the small things a game is
  about, this says whether its model gave them any probability at all, before any sampling.
- Clips are encoded after the frames of their episode before them (:attr:`EvalClips.history`),
  in teacher forcing and in the worlds' resets alike, so the model reads the tokens it was
  trained on (the token cache's).
- This is the one implementation of these measurements: ``wm-video eval`` (the consistency run),
  ``wm-video eval dynamics`` (its quick preset) and the training program's held-out probe all
  call :func:`evaluate_clips`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from wm_video.dynamics import DynamicsModel, FrameSampler, Stream, code_nll
from wm_video.engine import World
from wm_video.errors import InputError
from wm_video.eval.clips import EvalClips, check_stop
from wm_video.metrics import psnr, ssim
from wm_video.threads import timed
from wm_video.tokenizer import VideoTokenizer
from wm_video.tokenizer.pixels import to_uint8_frames

CONTROL_STEP = 4  # Genie reports ΔtPSNR at t = 4
PSNR_CAP_DB = 100.0  # an exact frame scores this, so that a mean stays finite


def frame_scores(generated: np.ndarray, real: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """PSNR (dB, capped) and SSIM of uint8 frames (..., H, W, 3) against real ones → two (...) arrays."""
    if generated.shape != real.shape:
        raise InputError(f"generated {generated.shape} and real {real.shape} frames differ in shape")
    g = torch.from_numpy(np.ascontiguousarray(generated)).movedim(-1, -3)  # (..., 3, H, W)
    r = torch.from_numpy(np.ascontiguousarray(real)).movedim(-1, -3)
    return psnr(g, r).clamp(max=PSNR_CAP_DB).numpy(), ssim(g, r).numpy()


@dataclass
class Curve:
    """A per-step score over clips: mean and standard deviation at each step 1 … H."""

    mean: list[float]
    std: list[float]

    @staticmethod
    def of(values: np.ndarray) -> Curve:
        """From scores (B, H)."""
        return Curve(values.mean(axis=0).tolist(), values.std(axis=0).tolist())


@dataclass
class TeacherForcedScores:
    frames: int  # predicted frames scored
    psnr: float  # dB, next frame generated from real history vs the real frame
    ssim: float
    token_accuracy: float  # predicted tokens equal to the real frame's
    # Bits the model needs for each real token, the whole frame masked (−log2 p(code), the plain head's
    # distribution, without guidance): over all tokens, and over those whose code differs from the
    # frame before (what moved, appeared or vanished; nan where none does). A uniform guess: log2(codes).
    code_bits: float
    changed_code_bits: float
    changed_tokens: float  # share of tokens whose code differs from the frame before
    tokenizer_psnr: float  # dB, the real tokens decoded: the ceiling
    repeat_psnr: float  # dB, frame t shown again as t + 1: the floor
    tokenized_repeat_psnr: float  # dB, frame t encoded again as t + 1 and decoded: the floor in token space
    unchanged: float  # share of frames t + 1 equal to frame t (each scores the PSNR cap when repeated)


@dataclass
class DriftScores:
    psnr: Curve  # dB at generated step 1 … H, real actions
    ssim: Curve
    held_psnr: Curve  # the last context frame held still, scored at the same steps
    final_psnr_per_clip: list[float]  # dB at step H, one per clip (spread across episodes)


@dataclass
class ControlScores:
    random_psnr: Curve  # dB at step 1 … H, random actions from the same context and seed
    delta_psnr: list[float]  # real − random, mean over clips, per step
    delta_psnr_t4: float  # at t = 4 (or the horizon, when shorter)
    t: int  # the step delta_psnr_t4 was read at


@dataclass
class ClipScores:
    """Everything measured on one batch of clips, plus the frames it was measured on."""

    clips: int
    context: int
    horizon: int
    teacher: TeacherForcedScores
    drift: DriftScores
    control: ControlScores
    generated: np.ndarray = field(repr=False)  # (B, H, h, w, 3) uint8, real actions
    generated_random: np.ndarray = field(repr=False)  # (B, H, h, w, 3) uint8, random actions
    teacher_generated: np.ndarray = field(repr=False)  # (B, L − 1, h, w, 3): frame t + 1 from real ≤ t
    random_actions: np.ndarray = field(repr=False)  # (B, H, A) the actions of generated_random
    teacher_length: int = 0  # L: clip frames used for teacher forcing

    def to_dict(self) -> dict[str, Any]:
        from dataclasses import asdict

        return {
            "clips": self.clips,
            "context": self.context,
            "horizon": self.horizon,
            "teacher_forced": asdict(self.teacher),
            "drift": asdict(self.drift),
            "control": asdict(self.control),
        }


@torch.inference_mode()
def rollout(
    world: World,
    context_frames: np.ndarray,
    context_actions: np.ndarray,
    actions: np.ndarray,
    *,
    seed: int,
    history: Sequence[np.ndarray] | np.ndarray | None = None,
    stop: Callable[[], bool] | None = None,
    progress: bool = False,
    label: str = "rollout",
) -> np.ndarray:
    """From real frames (B, C, H, W, 3) and the C − 1 actions between them (after ``history``, see
    :meth:`World.reset`), generate one frame per row of ``actions`` (B, S, A) → uint8 (B, S, H, W, 3)."""
    world.reset(context_frames, context_actions, history=history, seed=seed)
    steps = actions.shape[1]
    out = np.empty((world.batch_size, steps, world.image_size, world.image_size, 3), dtype=np.uint8)
    for t in tqdm(range(steps), desc=label, unit="step", disable=not progress, leave=False):
        check_stop(stop)
        with timed("rollout step"):
            out[:, t] = world.render(world.advance(actions[:, t])).cpu().numpy()
    return out


@torch.inference_mode()
def held_tokens(tokenizer: VideoTokenizer, frames: np.ndarray, history: Sequence[np.ndarray] | None) -> Tensor:
    """(B, T − 1, N): for each clip of uint8 ``frames`` (B, T, H, W, 3) and each t < T − 1, the tokens of
    frame t shown again in place of t + 1 (encoded after the clip's ``history`` and its real frames ≤ t):
    what a world that holds frame t still would hand its tokenizer's decoder. One encode of B clips
    per t, so memory stays that of encoding the clips once."""
    held = []
    for t in range(frames.shape[1] - 1):
        clip = np.concatenate([frames[:, : t + 1], frames[:, t : t + 1]], axis=1)
        held.append(tokenizer.encode_footage(clip, history).tokens[:, -1].long())
    return torch.stack(held, dim=1)


@torch.inference_mode()
def teacher_forced(
    tokenizer: VideoTokenizer,
    dynamics: DynamicsModel,
    frames: np.ndarray,
    actions: np.ndarray,
    seed: int,
    history: Sequence[np.ndarray] | None = None,
) -> tuple[TeacherForcedScores, np.ndarray]:
    """Score clips of real uint8 frames (B, T, H, W, 3) and actions (B, T, A), T ≤ the model's window + 1,
    encoded after their ``history`` (the frames before each clip).

    Returns the scores and the generated frames 1 … T − 1, uint8 (B, T − 1, H, W, 3).
    """
    batch, length = frames.shape[:2]
    if length < 2 or actions.shape[:2] != (batch, length):
        raise InputError(f"need clips of ≥ 2 frames with one action per frame; got {frames.shape}, {actions.shape}")
    device = dynamics.trunk_pos.device
    tokens = tokenizer.encode_footage(frames, history).tokens.long()  # (B, T, N)
    count = tokens.shape[2]
    embedding = dynamics.embed_actions(torch.from_numpy(actions[:, :-1]).to(device))
    state = dynamics.context(tokens[:, :-1], embedding)  # (B, T − 1, N, D)
    targets = tokens[:, 1:]
    hidden = dynamics.head_hidden(state, embedding, torch.full_like(targets, dynamics.mask_id))
    digits = dynamics.digits(targets)
    bits = code_nll(dynamics, dynamics.digit_logits(hidden, digits), digits)[0] / math.log(2)  # (B, T − 1, N)
    changed = targets != tokens[:, :-1]
    zero = torch.zeros((), dtype=torch.long, device=device)
    sampler = FrameSampler(dynamics)
    reference = None
    if sampler.guided:  # the same frames read with no key pressed
        nothing = dynamics.no_action((batch, length - 1))
        reference = Stream(dynamics.context(tokens[:, :-1], nothing).flatten(0, 1), nothing.flatten(0, 1))
    predicted = sampler(
        state.flatten(0, 1), embedding.flatten(0, 1), torch.tensor(seed, device=device), zero, reference
    ).view(batch, length - 1, count)
    # Frame t + 1 decoded after the real codes of frames ≤ t: one clip per predicted frame.
    clips = tokens.unsqueeze(1).repeat(1, length - 1, 1, 1)  # (B, T − 1, T, N)
    target = torch.arange(1, length, device=device)
    repeated = clips.clone()
    repeated[:, torch.arange(length - 1), target] = held_tokens(tokenizer, frames, history).to(device)
    clips[:, torch.arange(length - 1), target] = predicted

    def decoded_targets(chosen: Tensor) -> np.ndarray:
        decoded = to_uint8_frames(tokenizer.decode_tokens(chosen.flatten(0, 1)))  # (B·(T − 1), T, H, W, 3)
        return decoded.view(batch, length - 1, *decoded.shape[1:])[:, torch.arange(length - 1), target].cpu().numpy()

    generated_np = decoded_targets(clips)
    ceiling = to_uint8_frames(tokenizer.decode_tokens(tokens))[:, 1:].cpu().numpy()
    held_still = decoded_targets(repeated)
    real_next = frames[:, 1:]
    psnr_values, ssim_values = frame_scores(generated_np, real_next)
    scores = TeacherForcedScores(
        frames=batch * (length - 1),
        psnr=float(psnr_values.mean()),
        ssim=float(ssim_values.mean()),
        token_accuracy=float((predicted == tokens[:, 1:]).float().mean()),
        code_bits=float(bits.mean()),
        changed_code_bits=float(bits[changed].mean()) if bool(changed.any()) else math.nan,
        changed_tokens=float(changed.float().mean()),
        tokenizer_psnr=float(frame_scores(ceiling, real_next)[0].mean()),
        repeat_psnr=float(frame_scores(np.ascontiguousarray(frames[:, :-1]), real_next)[0].mean()),
        tokenized_repeat_psnr=float(frame_scores(held_still, real_next)[0].mean()),
        unchanged=float((frames[:, 1:] == frames[:, :-1]).all(axis=(2, 3, 4)).mean()),
    )
    return scores, generated_np


def evaluate_clips(
    tokenizer: VideoTokenizer,
    dynamics: DynamicsModel,
    clips: EvalClips,
    random_actions: np.ndarray,
    *,
    context: int,
    seed: int,
    stop: Callable[[], bool] | None = None,
    progress: bool = False,
) -> ClipScores:
    """Teacher-forced, drift and controllability scores on ``clips`` (B clips of context + H frames).

    ``random_actions`` (B, H, A) replace the real actions in the controllability rollout.
    """
    horizon = clips.length - context
    if context < 1 or horizon < 1:
        raise InputError(f"clips of {clips.length} frames leave no horizon after {context} context frames")
    if random_actions.shape != (clips.count, horizon, clips.actions.shape[2]):
        raise InputError(
            f"random actions must be {(clips.count, horizon, clips.actions.shape[2])}; got {random_actions.shape}"
        )
    frames, actions = clips.frames, clips.actions
    teacher_length = min(clips.length, dynamics.config.context_frames + 1)
    check_stop(stop)
    teacher, teacher_generated = teacher_forced(
        tokenizer, dynamics, frames[:, :teacher_length], actions[:, :teacher_length], seed, clips.history
    )
    world = World(tokenizer, dynamics, batch_size=clips.count, seed=seed)
    context_frames, context_actions = frames[:, :context], actions[:, : context - 1]
    real_future = frames[:, context:]
    generated = rollout(
        world,
        context_frames,
        context_actions,
        actions[:, context - 1 : -1],
        seed=seed,
        history=clips.history,
        stop=stop,
        progress=progress,
        label="drift (real actions)",
    )
    generated_random = rollout(
        world,
        context_frames,
        context_actions,
        random_actions,
        seed=seed,
        history=clips.history,
        stop=stop,
        progress=progress,
        label="control (random actions)",
    )
    psnr_real, ssim_real = frame_scores(generated, real_future)  # (B, H)
    psnr_random, _ = frame_scores(generated_random, real_future)
    held = np.broadcast_to(frames[:, context - 1 : context], real_future.shape)
    psnr_held, _ = frame_scores(np.ascontiguousarray(held), real_future)
    delta = (psnr_real - psnr_random).mean(axis=0)  # (H,)
    t = min(CONTROL_STEP, horizon)
    drift = DriftScores(
        Curve.of(psnr_real), Curve.of(ssim_real), Curve.of(psnr_held), psnr_real[:, -1].tolist()
    )
    control = ControlScores(Curve.of(psnr_random), delta.tolist(), float(delta[t - 1]), t)
    return ClipScores(
        clips.count,
        context,
        horizon,
        teacher,
        drift,
        control,
        generated,
        generated_random,
        teacher_generated,
        random_actions,
        teacher_length,
    )
