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
- With ``chain_digits``, a token's digits are drawn in turn and each channel's logits get a term
  read from the digits already drawn: ``chain_out(silu(chain_in(h) + Σ_{j<c} E_j[d_j]))`` (the
  chain rule over the five digits, so the joint distribution of a token's code is exact where
  the independent channels give only its marginals). Where the model hesitates between a
  monster's code and the floor's, independent channels mix their digits into a third code, a
  tile of neither; chained, a drawn first digit commits the others to one of the two. Training
  is teacher-forced with the true digits (one extra layer of the model's width over C − 1 rows per token);
  sampling runs the term C − 1 times per pass, on the head's states already computed. The term's
  output layer starts at zero, so a model that gains a chain predicts as before until it trains
  (:func:`with_digit_chain`).

Shapes: tokens (B, T, N) int64 in [0, codebook); actions (B, T, A) float; hidden (B, T, N, D).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wm_video.attention import Block, FramePattern, FrameStack, KVCache
from wm_video.dynamics.config import DynamicsConfig
from wm_video.errors import InputError


class DynamicsModel(nn.Module):
    _scales: Tensor
    _basis: Tensor
    _levels: Tensor
    _digit_offsets: Tensor

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
        if c.chain_digits:  # see the module docstring
            self.digit_embed = nn.Embedding(sum(c.levels[:-1]), c.dim)  # channel j's digit d: row offset_j + d
            self.chain_in = nn.Linear(c.dim, c.dim)
            self.chain_out = nn.Linear(c.dim, sum(c.levels[1:]))  # channel c ≥ 1's term in its own slice
        self.register_buffer("_scales", torch.tensor(c.scales, dtype=torch.float32), persistent=False)
        basis = torch.cumprod(torch.tensor((1, *c.levels[:-1]), dtype=torch.int64), dim=0)
        self.register_buffer("_basis", basis, persistent=False)
        self.register_buffer("_levels", torch.tensor(c.levels, dtype=torch.int64), persistent=False)
        offsets = torch.cumsum(torch.tensor((0, *c.levels[:-2]), dtype=torch.int64), dim=0)
        self.register_buffer("_digit_offsets", offsets[: len(c.levels) - 1], persistent=False)
        self.apply(_init_weights)
        if c.chain_digits:
            _init_chain(self)

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

    def head_hidden(self, state: Tensor, action_embedding: Tensor, partial: Tensor) -> Tensor:
        """The head's normalised states (..., N, D) for the next frame's tokens.

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
        return self.head_norm(flat).reshape(*lead, *flat.shape[-2:])

    def digit_logits(self, hidden: Tensor, digits: Tensor | None = None) -> Tensor:
        """Head states (..., N, D) → logits of the digits (..., N, ΣL).

        With ``chain_digits``, channel c's logits are those given the digits before it, and
        ``digits`` (..., N, C) says which (the true ones: teacher forcing); without, it is unused.
        """
        logits = self.to_logits(hidden)
        if not self.config.chain_digits:
            return logits
        if digits is None:
            raise InputError("a model with chained digits predicts each digit from those before it: pass the digits")
        start = self.chain_start(hidden)
        prefix = self.digit_embed(digits[..., :-1] + self._digit_offsets).cumsum(-2)  # (..., N, C − 1, D)
        first, *rest = self.split_logits(logits)
        chained = [own + self.chain_term(start, prefix[..., c, :], c + 1) for c, own in enumerate(rest)]
        return torch.cat([first, *chained], dim=-1)

    def _chain_slice(self, channel: int) -> tuple[int, int]:
        """Where channel ``channel`` (≥ 1)'s term lies in ``chain_out``'s output."""
        start = sum(self.config.levels[1:channel])
        return start, start + self.config.levels[channel]

    def chain_start(self, hidden: Tensor) -> Tensor:
        """The part of every chained term that reads the head's states (..., N, D): computed once per pass."""
        return self.chain_in(hidden)

    def chain_term(self, start: Tensor, prefix: Tensor, channel: int) -> Tensor:
        """Channel ``channel`` (≥ 1)'s added logits (..., N, L_c), given :meth:`chain_start`'s ``start``
        and ``prefix`` (..., N, D), the sum of :meth:`digit_vector` over the digits drawn before it."""
        begin, end = self._chain_slice(channel)
        return F.linear(F.silu(start + prefix), self.chain_out.weight[begin:end], self.chain_out.bias[begin:end])

    def digit_vector(self, channel: int, digit: Tensor) -> Tensor:
        """(...) digits of channel ``channel`` (< C − 1) → their vectors (..., D) in the chain's prefix."""
        return self.digit_embed(digit + self._digit_offsets[channel])

    def head_logits(
        self, state: Tensor, action_embedding: Tensor, partial: Tensor, digits: Tensor | None = None
    ) -> Tensor:
        """Logits of the next frame's digits (..., N, sum(levels)): :meth:`head_hidden` then
        :meth:`digit_logits` (``digits``: the chained model's digits)."""
        return self.digit_logits(self.head_hidden(state, action_embedding, partial), digits)

    def forward(self, context: Tensor, actions: Tensor, partial: Tensor, digits: Tensor | None = None) -> Tensor:
        """Teacher-forced logits of a clip (training): frames 0 … T − 1 and their actions (B, T, ·) as
        context, ``partial`` (B, T, N) frames 1 … T with ``mask_id`` where undecided → (B, T, N, ΣL);
        ``digits`` (B, T, N, C) are frames 1 … T's true digits, which a chained model's logits read."""
        embedding = self.embed_actions(actions)  # once, for trunk and head
        return self.head_logits(self.context(context, embedding), embedding, partial, digits)

    def new_cache(self, batch: int, device: torch.device | None = None) -> KVCache:
        device = self.trunk_pos.device if device is None else device
        return self.trunk.new_cache(batch, self.config.tokens_per_frame, self.trunk_pos.dtype, device)


def with_digit_chain(model: DynamicsModel) -> DynamicsModel:
    """``model`` with chained digits (see the module docstring): itself when it has them, else a
    copy with the chain added, its output at zero, which predicts exactly as ``model`` does until it
    trains."""
    if model.config.chain_digits:
        return model
    reference = model.trunk_pos
    extended = DynamicsModel(replace(model.config, chain_digits=True)).to(reference.device, reference.dtype)
    extended.sampling = dict(model.sampling)
    missing, unexpected = extended.load_state_dict(model.state_dict(), strict=False)
    if unexpected or sorted(missing) != sorted(CHAIN_WEIGHTS):  # the two shapes differ by exactly the chain
        raise RuntimeError(f"digit chain: unexpected weights {unexpected}, missing {missing}")
    return extended.train(model.training)


#: The weights a chained model has beyond an unchained one of the same config.
CHAIN_WEIGHTS = ("digit_embed.weight", "chain_in.weight", "chain_in.bias", "chain_out.weight", "chain_out.bias")


def _init_chain(model: DynamicsModel) -> None:
    """The chain's term starts at zero; digit vectors at the scale of ``chain_in``'s output, so the
    digits drawn weigh in as soon as the output layer moves."""
    nn.init.normal_(model.digit_embed.weight, std=0.3)
    nn.init.zeros_(model.chain_out.weight)
    nn.init.zeros_(model.chain_out.bias)


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, std=0.02)
