"""Many worlds in one batch, and a step that is one graph (issue 17)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from wm_video.actions import ActionSpace
from wm_video.dynamics import DynamicsModel, SamplingConfig, dynamics_config
from wm_video.engine import World
from wm_video.errors import InputError
from wm_video.tokenizer import TokenizerConfig, VideoTokenizer

SPACE = ActionSpace(("left", "right"), ("mouse_dx",))
TOKENIZER = TokenizerConfig(
    image_size=16, patch_size=4, dim=16, heads=2, encoder_layers=1, decoder_layers=2, levels=(3, 2, 2),
    temporal_window=3,
)  # fmt: skip


def models(dtype: torch.dtype = torch.float64) -> tuple[VideoTokenizer, DynamicsModel]:
    torch.manual_seed(0)
    tokenizer = VideoTokenizer(TOKENIZER)
    shape = dict(dim=32, heads=2, trunk_layers=2, head_layers=1, context_frames=3, sink_frames=1)
    dynamics = DynamicsModel(dynamics_config("tiny", TOKENIZER, SPACE, **shape))
    with torch.no_grad():  # trained biases are not zero
        for stack in (tokenizer.encoder, tokenizer.decoder, dynamics.trunk):
            stack.time_bias.normal_()
    return tokenizer.to(dtype).eval(), dynamics.to(dtype).eval()


def footage(count: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (count, 16, 16, 3), dtype=np.uint8)


def program(steps: int, worlds: int, seed: int = 7) -> np.ndarray:
    rng = np.random.default_rng(seed)
    buttons = rng.integers(0, 2, (steps, worlds, 2))
    return np.concatenate((buttons, rng.normal(size=(steps, worlds, 1))), -1).astype(np.float32)


def test_restarting_some_worlds_leaves_the_others_bit_identical() -> None:
    tokenizer, dynamics = models()
    contexts = np.stack([footage(3, seed=s) for s in range(3)])  # (3 worlds, 3 frames, …)
    actions = program(12, 3)
    runs = []
    for restart in (False, True):
        world = World(tokenizer, dynamics, batch_size=3, seed=10)
        world.reset(contexts)
        frames = [world.step(a) for a in actions[:5]]
        if restart:  # world 1 starts over from other footage, mid-run, after the ring has wrapped
            shown = world.reset(footage(2, seed=9), worlds=[1], seed=4)
            assert shown.shape == (1, 16, 16, 3)
            assert world.counter.tolist() == [5, 0, 5] and world.seed.tolist() == [10, 5, 12]
        frames += [world.step(a) for a in actions[5:]]
        runs.append(np.stack(frames))
    untouched, restarted = runs
    np.testing.assert_array_equal(restarted[:, [0, 2]], untouched[:, [0, 2]])
    assert not np.array_equal(restarted[5:, 1], untouched[5:, 1])


def test_a_world_is_the_same_alone_or_in_a_batch() -> None:
    """A world's frames depend on its context, actions and seed, not on its neighbours: world b of a
    batch seeded s plays what a batch of one seeded s + b plays."""
    tokenizer, dynamics = models()
    contexts = [footage(3, seed=s) for s in range(3)]
    actions = program(8, 3)
    batch = World(tokenizer, dynamics, batch_size=3, seed=20)
    batch.reset(np.stack(contexts))
    together = np.stack([batch.step(a) for a in actions])  # (T, 3, H, W, 3)
    for b in (0, 2):
        alone = World(tokenizer, dynamics, seed=20 + b)
        alone.reset(contexts[b])
        frames = np.stack([alone.step(a[b]) for a in actions])
        assert np.abs(frames.astype(int) - together[:, b].astype(int)).max() <= 1


def test_worlds_restart_from_histories_of_different_lengths() -> None:
    """Each world's context is encoded after its own history; ragged histories restart world by world."""
    tokenizer, dynamics = models()
    history = [footage(1, seed=3), footage(0, seed=4), footage(2, seed=5)]
    contexts = np.stack([footage(2, seed=s) for s in range(3)])
    world = World(tokenizer, dynamics, batch_size=3)
    world.reset(contexts, history=history)
    for b in range(3):
        alone = World(tokenizer, dynamics)
        alone.reset(contexts[b], history=history[b])
        assert torch.equal(alone.current[0], world.current[b])
    with pytest.raises(InputError, match="3 arrays"):
        world.reset(contexts, history=history[:2])
    with pytest.raises(InputError, match="distinct"):
        world.reset(contexts[:2], worlds=[1, 1])
    with pytest.raises(InputError, match="reset"):
        World(tokenizer, dynamics, batch_size=2).step(program(1, 2)[0])


def test_a_reset_reallocates_nothing() -> None:
    tokenizer, dynamics = models()
    world = World(tokenizer, dynamics, batch_size=2)
    world.reset(np.stack([footage(3, seed=0)] * 2))
    addresses = [t.data_ptr() for t in world._state()]
    world.step(program(1, 2)[0])
    world.reset(footage(1, seed=1), worlds=[0])
    world.reset(np.stack([footage(2, seed=2)] * 2))
    assert [t.data_ptr() for t in world._state()] == addresses


@pytest.mark.parametrize(("guidance", "order"), [(1.0, "drawn"), (2.0, "drawn"), (1.0, "certain")])
def test_the_whole_step_traces_as_one_graph_across_resets(guidance: float, order: str) -> None:
    """No host read and no Python-side frame counter in a step (advance and the decoder's render): it
    traces into one graph (functionalised: its in-place writes to the state hold), and resets (all
    worlds or some) never make it trace again; with action guidance too (a second trunk stream).
    The inductor test below compiles it for real."""
    tokenizer, dynamics = models(torch.float32)
    sampling = SamplingConfig(guidance=guidance, order=order)
    eager = World(tokenizer, dynamics, batch_size=2, sampling=sampling)
    compiled = World(tokenizer, dynamics, batch_size=2, sampling=sampling)
    compiled._step = torch.compile(compiled._step_eager, backend="aot_eager", fullgraph=True)
    actions = program(9, 2)
    contexts = np.stack([footage(3, seed=0), footage(3, seed=1)])
    with torch._dynamo.config.patch(error_on_recompile=True):
        for world in (eager, compiled):
            world.reset(contexts)
        for t, action in enumerate(actions):
            if t == 4:
                for world in (eager, compiled):
                    world.reset(footage(1, seed=2), worlds=[1])
            np.testing.assert_array_equal(compiled.step(action), eager.step(action))
    torch._dynamo.reset()


@pytest.mark.inductor
def test_the_compiled_step_equals_the_eager_one() -> None:
    """World(compile=True): the whole step through inductor, on CPU, as play --compile runs it."""
    tokenizer, dynamics = models(torch.float32)
    eager, compiled = World(tokenizer, dynamics), World(tokenizer, dynamics, compile=True)
    actions = program(6, 1)[:, 0]
    for world in (eager, compiled):
        world.reset(footage(3, seed=0))
    for action in actions:
        difference = compiled.step(action).astype(int) - eager.step(action).astype(int)
        assert np.abs(difference).max() <= 1
    torch._dynamo.reset()
