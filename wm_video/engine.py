"""Playable worlds: ``reset`` from real frames, then ``step(action)`` → the next frame, for a batch of worlds.

Play, evaluation and benchmarks all drive this one object. It holds the tokenizer's decoder
stream (:class:`~wm_video.tokenizer.TokenizerStream`: decodes each new frame with its own cache
of earlier frames' codes), the dynamics model's trunk cache (:class:`~wm_video.attention.KVCache`:
a rolling window plus the attention sink) and a :class:`~wm_video.dynamics.FrameSampler`.

Per generated frame: one trunk pass over the current frame's N tokens (which also writes them
into the cache), P head passes that decide the next frame's tokens, one tokenizer decoder step.
With action guidance (:mod:`wm_video.dynamics.sampling`) a second trunk cache reads the same
frames with no key pressed (the reference stream), and the head passes run on both.

Many worlds: each world of the batch has its own frame counters (trunk and decoder), seed and
sampling counter, all on the device, so worlds step together but stay independent: a world's
frames depend on its context, its actions and its seed alone, not on its neighbours or on the
batch size, and ``reset(..., worlds=[i, j])`` restarts some worlds without touching the others.

One graph: the state is allocated once and only ever written in place (a reset too), and
nothing in :meth:`World.step` reads a device value back to the host until its frames are copied
out, so the whole step (advance and render) traces into one graph (``compile=True``:
``torch.compile(fullgraph=True)``, on CUDA with CUDA graphs, ``mode="reduce-overhead"``).

Reset tokens equal training tokens: the token cache (:mod:`wm_video.data.tokens`) encodes each
frame after up to ``encoder_layers × (temporal_window − 1)`` frames of its episode, and
:meth:`World.reset` encodes its context frames by the same whole-clip encoder after the
``history`` frames it is given (:meth:`~wm_video.tokenizer.VideoTokenizer.encode_footage`). Footage from an episode's start (play's
shipped start frames, a live engine reset) needs none; a clip cut from the middle of an episode
gives the frames before it; a single image has none, which is what training sees at an
episode's first frame.

:meth:`World.snapshot` and :meth:`World.restore` copy the state a rollout depends on (the trunk
cache and, with guidance, the reference cache, the decoder's cache, the current tokens, seeds and counters) on the device, so a player
can rewind; ``restore`` writes into the existing tensors, so captured graphs stay valid.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch import Tensor

from wm_video.actions import ActionSpace
from wm_video.attention import KVCache
from wm_video.dynamics import DynamicsModel, FrameSampler, SamplingConfig, Stream, update_sampling
from wm_video.errors import InputError
from wm_video.memory import FLOAT_BYTES, check_fits
from wm_video.tokenizer import VideoTokenizer
from wm_video.tokenizer.pixels import to_uint8_frames


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
class TrunkStep:
    """One trunk pass of :meth:`World.trunk_step`: the stream of the keys pressed and, with action
    guidance, the reference stream (the same frames, nothing pressed)."""

    stream: Stream
    reference: Stream | None


@dataclass(frozen=True)
class WorldSnapshot:
    """A copy of a world's state between two steps (see :meth:`World.snapshot`); device tensors."""

    current: Tensor  # (B, N) tokens of the frames shown
    trunk: KVCache
    decoder: KVCache
    counter: Tensor  # (B,) generated frames since each world's reset (the sampling noise's frame number)
    seed: Tensor  # (B,)
    reference: KVCache | None = None  # the trunk cache of the frames read with no key pressed (guidance)

    def tensors(self) -> list[Tensor]:
        """Every tensor, in the order :meth:`World.restore` copies them back."""
        reference = self.reference.tensors() if self.reference is not None else []
        return [*self.trunk.tensors(), *reference, *self.decoder.tensors(), self.seed, self.counter, self.current]

    @property
    def nbytes(self) -> int:
        """Device memory this snapshot holds."""
        return sum(t.numel() * t.element_size() for t in self.tensors())


def check_batch_fits(
    tokenizer: VideoTokenizer, dynamics: DynamicsModel, batch: int, frames: int, fix: str, guided: bool | None = None
) -> None:
    """Refuse ``batch`` clips of ``frames`` frames that cannot fit: a lower bound of what scoring
    them needs (their pixels as float32, one layer's token states over them, the worlds' KV caches:
    trunk and decoder). With action guidance (``guided``; None: the model's own sampling) the
    states and the trunk cache are kept twice: the reference stream."""
    config, size, t = dynamics.config, tokenizer.config.image_size, tokenizer.config
    streams = 2 if (FrameSampler(dynamics).guided if guided is None else guided) else 1
    pixels = batch * frames * size * size * 3 * FLOAT_BYTES
    states = streams * batch * frames * config.tokens_per_frame * config.dim * FLOAT_BYTES
    trunk = streams * config.trunk_layers * (config.context_frames + config.sink_frames) * config.dim
    decoder = t.decoder_layers * t.temporal_window * t.dim
    kv_cache = 2 * batch * config.tokens_per_frame * (trunk + decoder) * FLOAT_BYTES
    device = str(dynamics.trunk_pos.device)
    check_fits(max(pixels + states, kv_cache), f"{batch:,} clips of {frames} frames", fix, device=device)


class World:
    """``batch_size`` generated worlds stepped together (play uses one), each with its own seed.

    ``seed`` s gives world b the seed s + b. ``compile``: False (eager), True (the whole step
    through ``torch.compile(fullgraph=True)``; on CUDA captured as CUDA graphs) or a
    ``torch.compile`` mode (``"default"``, ``"reduce-overhead"``, ``"max-autotune"``); None: as
    :func:`compiled_worlds` says (eager outside it).
    """

    def __init__(
        self,
        tokenizer: VideoTokenizer,
        dynamics: DynamicsModel,
        *,
        batch_size: int = 1,
        sampling: SamplingConfig | None = None,
        seed: int = 0,
        compile: bool | str | None = None,
    ) -> None:
        check_pair(tokenizer, dynamics)
        if batch_size < 1:
            raise InputError(f"batch size must be ≥ 1, got {batch_size}")
        self.sampler = FrameSampler(dynamics, sampling)
        fix = "ask for fewer parallel worlds (--clips)"
        check_batch_fits(tokenizer, dynamics, batch_size, 1, fix, guided=self.sampler.guided)
        self.tokenizer, self.dynamics = tokenizer.eval(), dynamics.eval()
        self.batch_size = batch_size
        self.device = dynamics.trunk_pos.device
        self.stream = tokenizer.stream(batch_size, encoder=False)
        self.cache = dynamics.new_cache(batch_size)
        #: Action guidance's reference stream: the trunk cache of the same frames read with no key pressed,
        #: and that action embedded once (D,): a frame step does not run the action MLP on zeros again.
        self.reference_cache = dynamics.new_cache(batch_size) if self.sampler.guided else None
        with torch.no_grad():
            self._nothing = dynamics.no_action(()) if self.sampler.guided else None
        self.seed = torch.arange(seed, seed + batch_size, dtype=torch.long, device=self.device)  # (B,)
        self.counter = torch.zeros(batch_size, dtype=torch.long, device=self.device)  # (B,) frames generated
        tokens = dynamics.config.tokens_per_frame
        self.current = torch.zeros(batch_size, tokens, dtype=torch.long, device=self.device)  # (B, N) shown
        self._started = [False] * batch_size  # which worlds were reset (on the host)
        #: What the checkpoint says about itself (``meta`` of checkpoint.json; empty for fresh models).
        self.meta: dict[str, Any] = {}
        self.compile_mode = _compile_mode(_COMPILE_DEFAULT[-1] if compile is None else compile, self.device)
        self._advance, self._render, self._step = self._advance_eager, self._render_eager, self._step_eager
        if self.compile_mode is not None:
            for tensor in self._state():  # written in place every step: fixed addresses for CUDA graphs
                torch._dynamo.mark_static_address(tensor)
            options: dict[str, Any] = dict(fullgraph=True, mode=self.compile_mode)
            self._advance = torch.compile(self._advance_eager, **options)
            self._render = torch.compile(self._render_eager, **options)
            self._step = torch.compile(self._step_eager, **options)

    @property
    def image_size(self) -> int:
        return self.tokenizer.config.image_size

    @property
    def action_space(self) -> ActionSpace:
        return self.dynamics.config.action_space

    @property
    def frames_seen(self) -> np.ndarray:
        """(B,) frames read into the trunk since each world's reset (context and generated); a host read."""
        return self.cache.frames.cpu().numpy()

    def _state(self) -> list[Tensor]:
        """Every tensor a step reads or writes in place (in :meth:`WorldSnapshot.tensors`' order)."""
        cache = self.stream.decoder_cache
        reference = self.reference_cache.tensors() if self.reference_cache is not None else []
        return [*self.cache.tensors(), *reference, *cache.tensors(), self.seed, self.counter, self.current]

    # -- inputs ----------------------------------------------------------------------------------------
    def _worlds_in(self, worlds: Sequence[int] | None) -> list[int]:
        if worlds is None:
            return list(range(self.batch_size))
        chosen = [int(w) for w in worlds]
        if not chosen or len(set(chosen)) != len(chosen) or not all(0 <= w < self.batch_size for w in chosen):
            raise InputError(
                f"worlds to reset must be distinct numbers in 0..{self.batch_size - 1}; got {list(worlds)}"
            )
        return chosen

    def _frames_in(self, frames: np.ndarray, count: int, what: str, minimum: int) -> np.ndarray:
        """uint8 (H, W, 3), (T, H, W, 3) or (count, T, H, W, 3) → (count, T, S, S, 3) at the model's size."""
        frames = np.asarray(frames)
        if frames.dtype != np.uint8 or frames.ndim < 3 or frames.shape[-1] != 3:
            raise InputError(f"{what} must be uint8 RGB (…, H, W, 3); got {frames.dtype} {tuple(frames.shape)}")
        while frames.ndim < 5:
            frames = frames[None]
        if frames.ndim > 5 or frames.shape[0] != count or frames.shape[1] < minimum:
            raise InputError(
                f"{what} for {count} world(s) must be (T, H, W, 3) or ({count}, T, H, W, 3)"
                f"; got {tuple(frames.shape)}"
            )
        size = self.image_size
        if frames.shape[1] == 0:
            return np.zeros((count, 0, size, size, 3), np.uint8)
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
        if leading[0] == 1 and tensor.dim() == len(leading):
            tensor = tensor.unsqueeze(0)
        size = self.dynamics.config.action_dim
        if tuple(tensor.shape) != (*leading, size):
            names = ", ".join(self.dynamics.config.action_names)
            raise InputError(
                f"actions must be shaped {(*leading, size)} ({names}); got {tuple(tensor.shape)}"
            )
        return tensor.to(self.device, torch.float32)

    def _seeds_in(self, seed: int | Sequence[int], worlds: list[int]) -> Tensor:
        seeds = [seed + w for w in worlds] if isinstance(seed, int) else [int(s) for s in seed]
        if len(seeds) != len(worlds):
            raise InputError(f"{len(worlds)} world(s) to reset need as many seeds; got {len(seeds)}")
        return torch.tensor(seeds, dtype=torch.long, device=self.device)

    # -- the world ----------------------------------------------------------------------------------
    @torch.inference_mode()
    def reset(
        self,
        frames: np.ndarray,
        actions: np.ndarray | Tensor | None = None,
        *,
        history: np.ndarray | Sequence[np.ndarray] | None = None,
        seed: int | Sequence[int] | None = None,
        worlds: Sequence[int] | None = None,
    ) -> np.ndarray:
        """Start worlds from real frames (T ≥ 1; one image works) and the actions taken at all but the last.

        ``worlds`` (default: all) are restarted, each from its row of ``frames`` ((T, H, W, 3) for
        one world, else (R, T, H, W, 3)); the other worlds are not touched. ``actions`` (T − 1 or
        T rows; the T-th is ignored: :meth:`step` gives it) defaults to no key pressed.
        ``history``: frames of the same footage before ``frames``, read by the tokenizer's encoder
        only, so that the context gets the tokens the token cache gave the same frames in training
        (see the module docstring): (H′, …) or (R, H′, …), or one array per world when their
        lengths differ; only the last ``encoder_reach`` frames matter. ``seed``: an int s gives
        world b the seed s + b, a sequence one seed per restarted world; None keeps their seeds.
        Returns the last context frame of each restarted world as the model shows it (uint8,
        like :meth:`step`: (H, W, 3) for a batch of one world).
        """
        chosen = self._worlds_in(worlds)
        count = len(chosen)
        clip = self._frames_in(frames, count, "context frames", 1)
        context = clip.shape[1]
        if actions is None:
            taken = torch.zeros(count, context, self.dynamics.config.action_dim, device=self.device)
        else:
            rows = len(actions[0]) if count > 1 or np.ndim(actions) == 3 else len(actions)
            if rows not in (context - 1, context):
                raise InputError(
                    f"{context} context frames need {context - 1} actions (or {context}); got {rows}"
                )
            taken = self._actions_in(actions, (count, rows))
        seeds = None if seed is None else self._seeds_in(seed, chosen)
        rows_tensor = torch.tensor(chosen, dtype=torch.long, device=self.device)
        encoding = self.tokenizer.encode_footage(clip, self._history_in(history, count))  # (R, T, N)
        # The decoder restarts from the context's codes, as the tokenizer trained: clips from their first frame.
        shown = self.stream.restart_decoder(encoding.quantized, rows_tensor)[:, -1]
        tokens = encoding.tokens
        embedding = self.dynamics.embed_actions(taken[:, : context - 1])
        self.dynamics.context(tokens[:, :-1], embedding, self.cache, rows_tensor)
        if self.reference_cache is not None and self._nothing is not None:
            nothing = self._nothing.expand(count, context - 1, -1)
            self.dynamics.context(tokens[:, :-1], nothing, self.reference_cache, rows_tensor)
        self.current.index_copy_(0, rows_tensor, tokens[:, -1])
        self.counter.index_fill_(0, rows_tensor, 0)
        if seeds is not None:
            self.seed.index_copy_(0, rows_tensor, seeds)
        for w in chosen:
            self._started[w] = True
        return self._to_host(to_uint8_frames(shown))

    def _history_in(self, history: np.ndarray | Sequence[np.ndarray] | None, count: int) -> list[np.ndarray] | None:
        """One (H′_b, S, S, 3) array per restarted world, each its last ``encoder_reach`` frames at most."""
        if history is None:
            return None
        if isinstance(history, np.ndarray):
            rows = list(self._frames_in(history, count, "history frames", 0))
        elif len(history) != count:
            raise InputError(f"history for {count} world(s) needs {count} arrays of frames; got {len(history)}")
        else:
            rows = [self._frames_in(np.asarray(h), 1, "history frames", 0)[0] for h in history]
        reach = self.tokenizer.config.encoder_reach
        return [h[max(0, len(h) - reach) :] for h in rows]

    def _check_started(self) -> None:
        if not all(self._started):
            waiting = [i for i, started in enumerate(self._started) if not started]
            raise InputError(f"reset the world with context frames before stepping it (worlds {waiting} were not)")

    def trunk_step(self, action: Tensor) -> TrunkStep:
        """The trunk's pass over the current frames with ``action`` (B, A) on the device, which writes
        them into the cache (and, with guidance, the reference cache): what :attr:`sampler` reads."""
        embedding = self.dynamics.embed_actions(action)
        stream = Stream(self.dynamics.context_step(self.current, embedding, self.cache), embedding)
        if self.reference_cache is None or self._nothing is None:
            return TrunkStep(stream, None)
        nothing = self._nothing.expand(self.batch_size, -1)
        reference = self.dynamics.context_step(self.current, nothing, self.reference_cache)
        return TrunkStep(stream, Stream(reference, nothing))

    def _advance_eager(self, action: Tensor) -> None:
        step = self.trunk_step(action)
        tokens = self.sampler(step.stream.state, step.stream.action_embedding, self.seed, self.counter, step.reference)
        self.counter += 1
        self.current.copy_(tokens)

    def _render_eager(self, tokens: Tensor) -> Tensor:
        return to_uint8_frames(self.stream.decode_tokens(tokens))

    def _step_eager(self, action: Tensor) -> Tensor:
        self._advance_eager(action)
        return self._render_eager(self.current)

    @torch.inference_mode()
    def advance(self, action: np.ndarray | Tensor) -> Tensor:
        """The dynamics half of a step: the next frame's tokens (B, N) on the device; nothing is decoded."""
        self._check_started()
        self._advance(self._actions_in(action, (self.batch_size,)))
        return self.current.clone()

    @torch.inference_mode()
    def render(self, tokens: Tensor) -> Tensor:
        """The decoding half: tokens (B, N) → uint8 frames (B, H, W, 3) on the device. Call once per frame, in order."""
        return self._render(tokens).clone()

    @torch.inference_mode()
    def step(self, action: np.ndarray | Tensor) -> np.ndarray:
        """Apply ``action`` ((A,) for one world, or (B, A)) → the next frame, uint8 (H, W, 3) or (B, H, W, 3).

        Advance and render in one call (one graph when compiled); the frames are copied to the host.
        """
        self._check_started()
        return self._to_host(self._step(self._actions_in(action, (self.batch_size,))))

    # -- rewind ------------------------------------------------------------------------------------
    def snapshot(self) -> WorldSnapshot:
        """Copy the state the next steps depend on (device copies; no host read).

        The tokenizer's encoder keeps no state here: :meth:`reset` encodes whole clips.
        """
        self._check_started()
        return WorldSnapshot(
            current=self.current.clone(),
            trunk=self.cache.clone(),
            decoder=self.stream.decoder_cache.clone(),
            counter=self.counter.clone(),
            seed=self.seed.clone(),
            reference=self.reference_cache.clone() if self.reference_cache is not None else None,
        )

    @torch.inference_mode()
    def restore(self, snapshot: WorldSnapshot) -> None:
        """Return to a :meth:`snapshot` of this world: the next step is the one that followed it.

        Copies into the tensors the world already holds, so a compiled step keeps working.
        """
        state, saved_state = self._state(), snapshot.tensors()
        if (snapshot.reference is None) != (self.reference_cache is None):
            raise InputError(
                "this snapshot belongs to another world: one drawn "
                + ("with" if snapshot.reference is not None else "without")
                + " action guidance, and this one draws "
                + ("with" if self.reference_cache is not None else "without")
            )
        pairs = list(zip(state, saved_state, strict=True))
        for target, saved in pairs:
            if target.shape != saved.shape:
                raise InputError(
                    f"this snapshot belongs to another world: a tensor of {tuple(saved.shape)} "
                    f"where this world holds {tuple(target.shape)}"
                )
        for target, saved in pairs:
            target.copy_(saved)
        self._started = [True] * self.batch_size

    def _to_host(self, frames: Tensor) -> np.ndarray:
        array = frames.cpu().numpy()
        return array[0] if self.batch_size == 1 else array


_COMPILE_DEFAULT: list[bool | str] = [False]  # what World(compile=None) does; see compiled_worlds()


@contextmanager
def compiled_worlds(compile: bool | str) -> Iterator[None]:
    """Inside, every :class:`World` made without its own ``compile`` compiles so (``eval --compile``:
    the evaluation makes its worlds in several places)."""
    _COMPILE_DEFAULT.append(compile)
    try:
        yield
    finally:
        _COMPILE_DEFAULT.pop()


def _compile_mode(compile: bool | str, device: torch.device) -> str | None:
    """``World(compile=...)`` → a ``torch.compile`` mode, or None for eager."""
    if compile is False or compile == "none":
        return None
    if compile is True:
        return "reduce-overhead" if device.type == "cuda" else "default"
    if compile not in ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"):
        raise InputError(f"compile must be True, False or a torch.compile mode; got {compile!r}")
    return str(compile)


def load_world(
    checkpoint: Path,
    *,
    tokenizer: Path | None = None,
    device: str | torch.device = "cpu",
    dtype: str = "fp32",
    batch_size: int = 1,
    sampling: Mapping[str, Any] | None = None,
    seed: int = 0,
    compile: bool | str = False,
) -> World:
    """A world from a dynamics checkpoint (run folder or step folder) and its tokenizer.

    The tokenizer defaults to the one recorded in the checkpoint (``meta.tokenizer``). ``dtype``:
    ``fp32``, ``bf16`` or ``fp16`` (:func:`~wm_video.device.resolve_dtype`), the models' float type.
    ``sampling``: :class:`SamplingConfig` settings that replace the world's own (what its checkpoint
    stores, else the defaults), e.g. ``{"temperature": 0.8}``.
    """
    from wm_video.checkpoint import load_dynamics, load_tokenizer, recorded_tokenizer
    from wm_video.device import resolve_dtype

    float_type = resolve_dtype(dtype, str(device))
    dynamics, saved = load_dynamics(checkpoint, device=device)
    update_sampling(dynamics, sampling)
    tokenizer_model, _ = load_tokenizer(tokenizer or recorded_tokenizer(saved), device=device)
    world = World(
        tokenizer_model.to(dtype=float_type),
        dynamics.to(dtype=float_type),
        batch_size=batch_size,
        seed=seed,
        compile=compile,
    )
    world.meta = {**saved.meta, "checkpoint": str(saved.path)}
    return world
