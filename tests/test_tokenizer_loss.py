"""The tokenizer's loss weighted where frames change: a small moving object weighs as much as a
large static background, so a reconstruction that drops it is no longer nearly free."""

from __future__ import annotations

import pytest
import torch

from wm_video.errors import InputError
from wm_video.tokenizer.loss import (
    ReconstructionLossConfig,
    change_map,
    pixel_weights,
    reconstruction_loss,
)


def ball_clip(frames: int = 3, size: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """A grey background (B=1, T, 3, S, S) on [-1, 1] with a one-pixel white ball moving right,
    and the background alone (a reconstruction that lost the ball)."""
    background = torch.full((1, frames, 3, size, size), -0.5)
    clip = background.clone()
    for t in range(frames):
        clip[0, t, :, 8, 4 + 2 * t] = 1.0
    return clip, background


def test_no_change_weight_is_the_plain_loss() -> None:
    clip, background = ball_clip()
    plain = reconstruction_loss(background, clip, ReconstructionLossConfig())
    error = background - clip
    torch.testing.assert_close(plain.total, error.square().mean() + 0.2 * error.abs().mean())


def test_previous_frame_weights_mark_what_moved_and_average_one() -> None:
    clip, _ = ball_clip()
    config = ReconstructionLossConfig(change_weight=10.0)
    weights = pixel_weights(clip, config)
    assert weights.shape == (1, 3, 1, 16, 16)
    torch.testing.assert_close(weights.mean(), torch.tensor(1.0))
    first, second = weights[0, 0, 0], weights[0, 1, 0]
    assert torch.all(first == first[0, 0])  # the first frame has no predecessor: uniform
    # frame 1: the ball left (8, 4) and arrived at (8, 6); both, and one pixel around them, weigh more
    assert second[8, 4] > second[0, 0] and second[8, 6] > second[0, 0] and second[7, 7] > second[0, 0]
    assert second[8, 12] == second[0, 0]


def test_median_weights_mark_what_is_not_background() -> None:
    clip, background = ball_clip()
    config = ReconstructionLossConfig(change_weight=10.0, change_reference="median")
    with pytest.raises(InputError, match="median frame"):
        pixel_weights(clip, config)
    weights = pixel_weights(clip, config, median=background[0, 0])
    for t in range(3):  # the ball is marked in every frame, the first included
        assert weights[0, t, 0, 8, 4 + 2 * t] > weights[0, t, 0, 0, 0]
    assert config.needs_median and not ReconstructionLossConfig(change_weight=10.0).needs_median


def test_losing_the_ball_costs_far_more_with_the_weighting() -> None:
    clip, background = ball_clip()
    plain = reconstruction_loss(background, clip, ReconstructionLossConfig())
    weighted = reconstruction_loss(background, clip, ReconstructionLossConfig(change_weight=50.0))
    assert weighted.total > 5 * plain.total
    torch.testing.assert_close(weighted.mse, plain.mse)  # the logged MSE (PSNR) stays unweighted


def test_change_map_ignores_noise_and_saturates_at_the_threshold() -> None:
    target = torch.zeros(1, 1, 3, 8, 8)
    target[0, 0, 2, 6, 1] = 0.09  # codec noise: under half the threshold, unchanged
    target[0, 0, 0, 4, 4] = 0.15  # half way up the ramp
    target[0, 0, 1, 1, 1] = 0.5
    changed = change_map(target, torch.zeros_like(target), threshold=0.2)
    assert changed[0, 0, 0, 4, 4] == pytest.approx(0.5) and changed[0, 0, 0, 1, 1] == 1.0
    assert changed[0, 0, 0, 0, 0] == 1.0  # widened by one pixel
    assert changed[0, 0, 0, 6, 1] == 0.0 and changed[0, 0, 0, 7, 7] == 0.0


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"change_weight": -1.0}, "--change-weight"),
        ({"change_reference": "first"}, "--change-reference"),
        ({"change_threshold": 0.0}, "change threshold"),
    ],
)
def test_bad_settings_are_named(change: dict[str, object], message: str) -> None:
    with pytest.raises(InputError, match=message):
        ReconstructionLossConfig(**change)  # type: ignore[arg-type]
