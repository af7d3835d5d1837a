"""The hunt policy and per-episode policy mixes: hunt faces monsters and shoots far more than the
explorer, is reproducible with or without recorded ground truth (so --relabel replays it), mixes
draw per episode from the seed and record the draw, bad specs are one-line errors."""

from __future__ import annotations

import numpy as np
import pytest

from wm_video.actions import ActionSpace
from wm_video.cli import main as cli_main
from wm_video.collect import collect
from wm_video.data import truth
from wm_video.data.reader import open_dataset
from wm_video.data.validate import validate_dataset
from wm_video.data.video import VideoSettings
from wm_video.errors import InputError
from wm_video.relabel import relabel
from wm_video.sources import make_source
from wm_video.sources.hunt import HuntConfig, HuntPolicy
from wm_video.sources.policies import MixPolicy, load_policy, parse_policy_spec
from wm_video.sources.truth import CLASS_ID, STATE_NAMES, FrameTruth
from wm_video.sources.vizdoom import ACTION_SPACE

SIZE = 32
ARGS = dict(scenario="defend_the_center", size=SIZE, workers=1, progress=False, video=VideoSettings(codec="lossless"))


def play(spec: str, seeds: range, steps: int) -> dict[str, float]:
    """Share of frames with attack held and with a monster near the centre, over episodes of ``seeds``."""
    attack, centred, frames = 0, 0, 0
    with make_source("vizdoom", scenario="defend_the_center", size=SIZE, ground_truth=True) as source:
        policy = load_policy(spec, source.action_space)
        for seed in seeds:
            frame = source.reset(seed)
            policy.reset(seed)
            for _ in range(steps):
                known = source.truth()
                assert known is not None
                action = policy.act(frame, known)
                attack += bool(action[ACTION_SPACE.buttons.index("attack")])
                centred += any(
                    row[3] == CLASS_ID["monster"] and abs(row[4] + row[6] / 2 - SIZE / 2) <= 0.12 * SIZE
                    for row in known.objects
                )
                frames += 1
                result = source.step(action)
                if result.done:
                    break
                frame = result.frame
    return {"attack": attack / frames, "centred": centred / frames}


def test_hunt_faces_monsters_and_fires_far_more_than_explore() -> None:
    explore, hunt = play("explore", range(3), 150), play("hunt", range(3), 150)
    assert hunt["attack"] > explore["attack"] + 0.3, (explore, hunt)
    assert hunt["centred"] > explore["centred"] + 0.15, (explore, hunt)


def _truth_with(box: tuple[float, float, float, float] | None, ammo: float = 20.0) -> FrameTruth:
    rows = [(0, "Pistol", "Self", CLASS_ID["weapon"], 10.0, 20.0, 12.0, 12.0)]
    if box is not None:
        rows.append((7, "Demon", "Monster", CLASS_ID["monster"], *box))
    state = np.zeros(len(STATE_NAMES), np.float32)
    state[STATE_NAMES.index("ammo")] = ammo
    return FrameTruth(state, np.zeros((SIZE, SIZE), np.uint8), rows)


def test_hunt_turns_toward_the_monster_and_fires_when_centred() -> None:
    only_aim = HuntConfig(strafe_weight=0, advance_weight=0, back_weight=0, hold_fire_weight=0, pursue_steps=3)
    policy = HuntPolicy(ACTION_SPACE, only_aim)
    frame = np.zeros((SIZE, SIZE, 3), np.uint8)
    assert ACTION_SPACE.pressed(policy.act(frame, _truth_with((2.0, 10.0, 3.0, 6.0)))) == ["turn_left"]
    assert ACTION_SPACE.pressed(policy.act(frame, _truth_with((27.0, 10.0, 3.0, 6.0)))) == ["turn_right"]
    assert ACTION_SPACE.pressed(policy.act(frame, _truth_with((15.0, 10.0, 2.0, 6.0)))) == ["attack"]
    # lost from view on the right: it turns after it for pursue_steps, then explores
    policy.act(frame, _truth_with((24.0, 10.0, 3.0, 6.0)))
    lost = [ACTION_SPACE.pressed(policy.act(frame, _truth_with(None))) for _ in range(3)]
    assert lost == [["turn_right"]] * 3
    with pytest.raises(InputError, match="needs the engine's ground truth"):
        policy.act(frame)
    # an empty gun: attack only now and then
    empty = [policy.act(frame, _truth_with((15.0, 10.0, 2.0, 6.0), ammo=0)) for _ in range(200)]
    assert 0 < np.mean([ACTION_SPACE.pressed(a) == ["attack"] for a in empty]) < 0.15


def test_hunt_is_reproducible_with_or_without_recorded_truth_and_relabels(tmp_path) -> None:
    labelled, plain = tmp_path / "labelled", tmp_path / "plain"
    collect(labelled, episodes=2, steps=60, seed=11, policy="hunt", **ARGS)
    collect(plain, episodes=2, steps=60, seed=11, policy="hunt", ground_truth=False, **ARGS)
    got, want = open_dataset(plain), open_dataset(labelled)
    assert not truth.has_truth(got.info) and got.ours["source"]["ground_truth"] is False
    for a, b in zip(got.episodes, want.episodes, strict=True):
        assert np.array_equal(got.actions(a), want.actions(b)) and np.array_equal(got.frames(a), want.frames(b))
        assert a.policy == b.policy == "hunt"
    assert got.actions(got.episodes[0])[:, ACTION_SPACE.buttons.index("attack")].any()
    relabel(plain, progress=False)  # replays the hunt's actions bit-exactly
    relabelled = open_dataset(plain)
    for a, b in zip(relabelled.episodes, want.episodes, strict=True):
        assert np.array_equal(truth.read_state(relabelled, a)[0], truth.read_state(want, b)[0])


def test_a_mix_draws_per_episode_from_the_seed_and_records_the_draw(tmp_path) -> None:
    root = tmp_path / "mix"
    spec = "mix:hunt=1,explore=1"
    collect(root, episodes=8, steps=8, seed=0, policy=spec, **ARGS)
    ds = open_dataset(root)
    drawn = [ep.policy for ep in ds.episodes]
    assert set(drawn) == {"hunt", "explore"}
    mix = load_policy(spec, ACTION_SPACE)
    assert isinstance(mix, MixPolicy)
    expected = []
    for seed in range(8):
        mix.reset(seed)
        expected.append(mix.current)
    assert drawn == expected
    report = validate_dataset(root)
    assert report.ok and report.policies == {"hunt": drawn.count("hunt"), "explore": drawn.count("explore")}
    assert f"hunt {drawn.count('hunt')} (" in report.format()
    # a mix's episode plays exactly what its drawn policy plays alone
    alone = tmp_path / "alone"
    first_hunt = drawn.index("hunt")
    collect(alone, episodes=1, steps=8, seed=first_hunt, policy="hunt", **ARGS)
    assert np.array_equal(
        open_dataset(alone).actions(open_dataset(alone).episodes[0]), ds.actions(ds.episodes[first_hunt])
    )


def test_policy_specs_parse_and_normalise(tmp_path) -> None:
    assert parse_policy_spec("hunt") == {"hunt": 1.0}
    assert parse_policy_spec("mix:hunt=0.6, explore=0.2,random=0.2") == pytest.approx(
        {"hunt": 0.6, "explore": 0.2, "random": 0.2}
    )
    assert parse_policy_spec("mix:hunt=3,explore=1,random=0") == {"hunt": 0.75, "explore": 0.25}
    script = tmp_path / "turn.jsonl"
    script.write_text('{"buttons": ["turn_left"]}\n')
    assert parse_policy_spec(f"mix:{script}=1,explore=1") == {str(script): 0.5, "explore": 0.5}


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("mix:hunt=0.6,wander=0.4", "'wander' is none of these"),
        ("mix:hunt=lots", "the weight of 'hunt' must be a number ≥ 0"),
        ("mix:hunt=-1,explore=1", "the weight of 'hunt' must be a number ≥ 0"),
        ("mix:hunt=nan", "must be a number"),
        ("mix:hunt", "expected name=weight"),
        ("mix:", "expected name=weight"),
        ("mix:hunt=0,explore=0", "at least one weight"),
        ("mix:hunt=1,hunt=2", "named twice"),
    ],
)
def test_bad_policy_specs_are_one_line_errors(tmp_path, capsys, spec, message) -> None:
    with pytest.raises(InputError, match=message):
        parse_policy_spec(spec)
    root = tmp_path / "ds"
    assert cli_main(["collect", "--out", str(root), "--episodes", "1", "--steps", "2", "--policy", spec]) == 2
    err = capsys.readouterr().err
    assert message.split("'")[0] in err and err.count("\n") == 1 and "Traceback" not in err
    assert not root.exists()


def test_hunt_needs_vizdoom(tmp_path) -> None:
    with pytest.raises(InputError, match="hunt needs the engine's ground truth.*'atari' does not"):
        collect(tmp_path / "ds", source="atari", episodes=1, steps=2, policy="mix:hunt=1,random=1", progress=False)
    assert not (tmp_path / "ds").exists()
    with pytest.raises(InputError, match="the hunt policy needs ViZDoom"):
        HuntPolicy(ActionSpace(("left", "right", "fire")))


def test_eval_plays_live_footage_under_hunt() -> None:
    from wm_video.eval.clips import EngineSpec, collect_live

    clips = collect_live(
        EngineSpec("vizdoom", "defend_the_center", SIZE),
        "hunt",
        episodes=1,
        length=40,
        seed=0,
        action_names=ACTION_SPACE.names,
    )
    assert clips.actions[0, :, ACTION_SPACE.buttons.index("attack")].any()


def test_the_policy_column_survives_episodes_that_record_none(tmp_path) -> None:
    """An episode without a policy (`record`, an older collect) before one with it: the column stays."""
    from wm_video.data.video import encode_video
    from wm_video.data.writer import DatasetWriter

    frames, actions = np.zeros((3, 8, 8, 3), np.uint8), np.zeros((3, ACTION_SPACE.size), np.float32)
    with DatasetWriter(tmp_path / "ds", fps=17.5, action_space=ACTION_SPACE, frame_shape=(8, 8, 3)) as writer:
        writer.write_episode(frames, actions)
        encode_video(writer.staging_path(1), frames, 17.5, writer.video)
        writer.commit_episode(writer.staging_path(1), actions, policy="hunt")
    assert [ep.policy for ep in open_dataset(tmp_path / "ds").episodes] == [None, "hunt"]
    assert validate_dataset(tmp_path / "ds").policies == {"hunt": 1, "not recorded": 1}
