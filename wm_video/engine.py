"""A playable world: ``reset`` from real frames, then ``step(action)`` → the next frame.

Play, evaluation and benchmarks all drive this one object. It holds a tokenizer stream
(:class:`~wm_video.tokenizer.TokenizerStream`: encodes the context, decodes each new frame
with its own cache of earlier frames' codes), the dynamics model's trunk cache
(:class:`~wm_video.dynamics.layers.TrunkCache`: preallocated, a rolling window plus the
attention sink) and a :class:`~wm_video.dynamics.FrameSampler`.

Per generated frame: one trunk pass over the current frame's N tokens (which also writes them
into the cache), P head passes that decide the next frame's tokens, one tokenizer decoder step.
Nothing in :meth:`World.advance` reads a device value back to the host (the counters live on
the device; the tables are built at construction), so on a GPU the step can be compiled and
graph-captured (``compile=True``). :meth:`World.step` copies the frame to the host at the end,
because a player needs pixels.

:meth:`World.snapshot` and :meth:`World.restore` copy the state a rollout depends on (the trunk
cache, the decoder's cache, the current tokens, the sampling counters) on the device, so a
player can rewind; ``restore`` writes into the existing tensors, so captured graphs stay valid.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch import Tensor

from wm_video.actions import ActionSpace
from wm_video.dynamics import DynamicsModel, FrameSampler, SamplingConfig
from wm_video.errors import InputError
from wm_video.memory import FLOAT_BYTES, check_fits
from wm_video.tokenizer import VideoTokenizer
from wm_video.tokenizer.pixels import to_model_pixels, to_uint8_frames


def check_pair(tokenizer: VideoTokenizer, dynamics: DynamicsModel) -> None:
    """Raise unless ``dynamics`` reads the tokens ``tokenizer`` makes."""
    t, d = tokenizer.config, dynamics.config
    if t.grid_size != d.grid_size or tuple(t.levels) != tuple(d.levels):
        raise InputError(
            f"the tokenizer makes {t.grid_size}×{t.grid_size} tokens with levels {list(t.levels)}, but the "
            f"dynamics model reads {d.grid_size}×{d.grid_size} with levels {list(d.levels)}: "
            "use the tokenizer the dynamics model was trained with"
        )


@dataclass(frozen=True)
class WorldSnapshot:
    """A copy of a world's state between two steps (see :meth:`World.snapshot`); device tensors."""

    current: Tensor  # (B, N) tokens of the frame shown
    trunk_keys: tuple[Tensor, ...]  # per trunk layer (B, h, S + W, N, E)
    trunk_values: tuple[Tensor, ...]
    trunk_frame: Tensor  # () frames fed to the trunk
    decoder_keys: tuple[Tensor, ...]  # per tokenizer decoder block (B, h, N, window − 1, E)
    decoder_values: tuple[Tensor, ...]
    decoder_frames: int  # frames the decoder has seen
    counter: Tensor  # () generated frames (the sampling noise's frame number)
    seed: Tensor
    frames_seen: int

    @property
    def nbytes(self) -> int:
        """Device memory this snapshot holds."""
        tensors = (
            self.current,
            *self.trunk_keys,
            *self.trunk_values,
            *self.decoder_keys,
            *self.decoder_values,
            self.trunk_frame,
            self.counter,
            self.seed,
        )
        return sum(t.numel() * t.element_size() for t in tensors)


def check_batch_fits(
    tokenizer: VideoTokenizer, dynamics: DynamicsModel, batch: int, frames: int, fix: str
) -> None:
    """Refuse ``batch`` clips of ``frames`` frames that cannot fit: a lower bound of what scoring
    them needs (their pixels as float32, one layer's token states over them, the worlds' KV cache)."""
    config, size = dynamics.config, tokenizer.config.image_size
    pixels = batch * frames * size * size * 3 * FLOAT_BYTES
    states = batch * frames * config.tokens_per_frame * config.dim * FLOAT_BYTES
    kv_cache = 2 * config.trunk_layers * batch * (config.context_frames + config.sink_frames)
    kv_cache *= config.tokens_per_frame * config.dim * FLOAT_BYTES
    device = str(dynamics.trunk_pos.device)
    check_fits(max(pixels + states, kv_cache), f"{batch:,} clips of {frames} frames", fix, device=device)


class World:
    """``batch_size`` generated worlds stepped together (play uses one)."""

    def __init__(
        self,
        tokenizer: VideoTokenizer,
        dynamics: DynamicsModel,
        *,
        batch_size: int = 1,
        sampling: SamplingConfig | None = None,
        seed: int = 0,
        compile: bool = False,
    ) -> None:
        check_pair(tokenizer, dynamics)
        if batch_size < 1:
            raise InputError(f"batch size must be ≥ 1, got {batch_size}")
        check_batch_fits(tokenizer, dynamics, batch_size, 1, "ask for fewer parallel worlds (--clips)")
        self.tokenizer, self.dynamics = tokenizer.eval(), dynamics.eval()
        self.batch_size = batch_size
        self.device = dynamics.trunk_pos.device
        self.sampler = FrameSampler(dynamics, sampling)
        self.stream = tokenizer.stream(batch_size)
        self.cache = dynamics.new_cache(batch_size)
        self.biases = dynamics.step_biases()
        self.seed = torch.tensor(seed, dtype=torch.long, device=self.device)
        self.counter = torch.zeros((), dtype=torch.long, device=self.device)
        self.current: Tensor | None = None  # (B, N) tokens of the frame shown now
        self._frames_seen = 0
        #: What the checkpoint says about itself (``meta`` of checkpoint.json; empty for fresh models).
        self.meta: dict[str, Any] = {}
        self._advance = torch.compile(self._advance_eager) if compile else self._advance_eager

    @property
    def image_size(self) -> int:
        return self.tokenizer.config.image_size

    @property
    def action_space(self) -> ActionSpace:
        return self.dynamics.config.action_space

    @property
    def frames_seen(self) -> int:
        """Frames read into the trunk since the last reset (context and generated)."""
        return self._frames_seen

    # -- inputs ----------------------------------------------------------------------------------------
    def _frames_in(self, frames: np.ndarray) -> np.ndarray:
        """uint8 (H, W, 3), (T, H, W, 3) or (B, T, H, W, 3) → (B, T, S, S, 3) at the model's size."""
        frames = np.asarray(frames)
        if frames.dtype != np.uint8 or frames.ndim < 3 or frames.shape[-1] != 3:
            raise InputError(
                f"context frames must be uint8 RGB (…, H, W, 3); got {frames.dtype} {tuple(frames.shape)}"
            )
        while frames.ndim < 5:
            frames = frames[None]
        if frames.ndim > 5 or frames.shape[0] != self.batch_size or frames.shape[1] < 1:
            raise InputError(
                f"context frames for {self.batch_size} world(s) must be (T, H, W, 3) or ({self.batch_size}, T, H, W, 3)"
                f"; got {tuple(frames.shape)}"
            )
        size = self.image_size
        if frames.shape[2:4] != (size, size):
            resized = [
                cv2.resize(f, (size, size), interpolation=cv2.INTER_AREA)
                for f in frames.reshape(-1, *frames.shape[2:])
            ]
            frames = np.stack(resized).reshape(*frames.shape[:2], size, size, 3)
        return frames

    def _actions_in(self, actions: np.ndarray | Tensor, leading: tuple[int, ...]) -> Tensor:
        """Action vectors shaped (*leading, A) or, for one world, without the batch axis → device float32."""
        tensor = torch.as_tensor(
            np.asarray(actions, dtype=np.float32) if not isinstance(actions, Tensor) else actions
        )
        if self.batch_size == 1 and tensor.dim() == len(leading):
            tensor = tensor.unsqueeze(0)
        size = self.dynamics.config.action_dim
        if tuple(tensor.shape) != (*leading, size):
            names = ", ".join(self.dynamics.config.action_names)
            raise InputError(
                f"actions must be shaped {(*leading, size)} ({names}); got {tuple(tensor.shape)}"
            )
        return tensor.to(self.device, torch.float32)

    # -- the world ----------------------------------------------------------------------------------
    @torch.inference_mode()
    def reset(
        self, frames: np.ndarray, actions: np.ndarray | Tensor | None = None, *, seed: int | None = None
    ) -> np.ndarray:
        """Start from real frames (T ≥ 1; one image works) and the actions taken at all but the last.

        ``actions`` (T − 1 or T rows; the T-th is ignored: :meth:`step` gives it) defaults to no key
        pressed. Returns the last context frame as the model shows it (uint8, like :meth:`step`).
        """
        clip = self._frames_in(frames)
        context = clip.shape[1]
        if actions is None:
            taken = torch.zeros(self.batch_size, context, self.dynamics.config.action_dim, device=self.device)
        else:
            rows = len(actions[0]) if self.batch_size > 1 or np.ndim(actions) == 3 else len(actions)
            if rows not in (context - 1, context):
                raise InputError(
                    f"{context} context frames need {context - 1} actions (or {context}); got {rows}"
                )
            taken = self._actions_in(actions, (self.batch_size, rows))
        if seed is not None:
            self.seed.fill_(seed)
        self.counter.zero_()
        self.stream.reset()
        self.cache.frame.zero_()
        self._frames_seen = 0
        pixels = to_model_pixels(torch.from_numpy(clip), self.device).to(self.dynamics.trunk_pos.dtype)
        shown = torch.empty(0)
        for t in range(context):
            encoding = self.stream.encode(pixels[:, t])
            shown = self.stream.decode(encoding.quantized[:, 0])
            tokens = encoding.tokens[:, 0]
            if t < context - 1:
                embedding = self.dynamics.embed_actions(taken[:, t])
                self.dynamics.context_step(tokens, embedding, self.cache, self.biases)
                self._frames_seen += 1
            self.current = tokens
        return self._to_host(to_uint8_frames(shown))

    def _advance_eager(self, current: Tensor, action: Tensor) -> Tensor:
        embedding = self.dynamics.embed_actions(action)
        state = self.dynamics.context_step(current, embedding, self.cache, self.biases)
        tokens = self.sampler(state, embedding, self.seed, self.counter)
        self.counter += 1
        return tokens

    @torch.inference_mode()
    def advance(self, action: np.ndarray | Tensor) -> Tensor:
        """The dynamics half of a step: the next frame's tokens (B, N) on the device; nothing is decoded."""
        if self.current is None:
            raise InputError("reset the world with context frames before stepping it")
        tokens = self._advance(self.current, self._actions_in(action, (self.batch_size,)))
        self.current = tokens
        self._frames_seen += 1
        return tokens

    @torch.inference_mode()
    def render(self, tokens: Tensor) -> Tensor:
        """The decoding half: tokens (B, N) → uint8 frames (B, H, W, 3) on the device. Call once per frame, in order."""
        return to_uint8_frames(self.stream.decode_tokens(tokens))

    def step(self, action: np.ndarray | Tensor) -> np.ndarray:
        """Apply ``action`` ((A,) for one world, or (B, A)) → the next frame, uint8 (H, W, 3) or (B, H, W, 3)."""
        return self._to_host(self.render(self.advance(action)))

    # -- rewind ------------------------------------------------------------------------------------
    def snapshot(self) -> WorldSnapshot:
        """Copy the state the next steps depend on (device copies; no host read).

        The tokenizer's encoder cache is left out: it is used only by :meth:`reset`, which clears it.
        """
        if self.current is None:
            raise InputError("reset the world with context frames before taking a snapshot")
        decoder = self.stream.decoder_cache
        return WorldSnapshot(
            current=self.current.clone(),
            trunk_keys=tuple(t.clone() for t in self.cache.keys),
            trunk_values=tuple(t.clone() for t in self.cache.values),
            trunk_frame=self.cache.frame.clone(),
            decoder_keys=tuple(t.clone() for t in decoder.keys),
            decoder_values=tuple(t.clone() for t in decoder.values),
            decoder_frames=decoder.frames_seen,
            counter=self.counter.clone(),
            seed=self.seed.clone(),
            frames_seen=self._frames_seen,
        )

    @torch.inference_mode()
    def restore(self, snapshot: WorldSnapshot) -> None:
        """Return to a :meth:`snapshot` of this world: the next step is the one that followed it.

        Copies into the tensors the world already holds, so a compiled step keeps working.
        """
        decoder = self.stream.decoder_cache
        pairs = [
            *zip(self.cache.keys, snapshot.trunk_keys, strict=True),
            *zip(self.cache.values, snapshot.trunk_values, strict=True),
            *zip(decoder.keys, snapshot.decoder_keys, strict=True),
            *zip(decoder.values, snapshot.decoder_values, strict=True),
            (self.cache.frame, snapshot.trunk_frame),
            (self.counter, snapshot.counter),
            (self.seed, snapshot.seed),
        ]
        for target, saved in pairs:
            if target.shape != saved.shape:
                raise InputError(
                    f"this snapshot belongs to another world: a tensor of {tuple(saved.shape)} "
                    f"where this world holds {tuple(target.shape)}"
                )
        for target, saved in pairs:
            target.copy_(saved)
        decoder.frames_seen = snapshot.decoder_frames
        self.current = snapshot.current.clone()  # a new tensor, as advance() makes one each step
        self._frames_seen = snapshot.frames_seen

    def _to_host(self, frames: Tensor) -> np.ndarray:
        array = frames.cpu().numpy()
        return array[0] if self.batch_size == 1 else array


def load_world(
    checkpoint: Path,
    *,
    tokenizer: Path | None = None,
    device: str | torch.device = "cpu",
    batch_size: int = 1,
    sampling: SamplingConfig | None = None,
    seed: int = 0,
    compile: bool = False,
) -> World:
    """A world from a dynamics checkpoint (run folder or step folder) and its tokenizer.

    The tokenizer defaults to the one recorded in the checkpoint (``meta.tokenizer``).
    """
    from wm_video.checkpoint import load_dynamics, load_tokenizer, recorded_tokenizer

    dynamics, saved = load_dynamics(checkpoint, device=device)
    tokenizer_model, _ = load_tokenizer(tokenizer or recorded_tokenizer(saved), device=device)
    world = World(
        tokenizer_model, dynamics, batch_size=batch_size, sampling=sampling, seed=seed, compile=compile
    )
    world.meta = {**saved.meta, "checkpoint": str(saved.path)}
    return world
