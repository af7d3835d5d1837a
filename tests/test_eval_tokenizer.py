import json

import numpy as np
import pytest
import torch
from conftest import make_dataset

from wm_video.data.cache import load_cache
from wm_video.errors import InputError
from wm_video.eval import evaluate_tokenizer
from wm_video.eval.tokenizer import context_frames, reconstruct_chunks
from wm_video.tokenizer import TokenizerConfig, VideoTokenizer
from wm_video.tokenizer.pixels import to_model_pixels

LENGTHS = [12, 7, 20]  # the tiny_dataset's episodes
CONFIG = TokenizerConfig(
    image_size=16, patch_size=8, dim=32, heads=2, encoder_layers=2, decoder_layers=1, temporal_window=3
)


@pytest.fixture(scope="module")
def dataset_root(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("eval") / "ds", LENGTHS).root


@pytest.fixture(scope="module")
def cache(dataset_root):
    return load_cache(dataset_root, size=16, progress=False)


@pytest.fixture(scope="module")
def model():
    """A tiny tokenizer whose weights are shaken so each frame leans on the frames before it."""
    torch.manual_seed(0)
    model = VideoTokenizer(CONFIG).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.2)
    return model


def test_report_on_every_episode(model, cache):
    report = evaluate_tokenizer(model, cache, chunk_frames=8, progress=False)
    assert report.complete and report.frames == sum(LENGTHS) and report.episodes == [0, 1, 2]
    assert [row["frames"] for row in report.per_episode] == LENGTHS
    assert report.psnr_p05 <= report.psnr_median and 0 < report.psnr_mean < 100
    assert -1 <= report.ssim_mean <= 1 and all(-1 <= row["ssim"] <= 1 for row in report.per_episode)
    assert report.tokens_per_frame == CONFIG.tokens_per_frame == 4
    assert report.bits_per_frame == pytest.approx(CONFIG.bits_per_frame)
    assert 1 <= report.codebook_used <= report.frames * report.tokens_per_frame
    assert report.codebook_size == CONFIG.codebook_size
    assert report.codebook_fraction == pytest.approx(report.codebook_used / CONFIG.codebook_size)
    assert 1 <= report.perplexity <= report.codebook_used
    assert json.loads(json.dumps(report.to_dict()))["frames"] == sum(LENGTHS)
    assert "PSNR (per-frame mean)" in report.format()


def test_chunks_equal_the_whole_episode(model, cache):
    frames = np.array(cache.episode(2)[0])  # 20 frames
    with torch.inference_mode():
        whole = model(to_model_pixels(frames).unsqueeze(0))

    def chunked(context):
        chunks = list(reconstruct_chunks(model, frames, chunk_frames=3, context=context))
        assert [chunk.start for chunk in chunks] == list(range(0, 20, 3))
        return torch.cat([chunk.tokens for chunk in chunks]), torch.cat(
            [chunk.reconstruction for chunk in chunks]
        )

    tokens, reconstruction = chunked(None)  # context_frames(CONFIG) = (2 + 1) × (3 − 1) = 6
    assert context_frames(CONFIG) == 6
    assert torch.equal(tokens, whole.encoding.tokens[0])
    assert (reconstruction - whole.reconstruction[0]).abs().max() < 1e-5  # float rounding only
    # temporal_window − 1 frames of context are not enough: every block reaches that far back.
    _, short = chunked(CONFIG.temporal_window - 1)
    assert (short - whole.reconstruction[0]).abs().max() > 1e-2

    in_chunks = evaluate_tokenizer(model, cache, chunk_frames=3, progress=False)
    in_one_pass = evaluate_tokenizer(model, cache, chunk_frames=1000, progress=False)
    for row, expected in zip(in_chunks.per_episode, in_one_pass.per_episode, strict=True):
        assert row == pytest.approx(expected, rel=1e-5, abs=1e-5)  # a uint8 value may round the other way
    assert (in_chunks.codebook_used, in_chunks.perplexity) == (
        in_one_pass.codebook_used,
        in_one_pass.perplexity,
    )


def test_episode_subset_and_frame_limit(model, cache):
    model.train()  # the evaluator runs in eval mode and puts the model back as it was
    report = evaluate_tokenizer(model, cache, episodes=[2, 0], max_frames_per_episode=5, progress=False)
    assert model.training
    model.eval()
    assert report.episodes == [2, 0] and report.frames == 10
    assert [row["frames"] for row in report.per_episode] == [5, 5]


def test_stop_returns_what_was_done(model, cache):
    polls = []

    def stop():
        polls.append(1)
        return len(polls) > 2  # two chunks, then stop

    report = evaluate_tokenizer(model, cache, chunk_frames=4, progress=False, stop=stop)
    assert not report.complete and report.frames == 8 and report.episodes == [0]
    assert "stopped early" in report.format()

    nothing = evaluate_tokenizer(model, cache, progress=False, stop=lambda: True)
    assert nothing.frames == 0 and not nothing.complete
    assert json.loads(json.dumps(nothing.to_dict()))["psnr_mean"] is None


def test_unknown_episode_lists_the_available_ones(model, cache):
    with pytest.raises(InputError, match="episodes 0–2"):
        evaluate_tokenizer(model, cache, episodes=[0, 7], progress=False)


def test_cache_size_must_match_the_tokenizer(model, dataset_root):
    wrong = load_cache(dataset_root, size=32, progress=False)
    with pytest.raises(InputError, match="the cache holds 32×32 frames; this tokenizer takes 16×16"):
        evaluate_tokenizer(model, wrong, progress=False)
