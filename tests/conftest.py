"""Shared test setup: no screen, no network, tiny datasets made on the fly."""

from __future__ import annotations

import os

os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
os.environ.setdefault("SDL_AUDIODRIVER", "dummy")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")
# One torch thread everywhere (subprocesses too), set before torch starts: tiny models step ~10× faster
# on one thread when other processes share the cores, and the programs do not spend test time choosing
# a thread count by timing (wm_video/threads.py; tests/test_threads.py tests that choice).
os.environ.setdefault("OMP_NUM_THREADS", "1")

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from wm_video.actions import ActionSpace
from wm_video.checkpoint import save_checkpoint
from wm_video.data.video import VideoSettings
from wm_video.data.writer import DatasetWriter
from wm_video.dynamics import DynamicsConfig
from wm_video.tokenizer import TokenizerConfig, VideoTokenizer

SPACE = ActionSpace(("forward", "turn_left"), ("mouse_dx",), {"w": "forward", "left": "turn_left"})


@dataclass
class TinyDataset:
    root: Path
    frames: list[np.ndarray]
    actions: list[np.ndarray]
    fps: float = 17.5


def smooth_frames(length: int, size: int, seed: int) -> np.ndarray:
    """Moving gradients: compress like game footage (random noise would not)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size]
    phase = rng.uniform(0, 6.28, 3)
    frames = [
        np.stack([127 + 120 * np.sin((x + 2 * t) / 5 + phase[c]) * np.cos((y - t) / 7) for c in range(3)], -1)
        for t in range(length)
    ]
    return np.clip(frames, 0, 255).astype(np.uint8)


def random_actions(length: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    buttons = rng.integers(0, 2, (length, 2))
    return np.concatenate([buttons, rng.normal(size=(length, 1))], 1).astype(np.float32)


def open_writer(root: Path, *, size: int = 32, codec: str = "lossless") -> DatasetWriter:
    """A writer with the tiny datasets' settings (creates, or appends)."""
    return DatasetWriter(
        root,
        fps=17.5,
        action_space=SPACE,
        frame_shape=(size, size, 3),
        task="test",
        video=VideoSettings(codec=codec),
    )


def make_dataset(root: Path, lengths: list[int], *, size: int = 32, codec: str = "lossless") -> TinyDataset:
    data = TinyDataset(root, [], [])
    with open_writer(root, size=size, codec=codec) as writer:
        for i, length in enumerate(lengths):
            frames, actions = smooth_frames(length, size, i), random_actions(length, i)
            writer.write_episode(frames, actions)
            data.frames.append(frames)
            data.actions.append(actions)
    return data


@pytest.fixture(autouse=True)
def no_thread_tuner_left_behind() -> Iterator[None]:
    """A program run in-process (``main([...])``) sets up the process's thread tuner; drop it after the test."""
    from wm_video import threads

    before = torch.get_num_threads()
    yield
    threads.reset()
    torch.set_num_threads(before)


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Tiny models step ~10× faster on one thread when other processes share the 2 cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def save_random_tokenizer(path: Path, config: TokenizerConfig, seed: int = 0) -> Path:
    """A tokenizer checkpoint with random weights (step 0), as the training programs read one."""
    torch.manual_seed(seed)
    save_checkpoint(
        path,
        kind="tokenizer",
        config=config.to_dict(),
        step=0,
        weights=VideoTokenizer(config).state_dict(),
        keep=1,
    )
    return path


#: The smallest tokenizer the training programs accept: 32 px frames, 4×4 tokens, one layer each way.
MICRO_TOKENIZER = TokenizerConfig(
    image_size=32, patch_size=8, dim=32, heads=2, encoder_layers=1, decoder_layers=1, temporal_window=3
)


#: The smallest dynamics model that reads MICRO_TOKENIZER's tokens and SPACE's actions.
MICRO_DYNAMICS = DynamicsConfig(
    grid_size=MICRO_TOKENIZER.grid_size,
    levels=MICRO_TOKENIZER.levels,
    action_names=SPACE.names,
    action_buttons=len(SPACE.buttons),
    dim=32,
    heads=2,
    trunk_layers=1,
    head_layers=1,
    context_frames=3,
)


@dataclass(frozen=True)
class TrainingData:
    """A 3-episode dataset and a random-weight tokenizer checkpoint for training-program tests."""

    data: Path
    tokenizer: Path


@pytest.fixture(scope="module")
def training_data(tmp_path_factory: pytest.TempPathFactory) -> TrainingData:
    root = tmp_path_factory.mktemp("training")
    data = make_dataset(root / "ds", [24, 20, 30])
    return TrainingData(data.root, save_random_tokenizer(root / "tokenizer", MICRO_TOKENIZER))


@pytest.fixture
def tiny_dataset(tmp_path: Path) -> TinyDataset:
    return make_dataset(tmp_path / "ds", [12, 7, 20])
