"""``wm-video bench env``: frames/s of a :class:`~wm_video.envs.WorldVectorEnv` at several numbers of worlds.

One vector env per count, all made up front; the counts are timed in turns (``repeats`` rounds,
each timing ``steps`` steps of every count), so that a change in the machine's load touches every
count alike. A timed step is the whole ``env.step``: the world's step (dynamics and decoding), the
reward function, the frame copies. Frames/s = envs × 1000 / median ms per step. Actions are random
(the env's action space, seeded). The load average before and after is printed beside the figures.
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from wm_video.bench.tokenizer import FrameTiming


@dataclass(frozen=True)
class EnvRow:
    envs: int
    step: FrameTiming  # one env.step of all the worlds

    @property
    def frames_per_second(self) -> float:
        return self.envs * 1000.0 / self.step.median_ms


@dataclass(frozen=True)
class EnvBenchResult:
    world: str
    device: str
    threads: int
    rows: list[EnvRow]
    load_before: tuple[float, float, float]
    load_after: tuple[float, float, float]
    cpu: str

    def format(self) -> str:
        lines = [
            f"world {self.world} on {self.device} ({self.cpu}), {self.threads} torch thread(s)",
            f"{'envs':>5}{'median ms/step':>16}{'p10':>9}{'p90':>9}{'frames/s':>11}",
        ]
        for row in self.rows:
            s = row.step
            lines.append(
                f"{row.envs:>5}{s.median_ms:>16.1f}{s.p10_ms:>9.1f}{s.p90_ms:>9.1f}{row.frames_per_second:>11.1f}"
            )
        before, after = (" ".join(f"{x:.2f}" for x in load) for load in (self.load_before, self.load_after))
        lines.append(f"load average (1, 5, 15 min) before: {before}; after: {after}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for row, out in zip(self.rows, data["rows"], strict=True):
            out["frames_per_second"] = row.frames_per_second
        return data


def bench_envs(
    *,
    checkpoint: Path | None = None,
    counts: Sequence[int] = (1, 8, 32),
    steps: int = 20,
    repeats: int = 3,
    warmup: int = 10,
    device: str = "cpu",
    reward: str | Path | None = None,
    progress: bool = True,
) -> EnvBenchResult:
    """Median frames/s of ``WorldVectorEnv(n)`` for each n of ``counts`` (see the module docstring)."""
    import torch

    from wm_video.envs import WorldVectorEnv

    load_before = os.getloadavg()
    envs = {n: WorldVectorEnv(n, checkpoint, reward=reward, device=device) for n in counts}
    seconds: dict[int, list[float]] = {n: [] for n in counts}
    for n, env in envs.items():
        env.reset(seed=0)
        env.action_space.seed(n)
        for _ in range(warmup):
            env.step(env.action_space.sample())
    total = repeats * len(counts) * steps
    with tqdm(total=total, desc="vector env steps", disable=not progress, leave=False) as bar:
        for _ in range(repeats):
            for n, env in envs.items():
                for _ in range(steps):
                    actions = env.action_space.sample()
                    started = time.perf_counter()
                    env.step(actions)
                    seconds[n].append(time.perf_counter() - started)
                    bar.update(1)
    world = next(iter(envs.values())).world
    label = str(world.meta.get("checkpoint") or "a given world")
    rows = [EnvRow(n, FrameTiming.from_seconds(seconds[n])) for n in counts]
    return EnvBenchResult(
        label,
        device,
        torch.get_num_threads(),
        rows,
        tuple(load_before),  # type: ignore[arg-type]
        tuple(os.getloadavg()),  # type: ignore[arg-type]
        platform.processor() or platform.machine(),
    )
