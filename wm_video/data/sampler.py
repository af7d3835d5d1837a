"""Clips for training, drawn from a cache of per-frame rows: ``(frames[T], actions[T])``.

The rows are decoded frames (:class:`~wm_video.data.cache.TrainingCache`) or each frame's token
grid (:class:`~wm_video.data.tokens.TokenCache`); either fits :class:`ClipTable`.

Design choices:
- A clip never crosses an episode boundary: the valid starts of episode e are its rows
  s with s + T ≤ its end; episodes shorter than T contribute none.
- Deterministic for a seed and resumable exactly: epoch e is a permutation of every valid start
  drawn from ``np.random.default_rng([seed, e])``, and the state is just ``{"epoch", "position"}``.
- Split across ranks: rank r of W takes positions r, r + W, … of each permutation, so ranks draw
  different clips and change epoch together. A run resumed with another number of ranks
  continues at the same share of the epoch (``load_state_dict(…, saved_world_size=W)``).
- ``WM_VIDEO_TRACE_CLIPS=DIR`` (read by the training session) appends each clip a rank draws,
  as ``episode start`` lines, to ``DIR/clips-rank<r>.txt``: a debugging aid, off by default.
- numpy only (no torch import): a batch is one contiguous memmap copy per clip into a
  preallocated array of the rows' dtype, far faster than any model consumes it.
- ``masks``, a table with the cache's rows (the object masks of :mod:`wm_video.data.objects`),
  travels with the clips: the same rows are cut from it, so the draw order is unchanged and a
  run resumes exactly with or without it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from wm_video.errors import InputError

CLIP_TRACE_ENV = "WM_VIDEO_TRACE_CLIPS"


class ClipTable(Protocol):
    """What :class:`ClipSampler` reads: one row per frame, all episodes back to back."""

    @property
    def frames(self) -> np.ndarray: ...  # (N, …): (N, H, W, 3) uint8 frames or (N, tokens_per_frame) tokens
    @property
    def actions(self) -> np.ndarray: ...  # (N, A) float32
    @property
    def episode_starts(self) -> np.ndarray: ...  # (E + 1,) int64 row offsets
    @property
    def episode_indices(self) -> np.ndarray: ...  # (E,) int64, the dataset's episode indices
    @property
    def episode_lengths(self) -> np.ndarray: ...  # (E,) int64
    @property
    def num_episodes(self) -> int: ...


class RowTable(Protocol):
    """Per-frame rows beside a :class:`ClipTable`'s (object masks): ``len`` and slicing by rows."""

    def __len__(self) -> int: ...
    def __getitem__(self, rows: slice) -> np.ndarray: ...


@dataclass(frozen=True)
class Clip:
    frames: np.ndarray  # (T, …): (T, H, W, 3) uint8 frames, or (T, N) token grids for a token cache
    actions: np.ndarray  # (T, A) float32
    episode: int  # the dataset's episode index
    start: int  # first frame within that episode
    masks: np.ndarray | None = None  # (T, H, W) uint8 rows of the sampler's ``masks``, when given


@dataclass(frozen=True)
class ClipBatch:
    frames: np.ndarray  # (B, T, …): (B, T, H, W, 3) uint8 frames, or (B, T, N) tokens of a token cache
    actions: np.ndarray  # (B, T, A) float32
    episode: np.ndarray  # (B,) int64
    start: np.ndarray  # (B,) int64
    masks: np.ndarray | None = None  # (B, T, H, W) uint8 rows of the sampler's ``masks``, when given


class ClipSampler:
    """Endless, deterministic, resumable clips of ``clip_len`` frames that never cross episodes.

    Epoch ``e`` is a permutation of every valid clip start drawn from
    ``np.random.default_rng([seed, e])``; rank ``r`` of ``world_size`` takes positions
    r, r + world_size, … of it. Every rank draws ``num_starts // world_size`` clips per epoch
    (the tail of each permutation is dropped, a different tail each epoch), so ranks change
    epoch together. ``episodes`` restricts clips to those dataset episode indices. ``cache`` is
    a :class:`~wm_video.data.cache.TrainingCache` (clips of frames) or a
    :class:`~wm_video.data.tokens.TokenCache` (clips of token grids). ``masks`` (any table sliced by
    rows, aligned with the cache's: :class:`~wm_video.data.objects.ObjectMasks`) is cut with each clip.
    """

    def __init__(
        self,
        cache: ClipTable,
        clip_len: int,
        *,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        episodes: Sequence[int] | None = None,
        masks: RowTable | None = None,
    ) -> None:
        if clip_len < 1:
            raise InputError(f"clip_len must be ≥ 1; got {clip_len}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise InputError(f"rank must lie in 0..world_size-1; got rank {rank}, world_size {world_size}")
        if seed < 0:
            raise InputError(f"seed must be ≥ 0; got {seed}")
        if masks is not None and len(masks) != int(cache.episode_starts[-1]):
            raise InputError(f"masks hold {len(masks)} rows for a cache of {int(cache.episode_starts[-1])}")
        self.cache, self.clip_len, self.seed, self.masks = cache, clip_len, seed, masks
        self.rank, self.world_size = rank, world_size
        positions = np.arange(cache.num_episodes)
        if episodes is not None:
            wanted = np.asarray(list(episodes), dtype=np.int64)
            unknown = sorted(set(wanted.tolist()) - set(cache.episode_indices.tolist()))
            if unknown:
                raise InputError(f"episodes {unknown} are not in the cache (it holds {cache.num_episodes})")
            positions = positions[np.isin(cache.episode_indices, wanted)]
        lengths = cache.episode_lengths[positions]
        if len(positions) == 0 or lengths.max() < clip_len:
            longest = int(lengths.max()) if len(positions) else 0
            raise InputError(
                f"no episode is long enough for clips of {clip_len} frames: the longest episode has "
                f"{longest} frames; lower clip_len or collect longer episodes"
            )
        counts = np.maximum(lengths - clip_len + 1, 0)
        self._episode_of = np.repeat(positions, counts)  # (M,) cache position of each clip's episode
        first = np.repeat(cache.episode_starts[positions], counts)
        self._offset = np.arange(len(first)) - np.repeat(np.cumsum(counts) - counts, counts)
        self._row = first + self._offset  # (M,) global row of each clip's first frame
        if self.num_starts < world_size:
            raise InputError(f"only {self.num_starts} clip starts for {world_size} ranks; use fewer ranks")
        self.epoch, self.position = 0, 0
        self._order_epoch, self._order = -1, np.empty(0, dtype=np.int64)
        self._trace: Path | None = None

    def trace_to(self, path: Path) -> None:
        """Append every clip drawn from now on to ``path`` as ``episode start`` lines."""
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._trace = Path(path)

    def _write_trace(self, picked: np.ndarray) -> None:
        if self._trace is None:
            return
        episodes = self.cache.episode_indices[self._episode_of[picked]].tolist()
        starts = self._offset[picked].tolist()
        with self._trace.open("a") as handle:
            handle.writelines(f"{e} {s}\n" for e, s in zip(episodes, starts, strict=True))

    @property
    def num_starts(self) -> int:
        """Valid clip starts in all selected episodes (all ranks together)."""
        return len(self._row)

    def __len__(self) -> int:
        """Clips this rank draws per epoch."""
        return self.num_starts // self.world_size

    def _next_indices(self, count: int) -> np.ndarray:
        """Indices into the valid starts of the next ``count`` clips of this rank."""
        picked = np.empty(count, dtype=np.int64)
        filled = 0
        while filled < count:
            if self.position >= len(self):
                self.epoch, self.position = self.epoch + 1, 0
            if self._order_epoch != self.epoch:
                self._order = np.random.default_rng([self.seed, self.epoch]).permutation(self.num_starts)
                self._order_epoch = self.epoch
            take = min(count - filled, len(self) - self.position)
            mine = self.rank + self.world_size * np.arange(self.position, self.position + take)
            picked[filled : filled + take] = self._order[mine]
            filled += take
            self.position += take
        self._write_trace(picked)
        return picked

    def __iter__(self) -> ClipSampler:
        return self

    def __next__(self) -> Clip:
        (i,) = self._next_indices(1)
        rows = slice(int(self._row[i]), int(self._row[i]) + self.clip_len)
        return Clip(
            frames=np.array(self.cache.frames[rows]),
            actions=self.cache.actions[rows].copy(),
            episode=int(self.cache.episode_indices[self._episode_of[i]]),
            start=int(self._offset[i]),
            masks=None if self.masks is None else np.array(self.masks[rows]),
        )

    def sample_batch(self, batch_size: int) -> ClipBatch:
        """The next ``batch_size`` clips, stacked."""
        picked = self._next_indices(batch_size)
        rows = self._row[picked][:, None] + np.arange(self.clip_len)  # (B, T)
        table = self.cache.frames
        frames = np.empty((batch_size, self.clip_len, *table.shape[1:]), dtype=table.dtype)  # (B, T, …)
        for b, row in enumerate(self._row[picked]):  # one contiguous memmap copy per clip
            frames[b] = table[row : row + self.clip_len]
        masks = None
        if self.masks is not None:
            masks = np.stack([self.masks[row : row + self.clip_len] for row in self._row[picked]])
        return ClipBatch(
            frames=frames,
            actions=self.cache.actions[rows],
            episode=self.cache.episode_indices[self._episode_of[picked]],
            start=self._offset[picked],
            masks=masks,
        )

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, Any], *, saved_world_size: int | None = None) -> None:
        """Continue where ``state`` left off. Saved by a run of ``saved_world_size`` ranks (ranks draw
        in lockstep, so one rank's state is every rank's) when this one has another number, continue
        at the same share of the epoch."""
        epoch, position = int(state["epoch"]), int(state["position"])
        if saved_world_size is not None and saved_world_size >= 1 and saved_world_size != self.world_size:
            position = min(len(self), position * saved_world_size // self.world_size)
        if epoch < 0 or not 0 <= position <= len(self):
            raise InputError(
                f"sampler state {state} does not fit this sampler ({len(self)} clips per epoch per rank)"
            )
        self.epoch, self.position = epoch, position
