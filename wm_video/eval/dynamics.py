"""How well the dynamics model predicts, on real clips: next-frame fidelity and controllability.

- **Teacher-forced next frame** (:func:`teacher_forced`): every frame t + 1 of a clip is
  generated from the real frames ≤ t and action a_t (the full MaskGIT decode, as in play), then
  decoded by the tokenizer after the real codes of the frames before it, and compared with the
  real frame in uint8 pixels (PSNR per frame, averaged). Two references come with it: the
  tokenizer's own reconstruction of the real tokens (the ceiling) and simply repeating frame t
  (what a model that learnt nothing about motion would score).
- **Controllability** (:func:`controllability`, Genie's ΔtPSNR): from the same real context
  the world is rolled out ``horizon`` frames twice with the same seed, once with the real
  actions and once with actions drawn from elsewhere in the data; ΔPSNR is PSNR(real,
  generated with real actions) − PSNR(real, generated with random actions) at the last frame.
  A model that ignores its actions scores 0.
- **Drift**: PSNR of each generated frame of a rollout under the real actions
  (:func:`wm_video.eval.rollouts.rollout`), beside the last real context frame held still.
- :func:`evaluate_dynamics` runs all three on held-out clips (``wm-video eval dynamics``, the
  quick check printed to the terminal); ``wm-video eval`` without WHAT is the full consistency
  run (:mod:`wm_video.eval.consistency`), which adds SSIM, spreads, curves, action accuracy,
  loop closure and a soak, and writes a report folder.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from wm_video.data.sampler import ClipBatch, ClipSampler
from wm_video.data.tokens import TokenCache
from wm_video.dynamics import DynamicsModel, FrameSampler, SamplingConfig
from wm_video.engine import World, check_batch_fits
from wm_video.errors import InputError
from wm_video.metrics import psnr
from wm_video.tokenizer import VideoTokenizer
from wm_video.tokenizer.pixels import to_uint8_frames

PSNR_CAP_DB = 100.0


def _psnr_mean(generated: Tensor, real: Tensor) -> float:
    """Per-frame PSNR averaged; both uint8 (..., H, W, 3)."""
    flat_g, flat_r = generated.reshape(-1, *generated.shape[-3:]), real.reshape(-1, *real.shape[-3:])
    scores = psnr(flat_g.permute(0, 3, 1, 2), flat_r.permute(0, 3, 1, 2)).clamp(max=PSNR_CAP_DB)
    return float(scores.mean())


@dataclass
class TeacherForcedReport:
    frames: int  # predicted frames scored
    psnr: float  # dB, generated next frame vs real, per-frame mean
    token_accuracy: float  # share of predicted tokens equal to the real frame's tokens
    tokenizer_psnr: float  # dB, the real tokens decoded (the ceiling)
    repeat_psnr: float  # dB, frame t shown again as frame t + 1 (the floor a model must beat)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@torch.inference_mode()
def teacher_forced(
    tokenizer: VideoTokenizer,
    dynamics: DynamicsModel,
    frames: np.ndarray,
    tokens: Tensor,
    actions: Tensor,
    *,
    sampling: SamplingConfig | None = None,
    seed: int = 0,
) -> tuple[TeacherForcedReport, Tensor]:
    """Score clips: real uint8 frames (B, T, H, W, 3), their tokens (B, T, N), actions (B, T, A).

    Returns the report and the generated frames 1 … T − 1, uint8 (B, T − 1, H, W, 3).
    """
    batch, length, count = tokens.shape
    if length < 2 or frames.shape[:2] != (batch, length):
        raise InputError(
            f"need clips of ≥ 2 frames with one frame per token grid; got {frames.shape}, {tokens.shape}"
        )
    device = dynamics.trunk_pos.device
    tokens, actions = tokens.to(device), actions.to(device)
    embedding = dynamics.embed_actions(actions[:, :-1])
    state = dynamics.context(tokens[:, :-1], embedding)  # (B, T − 1, N, D)
    sampler = FrameSampler(dynamics, sampling)
    seed_t = torch.tensor(seed, device=device)
    predicted = sampler(
        state.flatten(0, 1), embedding.flatten(0, 1), seed_t, torch.zeros((), dtype=torch.long, device=device)
    )
    predicted = predicted.view(batch, length - 1, count)
    # Frame t + 1 decoded after the real codes of frames ≤ t: one clip per predicted frame.
    clips = tokens.unsqueeze(1).repeat(1, length - 1, 1, 1)  # (B, T − 1, T, N)
    target = torch.arange(1, length, device=device)
    clips[:, torch.arange(length - 1), target] = predicted
    decoded = to_uint8_frames(tokenizer.decode_tokens(clips.flatten(0, 1)))  # (B·(T − 1), T, H, W, 3)
    generated = decoded.view(batch, length - 1, *decoded.shape[1:])[:, torch.arange(length - 1), target]
    real = torch.from_numpy(np.asarray(frames)).to(device)
    ceiling = to_uint8_frames(tokenizer.decode_tokens(tokens))[:, 1:]
    report = TeacherForcedReport(
        frames=batch * (length - 1),
        psnr=_psnr_mean(generated, real[:, 1:]),
        token_accuracy=float((predicted == tokens[:, 1:]).float().mean()),
        tokenizer_psnr=_psnr_mean(ceiling, real[:, 1:]),
        repeat_psnr=_psnr_mean(real[:, :-1], real[:, 1:]),
    )
    return report, generated


@dataclass
class ControllabilityReport:
    clips: int
    horizon: int  # frames generated after the context
    psnr_real_actions: float  # dB at the last generated frame
    psnr_random_actions: float
    delta_psnr: float  # real − random: how much the actions matter

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def controllability(
    world: World,
    frames: np.ndarray,
    actions: np.ndarray,
    random_actions: np.ndarray,
    *,
    context: int,
    horizon: int = 4,
    seed: int = 0,
) -> ControllabilityReport:
    """ΔPSNR at ``horizon``: clips of uint8 frames (B, context + horizon, H, W, 3) and actions
    (B, context + horizon, A); ``random_actions`` (B, horizon, A) replace the real ones."""
    batch = world.batch_size
    if frames.shape[0] != batch or frames.shape[1] < context + horizon or context < 1 or horizon < 1:
        raise InputError(
            f"need {batch} clips of ≥ {context + horizon} frames (context {context} + horizon {horizon}); "
            f"got {frames.shape}"
        )
    real = torch.from_numpy(np.ascontiguousarray(frames[:, context + horizon - 1]))
    scores = []
    for rollout_actions in (actions[:, context - 1 : context + horizon - 1], random_actions):
        world.reset(frames[:, :context], actions[:, : context - 1], seed=seed)
        shown = world.render(world.advance(rollout_actions[:, 0]))
        for t in range(1, horizon):
            shown = world.render(world.advance(rollout_actions[:, t]))
        scores.append(_psnr_mean(shown.cpu(), real))
    return ControllabilityReport(batch, horizon, scores[0], scores[1], scores[0] - scores[1])


def frames_of_clips(tokens: TokenCache, frames: np.ndarray, picked: ClipBatch, length: int) -> np.ndarray:
    """The uint8 frames (B, length, H, W, 3) of clips drawn from the token cache made from ``frames``."""
    first_row = dict(zip(tokens.episode_indices.tolist(), tokens.episode_starts[:-1].tolist(), strict=True))
    rows = [first_row[int(e)] + int(s) for e, s in zip(picked.episode, picked.start, strict=True)]
    return np.stack([frames[r : r + length] for r in rows])


@dataclass
class DynamicsReport:
    """Teacher-forced fidelity, controllability and drift of a dynamics model on held-out clips."""

    clips: int
    context: int
    horizon: int
    teacher_forced: TeacherForcedReport
    control: ControllabilityReport
    rollout_psnr: list[float]  # dB at generated frame 1 … horizon, real actions
    repeat_psnr: list[float]  # dB of the last context frame held still, at the same frames
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def format(self) -> str:
        tf, control = self.teacher_forced, self.control
        marks = [t for t in (1, 2, 4, 8, 16, 32, 64) if t <= self.horizon]
        lines = [
            f"dynamics evaluation: {self.clips} clips, {self.context} context frames, {self.horizon} generated "
            f"({self.seconds:.1f} s); PSNR is the per-frame mean in dB on uint8 frames",
            f"  teacher-forced next frame  {tf.psnr:7.2f} dB   token accuracy {100 * tf.token_accuracy:.1f} %",
            f"    tokenizer ceiling        {tf.tokenizer_psnr:7.2f} dB   (real tokens decoded)",
            f"    repeat previous frame    {tf.repeat_psnr:7.2f} dB",
            f"  ΔPSNR(t={control.horizon})              {control.delta_psnr:+7.2f} dB   "
            f"(real actions {control.psnr_real_actions:.2f}, random {control.psnr_random_actions:.2f})",
            "  rollout under real actions (drift):",
            "    frame    " + "".join(f"{t:>8d}" for t in marks),
            "    model    " + "".join(f"{self.rollout_psnr[t - 1]:8.2f}" for t in marks),
            "    held     " + "".join(f"{self.repeat_psnr[t - 1]:8.2f}" for t in marks),
        ]
        return "\n".join(lines)


def evaluate_dynamics(
    tokenizer: VideoTokenizer,
    dynamics: DynamicsModel,
    tokens: TokenCache,
    frames: np.ndarray,
    episodes: list[int],
    *,
    clips: int = 16,
    context: int = 4,
    horizon: int = 16,
    seed: int = 0,
) -> DynamicsReport:
    """Score ``clips`` clips of ``context + horizon`` frames drawn (with ``seed``) from ``episodes``.

    ``tokens`` is the token cache and ``frames`` the frame cache's (N, H, W, 3) rows it was made from.
    """
    started = time.perf_counter()
    length = context + horizon
    check_batch_fits(tokenizer, dynamics, clips, length, "ask for fewer --clips")
    picked = ClipSampler(tokens, length, seed=seed, episodes=episodes).sample_batch(clips)
    clip_frames = frames_of_clips(tokens, frames, picked, length)
    device = dynamics.trunk_pos.device
    clip_tokens = torch.from_numpy(picked.frames.astype(np.int64)).to(device)
    actions = torch.from_numpy(picked.actions).to(device)
    report, _ = teacher_forced(tokenizer, dynamics, clip_frames, clip_tokens, actions, seed=seed)
    world = World(tokenizer, dynamics, batch_size=clips, seed=seed)
    rng = np.random.default_rng(seed)
    random_actions = tokens.actions[rng.integers(0, tokens.num_frames, (clips, min(4, horizon)))]
    control = controllability(
        world,
        clip_frames,
        picked.actions,
        random_actions,
        context=context,
        horizon=min(4, horizon),
        seed=seed,
    )
    from wm_video.eval.rollouts import frame_scores, rollout  # it builds on this module

    generated = rollout(
        world,
        clip_frames[:, :context],
        picked.actions[:, : context - 1],
        picked.actions[:, context - 1 : -1],
        seed=seed,
    )
    curve = frame_scores(generated, clip_frames[:, context:])[0].mean(axis=0).tolist()
    held = clip_frames[:, context - 1 : context]
    repeat = [
        _psnr_mean(torch.from_numpy(held[:, 0]), torch.from_numpy(clip_frames[:, context + t]))
        for t in range(horizon)
    ]
    return DynamicsReport(
        clips, context, horizon, report, control, curve, repeat, time.perf_counter() - started
    )
