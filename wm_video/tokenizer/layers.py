"""Space-time transformer blocks with one joint, causal attention per block.

A token at frame t, position n attends at once to every token of frame t (space) and to the
same position n in the ``window − 1`` frames before t (time), under one softmax. This keeps
the causal space-time reach of Genie's ST-ViViT (space attention, then causal time attention)
with one set of projections per block instead of two: fewer FLOPs and half the small ops,
which is what a batch-1 step on a CPU pays for. Earlier frames are told apart by a learned
bias per head and frame offset, so a token depends only on how far back a frame is: a clip of
any length, or frames fed one at a time through a ring cache (:class:`StackCache`), give the
same result. Stacked, L blocks reach L × (window − 1) frames back: each block looks
window − 1 frames back at states that already looked back themselves.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from einops import rearrange
from torch import Tensor, nn


class STBlock(nn.Module):
    """Joint space + causal-time attention, then an MLP; pre-norm residuals."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.heads = heads
        self.attn_norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.mlp_norm = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def _qkv(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(B, T, N, D) → q, k, v each (B, T, h, N, E), q pre-scaled by 1/√E."""
        q, k, v = rearrange(
            self.qkv(self.attn_norm(x)), "b t n (three h e) -> three b t h n e", three=3, h=self.heads
        )
        return q * q.shape[-1] ** -0.5, k, v

    def _finish(self, x: Tensor, out: Tensor) -> Tensor:
        """Residual add of the attention output (B, T, h, N, E), then the MLP."""
        x = x + self.proj(rearrange(out, "b t h n e -> b t n (h e)"))
        return x + self.mlp(self.mlp_norm(x))

    def forward(self, x: Tensor, time_mask: Tensor) -> Tensor:
        """x (B, T, N, D); time_mask (h, T, T) additive, −inf unless 1 ≤ t − s < window."""
        q, k, v = self._qkv(x)
        space = q @ k.transpose(-1, -2)  # (B, T, h, N, N)
        qt, kt, vt = (rearrange(a, "b t h n e -> b h n t e") for a in (q, k, v))
        time = rearrange(qt @ kt.transpose(-1, -2) + time_mask[:, None], "b h n t s -> b t h n s")
        weights = torch.softmax(torch.cat((space, time), dim=-1), dim=-1)
        n = space.shape[-1]
        from_time = rearrange(
            rearrange(weights[..., n:], "b t h n s -> b h n t s") @ vt, "b h n t e -> b t h n e"
        )
        return self._finish(x, weights[..., :n] @ v + from_time)

    def step(self, x: Tensor, keys: Tensor, values: Tensor, slot: int, time_mask: Tensor) -> Tensor:
        """One new frame. x (B, 1, N, D); keys/values (B, h, N, window − 1, E): a ring of earlier
        frames, whose ``slot`` is overwritten with this frame's after use; time_mask (h, 1, window − 1)."""
        q, k, v = self._qkv(x)
        q, k, v = q[:, 0], k[:, 0], v[:, 0]  # (B, h, N, E)
        space = q @ k.transpose(-1, -2)  # (B, h, N, N)
        # One query per (b, h, n) against window − 1 keys: elementwise beats a batch of tiny matmuls.
        time = (q.unsqueeze(-2) * keys).sum(-1) + time_mask  # (B, h, N, window − 1)
        weights = torch.softmax(torch.cat((space, time), dim=-1), dim=-1)
        n = space.shape[-1]
        out = weights[..., :n] @ v + (weights[..., n:].unsqueeze(-1) * values).sum(-2)
        if keys.shape[3]:
            keys[:, :, :, slot] = k
            values[:, :, :, slot] = v
        return self._finish(x, out.unsqueeze(1))


@dataclass
class StackCache:
    """Keys and values of the last ``window − 1`` frames for every block, and how many frames came."""

    keys: list[Tensor]  # per block (B, h, N, window − 1, E): a ring, frame f in slot f % (window − 1)
    values: list[Tensor]
    frames_seen: int = 0


class STStack(nn.Module):
    """A stack of :class:`STBlock` with a learned time bias per block, head and frame offset."""

    def __init__(self, dim: int, heads: int, layers: int, mlp_ratio: float, window: int) -> None:
        super().__init__()
        self.heads = heads
        self.head_dim = dim // heads
        self.window = window
        self.blocks = nn.ModuleList(STBlock(dim, heads, mlp_ratio) for _ in range(layers))
        # time_bias[l, h, k − 1]: added to the score of the frame k steps back, 1 ≤ k < window.
        self.time_bias = nn.Parameter(torch.zeros(layers, heads, max(window - 1, 1)))
        self.norm = nn.LayerNorm(dim)

    def _clip_masks(self, frames: int, device: torch.device) -> Tensor:
        """(layers, heads, T, T) additive time masks for a clip of ``frames`` frames."""
        t = torch.arange(frames, device=device)
        back = t[:, None] - t[None, :]  # (T, T): how many frames key s lies behind query t
        inside = (back >= 1) & (back < self.window)
        bias = self.time_bias[:, :, (back - 1).clamp(0, self.time_bias.shape[-1] - 1)]
        return bias.masked_fill(~inside, float("-inf"))

    def forward(self, x: Tensor) -> Tensor:
        """x (B, T, N, D) → (B, T, N, D)."""
        masks = self._clip_masks(x.shape[1], x.device).to(x.dtype)
        for block, mask in zip(self.blocks, masks, strict=True):
            x = block(x, mask)
        return self.norm(x)

    def new_cache(self, batch: int, tokens: int, dtype: torch.dtype, device: torch.device) -> StackCache:
        """An empty ring cache for ``batch`` streams of ``tokens`` tokens per frame."""
        shape = (batch, self.heads, tokens, self.window - 1, self.head_dim)
        return StackCache(
            keys=[torch.zeros(shape, dtype=dtype, device=device) for _ in self.blocks],
            values=[torch.zeros(shape, dtype=dtype, device=device) for _ in self.blocks],
        )

    def step_masks(self, dtype: torch.dtype) -> Tensor:
        """(rows, layers, heads, 1, window − 1) additive masks over the ring slots, for :meth:`step`.

        Before step n, ring slot j was last written at step m = n − 1 − ((n − 1 − j) mod R), R =
        window − 1, so it holds the frame n − m steps back, or nothing when m < 0. Row n serves
        steps n < R (warm-up); after that the pattern repeats with period R (row R + n mod R).
        """
        ring = self.window - 1
        device = self.time_bias.device
        n = torch.arange(max(2 * ring, 1), device=device)[:, None]  # the step each row serves
        slots = torch.arange(ring, device=device)[None, :]
        back = 1 + (n - 1 - slots) % max(ring, 1)  # (rows, ring)
        bias = self.time_bias[:, :, (back - 1).clamp(max=self.time_bias.shape[-1] - 1)]  # (L, h, rows, ring)
        masks = bias.masked_fill(n - back < 0, float("-inf")).permute(2, 0, 1, 3).unsqueeze(3)
        return masks.to(dtype)

    def step(self, x: Tensor, cache: StackCache, masks: Tensor) -> Tensor:
        """x (B, 1, N, D) for one new frame → (B, 1, N, D); ``masks`` from :meth:`step_masks`."""
        ring = self.window - 1
        n = cache.frames_seen
        mask = masks[n if n < ring else ring + n % ring] if ring else masks[0]
        slot = n % ring if ring else 0
        blocks: list[STBlock] = list(self.blocks)  # type: ignore[arg-type]
        for i, block in enumerate(blocks):
            x = block.step(x, cache.keys[i], cache.values[i], slot, mask[i])
        cache.frames_seen += 1
        return self.norm(x)
