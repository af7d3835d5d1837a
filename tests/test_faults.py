"""The fault and bad-input battery of issue 19: every bad file, bad flag and fault a careful user
met, each asserting the exit status (2, or the documented one), one line naming the file, no
traceback, and nothing lost.

Small fixtures made here; commands run in-process (``main([...])``) except where a process is
what is tested (a SIGKILLed collection, a cache build that used to die of SIGBUS). Full disks are
real: a small tmpfs (mounted when the tests run as root; otherwise those cases are skipped and the
patched-write tests in test_checkpoint.py / test_train_reliability.py still run).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from conftest import MICRO_DYNAMICS, MICRO_TOKENIZER, make_dataset, save_random_tokenizer
from safetensors.torch import load_file, save_file

from wm_video.checkpoint import save_checkpoint
from wm_video.cli import main
from wm_video.data.validate import validate_dataset
from wm_video.dynamics import DynamicsModel

DYNAMICS = MICRO_DYNAMICS
VIDEO = "videos/observation.image/chunk-000/file-{:03d}.mp4"
DATA = "data/chunk-000/file-{:03d}.parquet"
EPISODES = "meta/episodes/chunk-000/file-000.parquet"


# -- running a command -------------------------------------------------------------------------
@dataclass
class Outcome:
    status: int
    out: str
    err: str


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> Outcome:
    try:
        status = main(argv)
    except SystemExit as exc:  # argparse's own errors
        status = int(exc.code or 0)
    captured = capsys.readouterr()
    return Outcome(status, captured.out, captured.err)


def assert_one_line(outcome: Outcome, *names: str) -> str:
    """Exit status 2 and one error line on stderr that names each of ``names``; no traceback."""
    assert outcome.status == 2, (outcome.status, outcome.err)
    assert "Traceback" not in outcome.err, outcome.err
    lines = [line for line in outcome.err.splitlines() if ": error: " in line]
    assert len(lines) == 1, outcome.err
    for name in names:
        assert name in lines[0], (name, lines[0])
    return lines[0]


def assert_flag_refused(outcome: Outcome, flag: str, reason: str) -> None:
    """argparse's refusal of a flag value: exit 2, its usage line and one error line."""
    assert outcome.status == 2 and "Traceback" not in outcome.err, outcome.err
    assert f"argument {flag}: {reason}" in outcome.err, outcome.err


# -- fixtures: a dataset, a world, and a small disk -----------------------------------------------
@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("pristine") / "ds", [12, 7, 20]).root


@pytest.fixture
def dataset(pristine: Path, tmp_path: Path) -> Path:
    """A fresh copy of a good 3-episode dataset (32 px, lossless) to damage."""
    return Path(shutil.copytree(pristine, tmp_path / "ds"))


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, pristine: Path) -> Path:
    """A dynamics checkpoint (random weights) naming its tokenizer and dataset; copied per test."""
    root = tmp_path_factory.mktemp("world")
    data = shutil.copytree(pristine, root / "ds")
    save_random_tokenizer(root / "tokenizer", MICRO_TOKENIZER)
    torch.manual_seed(1)
    save_checkpoint(
        root / "dynamics",
        kind="dynamics",
        config=DYNAMICS.to_dict(),
        step=7,
        weights=DynamicsModel(DYNAMICS).state_dict(),
        meta={"data": str(data), "tokenizer": "../../../tokenizer", "heldout_episodes": [2]},
    )
    return root


@pytest.fixture
def run_copy(world: Path, tmp_path: Path) -> Path:
    """A copy of the world: ``dynamics/`` and ``tokenizer/`` run folders side by side."""
    return Path(shutil.copytree(world, tmp_path / "world"))


def step_dir(run_dir: Path) -> Path:
    return next((run_dir / "checkpoints").glob("step-*"))


@contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    """A real small filesystem at ``path`` (root only: elsewhere the test is skipped)."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root")
    path.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(disk: Path) -> None:
    """Leave no free byte on the filesystem of ``disk``."""
    fd = os.open(disk / ".filler", os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        for chunk in (2**20, 2**16, 2**12, 1):
            try:
                while True:
                    os.write(fd, b"\0" * chunk)
            except OSError:
                continue
    finally:
        os.close(fd)


def remount_read_only(disk: Path) -> None:
    subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)


# -- bad dataset files: `cache` (and so train and eval) refuses them in one line; inspect lists them
def _edit_json(path: Path, edit: Callable[[dict], object]) -> None:
    """Change the JSON object in ``path`` in place (what ``edit`` returns is ignored)."""
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


def _edit_table(path: Path, column: str, edit: Callable[[list], None]) -> None:
    table = pq.read_table(path)
    values = table.column(column).to_pylist()
    edit(values)
    index = table.column_names.index(column)
    pq.write_table(
        table.set_column(index, column, pa.array(values, type=table.schema.field(column).type)), path
    )


def _set_action(ds: Path, value: float, column: int) -> None:
    def edit(rows: list) -> None:
        rows[3][column] = value

    _edit_table(ds / DATA.format(1), "action", edit)


def _set_episode(ds: Path, key: str, value: float) -> None:
    def edit(rows: list) -> None:
        rows[1] = value

    _edit_table(ds / EPISODES, key, edit)


def _loop(ds: Path) -> None:
    video = ds / VIDEO.format(1)
    video.unlink()
    video.symlink_to(video.name)


def _other_resolution(ds: Path) -> None:
    from conftest import smooth_frames

    from wm_video.data.video import VideoSettings, encode_video

    encode_video(ds / VIDEO.format(1), smooth_frames(7, 16, 1), 17.5, VideoSettings(codec="lossless"))


INFO = "meta/info.json"
BAD_DATASETS: dict[str, tuple[Callable[[Path], None], str]] = {
    # what is done to the dataset → the file the error must name
    "info.json without video_path": (lambda d: _edit_json(d / INFO, lambda i: i.pop("video_path")), INFO),
    "features as a list": (lambda d: _edit_json(d / INFO, lambda i: i.update(features=[1, 2])), INFO),
    "action without shape": (
        lambda d: _edit_json(d / INFO, lambda i: i["features"]["action"].pop("shape")),
        INFO,
    ),
    "data_path not a string": (lambda d: _edit_json(d / INFO, lambda i: i.update(data_path=5)), INFO),
    "totals as strings": (lambda d: _edit_json(d / INFO, lambda i: i.update(total_frames="39")), INFO),
    "fps NaN": (lambda d: _edit_json(d / INFO, lambda i: i.update(fps=float("nan"))), INFO),
    "wm_video.json a list": (lambda d: (d / "meta/wm_video.json").write_text("[]"), "meta/wm_video.json"),
    "a symlink loop for a video": (_loop, VIDEO.format(1)),
    "a video of another resolution": (_other_resolution, VIDEO.format(1)),
    "a NaN action": (lambda d: _set_action(d, float("nan"), 2), DATA.format(1)),
    "an infinite action": (lambda d: _set_action(d, float("inf"), 2), DATA.format(1)),
    "a button held at 2.0": (lambda d: _set_action(d, 2.0, 0), DATA.format(1)),
    "an episode past its video's end": (
        lambda d: _set_episode(d, "videos/observation.image/from_timestamp", 5.0),
        VIDEO.format(1),
    ),
    "dataset_from_index out of range": (
        lambda d: _set_episode(d, "dataset_from_index", 1000),
        "meta/episodes",
    ),
    "dataset_to_index out of range": (lambda d: _set_episode(d, "dataset_to_index", 10**6), "meta/episodes"),
}


@pytest.mark.parametrize("case", sorted(BAD_DATASETS))
def test_a_bad_dataset_is_refused_by_the_cache_and_listed_by_inspect(
    case: str, dataset: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    damage, named = BAD_DATASETS[case]
    damage(dataset)
    line = assert_one_line(run(["cache", str(dataset), "--size", "16"], capsys), named)
    assert "episode 2" not in line or "episode 1" in line  # the damaged episode, when one is named
    assert not list(dataset.glob(".cache/frames-16/*"))  # nothing cached from it
    report = validate_dataset(dataset, decode=False)
    assert not report.ok and any(named in p for p in report.problems), report.problems
    inspected = run(["inspect", str(dataset), "--no-decode"], capsys)
    assert inspected.status == 1 and "Traceback" not in inspected.err and "PROBLEMS" in inspected.out


# -- bad checkpoints and weights ---------------------------------------------------------------------
def _edit_checkpoint(run_dir: Path, edit: Callable[[dict], None]) -> None:
    _edit_json(step_dir(run_dir) / "checkpoint.json", edit)


def _nan_weights(run_dir: Path) -> None:
    path = step_dir(run_dir) / "model.safetensors"
    weights = load_file(path)
    next(iter(weights.values())).view(-1)[0] = float("nan")
    save_file(weights, path)


BAD_CHECKPOINTS: dict[str, tuple[Callable[[Path], None], str]] = {
    'step "ten"': (lambda r: _edit_checkpoint(r, lambda c: c.update(step="ten")), "checkpoint.json"),
    "meta a list": (lambda r: _edit_checkpoint(r, lambda c: c.update(meta=[])), "checkpoint.json"),
    "weights that do not fit the config": (
        lambda r: _edit_checkpoint(r, lambda c: c["config"].update(dim=64)),
        "model.safetensors",
    ),
    "NaN weights": (_nan_weights, "model.safetensors"),
    "a config of 262,144 wide": (
        lambda r: _edit_checkpoint(r, lambda c: c["config"].update(dim=262144, heads=2)),
        "checkpoint.json",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_CHECKPOINTS))
def test_a_bad_checkpoint_is_refused_by_export_play_and_eval(
    case: str, run_copy: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    damage, named = BAD_CHECKPOINTS[case]
    dynamics = run_copy / "dynamics"
    damage(dynamics)
    out = tmp_path / "shipped"
    assert_one_line(run(["export", str(dynamics), "--out", str(out)], capsys), named)
    assert not out.exists()  # nothing shipped
    if case in ("NaN weights", "a config of 262,144 wide"):
        line = assert_one_line(
            run(["play", "--headless", "--checkpoint", str(dynamics), "--frames", "2"], capsys), named
        )
        assert case != "a config of 262,144 wide" or "needs at least" in line
        assert_one_line(run(["eval", "dynamics", "--checkpoint", str(dynamics)], capsys), named)


# -- bad flags ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("flags", "flag", "reason"),
    [
        (["--lr", "nan"], "--lr", "must be a finite number"),
        (["--lr", "inf"], "--lr", "must be a finite number"),
        (["--grad-clip", "nan"], "--grad-clip", "must be a finite number"),
        (["--weight-decay", "nan"], "--weight-decay", "must be a finite number"),
        (["--max-minutes", "nan"], "--max-minutes", "must be a finite number"),
    ],
)
def test_non_finite_training_options_are_refused(
    flags: list[str],
    flag: str,
    reason: str,
    pristine: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = [
        "train",
        "tokenizer",
        "--data",
        str(pristine),
        "--out",
        str(tmp_path / "run"),
        "--max-steps",
        "1",
        *flags,
    ]
    assert_flag_refused(run(argv, capsys), flag, reason)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("flags", "flag", "reason"),
    [
        (["--fps", "inf"], "--fps", "must be a finite number"),
        (["--rewind-seconds", "nan"], "--rewind-seconds", "must be a finite number"),
        (["--temperature", "nan"], "--temperature", "must be a finite number"),
        (["--guidance", "inf"], "--guidance", "must be a finite number"),
        (["--order", "random"], "--order", "invalid choice"),
    ],
)
def test_non_finite_play_options_are_refused(
    flags: list[str], flag: str, reason: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert_flag_refused(
        run(["play", "--headless", "--preset", "tiny", "--frames", "2", *flags], capsys), flag, reason
    )


@pytest.mark.parametrize(
    ("command", "device", "message"),
    [
        ("play", "cuda", "no CUDA device"),
        ("play", "warp9", "not a device torch knows"),
        ("eval", "cuda", "no CUDA device"),
    ],
)
def test_a_device_this_machine_lacks_is_one_line(
    command: str, device: str, message: str, run_copy: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    if torch.cuda.is_available() and device == "cuda":
        pytest.skip("this machine has a GPU")
    checkpoint = str(run_copy / "dynamics")
    argv = (
        ["play", "--headless", "--checkpoint", checkpoint, "--device", device]
        if command == "play"
        else ["eval", "dynamics", "--checkpoint", checkpoint, "--device", device]
    )
    assert_one_line(run(argv, capsys), f"--device {device}", message)


@pytest.mark.parametrize("episodes", ["99", "a,b", ","])
def test_eval_dynamics_refuses_episodes_the_dataset_lacks(
    episodes: str, run_copy: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["eval", "dynamics", "--checkpoint", str(run_copy / "dynamics"), "--episodes", episodes]
    assert_one_line(run(argv, capsys), "--episodes")


def _write_pair(src: Path, lines: list[str]) -> None:
    from conftest import smooth_frames

    from wm_video.data.video import VideoSettings, encode_video

    src.mkdir(parents=True, exist_ok=True)
    encode_video(src / "a.mp4", smooth_frames(len(lines), 16, 0), 10.0, VideoSettings(codec="lossless"))
    (src / "a.jsonl").write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize(
    ("dx", "where"),
    [
        ("1" + "0" * 400, "a.jsonl:2"),
        ("1" + "0" * 5000, "a.jsonl:2"),
        ("1e308", "a.jsonl:2"),
        ("1e39", "a.jsonl:2"),
    ],
    ids=["int too large for a float", "int of 5,001 digits", "1e308 (inf as float32)", "1e39"],
)
def test_an_importer_number_out_of_range_names_file_and_line(
    dx: str, where: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _write_pair(tmp_path / "src", ['{"keys": ["w"], "mouse_dx": 0}', f'{{"keys": [], "mouse_dx": {dx}}}'])
    out = tmp_path / "out"
    assert_one_line(run(["import", "mp4-jsonl", str(tmp_path / "src"), "--out", str(out)], capsys), where)
    assert not out.exists() and not list(tmp_path.glob(".out*"))


@pytest.mark.parametrize("fps", ["1e-9", "1e12"])
def test_import_refuses_an_impossible_fps(
    fps: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _write_pair(tmp_path / "src", ['{"keys": ["w"]}'] * 2)
    argv = ["import", "mp4-jsonl", str(tmp_path / "src"), "--out", str(tmp_path / "out"), "--fps", fps]
    assert_one_line(run(argv, capsys), "--fps")


@pytest.mark.parametrize("command", ["train", "export", "eval"])
@pytest.mark.parametrize("kind", ["a file", "a symlink loop"])
def test_an_out_that_cannot_be_a_folder_is_refused_before_any_work(
    command: str,
    kind: str,
    run_copy: Path,
    pristine: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / "out"
    if kind == "a file":
        out.write_text("precious")
    else:
        out.symlink_to(out.name)
    argv = {
        "train": ["train", "tokenizer", "--data", str(pristine), "--out", str(out)],
        "export": ["export", str(run_copy / "dynamics"), "--out", str(out)],
        "eval": [
            "eval",
            "--checkpoint",
            str(run_copy / "dynamics"),
            "--out",
            str(out),
            "--data",
            str(tmp_path / "ds"),
            *(
                "--clips",
                "1",
                "--horizon",
                "2",
                "--soak",
                "0",
                "--skip",
                "actions,loops",
            ),  # little work, had it begun
        ],
    }[command]
    shutil.copytree(pristine, tmp_path / "ds")
    assert_one_line(run(argv, capsys), str(out))
    assert kind != "a file" or out.read_text() == "precious"
    assert not (tmp_path / "ds" / ".cache").exists()  # eval refused before building anything


# -- sizes with no upper bound: refused with the figure, before allocating ------------------------------
def test_eval_refuses_more_clips_than_memory_holds(
    run_copy: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["eval", "dynamics", "--checkpoint", str(run_copy / "dynamics"), "--clips", "10000000"]
    line = assert_one_line(run(argv, capsys), "10,000,000 clips", "needs at least", "available")
    assert "--clips" in line


def test_play_refuses_a_video_scale_beyond_memory(
    run_copy: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [
        "play",
        "--headless",
        "--checkpoint",
        str(run_copy / "dynamics"),
        "--frames",
        "2",
        "--video-scale",
        "10000",
    ]
    argv += ["--record", str(tmp_path / "play.mp4")]
    assert_one_line(run(argv, capsys), "--video-scale 10000", "needs at least")
    assert not list(tmp_path.glob("*play.mp4*"))


def test_a_cache_larger_than_the_disk_is_refused_with_the_figures(
    pristine: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with tmpfs(tmp_path / "disk", "1m") as disk:
        argv = ["cache", str(pristine), "--size", "4096", "--cache-dir", str(disk)]
        assert_one_line(run(argv, capsys), "the training cache needs", "free")
        assert list(disk.rglob("*.u8")) == []


# -- full disks (a real tmpfs) ------------------------------------------------------------------------------
def test_a_cache_build_that_fills_the_disk_exits_2_and_leaves_nothing(pristine: Path, tmp_path: Path) -> None:
    """It used to die of SIGBUS (a memory map written past the end of the disk), silently, leaving
    the disk 100 % full: a process of its own, so that such a death cannot take the tests with it."""
    with tmpfs(tmp_path / "disk", "600k") as disk:
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "wm_video",
                "cache",
                str(pristine),
                "--size",
                "128",
                "--cache-dir",
                str(disk),
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 2, (result.returncode, result.stderr)
        assert "Traceback" not in result.stderr and "needs" in result.stderr
        assert shutil.disk_usage(disk).used < 100_000  # the partial cache is gone


@pytest.mark.parametrize("writer", ["eval --json", "play --record", "export"])
def test_a_full_disk_is_one_line_and_leaves_nothing_half_written(
    writer: str, run_copy: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dynamics = str(run_copy / "dynamics")
    with tmpfs(tmp_path / "disk", "256k") as disk:
        fill(disk)
        argv = {
            "eval --json": [
                "eval",
                "dynamics",
                "--checkpoint",
                dynamics,
                "--clips",
                "2",
                "--json",
                str(disk / "r.json"),
            ],
            "play --record": [
                "play",
                "--headless",
                "--checkpoint",
                dynamics,
                "--frames",
                "3",
                "--record",
                str(disk / "p.mp4"),
            ],
            "export": ["export", dynamics, "--out", str(disk / "world")],
        }[writer]
        line = assert_one_line(run(argv, capsys), str(disk), "disk full")
        assert "MiB free" in line
        assert sorted(p.name for p in disk.iterdir()) == [".filler"] or writer == "export"
        if writer == "export":
            assert not (disk / "world" / "world.json").exists()


def test_collect_on_a_full_disk_keeps_every_committed_episode(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with tmpfs(tmp_path / "disk", "2m") as disk:
        out = disk / "doom"
        argv = ["collect", "--out", str(out), "--steps", "5", "--size", "16", "--workers", "1"]
        assert run([*argv, "--episodes", "1"], capsys).status == 0
        fill(disk)
        assert_one_line(run([*argv, "--episodes", "3"], capsys), "disk full")
        (disk / ".filler").unlink()
        report = validate_dataset(out)
        assert report.ok and report.episodes == 1, report.problems


def test_import_on_a_full_disk_leaves_no_half_dataset(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _write_pair(tmp_path / "src", ['{"keys": ["w"]}'] * 4)
    with tmpfs(tmp_path / "disk", "256k") as disk:
        fill(disk)
        assert_one_line(
            run(["import", "mp4-jsonl", str(tmp_path / "src"), "--out", str(disk / "out")], capsys),
            "disk full",
        )
        assert sorted(p.name for p in disk.iterdir()) == [".filler"]


# -- read-only storage ----------------------------------------------------------------------------------
def test_a_dataset_on_read_only_storage_is_cached_elsewhere(
    small_presets: None,
    pristine: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    with tmpfs(tmp_path / "ro", "4m") as disk:
        data = Path(shutil.copytree(pristine, disk / "ds"))
        remount_read_only(disk)
        line = assert_one_line(run(["cache", str(data), "--size", "16"], capsys), str(data), "read-only")
        assert "--cache-dir" in line and "WM_VIDEO_CACHE_DIR" in line
        assert (
            run(["cache", str(data), "--size", "16", "--cache-dir", str(tmp_path / "c1")], capsys).status == 0
        )
        monkeypatch.setenv("WM_VIDEO_CACHE_DIR", str(tmp_path / "c2"))
        assert run(["cache", str(data), "--size", "16"], capsys).status == 0
        assert list((tmp_path / "c1").glob("ds-*/frames-16/frames.u8"))
        assert list((tmp_path / "c2").glob("ds-*/frames-16/frames.u8"))
        out = disk / "run"
        assert_one_line(
            run(["train", "tokenizer", "--data", str(data), "--out", str(out)], capsys), "read-only"
        )
        monkeypatch.delenv("WM_VIDEO_CACHE_DIR")
        trained = train(data, tmp_path / "run", 1, capsys, "--cache-dir", str(tmp_path / "c3"))
        assert trained.status == 0, trained.err  # a read-only dataset trains, its cache elsewhere
        assert list((tmp_path / "c3").glob("ds-*/frames-32/frames.u8"))


# -- processes that must not outlive their parent ----------------------------------------------------------
def test_a_sigkilled_collection_leaves_no_worker_or_engine_running(tmp_path: Path) -> None:
    import psutil

    command = [sys.executable, "-m", "wm_video", "collect", "--out", str(tmp_path / "doom"), "--workers", "2"]
    command += ["--episodes", "40", "--steps", "400", "--size", "16", "--codec", "h264-yuv420"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    parent = psutil.Process(process.pid)
    deadline = time.monotonic() + 60
    children: list[psutil.Process] = []
    while time.monotonic() < deadline and process.poll() is None:
        children = parent.children(recursive=True)
        if sum(child.name() == "vizdoom" for child in children) >= 2:
            break
        time.sleep(0.1)
    assert sum(child.name() == "vizdoom" for child in children) >= 2, "the engines never started"
    process.send_signal(signal.SIGKILL)
    process.wait()
    gone, alive = psutil.wait_procs(children, timeout=15)
    for leftover in alive:
        leftover.kill()
    assert not alive, [(p.pid, p.name()) for p in alive]


# -- files get the usual permissions -------------------------------------------------------------------------
def test_data_and_checkpoints_are_written_with_the_usual_mode(pristine: Path, run_copy: Path) -> None:
    umask = os.umask(0o022)
    os.umask(umask)
    expected = 0o666 & ~umask
    for path in (
        pristine / INFO,
        pristine / "meta/stats.json",
        step_dir(run_copy / "dynamics") / "checkpoint.json",
    ):
        assert path.stat().st_mode & 0o777 == expected, path


# -- the training session: one run per folder, damage survived, logs without repeats, clear stops -------------
@pytest.fixture
def small_presets(monkeypatch: pytest.MonkeyPatch) -> None:
    from wm_video.tokenizer import TOKENIZER_PRESETS

    monkeypatch.setitem(TOKENIZER_PRESETS, "tiny", MICRO_TOKENIZER)


def train(data: Path, out: Path, steps: int, capsys: pytest.CaptureFixture[str], *extra: str) -> Outcome:
    argv = ["train", "tokenizer", "--data", str(data), "--out", str(out), "--max-steps", str(steps)]
    argv += [
        "--batch-size",
        "1",
        "--clip-len",
        "2",
        "--log-every",
        "1",
        "--eval-every",
        "0",
        "--save-every",
        "1",
    ]
    return run([*argv, "--warmup-steps", "1", "--no-progress", *extra], capsys)


def logged_steps(out: Path) -> list[int]:
    from wm_video.train.common import read_log

    return [record["step"] for record in read_log(out) if "loss" in record]


def test_a_batch_beyond_memory_is_refused_with_the_figures(
    small_presets: None, pristine: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    line = assert_one_line(
        train(pristine, tmp_path / "run", 1, capsys, "--batch-size", "10000000"), "--batch-size"
    )
    assert "needs at least" in line and "available" in line
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_a_run_folder_held_by_another_process_is_refused_naming_it(
    small_presets: None, pristine: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from pathlib import Path; from wm_video.train.runlock import RunLock;"
         f"RunLock(Path({str(out)!r})).acquire(); print('locked', flush=True); time.sleep(120)"],
        stdout=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        line = assert_one_line(train(pristine, out, 1, capsys), str(out), f"pid {holder.pid}")
        assert "another training is running" in line
        assert sorted(p.name for p in out.iterdir()) == [".lock"]  # nothing written beside it
    finally:
        holder.kill()
        holder.wait()
    assert train(pristine, out, 1, capsys).status == 0  # the kernel released the dead holder's lock


def test_a_damaged_newest_checkpoint_is_passed_over_and_the_log_keeps_no_repeat(
    small_presets: None, pristine: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    assert train(pristine, out, 2, capsys).status == 0
    newest = out / "checkpoints" / "step-00000002" / "training.safetensors"
    newest.write_bytes(newest.read_bytes()[:100])  # truncated, as by a failing disk
    resumed = train(pristine, out, 3, capsys)
    assert resumed.status == 0, resumed.err
    assert "warning:" in resumed.err and str(newest) in resumed.err and "step-00000001" in resumed.err
    assert "from step 1" in resumed.out
    assert "keeps no training state" not in resumed.out  # the one before the newest keeps it
    assert load_file(out / "checkpoints" / "step-00000003" / "model.safetensors")
    assert logged_steps(out) == [1, 2, 3]  # step 2 was done again, and is logged once


def test_a_resume_from_a_checkpoint_without_training_state_says_what_starts_afresh(
    small_presets: None, pristine: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The two newest checkpoints both damaged: the third keeps only weights (issue 21's retention),
    and the resume says the optimizer and clip order start afresh instead of passing it silently."""
    out = tmp_path / "run"
    assert train(pristine, out, 3, capsys).status == 0
    for step in (2, 3):
        damaged = out / "checkpoints" / f"step-{step:08d}" / "model.safetensors"
        damaged.write_bytes(damaged.read_bytes()[:100])
    resumed = train(pristine, out, 4, capsys)
    assert resumed.status == 0, resumed.err
    assert "from step 1" in resumed.out
    assert "step-00000001 keeps no training state" in resumed.out and "start afresh" in resumed.out


def test_a_crashed_run_resumed_logs_each_step_once(
    small_presets: None,
    pristine: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from wm_video.train import session as session_module

    out = tmp_path / "run"
    real_save = session_module.TrainingSession.save

    def save_then_die(self: session_module.TrainingSession, step: int, meta: dict) -> None:
        if step == 3:
            raise RuntimeError("killed")
        real_save(self, step, meta)

    monkeypatch.setattr(session_module.TrainingSession, "save", save_then_die)
    with pytest.raises(RuntimeError, match="killed"):
        train(pristine, out, 3, capsys, "--save-every", "2")
    assert logged_steps(out) == [1, 2, 3]
    monkeypatch.setattr(session_module.TrainingSession, "save", real_save)
    assert train(pristine, out, 4, capsys, "--save-every", "2").status == 0
    assert logged_steps(out) == [1, 2, 3, 4]


def test_a_signal_on_another_rank_is_the_reason_every_rank_gives(
    small_presets: None, pristine: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On 2 nodes rank 0 said "time budget" when rank 1 had the SIGTERM: ranks agree on the reason."""
    from wm_video.train.options import SessionOptions
    from wm_video.train.session import TrainingSession

    session = TrainingSession(
        kind="tokenizer", options=SessionOptions(out=tmp_path / "run"), program_options={}
    )
    try:
        session.world_size = 2
        monkeypatch.setattr(
            session.accelerator, "reduce", lambda flag, reduction: torch.maximum(flag, torch.tensor([2.0]))
        )
        assert session.should_stop() and session.stopped_by_signal
        assert session.stop.signal_name == "SIGTERM on another process"
    finally:
        session.close()


class _Store:
    """The part of a c10d store a RankWatch uses, shared by threads."""

    def __init__(self) -> None:
        self.values: dict[str, bytes] = {}

    def set(self, key: str, value: str) -> None:
        self.values[key] = value.encode()

    def check(self, keys: list[str]) -> bool:
        return all(k in self.values for k in keys)

    def get(self, key: str) -> bytes:
        return self.values[key]


def test_a_failed_collective_names_the_rank_that_went_silent(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from wm_video.train import ranks

    monkeypatch.setattr(ranks, "BEAT_S", 0.05)
    store = _Store()
    watches = [ranks.RankWatch(store, rank=r, world_size=2, stale_after_s=60, out=tmp_path) for r in (1, 0)]
    for watch in watches:
        watch.start()
    try:
        time.sleep(0.3)
        watches[0].stop()  # rank 1 dies
        failure = ranks.rank_failure(RuntimeError("[gloo] Connection closed by peer [127.0.0.1]:1234"))
        assert isinstance(failure, ranks.RankFailure)
        assert (
            "rank 0: rank 1" in str(failure)
            and "stopped answering" in str(failure)
            and str(tmp_path) in str(failure)
        )
        assert ranks.rank_failure(ValueError("a bug")).__class__ is ValueError  # anything else is left alone
    finally:
        for watch in watches:
            watch.stop()


def test_a_frozen_rank_stops_the_run_naming_it(tmp_path: Path) -> None:
    """A real SIGSTOP of rank 1 of 2 (gloo): rank 0 says which rank froze and exits 2, instead of
    waiting in a collective forever."""
    script = tmp_path / "job.py"
    script.write_text(
        "import os, signal, sys, time\n"
        "from pathlib import Path\n"
        "import torch, torch.distributed as dist\n"
        "from wm_video.train.ranks import RankWatch\n"
        "dist.init_process_group('gloo')\n"
        "RankWatch.start_for_process_group(stale_after_s=3, out=Path(sys.argv[1]))\n"
        "for step in range(10_000):\n"
        "    if dist.get_rank() == 1 and step == 3:\n"
        "        print(os.getpid(), flush=True)\n"
        "        os.kill(os.getpid(), signal.SIGSTOP)\n"
        "    dist.all_reduce(torch.ones(1))\n"
        "    time.sleep(0.02)\n"
    )
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    started = time.monotonic()
    job = subprocess.Popen(
        [*command, str(script), str(tmp_path / "run")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert job.stdout is not None and job.stderr is not None
    frozen = int(job.stdout.readline())
    error = ""
    for line in job.stderr:  # rank 0 notices within the 3 s it was given, and says so
        if "wm-video train: error:" in line:
            error = line
            break
    os.kill(frozen, signal.SIGKILL)  # torchrun's SIGTERM cannot end a stopped process; only this can
    job.communicate(timeout=60)
    assert job.returncode != 0 and time.monotonic() - started < 90
    assert "rank 0: rank 1 (silent for" in error, error
    assert "frozen (SIGSTOP, a hung machine) or dead" in error


def test_a_full_disk_under_the_training_log_is_one_line_naming_it(
    small_presets: None, pristine: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with tmpfs(tmp_path / "disk", "1m") as disk:
        out = disk / "run"
        assert train(pristine, out, 1, capsys, "--keep", "1").status == 0
        kept = sorted(p.name for p in (out / "checkpoints").iterdir())
        fill(disk)
        line = assert_one_line(train(pristine, out, 3, capsys, "--keep", "1"), "disk full")
        assert str(out) in line
        assert (
            sorted(p.name for p in (out / "checkpoints").iterdir()) == kept
        )  # the last good checkpoint stays
