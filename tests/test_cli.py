"""The `wm-video` command on tiny data: every subcommand runs, and bad input gets one clear line."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import TinyDataset, smooth_frames

from wm_video.cli import main
from wm_video.data.reader import open_dataset
from wm_video.data.validate import validate_dataset
from wm_video.data.video import VideoSettings, encode_video


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    try:
        code = main(args)
    except SystemExit as exc:  # argparse errors
        code = int(exc.code or 0)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_console_script_and_module_entry_points() -> None:
    for command in (["wm-video", "--help"], [sys.executable, "-m", "wm_video", "--version"]):
        result = subprocess.run(command, capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
    help_text = subprocess.run(["wm-video", "--help"], capture_output=True, text=True, timeout=60).stdout
    for sub in ("collect", "record", "import", "inspect", "cache", "bench"):
        assert sub in help_text


def test_inspect_summarises_a_good_dataset(
    tiny_dataset: TinyDataset, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run_cli(["inspect", str(tiny_dataset.root)], capsys)
    assert code == 0, out
    assert "episodes    3" in out and "frames 39" in out and "fps 17.5" in out and "32×32" in out
    assert "forward" in out and "% of frames" in out and "mouse_dx" in out and "OK" in out


def test_inspect_exits_nonzero_on_a_problem(
    tiny_dataset: TinyDataset, capsys: pytest.CaptureFixture[str]
) -> None:
    (tiny_dataset.root / "videos/observation.image/chunk-000/file-002.mp4").write_bytes(b"")
    code, out, _ = run_cli(["inspect", str(tiny_dataset.root)], capsys)
    assert code == 1 and "episode 2" in out and "file-002.mp4" in out


def test_cache_subcommand(tiny_dataset: TinyDataset, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(["cache", str(tiny_dataset.root), "--size", "16"], capsys)
    assert code == 0, err
    assert "3 episodes, 39 frames at 16×16" in out


def test_import_mp4_jsonl_subcommand(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "recordings"
    src.mkdir()
    encode_video(src / "run1.mp4", smooth_frames(6, 32, 0), 20.0, VideoSettings(codec="lossless"))
    lines = [json.dumps({"keys": ["w"] if i % 2 else []}) for i in range(6)]
    (src / "run1.jsonl").write_text("\n".join(lines) + "\n")
    code, out, err = run_cli(["import", "mp4-jsonl", str(src), "--out", str(tmp_path / "ds")], capsys)
    assert code == 0, err
    ds = open_dataset(tmp_path / "ds")
    assert ds.num_frames == 6 and "w" in ds.action_names


def test_collect_subcommand_resumes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "doom"
    base = ["collect", "--out", str(out), "--steps", "12", "--size", "32", "--workers", "1"]
    code, _, err = run_cli([*base, "--episodes", "1"], capsys)
    assert code == 0, err
    code, _, err = run_cli([*base, "--episodes", "2"], capsys)
    assert code == 0, err
    ds = open_dataset(out)
    assert len(ds.episodes) == 2 and ds.fps == 17.5
    code, out_text, _ = run_cli(["inspect", str(out)], capsys)
    assert code == 0, out_text


BAD_INPUT = {
    "collect: size 0": (["collect", "--out", "{tmp}/x", "--size", "0"], "must be ≥ 1"),
    "collect: unknown scenario": (["collect", "--out", "{tmp}/x", "--scenario", "nowhere"], "nowhere"),
    "collect: bad policy file": (
        ["collect", "--out", "{tmp}/x", "--policy", "{tmp}/none.jsonl"],
        "none.jsonl",
    ),
    "import: missing folder": (["import", "mp4-jsonl", "{tmp}/absent", "--out", "{tmp}/x"], "absent"),
    "import: empty folder": (["import", "vpt", "{tmp}/empty", "--out", "{tmp}/x"], "empty"),
    "cache: not a dataset": (["cache", "{tmp}/empty"], "empty"),
    "bench: zero repeats": (["bench", "data", "--repeats", "0"], "must be ≥ 1"),
    "record: bad keymap": (["record", "--out", "{tmp}/x", "--keymap", "{tmp}/keys.json"], "keys.json"),
    "train: not a dataset": (["train", "tokenizer", "--data", "{tmp}/empty", "--out", "{tmp}/run"], "empty"),
    "train: zero batch": (
        ["train", "tokenizer", "--data", "{tmp}/empty", "--out", "{tmp}/run", "--batch-size", "0"],
        "--batch-size must be ≥ 1",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUT))
def test_bad_input_gets_one_clear_line(tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "keys.json").write_text('{"w": "fly"}')
    args, expected = BAD_INPUT[case]
    code, out, err = run_cli([a.replace("{tmp}", str(tmp_path)) for a in args], capsys)
    assert code == 2, (out, err)
    assert expected in err, err
    assert "Traceback" not in err


def test_collect_atari_subcommand(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "pong"
    args = ["collect", "--source", "atari", "--scenario", "Pong", "--out", str(out)]
    code, _, err = run_cli(
        [*args, "--episodes", "1", "--steps", "10", "--size", "32", "--workers", "1"], capsys
    )
    assert code == 0, err
    ds = open_dataset(out)
    assert ds.fps == 15 and ds.num_frames == 10 and "fire" in ds.action_space.buttons


def test_sigterm_stops_collection_cleanly_and_a_rerun_finishes(tmp_path: Path) -> None:
    out = tmp_path / "doom"
    command = ["wm-video", "collect", "--out", str(out), "--steps", "60", "--size", "32", "--workers", "2"]
    process = subprocess.Popen([*command, "--episodes", "200"], stderr=subprocess.PIPE, text=True)
    info = out / "meta" / "info.json"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and process.poll() is None:
        if info.exists() and json.loads(info.read_text()).get("total_episodes", 0) >= 2:
            break
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    assert "rerun to continue" in err and "Traceback" not in err
    held = len(open_dataset(out).episodes)
    assert 2 <= held < 200
    assert validate_dataset(out).ok
    assert not list((out / ".staging").glob("*")) if (out / ".staging").exists() else True
    rerun = subprocess.run(
        [*command, "--episodes", str(held + 1)], capture_output=True, text=True, timeout=120
    )
    assert rerun.returncode == 0, rerun.stderr
    assert len(open_dataset(out).episodes) == held + 1 and validate_dataset(out).ok


def test_bench_data_prints_medians(capsys: pytest.CaptureFixture[str]) -> None:
    args = [
        "bench",
        "data",
        "--episodes",
        "1",
        "--steps",
        "20",
        "--repeats",
        "1",
        "--size",
        "32",
        "--workers",
        "1",
    ]
    code, out, err = run_cli(args, capsys)
    assert code == 0, err
    for stage in ("collection", "cache build", "sampler"):
        assert stage in out


def test_inspect_draws_a_contact_sheet(
    tiny_dataset: TinyDataset, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import cv2

    sheet = tmp_path / "sheet.png"
    code, out, err = run_cli(["inspect", str(tiny_dataset.root), "--sheet", str(sheet)], capsys)
    assert code == 0, err
    image = cv2.imread(str(sheet))
    assert image.shape == (3 * 128, 8 * 128, 3)  # 3 episodes × 8 frames, 128 px tiles
    code, _, err = run_cli(
        ["inspect", str(tiny_dataset.root), "--sheet", str(tmp_path / "sheet.jpg")], capsys
    )
    assert code == 2 and "PNG" in err


def test_help_is_instant_and_written_for_players() -> None:
    """`wm-video --help` imports neither torch nor the video libraries, and starts with play."""
    check = "import sys, wm_video.cli; print(sorted(m for m in ('torch', 'av', 'cv2', 'pygame') if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, timeout=60)
    assert result.stdout.strip() == "[]", result.stderr
    help_text = subprocess.run(["wm-video", "--help"], capture_output=True, text=True, timeout=60).stdout
    assert "thin face" not in help_text and "wm-video play" in help_text
    assert help_text.index(" play ") < help_text.index(" collect ")


@pytest.mark.parametrize(
    ("argv", "own_flag"),
    [
        (["eval", "tokenizer", "--help"], "--chunk-frames"),
        (["eval", "dynamics", "--help"], "--horizon"),
        (["import", "mp4-jsonl", "--help"], "--buttons"),
        (["import", "vpt", "--help"], "--size"),
        (["bench", "data", "--help"], "--repeats"),
    ],
)
def test_each_subcommand_has_its_own_help(argv: list[str], own_flag: str, capsys) -> None:
    code, out, _ = run_cli(argv, capsys)
    assert code == 0 and f"usage: wm-video {' '.join(argv[:2])}" in out and own_flag in out
    assert "--baseline" not in out  # not the consistency run's flags


def test_errors_name_the_subcommand(tmp_path: Path, capsys) -> None:
    code, _, err = run_cli(["eval", "tokenizer", "--checkpoint", str(tmp_path / "missing")], capsys)
    assert code == 2 and "wm-video eval tokenizer: error:" in err.splitlines()[-1]


def test_one_way_to_say_device_and_threads(capsys) -> None:
    for argv in (["play"], ["eval"], ["eval", "dynamics"], ["eval", "tokenizer"], ["bench"], ["bench", "tokenizer"]):
        _, out, _ = run_cli([*argv, "--help"], capsys)
        flat = " ".join(out.split())
        assert "auto (default: cuda when present, else cpu)" in flat, argv
        assert "chosen by timing" in flat, argv


def test_one_way_to_say_dtype_and_compile(capsys) -> None:
    """Issue 17: every program that steps worlds takes the same --dtype {fp32,bf16,fp16} and --compile."""
    for argv in (["play"], ["eval"], ["eval", "dynamics"], ["bench"]):
        _, out, _ = run_cli([*argv, "--help"], capsys)
        flat = " ".join(out.split())
        assert "--dtype {fp32,bf16,fp16}" in flat and "the models' float type" in flat, argv
        assert "compile each world's whole step" in flat, argv
    code, out, err = run_cli(["play", "--headless", "--preset", "tiny", "--frames", "1", "--dtype", "fp16"], capsys)
    assert code == 2 and out == "" and err.strip().splitlines()[-1].endswith("use fp32 or bf16")


@pytest.mark.parametrize(
    "argv",
    [
        ["play", "--headless", "--preset", "tiny", "--frames", "1"],
        ["eval", "tokenizer", "--checkpoint", "never-read"],
        ["bench", "tokenizer", "--steps", "1"],
    ],
)
def test_one_device_check_for_every_program(argv: list[str], capsys) -> None:
    """wm_video.device.resolve_device is the one path: an unknown device is one line, exit 2, in
    every program that takes --device, before a model or a checkpoint is touched."""
    code, out, err = run_cli([*argv, "--device", "warp9"], capsys)
    assert code == 2 and out == ""
    assert err.strip().splitlines()[-1].endswith("--device warp9: not a device torch knows; use auto, cpu or cuda")


def test_device_auto_is_cuda_when_present() -> None:
    import torch

    from wm_video.device import resolve_device

    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto") == resolve_device(None) == expected
    assert resolve_device("cpu") == "cpu"


def test_codec_choices_agree_with_the_library() -> None:
    from wm_video.cli import CODECS as CLI_CODECS
    from wm_video.data.video import CODECS

    assert CLI_CODECS == CODECS


def test_counts_are_singular_for_one(tmp_path: Path, capsys) -> None:
    src = tmp_path / "recordings"
    src.mkdir()
    encode_video(src / "run1.mp4", smooth_frames(1, 32, 0), 20.0, VideoSettings(codec="lossless"))
    (src / "run1.jsonl").write_text(json.dumps({"keys": ["w"]}) + "\n")
    code, out, err = run_cli(["import", "mp4-jsonl", str(src), "--out", str(tmp_path / "ds")], capsys)
    assert code == 0, err
    assert "imported 1 episode, 1 frame" in out
