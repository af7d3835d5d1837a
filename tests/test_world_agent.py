"""The agent example (issue 18): it trains a few iterations inside a tiny world and plays the real engine."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from test_envs import red_ends, tiny_world

from wm_video.envs import WorldVectorEnv
from wm_video.sources.vizdoom import ACTION_SPACE

pytestmark = pytest.mark.usefixtures("one_thread")
EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "world_agent.py"


def load_example():
    spec = importlib.util.spec_from_file_location("world_agent", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_the_agent_example_trains_in_a_world_and_plays_the_real_game() -> None:
    example = load_example()
    envs = WorldVectorEnv(
        3, world=tiny_world(3, space=ACTION_SPACE), action_type="discrete", combinations=example.COMBINATIONS,
        reward=red_ends, start=np.zeros((16, 16, 3), np.uint8), max_steps=5,
    )  # fmt: skip
    torch.manual_seed(0)
    agent = example.Agent(len(example.COMBINATIONS), input_size=16)
    before = [p.detach().clone() for p in agent.parameters()]
    log = example.train_agent(envs, agent, iterations=3, horizon=4, log=lambda line: None)
    assert log.iterations == 3 and log.frames == 3 * 4 * 3 and log.episodes >= 3
    assert any(not torch.equal(a, b) for a, b in zip(before, agent.parameters(), strict=True))
    assert all(math.isnan(r) or math.isfinite(r) for r in log.mean_return)
    scores = example.compare_in_real_game(
        agent, ACTION_SPACE, scenario="defend_the_center", size=16, seeds=[1, 2], steps=6
    )
    assert [s.policy for s in scores] == ["agent", "random", "explore"]
    assert all(len(s.kills) == 2 and all(1 <= f <= 6 for f in s.frames) for s in scores)
    assert "kills/episode" in scores[0].summary()
