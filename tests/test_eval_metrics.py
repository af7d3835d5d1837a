"""Consistency-run metrics on inputs with known answers: identical frames, a shifted video, a model
that ignores its actions, frame statistics, collapse detection, loop programs."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
import torch

from wm_video.actions import ActionSpace
from wm_video.dynamics import DynamicsConfig, DynamicsModel
from wm_video.eval.clips import EvalClips, EvalInterrupted
from wm_video.eval.loops import build_programs
from wm_video.eval.rollouts import evaluate_clips, frame_scores
from wm_video.eval.soak import (
    CollapseRule,
    SoakReference,
    detect_collapse,
    footage_collapse,
    footage_percentiles,
    reference_statistics,
)
from wm_video.metrics import colour_histogram, frame_statistics, histogram_distance
from wm_video.tokenizer import TokenizerConfig, VideoTokenizer

TOKENIZER = TokenizerConfig(
    image_size=32, patch_size=8, dim=32, heads=2, encoder_layers=1, decoder_layers=1, temporal_window=3
)
NAMES = ("forward", "turn_left", "mouse_dx")


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_models(seed: int = 0) -> tuple[VideoTokenizer, DynamicsModel]:
    torch.manual_seed(seed)
    tokenizer = VideoTokenizer(TOKENIZER).eval()
    config = DynamicsConfig(
        grid_size=TOKENIZER.grid_size, levels=TOKENIZER.levels, action_names=NAMES, action_buttons=2,
        dim=32, heads=2, trunk_layers=1, head_layers=1, context_frames=3,
    )  # fmt: skip
    return tokenizer, DynamicsModel(config).eval()


def textured(count: int, size: int = 32, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (count, size, size, 3), dtype=np.uint8)


def test_identical_frames_score_the_cap_and_ssim_one() -> None:
    frames = textured(5)
    psnr, ssim = frame_scores(frames, frames.copy())
    assert psnr.shape == (5,) and np.all(psnr == 100.0)
    assert np.allclose(ssim, 1.0)


def test_a_video_shifted_by_one_frame_has_the_known_psnr() -> None:
    # Frame t is flat grey 10·t: shown one frame late, every pixel is off by 10 → MSE 100.
    video = np.stack([np.full((16, 16, 3), 10 * t, np.uint8) for t in range(8)])
    psnr, _ = frame_scores(video[:-1], video[1:])
    assert np.allclose(psnr, 20 * math.log10(255 / 10))  # 28.13 dB
    shifted = np.roll(textured(1)[0], 1, axis=1)  # a one-pixel pan of noise is far worse
    assert frame_scores(shifted, textured(1)[0])[0] < 10


def test_a_model_that_ignores_actions_has_zero_delta_psnr() -> None:
    tokenizer, dynamics = tiny_models()
    rng = np.random.default_rng(0)
    frames = textured(2 * 8).reshape(2, 8, 32, 32, 3)
    actions = rng.integers(0, 2, (2, 8, 3)).astype(np.float32)
    clips = EvalClips(frames, actions, np.arange(2), np.zeros(2, np.int64), "test")
    random_actions = 1.0 - actions[:, 3:]  # every button flipped
    listening = evaluate_clips(tokenizer, dynamics, clips, random_actions, context=3, seed=1)
    assert listening.horizon == 5 and listening.control.t == 4
    assert np.abs(listening.control.delta_psnr).max() > 0  # random weights do read the actions
    with torch.no_grad():
        dynamics.action_embed[0].weight.zero_()  # the embedding no longer depends on the action
    deaf = evaluate_clips(tokenizer, dynamics, clips, random_actions, context=3, seed=1)
    assert deaf.control.delta_psnr == [0.0] * 5 and deaf.control.delta_psnr_t4 == 0.0
    assert np.array_equal(deaf.generated, deaf.generated_random)
    assert len(deaf.drift.psnr.mean) == 5 and len(deaf.drift.final_psnr_per_clip) == 2
    assert deaf.teacher_generated.shape == (2, 3, 32, 32, 3)  # context_frames + 1 = 4 frames → 3 predicted
    # the same seed gives the same rollout
    again = evaluate_clips(tokenizer, dynamics, clips, random_actions, context=3, seed=1)
    assert np.array_equal(again.generated, deaf.generated)
    with pytest.raises(EvalInterrupted):
        evaluate_clips(tokenizer, dynamics, clips, random_actions, context=3, seed=1, stop=lambda: True)


def test_frame_statistics_see_blur_noise_and_colour() -> None:
    y, x = np.mgrid[0:32, 0:32]
    stripes = np.stack([(x // 4 % 2) * 200 + 20] * 3, -1).astype(np.uint8)
    blurred = np.full_like(stripes, int(stripes.mean()))
    noise = textured(1)[0]
    frames = torch.from_numpy(np.stack([stripes, blurred, noise])).permute(0, 3, 1, 2)
    stats = frame_statistics(frames)
    assert stats["sharpness"][1] == 0 and stats["spread"][1] == 0
    assert stats["sharpness"][2] > stats["sharpness"][0] > 0
    histograms = colour_histogram(frames)
    assert histograms.shape == (3, 48) and torch.allclose(
        histograms.sum(-1), torch.ones(3, dtype=torch.float64)
    )
    assert histogram_distance(histograms[0], histograms[0]) == 0
    red = torch.zeros(1, 3, 4, 4)
    red[:, 0] = 255
    assert histogram_distance(
        colour_histogram(red)[0], colour_histogram(torch.zeros(1, 3, 4, 4))[0]
    ) == pytest.approx(1 / 3)


def test_collapse_is_found_at_the_frame_it_starts() -> None:
    rng = np.random.default_rng(0)
    real = textured(64, seed=1)
    reference = reference_statistics(real[:-1], real[1:])
    assert isinstance(reference, SoakReference) and len(reference.histogram) == 48

    def series(frames: int) -> dict[str, np.ndarray]:
        typical = {k: np.full(frames, v[1]) for k, v in reference.percentiles.items()}
        return typical | {
            "sharpness": rng.normal(typical["sharpness"][0], 0.1, frames),
            "change": rng.uniform(20, 40, frames),
        }

    healthy = series(400)
    assert detect_collapse(healthy, reference, window=20) == dict.fromkeys(
        ["blur", "noise", "palette", "freeze"]
    )
    blurred = series(400)
    blurred["sharpness"][300:] = 0.1
    assert detect_collapse(blurred, reference, window=20)["blur"] == pytest.approx(300, abs=1)
    frozen = series(400)
    frozen["change"][250:] = 0.0
    found = detect_collapse(frozen, reference, window=20, rule=CollapseRule())
    assert found["freeze"] == 250 and found["blur"] is None
    faded = series(400)
    faded["spread"][200:] = 0.5 * reference.percentiles["spread"][0]  # contrast gone, edges kept
    assert detect_collapse(faded, reference, window=20)["blur"] == pytest.approx(200, abs=1)
    grey = series(400)
    grey["mean"][120:] = reference.percentiles["mean"][2] + 5
    assert detect_collapse(grey, reference, window=20)["palette"] == pytest.approx(120, abs=1)
    # real footage itself raises no alarm
    assert footage_collapse([real], reference, window=20) == dict.fromkeys(
        ["blur", "noise", "palette", "freeze"], 0
    )
    noisy = series(400)
    noisy["sharpness"][100:] *= 10
    assert detect_collapse(noisy, reference, window=20)["noise"] == pytest.approx(100, abs=1)
    # footage smoothed as a tokenizer might smooth it: the detector calls it blur, and its own
    # percentiles (the report's "tokenizer" column) show that the blur is there before any rollout
    smoothed = np.stack([cv2.GaussianBlur(frame, (5, 5), 1.5) for frame in real])
    assert footage_collapse([smoothed], reference, window=20)["blur"] == 1
    as_real, as_smoothed = footage_percentiles([real], reference), footage_percentiles([smoothed], reference)
    assert as_real["sharpness"] == pytest.approx(reference.percentiles["sharpness"])
    assert as_smoothed["sharpness"][1] < 0.5 * as_real["sharpness"][1]


def test_loop_programs_come_back() -> None:
    space = ActionSpace(("forward", "back", "turn_left", "turn_right"))
    programs = build_programs(space, steps=3, circle_steps=5)
    assert set(programs) == {"circle", "turn_back", "forward_back"}
    assert programs["circle"].shape == (5, 4) and (programs["circle"][:, 2] == 1).all()
    turn = programs["turn_back"]
    assert turn[:3, 2].sum() == 3 and turn[3:, 3].sum() == 3 and turn[:, :2].sum() == 0
    assert build_programs(ActionSpace(("up", "fire")), steps=3, circle_steps=None) == {}
