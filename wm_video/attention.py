"""One attention core for every stack over frames: the tokenizer's encoder and decoder and the dynamics trunk.

A stack is L pre-norm transformer blocks over frames of N tokens, (B, T, N, D). Which keys a
query sees, and what is added to its score, depend only on the frame numbers of the two
tokens, through a :class:`FramePattern` (data, not code):

- ``window`` W: a token of frame t sees frames t − W + 1 … t, its own included;
- ``sinks`` S: and the first S frames, however far back (the attention sink);
- ``same_position``: in frames before its own, only the token at its own position, in its own
  frame every token (the tokenizer: Genie's ST-ViViT space and causal time attention under one
  softmax); otherwise every token of every frame it sees (the dynamics trunk).

A learned bias per layer, head and frame offset (0 … W − 1, one more for a sink frame) is added
to the scores, so a token depends only on how far back each frame lies: a whole clip at once
(:meth:`FrameStack.forward`) and one frame at a time through a cache (:meth:`FrameStack.step`)
give the same result, and stacked, L blocks reach L × (W − 1) frames back.

The cache (:class:`KVCache`) is allocated once: per layer, keys and values of S sink slots and a
ring of W slots, (B, heads, S + W, N, E), and a frame counter per world on the device. Frame f
goes to sink slot f while f < S, else to ring slot S + (f − S) mod W; which frame each slot
holds, and so its bias and whether it is seen at all, follows from the counter alone
(:meth:`FramePattern.held_frames`). A step writes the new frame's keys and values and then
attends (write before read) without reading anything back to the host, so a step traces into
one graph; a reset zeroes the counters and slots of the worlds it restarts, in place.

Kernels (:func:`attention_kernel`): a clip of the every-token pattern runs FlexAttention on
CUDA (a block mask from window and sink, a ``score_mod`` adding the learned bias), elsewhere
scores plus a frame bias broadcast over token positions; neither ever builds a (T·N, T·N) bias.
The same-position pattern is two small products (its own frame; the same position in earlier
frames) under one softmax. A step attends one frame per world over the cache's slots with a
bias per slot.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

#: ``WM_VIDEO_ATTENTION``: ``auto`` (FlexAttention on CUDA when torch has it, else plain), ``flex`` or ``plain``.
KERNELS = ("auto", "flex", "plain")


def attention_kernel(device: torch.device) -> str:
    """``flex`` or ``plain``: the kernel a clip of the every-token pattern runs on ``device``.

    FlexAttention needs torch ≥ 2.7 (a learned bias with gradients inside a compiled kernel) and is
    fast only compiled on CUDA; ``WM_VIDEO_ATTENTION=plain`` or ``=flex`` overrides the choice
    (``flex`` on a CPU runs its unfused reference: for tests, without gradients).
    """
    choice = os.environ.get("WM_VIDEO_ATTENTION", "auto")
    if choice not in KERNELS:
        raise ValueError(f"WM_VIDEO_ATTENTION must be one of {KERNELS}, got {choice!r}")
    if choice != "auto":
        return choice
    major, minor = (int(part) for part in torch.__version__.split(".")[:2])
    return "flex" if device.type == "cuda" and (major, minor) >= (2, 7) else "plain"


@dataclass(frozen=True)
class FramePattern:
    """Which keys a query sees, from frame numbers (see the module docstring)."""

    window: int  # frames a token sees, its own included
    sinks: int = 0  # first frames every later frame also sees
    same_position: bool = False  # earlier frames: only the token at the query's own position

    def __post_init__(self) -> None:
        if self.window < 1 or self.sinks < 0:
            raise ValueError(f"a frame pattern needs window ≥ 1 and sinks ≥ 0; got {self.window}, {self.sinks}")

    @property
    def slots(self) -> int:
        """Cache slots per world and layer: the sinks, then a ring of ``window``."""
        return self.sinks + self.window

    @property
    def hidden(self) -> int:
        """The bias-table index of a key that is not seen (its entry is −inf)."""
        return self.window + 1

    def slot_of(self, frame: Tensor) -> Tensor:
        """The cache slot frame ``frame`` is written to (any shape, int64)."""
        ring = self.sinks + (frame - self.sinks) % self.window
        return torch.where(frame < self.sinks, frame, ring)

    def held_frames(self, frame: Tensor) -> Tensor:
        """(B,) the newest frame written → (B, S + W) the frame each slot holds; −1 for none yet."""
        newest = frame[:, None]
        sink = torch.arange(self.sinks, device=frame.device)
        sink_frames = torch.where(sink <= newest, sink, -1)
        ring = torch.arange(self.window, device=frame.device)
        ring_frames = newest - (newest - self.sinks - ring) % self.window
        return torch.cat((sink_frames, torch.where(ring_frames >= self.sinks, ring_frames, -1)), dim=1)

    def bias_index(self, query: Tensor, key: Tensor) -> Tensor:
        """Frame numbers of queries and keys (broadcast together; −1: no frame) → index into a
        bias table: the offset 0 … W − 1 inside the window, W for a sink frame behind it,
        :attr:`hidden` for a key not seen."""
        back = query - key
        in_window = (key >= 0) & (back >= 0) & (back < self.window)
        in_sink = (key >= 0) & (key < self.sinks) & (back >= self.window)
        index = torch.where(in_sink, self.window, self.hidden)
        return torch.where(in_window, back, index)


class Block(nn.Module):
    """Pre-norm attention then an MLP. ``forward`` attends over every token of its input; a
    :class:`FrameStack` calls :meth:`qkv` and :meth:`finish` around its own attention."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, *, tanh_gelu: bool = False) -> None:
        super().__init__()
        self.heads = heads
        self.attn_norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.mlp_norm = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        gelu = nn.GELU(approximate="tanh" if tanh_gelu else "none")
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), gelu, nn.Linear(hidden, dim))

    def project(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(..., L, D) → q, k, v each (..., h, L, E)."""
        q, k, v = rearrange(
            self.qkv(self.attn_norm(x)), "... l (three h e) -> three ... h l e", three=3, h=self.heads
        )
        return q, k, v

    def finish(self, x: Tensor, attended: Tensor) -> Tensor:
        """Residual add of the attention output (..., h, L, E), then the MLP."""
        x = x + self.proj(rearrange(attended, "... h l e -> ... l (h e)"))
        return x + self.mlp(self.mlp_norm(x))

    def forward(self, x: Tensor) -> Tensor:
        """x (B, L, D), every token seeing every other (the dynamics head's blocks)."""
        return self.finish(x, F.scaled_dot_product_attention(*self.project(x)))


@dataclass
class KVCache:
    """Keys and values of the sink frames and of a ring of the last W frames, per layer, and how
    many frames each world has fed (see the module docstring)."""

    keys: list[Tensor]  # per layer (B, h, S + W, N, E)
    values: list[Tensor]
    frames: Tensor  # (B,) int64 on the device: frames fed so far (the next frame's number)
    _all_rows: Tensor = field(repr=False)  # (B,) 0 … B − 1, for per-world writes

    @property
    def batch_size(self) -> int:
        return int(self.frames.shape[0])

    def tensors(self) -> list[Tensor]:
        """Every tensor of the state, for copies (snapshots) and static addresses (graph capture)."""
        return [*self.keys, *self.values, self.frames]

    def reset(self, rows: Tensor | None = None) -> None:
        """Forget every frame of the worlds ``rows`` (all when None), in place."""
        for tensor in self.tensors():
            if rows is None:
                tensor.zero_()
            else:
                tensor.index_fill_(0, rows, 0)

    def write(self, layer: int, slot: Tensor, keys: Tensor, values: Tensor) -> None:
        """One new frame per world: keys and values (B, h, N, E) into slot ``slot[b]`` (B,) of world b."""
        self.keys[layer][self._all_rows, :, slot] = keys
        self.values[layer][self._all_rows, :, slot] = values

    def copy_(self, other: KVCache) -> None:
        """Take ``other``'s contents (same shapes) into this cache's tensors."""
        for target, source in zip(self.tensors(), other.tensors(), strict=True):
            if target.shape != source.shape:
                raise ValueError(f"a cache of {tuple(source.shape)} cannot fill one of {tuple(target.shape)}")
            target.copy_(source)

    def clone(self) -> KVCache:
        return KVCache(
            [t.clone() for t in self.keys], [t.clone() for t in self.values], self.frames.clone(), self._all_rows
        )

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors())


_BLOCK_MASKS: dict[tuple[Any, ...], Any] = {}  # FlexAttention block masks by (pattern, frames, tokens, device)
_flex_compiled: Callable[..., Tensor] | None = None


def _flex_attention(q: Tensor, k: Tensor, v: Tensor, table: Tensor, pattern: FramePattern, tokens: int) -> Tensor:
    """Every-token pattern over a clip, q, k, v (B, h, T·N, E) → (B, h, T·N, E), by FlexAttention."""
    global _flex_compiled
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    length = q.shape[2]
    key = (pattern, length, tokens, str(q.device))
    if key not in _BLOCK_MASKS:

        def mask_mod(b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
            return pattern.bias_index(q_idx // tokens, kv_idx // tokens) != pattern.hidden

        _BLOCK_MASKS[key] = create_block_mask(mask_mod, None, None, length, length, device=str(q.device))

    def score_mod(score: Tensor, b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
        return score + table[h, pattern.bias_index(q_idx // tokens, kv_idx // tokens)]

    if q.device.type == "cuda":
        if _flex_compiled is None:
            _flex_compiled = torch.compile(flex_attention, dynamic=False)
        run = _flex_compiled
    else:  # the unfused reference (tests on a CPU)
        run = flex_attention
    out = run(q, k, v, score_mod=score_mod, block_mask=_BLOCK_MASKS[key])
    assert isinstance(out, Tensor)
    return out


class FrameStack(nn.Module):
    """L blocks over frames with one :class:`FramePattern`, a learned time bias and a final norm.

    ``learned_own_frame=False`` is the tokenizer's bias layout: offsets 1 … W − 1 are learned
    (``time_bias`` (L, h, max(W − 1, 1))), its own frame and sinks get none; otherwise
    ``time_bias`` (L, h, W + 1) holds offsets 0 … W − 1 and the sink.
    """

    def __init__(
        self,
        dim: int,
        heads: int,
        layers: int,
        mlp_ratio: float,
        pattern: FramePattern,
        *,
        learned_own_frame: bool = True,
        tanh_gelu: bool = False,
    ) -> None:
        super().__init__()
        self.pattern, self.learned_own_frame = pattern, learned_own_frame
        self.heads, self.head_dim = heads, dim // heads
        self.blocks = nn.ModuleList(Block(dim, heads, mlp_ratio, tanh_gelu=tanh_gelu) for _ in range(layers))
        width = pattern.window + 1 if learned_own_frame else max(pattern.window - 1, 1)
        self.time_bias = nn.Parameter(torch.zeros(layers, heads, width))
        self.norm = nn.LayerNorm(dim)

    def _blocks(self) -> list[Block]:
        return list(self.blocks)  # type: ignore[arg-type]

    def bias_table(self, dtype: torch.dtype) -> Tensor:
        """(L, h, W + 2): the bias of offsets 0 … W − 1, of a sink frame, then −inf (not seen)."""
        layers, heads, _ = self.time_bias.shape
        window = self.pattern.window
        table: Tensor = self.time_bias
        if not self.learned_own_frame:
            zero = self.time_bias.new_zeros(layers, heads, 1)
            table = torch.cat((zero, self.time_bias[..., : window - 1], zero), dim=-1)
        return F.pad(table, (0, 1), value=float("-inf")).to(dtype)

    # -- a whole clip --------------------------------------------------------------------------------
    def forward(self, x: Tensor, cache: KVCache | None = None, rows: Tensor | None = None) -> Tensor:
        """x (B, T, N, D), frames 0 … T − 1 → (B, T, N, D); frame t depends on frames ≤ t only.

        With a ``cache``, worlds ``rows`` of it (B of them; all when None) are restarted and left
        as if these T frames had been fed one :meth:`step` at a time (a prefill).
        """
        frames, tokens = x.shape[1], x.shape[2]
        if cache is not None:
            cache.reset(rows)
        if frames == 0:
            return self.norm(x)
        numbers = torch.arange(frames, device=x.device)
        index = self.pattern.bias_index(numbers[:, None], numbers[None, :])  # (T, T)
        tables = self.bias_table(x.dtype)
        kernel = "plain" if self.pattern.same_position else attention_kernel(x.device)
        for layer, block in enumerate(self._blocks()):
            q, k, v = block.project(x)  # (B, T, h, N, E)
            q, k, v = (a.transpose(1, 2) for a in (q, k, v))  # (B, h, T, N, E)
            if cache is not None:
                self._prefill(cache, layer, k, v, rows)
            if self.pattern.same_position:
                out = self._same_position_clip(q, k, v, tables[layer], index)
            elif kernel == "flex":
                flat_q, flat_k, flat_v = (a.flatten(2, 3) for a in (q, k, v))
                out = _flex_attention(flat_q, flat_k, flat_v, tables[layer], self.pattern, tokens)
                out = out.unflatten(2, (frames, tokens))
            else:
                out = self._every_token_clip(q, k, v, tables[layer], index)
            x = block.finish(x, out.transpose(1, 2))
        if cache is not None:
            if rows is None:
                cache.frames.fill_(frames)
            else:
                cache.frames.index_fill_(0, rows, frames)
        return self.norm(x)

    def _every_token_clip(self, q: Tensor, k: Tensor, v: Tensor, table: Tensor, index: Tensor) -> Tensor:
        """Every token of the frames seen: scores (B, h, T·N, T·N) plus the frame bias broadcast over positions."""
        batch, heads, frames, tokens, width = q.shape
        scores = (q * width**-0.5).flatten(2, 3) @ k.flatten(2, 3).transpose(-1, -2)
        bias = table[:, index][:, :, None, :, None]  # (h, T, 1, T, 1)
        scores = (scores.view(batch, heads, frames, tokens, frames, tokens) + bias).flatten(4, 5)
        weights = scores.softmax(-1).flatten(2, 3)  # (B, h, T·N, T·N)
        return (weights @ v.flatten(2, 3)).view(q.shape)

    def _same_position_clip(self, q: Tensor, k: Tensor, v: Tensor, table: Tensor, index: Tensor) -> Tensor:
        """Its own frame's tokens (space) and its own position in earlier frames (time), one softmax."""
        q = q * q.shape[-1] ** -0.5
        own = torch.eye(index.shape[0], dtype=torch.bool, device=index.device)
        space = q @ k.transpose(-1, -2) + table[:, 0, None, None, None]  # (B, h, T, N, N)
        time_bias = table[:, torch.where(own, self.pattern.hidden, index)]  # (h, T, T), own frame hidden
        qt, kt, vt = (a.transpose(2, 3) for a in (q, k, v))  # (B, h, N, T, E)
        time = (qt @ kt.transpose(-1, -2) + time_bias[:, None]).transpose(2, 3)  # (B, h, T, N, T)
        weights = torch.softmax(torch.cat((space, time), dim=-1), dim=-1)
        tokens = space.shape[-1]
        from_time = weights[..., tokens:].transpose(2, 3) @ vt  # (B, h, N, T, E)
        return weights[..., :tokens] @ v + from_time.transpose(2, 3)

    def _prefill(self, cache: KVCache, layer: int, keys: Tensor, values: Tensor, rows: Tensor | None) -> None:
        """Write the keys and values (B, h, T, N, E) of clip frames 0 … T − 1 that a stream would still hold."""
        frames, sinks, window = keys.shape[2], self.pattern.sinks, self.pattern.window
        kept = [*range(min(sinks, frames)), *range(max(sinks, frames - window), frames)]
        kept_frames = torch.tensor(kept, device=keys.device)
        slots = self.pattern.slot_of(kept_frames)
        for target, source in ((cache.keys[layer], keys), (cache.values[layer], values)):
            chosen = source[:, :, kept_frames].to(target.dtype)  # (B, h, F, N, E)
            if rows is None:
                target[:, :, slots] = chosen
            else:
                target[rows[:, None], :, slots[None, :]] = chosen.transpose(1, 2)

    # -- one frame at a time -------------------------------------------------------------------------
    def new_cache(self, batch: int, tokens: int, dtype: torch.dtype, device: torch.device) -> KVCache:
        """An empty cache for ``batch`` worlds of ``tokens`` tokens per frame."""
        shape = (batch, self.heads, self.pattern.slots, tokens, self.head_dim)
        blocks = self._blocks()
        return KVCache(
            keys=[torch.zeros(shape, dtype=dtype, device=device) for _ in blocks],
            values=[torch.zeros(shape, dtype=dtype, device=device) for _ in blocks],
            frames=torch.zeros(batch, dtype=torch.long, device=device),
            _all_rows=torch.arange(batch, device=device),
        )

    def step(self, x: Tensor, cache: KVCache) -> Tensor:
        """One new frame per world, x (B, N, D) → (B, N, D): each world at its own frame number,
        equal to that frame's row of :meth:`forward` over all of the world's frames so far."""
        frame = cache.frames  # (B,) the new frame's number, per world
        slot = self.pattern.slot_of(frame)
        index = self.pattern.bias_index(frame[:, None], self.pattern.held_frames(frame))  # (B, S + W)
        tables = self.bias_table(x.dtype)
        if self.pattern.same_position:  # its own frame is the space part: hidden among the slots
            index = torch.where(index == 0, self.pattern.hidden, index)
        biases = tables[:, :, index].transpose(1, 2)  # (L, B, h, S + W)
        for layer, block in enumerate(self._blocks()):
            q, k, v = block.project(x)  # (B, h, N, E)
            cache.write(layer, slot, k, v)
            keys, values = cache.keys[layer], cache.values[layer]  # (B, h, S + W, N, E)
            if self.pattern.same_position:
                out = self._same_position_step(q, k, v, keys, values, biases[layer], tables[layer, :, 0])
            else:
                bias = biases[layer].repeat_interleave(x.shape[1], dim=-1).unsqueeze(2)  # (B, h, 1, (S + W)·N)
                out = F.scaled_dot_product_attention(q, keys.flatten(2, 3), values.flatten(2, 3), attn_mask=bias)
            x = block.finish(x, out)
        cache.frames += 1
        return self.norm(x)

    @staticmethod
    def _same_position_step(
        q: Tensor, k: Tensor, v: Tensor, keys: Tensor, values: Tensor, bias: Tensor, own_bias: Tensor
    ) -> Tensor:
        """q, k, v (B, h, N, E) of the new frame; keys, values (B, h, K, N, E) the slots; bias (B, h, K)."""
        q = q * q.shape[-1] ** -0.5
        space = q @ k.transpose(-1, -2) + own_bias[:, None, None]  # (B, h, N, N)
        # One query per (b, h, n) against K keys: elementwise beats a batch of tiny matmuls.
        time = (q.unsqueeze(2) * keys).sum(-1) + bias[..., None]  # (B, h, K, N)
        weights = torch.softmax(torch.cat((space, time.transpose(-1, -2)), dim=-1), dim=-1)
        tokens = space.shape[-1]
        from_time = (weights[..., tokens:].transpose(-1, -2).unsqueeze(-1) * values).sum(2)  # (B, h, N, E)
        return weights[..., :tokens] @ v + from_time
