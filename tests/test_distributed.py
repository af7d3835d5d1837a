"""Both training programs under torchrun with 2 CPU processes (gloo): they train, save, resume,
the ranks draw different clips, and a resumed 2-process run is bit-identical to an uninterrupted one.

Real launches (``python -m torch.distributed.run``, the module behind ``torchrun``): ~10 s each on
a quiet 2-core CPU, mostly the imports of three Python processes.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import torch
from conftest import MICRO_TOKENIZER, TrainingData
from safetensors.torch import load_file

from wm_video.checkpoint import LAST_POINTER, load_checkpoint, resolve_checkpoint
from wm_video.data.sampler import CLIP_TRACE_ENV
from wm_video.train.common import read_log

TOKENIZER = MICRO_TOKENIZER
BATCH = 2


def torchrun(program: str, trace: Path, *args: str) -> subprocess.CompletedProcess[str]:
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "-m", f"wm_video.train.{program}", *args,
        "--batch-size", str(BATCH), "--log-every", "1", "--eval-every", "0", "--no-progress",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled", CLIP_TRACE_ENV: str(trace)}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def drawn(trace: Path, rank: int) -> list[tuple[int, int]]:
    lines = (trace / f"clips-rank{rank}.txt").read_text().split("\n")
    return [(int(e), int(s)) for e, s in (line.split() for line in lines if line)]


def test_tokenizer_trains_saves_and_resumes_on_two_ranks(training_data: TrainingData, tmp_path: Path) -> None:
    """With the adversarial loss from step 1: the discriminator is prepared (DDP) like the model,
    trains on both ranks, and is saved and restored with the run."""
    run, trace = tmp_path / "run", tmp_path / "trace"
    args = ["--data", str(training_data.data), "--out", str(run), "--clip-len", "3", "--save-every", "1",
            "--adversarial-weight", "0.5", "--adversarial-start", "1"]  # fmt: skip
    torchrun("tokenizer", trace, *args, "--max-steps", "2")
    checkpoint = load_checkpoint(run, kind="tokenizer")
    assert checkpoint.step == 2 and checkpoint.meta["run"]["world_size"] == 2
    assert "discriminator" in checkpoint.training_state
    assert [("discriminator_loss" in r) for r in read_log(run) if "loss" in r] == [False, True]
    assert len(checkpoint.training_state["rng"]) == 2  # one RNG state per rank
    assert checkpoint.training_state["world_size"] == 2
    first = [drawn(trace, rank) for rank in (0, 1)]
    assert [len(clips) for clips in first] == [2 * BATCH, 2 * BATCH]
    assert not set(first[0]) & set(first[1]), "the two ranks drew the same clips"

    resumed = torchrun("tokenizer", trace, *args, "--max-steps", "3")
    assert "resuming" in resumed.stdout and "from step 2" in resumed.stdout
    assert load_checkpoint(run).step == 3
    assert [r["step"] for r in read_log(run) if "loss" in r] == [1, 2, 3]  # only rank 0 logs
    assert [len(drawn(trace, rank)) for rank in (0, 1)] == [3 * BATCH, 3 * BATCH]


def test_dynamics_resumed_on_two_ranks_is_bit_identical(training_data: TrainingData, tmp_path: Path) -> None:
    """4 steps straight == the step-2 checkpoint of that run resumed for 2 more steps, on 2 ranks:
    weights, EMA, optimizer, sampler and both ranks' RNG states (the corruption noise draws from
    them, differently on each rank)."""
    straight, resumed, trace = tmp_path / "straight", tmp_path / "resumed", tmp_path / "trace"
    args = ["--data", str(training_data.data), "--tokenizer", str(training_data.tokenizer), "--clip-len", "4"]
    args += ["--max-steps", "4", "--save-every", "2", "--warmup-steps", "2"]
    torchrun("dynamics", trace, *args, "--out", str(straight))
    assert resolve_checkpoint(straight).name == "step-00000004"
    clips = [drawn(trace, rank) for rank in (0, 1)]
    assert [len(c) for c in clips] == [4 * BATCH, 4 * BATCH]
    assert not set(clips[0]) & set(clips[1]), "the two ranks drew the same clips"
    rngs = load_checkpoint(straight).training_state["rng"]
    assert not torch.equal(rngs[0]["torch"], rngs[1]["torch"]), "the ranks share one RNG stream"

    shutil.copytree(straight, resumed)  # as if stopped after step 2: drop step 4
    shutil.rmtree(resumed / "checkpoints" / "step-00000004")
    (resumed / "checkpoints" / LAST_POINTER).write_text("step-00000002\n")
    done = torchrun("dynamics", tmp_path / "trace2", *args, "--out", str(resumed))
    assert "from step 2" in done.stdout
    assert drawn(tmp_path / "trace2", 1) == clips[1][2 * BATCH :]  # the sampler continued in place
    a_dir, b_dir = resolve_checkpoint(straight), resolve_checkpoint(resumed)
    assert a_dir.name == b_dir.name == "step-00000004"
    for name in ("model.safetensors", "ema.safetensors", "training.safetensors"):
        a, b = load_file(a_dir / name), load_file(b_dir / name)
        assert a.keys() == b.keys()
        different = [key for key in a if not torch.equal(a[key], b[key])]
        assert not different, f"{name}: {different}"
