"""The token cache: chunked tokens equal one pass per episode, reuse, keys, crash safety, clips."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import SPACE, TinyDataset

from wm_video.data.cache import TrainingCache, load_cache
from wm_video.data.sampler import ClipSampler
from wm_video.data.tokens import load_token_cache, token_cache_key, tokenizer_fingerprint
from wm_video.dynamics import DynamicsModel, dynamics_config
from wm_video.engine import World
from wm_video.errors import InputError
from wm_video.eval.clips import clips_from_cache
from wm_video.tokenizer import TokenizerConfig, VideoTokenizer
from wm_video.tokenizer.pixels import to_model_pixels

CONFIG = TokenizerConfig(
    image_size=32, patch_size=8, dim=32, heads=2, encoder_layers=2, decoder_layers=1, temporal_window=3
)


def make_tokenizer(seed: int = 0) -> VideoTokenizer:
    """Weights that make the test sharp: at the default init nearly every latent falls in a few
    codes and a frame 4 back barely moves one; here codes spread, and time attention leans on the
    farthest frame it sees, so chunks one context frame short give other tokens."""
    torch.manual_seed(seed)
    model = VideoTokenizer(CONFIG).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.dim() >= 2:
                parameter.normal_(0.0, 0.2)
        model.encoder.time_bias[:, :, -1] = 4.0  # (layers, heads, frames back − 1)
    return model


@pytest.fixture
def frames(tiny_dataset: TinyDataset) -> TrainingCache:
    return load_cache(tiny_dataset.root, size=32, progress=False)


@pytest.fixture
def tokenizer() -> VideoTokenizer:
    return make_tokenizer()


def whole_episode_tokens(tokenizer: VideoTokenizer, frames: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return tokenizer.encode(to_model_pixels(np.array(frames)).unsqueeze(0)).tokens[0].numpy()


def test_chunked_tokens_equal_one_pass_per_episode(frames: TrainingCache, tokenizer: VideoTokenizer) -> None:
    cache = load_token_cache(frames, tokenizer, chunk_frames=5, progress=False)  # 4 context frames
    assert cache.path.parent == frames.path.parent and cache.path.name.startswith("tokens-")
    assert cache.tokens.shape == (39, CONFIG.tokens_per_frame) == (39, 16)
    assert cache.tokens.dtype == np.uint16 and isinstance(cache.tokens, np.memmap)
    assert not cache.tokens.flags.writeable and cache.frames is cache.tokens
    assert cache.num_episodes == 3 and cache.episode_lengths.tolist() == [12, 7, 20]
    assert cache.codebook_size == CONFIG.codebook_size and cache.tokens_per_frame == 16
    np.testing.assert_array_equal(cache.actions, frames.actions)
    np.testing.assert_array_equal(cache.episode_indices, frames.episode_indices)
    assert cache.action_names == frames.action_names and cache.fps == frames.fps
    for e in range(3):
        tokens, actions = cache.episode(e)
        np.testing.assert_array_equal(tokens, whole_episode_tokens(tokenizer, frames.episode(e)[0]))
        np.testing.assert_array_equal(actions, frames.episode(e)[1])
    assert len(np.unique(cache.tokens)) > 50  # codes spread: equality is not trivial
    manifest = json.loads((cache.path / "manifest.json").read_text())
    assert manifest["tokenizer"] == CONFIG.to_dict() and manifest["dtype"] == "uint16"
    assert manifest["num_frames"] == 39 and manifest["key"] == cache.fingerprint


def test_reused_without_encoding_and_keyed_by_the_weights(
    frames: TrainingCache,
    tokenizer: VideoTokenizer,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    capsys.readouterr()
    first = load_token_cache(frames, tokenizer, progress=False)
    stamp = (first.path / "manifest.json").stat().st_mtime_ns
    # a build is said even without progress bars (it can take minutes); a reuse is silent
    assert f"building the token cache {first.path} (once" in capsys.readouterr().err

    def fail(pixels: torch.Tensor) -> None:
        raise AssertionError("encoded again")

    monkeypatch.setattr(tokenizer, "encode", fail)
    again = load_token_cache(frames, tokenizer, progress=False)
    assert again.path == first.path and (again.path / "manifest.json").stat().st_mtime_ns == stamp
    assert "building" not in capsys.readouterr().err
    np.testing.assert_array_equal(again.tokens, first.tokens)

    other = make_tokenizer(seed=1)
    assert tokenizer_fingerprint(other) != tokenizer_fingerprint(make_tokenizer(seed=0))
    assert tokenizer_fingerprint(make_tokenizer(seed=0)) == tokenizer_fingerprint(make_tokenizer(seed=0))
    retrained = load_token_cache(frames, other, progress=False)
    assert retrained.path != first.path and retrained.fingerprint != first.fingerprint
    assert (first.path / "manifest.json").exists()  # the first checkpoint's cache stays


def test_an_interrupted_build_leaves_no_cache_that_loads(
    frames: TrainingCache, tokenizer: VideoTokenizer, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = set(frames.path.parent.iterdir())
    encode, calls = tokenizer.encode, []

    def crash_on_second_chunk(pixels: torch.Tensor) -> object:
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("simulated crash mid-build")
        return encode(pixels)

    monkeypatch.setattr(tokenizer, "encode", crash_on_second_chunk)
    with pytest.raises(RuntimeError, match="simulated crash"):
        load_token_cache(frames, tokenizer, chunk_frames=8, progress=False)
    added = set(frames.path.parent.iterdir()) - before
    assert [p.name for p in added if not p.name.endswith(".lock")] == []  # no half-built folder

    monkeypatch.setattr(tokenizer, "encode", encode)
    name = f"tokens-{token_cache_key(frames, tokenizer)[:16]}"
    killed = frames.path.parent / f".{name}.tmp-0badf00d"  # what a killed build leaves behind
    killed.mkdir()
    (killed / "tokens.bin").write_bytes(b"half")
    cache = load_token_cache(frames, tokenizer, chunk_frames=8, progress=False)
    assert cache.path.name == name and not killed.exists()
    assert {p.name for p in set(frames.path.parent.iterdir()) - before} == {name, f".{name}.lock"}
    np.testing.assert_array_equal(cache.episode(2)[0], whole_episode_tokens(tokenizer, frames.episode(2)[0]))


def test_clip_sampler_cuts_token_clips(frames: TrainingCache, tokenizer: VideoTokenizer) -> None:
    cache = load_token_cache(frames, tokenizer, progress=False)
    batch = ClipSampler(cache, 4, seed=2).sample_batch(3)
    assert batch.frames.shape == (3, 4, 16) and batch.frames.dtype == np.uint16
    same = ClipSampler(frames, 4, seed=2).sample_batch(3)  # the same clips from the frame cache
    np.testing.assert_array_equal(batch.episode, same.episode)
    np.testing.assert_array_equal(batch.start, same.start)
    for b in range(3):
        position = int(np.flatnonzero(frames.episode_indices == batch.episode[b])[0])
        rows = slice(int(batch.start[b]), int(batch.start[b]) + 4)
        np.testing.assert_array_equal(batch.frames[b], cache.episode(position)[0][rows])
        np.testing.assert_array_equal(batch.actions[b], frames.episode(position)[1][rows])
        np.testing.assert_array_equal(batch.actions[b], same.actions[b])


def test_wrong_image_size_is_refused(tiny_dataset: TinyDataset, tokenizer: VideoTokenizer) -> None:
    frames16 = load_cache(tiny_dataset.root, size=16, progress=False)
    with pytest.raises(InputError, match="16 px frames but the tokenizer takes 32 px"):
        load_token_cache(frames16, tokenizer, progress=False)


def test_a_world_reset_mid_episode_gets_the_token_cache_tokens(
    frames: TrainingCache, tokenizer: VideoTokenizer
) -> None:
    """Issue 17, bug 4: the token cache encodes each frame after up to ``encoder_reach`` earlier frames
    of its episode, and a world reset encoded its context from scratch, so the context (and the sink)
    the trunk read differed from training's. Given the frames before its context, a reset reads
    exactly the cache's tokens; without them, other tokens."""
    cache = load_token_cache(frames, tokenizer, progress=False)
    episode, actions = frames.episode(2)  # 20 frames
    tokens = torch.from_numpy(cache.episode(2)[0].astype(np.int64))
    start, context = 9, 4  # 9 frames in: past the encoder's reach (2 layers × 2 frames back)
    torch.manual_seed(0)
    shape = dict(dim=32, heads=2, trunk_layers=2, head_layers=1, context_frames=3, sink_frames=1)
    dynamics = DynamicsModel(dynamics_config("tiny", CONFIG, SPACE, **shape)).eval()
    world = World(tokenizer, dynamics)
    clip, taken = np.array(episode[start : start + context]), actions[start : start + context - 1]
    with torch.inference_mode():
        expected = dynamics.new_cache(1)  # the trunk's cache after reading the cache's tokens
        embedding = dynamics.embed_actions(torch.from_numpy(taken)[None])
        dynamics.context(tokens[None, start : start + context - 1], embedding, expected)

    def trunk_reads_the_cache_tokens() -> bool:
        same_cache = all(
            torch.allclose(a, b, atol=1e-6) for a, b in zip(world.cache.tensors(), expected.tensors(), strict=True)
        )
        return same_cache and torch.equal(world.current[0], tokens[start + context - 1])

    world.reset(clip, taken, history=np.array(episode[:start]))
    assert trunk_reads_the_cache_tokens()
    world.reset(clip, taken, history=[np.array(episode[start - 4 : start])])  # its reach is enough
    assert trunk_reads_the_cache_tokens()
    world.reset(clip, taken)
    assert not trunk_reads_the_cache_tokens()


def test_eval_clips_carry_the_frames_of_their_episode_before_them(frames: TrainingCache) -> None:
    clips = clips_from_cache(frames, [0, 1, 2], 6, 5, seed=3, origin="test", history_frames=4)
    assert clips.history is not None and len(clips.history) == 6
    for b in range(6):
        position = frames.episode_indices.tolist().index(int(clips.episodes[b]))
        episode, start = frames.episode(position)[0], int(clips.starts[b])
        np.testing.assert_array_equal(clips.frames[b], episode[start : start + 5])
        np.testing.assert_array_equal(clips.history[b], episode[max(0, start - 4) : start])  # fewer near the start
