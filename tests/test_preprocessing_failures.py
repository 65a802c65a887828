"""Preprocessing when the machine fails (a full disk, a killed worker) and across shards, on the demo database.

Every run passes ``--vggish-checkpoint`` (random weights written once for the module) so that an
output folder holds only the features: it fits on a tmpfs of a few MB.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import preprocessing
from base.errors import EXIT_ENVIRONMENT, EXIT_USER_ERROR, run_cli
from base.preprocessing.failures import FAULT_ENV
from base.safe_pickle import load_pickle
from tests.conftest import ROOT
from tests.disk_helpers import resize, tmpfs

# One worker runs them all under pytest-xdist: the clean run they compare with is built once.
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("preprocessing_failures")]


@pytest.fixture(scope="module")
def checkpoint(vggish_checkpoints: dict[str, Path]) -> Path:
    """Random VGGish weights (seed 0) in the V2 checkpoint format, shared by the session."""
    return vggish_checkpoints["v2"]


def _argv(database: Path, output: Path, checkpoint: Path, *extra: str) -> list[str]:
    return ["--database", str(database), "--output", str(output), "--vggish-checkpoint", str(checkpoint),
            "--quiet", *extra]


@pytest.fixture(scope="module")
def clean(demo_database: Path, checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    output = tmp_path_factory.mktemp("clean") / "out"
    assert run_cli(preprocessing.main, _argv(demo_database, output, checkpoint, "--jobs", "2")) == 0
    return output


def _arrays(output: Path, trials: set[str] | None = None) -> dict[str, bytes]:
    files = sorted((output / "npy_data").glob("[!.]*/*.npy"))
    return {str(p.relative_to(output)): p.read_bytes() for p in files if trials is None or p.parent.name in trials}


def _summary(output: Path) -> dict[str, dict[str, str]]:
    return {row["trial"]: row for row in csv.DictReader(open(output / "preprocessing_summary.csv"))}


def _error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("error:")]


def _fault(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, fault: str, stage: str, video: str, times: int) -> None:
    count_dir = tmp_path / "fault_count"
    count_dir.mkdir(exist_ok=True)
    spec = {"fault": fault, "stage": stage, "video": video, "times": times, "count_dir": str(count_dir)}
    monkeypatch.setenv(FAULT_ENV, json.dumps(spec))  # spawned workers inherit it


def test_disk_full_midway_is_one_line_keeps_finished_trials_and_resumes(
        demo_database: Path, checkpoint: Path, clean: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    small = tmp_path / "small"
    with tmpfs(small, "2m") as mounted:
        if not mounted:  # not root: a writer that raises ENOSPC once, midway
            video = sorted({row["video"] for row in _summary(clean).values()})[2]
            _fault(monkeypatch, tmp_path, "enospc", "trials", video, times=1)
        output = small / "out"
        capsys.readouterr()
        assert run_cli(preprocessing.main, _argv(demo_database, output, checkpoint, "--jobs", "1")) == EXIT_ENVIRONMENT
        err = capsys.readouterr().err
        (line,) = _error_lines(err)
        assert "no space left" in line or "stopped short" in line, line
        assert "rerunning the same command continues" in line
        assert "Traceback" not in err and "skipped trial" not in err
        finished = {p.name for p in (output / "npy_data").iterdir() if not p.name.startswith(".")}
        assert len(finished) < len(_summary(clean))
        assert _arrays(output) == _arrays(clean, finished)  # the finished trials are intact
        assert not (output / "dataset_info.pkl").exists()
        if (output / "preprocessing_summary.csv").is_file():
            statuses = {row["status"] for row in _summary(output).values()}
            assert "not done" in statuses and statuses <= {"ok", "not done"}
        if mounted:
            resize(small, "64m")
        monkeypatch.delenv(FAULT_ENV, raising=False)
        assert run_cli(preprocessing.main, _argv(demo_database, output, checkpoint, "--jobs", "1")) == 0
        assert _arrays(output) == _arrays(clean)
        assert load_pickle(output / "dataset_info.pkl") == load_pickle(clean / "dataset_info.pkl")


def _two_person_video(clean: Path) -> str:
    return next(row["video"] for name, row in _summary(clean).items() if name.endswith("_left"))


def test_a_killed_worker_is_replaced_and_its_video_retried(
        demo_database: Path, checkpoint: Path, clean: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    _fault(monkeypatch, tmp_path, "kill", "vggish", _two_person_video(clean), times=1)
    output = tmp_path / "out"
    capsys.readouterr()
    assert run_cli(preprocessing.main, _argv(demo_database, output, checkpoint, "--jobs", "2")) == 0
    err = capsys.readouterr().err
    assert "killed by signal 9 (SIGKILL: usually the out-of-memory killer): retrying" in err
    assert not _error_lines(err)
    assert _arrays(output) == _arrays(clean)
    assert {row["status"] for row in _summary(output).values()} == {"ok"}


def test_a_video_that_kills_its_worker_every_time_is_given_up_alone(
        demo_database: Path, checkpoint: Path, clean: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    video = _two_person_video(clean)
    _fault(monkeypatch, tmp_path, "kill", "audio", video, times=100)
    output = tmp_path / "out"
    capsys.readouterr()
    assert run_cli(preprocessing.main, _argv(demo_database, output, checkpoint, "--jobs", "2")) == EXIT_ENVIRONMENT
    err = capsys.readouterr().err
    (line,) = _error_lines(err)
    assert f"video {video}: its worker died twice, the last time in the audio stage: it was killed by signal 9" in line
    assert "lower --jobs" in line and "Traceback" not in err
    summary = _summary(output)
    given_up = {name for name, row in summary.items() if row["video"] == video}
    assert len(given_up) == 2 and all(summary[name]["status"] == "not done" for name in given_up)
    assert all(row["status"] == "ok" for name, row in summary.items() if name not in given_up)
    assert _arrays(output) == _arrays(clean, set(summary) - given_up)


def _shard_command(database: Path, output: Path, checkpoint: Path, shard: str) -> list[str]:
    return [sys.executable, str(ROOT / "preprocessing.py"), *_argv(database, output, checkpoint, "--jobs", "1"),
            "--shard", shard]


def test_three_concurrent_shards_equal_one_run_and_finalize_lists_what_is_missing(
        demo_database: Path, checkpoint: Path, clean: Path, tmp_path: Path, capsys) -> None:
    output = tmp_path / "sharded"
    processes = [subprocess.Popen(_shard_command(demo_database, output, checkpoint, f"{i}/3"), cwd=ROOT,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in (1, 2, 3)]
    logs = [process.communicate(timeout=600)[0] for process in processes]
    assert [process.returncode for process in processes] == [0, 0, 0], logs
    assert (output / "dataset_info.pkl").is_file()  # written by the last shard to finish
    assert run_cli(preprocessing.main, ["--output", str(output), "--finalize", "--quiet"]) == 0
    assert _arrays(output) == _arrays(clean)
    assert load_pickle(output / "dataset_info.pkl") == load_pickle(clean / "dataset_info.pkl")
    assert _summary(output) == _summary(clean)

    # one shard never ran: --finalize refuses and names its trials
    partial = tmp_path / "partial"
    shutil.copytree(output, partial)
    (partial / "dataset_info.pkl").unlink()
    plan = json.loads((partial / ".shards" / "plan.json").read_text())
    lost = [t["name"] for t in plan["trials"] if t["shard"] == 2]
    for name in lost:
        shutil.rmtree(partial / "npy_data" / name)
    (partial / ".shards" / "shard-002-of-003.json").unlink()
    capsys.readouterr()
    assert run_cli(preprocessing.main, ["--output", str(partial), "--finalize"]) == EXIT_USER_ERROR
    (line,) = _error_lines(capsys.readouterr().err)
    assert f"{len(lost)} of {len(plan['trials'])} trials are not done: shard 2/3: {len(lost)} (" in line
    assert all(name in line for name in lost)
    assert not (partial / "dataset_info.pkl").exists()


def test_ctrl_c_is_one_line_without_worker_tracebacks(demo_database: Path, checkpoint: Path, tmp_path: Path) -> None:
    output = tmp_path / "out"
    command = [sys.executable, str(ROOT / "preprocessing.py"), *_argv(demo_database, output, checkpoint, "--jobs", "2")]
    process = subprocess.Popen(command, cwd=ROOT, start_new_session=True, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while time.time() < deadline and process.poll() is None and not list(output.glob(".cache/*/mfcc.npy")):
        time.sleep(0.1)
    os.killpg(process.pid, signal.SIGINT)  # what Ctrl-C in a terminal does: the whole process group
    started = time.time()
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130 and time.time() - started < 20
    assert "interrupted: finished work is kept; rerun the same command to resume" in err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
