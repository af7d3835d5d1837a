"""``wm-video dream`` (issue 18): a policy's rollouts inside a world, written as a dataset marked as generated."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
from test_envs import START, red_ends, tiny_world

from wm_video.data.reader import open_dataset
from wm_video.data.truth import DONE_KEY, REWARD_KEY
from wm_video.data.validate import validate_dataset
from wm_video.data.video import VideoSettings
from wm_video.envs.dream import dream
from wm_video.errors import InputError
from wm_video.sources.vizdoom import ACTION_SPACE

pytestmark = pytest.mark.usefixtures("one_thread")
LOSSLESS = VideoSettings(codec="lossless")


def rows(root):
    return pq.read_table(sorted((root / "data").rglob("*.parquet"))).to_pydict()


def test_dream_writes_a_generated_dataset_that_inspect_accepts(tmp_path) -> None:
    runs = []
    for worlds in (1, 3):
        out = tmp_path / f"dream{worlds}"
        result = dream(
            out, tiny_world(worlds), policy="random", episodes=4, steps=7, seed=3, start=START, reward=red_ends,
            video=LOSSLESS, progress=False,
        )  # fmt: skip
        assert result.episodes_written == 4 and result.total_episodes == 4
        report = validate_dataset(out)
        assert report.ok, report.format()
        runs.append(out)
    ours = json.loads((runs[0] / "meta" / "wm_video.json").read_text())["source"]
    assert ours["generated"] is True and ours["source"] == "world model" and ours["policy"] == "random"
    info = json.loads((runs[0] / "meta" / "info.json").read_text())
    assert {REWARD_KEY, DONE_KEY} <= set(info["features"])
    one, three = (rows(r) for r in runs)  # the same episodes whatever the number of worlds at once
    assert one[REWARD_KEY] == three[REWARD_KEY] and one["action"] == three["action"]
    a, b = open_dataset(runs[0]), open_dataset(runs[1])
    for ref_a, ref_b in zip(a.episodes, b.episodes, strict=True):
        np.testing.assert_array_equal(a.frames(ref_a), b.frames(ref_b))
    ends = np.flatnonzero(one[DONE_KEY])
    lengths = [ref.length for ref in a.episodes]
    assert all(length <= 7 for length in lengths)
    # an episode the reward function ended stops on that step
    assert set(ends.tolist()) <= set(np.cumsum(lengths) - 1)


def test_dream_takes_a_gymnasium_callable_and_resumes(tmp_path) -> None:
    def forward_and_fire(observation: np.ndarray) -> np.ndarray:
        assert observation.shape == (16, 16, 3)
        return np.array([1, 0, 1], np.int8)

    out = tmp_path / "dream"
    dream(out, tiny_world(2), policy=forward_and_fire, episodes=2, steps=3, start=START, progress=False)
    result = dream(
        out, tiny_world(2), policy=forward_and_fire, episodes=3, steps=3, start=START, progress=False
    )
    assert (result.episodes_written, result.total_episodes) == (1, 3)
    assert all(action == [1.0, 0.0, 1.0] for action in rows(out)["action"])
    assert not any(rows(out)[DONE_KEY])  # no reward function: nothing ends an episode


def test_dream_refuses_real_footage_and_bad_policies(tmp_path, capsys) -> None:
    from conftest import make_dataset

    from wm_video.cli import main

    make_dataset(tmp_path / "real", [4])
    with pytest.raises(InputError, match="holds real footage"):
        dream(tmp_path / "real", tiny_world(), episodes=2, steps=2, start=START, progress=False)
    with pytest.raises(InputError, match="ground truth"):
        dream(tmp_path / "hunt", tiny_world(space=ACTION_SPACE), policy="hunt", episodes=1, steps=2, start=START)
    assert (
        main(["dream", "--out", str(tmp_path / "d"), "--policy", "no_such_module:act", "--threads", "1"]) == 2
    )
    assert "cannot load it" in capsys.readouterr().err


def test_dream_command_on_the_shipped_world(tmp_path, capsys) -> None:
    from wm_video.cli import main

    out = tmp_path / "dream"
    argv = ["dream", "--out", str(out), "--episodes", "2", "--steps", "3", "--worlds", "2", "--threads", "1"]
    assert main([*argv, "--no-progress"]) == 0
    assert "2 episodes, 6 frames dreamed" in capsys.readouterr().out
    assert main(["inspect", str(out)]) == 0
