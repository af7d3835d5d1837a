"""Losses against the tokenizer's blur: a patch discriminator that learns real from blurred frames,
the adaptive weight (finite, clamped), the generator term's ramp and separate gradients, the
amplitude-spectrum term, bad configs refused (training with them: tests/test_train_tokenizer.py)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from wm_video.errors import InputError
from wm_video.tokenizer.adversarial import (
    AdversarialConfig,
    adaptive_weight,
    adversarial_losses,
    discriminator_hinge_loss,
)
from wm_video.tokenizer.discriminator import DiscriminatorConfig, PatchDiscriminator
from wm_video.tokenizer.loss import ReconstructionLossConfig, reconstruction_loss, spectrum_distance

SMALL = DiscriminatorConfig(channels=16, layers=2)


def textured(batch: int, frames: int = 2, size: int = 32, seed: int = 0) -> torch.Tensor:
    """Frames (B, T, 3, S, S) on [-1, 1] with pixel-scale texture (floor-tile grain) over a gradient."""
    generator = torch.Generator().manual_seed(seed)
    grain = torch.rand(batch, frames, 1, size, size, generator=generator) * 2 - 1
    ramp = torch.linspace(-0.5, 0.5, size).view(1, 1, 1, 1, size)
    return (0.6 * grain + ramp).clamp(-1, 1).expand(-1, -1, 3, -1, -1).contiguous()


def blurred(frames: torch.Tensor) -> torch.Tensor:
    """A 3×3 box blur of each frame: the tokenizer's flat texture."""
    flat = frames.flatten(0, 1)
    return F.avg_pool2d(flat, 3, stride=1, padding=1, count_include_pad=False).view_as(frames)


def test_the_discriminator_learns_real_from_blurred_frames_in_a_few_steps() -> None:
    torch.manual_seed(0)
    discriminator = PatchDiscriminator(SMALL)
    optimizer = torch.optim.Adam(discriminator.parameters(), lr=2e-3, betas=(0.5, 0.9))
    for step in range(20):
        real = textured(4, seed=step)
        loss = discriminator_hinge_loss(discriminator(real), discriminator(blurred(real)))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    real = textured(4, seed=100)  # frames it has not seen
    with torch.no_grad():
        real_logits, fake_logits = discriminator(real), discriminator(blurred(real))
    assert real_logits.shape == (4, 2, 8, 8)  # one logit per patch: 32 px / 2**2
    assert (real_logits > 0).float().mean() > 0.9 and (fake_logits < 0).float().mean() > 0.9


def test_the_adaptive_weight_is_the_gradient_norm_ratio_finite_and_clamped() -> None:
    layer = torch.nn.Parameter(torch.ones(3))
    reconstruction_loss_ = (2 * layer).sum()  # gradient (2, 2, 2): norm 2√3
    generator_loss = (0.5 * layer).sum()  # norm √3 / 2
    weight = adaptive_weight(reconstruction_loss_, generator_loss, layer, maximum=1e4)
    torch.testing.assert_close(weight, torch.tensor(2 * 3**0.5 / (3**0.5 / 2 + 1e-4)))
    assert not weight.requires_grad
    flat = adaptive_weight(
        (2 * layer).sum(), (0 * layer).sum(), layer, maximum=100.0
    )  # no adversarial gradient
    assert float(flat) == 100.0
    broken = adaptive_weight((2 * layer).sum(), (float("nan") * layer).sum(), layer, maximum=100.0)
    assert torch.isfinite(broken) and 0 <= float(broken) <= 100.0


def test_the_generator_term_ramps_in_and_moves_only_the_tokenizer() -> None:
    config = AdversarialConfig(weight=0.5, start=10, ramp_steps=4)
    assert [config.ramp(step) for step in (9, 10, 12, 14, 100)] == [0.0, 0.0, 0.5, 1.0, 1.0]
    assert not config.active(9) and config.active(10) and not AdversarialConfig().enabled
    torch.manual_seed(0)
    decoder = torch.nn.Linear(4, 3 * 32 * 32)  # the "last layer"
    discriminator = PatchDiscriminator(SMALL)
    target = textured(1)
    reconstruction = decoder(torch.randn(1, 2, 4)).view(1, 2, 3, 32, 32).tanh()
    pixel = (reconstruction - target).square().mean()
    terms = adversarial_losses(
        reconstruction, target, pixel, discriminator=discriminator, core_discriminator=discriminator,
        last_layer=decoder.weight, config=config, step=12,
    )  # fmt: skip
    torch.testing.assert_close(terms.generator, 0.5 * 0.5 * terms.adaptive_weight * terms.generator_hinge)
    terms.generator.backward()
    assert decoder.weight.grad is not None and all(p.grad is None for p in discriminator.parameters())
    decoder.zero_grad()
    terms.discriminator.backward()
    assert decoder.weight.grad is None and all(p.grad is not None for p in discriminator.parameters())
    assert set(terms.metrics()) == {
        "discriminator_loss",
        "generator_loss",
        "adaptive_weight",
        "logit_real",
        "logit_fake",
    }


def test_the_frequency_term_charges_blur_and_is_zero_for_a_perfect_frame() -> None:
    frames = textured(2)
    assert float(spectrum_distance(frames, frames)) == 0.0
    assert float(spectrum_distance(blurred(frames), frames)) > 0.05
    plain = reconstruction_loss(blurred(frames), frames, ReconstructionLossConfig())
    with_frequency = reconstruction_loss(
        blurred(frames), frames, ReconstructionLossConfig(frequency_weight=2.0)
    )
    assert plain.frequency is None and with_frequency.frequency is not None
    torch.testing.assert_close(with_frequency.total, plain.total + 2.0 * with_frequency.frequency)


@pytest.mark.parametrize(
    "make",
    [
        lambda: AdversarialConfig(weight=-1.0),
        lambda: AdversarialConfig(weight=float("nan")),
        lambda: AdversarialConfig(weight=1.0, start=-1),
        lambda: AdversarialConfig(weight=1.0, ramp_steps=-5),
        lambda: ReconstructionLossConfig(frequency_weight=float("inf")),
        lambda: DiscriminatorConfig(channels=12),
        lambda: DiscriminatorConfig(layers=0),
    ],
)
def test_bad_configs_are_refused_in_one_line(make: object) -> None:
    with pytest.raises(InputError) as error:
        make()  # type: ignore[operator]
    assert "\n" not in str(error.value)
