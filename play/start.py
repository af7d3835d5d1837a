"""Where a play session starts, and what the checkpoint says about its world.

Design choices:
- ``--start-from`` is an image (any file OpenCV reads) or ``DATASET_DIR[:EPISODE[:FRAME]]``.
  From a dataset, the world reads the frames up to FRAME (at most the model's context window of
  them) with the actions taken between them, so it starts *moving* the way the footage did, and
  the tokenizer also reads the frames before them (its ``encoder_reach``), so the context gets the
  tokens training gave the same frames. EPISODE defaults to the first held-out episode (training
  holds out the last 10 % of a dataset's episodes, so this is footage the world did not learn
  from), FRAME to the last frame of a full context window.
- Without ``--start-from``: the checkpoint's training data (``meta.data``; its first held-out
  episode when one is recorded), else the start frames an exported world ships, else the first
  frame of the real engine and scenario it was trained on when the model has ViZDoom's buttons,
  else a grey frame. The start is what Enter returns to.
- The world's pace is its dataset's fps (``meta/info.json``), else ViZDoom's default 17.5.
- Nothing here imports pygame.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from wm_video.actions import ActionSpace
from wm_video.engine import World
from wm_video.errors import InputError, WMVideoError

log = logging.getLogger(__name__)

#: Where the trained default world ships, in the repository (``checkpoints/default`` beside ``play/``);
#: `wm-video play` loads it when no --checkpoint is given. Found from any working directory.
DEFAULT_CHECKPOINT = Path(__file__).resolve().parents[1] / "checkpoints" / "default"
#: ViZDoom's default footage rate (35 tics/s, frame skip 2): the pace when the data does not say.
DEFAULT_FPS = 17.5


@dataclass(frozen=True)
class StartContext:
    """Real frames a world starts from, and the actions taken between them."""

    frames: np.ndarray  # (T, H, W, 3) uint8, T ≥ 1
    actions: np.ndarray | None  # (T − 1, A) float32; None: no key pressed
    label: str  # for the HUD and logs, e.g. "data/doom episode 18 frames 0-7"
    history: np.ndarray | None = None  # (H′, H, W, 3) the footage's frames before ``frames``: encoder only


@dataclass(frozen=True)
class DatasetInfo:
    """What the checkpoint's training data says about the world (all optional)."""

    root: Path | None
    fps: float
    keymap: dict[str, str]
    source: dict[str, Any]  # meta/wm_video.json "source": source, scenario, frame_skip, …
    heldout: tuple[int, ...]
    start: Path | None = None  # an exported world's start.safetensors (wm_video/export.py)


def _shipped_info(meta: dict[str, Any], heldout: tuple[int, ...]) -> DatasetInfo:
    """What an exported world carries in ``meta.shipped`` in place of its dataset; defaults otherwise."""
    shipped = meta.get("shipped") or {}
    start = None
    if shipped.get("start") and meta.get("checkpoint"):
        start = Path(os.path.normpath(Path(meta["checkpoint"]) / shipped["start"]))
        start = start if start.is_file() else None
    return DatasetInfo(
        None,
        float(shipped.get("fps") or DEFAULT_FPS),
        {str(k): str(v) for k, v in (shipped.get("keymap") or {}).items()},
        dict(shipped.get("source") or {}),
        heldout,
        start,
    )


def dataset_info(meta: dict[str, Any], names: tuple[str, ...]) -> DatasetInfo:
    """Read the checkpoint's dataset (``meta.data``) if it is still there, else what the checkpoint ships."""
    data = meta.get("data")
    heldout = tuple(int(e) for e in meta.get("heldout_episodes") or ())
    root = Path(data) if data else None
    if root is None or not (root / "meta" / "info.json").is_file():
        info = _shipped_info(meta, heldout)
        if root is not None and info.start is None:
            log.info("the checkpoint's dataset %s is not here; pace %.1f fps", root, info.fps)
        return info
    from wm_video.data.reader import open_dataset

    try:
        dataset = open_dataset(root)
    except WMVideoError as exc:
        log.warning("cannot read the checkpoint's dataset (%s); pace %.1f fps", exc, DEFAULT_FPS)
        return _shipped_info(meta, heldout)
    same = tuple(dataset.action_space.names) == names
    keymap = dict(dataset.action_space.default_keymap) if same else {}
    source = dict(dataset.ours.get("source") or {})
    return DatasetInfo(root if same else None, dataset.fps, keymap, source, heldout)


def parse_start(spec: str) -> tuple[Path, int | None, int | None]:
    """``PATH``, ``PATH:EPISODE`` or ``PATH:EPISODE:FRAME`` → (path, episode, frame)."""
    if Path(spec).exists():
        return Path(spec), None, None
    parts = spec.split(":")
    numbers: list[int] = []
    while len(parts) > 1 and len(numbers) < 2 and parts[-1].strip().lstrip("-").isdigit():
        numbers.insert(0, int(parts.pop()))
    path = Path(":".join(parts))
    if not path.exists():
        raise InputError(
            f"--start-from {spec!r}: no such image or dataset folder {str(path)!r} "
            "(expected IMAGE or DATASET_DIR[:EPISODE[:FRAME]])"
        )
    if numbers and not path.is_dir():
        raise InputError(f"--start-from {spec!r}: EPISODE and FRAME go with a dataset folder, not a file")
    if any(n < 0 for n in numbers):
        raise InputError(f"--start-from {spec!r}: EPISODE and FRAME are numbers ≥ 0")
    return path, (numbers[0] if numbers else None), (numbers[1] if len(numbers) > 1 else None)


def load_image(path: Path) -> np.ndarray:
    """An image file → (H, W, 3) uint8 RGB."""
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise InputError(
            f"{path}: cannot read this image (expected a PNG, JPEG or another format OpenCV reads)"
        )
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def from_dataset(
    root: Path,
    episode: int | None,
    frame: int | None,
    *,
    space: ActionSpace,
    context_frames: int,
    history_frames: int = 0,
) -> StartContext:
    """Frames ≤ ``frame`` of an episode (the last ``context_frames`` of them), the actions between them,
    and up to ``history_frames`` frames before them (see :class:`StartContext`)."""
    from wm_video.data.reader import open_dataset

    dataset = open_dataset(root)
    if not dataset.episodes:
        raise InputError(f"{root}: the dataset holds no episode to start from")
    if episode is None:  # the first held-out episode: footage the world did not train on
        from wm_video.data.split import split_episodes

        indices = [ref.index for ref in dataset.episodes]
        episode = (split_episodes(indices).heldout or indices)[0]
    ref = dataset.episode(episode)
    last = min(ref.length, context_frames) - 1 if frame is None else frame
    if last >= ref.length:
        raise InputError(
            f"{root}: episode {ref.index} has {ref.length} frames; frame {last} is not one of them"
        )
    first = max(0, last - context_frames + 1)
    earliest = max(0, first - history_frames)
    frames: list[np.ndarray] = []
    for index, image in enumerate(dataset.iter_frames(ref)):
        if index >= earliest:
            frames.append(image)
        if index == last:
            break
    actions: np.ndarray | None = None
    if tuple(dataset.action_space.names) == tuple(space.names):
        actions = dataset.actions(ref)[first:last]
    else:
        log.warning(
            "%s: its actions %s are not this world's %s; starting without them",
            root,
            list(dataset.action_space.names),
            list(space.names),
        )
    footage = np.stack(frames)
    label = f"{root} episode {ref.index} frames {first}-{last}"
    return StartContext(footage[first - earliest :], actions, label, footage[: first - earliest])


def load_start(spec: str, *, space: ActionSpace, context_frames: int, history_frames: int = 0) -> StartContext:
    """``--start-from``: an image or ``DATASET_DIR[:EPISODE[:FRAME]]`` (with up to ``history_frames``
    earlier frames for the tokenizer, see :func:`from_dataset`)."""
    path, episode, frame = parse_start(spec)
    if path.is_dir():
        return from_dataset(
            path, episode, frame, space=space, context_frames=context_frames, history_frames=history_frames
        )
    return StartContext(load_image(path)[None], None, str(path))


def shipped_start(path: Path, *, space: ActionSpace, context_frames: int) -> StartContext:
    """The start frames an exported world ships (``start.safetensors``: frames, actions)."""
    from safetensors.numpy import load_file

    try:
        tensors = load_file(str(path))
        frames, actions = tensors["frames"][-context_frames:], tensors["actions"]
    except Exception as exc:  # safetensors raises its own error type
        raise InputError(f"{path}: not a start file with 'frames' and 'actions' ({exc})") from exc
    if actions.shape[-1:] != (len(space.names),):
        return StartContext(frames, None, f"{path} (its actions do not fit this world)")
    between = actions[-(len(frames) - 1) :] if len(frames) > 1 else None
    return StartContext(frames, between, f"{path} ({len(frames)} frames)")


def default_start(
    info: DatasetInfo, *, space: ActionSpace, context_frames: int, image_size: int
) -> StartContext:
    """The checkpoint's data, else the real default world's first frame, else grey."""
    if info.root is not None:
        episode = info.heldout[0] if info.heldout else None
        try:
            return from_dataset(info.root, episode, None, space=space, context_frames=context_frames)
        except WMVideoError as exc:
            log.warning("cannot start from the checkpoint's dataset (%s)", exc)
    if info.start is not None:
        return shipped_start(info.start, space=space, context_frames=context_frames)
    from wm_video.sources.vizdoom import ACTION_SPACE

    if tuple(space.names) == tuple(ACTION_SPACE.names):
        from wm_video.sources import make_source

        scenario = info.source.get("scenario") if info.source.get("source") == "vizdoom" else None
        with make_source("vizdoom", scenario=scenario, size=image_size) as engine:
            return StartContext(engine.reset(0)[None], None, f"{engine.task}, seed 0")
    grey = np.full((1, image_size, image_size, 3), 128, dtype=np.uint8)
    return StartContext(grey, None, "a grey frame")


def open_world(
    checkpoint: Path | None,
    *,
    preset: str | None = None,
    tokenizer: Path | None = None,
    device: str = "cpu",
    seed: int = 0,
    sampling: dict[str, Any] | None = None,
    dtype: str = "fp32",
    compile: bool = False,
) -> World:
    """The :class:`~wm_video.engine.World` to play: a checkpoint, or a preset with random weights.

    With neither, the shipped default (:data:`DEFAULT_CHECKPOINT`); if that is not there yet, an
    error says what to pass instead. A preset builds its tokenizer and dynamics model with
    weights drawn from ``seed``, for the default world's 8 ViZDoom buttons. ``dtype`` (``fp32``,
    ``bf16``, ``fp16``), ``compile`` and ``sampling`` (settings replacing the world's own) as
    :func:`~wm_video.engine.load_world` takes them.
    """
    import torch

    from wm_video.device import resolve_dtype
    from wm_video.dynamics import DynamicsModel, dynamics_config, update_sampling
    from wm_video.engine import load_world
    from wm_video.sources.vizdoom import ACTION_SPACE
    from wm_video.tokenizer import VideoTokenizer, tokenizer_preset

    options: dict[str, Any] = dict(seed=seed, compile=compile)
    if checkpoint is None and preset is None:
        # A missing or empty folder means nothing shipped yet; anything else is for the loader to judge.
        if not DEFAULT_CHECKPOINT.is_dir() or not any(DEFAULT_CHECKPOINT.iterdir()):
            raise InputError(
                f"no trained world in {DEFAULT_CHECKPOINT}/ yet: pass --checkpoint RUN (a dynamics "
                "run or step folder) or --preset tiny (random weights, for development)"
            )
        checkpoint = DEFAULT_CHECKPOINT
    if checkpoint is not None:
        return load_world(checkpoint, tokenizer=tokenizer, device=device, dtype=dtype, sampling=sampling, **options)
    assert preset is not None
    torch.manual_seed(seed)
    tokenizer_model = VideoTokenizer(tokenizer_preset(preset))
    dynamics = DynamicsModel(dynamics_config(preset, tokenizer_model.config, ACTION_SPACE))
    float_type = resolve_dtype(dtype, device)
    update_sampling(dynamics, sampling)
    world = World(tokenizer_model.to(device, float_type), dynamics.to(device, float_type), **options)
    world.meta = {"preset": preset, "random_weights": True}
    return world
