"""Loop closure: action programs that come back to where they began, on the engine and the model.

A consistent world remembers: turn a full circle and the wall you faced is there again; walk
forward N steps and back N and the room looks as before. Each program runs from the same real
start on the real engine (the reference: walls, bob and doors make even the engine imperfect)
and in the model, and the final frame is compared with the start frame (PSNR, SSIM).

Design choices:
- Starts: episode i is reset with ``seed + i`` and played ``warmup`` frames under the
  exploration policy, the last ``settle`` of them pressing nothing (Doom's player slides on
  after a key is released; a program must start from a standing player); its last ``context``
  frames are the model's context, the last one is the start frame. All starts are stepped
  together in one batched world.
- Programs (built from button names, so any FPS-like action space works):
  ``circle`` holds a turn button for one full turn; ``turn_back`` turns left K then right K;
  ``forward_back`` walks forward K then back K.
- A full turn is measured, not assumed: the engine turns from the first start for up to
  ``max_circle_steps`` from every start and the step whose frame is most like the start on
  average (after the first ``min_circle_steps``) is one turn. (ViZDoom at frame skip 2 turns ~7° a step: ~52 steps.)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from wm_video.actions import ActionSpace
from wm_video.dynamics import DynamicsModel
from wm_video.engine import World
from wm_video.errors import InputError
from wm_video.eval.clips import EngineSpec, check_engine_actions, check_stop
from wm_video.eval.rollouts import frame_scores, rollout
from wm_video.sources import Source
from wm_video.sources.policies import ExplorationPolicy
from wm_video.tokenizer import VideoTokenizer


@dataclass(frozen=True)
class LoopConfig:
    starts: int = 4  # start positions (episodes) per program
    warmup: int = 24  # frames before the start (≥ the model's context): exploration, then settling
    settle: int = 8  # the last warm-up frames press nothing, so the player stands still at the start
    steps: int = 12  # K of turn_back and forward_back
    min_circle_steps: int = 8
    max_circle_steps: int = 100

    def __post_init__(self) -> None:
        if (
            min(self.starts, self.warmup, self.steps, self.min_circle_steps) < 1
            or not 0 <= self.settle < self.warmup
        ):
            raise InputError(
                f"loop starts, warmup, steps and min_circle_steps must be ≥ 1 and 0 ≤ settle < warmup; got {self}"
            )
        if self.max_circle_steps <= self.min_circle_steps:
            raise InputError("max_circle_steps must exceed min_circle_steps")


def _repeat(space: ActionSpace, buttons: list[str], count: int) -> list[np.ndarray]:
    return [space.from_pressed(buttons) for _ in range(count)]


def build_programs(
    space: ActionSpace, steps: int, circle_steps: int | None, pause: int = 0
) -> dict[str, np.ndarray]:
    """Name → action rows (S, A) for the programs this action space allows; each phase is followed
    by ``pause`` rows pressing nothing (Doom keeps sliding after a key is released, and turns slowly
    for the first tics of a turn: a pause makes "left K, right K" and "forward K, back K" symmetric)."""
    names = set(space.buttons)
    rest = _repeat(space, [], pause)
    programs: dict[str, np.ndarray] = {}
    if circle_steps and "turn_left" in names:
        programs["circle"] = np.stack(_repeat(space, ["turn_left"], circle_steps) + rest)
    if {"turn_left", "turn_right"} <= names:
        left, right = _repeat(space, ["turn_left"], steps), _repeat(space, ["turn_right"], steps)
        programs["turn_back"] = np.stack(left + rest + right + rest)
    if {"forward", "back"} <= names:
        forward, back = _repeat(space, ["forward"], steps), _repeat(space, ["back"], steps)
        programs["forward_back"] = np.stack(forward + rest + back + rest)
    return programs


def warm_start(source: Source, seed: int, config: LoopConfig) -> tuple[np.ndarray, np.ndarray]:
    """Frames (warmup, H, W, 3) and actions (warmup, A) from ``seed``: exploration, then ``settle``
    frames pressing nothing (momentum dies out, so a program starts from a standing player)."""
    policy = ExplorationPolicy(source.action_space)
    frame = source.reset(seed)
    policy.reset(seed)
    frames, actions, warmup = [frame], [], config.warmup
    for t in range(warmup - 1):
        action = policy.act(frame) if t < warmup - 1 - config.settle else source.action_space.zeros()
        result = source.step(action)
        if result.done:
            raise InputError(f"the engine's episode with seed {seed} ended during the {warmup}-frame warm-up")
        frame = result.frame
        frames.append(frame)
        actions.append(action)
    actions.append(source.action_space.zeros())
    return np.stack(frames), np.stack(actions)


def _play(source: Source, program: np.ndarray) -> np.ndarray:
    """Apply the program from the engine's current state → frames after each action (S, H, W, 3)."""
    out = []
    for action in program:
        out.append(source.step(action).frame)  # an episode that ends repeats its last frame
    return np.stack(out)


def measure_circle(
    source: Source, seed: int, config: LoopConfig, stop: Callable[[], bool] | None
) -> int | None:
    """Steps of ``turn_left`` that bring the engine's view back to the start (None without the button):
    the step whose frame is most like the start frame, by PSNR averaged over every start."""
    if "turn_left" not in source.action_space.buttons:
        return None
    program = np.stack(_repeat(source.action_space, ["turn_left"], config.max_circle_steps))
    curves = []
    for i in range(config.starts):
        check_stop(stop)
        start = warm_start(source, seed + i, config)[0][-1]
        turned = _play(source, program)
        curves.append(frame_scores(turned, np.broadcast_to(start, turned.shape).copy())[0])
    candidates = np.mean(curves, axis=0)[config.min_circle_steps - 1 :]
    return int(np.argmax(candidates)) + config.min_circle_steps


@dataclass
class LoopResult:
    steps: int  # actions in the program
    engine_psnr: float  # dB, the engine's final frame vs the start frame (mean over starts)
    engine_ssim: float
    model_psnr: float  # dB, the model's final frame vs the real start frame
    model_ssim: float
    model_vs_engine_psnr: float  # dB, the model's final frame vs the engine's
    per_start_model_psnr: list[float] = field(default_factory=list)


@dataclass
class LoopReport:
    engine: str
    starts: int
    circle_steps: int | None
    programs: dict[str, LoopResult]
    frames: dict[str, np.ndarray] = field(
        repr=False, default_factory=dict
    )  # name → (B, 3, H, W, 3) start|engine|model

    def to_dict(self) -> dict[str, Any]:
        return {
            "engine": self.engine,
            "starts": self.starts,
            "circle_steps": self.circle_steps,
            "programs": {name: asdict(result) for name, result in self.programs.items()},
        }


@torch.inference_mode()
def loop_closure(
    worlds: dict[str, tuple[VideoTokenizer, DynamicsModel]],
    engine: EngineSpec,
    *,
    context: int,
    seed: int,
    config: LoopConfig | None = None,
    stop: Callable[[], bool] | None = None,
) -> dict[str, LoopReport]:
    """Run every program from ``config.starts`` real starts on the engine and in each named model."""
    config = config or LoopConfig()
    if config.warmup < context:
        raise InputError(f"loop warm-up ({config.warmup} frames) must cover the {context} context frames")
    first = next(iter(worlds.values()))[1]
    with engine.open() as source:
        check_engine_actions(source, first.config.action_names, f"loop closure on {engine}")
        circle = measure_circle(source, seed, config, stop)
        programs = build_programs(source.action_space, config.steps, circle, config.settle)
        starts = [warm_start(source, seed + i, config) for i in range(config.starts)]
        context_frames = np.stack([f[-context:] for f, _ in starts])  # (B, C, H, W, 3)
        context_actions = np.stack([a[-context:-1] for _, a in starts])  # (B, C − 1, A)
        history = np.stack([f[:-context] for f, _ in starts])  # (B, warm-up − C, H, W, 3), encoder only
        start_frames = context_frames[:, -1]
        engine_final: dict[str, np.ndarray] = {}
        for name, program in programs.items():
            finals = []
            for i in range(config.starts):
                check_stop(stop)
                warm_start(source, seed + i, config)
                finals.append(_play(source, program)[-1])
            engine_final[name] = np.stack(finals)  # (B, H, W, 3)
    reports = {}
    for label, (tokenizer, dynamics) in worlds.items():
        world = World(tokenizer, dynamics, batch_size=config.starts, seed=seed)
        results, frames = {}, {}
        for name, program in programs.items():
            batch_program = np.broadcast_to(program, (config.starts, *program.shape)).copy()
            model_final = rollout(
                world, context_frames, context_actions, batch_program, seed=seed, history=history, stop=stop
            )[:, -1]
            engine_psnr, engine_ssim = frame_scores(engine_final[name], start_frames)
            model_psnr, model_ssim = frame_scores(model_final, start_frames)
            versus, _ = frame_scores(model_final, engine_final[name])
            results[name] = LoopResult(
                len(program),
                float(engine_psnr.mean()),
                float(engine_ssim.mean()),
                float(model_psnr.mean()),
                float(model_ssim.mean()),
                float(versus.mean()),
                model_psnr.tolist(),
            )
            frames[name] = np.stack((start_frames, engine_final[name], model_final), 1)
        reports[label] = LoopReport(str(engine), config.starts, circle, results, frames)
    return reports
