"""Live evaluation on the real ViZDoom engine: deterministic live episodes, loop closure with a
measured full turn, and `wm-video eval --live` end to end with a tiny random model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from wm_video.checkpoint import save_checkpoint
from wm_video.cli import main as cli_main
from wm_video.data.video import VideoSettings
from wm_video.data.writer import DatasetWriter
from wm_video.dynamics import DynamicsConfig, DynamicsModel
from wm_video.eval.clips import EngineSpec, collect_live
from wm_video.eval.loops import LoopConfig, loop_closure
from wm_video.sources.vizdoom import ACTION_SPACE
from wm_video.tokenizer import TokenizerConfig, VideoTokenizer

pytest.importorskip("vizdoom")

TOKENIZER = TokenizerConfig(
    image_size=32, patch_size=8, dim=32, heads=2, encoder_layers=1, decoder_layers=1, temporal_window=3
)
ENGINE = EngineSpec("vizdoom", "my_way_home", 32)
NAMES = ACTION_SPACE.names


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_models() -> tuple[VideoTokenizer, DynamicsModel]:
    torch.manual_seed(0)
    config = DynamicsConfig(
        grid_size=TOKENIZER.grid_size,
        levels=TOKENIZER.levels,
        action_names=NAMES,
        action_buttons=len(NAMES),
        dim=32,
        heads=2,
        trunk_layers=1,
        head_layers=1,
        context_frames=3,
    )
    return VideoTokenizer(TOKENIZER).eval(), DynamicsModel(config).eval()


def test_live_episodes_are_deterministic_for_a_seed() -> None:
    first = collect_live(ENGINE, "explore", episodes=2, length=6, seed=3, action_names=NAMES)
    again = collect_live(ENGINE, "explore", episodes=2, length=6, seed=3, action_names=NAMES)
    other = collect_live(ENGINE, "explore", episodes=2, length=6, seed=5, action_names=NAMES)
    assert first.frames.shape == (2, 6, 32, 32, 3) and first.actions.shape == (2, 6, 8)
    assert np.array_equal(first.frames, again.frames) and np.array_equal(first.actions, again.actions)
    assert not np.array_equal(first.frames, other.frames)
    assert first.episodes.tolist() == [3, 4] and "live vizdoom:my_way_home" in first.origin


def test_loop_closure_measures_a_full_turn_and_scores_engine_and_model() -> None:
    config = LoopConfig(starts=2, warmup=12, settle=8, steps=4, max_circle_steps=70)
    reports = loop_closure({"model": tiny_models()}, ENGINE, context=3, seed=0, config=config)
    report = reports["model"]
    assert 45 <= (report.circle_steps or 0) <= 60  # ~7° a step at frame skip 2
    assert set(report.programs) == {"circle", "turn_back", "forward_back"}
    turn = report.programs["turn_back"]
    assert turn.steps == 4 + 8 + 4 + 8
    assert (
        turn.engine_psnr > 25 and turn.engine_psnr > turn.model_psnr
    )  # the engine comes back; noise does not
    assert report.frames["circle"].shape == (2, 3, 32, 32, 3)
    assert len(turn.per_start_model_psnr) == 2


def test_eval_live_writes_a_report_with_loop_closure(tmp_path: Path) -> None:
    clips = collect_live(ENGINE, "explore", episodes=3, length=20, seed=100, action_names=NAMES)
    with DatasetWriter(
        tmp_path / "ds", fps=17.5, action_space=ACTION_SPACE, frame_shape=(32, 32, 3), task="test",
        video=VideoSettings(codec="lossless"),
    ) as writer:  # fmt: skip
        for frames, actions in zip(clips.frames, clips.actions, strict=True):
            writer.write_episode(frames, actions)
    tokenizer, dynamics = tiny_models()
    save_checkpoint(
        tmp_path / "tok",
        kind="tokenizer",
        config=TOKENIZER.to_dict(),
        step=0,
        weights=tokenizer.state_dict(),
        keep=1,
    )
    meta = {"data": str(tmp_path / "ds"), "tokenizer": str(tmp_path / "tok")}
    save_checkpoint(
        tmp_path / "run", kind="dynamics", config=dynamics.config.to_dict(), step=1,
        weights=dynamics.state_dict(), meta=meta, keep=1,
    )  # fmt: skip
    out = tmp_path / "report"
    argv = [
        "eval", "--checkpoint", str(tmp_path / "run"), "--out", str(out), "--live", "vizdoom:my_way_home",
        "--clips", "2", "--context", "3", "--horizon", "3", "--soak", "0", "--idm-steps", "10",
    ]  # fmt: skip
    assert cli_main(argv) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["clips_from"].startswith("live vizdoom:my_way_home") and metrics["clip_episodes"] == [0, 1]
    loops = metrics["models"]["model"]["loop_closure"]
    assert loops["engine"] == "vizdoom:my_way_home" and set(loops["programs"]) == {
        "circle",
        "turn_back",
        "forward_back",
    }
    assert (
        metrics["idm"]["real_heldout"] is None and "rollout" in metrics["models"]["model"]["action_accuracy"]
    )
    assert (out / "loops.png").is_file() and "## Loop closure" in (out / "report.md").read_text()
