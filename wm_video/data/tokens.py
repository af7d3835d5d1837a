"""The token cache: every frame of the training cache tokenized once, for the dynamics model.

The dynamics model trains on token grids, never on pixels, so each frame of a
:class:`~wm_video.data.cache.TrainingCache` is encoded once by a trained tokenizer into
``<frame cache's parent>/tokens-<key[:16]>/`` (or any ``cache_dir``)::

    tokens.bin         raw (N, tokens_per_frame) uint16 (int32 above 65,536 codes), episode order
    actions.npy        (N, A) float32, copied from the frame cache
    episodes.npy       (E + 1,) int64 row offsets: episode e is rows starts[e]:starts[e + 1]
    episode_index.npy  (E,) int64 the dataset's episode indices
    manifest.json      {key, tokenizer config, num_frames, tokens_per_frame, codebook_size, dtype,
                        action_names, fps, version}; written last

:class:`~wm_video.data.sampler.ClipSampler` cuts clips of token grids from it exactly as it cuts
clips of frames from the frame cache.

Design choices:
- The key hashes the frame cache's fingerprint, :func:`tokenizer_fingerprint` (every weight's
  bytes), the tokenizer config and :data:`TOKEN_CACHE_VERSION`: new data or a new checkpoint
  gives a new folder, so caches of several checkpoints live side by side (none is deleted).
- Built like the frame cache: in a temporary sibling folder, under the same lock file
  (:func:`~wm_video.data.cache.build_lock`), fsynced, renamed into place; the manifest is the
  completion marker, so a crash leaves nothing that loads, and the next build removes leftovers.
- Only the encoder runs (:meth:`~wm_video.tokenizer.VideoTokenizer.encode_footage`). An episode
  is encoded chunk by chunk (one episode per batch), each chunk preceded by the tokenizer's
  ``encoder_reach`` = ``encoder_layers × (temporal_window − 1)`` earlier frames whose tokens are
  thrown away: a token's time attention reaches ``temporal_window − 1`` frames back per block, so
  with that context the chunks equal one pass over the whole episode while memory stays bounded.
  A world reset from frames of an episode encodes them after the same earlier frames
  (:meth:`~wm_video.engine.World.reset`'s ``history``), so play starts from training's tokens.
- Tokens are stored as uint16 when the codebook allows (the tiny preset has 4,375 codes): a
  quarter of int64 on disk and in every batch; the trainer widens them on the device.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from wm_video.data.cache import (
    MANIFEST_FILE,
    EpisodeRows,
    TrainingCache,
    build_folder,
    build_lock,
    new_memmap,
)
from wm_video.errors import DatasetError, InputError
from wm_video.fileio import atomic_write_json
from wm_video.tokenizer import VideoTokenizer

TOKEN_CACHE_VERSION = 1
TOKENS_FILE = "tokens.bin"
_ARRAY_FILES = ("actions.npy", "episodes.npy", "episode_index.npy")


def tokenizer_fingerprint(model: nn.Module) -> str:
    """sha256 over the state dict: each tensor's name, dtype, shape and raw bytes (on CPU), by name."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        tensor = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name} {tensor.dtype} {tuple(tensor.shape)}\n".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def token_dtype(codebook_size: int) -> np.dtype:
    """uint16 when every token fits, else int32."""
    return np.dtype(np.uint16 if codebook_size <= 2**16 else np.int32)


@dataclass(frozen=True)
class TokenCache(EpisodeRows):
    """A tokenized dataset: token grids (memmap, read-only), actions and episode boundaries."""

    path: Path
    tokens: np.ndarray  # (N, tokens_per_frame) uint16 (int32 for > 65,536 codes) memmap
    actions: np.ndarray  # (N, A) float32
    episode_starts: np.ndarray  # (E + 1,) int64
    episode_indices: np.ndarray  # (E,) int64, the dataset's episode indices
    fps: float
    action_names: tuple[str, ...]
    tokens_per_frame: int
    codebook_size: int
    fingerprint: str  # the cache key: frame cache, tokenizer weights and config, version

    @property
    def frames(self) -> np.ndarray:
        """The per-frame rows :class:`~wm_video.data.sampler.ClipSampler` cuts clips from: each
        frame's token grid, ``self.tokens`` (N, tokens_per_frame). A batch's ``frames`` is (B, T, N)."""
        return self.tokens

    def episode(self, e: int) -> tuple[np.ndarray, np.ndarray]:
        """(tokens (T, N), actions (T, A)) views of the e-th cached episode (position, not index)."""
        rows = self.episode_rows(e)
        return self.tokens[rows], self.actions[rows]


def token_cache_key(frames: TrainingCache, tokenizer: VideoTokenizer) -> str:
    """What the token cache depends on: the frames, the tokenizer's weights and config, the format."""
    config = json.dumps(tokenizer.config.to_dict(), sort_keys=True)
    digest = hashlib.sha256(f"wm-video token cache v{TOKEN_CACHE_VERSION}\n".encode())
    digest.update(f"{frames.fingerprint}\n{tokenizer_fingerprint(tokenizer)}\n{config}\n".encode())
    return digest.hexdigest()


def _open_token_cache(path: Path, key: str) -> TokenCache | None:
    """The token cache at ``path``, or None when it is missing, incomplete or of another key."""
    try:
        manifest = json.loads((path / MANIFEST_FILE).read_text())
        if manifest.get("version") != TOKEN_CACHE_VERSION or manifest.get("key") != key:
            return None
        count, per_frame = int(manifest["num_frames"]), int(manifest["tokens_per_frame"])
        dtype = np.dtype(manifest["dtype"])
        if (path / TOKENS_FILE).stat().st_size != count * per_frame * dtype.itemsize:
            return None
        starts = np.load(path / "episodes.npy")
        if int(starts[-1]) != count:
            return None
        return TokenCache(
            path=path,
            tokens=np.memmap(path / TOKENS_FILE, dtype=dtype, mode="r", shape=(count, per_frame)),
            actions=np.load(path / "actions.npy"),
            episode_starts=starts,
            episode_indices=np.load(path / "episode_index.npy"),
            fps=float(manifest["fps"]),
            action_names=tuple(manifest["action_names"]),
            tokens_per_frame=per_frame,
            codebook_size=int(manifest["codebook_size"]),
            fingerprint=key,
        )
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        return None


def _encode_episode(
    tokenizer: VideoTokenizer, frames: np.ndarray, chunk_frames: int, device: torch.device
) -> Iterator[tuple[int, np.ndarray]]:
    """(start, tokens (T, N) int64) of an episode's uint8 frames (T, H, W, 3), chunk by chunk."""
    reach = tokenizer.config.encoder_reach
    for start in range(0, len(frames), chunk_frames):
        first, stop = max(0, start - reach), min(len(frames), start + chunk_frames)
        chunk = torch.from_numpy(np.array(frames[first:stop])).to(device)[None]  # (1, T, H, W, 3), a copy
        tokens = tokenizer.encode_footage(chunk[:, start - first :], chunk[:, : start - first]).tokens
        yield start, tokens[0].cpu().numpy()


def _tokenize_into(
    tmp: Path,
    frames: TrainingCache,
    tokenizer: VideoTokenizer,
    key: str,
    chunk_frames: int,
    device: torch.device,
    progress: bool,
) -> None:
    """Encode every frame of ``frames`` into a token cache folder ``tmp``."""
    config = tokenizer.config
    count, dtype = frames.num_frames, token_dtype(config.codebook_size)
    tokens = new_memmap(tmp / TOKENS_FILE, dtype, (count, config.tokens_per_frame), "the token cache")
    with (
        tqdm(total=count, desc="tokenizing into the token cache", unit="frame", disable=not progress) as bar,
        torch.inference_mode(),
    ):
        for e in range(frames.num_episodes):
            offset = int(frames.episode_starts[e])
            for start, chunk in _encode_episode(tokenizer, frames.episode(e)[0], chunk_frames, device):
                tokens[offset + start : offset + start + len(chunk)] = chunk
                bar.update(len(chunk))
    tokens.flush()
    del tokens
    np.save(tmp / "actions.npy", np.asarray(frames.actions, dtype=np.float32))
    np.save(tmp / "episodes.npy", np.asarray(frames.episode_starts, dtype=np.int64))
    np.save(tmp / "episode_index.npy", np.asarray(frames.episode_indices, dtype=np.int64))
    for name in (TOKENS_FILE, *_ARRAY_FILES):
        with open(tmp / name, "rb+") as handle:
            os.fsync(handle.fileno())
    manifest = dict(
        key=key,
        tokenizer=config.to_dict(),
        num_frames=count,
        tokens_per_frame=config.tokens_per_frame,
        codebook_size=config.codebook_size,
        dtype=dtype.name,
        action_names=list(frames.action_names),
        fps=frames.fps,
        version=TOKEN_CACHE_VERSION,
    )
    atomic_write_json(tmp / MANIFEST_FILE, manifest)  # completion marker


def load_token_cache(
    frames: TrainingCache,
    tokenizer: VideoTokenizer,
    *,
    cache_dir: Path | None = None,
    chunk_frames: int = 64,
    device: torch.device | str | None = None,
    progress: bool = True,
) -> TokenCache:
    """Open the token cache of ``frames`` under ``tokenizer``; tokenize every frame first when missing.

    ``cache_dir`` defaults to ``frames.path.parent / "tokens-<key[:16]>"`` (beside the frame cache).
    Pixels go to ``device``, which defaults to the model's; the model must already be there. The
    model is used as it is (it has no dropout, so train or eval mode gives the same tokens).
    """
    if frames.size != tokenizer.config.image_size:
        raise InputError(
            f"the frame cache holds {frames.size} px frames but the tokenizer takes "
            f"{tokenizer.config.image_size} px; load the frame cache with size={tokenizer.config.image_size}"
        )
    if isinstance(chunk_frames, bool) or not isinstance(chunk_frames, int) or chunk_frames < 1:
        raise InputError(f"chunk_frames must be a positive integer; got {chunk_frames!r}")
    key = token_cache_key(frames, tokenizer)
    target = Path(cache_dir) if cache_dir is not None else Path(frames.path).parent / f"tokens-{key[:16]}"
    if (cache := _open_token_cache(target, key)) is not None:
        return cache
    device = next(tokenizer.parameters()).device if device is None else torch.device(device)
    with build_lock(target):
        if (cache := _open_token_cache(target, key)) is not None:  # built while we waited
            return cache
        build_folder(
            target,
            "token cache",
            lambda tmp: _tokenize_into(tmp, frames, tokenizer, key, chunk_frames, device, progress),
        )
        cache = _open_token_cache(target, key)
    if cache is None:  # pragma: no cover - only if the folder is changed under us
        raise DatasetError("the token cache just built cannot be opened", path=target)
    return cache
