"""Transformer blocks of the dynamics model and the block-causal frame trunk with its KV cache.

Attention pattern of the trunk (``W`` = ``context_frames``, ``S`` = ``sink_frames``): a token of
frame t attends to every token of frames t − W + 1 … t (its own frame included: all of a frame's
tokens see each other) and to every token of the first S frames, the attention sink. It never
sees a later frame. Space is told apart by a learned position per token (added to the inputs,
:mod:`.model`); time by a learned bias per layer, head and frame offset (0 … W − 1, plus one for
the sink), added to the attention scores. A frame's output depends only on how far back each
frame lies, so a whole clip at once (:meth:`FrameTrunk.forward`, for training) and one frame at
a time through the cache (:meth:`FrameTrunk.step`, for play) give the same result; a test pins
this.

The cache (:class:`TrunkCache`) is preallocated once: per layer, keys and values of S sink
frames and a ring of W frames, (B, heads, S + W, N, E). A step writes the new frame's keys into
ring slot ``frame % W`` and attends over all S + W slots with an additive bias row that hides
empty slots and the sink while the sink frame is still inside the window. The rows are
precomputed (:meth:`FrameTrunk.step_biases`) and picked on the device by the frame counter,
so a step reads nothing back to the host.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn


class Block(nn.Module):
    """Pre-norm attention (optional additive bias) then an MLP, over a flat run of tokens."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.heads = heads
        self.attn_norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.mlp_norm = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, dim))

    def _qkv(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(B, L, D) → q, k, v each (B, h, L, E)."""
        q, k, v = rearrange(
            self.qkv(self.attn_norm(x)), "b l (three h e) -> three b h l e", three=3, h=self.heads
        )
        return q, k, v

    def _finish(self, x: Tensor, attended: Tensor) -> Tensor:
        x = x + self.proj(rearrange(attended, "b h l e -> b l (h e)"))
        return x + self.mlp(self.mlp_norm(x))

    def forward(self, x: Tensor, bias: Tensor | None = None) -> Tensor:
        """x (B, L, D); bias (h, L, L) additive (−inf hides a key), or None for full attention."""
        q, k, v = self._qkv(x)
        return self._finish(x, F.scaled_dot_product_attention(q, k, v, attn_mask=bias))

    def step(
        self, x: Tensor, keys: Tensor, values: Tensor, slot: Tensor, sink: Tensor | None, bias: Tensor
    ) -> Tensor:
        """One new frame x (B, N, D) against a cache (B, h, S + W, N, E).

        Its keys and values go into cache slot ``slot`` (a 1-element long tensor) and into sink
        slot ``sink[0]`` when ``sink[1]`` is true (``sink``: a (2,) long tensor, or None without
        sinks); then the frame attends over every slot with ``bias`` (h, 1, (S + W)·N).
        """
        q, k, v = self._qkv(x)  # (B, h, N, E)
        for cache, new in ((keys, k.unsqueeze(2)), (values, v.unsqueeze(2))):
            cache.index_copy_(2, slot, new)
            if sink is not None:  # written on the device whether or not it is a sink frame: no branch
                sink_slot = sink[:1]
                kept = torch.where(sink[1].bool(), new, cache.index_select(2, sink_slot))
                cache.index_copy_(2, sink_slot, kept)
        flat_keys = keys.flatten(2, 3)  # (B, h, (S + W)·N, E), a view
        flat_values = values.flatten(2, 3)
        return self._finish(x, F.scaled_dot_product_attention(q, flat_keys, flat_values, attn_mask=bias))


@dataclass
class TrunkCache:
    """Keys and values of the sink frames and of a ring of the last W frames, per trunk layer."""

    keys: list[Tensor]  # per layer (B, h, S + W, N, E): slots 0..S−1 sink, S + (f mod W) frame f
    values: list[Tensor]
    frame: Tensor  # () int64 on the device: frames fed so far (the next frame's number)


class FrameTrunk(nn.Module):
    """Block-causal transformer over frames of tokens with a rolling window and an attention sink."""

    def __init__(
        self, dim: int, heads: int, layers: int, mlp_ratio: float, context_frames: int, sink_frames: int
    ) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, dim // heads
        self.window, self.sinks = context_frames, sink_frames
        self.blocks = nn.ModuleList(Block(dim, heads, mlp_ratio) for _ in range(layers))
        # time_bias[l, h, d]: added to scores of a frame d steps back (d < W); [..., W]: a sink frame.
        self.time_bias = nn.Parameter(torch.zeros(layers, heads, context_frames + 1))
        self.norm = nn.LayerNorm(dim)

    # -- a whole clip --------------------------------------------------------------------------------
    def frame_bias(self, frames: int, device: torch.device) -> Tensor:
        """(layers, heads, T, T) additive bias of query frame t over key frame s; −inf where hidden."""
        t = torch.arange(frames, device=device)
        back = t[:, None] - t[None, :]
        in_window = (back >= 0) & (back < self.window)
        in_sink = (back >= self.window) & (t[None, :] < self.sinks)
        bias = self.time_bias[:, :, torch.where(in_window, back, self.window)]
        return bias.masked_fill(~(in_window | in_sink), float("-inf"))

    def forward(self, x: Tensor) -> Tensor:
        """x (B, T, N, D) → (B, T, N, D); frame t's output depends on frames ≤ t only."""
        batch, frames, tokens, _ = x.shape
        bias = self.frame_bias(frames, x.device).to(x.dtype)
        bias = bias.repeat_interleave(tokens, dim=2).repeat_interleave(tokens, dim=3)  # (L, h, T·N, T·N)
        flat = rearrange(x, "b t n d -> b (t n) d")
        for block, layer_bias in zip(self.blocks, bias, strict=True):
            flat = block(flat, layer_bias)
        return self.norm(rearrange(flat, "b (t n) d -> b t n d", t=frames))

    # -- one frame at a time -----------------------------------------------------------------------
    def new_cache(self, batch: int, tokens: int, dtype: torch.dtype, device: torch.device) -> TrunkCache:
        shape = (batch, self.heads, self.sinks + self.window, tokens, self.head_dim)
        return TrunkCache(
            keys=[torch.zeros(shape, dtype=dtype, device=device) for _ in self.blocks],
            values=[torch.zeros(shape, dtype=dtype, device=device) for _ in self.blocks],
            frame=torch.zeros((), dtype=torch.long, device=device),
        )

    @property
    def _periodic_from(self) -> int:
        """From this frame on, every sink frame has left the window and the ring is full."""
        return self.window + self.sinks - 1

    def step_biases(self, tokens: int, dtype: torch.dtype) -> Tensor:
        """(rows, layers, heads, 1, (S + W)·N) bias rows over cache slots for :meth:`step`.

        Frame f uses row f while f < W + S − 1, then row W + S − 1 + (f − (W + S − 1)) mod W.
        Ring slot r holds frame f − ((f − r) mod W) (or nothing yet, when that is negative);
        sink slot j is shown once frame j has left the window (f − j ≥ W).
        """
        device = self.time_bias.device
        first = self._periodic_from
        frame = torch.arange(first + self.window, device=device)[
            :, None
        ]  # row f serves frame f (and later ones)
        ring = torch.arange(self.window, device=device)[None, :]
        back = (frame - ring) % self.window  # (rows, W)
        ring_bias = self.time_bias[:, :, back].masked_fill(frame - back < 0, float("-inf"))  # (L, h, rows, W)
        sink = torch.arange(self.sinks, device=device)[None, :]
        sink_hidden = (frame - sink < self.window).expand(-1, self.sinks)  # (rows, S)
        sink_bias = self.time_bias[:, :, self.window, None, None].expand(-1, -1, len(frame), self.sinks)
        sink_bias = sink_bias.masked_fill(sink_hidden, float("-inf"))
        bias = torch.cat((sink_bias, ring_bias), dim=-1).repeat_interleave(
            tokens, dim=-1
        )  # (L, h, rows, (S+W)·N)
        return rearrange(bias, "l h r k -> r l h 1 k").to(dtype).contiguous()

    def step(self, x: Tensor, cache: TrunkCache, biases: Tensor) -> Tensor:
        """One new frame x (B, N, D) → (B, N, D), equal to its row of :meth:`forward` over all frames so far."""
        frame, first = cache.frame, self._periodic_from
        row = torch.where(frame < first, frame, first + (frame - first) % self.window)
        bias = biases.index_select(0, row.reshape(1))[0]  # (L, h, 1, (S + W)·N); no host read of `row`
        slot = (self.sinks + frame % self.window).reshape(1)
        sink = (
            torch.stack((frame.clamp(max=self.sinks - 1), (frame < self.sinks).long()))
            if self.sinks
            else None
        )
        for i, block in enumerate(self.blocks):
            assert isinstance(block, Block)
            x = block.step(x, cache.keys[i], cache.values[i], slot, sink, bias[i])
        cache.frame += 1
        return self.norm(x)
