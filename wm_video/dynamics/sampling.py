"""Decoding a frame: all tokens together, MaskGIT-style, in a fixed number of passes.

Pass k (of P) samples every undecided token from the head's logits (one softmax per FSQ
channel, with temperature and top-k), scores it by its log-probability plus Gumbel noise that
fades over the passes (MaskGIT's choice temperature), and keeps the most confident ones: after
pass k, ``round(N · cos(π/2 · k/P))`` tokens stay undecided, none after the last.

**Which tokens a pass keeps** (``order``). MaskGIT keeps the tokens whose *drawn* value is most
likely ("drawn", the default). That biases every frame toward common codes: where the model gives a
small object 30 % and empty floor 70 %, a pass that draws the object ranks it low and draws that
token again next pass, while a pass that draws the floor keeps it, so the object is kept far less
often than 30 % of the time (a ball a pixel wide, a far monster, a muzzle flash). "certain" ranks
a token by how sure the model is there (the most likely value's log-probability) and keeps whatever
was drawn: the uncertain places are decided last, with the most context, and a rare value is kept
as often as the model draws it. With temperature 0 the two agree.

**Action guidance** (``guidance`` g ≠ 1): each pass also runs the head on a reference stream, the
same frames read with no key pressed at any of them (its own trunk cache over the whole window),
and samples from ``ref + g · (logits − ref)`` (per FSQ channel; a softmax ignores the constant
each channel's logits may shift by). g = 1 is the plain model; g > 1 pushes the frame away from
what pressing nothing would have given, toward what the keys pressed in the window do (a key just
released still counts while its frames are in the window), as classifier-free guidance does with a
text prompt, but against a real action, so worlds trained without action dropout can use it. It
costs a second trunk stream and doubles the head's rows: about twice the dynamics' work per frame.

Everything has a shape fixed in advance (how many tokens each pass keeps is a Python table),
so a pass never reads a value back to the host and can be captured in a graph. Randomness is a
counter-based hash of (seed, counter, position) computed with integer tensor ops
(:func:`hashed_uniform`): the same seed gives the same frames on any device, with no generator
state to capture or save.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
from torch import Tensor

from wm_video.dynamics.model import DynamicsModel
from wm_video.errors import InputError

_MASK32 = 0xFFFFFFFF


#: How a pass ranks the undecided tokens it may keep (``SamplingConfig.order``, the module docstring).
ORDERS = ("drawn", "certain")


@dataclass(frozen=True)
class SamplingConfig:
    temperature: float = 1.0  # 0: always the most likely digit
    top_k: int | None = None  # keep only the k most likely levels of each channel
    passes: int | None = None  # None: the model's decode_passes
    choice_noise: float = 1.0  # randomness in which tokens are decided first (faded to 0 by the last pass)
    guidance: float = 1.0  # action guidance against pressing nothing; 1: off (see the module docstring)
    order: str = "drawn"  # which tokens a pass keeps: "drawn" (MaskGIT) or "certain" (see the module docstring)

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise InputError(f"temperature must be ≥ 0, got {self.temperature}")
        if self.top_k is not None and self.top_k < 1:
            raise InputError(f"top-k must be ≥ 1, got {self.top_k}")
        if self.passes is not None and not 1 <= self.passes <= 8:
            raise InputError(f"passes must lie in 1..8, got {self.passes}")
        if self.choice_noise < 0:
            raise InputError(f"choice noise must be ≥ 0, got {self.choice_noise}")
        if not (math.isfinite(self.guidance) and 0 <= self.guidance <= 16):
            raise InputError(f"guidance must lie in 0..16 (1: off), got {self.guidance}")
        if self.order not in ORDERS:
            raise InputError(f"order must be one of {', '.join(ORDERS)}, got {self.order!r}")

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], where: str = "sampling") -> SamplingConfig:
        """The settings a world stores (its checkpoint's ``meta.sampling``), checked: ``where`` names them."""
        known = {field.name for field in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise InputError(f"{where}: unknown sampling settings {unknown}; known: {sorted(known)}")
        try:
            return cls(**values)
        except (InputError, TypeError) as err:
            raise InputError(f"{where}: {err}") from None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        if self.order == "drawn":  # left out when the default: such worlds read in versions without it
            del data["order"]
        return data


def undecided_after(tokens_per_frame: int, passes: int) -> tuple[int, ...]:
    """Tokens still undecided after each pass (cosine schedule, ending at 0)."""
    return tuple(round(tokens_per_frame * math.cos(0.5 * math.pi * k / passes)) for k in range(1, passes + 1))


def _mix32(x: Tensor) -> Tensor:
    """A 32-bit integer hash (int64 tensors holding values < 2^32; products stay < 2^63)."""
    x = x ^ (x >> 16)
    x = (x * 0x45D9F3B) & _MASK32
    x = x ^ (x >> 16)
    x = (x * 0x45D9F3B) & _MASK32
    return x ^ (x >> 16)


def hashed_bits(seed: Tensor, counter: Tensor, shape: tuple[int, ...], device: torch.device) -> Tensor:
    """24 random bits per position (int64 in [0, 2^24)), a pure function of (seed, counter, position).

    ``seed`` and ``counter`` are () int64 tensors (one stream over the whole ``shape``) or (B,) ones,
    one per world: row b of ``shape`` (B, ...) then draws from world b's seed and counter alone, so
    a world's draws do not depend on the other worlds beside it (one world at batch 1 draws the same).
    """
    key = _mix32((_mix32(seed & _MASK32) ^ (counter & _MASK32)) & _MASK32)
    if key.dim() == 0:
        index = torch.arange(math.prod(shape), device=device).reshape(shape)
    else:
        index = torch.arange(math.prod(shape[1:]), device=device).reshape(1, *shape[1:])
        key = key.reshape(-1, *(1,) * (len(shape) - 1))
    return _mix32((_mix32(index & _MASK32) + key) & _MASK32) >> 8


# The largest float32 below 1: (2^24 − 1 + 0.5) / 2^24 would round up to 1.0 (then log(1) = 0 and
# the Gumbel noise is +inf). Only that one value of the 2^24 is moved; every other draw is as before.
_BELOW_ONE = 1.0 - 2.0**-24


def hashed_uniform(seed: Tensor, counter: Tensor, shape: tuple[int, ...], device: torch.device) -> Tensor:
    """Uniform float32 strictly inside (0, 1), a pure function of (seed, counter, position); 24 random bits each."""
    bits = hashed_bits(seed, counter, shape, device)
    return ((bits.float() + 0.5) / float(1 << 24)).clamp_(max=_BELOW_ONE)


def _gumbel(seed: Tensor, counter: Tensor, shape: tuple[int, ...], device: torch.device) -> Tensor:
    return -torch.log(-torch.log(hashed_uniform(seed, counter, shape, device)))


@dataclass(frozen=True)
class Stream:
    """What the head reads for the next frame of one stream: trunk states (B, N, D) and the
    embedded action (B, D). Action guidance's reference stream is one (:class:`FrameSampler`)."""

    state: Tensor
    action_embedding: Tensor


def update_sampling(model: DynamicsModel, settings: Mapping[str, Any] | None, where: str = "sampling") -> None:
    """Replace single settings of the model's own sampling (``model.sampling``: what its checkpoint
    stores, else the defaults) by ``settings``, checked; ``where`` names them in an error."""
    model.sampling = SamplingConfig.from_dict({**model.sampling, **(settings or {})}, where).to_dict()


@functools.cache
def _padded_channels(levels: tuple[int, ...], device: torch.device) -> tuple[Tensor, Tensor]:
    """Channels padded to the widest level count: the (C, Lmax) index into the ΣL logits, and which
    entries are padding, so all channels are sampled by the same few ops. Made once per shape and
    device: a sampler is built per training step by ``--own-frames``, and a copy to a GPU waits for it."""
    widest, offsets = max(levels), [sum(levels[:c]) for c in range(len(levels))]
    index = torch.tensor([[o + min(j, n - 1) for j in range(widest)] for o, n in zip(offsets, levels, strict=True)])
    padding = torch.tensor([[j >= n for j in range(widest)] for n in levels])
    return index.to(device), padding.to(device)


class FrameSampler:
    """Decodes the next frame's tokens from trunk states with :class:`SamplingConfig`'s settings
    (by default the model's own, ``model.sampling``: what its checkpoint stores)."""

    def __init__(self, model: DynamicsModel, config: SamplingConfig | None = None) -> None:
        self.model, self.config = model, config or SamplingConfig.from_dict(model.sampling)
        self.passes = self.config.passes or model.config.decode_passes
        self.undecided = undecided_after(model.config.tokens_per_frame, self.passes)
        self._index, self._padding = _padded_channels(tuple(model.config.levels), model.trunk_pos.device)

    @property
    def guided(self) -> bool:
        """True when frames are drawn with action guidance: the caller keeps a reference stream."""
        return self.config.guidance != 1.0

    def logits(self, state: Tensor, action_embedding: Tensor, partial: Tensor, reference: Stream | None) -> Tensor:
        """The head's logits (..., N, ΣL) for ``partial``, guided against ``reference`` when :attr:`guided`
        (an unchained model's: a chained one's depend on the digits drawn, :meth:`draw`)."""
        if self.model.config.chain_digits:
            raise InputError("a model with chained digits has no logits before its digits are drawn: use draw")
        return self._combine(self.model.digit_logits(self._hidden(*self._rows(state, action_embedding, reference), partial)))

    def _rows(self, state: Tensor, action_embedding: Tensor, reference: Stream | None) -> tuple[Tensor, Tensor]:
        """The head's state and action rows: the stream's (B, …), then with guidance the reference's (2B, …)."""
        if not self.guided:
            return state, action_embedding
        if reference is None:
            raise InputError("action guidance needs the reference stream's state (pressing nothing)")
        return torch.cat([state, reference.state]), torch.cat([action_embedding, reference.action_embedding])

    def _hidden(self, state: Tensor, action_embedding: Tensor, partial: Tensor) -> Tensor:
        """The head's states (R, N, D) of :meth:`_rows`' rows for ``partial`` (B, N)."""
        both = torch.cat([partial, partial]) if self.guided else partial
        return self.model.head_hidden(state, action_embedding, both)

    def _combine(self, logits: Tensor) -> Tensor:
        """Logits of :meth:`_rows`' rows (R, …) → the ones drawn from (B, …): guided when :attr:`guided`."""
        if not self.guided:
            return logits
        chosen, plain = logits.to(torch.promote_types(logits.dtype, torch.float32)).chunk(2)  # bf16 would round
        return plain + self.config.guidance * (chosen - plain)

    def _pick(self, padded: Tensor, noise: Tensor | None) -> tuple[Tensor, Tensor]:
        """Logits (..., C', L) of C' channels (``-inf`` on padding) → digits (..., C') and their scores
        (..., C'): the drawn digit's log-probability, or with ``order`` "certain" the most likely one's.
        ``noise``: Gumbel noise of ``padded``'s shape (None at temperature 0)."""
        top_k = self.config.top_k
        if top_k is not None and top_k < padded.shape[-1]:
            kth = padded.topk(top_k, dim=-1).values[..., -1:]
            padded = padded.masked_fill(padded < kth, float("-inf"))
        if noise is not None:
            padded = padded / self.config.temperature
            # Padding stays out of reach whatever the noise (−inf + inf would be NaN, which argmax picks).
            digits = (padded + noise).masked_fill(padded == float("-inf"), float("-inf")).argmax(-1)
        else:
            digits = padded.argmax(-1)
        log_probs = padded.log_softmax(-1)
        if self.config.order == "certain":
            return digits, log_probs.amax(-1)
        return digits, log_probs.gather(-1, digits.unsqueeze(-1)).squeeze(-1)

    def _noise(self, shape: tuple[int, ...], seed: Tensor, counter: Tensor, device: torch.device) -> Tensor | None:
        """Gumbel noise for digits of ``shape`` (..., C, Lmax), or None at temperature 0."""
        return _gumbel(seed, counter, shape, device) if self.config.temperature > 0 else None

    def sample_digits(self, logits: Tensor, seed: Tensor, counter: Tensor) -> tuple[Tensor, Tensor]:
        """(..., N, ΣL) logits of independent channels → digits (..., N, C) and each token's confidence
        (..., N): the drawn digits' log-probability, or with ``order`` "certain" that of the most likely ones."""
        padded = logits.float()[..., self._index].masked_fill(self._padding, float("-inf"))  # (B, N, C, Lmax)
        digits, scores = self._pick(padded, self._noise(tuple(padded.shape), seed, counter, padded.device))
        return digits, scores.sum(-1)

    def draw(self, hidden: Tensor, seed: Tensor, counter: Tensor) -> tuple[Tensor, Tensor]:
        """The head's states (..., N, D) of :meth:`_rows`' rows → digits (..., N, C) and confidence (..., N)
        (see :meth:`sample_digits`). A chained model draws its channels in turn, each given the
        digits before it, with the noise the independent draw would give the same digit; its
        "certain" confidence sums each channel's likeliest digit's log-probability given the digits
        drawn before it."""
        model = self.model
        base = self._combine(model.to_logits(hidden)).float()
        if not model.config.chain_digits:
            return self.sample_digits(base, seed, counter)
        levels = model.config.levels
        noise = self._noise((*base.shape[:-1], len(levels), max(levels)), seed, counter, base.device)
        start = model.chain_start(hidden)
        prefix: Tensor | None = None
        digits, scores = [], []
        for channel, (level, logits) in enumerate(zip(levels, model.split_logits(base), strict=True)):
            if prefix is not None:
                logits = logits + self._combine(model.chain_term(start, prefix, channel)).float()
            digit, score = self._pick(
                logits.unsqueeze(-2), None if noise is None else noise[..., channel : channel + 1, :level]
            )
            digits.append(digit.squeeze(-1))
            scores.append(score.squeeze(-1))
            if channel < len(levels) - 1:
                vector = model.digit_vector(channel, digits[-1])
                vector = torch.cat([vector, vector]) if self.guided else vector
                prefix = vector if prefix is None else prefix + vector
        return torch.stack(digits, dim=-1), torch.stack(scores, dim=-1).sum(-1)

    def __call__(
        self,
        state: Tensor,
        action_embedding: Tensor,
        seed: Tensor,
        counter: Tensor,
        reference: Stream | None = None,
    ) -> Tensor:
        """state (B, N, D), action_embedding (B, D) → the next frame's tokens (B, N) int64.

        ``reference``: the trunk's state of the same frames read with no key pressed, and that
        embedded action (:meth:`DynamicsModel.no_action`), needed when :attr:`guided`.

        ``seed`` and ``counter`` are int64 device tensors, () or (B,) (one per world: see
        :func:`hashed_bits`); pass k of a frame draws its noise with counter ``2·(8·counter + k)``
        (digits) and that + 1 (choice), so give each frame its own counter.
        """
        model, mask_id = self.model, self.model.mask_id
        batch, count = state.shape[:2]
        rows = self._rows(state, action_embedding, reference)  # joined once for all passes
        tokens = torch.full((batch, count), mask_id, dtype=torch.long, device=state.device)
        decided = torch.zeros((batch, count), dtype=torch.bool, device=state.device)
        for k, still_undecided in enumerate(self.undecided):
            pass_counter = 2 * (counter * 8 + k)
            digits, confidence = self.draw(self._hidden(*rows, tokens), seed, pass_counter)
            proposal = model.tokens_from_digits(digits)
            if still_undecided == 0:
                return torch.where(decided, tokens, proposal)
            fade = self.config.choice_noise * (1.0 - (k + 1) / self.passes)
            if fade > 0:
                confidence = confidence + fade * _gumbel(seed, pass_counter + 1, (batch, count), state.device)
            confidence = confidence.masked_fill(decided, float("inf"))
            keep = confidence.topk(count - still_undecided, dim=-1).indices
            newly = torch.zeros_like(decided).scatter_(1, keep, True) & ~decided
            tokens = torch.where(newly, proposal, tokens)
            decided = decided | newly
        return tokens  # pragma: no cover - the schedule always ends at 0
