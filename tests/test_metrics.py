import math

import numpy as np
import pytest
import torch

from wm_video.metrics import CodebookUsage, codebook_usage, codebook_usage_from_counts, psnr, ssim


def random_frames(shape, seed):
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, shape, generator=generator, dtype=torch.uint8)


def test_psnr_of_known_mse_per_frame():
    target = torch.full((2, 3, 3, 8, 8), 100, dtype=torch.uint8)
    prediction = target.clone()
    prediction[0, 1] += 5  # frame (0, 1): every pixel off by 5 → MSE 25
    prediction[1, 2, 0] += 10  # frame (1, 2): one channel off by 10 → MSE 100 / 3
    values = psnr(prediction, target)
    assert values.shape == (2, 3) and values.dtype == torch.float64
    assert values[0, 1].item() == pytest.approx(10 * math.log10(255**2 / 25))
    assert values[1, 2].item() == pytest.approx(10 * math.log10(255**2 / (100 / 3)))
    assert torch.isinf(values[0, 0])  # identical frames: +inf, documented


def test_psnr_data_range_and_shape_check():
    target = torch.zeros(3, 4, 4)
    assert psnr(target + 0.1, target, data_range=2.0).item() == pytest.approx(10 * math.log10(4 / 0.01))
    with pytest.raises(ValueError, match="differ"):
        psnr(target, torch.zeros(3, 4, 5))


def test_ssim_identical_noise_and_symmetry():
    clean = random_frames((4, 3, 32, 32), 0)
    noisy = (clean.int() + random_frames((4, 3, 32, 32), 1).int() // 4 - 32).clamp(0, 255).to(torch.uint8)
    same = ssim(clean, clean)
    assert same.shape == (4,) and torch.allclose(same, torch.ones(4, dtype=torch.float64))
    constant = torch.full((3, 16, 16), 7, dtype=torch.uint8)
    assert ssim(constant, constant).item() == pytest.approx(1.0)
    forward, backward = ssim(noisy, clean), ssim(clean, noisy)
    assert (forward < 0.99).all() and (forward > -1).all()
    assert torch.allclose(forward, backward)
    unrelated = ssim(random_frames((4, 3, 32, 32), 2), clean)
    assert (unrelated < forward).all()  # more damage, lower score


def test_ssim_small_frames_use_a_frame_sized_window():
    frames = random_frames((2, 3, 7, 5), 3)
    assert torch.allclose(ssim(frames, frames), torch.ones(2, dtype=torch.float64))
    assert (ssim(frames, random_frames((2, 3, 7, 5), 4)) < 1).all()


@pytest.mark.parametrize("size", [(11, 11), (32, 48)])
def test_ssim_matches_scikit_image(size):
    metrics = pytest.importorskip("skimage.metrics")
    rng = np.random.default_rng(0)
    reference = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
    for spread in (10, 60, 255):
        distorted = np.clip(reference + rng.integers(-spread, spread + 1, reference.shape), 0, 255).astype(
            np.uint8
        )
        expected = metrics.structural_similarity(
            distorted,
            reference,
            gaussian_weights=True,
            sigma=1.5,
            use_sample_covariance=False,
            data_range=255,
            channel_axis=-1,
        )
        ours = ssim(
            torch.from_numpy(distorted).permute(2, 0, 1), torch.from_numpy(reference).permute(2, 0, 1)
        )
        assert ours.item() == pytest.approx(expected, abs=1e-12)


def test_codebook_usage_uniform_and_skewed():
    usage = codebook_usage(torch.tensor([[0, 1, 2, 3], [3, 2, 1, 0]]), codebook_size=16)
    assert usage == CodebookUsage(used=4, codebook_size=16, fraction=0.25, perplexity=pytest.approx(4.0))
    skewed = codebook_usage(torch.tensor([5, 5, 5, 9]), codebook_size=10)
    entropy = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    assert skewed.used == 2 and skewed.perplexity == pytest.approx(math.exp(entropy))
    assert 1 < skewed.perplexity < 2
    assert codebook_usage_from_counts(torch.tensor([0, 3, 0, 1]), 10) == skewed


def test_codebook_usage_empty_and_out_of_range():
    assert codebook_usage(torch.zeros(0, dtype=torch.int64), 8).used == 0
    with pytest.raises(ValueError, match="outside a codebook of 8"):
        codebook_usage(torch.tensor([0, 8]), 8)
