"""Ship a trained world as one self-contained folder: ``wm-video export``.

Layout of ``OUT`` (what ``checkpoints/default/`` holds)::

    OUT/world.json          what the folder holds and where it came from; marks it as a world
    OUT/dynamics/           a step directory: checkpoint.json, model.safetensors, COMPLETE
    OUT/tokenizer/          the same for the tokenizer the dynamics model was trained with
    OUT/start.safetensors   the first frames of a held-out episode and the actions between them

Design choices:
- Inference weights only: the EMA weights when the run kept them, no optimizer state, stored
  as float16 by default (half the bytes of float32; a loader casts them back into the float32
  model). ``--dtype float32`` keeps them exact.
- Every loader takes the folder wherever it takes a checkpoint
  (:func:`wm_video.checkpoint.resolve_checkpoint` picks ``dynamics/`` or ``tokenizer/``), and the
  dynamics checkpoint names its tokenizer as ``../tokenizer``, so the folder works wherever it
  is copied.
- What play needs from the training data travels in the dynamics checkpoint's ``meta.shipped``
  (pace, keymap, the engine and scenario, the start frames), so a fresh machine without the
  dataset starts from a real held-out frame and can run the real engine beside the model.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from wm_video.checkpoint import (
    WORLD_FILE,
    check_finite,
    checked_model,
    load_checkpoint,
    load_tokenizer,
    recorded_tokenizer,
    write_inference_checkpoint,
)
from wm_video.data.tokens import tokenizer_fingerprint
from wm_video.errors import InputError
from wm_video.fileio import atomic_write, atomic_write_json, check_output_folder, write_safetensors

START_FILE = "start.safetensors"
DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


@dataclass(frozen=True)
class ExportResult:
    out: Path
    dynamics_step: int
    tokenizer_step: int
    start_frames: int  # frames in start.safetensors (0: the dataset was not there)
    weight_bytes: int  # bytes of the two model.safetensors files


def _inference_weights(weights: dict[str, torch.Tensor], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    return {key: (t.to(dtype) if t.is_floating_point() else t) for key, t in weights.items()}


def _dataset_facts(data: Path | None, heldout: list[int], context_frames: int) -> tuple[dict[str, Any], Any]:
    """Pace, keymap, source and start frames from the training dataset, if it is still there."""
    if data is None or not (data / "meta" / "info.json").is_file():
        return {}, None
    from wm_video.data.reader import open_dataset

    dataset = open_dataset(data)
    facts: dict[str, Any] = {
        "fps": dataset.fps,
        "keymap": dict(dataset.action_space.default_keymap),
        "source": dict(dataset.ours.get("source") or {}),
    }
    ref = dataset.episode(heldout[0]) if heldout else dataset.episodes[0]
    count = min(ref.length, context_frames)
    frames = dataset.frames(ref)[:count]
    actions = dataset.actions(ref)[: count - 1]
    facts["start_label"] = f"held-out episode {ref.index} of the training data, frames 0-{count - 1}"
    return facts, (frames, actions)


def export_world(
    dynamics: Path,
    out: Path,
    *,
    tokenizer: Path | None = None,
    dtype: str = "float16",
    sampling: dict[str, Any] | None = None,
) -> ExportResult:
    """Write the world of the dynamics checkpoint ``dynamics`` (and its tokenizer) into ``out``.

    ``sampling`` (:class:`~wm_video.dynamics.SamplingConfig` settings) becomes the world's own way
    of drawing frames (``meta.sampling`` of the exported dynamics checkpoint, and ``world.json``),
    on top of what the source stores; play and eval use it unless told otherwise.
    """
    from wm_video.dynamics import SamplingConfig

    if dtype not in DTYPES:
        raise InputError(f"--dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    out = check_output_folder(Path(out))
    source = load_checkpoint(dynamics, kind="dynamics", with_training_state=False)
    tokenizer_path = tokenizer or recorded_tokenizer(source)
    token_source = load_checkpoint(tokenizer_path, kind="tokenizer", with_training_state=False)
    for saved in (source, token_source):  # weights that fit their config (load_checkpoint saw them finite)
        checked_model(saved, ema=True)
    if out.exists() and any(out.iterdir()) and not (out / WORLD_FILE).is_file():
        raise InputError(f"{out}: exists and is not an exported world; choose an empty or new folder")

    stored = source.meta.get("sampling") or {}
    world_sampling = SamplingConfig.from_dict({**stored, **(sampling or {})}, "--temperature/--top-k/--passes/--guidance/--order")
    data = Path(source.meta["data"]) if source.meta.get("data") else None
    context = int(source.config.get("context_frames", 8))
    facts, start = _dataset_facts(data, list(source.meta.get("heldout_episodes") or []), context)
    if start is not None:
        frames, actions = start
        start_tensors = {
            "frames": torch.from_numpy(frames).contiguous(),
            "actions": torch.from_numpy(actions).contiguous(),
        }
        atomic_write(out / START_FILE, lambda tmp: write_safetensors(tmp, start_tensors))
        facts["start"] = f"../{START_FILE}"  # relative to the dynamics step directory
    torch_dtype = DTYPES[dtype]
    written = []
    for kind, saved in (("tokenizer", token_source), ("dynamics", source)):
        extra: dict[str, Any] = {"exported_from": str(saved.path)}
        if kind == "dynamics":  # the tokenizer as stored here (rounded weights have another fingerprint)
            shipped_tokenizer, _ = load_tokenizer(out / "tokenizer")
            extra |= {
                "tokenizer": "../tokenizer",
                "tokenizer_fingerprint": tokenizer_fingerprint(shipped_tokenizer),
                "shipped": facts,
                "sampling": world_sampling.to_dict(),
            }
        weights = _inference_weights(
            saved.ema_weights if saved.ema_weights is not None else saved.weights, torch_dtype
        )
        try:
            check_finite(weights, saved.path)
        except InputError as err:
            raise InputError(f"{err} once stored as {dtype}; export with --dtype float32") from err
        written.append(
            write_inference_checkpoint(
                out / kind,
                kind=kind,
                config=saved.config,
                step=saved.step,
                weights=weights,
                meta={**saved.meta, **extra},
            )
        )
    atomic_write_json(
        out / WORLD_FILE,
        {
            "format": 1,
            "dynamics": {"path": "dynamics", "from": str(source.path), "step": source.step},
            "tokenizer": {"path": "tokenizer", "from": str(token_source.path), "step": token_source.step},
            "weights_dtype": dtype,
            "sampling": world_sampling.to_dict(),
            "start": facts.get("start_label"),
        },
    )
    return ExportResult(
        out=out,
        dynamics_step=source.step,
        tokenizer_step=token_source.step,
        start_frames=0 if start is None else len(start[0]),
        weight_bytes=sum((path / "model.safetensors").stat().st_size for path in written),
    )


def describe(result: ExportResult) -> str:
    start = (
        f"{result.start_frames} start frames"
        if result.start_frames
        else "no start frames (dataset not found)"
    )
    return (
        f"{result.out}: dynamics step {result.dynamics_step}, tokenizer step {result.tokenizer_step}, "
        f"{result.weight_bytes / 2**20:.1f} MiB of weights, {start}"
    )


__all__ = ["DTYPES", "START_FILE", "ExportResult", "describe", "export_world"]
