"""The dynamics model's training objective: masked next-frame tokens, from a deliberately imperfect context.

For a clip of T frames, the trunk reads frames 0 … T − 2 with their actions, and the head
predicts each frame 1 … T − 1 from a copy of it in which a random share of tokens is masked
(MaskGIT: share = cos(π/2 · u), u uniform, at least one token). The loss is the cross-entropy
of every masked token's digits, summed over FSQ channels, averaged over masked tokens (with
``chain_digits``, each digit is given the true digits before it: the code's whole log-likelihood).

Context corruption (:class:`CorruptionConfig`) makes the model robust to its own mistakes in
long rollouts, where it reads frames it generated rather than real ones (GameNGen adds noise to
its context frames for the same reason). Each context frame gets its own corruption level:
- ``token_noise``: a level drawn uniformly in [0, token_noise] per frame; that share of its
  tokens is replaced by random codes;
- ``repeat_frames``: each context frame after the first is, with this probability, replaced by
  the frame before it (a dropped or stalled frame);
- ``own_frames``: each context frame after the first is, with this probability, replaced by the
  model's own sample of it (:func:`own_context`): one all-masked pass of the head from the real
  frames before it, each digit drawn at temperature 1, without gradient. Random codes are not the
  mistakes a world makes: it blurs a monster into a generic red code, and then, reading that code,
  draws an empty arena. Trained on its own samples with the real frame as the target, it learns
  that a monster it drew badly is still there. It costs one more forward pass without gradient
  (about a quarter more per step).
Targets are always the real tokens. Own frames are drawn first, then repeats and noise apply.

**Weighting where the game happens** (:class:`TokenWeightConfig`). In game footage most tokens
are static arena, and a plain mean spends the model on them: monsters, shots and the muzzle
flash are a few of 64 tokens, and the model learns to drop them. Each target token's loss is
then weighted ``1 + object_weight × o + change_weight × c``, where ``o`` is 1 when the engine's
labels put an object pixel in the token's patch (:func:`wm_video.data.objects.token_objects`)
and ``c`` is 1 when its code differs from the token at the same place in the frame before
(label-free: what moved, appeared or vanished). The weights are normalised to mean 1 over the
batch's masked tokens (the loss is Σ w·loss / Σ w), as the tokenizer's change weighting
normalises its pixel weights: the loss keeps the scale of a plain mean, and the learning rate
means the same thing. With both weights 0 the loss is the plain mean, bit for bit.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from wm_video.dynamics.model import DynamicsModel
from wm_video.dynamics.sampling import FrameSampler, SamplingConfig
from wm_video.errors import InputError


@dataclass(frozen=True)
class CorruptionConfig:
    token_noise: float = 0.1  # max share of a context frame's tokens replaced by random codes
    repeat_frames: float = 0.0  # probability a context frame repeats the one before it
    own_frames: float = 0.0  # probability a context frame is the model's own one-pass sample of it

    def __post_init__(self) -> None:
        for name in ("token_noise", "repeat_frames", "own_frames"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise InputError(f"--{name.replace('_', '-')} must lie in [0, 1], got {value}")


@dataclass(frozen=True)
class TokenWeightConfig:
    object_weight: float = 0.0  # extra weight on tokens with an object pixel (the labels); 0: none
    change_weight: float = 0.0  # extra weight on tokens whose code differs from the frame before; 0: none

    def __post_init__(self) -> None:
        for name, flag in (("object_weight", "--object-weight"), ("change_weight", "--token-change-weight")):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise InputError(f"{flag} must be a finite number ≥ 0 (0: no weighting), got {value}")

    @property
    def needs_objects(self) -> bool:
        """True when the loss reads the frames' object masks (the dataset's labels)."""
        return self.object_weight > 0


@dataclass
class DynamicsLosses:
    total: Tensor  # () float32, what is minimised
    # () share of masked tokens whose every digit was predicted right (argmax; chained digits: each
    # given the true ones before it, which is the greedy chained draw's exact code)
    accuracy: Tensor
    masked: Tensor  # () share of target tokens that were masked
    object_accuracy: Tensor | None = None  # () accuracy on masked object tokens (0 if none), given objects


def corrupt_context(tokens: Tensor, config: CorruptionConfig, codebook_size: int) -> Tensor:
    """(B, T, N) context tokens → a corrupted copy (see the module docstring); torch's global RNG."""
    batch, frames, count = tokens.shape
    out = tokens
    if config.repeat_frames > 0 and frames > 1:
        repeat = torch.rand(batch, frames, device=tokens.device) < config.repeat_frames
        repeat[:, 0] = False
        # A run of repeats copies the last frame that was kept.
        kept = torch.where(repeat, 0, torch.arange(frames, device=tokens.device))
        source = torch.cummax(kept, dim=1).values  # (B, T) index of the frame each position shows
        out = torch.gather(out, 1, source.unsqueeze(-1).expand(-1, -1, count))
    if config.token_noise > 0:
        level = torch.rand(batch, frames, 1, device=tokens.device) * config.token_noise
        noisy = torch.rand(batch, frames, count, device=tokens.device) < level
        random = torch.randint(0, codebook_size, out.shape, device=tokens.device)
        out = torch.where(noisy, random, out)
    return out


def own_context(model: DynamicsModel, context: Tensor, actions: Tensor, share: float) -> Tensor:
    """(B, T, N) real context frames and their actions (B, T, A) → a copy in which each frame after
    the first is, with probability ``share``, the model's own sample of it (see the module
    docstring); torch's global RNG."""
    batch, frames, count = context.shape
    if share <= 0 or frames < 2:
        return context
    sampler = FrameSampler(model, SamplingConfig())  # temperature 1, every level: as a world draws
    seed = torch.randint(0, 2**31, (), device=context.device)  # from torch's RNG: resumes exactly
    with torch.no_grad():
        partial = torch.full((batch, frames - 1, count), model.mask_id, dtype=context.dtype, device=context.device)
        embedding = model.embed_actions(actions[:, :-1])
        hidden = model.head_hidden(model.context(context[:, :-1], embedding), embedding, partial)  # frames 1 … T − 1
        digits, _ = sampler.draw(hidden, seed, torch.zeros_like(seed))
        own = model.tokens_from_digits(digits).to(context.dtype)
    use = torch.rand(batch, frames - 1, 1, device=context.device) < share
    return torch.cat([context[:, :1], torch.where(use, own, context[:, 1:])], dim=1)


def mask_targets(tokens: Tensor, mask_id: int) -> tuple[Tensor, Tensor]:
    """(..., N) target tokens → (partial tokens with ``mask_id`` where masked, masked bool (..., N))."""
    count = tokens.shape[-1]
    share = torch.cos(0.5 * math.pi * torch.rand(tokens.shape[:-1], device=tokens.device))
    masked_count = (share * count).ceil().clamp(1, count).long()  # (...)
    rank = torch.rand(tokens.shape, device=tokens.device).argsort(dim=-1).argsort(dim=-1)
    masked = rank < masked_count.unsqueeze(-1)
    return torch.where(masked, mask_id, tokens), masked


def token_weights(
    tokens: Tensor, weighting: TokenWeightConfig, objects: Tensor | None = None
) -> Tensor | None:
    """Unnormalised loss weights (B, T − 1, N) of the target frames 1 … T − 1 of ``tokens`` (B, T, N)
    (see the module docstring); ``objects`` (B, T, N), 1 on object tokens, is needed for an
    object weight. None when neither weight is set (a plain mean)."""
    if weighting.object_weight == 0 and weighting.change_weight == 0:
        return None
    weights = torch.ones(tokens[:, 1:].shape, device=tokens.device)
    if weighting.object_weight > 0:
        if objects is None:
            raise InputError("--object-weight needs the object masks of the clips (the dataset's labels)")
        weights = weights + weighting.object_weight * objects[:, 1:].float()
    if weighting.change_weight > 0:
        weights = weights + weighting.change_weight * (tokens[:, 1:] != tokens[:, :-1]).float()
    return weights


def code_nll(model: DynamicsModel, logits: Tensor, digits: Tensor) -> tuple[Tensor, Tensor]:
    """Logits (..., N, ΣL) and the true digits (..., N, C) → each token's negative log-likelihood of
    its code in nats (..., N), summed over channels, and whether every digit is the likeliest
    (..., N) bool (for a chained model, each given the true ones before it: the greedy code)."""
    nll = torch.zeros(digits.shape[:-1], device=logits.device)
    all_right = torch.ones(digits.shape[:-1], dtype=torch.bool, device=logits.device)
    for channel, channel_logits in enumerate(model.split_logits(logits.float())):
        target = digits[..., channel]
        nll = nll + F.cross_entropy(channel_logits.flatten(0, -2), target.flatten(), reduction="none").view_as(nll)
        all_right &= channel_logits.argmax(-1) == target
    return nll, all_right


def masked_token_loss(
    model: DynamicsModel,
    tokens: Tensor,
    actions: Tensor,
    corruption: CorruptionConfig,
    forward: Callable[[Tensor, Tensor, Tensor, Tensor], Tensor] | None = None,
    *,
    weighting: TokenWeightConfig = TokenWeightConfig(),
    objects: Tensor | None = None,
) -> DynamicsLosses:
    """The loss of a batch of clips: tokens (B, T, N) int64, actions (B, T, A); T ≥ 2.

    ``forward`` is the model as prepared for training (e.g. wrapped for several processes, whose
    gradients are only averaged when the wrapper runs); it defaults to ``model``. ``objects``
    (B, T, N), 1 where a token's patch holds an object, feeds ``weighting``'s object weight and the
    reported ``object_accuracy``.
    """
    if tokens.shape[1] < 2:
        raise InputError(f"clips need at least 2 frames to predict one; got {tokens.shape[1]}")
    context = own_context(model, tokens[:, :-1], actions[:, :-1], corruption.own_frames)
    context = corrupt_context(context, corruption, model.config.codebook_size)
    targets = tokens[:, 1:]
    partial, masked = mask_targets(targets, model.mask_id)
    digits = model.digits(targets)  # (B, T−1, N, C): what a chained model's logits are given
    logits = (forward or model)(context, actions[:, :-1], partial, digits).float()  # (B, T−1, N, ΣL)
    weights = masked.float()  # (B, T−1, N)
    extra = token_weights(tokens, weighting, objects)
    if extra is not None:  # Σ w·loss / Σ w over masked tokens: weights of mean 1 there
        weights = weights * extra
    nll, all_right = code_nll(model, logits, digits)
    total = (nll * weights).sum()
    count = masked.sum()
    object_accuracy = None
    if objects is not None:
        on_objects = masked & (objects[:, 1:] > 0)
        object_accuracy = ((all_right & on_objects).sum() / on_objects.sum().clamp(min=1)).detach()
    return DynamicsLosses(
        total=total / weights.sum(),
        accuracy=((all_right & masked).sum() / count).detach(),
        masked=(count / masked.numel()).detach(),
        object_accuracy=object_accuracy,
    )
