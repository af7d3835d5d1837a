"""`wm-video eval` (the consistency run) end to end on a tiny dataset and tiny random checkpoints:
the report's files exist and parse, a baseline shares the plots, a second run reuses the cached
inverse-dynamics model and gives the same numbers, bad input is one clear line."""

from __future__ import annotations

import json
import math
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from conftest import make_dataset

from wm_video.checkpoint import save_checkpoint
from wm_video.cli import main as cli_main
from wm_video.data.video import read_video
from wm_video.dynamics import DynamicsConfig, DynamicsModel
from wm_video.tokenizer import TokenizerConfig, VideoTokenizer

TOKENIZER = TokenizerConfig(
    image_size=32, patch_size=8, dim=32, heads=2, encoder_layers=1, decoder_layers=1, temporal_window=3
)


@dataclass(frozen=True)
class Runs:
    data: Path
    model: Path
    baseline: Path


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Runs:
    root = tmp_path_factory.mktemp("consistency")
    data = make_dataset(root / "ds", [24, 20, 30])  # holdout 0.1: the last episode
    torch.manual_seed(0)
    save_checkpoint(
        root / "tok", kind="tokenizer", config=TOKENIZER.to_dict(), step=0,
        weights=VideoTokenizer(TOKENIZER).state_dict(), keep=1,
    )  # fmt: skip
    config = DynamicsConfig(
        grid_size=TOKENIZER.grid_size, levels=TOKENIZER.levels, action_names=("forward", "turn_left", "mouse_dx"),
        action_buttons=2, dim=32, heads=2, trunk_layers=1, head_layers=1, context_frames=3,
    )  # fmt: skip
    meta = {"data": str(data.root), "tokenizer": str(root / "tok"), "holdout": 0.1}
    for name, step in (("model", 7), ("baseline", 3)):
        save_checkpoint(
            root / name, kind="dynamics", config=config.to_dict(), step=step,
            weights=DynamicsModel(config).state_dict(), meta=meta, keep=1,
        )  # fmt: skip
    return Runs(data.root, root / "model", root / "baseline")


ARGS = ["--clips", "2", "--context", "2", "--horizon", "4", "--soak", "40", "--idm-steps", "30"]


def test_report_files_exist_parse_and_a_second_run_reuses_the_idm(runs: Runs, tmp_path: Path, capsys) -> None:
    out = tmp_path / "report"
    argv = ["eval", "--checkpoint", str(runs.model), "--out", str(out), *ARGS]
    assert cli_main([*argv, "--baseline", str(runs.baseline)]) == 0
    assert "report:" in capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["models"]) == {"model", "baseline"}
    model = metrics["models"]["model"]
    assert model["step"] == 7 and len(model["weights_sha256"]) == 64 and metrics["seed"] == 0
    assert metrics["clip_episodes"] == [2, 2] and "held-out episodes [2]" in metrics["clips_from"]
    assert len(model["drift"]["psnr"]["mean"]) == 4 and len(model["control"]["delta_psnr"]) == 4
    assert model["control"]["t"] == 4 and np.isfinite(model["teacher_forced"]["psnr"])
    assert set(model["action_accuracy"]) == {
        "real clips",
        "teacher-forced",
        "rollout",
        "random-action rollout",
    }
    assert model["soak"]["steps"] == 40 and set(model["soak"]["collapse"]) == {
        "blur",
        "noise",
        "palette",
        "freeze",
    }
    assert model["loop_closure"] is None and any("loop closure skipped" in n for n in metrics["notes"])
    assert metrics["idm"]["reused"] is False and metrics["idm"]["buttons"] == ["forward", "turn_left"]
    assert metrics["idm"]["real_heldout"]["pairs"] == 29
    assert {"torch", "numpy", "wm_video"} <= set(metrics["versions"])
    footage = metrics["soak_real_footage"]
    assert footage["episodes"] == 1 and set(footage["tokenizer_flagged"]) == {
        "blur",
        "noise",
        "palette",
        "freeze",
    }
    assert len(footage["tokenizer_percentiles"]["sharpness"]) == 3  # 1st / 50th / 99th percentile
    for name in ("drift.png", "controllability.png", "soak.png", "soak_snapshots.png"):
        image = cv2.imread(str(out / name))
        assert image is not None and image.size > 0, name
    for name in ("samples.mp4", "samples_baseline.mp4"):
        video = read_video(out / name)
        assert video.shape == (4, 2 * 32 * 2, 3 * 32 * 2, 3), (
            name
        )  # 4 frames; 2 clips × (real|generated|diff)
    player = metrics["player"]
    assert "holds no ground truth" in player["skipped"]  # texture needs none
    assert player["models"]["model"]["texture"]["steps"] == [1, 4]
    report = (out / "report.md").read_text()
    assert report.index("## What a player sees") < report.index("## Headline")
    for text in (
        "# Consistency report",
        "### Texture",
        "## Headline",
        "## Drift",
        "| repeat, tokenized (dB) |",
        "% unchanged) |",
        "ΔPSNR(t=4)",
        "## Soak",
        "the same, through the model's tokenizer (1 episode): episodes flagged",
        "| statistic | data | tokenizer | model | baseline |",
        "baseline",
        "drift.png",
    ):
        assert text in report, text

    again = tmp_path / "again"
    assert cli_main(["eval", "--checkpoint", str(runs.model), "--out", str(again), *ARGS]) == 0
    second = json.loads((again / "metrics.json").read_text())
    assert second["idm"]["reused"] is True and second["idm"]["path"] == metrics["idm"]["path"]
    for key in ("teacher_forced", "drift", "control", "action_accuracy"):  # same seed, same numbers
        assert second["models"]["model"][key] == model[key], key
    assert second["models"]["model"]["soak"]["summary"] == model["soak"]["summary"]
    assert set(second["models"]) == {"model"}


def test_quick_dynamics_check_is_the_consistency_run_with_a_short_horizon(
    runs: Runs, tmp_path: Path, capsys
) -> None:
    """`eval dynamics` prints a summary; its numbers are the full run's on the same clips and seed."""
    clips = ["--checkpoint", str(runs.model), "--clips", "2", "--context", "2", "--horizon", "3"]
    quick = tmp_path / "quick.json"
    assert cli_main(["eval", "dynamics", *clips, "--json", str(quick)]) == 0
    out = capsys.readouterr().out
    assert "teacher-forced next frame" in out and "ΔPSNR(t=3)" in out and "held-out episodes [2]" in out
    assert "through the tokenizer" in out and "of frames equal the one before" in out
    full = tmp_path / "full"
    assert cli_main(["eval", *clips, "--out", str(full), "--skip", "actions,loops,soak"]) == 0
    quick_numbers, model = json.loads(quick.read_text()), json.loads((full / "metrics.json").read_text())
    for key in ("teacher_forced", "drift", "control"):
        assert quick_numbers[key] == model["models"]["model"][key], key
    assert quick_numbers["step"] == 7 and quick_numbers["incomplete"] is None


def test_a_stopped_run_writes_the_finished_parts_marked_incomplete(runs: Runs) -> None:
    from wm_video.data.cache import load_cache
    from wm_video.eval.clips import EvalInterrupted
    from wm_video.eval.consistency import ConsistencyConfig, load_models, run_consistency
    from wm_video.eval.report import write_report

    models = load_models(runs.model, None, tokenizer=None, device="cpu")
    cache = load_cache(runs.data, size=32, progress=False)
    config = ConsistencyConfig(clips=2, context=2, horizon=3, soak=50, skip=frozenset({"actions"}))

    def run(stop_after: str, calls: int) -> tuple:
        """Stop at the ``calls``-th poll after the log line announcing ``stop_after``."""
        polls: list[int] = []

        def log(line: str) -> None:
            if stop_after in line and not polls:
                polls.append(0)

        def stop() -> bool:
            if polls:
                polls[0] += 1
            return bool(polls) and polls[0] > calls

        return run_consistency(models, cache, runs.data, 0.1, config, stop=stop, log=log)

    result = run("soak of", 6)  # a few frames into the soak: they are kept and scored
    assert result.incomplete == "soak" and result.results[0].clips.horizon == 3
    soak = result.results[0].soak
    assert soak is not None and 2 <= soak.steps < soak.planned == 50
    report = write_report(result, Path(str(runs.data) + "-partial"))
    assert "**Incomplete**: the run was stopped during soak" in report.read_text()
    assert f"frames (stopped after {soak.steps} of 50)" in report.read_text()
    assert json.loads((report.parent / "metrics.json").read_text())["incomplete"] == "soak"

    assert run("soak of", 0).results[0].soak is None  # stopped at once: no soak, the rest reported
    with pytest.raises(EvalInterrupted):  # stopped before the first rollouts ended: nothing to report
        run("rollouts of", 0)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ([], "pass --out REPORT"),
        (["--out", "X", "--skip", "drift,nothing"], "unknown parts ['nothing']"),
        (["--out", "X", "--episodes", "1,x"], "comma-separated episode indices"),
        (["--out", "X", "--live", "doom"], "unknown engine 'doom'"),
    ],
)
def test_bad_input_is_one_line(runs: Runs, tmp_path: Path, capsys, extra: list[str], message: str) -> None:
    extra = [str(tmp_path / e) if e == "X" else e for e in extra]
    code = cli_main(["eval", "--checkpoint", str(runs.model), *extra])
    assert code == 2
    assert message in capsys.readouterr().err


def test_sigterm_stops_the_run_with_exit_130_and_an_incomplete_report(runs: Runs, tmp_path: Path) -> None:
    out = tmp_path / "report"
    argv = [
        sys.executable, "-m", "wm_video", "eval", "--checkpoint", str(runs.model), "--out", str(out),
        "--clips", "2", "--context", "2", "--horizon", "2", "--skip", "actions", "--soak", "1000000",
        "--threads", "1",
    ]  # fmt: skip
    process = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True)
    assert process.stderr is not None
    for line in process.stderr:  # wait until the soak loop runs
        if "soak of" in line:
            break
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == 130
    assert "stopped during soak" in process.stderr.read()
    assert json.loads((out / "metrics.json").read_text())["incomplete"] == "soak"
    assert "**Incomplete**" in (out / "report.md").read_text()


def test_the_help_states_the_soak_default_the_run_uses() -> None:
    from wm_video.eval.cli import SOAK_FRAMES
    from wm_video.eval.consistency import ConsistencyConfig

    assert ConsistencyConfig().soak == SOAK_FRAMES


@torch.inference_mode()
def test_the_tokenized_repeat_is_the_frame_before_encoded_again_and_decoded() -> None:
    from wm_video.eval.rollouts import frame_scores, held_tokens, teacher_forced
    from wm_video.tokenizer.pixels import to_uint8_frames

    torch.manual_seed(0)
    tokenizer = VideoTokenizer(TOKENIZER).eval()
    with torch.no_grad():  # let both halves read earlier frames, as a trained tokenizer does
        tokenizer.encoder.time_bias.normal_()
        tokenizer.decoder.time_bias.normal_()
    config = DynamicsConfig(
        grid_size=TOKENIZER.grid_size, levels=TOKENIZER.levels, action_names=("forward",), action_buttons=1,
        dim=32, heads=2, trunk_layers=1, head_layers=1, context_frames=3,
    )  # fmt: skip
    dynamics = DynamicsModel(config).eval()
    rng = np.random.default_rng(0)
    moving = rng.integers(0, 256, (2, 4, 32, 32, 3), dtype=np.uint8)
    history = [rng.integers(0, 256, (length, 32, 32, 3), dtype=np.uint8) for length in (2, 1)]  # lengths differ
    keys = np.zeros((2, 4, 1), np.float32)
    scores, _ = teacher_forced(tokenizer, dynamics, moving, keys, 0, history)
    by_hand = []
    for t in range(1, 4):  # frame t − 1 again at t, encoded after the real frames and decoded as the clip is
        held = np.concatenate([moving[:, :t], moving[:, t - 1 : t]], axis=1)
        tokens = tokenizer.encode_footage(held, history).tokens.long()
        shown = to_uint8_frames(tokenizer.decode_tokens(tokens))
        by_hand.append(frame_scores(shown[:, -1].numpy(), moving[:, t])[0])
    assert scores.tokenized_repeat_psnr == pytest.approx(float(np.mean(by_hand)), abs=1e-4)
    held, real = held_tokens(tokenizer, moving, history), tokenizer.encode_footage(moving, history).tokens
    assert held.shape == (2, 3, TOKENIZER.tokens_per_frame)
    for t in range(1, 4):  # frame t − 1 shown again is not frame t
        assert not torch.equal(held[:, t - 1], real[:, t])
    still = np.repeat(moving[:, :1], 4, axis=1)  # held still, the repeat is the real clip: the ceiling
    scores, _ = teacher_forced(tokenizer, dynamics, still, keys, 0)
    assert scores.tokenized_repeat_psnr == pytest.approx(scores.tokenizer_psnr, abs=1e-6)
    assert scores.unchanged == 1.0 and scores.repeat_psnr == 100.0


@torch.inference_mode()
@pytest.mark.parametrize("chain", [False, True])
def test_bits_per_token_are_the_real_codes_likelihood(chain: bool) -> None:
    """A head that gives every code the same odds needs log2(codes) bits for each; one sure of the
    real frame's codes needs about none, on the tokens that change code as on the rest."""
    from wm_video.eval.rollouts import teacher_forced

    torch.manual_seed(0)
    tokenizer = VideoTokenizer(TOKENIZER).eval()
    config = DynamicsConfig(
        grid_size=TOKENIZER.grid_size, levels=TOKENIZER.levels, action_names=("forward",), action_buttons=1,
        dim=32, heads=2, trunk_layers=1, head_layers=1, context_frames=3, chain_digits=chain,
    )  # fmt: skip
    dynamics = DynamicsModel(config).eval()
    frames = np.random.default_rng(0).integers(0, 256, (2, 4, 32, 32, 3), dtype=np.uint8)
    keys = np.zeros((2, 4, 1), np.float32)
    dynamics.to_logits.weight.zero_()
    dynamics.to_logits.bias.zero_()
    if chain:
        dynamics.chain_out.weight.zero_()
    scores, _ = teacher_forced(tokenizer, dynamics, frames, keys, 0)
    assert scores.code_bits == pytest.approx(math.log2(config.codebook_size), abs=1e-4)
    assert scores.changed_code_bits == pytest.approx(math.log2(config.codebook_size), abs=1e-4)
    assert 0 < scores.changed_tokens <= 1
    # A head whose odds ignore the context (random per digit): each real token costs its digits'
    # bits, averaged over all tokens and over those that differ from the token before.
    dynamics.to_logits.bias.normal_(0, 2)
    scores, _ = teacher_forced(tokenizer, dynamics, frames, keys, 0)
    tokens = tokenizer.encode_footage(frames, None).tokens.long()
    log_odds = [channel.log_softmax(-1) for channel in dynamics.split_logits(dynamics.to_logits.bias)]
    digits = dynamics.digits(tokens[:, 1:])
    bits = -sum(odds[digits[..., c]] for c, odds in enumerate(log_odds)) / math.log(2)
    changed = tokens[:, 1:] != tokens[:, :-1]
    assert scores.code_bits == pytest.approx(float(bits.mean()), abs=1e-4)
    assert scores.changed_code_bits == pytest.approx(float(bits[changed].mean()), abs=1e-4)
    assert scores.changed_tokens == pytest.approx(float(changed.float().mean()))
