"""The one attention core (wm_video/attention.py): both patterns, the cache, prefill, worlds at their own frames."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from wm_video.attention import FramePattern, FrameStack, attention_kernel

PATTERNS = {
    "trunk": (FramePattern(window=3, sinks=1), True),
    "trunk, two sinks": (FramePattern(window=2, sinks=2), True),
    "trunk, no sink": (FramePattern(window=4), True),
    "tokenizer": (FramePattern(window=3, same_position=True), False),
    "tokenizer, window 1": (FramePattern(window=1, same_position=True), False),
}


def make_stack(pattern: FramePattern, learned_own_frame: bool, layers: int = 2) -> FrameStack:
    torch.manual_seed(0)
    stack = FrameStack(16, 2, layers, 2.0, pattern, learned_own_frame=learned_own_frame).double().eval()
    with torch.no_grad():
        stack.time_bias.normal_()  # a trained stack's biases matter
    return stack


def frames(batch: int, count: int, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, count, 5, 16, generator=generator, dtype=torch.float64)


@pytest.mark.parametrize("name", PATTERNS)
def test_steps_after_a_prefill_equal_the_whole_clip(name: str) -> None:
    stack = make_stack(*PATTERNS[name])
    x = frames(2, 10)  # past every window: the ring wraps
    with torch.no_grad():
        whole = stack(x)
        cache = stack.new_cache(2, 5, torch.float64, torch.device("cpu"))
        for prefill in (0, 1, 4):
            head = stack(x[:, :prefill], cache)
            steps = [stack.step(x[:, t], cache) for t in range(prefill, 10)]
            torch.testing.assert_close(head, whole[:, :prefill], rtol=0, atol=1e-12)
            torch.testing.assert_close(torch.stack(steps, 1), whole[:, prefill:], rtol=0, atol=1e-12)
            assert cache.frames.tolist() == [10, 10]


@pytest.mark.parametrize("name", ["trunk", "tokenizer"])
def test_each_world_steps_at_its_own_frame(name: str) -> None:
    """World 1 is restarted (prefill of 2 frames) while world 0 is 5 frames in; world 0 is untouched,
    and both then step on, each equal to its own clip."""
    stack = make_stack(*PATTERNS[name])
    a, b = frames(1, 9, seed=2), frames(1, 6, seed=3)
    with torch.no_grad():
        cache = stack.new_cache(2, 5, torch.float64, torch.device("cpu"))
        stack(torch.cat((a[:, :5], frames(1, 5, seed=4))), cache)
        kept = [t[0].clone() for t in cache.tensors()]
        stack(b[:, :2], cache, rows=torch.tensor([1]))
        assert all(torch.equal(t[0], k) for t, k in zip(cache.tensors(), kept, strict=True))
        assert cache.frames.tolist() == [5, 2]
        steps = [stack.step(torch.cat((a[:, 5 + t], b[:, 2 + t])), cache) for t in range(4)]
        torch.testing.assert_close(torch.stack(steps, 1)[:1], stack(a)[:, 5:], rtol=0, atol=1e-12)
        torch.testing.assert_close(torch.stack(steps, 1)[1:], stack(b)[:, 2:], rtol=0, atol=1e-12)
        cache.reset(torch.tensor([0]))
        assert cache.frames.tolist() == [0, 6] and not cache.keys[0][0].any() and cache.keys[0][1].any()


def test_the_flex_kernel_equals_the_plain_one(monkeypatch: pytest.MonkeyPatch) -> None:
    """FlexAttention (CUDA's kernel for a clip of the trunk's pattern) has its block mask and bias from
    the same frame numbers; on a CPU its unfused reference runs, forward only."""
    stack = make_stack(*PATTERNS["trunk"]).float()
    x = frames(2, 6).float()
    with torch.no_grad():
        assert attention_kernel(x.device) == "plain"
        plain = stack(x)
        monkeypatch.setenv("WM_VIDEO_ATTENTION", "flex")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "flex_attention called without torch.compile()"
            flex = stack(x)
    torch.testing.assert_close(flex, plain, rtol=0, atol=1e-5)


class _Shapes(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.seen: set[tuple[int, ...]] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in out if isinstance(out, tuple | list) else (out,):
            if isinstance(tensor, torch.Tensor):
                self.seen.add(tuple(tensor.shape))
        return out


def test_a_training_clip_never_builds_a_dense_bias() -> None:
    """Issue 17: training built a learnable (layers, heads, T·N, T·N) bias every forward (5.7 GB for
    base at 16 frames). Only the scores of each batch element are that large now."""
    stack = make_stack(*PATTERNS["trunk"], layers=3).float().train()
    x = frames(2, 6).float().requires_grad_()
    with _Shapes() as shapes:
        stack(x).square().sum().backward()
    assert stack.time_bias.grad is not None and stack.time_bias.grad.abs().sum() > 0
    square = [s for s in shapes.seen if len(s) >= 2 and s[-2:] == (30, 30)]  # T·N = 6 × 5
    assert square and all(math.prod(s[:-2]) == 2 * 2 for s in square), square  # batch × heads scores only
