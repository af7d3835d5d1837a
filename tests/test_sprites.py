"""The sprite check: a paddle and a ball found against the footage's median frame, kept or lost in
a reconstruction, and the player's motion compared with the real engine's from the same state."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from wm_video.collect import collect
from wm_video.data.background import median_frame
from wm_video.data.cache import load_cache
from wm_video.errors import InputError
from wm_video.eval.clips import engine_of_dataset
from wm_video.eval.sprites import (
    GAME_SPRITES,
    SpriteDetector,
    dataset_game,
    displacement_scores,
    held_actions,
    kept,
    replay_branch,
)

PADDLE_COLOUR = (160, 66, 59)


def breakout_like(paddle_x: int | None, ball: tuple[int, int] | None) -> np.ndarray:
    """A 64 px frame: black field, grey walls, a paddle (7×2 px) in rows 57–58 and a one-pixel ball."""
    frame = np.zeros((64, 64, 3), np.uint8)
    frame[:, :3] = frame[:, -3:] = 142
    if paddle_x is not None:
        frame[57:59, paddle_x : paddle_x + 7] = PADDLE_COLOUR
    if ball is not None:
        frame[ball[1], ball[0]] = (140, 51, 65)
    return frame


@pytest.fixture
def detector() -> SpriteDetector:
    return SpriteDetector(breakout_like(None, None), GAME_SPRITES["Breakout"])


def test_finds_the_paddle_and_the_ball(detector: SpriteDetector) -> None:
    paddle, ball = detector.sprites
    frames = np.stack([breakout_like(20, (30, 40)), breakout_like(40, None)])
    np.testing.assert_allclose(detector.position(frames, paddle), [[23.0, 57.5], [43.0, 57.5]])
    np.testing.assert_allclose(detector.position(frames[:1], ball), [[30.0, 40.0]])
    assert detector.present(frames, ball).tolist() == [True, False]
    smear = breakout_like(None, None)
    smear[55:61, 3:61] = 90  # a blur over the whole band is not a paddle
    assert not detector.present(smear, paddle)


def test_kept_means_the_other_frames_sprite_is_close_to_the_real_one(detector: SpriteDetector) -> None:
    real = np.stack([breakout_like(20, (30, 40))] * 5 + [breakout_like(20, None)])
    cloud = breakout_like(20, (30, 40))
    cloud[40, 30] = 60  # the ball's place, dim …
    cloud[36, 34] = cloud[44, 26] = 200  # … and a brighter dot a patch-width away: a tokenizer's hedge
    other = np.stack(
        [
            breakout_like(20, (30, 40)),  # exact
            breakout_like(21, (31, 41)),  # one pixel off: kept
            breakout_like(27, (36, 40)),  # several pixels off: lost
            breakout_like(None, None),  # gone
            cloud,  # a dot near the ball, but the frame's ball is elsewhere: lost
            breakout_like(20, (30, 40)),  # no ball in the real frame: not counted for the ball
        ]
    )
    counts = kept(detector, real, other)
    assert (counts["paddle"].real, counts["paddle"].kept) == (6, 4)
    assert (counts["ball"].real, counts["ball"].kept) == (5, 2)
    assert counts["ball"].rate == 0.4


def test_displacement_scores_compare_where_the_real_sprite_moved() -> None:
    real = np.array([[[10, 0], [14, 0], [18, 0], [18, 0]]], dtype=float)  # moved +4, +4, then still
    generated = np.array([[[10, 0], [13, 0], [np.nan, np.nan], [20, 0]]], dtype=float)  # +3, then vanished
    moving, agrees, real_speed, generated_speed = displacement_scores(real, generated, axis=0)
    assert (moving, agrees, real_speed, generated_speed) == (2, 0.5, 4.0, 3.0)


def test_held_actions_press_one_button() -> None:
    assert held_actions(("left", "right", "fire"), "right", 2).tolist() == [[0, 1, 0], [0, 1, 0]]
    with pytest.raises(InputError, match="not one of the actions"):
        held_actions(("left",), "up", 1)


def test_breakout_paddle_and_ball_follow_the_emulator_ram(tmp_path: Path) -> None:
    """The detector against the ground truth in Breakout's RAM (paddle x at 72, ball x, y at 99, 101),
    on a collected episode replayed on the engine: positions are linear in the RAM values."""
    pytest.importorskip("ale_py")
    collect(tmp_path / "ds", source="atari", scenario="Breakout", episodes=4, steps=150, workers=1, seed=3)
    assert dataset_game(tmp_path / "ds") == "Breakout"
    engine = engine_of_dataset(tmp_path / "ds", 64)
    assert engine is not None and (engine.source, engine.seed) == ("atari", 3)
    cache = load_cache(tmp_path / "ds", size=64, progress=False)
    frames, actions = (np.asarray(a) for a in cache.episode(0))
    # the background: a median over several episodes, so the paddle resting at a wall is not part of it
    detector = SpriteDetector(median_frame(cache, [0, 1, 2, 3]), GAME_SPRITES["Breakout"])
    paddle, ball = detector.sprites
    with engine.open() as source:
        source.reset(engine.seed)
        ram = [source._env.unwrapped.ale.getRAM().copy()]  # type: ignore[attr-defined]
        for action in actions[:-1]:
            source.step(action)
            ram.append(source._env.unwrapped.ale.getRAM().copy())  # type: ignore[attr-defined]
    truth = np.array(ram, dtype=float)
    found = detector.position(frames, paddle)
    assert np.isfinite(found[:, 0]).mean() > 0.95
    fit = np.polyfit(truth[:, 72][np.isfinite(found[:, 0])], found[np.isfinite(found[:, 0]), 0], 1)
    assert fit[0] == pytest.approx(64 / 160, rel=0.05)  # pixels per RAM unit: the screen is 160 wide
    balls = detector.position(frames, ball)
    seen = np.isfinite(balls[:, 0])
    assert seen.sum() > 10
    residual = balls[seen, 1] - np.polyval(np.polyfit(truth[seen, 101], balls[seen, 1], 1), truth[seen, 101])
    assert np.abs(residual).max() < 1.0

    start = 20 + int(np.nanargmax(found[20:140, 0]))  # the real branch, from a frame far from the left wall
    branch = replay_branch(
        engine.open, engine.seed, actions[:start], frames[start], held_actions(cache.action_names, "left", 6)
    )
    assert branch.shape == (7, 64, 64, 3)
    steps = np.diff(detector.position(branch, paddle)[:, 0])
    assert np.nanmin(steps) < -1  # the paddle moves left
    with pytest.raises(InputError, match="does not reproduce"):  # other actions: the paddle is elsewhere
        replay_branch(engine.open, engine.seed, 0 * actions[:start], frames[start], branch[:0])


def test_atari_datasets_record_game_and_frame_skip(tmp_path: Path) -> None:
    meta = tmp_path / "meta"
    meta.mkdir()
    source = {"source": "atari", "game": "ALE/Pong-v5", "size": 64, "frameskip": 3, "seed": 7}
    (meta / "wm_video.json").write_text(json.dumps({"source": source}))
    engine = engine_of_dataset(tmp_path, 64)
    assert engine is not None and (engine.scenario, engine.frame_skip, engine.seed) == ("ALE/Pong-v5", 3, 7)
    assert dataset_game(tmp_path) == "Pong"


def test_eval_sprites_command(tmp_path: Path, capsys: pytest.CaptureFixture[str], one_thread: None) -> None:
    """`wm-video eval sprites` on a tokenizer (reconstructions only) and on a world (motion too, a strip)."""
    pytest.importorskip("ale_py")
    from conftest import MICRO_TOKENIZER, save_random_tokenizer

    from wm_video.checkpoint import save_checkpoint
    from wm_video.cli import main
    from wm_video.dynamics import DynamicsConfig, DynamicsModel
    from wm_video.sources.atari import AtariConfig, AtariSource

    data = tmp_path / "breakout"
    collect(
        data, source="atari", scenario="Breakout", episodes=3, steps=40, workers=1, size=32, progress=False
    )
    tokenizer = save_random_tokenizer(tmp_path / "tokenizer", MICRO_TOKENIZER)
    with AtariSource(AtariConfig(size=32)) as source:
        space = source.action_space
    config = DynamicsConfig(
        dim=32, heads=2, trunk_layers=1, head_layers=1, context_frames=3, grid_size=4,
        levels=MICRO_TOKENIZER.levels, action_names=space.names, action_buttons=len(space.buttons),
    )  # fmt: skip
    save_checkpoint(
        tmp_path / "world", kind="dynamics", config=config.to_dict(), step=1,
        weights=DynamicsModel(config).state_dict(), meta={"tokenizer": str(tokenizer), "data": str(data)},
    )  # fmt: skip
    common = ["--data", str(data), "--threads", "1", "--json", str(tmp_path / "report.json")]
    import cv2

    tokenizer_strip = tmp_path / "tokenizer-strip.png"
    assert (
        main(["eval", "sprites", "--checkpoint", str(tokenizer), *common, "--strip", str(tokenizer_strip)])
        == 0
    )
    out = capsys.readouterr().out
    assert "sprites of Breakout" in out and "kept by the tokenizer" in out and "player motion" not in out
    shown = json.loads((tmp_path / "report.json").read_text())["strip"]
    assert "real above, the tokenizer's reconstructions below" in shown and f"strip: {tokenizer_strip}" in out
    frames = int(shown.split()[0])
    assert 1 <= frames <= 8
    assert cv2.imread(str(tokenizer_strip)).shape[:2] == (
        3 * (2 * 32 + 2),
        3 * (frames * 32 + (frames - 1) * 2),
    )

    strip = tmp_path / "strip.png"
    argv = ["eval", "sprites", "--checkpoint", str(tmp_path / "world"), "--clips", "2", "--horizon", "3"]
    assert main([*argv, *common, "--strip", str(strip)]) == 0
    out = capsys.readouterr().out
    assert "player motion" in out and "left" in out and "right" in out
    report = json.loads((tmp_path / "report.json").read_text())
    assert [m["button"] for m in report["motion"]] == ["left", "right"]
    assert set(report["generated_rates"]) == {"paddle", "ball"}
    assert cv2.imread(str(strip)).shape[0] == 3 * (4 * 32 + 3 * 2)  # 4 rows (real, world per button)

    bad = make_other_dataset(tmp_path / "other")
    assert main(["eval", "sprites", "--checkpoint", str(tokenizer), "--data", str(bad)]) == 2
    assert "name the game with --game" in capsys.readouterr().err


def make_other_dataset(root: Path) -> Path:
    from conftest import make_dataset

    return make_dataset(root, [10, 10]).root
