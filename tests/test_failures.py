"""Failures of the machine are told apart from bad input, and reported in one line with exit code 3."""

from __future__ import annotations

import errno
import json
import os
import signal
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import pytest
import torch

from base import atomic
from base.errors import (
    EXIT_ENVIRONMENT,
    EXIT_USER_ERROR,
    EnvironmentFailure,
    MissingTool,
    UserError,
    os_error_message,
    run_cli,
)
from base.preprocessing.failures import (
    BAD_INPUT,
    FAULT_ENV,
    MACHINE,
    classify,
    describe_exit,
    inject_test_fault,
)
from base.preprocessing.media import ffmpeg_write_error
from base.training.checkpointing import atomic_torch_save, load_torch_file
from tests.disk_helpers import fill, tmpfs


def _enospc(filename: str | None = None) -> OSError:
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), filename)


def _error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("error:")]


# ----------------------------------------------------------------------------- classification


def test_bad_input_and_machine_failures_are_told_apart(tmp_path):
    out = tmp_path / "out"
    cases = {
        UserError("trial x: every annotation row is -5"): (BAD_INPUT, "every annotation row is -5"),
        MissingTool("ffmpeg was not found: install it"): (MACHINE, "ffmpeg was not found"),
        _enospc(): (MACHINE, f"no space left on the device holding {out}"),
        _enospc(str(out / "npy_data" / "a.npy")): (MACHINE, "no space left on the device holding "
                                                             f"{out / 'npy_data' / 'a.npy'}"),
        OSError(errno.EDQUOT, "Disk quota exceeded"): (MACHINE, "disk quota exceeded"),
        OSError(errno.EROFS, "Read-only file system", str(out / "x")): (MACHINE, "read-only file system"),
        OSError(errno.EACCES, "Permission denied", str(out / "npy_data")): (MACHINE, "permission denied"),
        OSError(errno.EACCES, "Permission denied", str(tmp_path / "db" / "a.txt")): (BAD_INPUT, "cannot read"),
        OSError("96768 requested and 40832 written"): (MACHINE, "stopped short (no space left"),
        MemoryError(): (MACHINE, "out of memory: lower --jobs"),
        BrokenProcessPool("gone"): (MACHINE, "a worker process died"),
        RuntimeError("bug"): (BAD_INPUT, "internal error RuntimeError: bug"),
    }
    for exc, (kind, text) in cases.items():
        failure = classify(exc, out)
        assert failure.kind == kind and text in failure.message, (exc, failure)


def test_a_missing_tool_is_still_a_user_error_for_old_callers():
    assert issubclass(MissingTool, UserError) and issubclass(MissingTool, EnvironmentFailure)


def test_describe_exit_names_the_signal_and_out_of_memory():
    assert describe_exit(-signal.SIGKILL) == "was killed by signal 9 (SIGKILL: usually the out-of-memory killer)"
    assert describe_exit(-signal.SIGSEGV) == "was killed by signal 11 (SIGSEGV)"
    assert describe_exit(3) == "exited with code 3"
    assert describe_exit(None) == "died"


def test_ffmpeg_write_errors_are_os_errors():
    error = ffmpeg_write_error("[out#0/wav] Error writing trailer: No space left on device", Path("/o/a.wav"))
    assert error.errno == errno.ENOSPC and error.filename == "/o/a.wav"
    error = ffmpeg_write_error("/o/a.wav: Permission denied\n", Path("/o/a.wav"))
    assert error.errno == errno.EACCES
    assert ffmpeg_write_error("/db/v.mp4: Permission denied\n", Path("/o/a.wav")) is None
    assert ffmpeg_write_error("Invalid data found when processing input", Path("/o/a.wav")) is None


def test_os_error_message_only_for_failures_of_the_machine():
    assert os_error_message(OSError(errno.ENOENT, "No such file or directory", "x")) is None
    assert os_error_message(ValueError("x")) is None
    assert os_error_message(_enospc(), default_path="/data/out") == (
        "no space left on the device holding /data/out: free space (or choose another folder) and rerun")


# ----------------------------------------------------------------------------- run_cli


def _raising(exc: BaseException):
    def main(argv):
        raise exc
    return main


@pytest.mark.parametrize("exc,code,text", [
    (_enospc("/runs/checkpoint.pt"), EXIT_ENVIRONMENT, "no space left on the device holding /runs/checkpoint.pt"),
    (EnvironmentFailure("a vggish worker died: lower --jobs"), EXIT_ENVIRONMENT, "a vggish worker died"),
    (MissingTool("ffmpeg was not found"), EXIT_ENVIRONMENT, "ffmpeg was not found"),
    (MemoryError(), EXIT_ENVIRONMENT, "out of memory"),
    (UserError("bad path"), EXIT_USER_ERROR, "bad path"),
])
def test_run_cli_prints_one_line_and_the_exit_code(exc, code, text, capsys):
    assert run_cli(_raising(exc), []) == code
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and text in err and "Traceback" not in err


def test_run_cli_does_not_hide_bugs():
    with pytest.raises(OSError):
        run_cli(_raising(OSError(errno.ENOENT, "No such file or directory", "x")), [])
    with pytest.raises(ZeroDivisionError):
        run_cli(_raising(ZeroDivisionError()), [])


# ----------------------------------------------------------------------------- atomic writes on a full disk


def test_atomic_writes_on_a_full_disk_keep_the_previous_file(tmp_path):
    folder = tmp_path / "small"
    with tmpfs(folder, "1m") as mounted:
        if not mounted:
            pytest.skip("cannot mount a tmpfs here (not root)")
        checkpoint = folder / "checkpoint.pt"
        atomic_torch_save({"epoch": 0, "weights": torch.arange(10.0)}, checkpoint)
        atomic.write_text(folder / "summary.csv", "a,b\n1,2\n")
        fill(folder)
        with pytest.raises(OSError) as caught:
            atomic_torch_save({"epoch": 1, "weights": torch.zeros(100_000)}, checkpoint)
        assert caught.value.errno == errno.ENOSPC and caught.value.filename == str(checkpoint)
        with pytest.raises(OSError) as caught:
            atomic.write_text(folder / "summary.csv", "x" * 100_000)
        assert caught.value.errno == errno.ENOSPC
        assert load_torch_file(checkpoint)["epoch"] == 0
        assert (folder / "summary.csv").read_text() == "a,b\n1,2\n"
        assert sorted(p.name for p in folder.iterdir()) == ["checkpoint.pt", "filler.bin", "summary.csv"]


def test_atomic_files_are_readable_like_any_other_output(tmp_path):
    atomic.write_text(tmp_path / "a.txt", "x")
    with open(tmp_path / "b.txt", "w") as handle:
        handle.write("x")
    assert (tmp_path / "a.txt").stat().st_mode == (tmp_path / "b.txt").stat().st_mode


def test_disk_full_while_saving_a_checkpoint_keeps_the_last_one(tmp_path, monkeypatch, capsys, one_torch_thread):
    """main.py: one line, exit 3, the checkpoint of the last finished epoch intact; --resume 1 finishes."""
    import main
    from base.training import trainer
    from tests.processed_helpers import make_processed_dataset
    from tests.test_main import fast_args

    dataset = make_processed_dataset(tmp_path / "data", n_train=5, n_val=2, n_test=0, lengths=(16, 12, 20),
                                     modalities=("mfcc", "vggish"))
    runs = tmp_path / "runs"
    with tmpfs(runs, "64m") as mounted:
        real_save, saves = trainer.atomic_torch_save, []

        def save_filling_the_disk(obj, path):
            if Path(path).name == "checkpoint.pt":
                saves.append(path)
                if len(saves) == 2:  # the end of epoch 1
                    if not mounted:
                        raise _enospc()
                    fill(runs)
            real_save(obj, path)

        monkeypatch.setattr(trainer, "atomic_torch_save", save_filling_the_disk)
        assert run_cli(main.main, fast_args(dataset, runs, "--num-epochs", "3", "--stamp", "s")) == EXIT_ENVIRONMENT
        err = capsys.readouterr().err
        assert len(_error_lines(err)) == 1 and "no space left" in err and "Traceback" not in err
        (run,) = [p for p in runs.iterdir() if p.is_dir()]
        assert load_torch_file(run / "checkpoint.pt")["state"]["next_epoch"] == 1
        assert not [p for p in run.iterdir() if p.name.endswith(".tmp")]
        (runs / "filler.bin").unlink(missing_ok=True)
        monkeypatch.setattr(trainer, "atomic_torch_save", real_save)
        assert run_cli(main.main, fast_args(dataset, runs, "--num-epochs", "3", "--stamp", "s",
                                            "--resume", "1")) == 0
        assert load_torch_file(run / "checkpoint.pt")["state"]["next_epoch"] == 3


def test_disk_full_while_writing_a_submission_is_one_line(tmp_path, capsys):
    import numpy as np

    from base.prediction.submission import write_submission

    folder = tmp_path / "small"
    with tmpfs(folder, "1m") as mounted:
        if not mounted:
            pytest.skip("cannot mount a tmpfs here (not root)")
        (folder / "submission").mkdir()
        fill(folder)
        predictions = {"a": np.zeros((5000, 2), dtype=np.float32)}
        assert run_cli(lambda argv: write_submission(folder / "submission", predictions), []) == EXIT_ENVIRONMENT
        err = capsys.readouterr().err
        assert len(_error_lines(err)) == 1 and "no space left" in err and "Traceback" not in err
        assert list((folder / "submission").iterdir()) == []  # no partial file


# ----------------------------------------------------------------------------- the test hook and the pools


def test_inject_test_fault_fires_the_given_number_of_times(tmp_path, monkeypatch):
    spec = {"fault": "enospc", "stage": "trials", "video": "v", "times": 2, "count_dir": str(tmp_path)}
    monkeypatch.setenv(FAULT_ENV, json.dumps(spec))
    inject_test_fault("trials", "other")
    inject_test_fault("audio", "v")
    for _ in range(2):
        with pytest.raises(OSError) as caught:
            inject_test_fault("trials", "v")
        assert caught.value.errno == errno.ENOSPC
    inject_test_fault("trials", "v")  # spent


def test_a_dead_worker_is_named_and_its_pool_replaced(tmp_path, monkeypatch):
    from base.preprocessing.pools import WorkerPool

    spec = {"fault": "kill", "stage": "audio", "video": "bad", "times": 1, "count_dir": str(tmp_path)}
    monkeypatch.setenv(FAULT_ENV, json.dumps(spec))
    pool = WorkerPool("audio", 1)
    try:
        assert pool.submit("audio", "good", abs, -3).result() == 3
        with pytest.raises(BrokenProcessPool):
            pool.submit("audio", "bad", abs, -4).result()
        (dead,) = pool.restart()
        assert (dead.exitcode, dead.stage, dead.video) == (-signal.SIGKILL, "audio", "bad")
        assert pool.generation == 1
        assert pool.submit("audio", "bad", abs, -4).result() == 4  # the fault fired once only
    finally:
        pool.shutdown()


def test_a_missing_ffmpeg_stops_preprocessing_before_any_work(monkeypatch, capsys):
    import shutil

    import imageio_ffmpeg

    from base.preprocessing.preprocess import check_tools

    def no_binary():
        raise RuntimeError("no ffmpeg exe could be found")

    monkeypatch.setattr(shutil, "which", lambda name: None)
    monkeypatch.setattr(imageio_ffmpeg, "get_ffmpeg_exe", no_binary)
    assert run_cli(lambda argv: check_tools(), []) == EXIT_ENVIRONMENT
    (line,) = _error_lines(capsys.readouterr().err)
    assert line.startswith("error: ffmpeg was not found: install it on PATH")


def test_log_records_go_to_the_stderr_of_the_moment(monkeypatch):
    # A script run twice in one process (IDE console, notebook, tests) with stderr replaced in between.
    import io
    import logging
    import sys

    from base.errors import setup_logging

    first, second = io.StringIO(), io.StringIO()
    monkeypatch.setattr(sys, "stderr", first)
    setup_logging(quiet=True)
    first.close()  # the stream the handler saw at set-up is gone
    monkeypatch.setattr(sys, "stderr", second)
    logging.getLogger("base.test").warning("still heard")
    assert second.getvalue().endswith("WARNING base.test: still heard\n")
