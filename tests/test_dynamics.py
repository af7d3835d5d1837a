"""The dynamics model, its objective and sampler, and the World engine that drives them."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from wm_video.actions import ActionSpace
from wm_video.checkpoint import load_dynamics, save_checkpoint
from wm_video.dynamics import (
    CorruptionConfig,
    DynamicsConfig,
    DynamicsModel,
    FrameSampler,
    SamplingConfig,
    dynamics_config,
    masked_token_loss,
    sampling,
)
from wm_video.dynamics.objective import corrupt_context, mask_targets, own_context
from wm_video.dynamics.sampling import hashed_uniform, undecided_after
from wm_video.engine import World
from wm_video.errors import InputError
from wm_video.tokenizer import TokenizerConfig, VideoTokenizer
from wm_video.tokenizer.pixels import to_model_pixels

SPACE = ActionSpace(("left", "right"), ("mouse_dx",))
TOKENIZER = TokenizerConfig(
    image_size=16, patch_size=4, dim=16, heads=2, encoder_layers=1, decoder_layers=1, levels=(3, 2, 2)
)


def small_config(**overrides: object) -> DynamicsConfig:
    shape = dict(dim=32, heads=2, trunk_layers=2, head_layers=1, context_frames=3, sink_frames=1)
    shape.update(overrides)
    return dynamics_config("tiny", TOKENIZER, SPACE, **shape)


def small_model(seed: int = 0, **overrides: object) -> DynamicsModel:
    torch.manual_seed(seed)
    model = DynamicsModel(small_config(**overrides)).eval()
    with torch.no_grad():  # a trained model's time biases are not all zero
        model.trunk.time_bias.normal_()
    return model


def random_clip(
    model: DynamicsModel, batch: int, frames: int, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    c = model.config
    tokens = torch.randint(0, c.codebook_size, (batch, frames, c.tokens_per_frame), generator=generator)
    buttons = torch.randint(0, 2, (batch, frames, c.action_buttons), generator=generator).float()
    deltas = torch.randn(batch, frames, c.action_dim - c.action_buttons, generator=generator)
    return tokens, torch.cat((buttons, deltas), -1)


# -- the model ----------------------------------------------------------------------------------------
def test_config_validation_and_round_trip() -> None:
    config = small_config()
    assert DynamicsConfig.from_dict(config.to_dict()) == config
    assert config.tokens_per_frame == 16 and config.codebook_size == 12
    assert config.action_space.buttons == ("left", "right") and config.action_space.deltas == ("mouse_dx",)
    with pytest.raises(InputError, match="decode_passes"):
        small_config(decode_passes=9)
    with pytest.raises(InputError, match="unknown keys"):
        DynamicsConfig.from_dict({**config.to_dict(), "depth": 3})
    with pytest.raises(InputError, match="unknown dynamics preset"):
        dynamics_config("huge", TOKENIZER, SPACE)


def test_block_causal_a_later_frame_never_changes_earlier_logits() -> None:
    model = small_model()
    tokens, actions = random_clip(model, 2, 7)
    partial = torch.full_like(tokens, model.mask_id)
    with torch.no_grad():
        before = model(tokens, actions, partial)
        changed_tokens, changed_actions = tokens.clone(), actions.clone()
        changed_tokens[:, 4:] = (changed_tokens[:, 4:] + 1) % model.config.codebook_size
        changed_actions[:, 4:] += 1.0
        after = model(changed_tokens, changed_actions, partial)
    torch.testing.assert_close(after[:, :4], before[:, :4], rtol=0, atol=0)
    assert (after[:, 4:] - before[:, 4:]).abs().max() > 1e-3  # and later frames do see it


@pytest.mark.parametrize(("window", "sinks"), [(3, 1), (3, 2), (2, 0), (5, 1)])
def test_cached_trunk_steps_equal_the_whole_clip(window: int, sinks: int) -> None:
    model = small_model(context_frames=window, sink_frames=sinks).double()
    tokens, actions = random_clip(model, 2, 12)  # longer than the window: the ring wraps
    actions = actions.double()
    with torch.no_grad():
        whole = model.context(tokens, model.embed_actions(actions))
        cache = model.new_cache(2)
        steps = [model.context_step(tokens[:, t], model.embed_actions(actions[:, t]), cache) for t in range(12)]
    torch.testing.assert_close(torch.stack(steps, 1), whole, rtol=0, atol=1e-12)


def test_objective_trains_and_actions_change_the_prediction() -> None:
    """Every token's code moves up or down by one depending on the pressed button; after a few
    steps the model's prediction depends on the action, and the right action predicts better."""
    model = small_model(seed=1, trunk_layers=1)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-3)
    generator = torch.Generator().manual_seed(0)

    def clips(batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        frames, count = 6, model.config.tokens_per_frame
        first = torch.randint(0, model.config.codebook_size, (batch, 1, count), generator=generator)
        press_right = torch.randint(0, 2, (batch, frames), generator=generator)
        tokens = [first[:, 0]]
        for t in range(frames - 1):
            step = torch.where(press_right[:, t, None] == 1, 1, -1)
            tokens.append((tokens[-1] + step) % model.config.codebook_size)
        buttons = torch.stack((1 - press_right, press_right), -1).float()
        return torch.stack(tokens, 1), torch.cat((buttons, torch.zeros(batch, frames, 1)), -1)

    first_loss = None
    for _ in range(60):
        tokens, actions = clips(8)
        losses = masked_token_loss(model, tokens, actions, CorruptionConfig(token_noise=0.0))
        optimizer.zero_grad()
        losses.total.backward()
        optimizer.step()
        first_loss = first_loss if first_loss is not None else float(losses.total.detach())
    assert float(losses.total.detach()) < 0.6 * first_loss
    model.eval()
    tokens, actions = clips(32)
    swapped = actions.clone()
    swapped[..., :2] = actions[..., :2].flip(-1)  # the other button
    sampler = FrameSampler(model, SamplingConfig(temperature=0.0))
    seed, counter = torch.tensor(0), torch.tensor(0)
    accuracy = []
    with torch.no_grad():
        for these in (actions, swapped):
            state = model.context(tokens[:, :3], model.embed_actions(these[:, :3]))[:, -1]
            predicted = sampler(state, model.embed_actions(these[:, 2]), seed, counter)
            accuracy.append(float((predicted == tokens[:, 3]).float().mean()))
    assert accuracy[0] > accuracy[1] + 0.2, accuracy


def test_save_load_round_trip(tmp_path) -> None:
    model = small_model()
    save_checkpoint(
        tmp_path / "run",
        kind="dynamics",
        config=model.config.to_dict(),
        step=3,
        weights=model.state_dict(),
        ema_weights=None,
        training_state=None,
        meta={},
        keep=1,
    )
    loaded, checkpoint = load_dynamics(tmp_path / "run")
    assert checkpoint.step == 3 and loaded.config == model.config
    tokens, actions = random_clip(model, 1, 5)
    partial = torch.full_like(tokens, model.mask_id)
    with torch.no_grad():
        torch.testing.assert_close(
            loaded(tokens, actions, partial), model(tokens, actions, partial), rtol=0, atol=0
        )


# -- objective and sampler --------------------------------------------------------------------------------
def test_context_corruption() -> None:
    torch.manual_seed(0)
    tokens = torch.randint(0, 1000, (4, 6, 64))
    assert torch.equal(corrupt_context(tokens, CorruptionConfig(0.0, 0.0), 1000), tokens)
    noisy = corrupt_context(tokens, CorruptionConfig(token_noise=1.0), 1000)
    changed = (noisy != tokens).float().mean()
    assert 0.3 < changed < 0.7  # levels uniform in [0, 1]: half the tokens on average
    stalled = corrupt_context(tokens, CorruptionConfig(token_noise=0.0, repeat_frames=1.0), 1000)
    assert torch.equal(stalled, tokens[:, :1].expand_as(tokens))
    with pytest.raises(InputError, match="token-noise"):
        CorruptionConfig(token_noise=1.5)
    partial, masked = mask_targets(tokens, 1000)
    assert masked.sum(-1).min() >= 1
    assert torch.equal(partial[masked], torch.full_like(partial[masked], 1000))
    assert torch.equal(partial[~masked], tokens[~masked])


def test_own_context_frames_are_the_models_samples() -> None:
    """With own_frames = 1 every context frame after the first is what the model's one all-masked
    pass draws: a model sure of one code everywhere puts that code there, and frame 0 stays real."""
    model = small_model()
    sure = torch.tensor([level - 1 for level in model.config.levels])  # a digit per channel
    with torch.no_grad():
        model.to_logits.weight.zero_()
        bias = torch.full((sum(model.config.levels),), -50.0)
        for offset, digit in zip(torch.tensor((0, *model.config.levels)).cumsum(0)[:-1], sure, strict=True):
            bias[offset + digit] = 50.0
        model.to_logits.bias.copy_(bias)
    code = int(model.tokens_from_digits(sure))
    tokens, actions = random_clip(model, 2, 5)
    torch.manual_seed(0)
    assert torch.equal(own_context(model, tokens, actions, 0.0), tokens)
    own = own_context(model, tokens, actions, 1.0)
    assert torch.equal(own[:, 0], tokens[:, 0])
    assert torch.equal(own[:, 1:], torch.full_like(tokens[:, 1:], code))
    with pytest.raises(InputError, match="own-frames"):
        CorruptionConfig(own_frames=-0.1)
    # The loss reads them: the same batch and noise give another loss with own frames.
    losses = []
    for share in (0.0, 1.0):
        torch.manual_seed(1)
        corruption = CorruptionConfig(token_noise=0.0, own_frames=share)
        losses.append(float(masked_token_loss(model, tokens, actions, corruption).total))
    assert losses[0] != losses[1]



def test_schedule_and_noise() -> None:
    assert undecided_after(64, 4) == (59, 45, 24, 0)
    assert undecided_after(64, 1) == (0,)
    seed, counter = torch.tensor(7), torch.tensor(3)
    u = hashed_uniform(seed, counter, (4096,), torch.device("cpu"))
    assert 0 < float(u.min()) and float(u.max()) < 1 and abs(float(u.mean()) - 0.5) < 0.02
    assert torch.equal(u, hashed_uniform(seed, counter, (4096,), torch.device("cpu")))
    assert not torch.equal(u, hashed_uniform(seed, counter + 1, (4096,), torch.device("cpu")))
    assert not torch.equal(u, hashed_uniform(seed + 1, counter, (4096,), torch.device("cpu")))


def test_sampler_top_k_1_is_greedy() -> None:
    model = small_model()
    state = torch.randn(3, model.config.tokens_per_frame, model.config.dim)
    embedding = model.embed_actions(torch.zeros(3, model.config.action_dim))
    seed, counter = torch.tensor(0), torch.tensor(0)
    with torch.no_grad():
        greedy = FrameSampler(model, SamplingConfig(temperature=0.0, choice_noise=0.0))(
            state, embedding, seed, counter
        )
        top1 = FrameSampler(model, SamplingConfig(top_k=1, choice_noise=0.0))(state, embedding, seed, counter)
    assert torch.equal(greedy, top1)
    assert int(greedy.min()) >= 0 and int(greedy.max()) < model.config.codebook_size


@pytest.mark.parametrize("order", ["drawn", "certain"])
def test_certain_order_keeps_a_rare_value_as_often_as_it_is_drawn(order: str) -> None:
    """A head that gives every token the same odds, 30 % for a rare value: MaskGIT's order ("drawn")
    puts off the tokens where it drew the rare value and draws them again, so it keeps about half;
    "certain" keeps whatever was drawn."""
    model = small_model()
    with torch.no_grad():  # logits that ignore the input: channel 0 is 70 / 30 % on levels 0 / 1
        model.to_logits.weight.zero_()
        model.to_logits.bias.copy_(torch.tensor([0.7, 0.3, 1e-9, 1.0, 1e-9, 1.0, 1e-9]).log())
    frames, count = 64, model.config.tokens_per_frame
    state = torch.randn(frames, count, model.config.dim)
    embedding = model.embed_actions(torch.zeros(frames, model.config.action_dim))
    sampler = FrameSampler(model, SamplingConfig(order=order))
    with torch.no_grad():
        tokens = sampler(state, embedding, torch.tensor(0), torch.arange(frames))
    rare = int(model.tokens_from_digits(torch.tensor([1, 0, 0])))
    share = float((tokens == rare).float().mean())
    assert (0.25 < share < 0.35) if order == "certain" else 0.1 < share < 0.22, share


def test_an_unknown_order_is_refused() -> None:
    from wm_video.cli_args import SAMPLING_ORDERS
    from wm_video.dynamics.sampling import ORDERS

    assert SAMPLING_ORDERS == ORDERS
    with pytest.raises(InputError, match="order must be one of drawn, certain"):
        SamplingConfig.from_dict({"order": "random"})
    assert SamplingConfig.from_dict({"order": "certain"}).order == "certain"
    assert SamplingConfig.from_dict({"temperature": 0.7}).order == "drawn"  # a world stored before the setting
    assert "order" not in SamplingConfig().to_dict()  # nor stored when the default


# Seed 0, frame counter 418,181 (pass 0): the hash's largest value (2^24 − 1) lands on position 71 of a
# (1, 16, 3, 3) draw, the padding slot of token 7's 2-level channel 2, the most significant digit
# (found by a search over the counters).
LARGEST_AT_PADDING_FRAME = 418_181


def test_the_largest_hash_value_draws_strictly_below_one() -> None:
    seed, counter = torch.tensor(0), torch.tensor(2 * 8 * LARGEST_AT_PADDING_FRAME)
    bits = sampling.hashed_bits(seed, counter, (1, 16, 3, 3), torch.device("cpu"))
    assert int(bits.flatten()[71]) == (1 << 24) - 1
    u = hashed_uniform(seed, counter, (1, 16, 3, 3), torch.device("cpu"))
    assert float(u.max()) < 1.0 and float(u.min()) > 0.0
    assert bool(torch.isfinite(sampling._gumbel(seed, counter, (1, 16, 3, 3), torch.device("cpu"))).all())


def test_a_sampled_token_is_always_inside_the_codebook(monkeypatch: pytest.MonkeyPatch) -> None:
    """The draw above once picked a padding slot (−inf + inf = NaN, which argmax takes): token 7 came
    out as 15 of a 12-code codebook. Also with every draw the largest, and over many seeds and counters."""
    model = small_model()
    c = model.config
    assert c.levels == (3, 2, 2) and c.tokens_per_frame == 16
    state = torch.randn(1, c.tokens_per_frame, c.dim)
    embedding = model.embed_actions(torch.zeros(1, c.action_dim))
    one_pass = FrameSampler(model, SamplingConfig(passes=1))
    with torch.no_grad():
        tokens = one_pass(state, embedding, torch.tensor(0), torch.tensor(LARGEST_AT_PADDING_FRAME))
        assert 0 <= int(tokens.min()) and int(tokens.max()) < c.codebook_size
        sampler = FrameSampler(model, SamplingConfig())
        batch = torch.randn(8, c.tokens_per_frame, c.dim)
        batch_embedding = model.embed_actions(torch.zeros(8, c.action_dim))
        for seed in range(2):
            for counter in range(0, 400, 40):
                drawn = sampler(batch, batch_embedding, torch.tensor(seed), torch.tensor(counter))
                assert int(drawn.max()) < c.codebook_size
        largest = torch.full((1, c.tokens_per_frame, 3, 3), (1 << 24) - 1)
        monkeypatch.setattr(sampling, "hashed_bits", lambda *args: largest)
        tokens = one_pass(state, embedding, torch.tensor(0), torch.tensor(0))
        assert int(tokens.max()) < c.codebook_size


# -- the engine --------------------------------------------------------------------------------------------
def make_world(seed: int = 0, **kwargs: object) -> World:
    torch.manual_seed(0)
    tokenizer = VideoTokenizer(TOKENIZER)
    return World(tokenizer, small_model(), seed=seed, **kwargs)


def context_frames(count: int = 3) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (count, 16, 16, 3), dtype=np.uint8)


def test_world_steps_equal_full_recomputation() -> None:
    """Each step's tokens equal a reference that recomputes the trunk over every frame so far."""
    world = make_world(seed=5)
    model = world.dynamics
    actions = np.random.default_rng(1).integers(0, 2, (12, 3)).astype(np.float32)
    world.reset(context_frames(3), actions[:2])
    with torch.no_grad():  # the context's tokens, as the world's tokenizer stream made them
        pixels = to_model_pixels(torch.from_numpy(context_frames(3)), "cpu").unsqueeze(0)
        history = list(world.tokenizer.encode(pixels).tokens[0])
    assert torch.equal(history[-1], world.current[0])
    sampler = FrameSampler(model, SamplingConfig())
    for t in range(9):  # 3 context + 9 generated frames: past the window (3) and the sink
        step_action = actions[2 + t]
        tokens = world.advance(step_action)[0]
        with torch.no_grad():
            clip = torch.stack(history)[None]
            taken = torch.from_numpy(actions[: len(history)])[None]
            state = model.context(clip, model.embed_actions(taken))[:, -1]
            expected = sampler(state, model.embed_actions(taken[:, -1]), world.seed, torch.tensor(t))[0]
        assert torch.equal(tokens, expected), f"step {t}"
        history.append(tokens)


def test_world_is_deterministic_for_a_seed() -> None:
    actions = np.random.default_rng(2).integers(0, 2, (10, 3)).astype(np.float32)

    def rollout(seed: int) -> np.ndarray:
        world = make_world(seed=seed)
        first = world.reset(context_frames())
        frames = [first] + [world.step(a) for a in actions]
        assert all(f.dtype == np.uint8 and f.shape == (16, 16, 3) for f in frames)
        return np.stack(frames)

    assert np.array_equal(rollout(1), rollout(1))
    assert not np.array_equal(rollout(1), rollout(2))
    world = make_world(seed=1)
    world.reset(context_frames())
    again = [world.step(a) for a in actions]
    world.reset(context_frames(), seed=1)  # a reset with the seed starts the same rollout over
    assert np.array_equal(np.stack(again), np.stack([world.step(a) for a in actions]))


def test_world_batch_and_input_errors() -> None:
    world = make_world()
    with pytest.raises(InputError, match="reset"):
        world.step(np.zeros(3, np.float32))
    with pytest.raises(InputError, match="uint8"):
        world.reset(np.zeros((2, 16, 16, 3), np.float32))
    big = np.zeros((40, 40, 3), np.uint8)  # a single image of another size is resized
    assert world.reset(big).shape == (16, 16, 3)
    with pytest.raises(InputError, match=r"left, right, mouse_dx"):
        world.step(np.zeros(5, np.float32))
    with pytest.raises(InputError, match="actions"):
        world.reset(context_frames(3), np.zeros((5, 3), np.float32))
    mismatch = VideoTokenizer(
        TokenizerConfig(image_size=32, patch_size=4, dim=16, heads=2, encoder_layers=1, decoder_layers=1)
    )
    with pytest.raises(InputError, match="tokenizer"):
        World(mismatch, world.dynamics)
    batched = World(world.tokenizer, world.dynamics, batch_size=2)
    shown = batched.reset(np.stack([context_frames(), context_frames()]))
    assert shown.shape == (2, 16, 16, 3)
    assert batched.step(np.zeros((2, 3), np.float32)).shape == (2, 16, 16, 3)
