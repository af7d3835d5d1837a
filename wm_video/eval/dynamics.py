"""``wm-video eval dynamics``: the quick check of a dynamics model, a preset of the consistency run.

It runs :func:`wm_video.eval.consistency.run_consistency` with only its first parts (teacher
forcing, drift and controllability, :mod:`wm_video.eval.rollouts`; no inverse-dynamics model,
no loop closure, no soak, none of what a player sees) on held-out clips with a 16-frame horizon, and prints a summary
instead of writing a report folder. The numbers are those the full run gives for the same clips,
seed and horizon: one implementation of each measurement.

- **Teacher-forced next frame**: frame t + 1 generated from the real frames ≤ t, beside the
  tokenizer's ceiling and "repeat the previous frame" (as it is, and encoded and decoded by the tokenizer).
- **Controllability**, Genie's ΔtPSNR: PSNR(real, generated with the real actions) − PSNR(real,
  generated with actions drawn from elsewhere in the data), same context and seed, at t = 4.
- **Drift**: PSNR along the rollout under the real actions, beside the last real context frame
  held still.
"""

from __future__ import annotations

import math
from typing import Any

from wm_video.eval.consistency import ConsistencyConfig, ConsistencyResult
from wm_video.eval.report import finite_json
from wm_video.eval.rollouts import PSNR_CAP_DB

QUICK_HORIZON = 16  # frames generated per rollout
QUICK_SKIP = frozenset({"actions", "loops", "soak", "player"})  # the parts the quick check leaves to `wm-video eval`


def quick_config(
    *,
    clips: int = 16,
    context: int = 4,
    horizon: int | None = None,
    seed: int = 0,
    episodes: tuple[int, ...] | None = None,
) -> ConsistencyConfig:
    """The consistency run's settings for the quick check."""
    return ConsistencyConfig(
        clips=clips,
        context=context,
        horizon=horizon or QUICK_HORIZON,
        soak=0,
        seed=seed,
        episodes=episodes,
        skip=QUICK_SKIP,
    )


def summary(result: ConsistencyResult) -> str:
    """The terminal summary: teacher forcing with its references, ΔPSNR, and the drift curve."""
    scores = result.results[0].clips
    tf, control, drift = scores.teacher, scores.control, scores.drift
    marks = [t for t in (1, 2, 4, 8, 16, 32, 64) if t <= scores.horizon]
    return "\n".join(
        [
            f"dynamics evaluation: {scores.clips} clips from {result.clips.origin}; {scores.context} context frames, "
            f"{scores.horizon} generated ({result.seconds:.1f} s); PSNR is the per-frame mean in dB on uint8 frames",
            f"  teacher-forced next frame  {tf.psnr:7.2f} dB   SSIM {tf.ssim:.3f}   token accuracy "
            f"{100 * tf.token_accuracy:.1f} %",
            f"    bits per real token      {tf.code_bits:7.2f}      ({tf.changed_code_bits:.2f} on the "
            f"{100 * tf.changed_tokens:.0f} % that change code; a uniform guess: "
            f"{math.log2(result.results[0].model.dynamics.config.codebook_size):.2f})",
            f"    tokenizer ceiling        {tf.tokenizer_psnr:7.2f} dB   (real tokens decoded)",
            f"    repeat previous frame    {tf.repeat_psnr:7.2f} dB   ({100 * tf.unchanged:.1f} % of frames equal the one "
            f"before: {PSNR_CAP_DB:.0f} dB each)",
            f"      through the tokenizer  {tf.tokenized_repeat_psnr:7.2f} dB   (encoded again and decoded: a world holding "
            "it still)",
            f"  ΔPSNR(t={control.t})              {control.delta_psnr_t4:+7.2f} dB   "
            f"(real actions {drift.psnr.mean[control.t - 1]:.2f}, random {control.random_psnr.mean[control.t - 1]:.2f})",
            "  rollout under real actions (drift):",
            "    frame    " + "".join(f"{t:>8d}" for t in marks),
            "    model    " + "".join(f"{drift.psnr.mean[t - 1]:8.2f}" for t in marks),
            "    held     " + "".join(f"{drift.held_psnr.mean[t - 1]:8.2f}" for t in marks),
            "  the full run (action accuracy, loop closure, soak, plots): wm-video eval --checkpoint … --out REPORT",
        ]
    )


def summary_dict(result: ConsistencyResult) -> dict[str, Any]:
    """The quick check's numbers as JSON (``--json``): the consistency run's own fields."""
    first = result.results[0]
    return finite_json(
        {
            "checkpoint": str(first.model.path),
            "step": first.model.step,
            "sampling": first.model.dynamics.sampling,
            "data": str(result.data),
            "clips_from": result.clips.origin,
            "seed": result.config.seed,
            **first.clips.to_dict(),
            "seconds": result.seconds,
            "incomplete": result.incomplete,
        }
    )
