"""The action-conditioned latent transformer: tokens of frames ≤ t and action a_t → frame t+1's tokens.

Design choices (the cost is counted per generated frame, N tokens, P passes):
- Two parts, as in TECO: a block-causal **trunk** (a :class:`~wm_video.attention.FrameStack`:
  every token of the last ``context_frames`` frames and of the ``sink_frames`` first) reads each
  frame once, with the action taken at that frame, and leaves a hidden state per token; a
  small spatial **head** then predicts all N tokens of the next frame together from that state,
  MaskGIT-style, refining over P passes (:mod:`.sampling`). The deep part runs once per frame,
  the shallow part P times: 6 + 4 × 2 = 14 layer-forwards of N tokens per frame for ``tiny``,
  where one model refined P times and then re-run to write its cache would need 5 × 6 = 30.
- Actions are embedded by an MLP (buttons multi-hot, deltas divided by their scale) and added
  to every token of their frame in the trunk and again in the head, so the action reaches the
  prediction through two paths, one of them short.
- Outputs are factorised over FSQ channels: a token is one digit per level (7·5·5·5·5 = 4,375
  codes), and the head gives 27 logits per token (one softmax per channel) instead of 4,375.
  Output FLOPs fall 160-fold and the digits' order (neighbouring levels are close values) is
  kept; channels are sampled independently given the context (as MAGVIT-v2 factorises its
  large vocabulary). Token ids index an embedding table on the input side.

Shapes: tokens (B, T, N) int64 in [0, codebook); actions (B, T, A) float; hidden (B, T, N, D).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from wm_video.attention import Block, FramePattern, FrameStack, KVCache
from wm_video.dynamics.config import DynamicsConfig
from wm_video.errors import InputError


class DynamicsModel(nn.Module):
    _scales: Tensor
    _basis: Tensor
    _levels: Tensor

    def __init__(self, config: DynamicsConfig) -> None:
        super().__init__()
        self.config = c = config
        #: The world's own sampling settings (:class:`~wm_video.dynamics.SamplingConfig` fields; those
        #: not named take its defaults): what an exported world stores in ``meta.sampling``.
        self.sampling: dict[str, Any] = {}
        self.mask_id = c.codebook_size  # the head's input id of a token not yet decided
        self.action_embed = nn.Sequential(nn.Linear(c.action_dim, c.dim), nn.SiLU(), nn.Linear(c.dim, c.dim))
        self.token_embed = nn.Embedding(c.codebook_size, c.dim)
        self.trunk_pos = nn.Parameter(torch.randn(c.tokens_per_frame, c.dim) * 0.02)
        pattern = FramePattern(window=c.context_frames, sinks=c.sink_frames)
        self.trunk = FrameStack(c.dim, c.heads, c.trunk_layers, c.mlp_ratio, pattern, tanh_gelu=True)
        self.head_embed = nn.Embedding(c.codebook_size + 1, c.dim)
        self.head_pos = nn.Parameter(torch.randn(c.tokens_per_frame, c.dim) * 0.02)
        self.head_condition = nn.Linear(c.dim, c.dim)
        self.head_blocks = nn.ModuleList(
            Block(c.dim, c.heads, c.mlp_ratio, tanh_gelu=True) for _ in range(c.head_layers)
        )
        self.head_norm = nn.LayerNorm(c.dim)
        self.to_logits = nn.Linear(c.dim, sum(c.levels))
        self.register_buffer("_scales", torch.tensor(c.scales, dtype=torch.float32), persistent=False)
        basis = torch.cumprod(torch.tensor((1, *c.levels[:-1]), dtype=torch.int64), dim=0)
        self.register_buffer("_basis", basis, persistent=False)
        self.register_buffer("_levels", torch.tensor(c.levels, dtype=torch.int64), persistent=False)
        self.apply(_init_weights)

    # -- tokens ↔ per-channel digits ---------------------------------------------------------------
    def digits(self, tokens: Tensor) -> Tensor:
        """(...) token ids → (..., C) digits, digit c in [0, levels[c]) (the tokenizer's mixed radix)."""
        return (tokens.unsqueeze(-1) // self._basis) % self._levels

    def tokens_from_digits(self, digits: Tensor) -> Tensor:
        return (digits * self._basis).sum(-1)

    def split_logits(self, logits: Tensor) -> tuple[Tensor, ...]:
        """(..., sum(levels)) → one (..., levels[c]) logit tensor per channel."""
        return logits.split(list(self.config.levels), dim=-1)

    # -- pieces ----------------------------------------------------------------------------------------
    def embed_actions(self, actions: Tensor) -> Tensor:
        """(..., A) action vectors → (..., D)."""
        if actions.shape[-1] != self.config.action_dim:
            raise InputError(
                f"actions have {actions.shape[-1]} entries; this model takes {self.config.action_dim} "
                f"({', '.join(self.config.action_names)})"
            )
        return self.action_embed(actions.to(self._scales.dtype) / self._scales).to(self.trunk_pos.dtype)

    def no_action(self, leading: tuple[int, ...]) -> Tensor:
        """The embedded action of pressing nothing (every entry 0), shaped (*leading, D): the
        reference stream of action guidance (:mod:`.sampling`)."""
        zeros = torch.zeros(*leading, self.config.action_dim, device=self.trunk_pos.device)
        return self.embed_actions(zeros)

    def _trunk_inputs(self, tokens: Tensor, action_embedding: Tensor) -> Tensor:
        """(..., N) tokens and (..., D) action embedding → (..., N, D)."""
        return self.token_embed(tokens) + self.trunk_pos + action_embedding.unsqueeze(-2)

    def context(
        self, tokens: Tensor, action_embedding: Tensor, cache: KVCache | None = None, rows: Tensor | None = None
    ) -> Tensor:
        """Trunk states of a clip: tokens (B, T, N), embedded actions (B, T, D) → (B, T, N, D).

        State t has read frames ≤ t and action a_t: the head turns it into frame t + 1. With a
        ``cache``, its worlds ``rows`` restart from these frames (see :meth:`FrameStack.forward`).
        """
        if tokens.dim() != 3 or tokens.shape[-1] != self.config.tokens_per_frame:
            raise InputError(
                f"tokens must be (batch, time, {self.config.tokens_per_frame}); got {tuple(tokens.shape)}"
            )
        return self.trunk(self._trunk_inputs(tokens, action_embedding), cache, rows)

    def context_step(self, tokens: Tensor, action_embedding: Tensor, cache: KVCache) -> Tensor:
        """One frame per world through the cached trunk: tokens (B, N), embedded action (B, D) → state (B, N, D)."""
        return self.trunk.step(self._trunk_inputs(tokens, action_embedding), cache)

    def head_logits(self, state: Tensor, action_embedding: Tensor, partial: Tensor) -> Tensor:
        """Logits of the next frame's digits (..., N, sum(levels)).

        ``state`` (..., N, D) from :meth:`context`; ``action_embedding`` (..., D); ``partial``
        (..., N) the next frame's tokens where decided and ``mask_id`` elsewhere.
        """
        x = (
            self.head_embed(partial)
            + self.head_pos
            + self.head_condition(state)
            + action_embedding.unsqueeze(-2)
        )
        lead = x.shape[:-2]
        flat = x.reshape(-1, *x.shape[-2:])  # (B·T, N, D): frames are refined independently
        for block in self.head_blocks:
            flat = block(flat)
        return self.to_logits(self.head_norm(flat)).reshape(*lead, *flat.shape[-2:-1], -1)

    def forward(self, context: Tensor, actions: Tensor, partial: Tensor) -> Tensor:
        """Teacher-forced logits of a clip (training): frames 0 … T − 1 and their actions (B, T, ·) as
        context, ``partial`` (B, T, N) frames 1 … T with ``mask_id`` where undecided → (B, T, N, ΣL)."""
        embedding = self.embed_actions(actions)  # once, for trunk and head
        return self.head_logits(self.context(context, embedding), embedding, partial)

    def new_cache(self, batch: int, device: torch.device | None = None) -> KVCache:
        device = self.trunk_pos.device if device is None else device
        return self.trunk.new_cache(batch, self.config.tokens_per_frame, self.trunk_pos.dtype, device)


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, std=0.02)
