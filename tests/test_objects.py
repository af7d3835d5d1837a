"""Loss where the game happens: object masks from a collected dataset's labels travel with the
clips, and ``--object-weight`` / ``--token-change-weight`` raise the loss's weight on the object
(and changed) tokens of the dynamics model and on the object pixels of the tokenizer."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import MICRO_TOKENIZER, save_random_tokenizer
from safetensors.torch import load_file

from wm_video.checkpoint import resolve_checkpoint
from wm_video.cli import main as cli_main
from wm_video.collect import collect
from wm_video.data import truth
from wm_video.data.cache import load_cache
from wm_video.data.objects import OBJECT_CLASSES, load_object_masks, token_objects
from wm_video.data.reader import open_dataset
from wm_video.data.sampler import ClipSampler
from wm_video.data.video import VideoSettings
from wm_video.dynamics import (
    DYNAMICS_PRESETS,
    CorruptionConfig,
    DynamicsConfig,
    DynamicsModel,
    TokenWeightConfig,
    masked_token_loss,
    token_weights,
)
from wm_video.errors import InputError
from wm_video.sources.truth import CLASS_ID
from wm_video.tokenizer.loss import ReconstructionLossConfig, pixel_weights, reconstruction_loss
from wm_video.train.common import read_log
from wm_video.train.session import TrainingSession

DYNAMICS = DynamicsConfig(dim=32, heads=2, trunk_layers=1, head_layers=1, context_frames=3)


@pytest.fixture(scope="module")
def labelled(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A tiny Defend the Center dataset with its labels (32 px; monsters in view) and a random
    tokenizer of that size."""
    root = tmp_path_factory.mktemp("objects")
    args = dict(scenario="defend_the_center", episodes=3, steps=24, seed=3, size=32, workers=1)
    collect(root / "ds", video=VideoSettings(codec="lossless"), progress=False, **args)
    return root / "ds", save_random_tokenizer(root / "tokenizer", MICRO_TOKENIZER)


def test_masks_match_the_labels_and_travel_with_the_clips(labelled: tuple[Path, Path]) -> None:
    data, _ = labelled
    frames = load_cache(data, size=32, progress=False)
    masks = load_object_masks(data, frames, progress=False)
    ds = open_dataset(data)
    classes = np.concatenate([np.stack(list(truth.iter_class_maps(ds, ep))) for ep in ds.episodes])
    wanted = np.isin(classes, [CLASS_ID[name] for name in OBJECT_CLASSES])
    assert masks.shape == classes.shape and np.array_equal(masks[:], wanted.astype(np.uint8))
    assert wanted.any() and (classes == CLASS_ID["monster"]).any()  # monsters in view: a real test
    assert (classes == CLASS_ID["weapon"]).any() and not masks[:][classes == CLASS_ID["weapon"]].any()
    sampler = ClipSampler(frames, 5, seed=1, masks=masks)
    plain = ClipSampler(frames, 5, seed=1)
    batch, same = sampler.sample_batch(4), plain.sample_batch(4)
    assert np.array_equal(batch.frames, same.frames)  # the masks change nothing of the draw
    assert batch.masks is not None and batch.masks.shape == (4, 5, 32, 32)
    for b, row in enumerate(frames.rows_of(batch.episode, batch.start)):
        assert np.array_equal(batch.masks[b], wanted[row : row + 5])
    clip = next(sampler)
    assert clip.masks is not None and clip.masks.shape == (5, 32, 32)
    assert ClipSampler(frames, 5).sample_batch(1).masks is None


def test_a_token_is_an_object_when_any_pixel_of_its_patch_is() -> None:
    masks = np.zeros((2, 16, 16), dtype=np.uint8)
    masks[0, 9, 2] = 1  # patch row 1, column 0 of a 2×2 grid of 8-pixel patches
    masks[1, 0:8, 8:16] = 1  # the whole top-right patch
    assert token_objects(masks, 8).tolist() == [[0, 0, 1, 0], [0, 1, 0, 0]]


def test_token_weights_mark_objects_and_changes() -> None:
    tokens = torch.tensor([[[1, 2, 3], [1, 5, 3], [1, 5, 4]]])  # (B=1, T=3, N=3)
    objects = torch.tensor([[[0, 0, 0], [1, 0, 0], [0, 0, 1]]])
    assert token_weights(tokens, TokenWeightConfig()) is None
    both = token_weights(tokens, TokenWeightConfig(object_weight=4, change_weight=2), objects)
    assert both is not None and both.tolist() == [[[5, 3, 1], [1, 1, 7]]]  # targets: frames 1 and 2
    with pytest.raises(InputError, match="--object-weight needs the object masks"):
        token_weights(tokens, TokenWeightConfig(object_weight=1))
    with pytest.raises(InputError, match="--token-change-weight must be a finite number ≥ 0"):
        TokenWeightConfig(change_weight=float("nan"))


def _logit_gradients(weighting: TokenWeightConfig, objects: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The gradient of the loss on each target token's logits (B, T − 1, N), and which were masked."""
    config = DynamicsConfig.from_dict(
        {**DYNAMICS.to_dict(), "grid_size": 2, "levels": [3, 3], "action_names": ["a"], "action_buttons": 1}
    )
    model = DynamicsModel(config)
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, config.codebook_size, (2, 4, 4), generator=generator)
    logits = torch.randn(2, 3, 4, sum(config.levels), generator=generator, requires_grad=True)
    torch.manual_seed(1)  # the same masked tokens in every call
    losses = masked_token_loss(
        model,
        tokens,
        torch.zeros(2, 4, 1),
        CorruptionConfig(token_noise=0.0),
        forward=lambda *_: logits,
        weighting=weighting,
        objects=objects,
    )
    losses.total.backward()
    assert logits.grad is not None and losses.object_accuracy is not None
    return logits.grad.abs().sum(-1), logits.grad.abs().sum(-1) > 0


def test_the_object_weight_raises_the_loss_on_object_tokens() -> None:
    objects = torch.zeros(2, 4, 4, dtype=torch.uint8)
    objects[:, 1:, 0] = 1  # the first token of every target frame is an object
    plain, masked = _logit_gradients(TokenWeightConfig(), objects)
    weighted, masked_again = _logit_gradients(TokenWeightConfig(object_weight=9.0), objects)
    assert torch.equal(masked, masked_again) and masked[..., 0].any() and masked[..., 1:].any()
    ratio = weighted[masked] / plain[masked]  # per token: (1 + 9·o) / mean weight over masked tokens
    on_object = objects[:, 1:][masked].bool()
    torch.testing.assert_close(ratio[on_object], 10 * ratio[~on_object][:1].expand(int(on_object.sum())))
    torch.testing.assert_close(ratio[~on_object], ratio[~on_object][:1].expand(int((~on_object).sum())))
    weights = 1 + 9 * on_object.float()
    torch.testing.assert_close(ratio[~on_object][0], 1 / weights.mean())  # normalised to mean 1


def test_tokenizer_object_weights_mark_object_pixels_widened() -> None:
    clip = torch.full((1, 2, 3, 16, 16), -0.5)
    objects = torch.zeros(1, 2, 1, 16, 16)
    objects[0, :, 0, 8, 4] = 1
    config = ReconstructionLossConfig(object_weight=10.0)
    with pytest.raises(InputError, match="--object-weight needs the object masks"):
        pixel_weights(clip, config)
    weights = pixel_weights(clip, config, objects=objects)[0, 0, 0]
    torch.testing.assert_close(weights.mean(), torch.tensor(1.0))
    torch.testing.assert_close(weights[8, 4], 11 * weights[0, 0])
    torch.testing.assert_close(weights[7, 5], weights[8, 4])  # widened by a pixel
    assert weights[8, 6] == weights[0, 0]
    both = pixel_weights(clip, ReconstructionLossConfig(object_weight=10.0, change_weight=5.0), objects=objects)
    torch.testing.assert_close(both, pixel_weights(clip, config, objects=objects))  # a static clip: no change
    lost = clip.clone()
    lost[0, :, :, 8, 4] = 1.0  # a reconstruction that lost the object
    plain = reconstruction_loss(lost, clip, ReconstructionLossConfig()).total
    assert reconstruction_loss(lost, clip, config, objects=objects).total > 5 * plain


def _train(kind: str, data: Path, out: Path, steps: int, *extra: str) -> int:
    args = ["train", kind, "--data", str(data), "--out", str(out), "--max-steps", str(steps)]
    args += ["--batch-size", "2", "--clip-len", "4", "--log-every", "1", "--eval-every", "0"]
    return cli_main([*args, "--save-every", "2", "--warmup-steps", "2", "--no-progress", *extra])


@pytest.fixture
def small_preset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(DYNAMICS_PRESETS, "tiny", DYNAMICS)


@pytest.mark.usefixtures("small_preset", "one_thread")
def test_weighted_dynamics_logs_object_accuracy_and_resumes_exactly(
    labelled: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data, tokenizer = labelled
    weights = ("--tokenizer", str(tokenizer), "--object-weight", "5", "--token-change-weight", "2")
    assert _train("dynamics", data, tmp_path / "straight", 4, *weights) == 0
    records = [r for r in read_log(tmp_path / "straight") if "loss" in r]
    assert len(records) == 4 and all(0 <= r["object_token_accuracy"] <= 1 for r in records)
    program = json.loads((tmp_path / "straight" / "run.json").read_text())["program"]
    assert program["token_weights"] == {"object_weight": 5.0, "change_weight": 2.0}
    with monkeypatch.context() as patch:
        stops = iter([False, True])
        patch.setattr(TrainingSession, "should_stop", lambda self: next(stops))
        assert _train("dynamics", data, tmp_path / "resumed", 4, *weights) == 0
    assert _train("dynamics", data, tmp_path / "resumed", 4, *weights) == 0
    straight, resumed = resolve_checkpoint(tmp_path / "straight"), resolve_checkpoint(tmp_path / "resumed")
    assert straight.name == resumed.name == "step-00000004"
    for name in ("model.safetensors", "training.safetensors"):
        a, b = load_file(straight / name), load_file(resumed / name)
        assert all(torch.equal(a[key], b[key]) for key in a), name


@pytest.mark.usefixtures("one_thread")
def test_weighted_tokenizer_trains_and_records_the_weight(labelled: tuple[Path, Path], tmp_path: Path) -> None:
    data, _ = labelled
    shape = ("--preset", "tiny", "--object-weight", "20", "--change-weight", "5")
    with pytest.MonkeyPatch.context() as patch:
        from wm_video.tokenizer import TOKENIZER_PRESETS

        patch.setitem(TOKENIZER_PRESETS, "tiny", MICRO_TOKENIZER)
        assert _train("tokenizer", data, tmp_path / "run", 2, *shape) == 0
    program = json.loads((tmp_path / "run" / "run.json").read_text())["program"]
    assert program["object_weight"] == 20.0 and program["change_weight"] == 5.0


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["train", "dynamics", "--object-weight", "2"], "--object-weight needs the engine's labels"),
        (["train", "tokenizer", "--object-weight", "2"], "--object-weight needs the engine's labels"),
        (["finetune", "--tokenizer-object-weight", "2"], "--tokenizer-object-weight needs the engine's labels"),
        (["finetune", "--tokenizer-steps", "0", "--object-weight", "2"], "--object-weight needs"),
    ],
)
def test_weights_without_labels_are_one_line_naming_the_dataset(
    training_data, tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    """A dataset without labels (the synthetic one) is named in one line, before any run folder."""
    data = ["--data", str(training_data.data), "--out", str(tmp_path / "run")]
    model = ["--tokenizer", str(training_data.tokenizer)] if argv[1] == "dynamics" else []
    if argv[0] == "finetune":
        model = ["--from", str(tmp_path / "unused")]
    assert cli_main([*argv, *data, *model, "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err and str(training_data.data) in err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["train", "dynamics", "--object-weight", "-1"], "argument --object-weight: must be ≥ 0, got -1"),
        (["train", "dynamics", "--token-change-weight", "nan"], "--token-change-weight: must be a finite number"),
        (["train", "tokenizer", "--object-weight", "inf"], "--object-weight: must be a finite number"),
        (["finetune", "--tokenizer-object-weight", "-2"], "--tokenizer-object-weight: must be ≥ 0"),
    ],
)
def test_weights_out_of_range_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    needed = {"dynamics": ["--tokenizer", "t"], "tokenizer": [], "--tokenizer-object-weight": ["--from", "f"]}
    with pytest.raises(SystemExit) as exit_info:
        cli_main([*argv, "--data", "d", "--out", str(tmp_path / "run"), *needed[argv[1]]])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err.strip().splitlines()[-1]
