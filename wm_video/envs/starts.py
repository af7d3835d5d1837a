"""Where an environment's episodes start: real frames, as play starts its worlds.

A start is given as (see :func:`start_source`):

- None: the checkpoint's own start (its dataset's first held-out episode, or the start frames an
  exported world ships: :func:`wm_video.play.start.default_start`);
- an image or a clip: uint8 (H, W, 3) or (T, H, W, 3) frames, at any size;
- a string or path: an image file, ``DATASET_DIR:EPISODE[:FRAME]`` (one fixed start, as
  ``play --start-from`` reads it), or a bare ``DATASET_DIR``: each reset then starts from the
  first frames of an episode drawn at random from the dataset (with the env's random generator,
  so a seed still gives the same episode);
- a :class:`~wm_video.play.start.StartContext`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from wm_video.engine import World
from wm_video.errors import InputError
from wm_video.play.start import (
    StartContext,
    dataset_info,
    default_start,
    from_dataset,
    load_start,
    parse_start,
)


class StartSource:
    """Gives the start of each new episode (:meth:`pick`); dataset episodes are read once and kept."""

    def __init__(self, world: World, spec: Any = None) -> None:
        self.world = world
        self.context_frames = world.dynamics.config.context_frames
        self.history_frames = world.tokenizer.config.encoder_reach
        self.fixed: StartContext | None = None
        self.dataset: Path | None = None
        self.episodes: list[int] = []
        self._read: dict[int, StartContext] = {}
        if spec is None:
            space = world.action_space
            info = dataset_info(world.meta, tuple(space.names))
            self.fixed = default_start(
                info, space=space, context_frames=self.context_frames, image_size=world.image_size
            )
        elif isinstance(spec, StartContext):
            self.fixed = spec
        elif isinstance(spec, np.ndarray):
            frames = spec[None] if spec.ndim == 3 else spec
            if frames.ndim != 4 or frames.dtype != np.uint8 or frames.shape[-1] != 3:
                raise InputError(
                    f"a start image is uint8 (H, W, 3) or a clip (T, H, W, 3); got {spec.dtype} {spec.shape}"
                )
            self.fixed = StartContext(frames[-self.context_frames :], None, f"{len(frames)} given frame(s)")
        elif isinstance(spec, str | Path):
            path, episode, _ = parse_start(str(spec))
            if path.is_dir() and episode is None:
                from wm_video.data.reader import open_dataset

                self.dataset = path
                self.episodes = [ref.index for ref in open_dataset(path).episodes]
                if not self.episodes:
                    raise InputError(f"{path}: the dataset holds no episode to start from")
            else:
                self.fixed = load_start(
                    str(spec),
                    space=world.action_space,
                    context_frames=self.context_frames,
                    history_frames=self.history_frames,
                )
        else:
            raise InputError(
                "a start is an image or clip (uint8 array), an image file, a dataset folder "
                f"(DATASET_DIR[:EPISODE[:FRAME]]) or a StartContext; got {type(spec).__name__}"
            )

    def pick(self, rng: np.random.Generator) -> StartContext:
        """This episode's start (a dataset's episode drawn with ``rng``; a fixed start draws nothing)."""
        if self.fixed is not None:
            return self.fixed
        assert self.dataset is not None
        episode = self.episodes[int(rng.integers(len(self.episodes)))]
        if episode not in self._read:
            self._read[episode] = from_dataset(
                self.dataset,
                episode,
                None,
                space=self.world.action_space,
                context_frames=self.context_frames,
                history_frames=self.history_frames,
            )
        return self._read[episode]
