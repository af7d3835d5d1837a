"""A causal spatiotemporal video tokenizer: frames ↔ a small grid of discrete tokens per frame.

Design choices:
- Patches, not convolutions: a frame of ``image_size``² pixels becomes ``grid_size``² patch
  tokens (tiny: 64 px, 8 px patches → 64 tokens). The dynamics model pays per token, and on a
  2-core CPU a few matmuls over 64 tokens decode faster than any convolutional upsampler.
- Causal in time (Genie's ST-ViViT, Cosmos's causal tokenizer): encoder and decoder are
  :class:`~wm_video.attention.FrameStack` s of the same-position pattern: a token sees every
  token of its own frame (space) and its own position in the ``temporal_window − 1`` frames
  before (time), under one softmax, never a later frame. The tokens of frame t can therefore carry
  what changed since earlier frames, and the decoder reads earlier frames' codes to restore
  detail that one frame's 64 tokens cannot hold.
- FSQ quantization (:mod:`.fsq`): tokens are mixed-radix numbers of per-channel levels; the
  decoder works from the quantized channel values, which equal the tokens exactly.
- A code embedding (``code_embedding``, off by default): the decoder also adds a learned vector per
  code (codebook × dim parameters) to what it reads from the channel values. From the values alone
  the decoder is a smooth function of the code, so a rare code (a ball a pixel wide at one of
  64 places in its patch, a far monster) decodes as a blend of its neighbours in code space: a dim
  smear. The vector lets each code carry its own detail. It starts at zero, so adding it to a
  trained tokenizer (:func:`with_code_embedding`) leaves its output, and its tokens, unchanged
  until it trains. The encoder has no part in it; decoding costs one table lookup more.
- Streaming (:class:`TokenizerStream`) feeds one frame at a time through the same blocks with
  a cache of the window's keys and values (:class:`~wm_video.attention.KVCache`, a counter per
  stream on the device) and gives the whole-clip result.

Pixels are (B, T, 3, H, W) floats in [-1, 1]; :mod:`.pixels` converts from uint8 frames.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import astuple, dataclass, replace

import numpy as np
import torch
from einops import rearrange
from torch import Tensor, nn

from wm_video.attention import FramePattern, FrameStack
from wm_video.errors import InputError
from wm_video.tokenizer.config import TokenizerConfig
from wm_video.tokenizer.fsq import FSQ
from wm_video.tokenizer.pixels import to_model_pixels


@dataclass
class TokenizerEncoding:
    latents: Tensor  # (B, T, N, C) encoder output before quantization
    quantized: Tensor  # (B, T, N, C) FSQ values in [-1, 1]
    tokens: Tensor  # (B, T, N) int64 in [0, codebook_size)


@dataclass
class TokenizerOutput:
    encoding: TokenizerEncoding
    reconstruction: Tensor  # (B, T, 3, H, W), [-1, 1] scale, not clamped


class VideoTokenizer(nn.Module):
    def __init__(self, config: TokenizerConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        patch_pixels = 3 * c.patch_size**2
        self.patch_embed = nn.Linear(patch_pixels, c.dim)
        self.encoder_pos = nn.Parameter(torch.randn(c.tokens_per_frame, c.dim) * 0.02)
        pattern = FramePattern(window=c.temporal_window, same_position=True)
        self.encoder = FrameStack(c.dim, c.heads, c.encoder_layers, c.mlp_ratio, pattern, learned_own_frame=False)
        self.to_latent = nn.Linear(c.dim, c.latent_channels)
        self.quantizer = FSQ(c.levels)
        self.from_latent = nn.Linear(c.latent_channels, c.dim)
        self.code_embed = nn.Embedding(c.codebook_size, c.dim) if c.code_embedding else None
        self.decoder_pos = nn.Parameter(torch.randn(c.tokens_per_frame, c.dim) * 0.02)
        self.decoder = FrameStack(c.dim, c.heads, c.decoder_layers, c.mlp_ratio, pattern, learned_own_frame=False)
        self.to_pixels = nn.Linear(c.dim, patch_pixels)
        self.apply(_init_weights)

    # -- pieces shared by clips and streams -------------------------------------------------------
    def _check_frames(self, frames: Tensor) -> None:
        size = self.config.image_size
        if frames.dim() != 5 or tuple(frames.shape[2:]) != (3, size, size):
            raise InputError(
                f"tokenizer expects frames shaped (batch, time, 3, {size}, {size}); got {tuple(frames.shape)}"
            )

    def _embed(self, frames: Tensor) -> Tensor:
        """(B, T, 3, H, W) → (B, T, N, D) patch tokens."""
        p = self.config.patch_size
        patches = rearrange(frames, "b t c (gh p1) (gw p2) -> b t (gh gw) (p1 p2 c)", p1=p, p2=p)
        return self.patch_embed(patches) + self.encoder_pos

    def _quantize(self, hidden: Tensor) -> TokenizerEncoding:
        latents = self.to_latent(hidden)
        quantized = self.quantizer(latents)
        return TokenizerEncoding(latents, quantized, self.quantizer.to_tokens(quantized))

    def _unembed(self, hidden: Tensor) -> Tensor:
        """(B, T, N, D) → (B, T, 3, H, W)."""
        p, g = self.config.patch_size, self.config.grid_size
        patches = self.to_pixels(hidden)
        return rearrange(patches, "b t (gh gw) (p1 p2 c) -> b t c (gh p1) (gw p2)", gh=g, gw=g, p1=p, p2=p)

    # -- whole clips ------------------------------------------------------------------------------
    def encode(self, frames: Tensor) -> TokenizerEncoding:
        """(B, T, 3, H, W) in [-1, 1] → tokens of every frame, each from it and earlier frames."""
        self._check_frames(frames)
        return self._quantize(self.encoder(self._embed(frames)))

    def encode_footage(
        self,
        frames: np.ndarray | Tensor,
        history: np.ndarray | Tensor | Sequence[np.ndarray | Tensor] | None = None,
    ) -> TokenizerEncoding:
        """uint8 footage (B, T, H, W, 3) → its encoding, every frame encoded after the frames before it:
        those of ``history`` (the footage's earlier frames, read and not returned: (B, H′, H, W, 3), or
        one (H′_b, H, W, 3) array per clip when their lengths differ), then its own earlier ones.

        This is how the token cache encodes an episode (:mod:`wm_video.data.tokens`) and how a world
        encodes its context (:meth:`wm_video.engine.World.reset`): the same frames after the same
        ``encoder_reach`` earlier ones get the same tokens.
        """
        clips = torch.as_tensor(frames)
        before = [torch.as_tensor(h) for h in history] if history is not None else [clips[:, :0][0]] * len(clips)
        if len({len(h) for h in before}) > 1:  # lengths differ: clip by clip
            parts = [self.encode_footage(clip[None], h[None]) for clip, h in zip(clips, before, strict=True)]
            return TokenizerEncoding(*(torch.cat(p) for p in zip(*(astuple(e) for e in parts), strict=True)))
        earlier = len(before[0])
        footage = torch.cat((torch.stack(before).to(clips.device), clips), dim=1)
        param = self.decoder_pos
        encoding = self.encode(to_model_pixels(footage, param.device).to(param.dtype))
        return TokenizerEncoding(
            encoding.latents[:, earlier:], encoding.quantized[:, earlier:], encoding.tokens[:, earlier:]
        )

    def decoder_parts(self) -> list[nn.Module]:
        """The modules that turn codes into pixels, positions aside (for counting parameters and FLOPs)."""
        parts = [self.from_latent, self.code_embed, self.decoder, self.to_pixels]
        return [part for part in parts if part is not None]

    def decoder_inputs(self, quantized: Tensor) -> Tensor:
        """(..., N, C) quantized values → (..., N, D): the decoder's input tokens."""
        hidden = self.from_latent(quantized.to(self.decoder_pos.dtype)) + self.decoder_pos
        if self.code_embed is not None:
            hidden = hidden + self.code_embed(self.quantizer.to_tokens(quantized))
        return hidden

    def decode(self, quantized: Tensor) -> Tensor:
        """(B, T, N, C) quantized values → (B, T, 3, H, W) frames, each from its and earlier codes."""
        return self._unembed(self.decoder(self.decoder_inputs(quantized)))

    def decode_tokens(self, tokens: Tensor) -> Tensor:
        """(B, T, N) token ids → (B, T, 3, H, W) frames."""
        return self.decode(self.quantizer.from_tokens(tokens))

    def forward(self, frames: Tensor) -> TokenizerOutput:
        encoding = self.encode(frames)
        return TokenizerOutput(encoding, self.decode(encoding.quantized))

    def stream(self, batch_size: int = 1, *, encoder: bool = True) -> TokenizerStream:
        """A frame-at-a-time encoder and decoder over this model (see :class:`TokenizerStream`);
        ``encoder=False``: a decoder only (no encoder cache is allocated)."""
        return TokenizerStream(self, batch_size, encoder=encoder)


class TokenizerStream:
    """Encode or decode one new frame at a time for ``batch_size`` streams, equal to the whole-clip result.

    Encoder and decoder keep separate caches of the last ``temporal_window`` frames' keys and
    values, allocated once, with a frame counter per stream on the device: a stream can decode
    generated tokens while encoding real frames, or only one of the two, and a step reads
    nothing back to the host. Use it under ``torch.inference_mode()``.
    """

    def __init__(self, model: VideoTokenizer, batch_size: int = 1, *, encoder: bool = True) -> None:
        self.model = model
        self.batch_size = batch_size
        param = model.decoder_pos
        tokens = model.config.tokens_per_frame
        self.encoder_cache = (
            model.encoder.new_cache(batch_size, tokens, param.dtype, param.device) if encoder else None
        )
        self.decoder_cache = model.decoder.new_cache(batch_size, tokens, param.dtype, param.device)

    def reset(self, rows: Tensor | None = None) -> None:
        """Forget every earlier frame of streams ``rows`` (all when None), in place: the next frame
        is encoded or decoded as a clip's first."""
        if self.encoder_cache is not None:
            self.encoder_cache.reset(rows)
        self.decoder_cache.reset(rows)

    def encode(self, frame: Tensor) -> TokenizerEncoding:
        """(B, 3, H, W) in [-1, 1] → encoding with T = 1."""
        frames = frame.unsqueeze(1)
        self.model._check_frames(frames)
        if frames.shape[0] != self.batch_size:
            raise InputError(f"this stream was made for batch {self.batch_size}, got {frames.shape[0]}")
        if self.encoder_cache is None:
            raise InputError("this stream was made without an encoder (encoder=False)")
        hidden = self.model.encoder.step(self.model._embed(frames)[:, 0], self.encoder_cache)
        return self.model._quantize(hidden.unsqueeze(1))

    def decode(self, quantized: Tensor) -> Tensor:
        """(B, N, C) quantized values of one new frame → (B, 3, H, W)."""
        hidden = self.model.decoder.step(self.model.decoder_inputs(quantized), self.decoder_cache)
        return self.model._unembed(hidden.unsqueeze(1))[:, 0]

    def decode_tokens(self, tokens: Tensor) -> Tensor:
        """(B, N) token ids of one new frame → (B, 3, H, W)."""
        return self.decode(self.model.quantizer.from_tokens(tokens))

    def restart_decoder(self, quantized: Tensor, rows: Tensor | None = None) -> Tensor:
        """Restart the decoder of streams ``rows`` (all when None) from the quantized values
        (R, T, N, C) of T frames, decoded as one clip → (R, T, 3, H, W); the next :meth:`decode`
        of those streams follows them as if they had been decoded one at a time."""
        hidden = self.model.decoder(self.model.decoder_inputs(quantized), self.decoder_cache, rows)
        return self.model._unembed(hidden)


def with_code_embedding(model: VideoTokenizer) -> VideoTokenizer:
    """``model`` with a code embedding (see the module doc): itself when it has one, else a copy with
    one added at zero, which decodes exactly as ``model`` does until it trains."""
    if model.config.code_embedding:
        return model
    reference = model.decoder_pos
    extended = VideoTokenizer(replace(model.config, code_embedding=True)).to(reference.device, reference.dtype)
    missing, unexpected = extended.load_state_dict(model.state_dict(), strict=False)
    if unexpected or missing != ["code_embed.weight"]:  # the two shapes differ by exactly the table
        raise RuntimeError(f"code embedding: unexpected weights {unexpected}, missing {missing}")
    return extended.train(model.training)


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):  # the code embedding starts at zero (see the module doc)
        nn.init.zeros_(module.weight)
