"""Action guidance: frames drawn away from what pressing nothing would give (wm_video.dynamics.sampling)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from wm_video.actions import ActionSpace
from wm_video.dynamics import DynamicsModel, FrameSampler, SamplingConfig, Stream, dynamics_config
from wm_video.engine import World
from wm_video.errors import InputError
from wm_video.tokenizer import TokenizerConfig, VideoTokenizer

SPACE = ActionSpace(("left", "right"), ("mouse_dx",))
TOKENIZER = TokenizerConfig(
    image_size=16, patch_size=4, dim=16, heads=2, encoder_layers=1, decoder_layers=1, levels=(3, 2, 2),
    temporal_window=3,
)  # fmt: skip


def models() -> tuple[VideoTokenizer, DynamicsModel]:
    torch.manual_seed(0)
    tokenizer = VideoTokenizer(TOKENIZER)
    shape = dict(dim=32, heads=2, trunk_layers=2, head_layers=1, context_frames=3, sink_frames=1)
    dynamics = DynamicsModel(dynamics_config("tiny", TOKENIZER, SPACE, **shape))
    with torch.no_grad():  # a trained model's actions move its frames: make them count here too
        for stack in (tokenizer.encoder, tokenizer.decoder, dynamics.trunk):
            stack.time_bias.normal_()
        dynamics.action_embed[-1].weight.mul_(40.0)
    return tokenizer.double().eval(), dynamics.double().eval()


def footage(count: int = 3, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (count, 16, 16, 3), dtype=np.uint8)


def keys(steps: int, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.concatenate((rng.integers(0, 2, (steps, 2)), rng.normal(size=(steps, 1))), -1).astype(np.float32)


def test_guided_logits_are_pushed_away_from_pressing_nothing() -> None:
    _, model = models()
    generator = torch.Generator().manual_seed(0)
    state, reference = (torch.randn(2, 16, 32, generator=generator, dtype=torch.float64) for _ in range(2))
    action = model.embed_actions(torch.tensor([[1.0, 0.0, 0.5], [0.0, 1.0, -1.0]], dtype=torch.float64))
    nothing = model.no_action((2,))
    partial = torch.full((2, 16), model.mask_id)
    with torch.no_grad():
        chosen = model.head_logits(state, action, partial)
        plain = model.head_logits(reference, nothing, partial)
        guided = FrameSampler(model, SamplingConfig(guidance=3.0)).logits(state, action, partial, Stream(reference, nothing))
        off = FrameSampler(model, SamplingConfig()).logits(state, action, partial, None)
    assert torch.allclose(guided, plain + 3.0 * (chosen - plain))
    assert torch.equal(off, chosen)  # 1: the plain model, no reference read
    with pytest.raises(InputError, match="reference stream"):
        FrameSampler(model, SamplingConfig(guidance=2.0))(state, action, torch.tensor(0), torch.tensor(0))


def test_a_guided_world_keeps_its_reference_stream_exactly() -> None:
    """Each guided step equals a recomputation over the whole clip of both streams: the keys
    pressed, and the same frames with nothing pressed."""
    tokenizer, dynamics = models()
    world = World(tokenizer, dynamics, sampling=SamplingConfig(guidance=2.5), seed=3)
    actions = keys(11)
    world.reset(footage(), actions[:2])
    with torch.no_grad():
        history = list(tokenizer.encode_footage(footage()[None]).tokens[0])
    sampler = FrameSampler(dynamics, SamplingConfig(guidance=2.5))
    for t in range(8):  # past the trunk's window (3) and its sink
        tokens = world.advance(actions[2 + t])[0]
        with torch.no_grad():
            clip = torch.stack(history)[None]
            taken = torch.from_numpy(actions[: len(history)]).double()[None]
            embedding = dynamics.embed_actions(taken)
            nothing = dynamics.no_action((1, len(history)))
            state = dynamics.context(clip, embedding)[:, -1]
            reference = Stream(dynamics.context(clip, nothing)[:, -1], nothing[:, -1])
            expected = sampler(state, embedding[:, -1], world.seed, torch.tensor(t), reference)[0]
        assert torch.equal(tokens, expected), f"step {t}"
        history.append(tokens)


def test_guidance_agrees_with_the_plain_world_while_nothing_was_ever_pressed() -> None:
    """Pressing nothing from the start, the guided world draws the plain world's frames (its two
    streams agree); pressing keys, it draws others."""
    tokenizer, dynamics = models()

    def rollout(guidance: float, actions: np.ndarray) -> np.ndarray:
        world = World(tokenizer, dynamics, sampling=SamplingConfig(guidance=guidance), seed=5)
        world.reset(footage())
        return np.stack([world.step(a) for a in actions])

    nothing = np.zeros((8, 3), np.float32)
    assert np.array_equal(rollout(4.0, nothing), rollout(1.0, nothing))
    assert not np.array_equal(rollout(4.0, keys(8)), rollout(1.0, keys(8)))


def test_a_guided_world_rewinds_to_the_same_frames() -> None:
    tokenizer, dynamics = models()
    world = World(tokenizer, dynamics, sampling=SamplingConfig(guidance=2.0), seed=2)
    world.reset(footage())
    actions = keys(10, seed=4)
    for a in actions[:3]:
        world.step(a)
    saved = world.snapshot()
    assert saved.reference is not None
    first = np.stack([world.step(a) for a in actions[3:]])
    world.restore(saved)
    assert np.array_equal(np.stack([world.step(a) for a in actions[3:]]), first)


def test_guided_worlds_restart_alone_and_keep_to_their_kind_of_snapshot() -> None:
    """Restarting one world of a guided batch gives it the frames a fresh world gives from the same
    context and seed, and leaves the others as they were; a plain world's snapshot is refused."""
    tokenizer, dynamics = models()
    guided = SamplingConfig(guidance=2.0)
    batch = World(tokenizer, dynamics, batch_size=2, sampling=guided, seed=0)
    batch.reset(np.stack([footage(seed=1), footage(seed=2)]))
    actions = np.stack([keys(9, seed=5), keys(9, seed=6)], axis=1)  # (steps, worlds, A)
    for a in actions[:3]:
        batch.step(a)
    untouched = World(tokenizer, dynamics, batch_size=2, sampling=guided, seed=0)
    untouched.reset(np.stack([footage(seed=1), footage(seed=2)]))
    for a in actions[:3]:
        untouched.step(a)
    batch.reset(footage(seed=3), worlds=[0], seed=40)
    fresh = World(tokenizer, dynamics, sampling=guided, seed=40)
    fresh.reset(footage(seed=3))
    for a in actions[3:]:
        both = batch.step(a)
        assert np.array_equal(both[0], fresh.step(a[0]))
        assert np.array_equal(both[1], untouched.step(a)[1])
    plain = World(tokenizer, dynamics, seed=0)
    plain.reset(footage())
    with pytest.raises(InputError, match="without action guidance, and this one draws with"):
        fresh.restore(plain.snapshot())


def test_teacher_forced_scores_draw_with_the_worlds_guidance() -> None:
    from wm_video.dynamics import update_sampling
    from wm_video.eval.rollouts import teacher_forced

    tokenizer, dynamics = models()
    frames = np.stack([footage(4, seed=s) for s in range(2)])
    actions = np.ones((2, 4, 3), np.float32)
    _, plain = teacher_forced(tokenizer, dynamics, frames, actions, seed=0)
    update_sampling(dynamics, {"guidance": 4.0})
    _, guided = teacher_forced(tokenizer, dynamics, frames, actions, seed=0)
    assert guided.shape == plain.shape == (2, 3, 16, 16, 3)
    assert not np.array_equal(guided, plain)
    update_sampling(dynamics, {"guidance": 1.0})
    _, again = teacher_forced(tokenizer, dynamics, frames, actions, seed=0)
    assert np.array_equal(again, plain)


@pytest.mark.parametrize("value", [-1.0, float("nan"), 17.0])
def test_guidance_out_of_range_is_refused(value: float) -> None:
    with pytest.raises(InputError, match="guidance must lie in 0..16"):
        SamplingConfig(guidance=value)
