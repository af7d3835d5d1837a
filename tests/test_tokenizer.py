"""The tokenizer model: shapes, causality, streaming parity, config validation, and that it learns."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from conftest import smooth_frames

from wm_video.errors import InputError
from wm_video.metrics import psnr
from wm_video.tokenizer import TOKENIZER_PRESETS, TokenizerConfig, VideoTokenizer, tokenizer_preset
from wm_video.tokenizer.fsq import FSQ
from wm_video.tokenizer.model import with_code_embedding
from wm_video.tokenizer.pixels import to_model_pixels, to_uint8_frames

SMALL = TokenizerConfig(
    image_size=16, patch_size=4, dim=32, heads=2, encoder_layers=2, decoder_layers=2, temporal_window=3
)


def _model(config: TokenizerConfig = SMALL, seed: int = 0) -> VideoTokenizer:
    torch.manual_seed(seed)
    model = VideoTokenizer(config).double().eval()
    for stack in (model.encoder, model.decoder):  # make the time bias matter, as after training
        stack.time_bias.data.normal_()
    return model


def _clip(batch: int, frames: int, size: int = 16, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(batch, frames, 3, size, size, generator=generator, dtype=torch.float64) * 2 - 1


def test_presets_meet_their_design_figures() -> None:
    tiny, base = TOKENIZER_PRESETS["tiny"], TOKENIZER_PRESETS["base"]
    assert tiny.image_size == 64 and tiny.tokens_per_frame <= 64
    assert base.image_size >= 128
    assert tiny.codebook_size == 7 * 5**4 and tiny.bits_per_frame == pytest.approx(64 * 12.095, abs=0.01)


def test_shapes_and_token_range() -> None:
    model = _model()
    out = model(_clip(2, 5))
    assert out.reconstruction.shape == (2, 5, 3, 16, 16)
    assert out.encoding.tokens.shape == (2, 5, SMALL.tokens_per_frame)
    assert out.encoding.quantized.shape == (2, 5, SMALL.tokens_per_frame, len(SMALL.levels))
    tokens = out.encoding.tokens
    assert tokens.dtype == torch.int64 and 0 <= tokens.min() and tokens.max() < SMALL.codebook_size
    assert torch.equal(model.decode_tokens(tokens), model.decode(out.encoding.quantized))


def test_a_later_frame_never_changes_an_earlier_one() -> None:
    model = _model()
    clip = _clip(1, 6)
    changed = clip.clone()
    changed[:, 4:] = _clip(1, 2, seed=9)
    a, b = model(clip), model(changed)
    assert torch.equal(a.encoding.tokens[:, :4], b.encoding.tokens[:, :4])
    assert torch.equal(a.reconstruction[:, :4], b.reconstruction[:, :4])
    assert not torch.equal(a.encoding.tokens[:, 4:], b.encoding.tokens[:, 4:])


def test_time_context_reaches_layers_times_window_back() -> None:
    """Each of the 2 encoder layers looks 2 frames back (window 3): frame 5 sees frames 1 … 5, not 0."""
    model = _model()
    clip = _clip(1, 6)
    near, far = clip.clone(), clip.clone()
    near[:, 1] = -clip[:, 1]
    far[:, 0] = -clip[:, 0]
    base = model(clip).encoding.latents[:, 5]
    assert not torch.allclose(model(near).encoding.latents[:, 5], base)
    assert torch.equal(model(far).encoding.latents[:, 5], base)


@pytest.mark.parametrize(("window", "code_embedding"), [(1, False), (2, False), (3, False), (3, True)])
def test_streaming_equals_the_whole_clip(window: int, code_embedding: bool) -> None:
    model = _model(dataclasses.replace(SMALL, temporal_window=window, code_embedding=code_embedding))
    if model.code_embed is not None:  # trained vectors, not the zeros it starts from
        model.code_embed.weight.data.normal_()
    clip = _clip(2, 9)  # longer than every window: the ring cache wraps around
    whole = model(clip)
    stream = model.stream(batch_size=2)
    with torch.inference_mode():
        encodings = [stream.encode(clip[:, t]) for t in range(9)]
        tokens = torch.cat([e.tokens for e in encodings], dim=1)
        frames = torch.stack([stream.decode(e.quantized[:, 0]) for e in encodings], dim=1)
    assert torch.equal(tokens, whole.encoding.tokens)
    torch.testing.assert_close(frames, whole.reconstruction, rtol=0, atol=1e-12)
    stream.reset()  # a reset stream starts over: frame 0 again
    with torch.inference_mode():
        again = stream.decode_tokens(whole.encoding.tokens[:, 0])
    torch.testing.assert_close(again, whole.reconstruction[:, 0], rtol=0, atol=1e-12)


def test_stream_rejects_the_wrong_batch_or_size() -> None:
    stream = _model().stream(batch_size=1)
    with pytest.raises(InputError, match="batch 1"):
        stream.encode(_clip(2, 1)[:, 0])
    with pytest.raises(InputError, match="16, 16"):
        _model()(_clip(1, 2, size=32))


def test_fsq_tokens_round_trip_every_code() -> None:
    fsq = FSQ((4, 3, 5))
    tokens = torch.arange(60)
    quantized = fsq.from_tokens(tokens)
    assert torch.equal(fsq.to_tokens(quantized), tokens)
    assert quantized.abs().max() <= 1
    values = fsq(torch.randn(1000, 3) * 3)
    assert torch.equal(fsq.from_tokens(fsq.to_tokens(values)), values)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"image_size": 18}, "multiple of patch_size"),
        ({"dim": 30}, "multiple of"),
        ({"levels": (8, 1)}, "levels"),
        ({"heads": 0}, "heads"),
        ({"decoder_layers": 0}, "decoder_layers"),
    ],
)
def test_config_errors_say_how_to_fix_them(change: dict[str, object], message: str) -> None:
    with pytest.raises(InputError, match=message):
        dataclasses.replace(SMALL, **change)


def test_config_dict_round_trip_and_unknown_keys() -> None:
    assert TokenizerConfig.from_dict(SMALL.to_dict()) == SMALL
    assert "code_embedding" not in SMALL.to_dict()  # off: the dict (and token cache keys) as before it existed
    with_table = dataclasses.replace(SMALL, code_embedding=True)
    assert TokenizerConfig.from_dict(with_table.to_dict()) == with_table
    with pytest.raises(InputError, match="code_embedding must be true or false"):
        TokenizerConfig.from_dict({**SMALL.to_dict(), "code_embedding": "yes"})
    with pytest.raises(InputError, match="unknown keys"):
        TokenizerConfig.from_dict({**SMALL.to_dict(), "depth": 3})
    with pytest.raises(InputError, match="unknown tokenizer preset"):
        tokenizer_preset("huge")


def test_a_code_embedding_starts_at_zero_and_gives_each_code_its_own_vector() -> None:
    """Added to a trained tokenizer it decodes as before; a code's vector changes only clips with that code."""
    model = _model()
    extended = with_code_embedding(model)
    assert extended.config.code_embedding and with_code_embedding(extended) is extended
    clip = _clip(1, 3)
    before, after = model(clip), extended(clip)
    assert torch.equal(after.encoding.tokens, before.encoding.tokens)
    torch.testing.assert_close(after.reconstruction, before.reconstruction, rtol=0, atol=1e-12)
    assert extended.code_embed is not None and len(extended.code_embed.weight) == SMALL.codebook_size
    tokens = before.encoding.tokens
    used = set(tokens.flatten().tolist())
    unused = next(code for code in range(SMALL.codebook_size) if code not in used)
    plain = extended.decode_tokens(tokens)
    extended.code_embed.weight.data[unused].normal_()  # a code the clip does not have: nothing changes
    torch.testing.assert_close(extended.decode_tokens(tokens), plain, rtol=0, atol=0)
    extended.code_embed.weight.data[int(tokens[0, 0, 0])].normal_()  # the first patch's code: its frame changes
    assert (extended.decode_tokens(tokens) - plain)[0, 0].abs().max() > 1e-3
    assert extended.decoder_parts() == [extended.from_latent, extended.code_embed, extended.decoder, extended.to_pixels]


def test_pixels_round_trip() -> None:
    frames = torch.randint(0, 256, (2, 3, 8, 8, 3), dtype=torch.uint8)
    pixels = to_model_pixels(frames)
    assert pixels.shape == (2, 3, 3, 8, 8) and pixels.min() >= -1 and pixels.max() <= 1
    assert torch.equal(to_uint8_frames(pixels), frames)


def test_a_tiny_model_overfits_a_short_clip() -> None:
    """Training visibly works: 150 Adam steps on one 4-frame clip raise PSNR by ≥ 6 dB."""
    torch.manual_seed(0)
    config = TokenizerConfig(image_size=32, patch_size=8, dim=64, heads=2, encoder_layers=1, decoder_layers=2)
    model = VideoTokenizer(config)
    frames = to_model_pixels(smooth_frames(4, size=32, seed=0)).unsqueeze(0)  # (1, 4, 3, 32, 32)
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)

    def score() -> float:
        with torch.no_grad():
            return psnr(model(frames).reconstruction.clamp(-1, 1), frames, data_range=2.0).mean().item()

    before = score()
    for _ in range(150):
        loss = torch.nn.functional.mse_loss(model(frames).reconstruction, frames)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = score()
    assert after > before + 6.0, (before, after)
