"""'What a player sees' inside the consistency run, on a tiny ViZDoom dataset with ground truth and
tiny random checkpoints: every figure is computed for the model and the baseline, the section
comes first in report.md, objects.png is drawn; evaluating training episodes is flagged."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from conftest import MICRO_TOKENIZER, save_random_tokenizer

from wm_video.checkpoint import save_checkpoint
from wm_video.collect import collect
from wm_video.data.cache import load_cache
from wm_video.data.video import VideoSettings
from wm_video.dynamics import DynamicsConfig, DynamicsModel
from wm_video.eval.consistency import ConsistencyConfig, load_models, run_consistency
from wm_video.eval.idm import IDMConfig
from wm_video.eval.loops import LoopConfig
from wm_video.eval.objects import ObjectConfig
from wm_video.eval.player import PlayerConfig
from wm_video.eval.report import write_report
from wm_video.eval.revisits import RevisitConfig
from wm_video.sources.vizdoom import ACTION_SPACE

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path]]:
    root = tmp_path_factory.mktemp("player")
    script = root / "turn_and_fire.jsonl"  # left and back right, attack held half of the time: monsters,
    turns = ["turn_left", "turn_right"]  # flashes, and views seen again
    lines = [{"buttons": [turns[(t // 6) % 2]] + ["attack"] * ((t // 3) % 2)} for t in range(48)]
    script.write_text("".join(json.dumps(line) + "\n" for line in lines))
    data = root / "ds"
    collect(
        data, scenario="defend_the_center", episodes=4, steps=48, seed=0, size=32, workers=1, policy=str(script),
        progress=False, video=VideoSettings(codec="lossless"),
    )  # fmt: skip
    save_random_tokenizer(root / "tok", MICRO_TOKENIZER)
    config = DynamicsConfig(
        grid_size=MICRO_TOKENIZER.grid_size, levels=MICRO_TOKENIZER.levels, action_names=ACTION_SPACE.names,
        action_buttons=len(ACTION_SPACE.buttons), dim=32, heads=2, trunk_layers=1, head_layers=1, context_frames=3,
    )  # fmt: skip
    meta = {"data": str(data), "tokenizer": str(root / "tok"), "holdout": 0.25}
    runs = []
    for name, seed in (("model", 1), ("baseline", 2)):
        torch.manual_seed(seed)
        save_checkpoint(
            root / name, kind="dynamics", config=config.to_dict(), step=seed,
            weights=DynamicsModel(config).state_dict(), meta=meta, keep=1,
        )  # fmt: skip
        runs.append(root / name)
    return data, runs


CONFIG = ConsistencyConfig(
    clips=2,
    context=2,
    horizon=6,
    soak=100,
    skip=frozenset({"actions", "loops"}),  # their own tests cover them
    idm=IDMConfig(steps=20),
    loops=LoopConfig(starts=2, warmup=8, settle=2, steps=3, max_circle_steps=12),
    player=PlayerConfig(
        persistence_clips=2,
        revisits=RevisitConfig(min_gap=4, max_gap=20, away_angle=30.0),
        objects=ObjectConfig(width=8, steps=30, batch_size=8, min_train_cells=20, tiles=(3,)),  # run: patch
        soak_every=1,
        min_recall=0.0,  # 30 steps teach the object model little
    ),
)


def test_every_figure_for_model_and_baseline(world, tmp_path: Path) -> None:
    data, (model, baseline) = world
    models = load_models(model, baseline, tokenizer=None, device="cpu")
    cache = load_cache(data, size=32, progress=False)
    result = run_consistency(models, cache, data, 0.25, CONFIG, log=lambda line: None)
    setup = result.player
    assert setup is not None and result.player_skipped is None and not result.contaminated
    assert "monster" in setup.classes and "flash" in setup.classes
    patch = models[0].tokenizer.config.patch_size  # tile artefacts at the tokenizer's patch size
    assert setup.objects.model.config.tiles == (patch,) and setup.tile_frames["frames"] > 0
    assert setup.held is not None and setup.held.frames.shape[:2] == (2, 6)
    for r in result.results:
        view = r.player
        assert view is not None
        assert set(view.presence["monster"]) == {
            "generated",
            "real (object model)",
            "real (labels)",
            "tokenizer",
        }
        assert set(view.appearances["monster"]) == {"generated", "tokenizer"}
        assert len(view.persistence["monster"].tokenizer) == len(view.persistence["monster"].steps)
        assert set(view.teacher_iou["monster"]) == {"generated", "real", "tokenizer"}
        assert set(view.flash_held) == {
            "model",
            "engine (labels)",
            "engine (object model)",
            "engine through the tokenizer",
        }
        assert view.flash_held["engine (labels)"].flash_rate > 0  # the engine fires while attack is held
        assert view.texture is not None and view.texture.steps == [1, 4, 6]
        assert {"generated", "tokenizer", "real", "real min", "real max"} <= set(view.frechet)
        assert view.frechet["real min"] <= view.frechet["real"] <= view.frechet["real max"]
        assert view.soak is not None and view.soak.observed == 100 and view.soak.segments == [0]
        assert np.isfinite(view.appearances["monster"]["generated"])
        assert view.revisits is not None and view.revisits.revisits == len(setup.revisits) > 1
        assert np.isfinite(view.revisits.model_psnr) and np.isfinite(view.revisits.floor_psnr)
        persisted = view.persistence["monster"]  # the qualifying drift clips, topped up with rollouts
        assert persisted.clips == setup.persistence_drift.sum() + len(setup.persistence_starts) >= 1
    out = tmp_path / "report"
    report = write_report(result, out).read_text()
    assert report.index("## What a player sees") < report.index("## Headline")
    for text in (
        "### Objects",
        "### Shooting",
        "### Texture",
        "### Distribution distance",
        "### Soak, per 1,000 frames",
        f"grid-aligned {patch}×{patch}-pixel tiles",
    ):
        assert text in report, text
    metrics = json.loads((out / "metrics.json").read_text())["player"]
    assert (
        set(metrics["models"]) == {"model", "baseline"} and metrics["object_model"]["train_frames"] == 3 * 48
    )
    assert metrics["object_model"]["tile_frames"]["frames"] == setup.tile_frames["frames"]
    image = cv2.imread(str(out / "objects.png"))
    assert image is not None and image.shape[0] > 0


def test_evaluating_training_episodes_is_flagged(world, tmp_path: Path) -> None:
    data, (model, _) = world
    models = load_models(model, None, tokenizer=None, device="cpu")
    cache = load_cache(data, size=32, progress=False)
    config = replace(CONFIG, episodes=(0, 3), soak=0, skip=frozenset({"loops", "player"}))  # the IDM runs
    lines: list[str] = []
    result = run_consistency(models, cache, data, 0.25, config, log=lines.append)
    assert result.contaminated == [0]
    assert any("CONTAMINATED" in n and "[0]" in n for n in result.notes)
    assert any(line.startswith("warning: CONTAMINATED") for line in lines)
    assert result.player is None and result.player_skipped == "left out with --skip player"
    blind = replace(
        CONFIG, soak=0, skip=frozenset({"actions", "loops"}), player=replace(CONFIG.player, min_recall=1.01)
    )
    unseen = run_consistency(models, cache, data, 0.25, blind, log=lambda line: None)
    setup = unseen.player
    assert setup is not None and setup.classes == [] and set(setup.sight_real) == {"monster", "flash"}
    assert "not reported, the object model" in write_report(unseen, tmp_path / "blind").read_text()
    assert any(n.startswith("not reported, the object model does not see them") for n in setup.notes)
    report = write_report(result, tmp_path / "report").read_text()
    assert "(CONTAMINATED: the IDM trained on these episodes)" in report and "**CONTAMINATED**" in report
