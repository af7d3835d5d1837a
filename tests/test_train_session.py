"""The training loop itself (:meth:`TrainingSession.run`) on a tiny MLP: the fp16 GradScaler path,
no host reads between log steps, compiled == eager, the prefetch thread, weight decay groups, MFU's
FLOP count, and a failed save on one of 2 ranks raising on both (a user-facing one in one line)."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from conftest import MICRO_TOKENIZER, TrainingData
from safetensors.torch import load_file
from torch import nn

from wm_video.data.sampler import ClipSampler
from wm_video.dynamics import DynamicsModel, dynamics_config
from wm_video.errors import InputError
from wm_video.tokenizer import VideoTokenizer
from wm_video.train.common import matmul_parameters, read_log
from wm_video.train.prefetch import Prefetcher
from wm_video.train.session import SessionOptions, StepResult, TrainingSession, adamw

FEATURES = 4


@dataclass(frozen=True)
class Table:
    """A :class:`~wm_video.data.sampler.ClipTable` of two 20-row episodes of 4 features."""

    frames: np.ndarray
    actions: np.ndarray
    episode_starts: np.ndarray
    episode_indices: np.ndarray
    episode_lengths: np.ndarray
    num_episodes: int = 2


def table() -> Table:
    rows = np.random.default_rng(0).normal(size=(40, FEATURES)).astype(np.float32)
    return Table(
        rows,
        np.zeros((40, 1), np.float32),
        np.array([0, 20, 40]),
        np.array([0, 1]),
        np.array([20, 20]),
    )


@dataclass
class TinyRun:
    session: TrainingSession
    losses: list[float]  # logged

    def weights(self, step: int) -> dict[str, torch.Tensor]:
        """The model's weights after ``step`` (the run saves every step unless told otherwise)."""
        return load_file(self.session.out / "checkpoints" / f"step-{step:08d}" / "model.safetensors")


def tiny_run(
    out: Path,
    steps: int,
    *,
    poison: tuple[int, ...] = (),
    before_prepare: Callable[[TrainingSession], None] | None = None,
    on_step: Callable[[], None] | None = None,
    **options: Any,
) -> TinyRun:
    """``steps`` steps of a 2-layer MLP predicting a row from the one before it; the batches drawn
    ``poison`` (1-based) are NaN."""
    settings: dict[str, Any] = dict(
        max_steps=steps, batch_size=4, eval_every=0, warmup_steps=1, progress=False, mixed_precision="no"
    )
    settings.update({"save_every": 1, "keep": 100, **options})
    session = TrainingSession(
        kind="tokenizer", options=SessionOptions(out=out, **settings), program_options={}
    )
    if before_prepare is not None:
        before_prepare(session)
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(FEATURES, 16), nn.Tanh(), nn.Linear(16, FEATURES))
    sampler = ClipSampler(table(), 2, seed=0)
    model, _, _, _ = session.prepare(net, {"model": "mlp"}, sampler)
    drawn = [0]

    def draw() -> dict[str, torch.Tensor]:
        drawn[0] += 1
        rows = torch.from_numpy(sampler.sample_batch(4).frames)  # (B, 2, F)
        return {"rows": torch.full_like(rows, float("nan")) if drawn[0] in poison else rows}

    def step(batch: dict[str, torch.Tensor]) -> StepResult:
        if on_step is not None:
            on_step()
        rows = batch["rows"]
        noisy = rows[:, 0] + 0.01 * torch.randn_like(rows[:, 0])  # torch's RNG, as the dynamics loss draws
        loss = F.mse_loss(model(noisy), rows[:, 1])
        return StepResult(loss, {"first": rows[0, 0, 0]})

    result = session.run(draw=draw, step=step, probe=None, meta={}, frames_per_batch=8, tokens_per_frame=1)
    assert result.step == steps
    return TinyRun(session, [r["loss"] for r in read_log(out) if "loss" in r])


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return all(torch.equal(a[k], b[k]) for k in a)


def test_fp16_training_survives_an_overflow(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Bug 1 of issue 17: with a GradScaler (fp16), a non-finite step used to skip optimizer.step()
    and with it the scaler's update(); the next clip unscaled twice and raised. Here Accelerate runs
    its fp16 scaler path with a CPU GradScaler; step 2's batch is NaN."""
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    monkeypatch.setattr(Accelerator, "mixed_precision", property(lambda self: "fp16"))

    def use_scaler(session: TrainingSession) -> None:
        session.accelerator.scaler, session.accelerator.native_amp = scaler, True

    run = tiny_run(tmp_path / "run", 4, poison=(2,), before_prepare=use_scaler, log_every=1)
    assert same(run.weights(1), run.weights(2)), "the overflowing step changed the weights"
    assert not same(run.weights(2), run.weights(3)), "the step after it did not train"
    assert scaler.get_scale() == 2.0**9  # backed off once, at step 2
    assert [r["step"] for r in read_log(tmp_path / "run") if r.get("skipped_nonfinite")] == [2]


def test_no_host_reads_between_log_steps(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Steps 1–3 of 4 (log every 4) read nothing back from the device: no .item(), .tolist(),
    float(), int() or bool() of a tensor, the stop flag not polled; step 4 logs them all."""
    reads = [0]
    for name in ("item", "tolist", "__float__", "__int__", "__bool__"):
        original = getattr(torch.Tensor, name)

        def counted(self: torch.Tensor, *args: Any, _original: Any = original, **kwargs: Any) -> Any:
            reads[0] += 1
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)
    at_step: list[int] = []
    tiny_run(
        tmp_path / "run", 4, poison=(2,), on_step=lambda: at_step.append(reads[0]), log_every=4, save_every=4
    )
    assert at_step[0] == at_step[1] == at_step[2] == at_step[3], at_step  # steps 1, 2 and 3 (NaN, skipped)
    assert reads[0] > at_step[3]  # the log step reads
    (record,) = [r for r in read_log(tmp_path / "run") if "loss" in r]
    assert record["step"] == 4 and record["skipped_nonfinite"] == 1 and np.isfinite(record["grad_norm"])


def test_logged_throughput_waits_for_the_device_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A log step reads the scalars back (waiting for the queued device work) before it times the
    window, so frames/s counts the device's time too, not only the time to queue the steps."""
    import wm_video.train.session as session_module

    events: list[str] = []
    tolist, throughput = torch.Tensor.tolist, session_module.throughput

    def read(self: torch.Tensor) -> Any:
        events.append("read")
        return tolist(self)

    def rates(*args: Any, **kwargs: Any) -> dict[str, float]:
        events.append("rates")
        return throughput(*args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "tolist", read)
    monkeypatch.setattr(session_module, "throughput", rates)
    tiny_run(tmp_path / "run", 4, log_every=2, save_every=4)
    assert [e for e in events if e in ("read", "rates")][:4] == ["read", "rates", "read", "rates"], events


def test_a_compiled_step_trains_as_the_eager_one(tmp_path: Path) -> None:
    """torch.compile (inductor) on the step; its random draws come from torch's generator as in eager
    mode. About 10 s with inductor's cache warm, up to a minute cold on a busy 2-core CPU."""
    eager = tiny_run(tmp_path / "eager", 3, log_every=1)
    compiled = tiny_run(tmp_path / "compiled", 3, log_every=1, compile=True)
    assert compiled.session.run_config["session"]["compile"] is True
    np.testing.assert_allclose(compiled.losses, eager.losses, rtol=1e-5)
    for step in (1, 2, 3):
        a, b = eager.weights(step), compiled.weights(step)
        for key in a:
            torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)


def test_the_prefetcher_keeps_order_sampler_states_and_errors() -> None:
    counter = iter(range(100))
    state = {"position": 0}

    def draw() -> dict[str, torch.Tensor]:
        value = next(counter)
        state["position"] = value + 1
        if value == 3:
            raise ValueError("bad clip")
        return {"x": torch.tensor([value])}

    prefetch = Prefetcher(draw, lambda: dict(state), count=10, device=torch.device("cpu"))
    for expected in range(3):
        batch, after = prefetch.next()
        assert int(batch["x"]) == expected and after == {"position": expected + 1}
    with pytest.raises(ValueError, match="bad clip"):
        prefetch.next()
    prefetch.close()
    bounded = Prefetcher(lambda: {"x": torch.zeros(1)}, dict, count=2, device=torch.device("cpu"))
    bounded.next(), bounded.next()
    bounded._thread.join(timeout=10)
    assert not bounded._thread.is_alive()  # drew its 2 batches and stopped
    bounded.close()


def test_weight_decay_skips_positions_biases_and_norms(tmp_path: Path) -> None:
    from conftest import SPACE

    options = SessionOptions(out=tmp_path, weight_decay=0.1)
    tokenizer = VideoTokenizer(MICRO_TOKENIZER)
    dynamics = DynamicsModel(dynamics_config("tiny", MICRO_TOKENIZER, SPACE, dim=32, heads=2))
    for model in (tokenizer, dynamics):
        decay, no_decay = adamw(model, options).param_groups
        assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
        names = {id(p): n for n, p in model.named_parameters()}
        decayed = {names[id(p)] for p in decay["params"]}
        kept = {names[id(p)] for p in no_decay["params"]}
        assert decayed | kept == set(names.values()) and not decayed & kept
        assert all(n.endswith("weight") and "norm" not in n for n in decayed)
        assert all(n.endswith(("bias", "_pos")) or "norm" in n for n in kept), kept
    dynamics_kept = {n for n, p in dynamics.named_parameters() if not n.endswith("weight")}
    assert {"trunk_pos", "head_pos", "trunk.time_bias"} <= dynamics_kept
    assert {"encoder_pos", "decoder_pos", "encoder.time_bias"} <= {n for n, _ in tokenizer.named_parameters()}


def test_mfu_counts_matmul_weights_only() -> None:
    from conftest import SPACE

    assert matmul_parameters(nn.Sequential(nn.Embedding(100, 8), nn.Linear(8, 4), nn.LayerNorm(4))) == 32
    dynamics = DynamicsModel(dynamics_config("tiny", MICRO_TOKENIZER, SPACE, dim=32, heads=2))
    tables = dynamics.token_embed.weight.numel() + dynamics.head_embed.weight.numel()
    everything = sum(p.numel() for p in dynamics.parameters())
    assert matmul_parameters(dynamics) < everything - tables


SAVE_FAILS_ON_RANK_0 = """
import sys
from pathlib import Path

import torch.distributed as dist

import wm_video.train.session as session
from wm_video.train.tokenizer import main

def save_fails(*args, **kwargs):
    if dist.get_rank() == 0:
        raise RuntimeError("disk on fire")

session.save_checkpoint = save_fails
rank = int(__import__("os").environ["RANK"])
try:
    main(sys.argv[2:])
except BaseException as error:
    Path(sys.argv[1], f"rank{rank}.txt").write_text(f"{type(error).__name__}: {error}")
    raise
"""


def test_a_failed_save_on_rank_0_raises_on_every_rank(training_data: TrainingData, tmp_path: Path) -> None:
    """Bug 3 of issue 17: only an InputError used to reach the other ranks; any other error left them
    waiting at the next collective. Each rank writes the error it raised."""
    script = tmp_path / "save_fails.py"
    script.write_text(SAVE_FAILS_ON_RANK_0)
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script),
        str(tmp_path), "--data", str(training_data.data), "--out", str(tmp_path / "run"), "--clip-len", "3",
        "--max-steps", "2", "--save-every", "1", "--batch-size", "2", "--eval-every", "0", "--no-progress",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode != 0
    assert (tmp_path / "rank0.txt").read_text() == "RuntimeError: disk on fire"
    assert (tmp_path / "rank1.txt").read_text() == (
        "RuntimeError: the main process failed to save step 1: RuntimeError: disk on fire"
    )


def test_the_other_ranks_hear_a_user_facing_failure_of_the_main_process_as_its_one_line(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """One mechanism for the run-folder lock and the save (issues 17 and 19): the main process raises
    its own error; the others a full disk's one line (an InputError, not a RuntimeError and a
    traceback), and a RuntimeError naming any other error."""
    import wm_video.train.session as session_module

    sent: list[list[Any]] = []

    def broadcast(objects: list[Any], from_process: int) -> None:  # rank 0 sends, then rank 1 receives
        if sent:
            objects[:] = sent.pop()
        else:
            sent.append(list(objects))

    monkeypatch.setattr(session_module, "broadcast_object_list", broadcast)
    main, other = TrainingSession.__new__(TrainingSession), TrainingSession.__new__(TrainingSession)
    main.world_size = other.world_size = 2

    def disk_full() -> None:
        raise OSError(errno.ENOSPC, "No space left on device", "/runs/a/log.jsonl")

    def bug() -> None:
        raise ValueError("a bug")

    with pytest.raises(OSError):
        main._on_every_rank(disk_full, "to save step 3")
    with pytest.raises(InputError, match="^/runs/a/log.jsonl: disk full"):
        other._on_every_rank(None, "to save step 3")
    with pytest.raises(ValueError, match="a bug"):
        main._on_every_rank(bug, "to lock the run folder")
    with pytest.raises(
        RuntimeError, match="^the main process failed to lock the run folder: ValueError: a bug$"
    ):
        other._on_every_rank(None, "to lock the run folder")
    main._on_every_rank(lambda: None, "to save step 4")
    other._on_every_rank(None, "to save step 4")  # nothing failed: nothing raised
