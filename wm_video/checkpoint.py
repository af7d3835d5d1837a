"""The one checkpoint format that training, play and eval all use.

Design:
- Self-describing: a step directory holds the weights in safetensors (``model.safetensors``,
  optionally ``ema.safetensors``), the tensors of the training state (``training.safetensors``)
  and ``checkpoint.json`` with the format number, kind, step, model config, metadata and a JSON
  skeleton of the training state whose tensors are ``{"__tensor__": "t0"}`` placeholders. A model
  is rebuilt from the JSON alone (:func:`build_model`), without the training code.
- Atomic: a save is written into a hidden ``.tmp-*`` directory beside its final place, fsynced,
  marked ``COMPLETE`` last, renamed into place, and only then is the ``last`` pointer moved. A
  directory without ``COMPLETE`` is never loaded. A temporary directory is named after the host
  and process that write it, and the next save removes only those that are provably stale: their
  process is gone (same host), or they are a day old. Old checkpoints are deleted only after the
  new one is complete, and renamed away before they are deleted, so a kill during the deletion
  never leaves a step directory marked ``COMPLETE`` with files missing.
- Damage is survived: loading a run picks the newest complete checkpoint that reads back whole
  (every file present and parseable, weights finite) and warns about each newer one it passes.
- Safe: only safetensors are read, never pickles; a checkpoint that does not fit its model gets
  one error listing missing, unexpected and mis-shaped keys.
- Old formats are upgraded in one place, :func:`_upgrade`.

Only one process (rank 0) may save into a run directory at a time.

Layout::

    RUN/checkpoints/step-00001000/{model,ema,training}.safetensors, checkpoint.json, COMPLETE
    RUN/checkpoints/last           name of the newest complete step directory
    WORLD/world.json, WORLD/dynamics/, WORLD/tokenizer/   an exported world (wm_video/export.py):
                                   weights-only step directories, found by kind
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import time
import uuid
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from safetensors.torch import load_file
from torch import Tensor

from wm_video.errors import InputError, is_disk_full
from wm_video.fileio import atomic_write_json, atomic_write_text, signals_deferred, write_safetensors
from wm_video.memory import FLOAT_BYTES, check_fits, format_bytes, parameter_count

if TYPE_CHECKING:
    from wm_video.dynamics import DynamicsModel
    from wm_video.tokenizer import VideoTokenizer

CHECKPOINT_FORMAT = 1
COMPLETE_MARKER = "COMPLETE"
LAST_POINTER = "last"
WORLD_FILE = "world.json"  # marks an exported world folder (wm_video/export.py)
_STEP_DIR = re.compile(r"step-(\d+)")
_EXPECTED = "expected RUN/checkpoints/step-*/COMPLETE"


@dataclass
class Checkpoint:
    path: Path  # the step directory, e.g. RUN/checkpoints/step-00001000
    kind: str  # "tokenizer" (later also "dynamics")
    config: dict[str, Any]  # model config as JSON
    step: int
    weights: dict[str, Tensor]  # model state_dict (model.safetensors)
    ema_weights: dict[str, Tensor] | None  # ema.safetensors if saved
    training_state: Any  # nested dicts/lists/tuples/scalars/tensors as saved; None if not saved/loaded
    meta: dict[str, Any]  # JSON metadata given at save time, {} if none


class _Damaged(InputError):
    """A checkpoint's files do not read back whole: loading a run falls back to an older one."""


# -- models -----------------------------------------------------------------------------------------
def _build_tokenizer(config: dict[str, Any]) -> torch.nn.Module:
    from wm_video.tokenizer import TokenizerConfig, VideoTokenizer

    try:
        return VideoTokenizer(TokenizerConfig.from_dict(config))
    except TypeError as err:  # e.g. a value of the wrong type
        raise InputError(f"tokenizer config: {err}") from err


def _build_dynamics(config: dict[str, Any]) -> torch.nn.Module:
    from wm_video.dynamics import DynamicsConfig, DynamicsModel

    try:
        return DynamicsModel(DynamicsConfig.from_dict(config))
    except TypeError as err:
        raise InputError(f"dynamics config: {err}") from err


_MODELS: dict[str, Callable[[dict[str, Any]], torch.nn.Module]] = {
    "tokenizer": _build_tokenizer,
    "dynamics": _build_dynamics,
}


def build_model(kind: str, config: dict[str, Any]) -> torch.nn.Module:
    """A fresh model of ``kind`` from its JSON config (raises InputError for an invalid config, or
    for one whose weights alone would not fit in memory)."""
    if kind not in _MODELS:
        raise InputError(f"unknown model kind {kind!r}; known kinds are {sorted(_MODELS)}")
    if not isinstance(config, dict):
        raise InputError(f"{kind} config must be a JSON object, got {type(config).__name__}")
    parameters = parameter_count(lambda: _MODELS[kind](config))
    check_fits(
        parameters * FLOAT_BYTES,
        f"a {kind} of this config ({parameters:,} parameters)",
        "check the config's sizes (dim, layers, image_size)",
    )
    return _MODELS[kind](config)


def check_finite(weights: dict[str, Tensor], source: Path) -> None:
    """Raise an InputError naming ``source`` and the first tensors that hold NaN or inf."""
    bad = [k for k, t in weights.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if bad:
        more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
        raise InputError(f"{source}: weights hold NaN or inf ({', '.join(bad[:3])}{more})")


def load_weights(model: torch.nn.Module, weights: dict[str, Tensor], source: Path) -> None:
    """Load ``weights`` strictly, or raise one InputError naming ``source`` and every mismatch."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(expected))
    shapes = [
        f"{key}: checkpoint {tuple(weights[key].shape)} vs model {tuple(expected[key].shape)}"
        for key in sorted(set(weights) & set(expected))
        if weights[key].shape != expected[key].shape
    ]
    found_by_what = {"missing keys": missing, "unexpected keys": unexpected, "shape mismatches": shapes}
    problems = [
        f"{len(found)} {what}: {', '.join(found[:10])}{', …' if len(found) > 10 else ''}"
        for what, found in found_by_what.items()
        if found
    ]
    if problems:
        raise InputError(
            f"{source}: weights do not match the model (was it saved with another config?); "
            + "; ".join(problems)
        )
    model.load_state_dict(weights, strict=True)


# -- training state: nested python with tensors <-> JSON skeleton + flat tensors --------------------
_RESERVED = {"__tensor__", "__ndarray__", "__dict__", "__tuple__"}


def _pack(obj: Any, tensors: dict[str, Tensor] | None = None, where: str = "training_state") -> Any:
    """Return a JSON skeleton of ``obj``; its tensors go to ``tensors`` under keys "t0", "t1", …"""
    tensors = {} if tensors is None else tensors
    if isinstance(obj, (Tensor, np.ndarray)):
        key = f"t{len(tensors)}"
        tensors[key] = (
            obj.detach().cpu() if isinstance(obj, Tensor) else torch.from_numpy(np.ascontiguousarray(obj))
        )
        return {"__ndarray__" if isinstance(obj, np.ndarray) else "__tensor__": key}
    if isinstance(obj, np.generic):
        return obj.item()
    if obj is None or isinstance(obj, (str, int, float, bool)):
        return obj
    if isinstance(obj, (list, tuple)):
        items = [_pack(value, tensors, f"{where}[{i}]") for i, value in enumerate(obj)]
        return {"__tuple__": items} if isinstance(obj, tuple) else items
    if isinstance(obj, dict):
        if all(isinstance(k, str) for k in obj) and not _RESERVED & set(obj):
            return {k: _pack(v, tensors, f"{where}[{k!r}]") for k, v in obj.items()}
        return {
            "__dict__": [
                [_pack(k, tensors, where), _pack(v, tensors, f"{where}[{k!r}]")] for k, v in obj.items()
            ]
        }
    raise TypeError(f"{where}: cannot save a {type(obj).__name__} in a checkpoint's training state")


def _unpack(skeleton: Any, tensors: dict[str, Tensor]) -> Any:
    if isinstance(skeleton, list):
        return [_unpack(value, tensors) for value in skeleton]
    if not isinstance(skeleton, dict):
        return skeleton
    if len(skeleton) == 1 and set(skeleton) <= _RESERVED:
        ((tag, value),) = skeleton.items()
        if tag == "__tensor__":
            return tensors[value]
        if tag == "__ndarray__":
            return tensors[value].numpy()
        if tag == "__tuple__":
            return tuple(_unpack(item, tensors) for item in value)
        return {_unpack(k, tensors): _unpack(v, tensors) for k, v in value}
    return {k: _unpack(v, tensors) for k, v in skeleton.items()}


# -- files ------------------------------------------------------------------------------------------
def _storable(tensors: dict[str, Tensor]) -> dict[str, Tensor]:
    """CPU, contiguous tensors that share no memory (what safetensors requires); copies only if needed."""
    out: dict[str, Tensor] = {}
    seen: set[int] = set()
    for key, tensor in tensors.items():
        tensor = tensor.detach().cpu().contiguous()
        storage = tensor.untyped_storage()
        if storage.data_ptr() in seen or storage.nbytes() != tensor.nbytes:
            tensor = tensor.clone()
            storage = tensor.untyped_storage()
        seen.add(storage.data_ptr())
        out[key] = tensor
    return out


def _fsync(path: Path, *, directory: bool = False) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:  # some filesystems cannot fsync a directory; the files themselves are synced
        if not directory:
            raise


def _write_tensors(path: Path, tensors: dict[str, Tensor]) -> None:
    write_safetensors(path, _storable(tensors))
    _fsync(path)


def _read_tensors(path: Path) -> dict[str, Tensor]:
    if not path.is_file():
        raise _Damaged(f"{path}: missing; the checkpoint is damaged (expected a safetensors file)")
    try:
        return load_file(str(path), device="cpu")
    except Exception as err:  # safetensors raises its own SafetensorError
        with open(path, "rb") as handle:
            head = handle.read(2)
        guess = " (it looks like a torch.save pickle)" if head[:2] == b"PK" or head[:1] == b"\x80" else ""
        raise _Damaged(
            f"{path}: not a safetensors file{guess}: {err}; wm-video only loads safetensors, never pickles"
        ) from err


def _is_complete(step_dir: Path) -> bool:
    return step_dir.is_dir() and (step_dir / COMPLETE_MARKER).is_file()


def _complete_steps(checkpoints: Path) -> list[Path]:
    """Complete step directories, oldest first."""
    found = [(int(m.group(1)), p) for p in checkpoints.iterdir() if (m := _STEP_DIR.fullmatch(p.name))]
    return [p for _, p in sorted(found) if _is_complete(p)]


def _step_of(step_dir: Path) -> int:
    match = _STEP_DIR.fullmatch(step_dir.name)
    return int(match.group(1)) if match else -1


# Temporary directories: .tmp-<what>-<host>-<pid>-<random>, so that a later save can tell whose they are.
_HOST = re.sub(r"[^A-Za-z0-9_.]", "_", socket.gethostname())[:40]
_TMP_DIR = re.compile(r"\.tmp-.*-(?P<host>[A-Za-z0-9_.]+)-(?P<pid>\d+)-[0-9a-f]{8}")
STALE_AFTER_S = 24 * 3600  # a temporary directory of another host (or an older format) this old is stale


def _tmp_name(what: str) -> str:
    return f".tmp-{what}-{_HOST}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def _is_stale(tmp: Path) -> bool:
    """True when no running process can still be writing ``tmp`` (a ``.tmp-*`` directory)."""
    match = _TMP_DIR.fullmatch(tmp.name)
    if match is not None and match["host"] == _HOST:
        return int(match["pid"]) != os.getpid() and not _process_alive(int(match["pid"]))
    try:
        return time.time() - tmp.stat().st_mtime > STALE_AFTER_S
    except OSError:
        return False


def _remove_stale_tmps(folder: Path) -> None:
    for leftover in folder.glob(".tmp-*"):
        if _is_stale(leftover):
            shutil.rmtree(leftover, ignore_errors=True)


def _remove_dir(step_dir: Path) -> None:
    """Delete a step directory: rename it away first (one atomic step), then remove the files."""
    doomed = step_dir.parent / _tmp_name(f"pruned-{step_dir.name}")
    try:
        os.replace(step_dir, doomed)
    except FileNotFoundError:
        return
    shutil.rmtree(doomed, ignore_errors=True)


# -- save -------------------------------------------------------------------------------------------
def save_checkpoint(
    run_dir: Path,
    *,
    kind: str,
    config: dict[str, Any],
    step: int,
    weights: dict[str, Tensor],
    ema_weights: dict[str, Tensor] | None = None,
    training_state: Any = None,
    meta: dict[str, Any] | None = None,
    keep: int | None = 3,
) -> Path:
    """Write RUN/checkpoints/step-NNNNNNNN atomically, move ``last`` to it, then prune; return it.

    Pruning, only once the new checkpoint is complete: all but the ``keep`` newest are deleted, and
    the older ones kept lose their training state (``training.safetensors``: optimizer moments,
    sampler, RNG), which only a resume reads, and a run resumes from its newest checkpoint.
    """
    if not isinstance(step, int) or step < 0:
        raise InputError(f"checkpoint step must be an integer ≥ 0, got {step!r}")
    if keep is not None and keep < 1:
        raise InputError(f"checkpoint keep must be ≥ 1 or None (keep all), got {keep}")
    for label, tensors in (("weights", weights), ("EMA weights", ema_weights or {})):
        for key, tensor in tensors.items():
            if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                raise InputError(f"refusing to save step {step}: {label} {key!r} contain NaN or inf")
    training_tensors: dict[str, Tensor] = {}
    skeleton = _pack(training_state, training_tensors)
    document = {"format": CHECKPOINT_FORMAT, "kind": kind, "step": step, "config": config, "meta": meta or {}}
    for what in ("config", "meta"):  # fail before writing anything
        try:
            json.dumps(document[what])
        except (TypeError, ValueError) as err:
            raise TypeError(f"checkpoint {what} must be JSON-serialisable: {err}") from err
    document["training_state"] = skeleton
    needed = sum(t.nbytes for group in (weights, ema_weights or {}, training_tensors) for t in group.values())

    checkpoints = Path(run_dir) / "checkpoints"
    checkpoints.mkdir(parents=True, exist_ok=True)
    _remove_stale_tmps(checkpoints)  # left by saves that crashed
    name = f"step-{step:08d}"
    final = checkpoints / name
    tmp = checkpoints / _tmp_name(name)
    try:
        files = {"model": weights, "ema": ema_weights, "training": training_tensors}
        _fill_step_dir(tmp, name, document, files)
        with signals_deferred():
            _move_into_place(tmp, final)  # the same step saved again (e.g. after a resume) is swapped
            atomic_write_text(checkpoints / LAST_POINTER, f"{name}\n")
    except BaseException as err:
        shutil.rmtree(tmp, ignore_errors=True)
        if is_disk_full(err):
            free = shutil.disk_usage(checkpoints).free
            raise InputError(
                f"{checkpoints}: disk full while saving {name}: the checkpoint needs about {needed:,} bytes "
                f"({format_bytes(needed)}; {free:,} free); the partial save was removed and the last good "
                "checkpoint is kept"
            ) from err
        raise

    older = [p for p in _complete_steps(checkpoints) if _step_of(p) < step]
    if keep is not None:  # older ones only: a newer one is a damaged leftover of a run resumed before it
        removed = max(0, len(older) - (keep - 1))
        for old_dir in older[:removed]:
            _remove_dir(old_dir)
        older = older[removed:]
    # what a resume needs stays in this one and the one before it (a resume passes over a damaged
    # newest checkpoint to that one); older ones keep their weights for eval and play
    for old_dir in older[:-1]:
        _drop_training_state(old_dir)
    return final


def _drop_training_state(step_dir: Path) -> None:
    """Make an older checkpoint inference-only: weights and EMA stay, the optimizer state and the rest
    of the training state go (a run resumes from its newest checkpoint, which keeps them). The
    description is rewritten first, so a crash in between leaves at worst an unused file."""
    training_file = step_dir / "training.safetensors"
    if not training_file.exists():
        return
    try:
        document = json.loads((step_dir / "checkpoint.json").read_text())
        document["training_state"] = None
        atomic_write_json(step_dir / "checkpoint.json", document)
        training_file.unlink()
    except (OSError, ValueError):
        return  # left as it was: still a complete checkpoint


def _fill_step_dir(
    tmp: Path, name: str, document: dict[str, Any], files: dict[str, dict[str, Tensor] | None]
) -> None:
    """Write the files of the step directory ``name`` into the fresh directory ``tmp``, ``COMPLETE`` last."""
    tmp.mkdir()
    for stem, tensors in files.items():
        if tensors is not None and (tensors or stem == "model"):
            _write_tensors(tmp / f"{stem}.safetensors", tensors)
    atomic_write_json(tmp / "checkpoint.json", document)
    atomic_write_text(tmp / COMPLETE_MARKER, f"{name}\n")
    _fsync(tmp, directory=True)


def _move_into_place(tmp: Path, final: Path) -> None:
    """Rename the finished ``tmp`` to ``final``; an existing ``final`` is replaced only once tmp is there."""
    if final.exists():
        old = final.parent / _tmp_name(f"old-{final.name}")
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)
    _fsync(final.parent, directory=True)


def write_inference_checkpoint(
    final: Path,
    *,
    kind: str,
    config: dict[str, Any],
    step: int,
    weights: dict[str, Tensor],
    meta: dict[str, Any],
) -> Path:
    """Write a weights-only step directory at ``final`` atomically (no EMA file, no training state).

    For shipping (``wm-video export``): ``weights`` are what inference should load.
    """
    document = {"format": CHECKPOINT_FORMAT, "kind": kind, "step": step, "config": config, "meta": meta}
    json.dumps(document)  # fail before writing anything
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / _tmp_name(final.name)
    try:
        _fill_step_dir(tmp, final.name, document, {"model": weights})
        with signals_deferred():
            _move_into_place(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


# -- load -------------------------------------------------------------------------------------------
def _candidates(path: Path, kind: str | None) -> list[Path]:
    """The complete step directories ``path`` may mean, the one to load first; older fallbacks after it.

    A run dir or checkpoints/ dir means its ``last`` checkpoint, then every other complete one,
    newest first; a step directory or a world's part means itself alone. A world folder (``wm-video
    export``: ``world.json`` beside ``dynamics/`` and ``tokenizer/``) and a fine-tune folder
    (``wm-video finetune --out``: the runs ``dynamics/`` and ``tokenizer/``) mean their ``kind``
    sub-folder, the dynamics model when no kind is asked for.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: does not exist; expected a run directory or a checkpoint ({_EXPECTED})")
    if _is_complete(path):
        return [path]
    if (path / WORLD_FILE).is_file():
        part = kind or "dynamics"
        if not _is_complete(path / part):
            raise InputError(f"{path}: an exported world without a complete {part}/ checkpoint")
        return [path / part]
    if not (path / "checkpoints").is_dir() and (path / "dynamics").is_dir():
        # a `wm-video finetune --out` folder: RUN/tokenizer and RUN/dynamics are its two runs
        part = kind or "dynamics"
        if not (path / part).is_dir():
            raise InputError(f"{path}: a fine-tune folder without a {part}/ run")
        return _candidates(path / part, kind)
    if (path / "checkpoint.json").exists() or _STEP_DIR.fullmatch(path.name):
        raise InputError(
            f"{path}: incomplete checkpoint (no {COMPLETE_MARKER} marker: its save was interrupted)"
        )
    checkpoints = path / "checkpoints" if (path / "checkpoints").is_dir() else path
    if not checkpoints.is_dir():
        raise InputError(f"{path}: not a run directory or checkpoint ({_EXPECTED})")
    complete = _complete_steps(checkpoints)[::-1]
    if not complete:
        raise InputError(f"{path}: no complete checkpoint ({_EXPECTED})")
    pointer = checkpoints / LAST_POINTER
    target = pointer.read_text().strip() if pointer.is_file() else ""
    if _STEP_DIR.fullmatch(target) and _is_complete(checkpoints / target):
        return [checkpoints / target] + [p for p in complete if p.name != target]
    if pointer.is_file():
        warnings.warn(
            f"{pointer} names no complete checkpoint; using the newest complete one, {complete[0]}",
            stacklevel=3,
        )
    return complete


def resolve_checkpoint(path: Path, kind: str | None = None) -> Path:
    """The complete step directory meant by a run dir, its checkpoints/ dir, a step dir or a world.

    A world folder (``wm-video export``: ``world.json`` beside ``dynamics/`` and ``tokenizer/``)
    means its ``kind`` sub-folder, the dynamics model when no kind is asked for. (It does not read
    the files: :func:`load_checkpoint` passes over a damaged newest checkpoint, this does not.)
    """
    return _candidates(path, kind)[0]


def _upgrade(data: dict[str, Any]) -> dict[str, Any]:
    """Bring checkpoint.json of an older format up to CHECKPOINT_FORMAT (format changes go here)."""
    return data


def load_checkpoint(path: Path, *, kind: str | None = None, with_training_state: bool = True) -> Checkpoint:
    """Load a checkpoint (run dir, checkpoints/ dir, step dir or world) with all tensors on the CPU.

    Given a run, a damaged newest checkpoint (a file missing, truncated or not finite) is passed
    over with a warning for the newest one that reads back whole; no such one is an error.
    """
    candidates = _candidates(path, kind)
    first_error: _Damaged | None = None
    for step_dir in candidates:
        try:
            checkpoint = _load_step_dir(step_dir, kind, with_training_state)
        except _Damaged as err:
            first_error = first_error or err
            continue
        if first_error is not None:
            warnings.warn(
                f"{first_error}; passed over {step_dir.parent} checkpoints newer than {step_dir.name}, "
                f"which is loaded instead",
                stacklevel=2,
            )
        return checkpoint
    assert first_error is not None
    if len(candidates) > 1:
        raise InputError(f"{first_error} (and no older checkpoint of {path} reads back whole)")
    raise first_error


def _load_step_dir(step_dir: Path, kind: str | None, with_training_state: bool) -> Checkpoint:
    info_file = step_dir / "checkpoint.json"
    try:
        data = json.loads(info_file.read_text())
    except (OSError, ValueError) as err:
        raise _Damaged(f"{info_file}: unreadable checkpoint description ({err})") from err
    if not isinstance(data, dict) or not isinstance(data.get("format"), int):
        raise _Damaged(f"{info_file}: expected a JSON object with an integer 'format'")
    if data["format"] > CHECKPOINT_FORMAT:
        raise InputError(
            f"{info_file}: checkpoint format {data['format']} is newer than this wm-video reads "
            f"(≤ {CHECKPOINT_FORMAT}); upgrade wm-video"
        )
    data = _upgrade(data)
    missing = [key for key in ("kind", "step", "config") if key not in data]
    if missing:
        raise _Damaged(f"{info_file}: missing keys {missing}")
    expected: dict[str, type | tuple[type, ...]] = {
        "kind": str,
        "step": int,
        "config": dict,
        "meta": (dict, type(None)),
    }
    wrong = [
        f"{key} {data.get(key)!r:.40}"
        for key, types in expected.items()
        if not isinstance(data.get(key), types) or isinstance(data.get(key), bool)
    ]
    if wrong or data["step"] < 0:
        raise _Damaged(
            f"{info_file}: expected a string 'kind', an integer 'step' ≥ 0 and JSON objects 'config' and "
            f"'meta'; found {', '.join(wrong) or 'step ' + str(data['step'])}"
        )
    if kind is not None and data["kind"] != kind:
        raise InputError(f"{step_dir}: is a {data['kind']} checkpoint; expected a {kind} checkpoint")
    ema_file = step_dir / "ema.safetensors"
    training_state = None
    if with_training_state and data.get("training_state") is not None:
        training_file = step_dir / "training.safetensors"
        tensors = _read_tensors(training_file) if training_file.exists() else {}
        try:
            training_state = _unpack(data["training_state"], tensors)
        except (KeyError, TypeError, ValueError) as err:
            raise _Damaged(f"{info_file}: training state does not match {training_file} ({err!r})") from err
    weights = _read_tensors(step_dir / "model.safetensors")
    ema_weights = _read_tensors(ema_file) if ema_file.exists() else None
    for file, tensors in (("model.safetensors", weights), ("ema.safetensors", ema_weights or {})):
        try:
            check_finite(tensors, step_dir / file)
        except InputError as err:
            raise _Damaged(f"{err}; the checkpoint is damaged") from err
    return Checkpoint(
        path=step_dir,
        kind=data["kind"],
        config=data["config"],
        step=data["step"],
        weights=weights,
        ema_weights=ema_weights,
        training_state=training_state,
        meta=data.get("meta") or {},
    )


def checked_model(checkpoint: Checkpoint, *, ema: bool = True) -> torch.nn.Module:
    """The model of ``checkpoint`` with its weights loaded (the EMA's when asked for and saved),
    or one InputError naming the file when the weights do not fit the config."""
    try:
        model = build_model(checkpoint.kind, checkpoint.config)
    except InputError as err:
        raise InputError(f"{checkpoint.path / 'checkpoint.json'}: {err}") from err
    use_ema = ema and checkpoint.ema_weights is not None
    weights = checkpoint.ema_weights if use_ema and checkpoint.ema_weights is not None else checkpoint.weights
    load_weights(model, weights, checkpoint.path / ("ema.safetensors" if use_ema else "model.safetensors"))
    return model


def _load_for_inference(
    path: Path, kind: str, ema: bool, device: str | torch.device
) -> tuple[torch.nn.Module, Checkpoint]:
    checkpoint = load_checkpoint(path, kind=kind, with_training_state=False)
    return checked_model(checkpoint, ema=ema).to(device).eval(), checkpoint


def recorded_tokenizer(checkpoint: Checkpoint) -> Path:
    """The tokenizer checkpoint a dynamics checkpoint was trained with (``meta.tokenizer``).

    A relative path is relative to the dynamics step directory, so a run moved together with its
    tokenizer, or a shipped world, still finds it.
    """
    recorded = checkpoint.meta.get("tokenizer")
    if not recorded:
        raise InputError(
            f"{checkpoint.path}: the checkpoint does not name its tokenizer; pass --tokenizer RUN"
        )
    path = Path(recorded)
    return path if path.is_absolute() else Path(os.path.normpath(checkpoint.path / path))


def load_tokenizer(
    path: Path, *, ema: bool = True, device: str | torch.device = "cpu"
) -> tuple[VideoTokenizer, Checkpoint]:
    """A tokenizer ready for inference (EMA weights when asked for and saved), and its checkpoint."""
    from wm_video.tokenizer import VideoTokenizer

    model, checkpoint = _load_for_inference(path, "tokenizer", ema, device)
    assert isinstance(model, VideoTokenizer)
    return model, checkpoint


def load_dynamics(
    path: Path, *, ema: bool = True, device: str | torch.device = "cpu"
) -> tuple[DynamicsModel, Checkpoint]:
    """A dynamics model ready for inference (EMA weights when asked for and saved), and its checkpoint;
    the model's ``sampling`` holds the settings the checkpoint stores (``meta.sampling``, checked)."""
    from wm_video.dynamics import DynamicsModel, update_sampling

    model, checkpoint = _load_for_inference(path, "dynamics", ema, device)
    assert isinstance(model, DynamicsModel)
    stored = checkpoint.meta.get("sampling") or {}
    where = f"{checkpoint.path / 'checkpoint.json'} (meta.sampling)"
    if not isinstance(stored, dict):
        raise InputError(f"{where}: expected an object of sampling settings, got {stored!r}")
    update_sampling(model, stored, where)
    return model, checkpoint
