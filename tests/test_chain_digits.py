"""Chained digits (``DynamicsConfig.chain_digits``): a token's FSQ digits drawn in turn, each given
those before it, so a drawn token is a code the model means rather than a mix of two codes' digits."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from test_dynamics import random_clip, small_model
from test_train_dynamics import Setup, setup, small_preset, train  # noqa: F401 (fixtures)

from wm_video.checkpoint import load_dynamics
from wm_video.dynamics import (
    CorruptionConfig,
    DynamicsConfig,
    DynamicsModel,
    FrameSampler,
    SamplingConfig,
    Stream,
    masked_token_loss,
    with_digit_chain,
)
from wm_video.errors import InputError


def _draw(model: DynamicsModel, config: SamplingConfig, batch: int = 3) -> torch.Tensor:
    tokens, actions = random_clip(model, batch, 3)
    with torch.no_grad():
        state = model.context(tokens, model.embed_actions(actions))[:, -1]
        reference = Stream(0.5 * state, model.no_action((batch,)))
        sampler = FrameSampler(model, config)
        return sampler(state, model.embed_actions(actions[:, -1]), torch.tensor(3), torch.tensor(5), reference)


@pytest.mark.parametrize("guidance", [1.0, 2.0])
@pytest.mark.parametrize("temperature", [1.0, 0.0])
@pytest.mark.parametrize("order", ["drawn", "certain"])
def test_a_chain_added_at_zero_draws_and_trains_as_before(guidance: float, temperature: float, order: str) -> None:
    """Its output layer starts at zero, and the chained draw uses the noise the independent draw
    gives the same digit: the same frames, bit for bit, and the same loss."""
    plain = small_model()
    chained = with_digit_chain(plain)
    assert chained.config.chain_digits and not plain.config.chain_digits
    config = SamplingConfig(guidance=guidance, temperature=temperature, order=order)
    assert torch.equal(_draw(plain, config), _draw(chained, config))
    tokens, actions = random_clip(plain, 2, 4)
    losses = []
    for model in (plain, chained):
        torch.manual_seed(1)
        losses.append(float(masked_token_loss(model, tokens, actions, CorruptionConfig(own_frames=0.5)).total.detach()))
    assert losses[0] == losses[1]
    assert with_digit_chain(chained) is chained


def test_a_channel_reads_only_the_digits_before_it() -> None:
    model = small_model(chain_digits=True)
    with torch.no_grad():
        model.chain_out.weight.normal_()
    levels = model.config.levels
    hidden = torch.randn(2, model.config.tokens_per_frame, model.config.dim)
    digits = torch.stack([torch.randint(0, level, hidden.shape[:2]) for level in levels], -1)
    logits = model.split_logits(model.digit_logits(hidden, digits))
    for changed in range(len(levels)):
        other = digits.clone()
        other[..., changed] = (other[..., changed] + 1) % levels[changed]
        moved = model.split_logits(model.digit_logits(hidden, other))
        for channel in range(len(levels)):
            same = torch.equal(logits[channel], moved[channel])
            assert same == (channel <= changed), (changed, channel)
    with pytest.raises(InputError, match="chained digits"):
        model.digit_logits(hidden)


@pytest.mark.parametrize("guidance", [1.0, 2.0])
@pytest.mark.parametrize("order", ["drawn", "certain"])
def test_a_chained_draw_is_the_greedy_code_of_the_trained_logits(guidance: float, order: str) -> None:
    """At temperature 0 each drawn digit is the likeliest given the digits drawn before it, by the
    same logits training scores (guided against the reference rows alike), and the confidence is
    their log-probabilities' sum."""
    model = small_model(seed=3, chain_digits=True)
    with torch.no_grad():
        for weights in (model.chain_in.weight, model.chain_out.weight, model.chain_out.bias, model.digit_embed.weight):
            weights.normal_()
    sampler = FrameSampler(model, SamplingConfig(temperature=0.0, guidance=guidance, order=order))
    rows = 2 if guidance != 1.0 else 1
    hidden = torch.randn(rows * 3, model.config.tokens_per_frame, model.config.dim)
    with torch.no_grad():
        digits, confidence = sampler.draw(hidden, torch.tensor(0), torch.tensor(0))
        logits = model.digit_logits(hidden, torch.cat([digits] * rows))
        if rows == 2:
            chosen, plain = logits.chunk(2)
            logits = plain + guidance * (chosen - plain)
    scores = []
    for channel, channel_logits in enumerate(model.split_logits(logits)):
        assert torch.equal(digits[..., channel], channel_logits.argmax(-1))
        scores.append(channel_logits.log_softmax(-1).amax(-1))
    torch.testing.assert_close(confidence, torch.stack(scores, -1).sum(-1))
    with pytest.raises(InputError, match="use draw"):
        sampler.logits(hidden[:3], torch.zeros(3, model.config.dim), torch.zeros(3, 4, dtype=torch.long), None)


def test_the_config_names_the_chain_only_when_on() -> None:
    """Runs saved before the chain existed resume (their config has no such key), and a world
    without one reads in builds that predate it."""
    plain = small_model().config
    assert "chain_digits" not in plain.to_dict()
    chained = small_model(chain_digits=True).config
    assert chained.to_dict()["chain_digits"] is True
    assert DynamicsConfig.from_dict(chained.to_dict()) == chained
    assert DynamicsConfig.from_dict(plain.to_dict()) == plain


def _share_of_two_codes(chain: bool) -> float:
    """Trained on tokens that are each one of two codes, half and half: the share of drawn tokens
    that are one of the two."""
    model = small_model(seed=2, trunk_layers=1, chain_digits=chain).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    generator = torch.Generator().manual_seed(0)
    codes = model.tokens_from_digits(torch.tensor([[0, 0, 0], [2, 1, 1]]))
    shape = (4, model.config.tokens_per_frame)
    actions = torch.zeros(1, 4, model.config.action_dim)
    for _ in range(80):
        tokens = codes[torch.randint(0, 2, (8, *shape), generator=generator)]
        loss = masked_token_loss(model, tokens, actions.expand(8, -1, -1), CorruptionConfig(token_noise=0.0)).total
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    tokens = codes[torch.randint(0, 2, (64, *shape), generator=generator)]
    with torch.no_grad():
        state = model.context(tokens[:, :3], model.embed_actions(actions[:, :3]).expand(64, -1, -1))[:, -1]
        drawn = FrameSampler(model, SamplingConfig())(
            state, model.embed_actions(actions[:, 2]).expand(64, -1), torch.tensor(0), torch.arange(64)
        )
    return float(torch.isin(drawn, codes).float().mean())


def test_chained_digits_draw_the_codes_independent_channels_mix() -> None:
    """Every next token is one of two codes, (0, 0, 0) or (2, 1, 1). Independent channels learn the
    right marginals and draw one of the two codes in about a quarter of tokens (the other six
    combinations are tiles of neither); chained digits draw one of the two nearly always."""
    independent, chained = _share_of_two_codes(False), _share_of_two_codes(True)
    assert independent < 0.45 and chained > 0.9, (independent, chained)


def test_train_dynamics_adds_a_chain_to_an_init_and_records_it(setup: Setup, tmp_path: Path) -> None:  # noqa: F811
    run = tmp_path / "chained"
    assert train(setup.data.root, setup.tokenizer, run, 2, "--init", str(setup.run), "--chain-digits") == 0
    model, checkpoint = load_dynamics(run)
    assert model.config.chain_digits and checkpoint.meta["finetuned_from"]
    assert json.loads((run / "run.json").read_text())["program"]["init"]
    assert train(setup.data.root, setup.tokenizer, run, 3, "--init", str(setup.run), "--chain-digits") == 0  # resumes
    assert load_dynamics(run)[1].step == 3
    fresh = tmp_path / "fresh"
    assert train(setup.data.root, setup.tokenizer, fresh, 1, "--chain-digits") == 0
    assert load_dynamics(fresh)[0].config.chain_digits
