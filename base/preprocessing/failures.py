"""Why a piece of preprocessing work failed: a bad input (skip that trial) or the machine (stop, keep the rest).

A bad trial (a broken annotation, a video without audio) is skipped and listed; the run goes on and
exits 1. A failure of the machine says nothing about the trial: no space left, an output that
cannot be written, a missing tool, a worker process killed (by the out-of-memory killer, usually).
Then no new work starts, every finished trial is kept, and the run ends with one line naming the
cause and the remedy (exit 3); rerunning the same command continues.

``inject_test_fault`` lets the test suite make a worker fail on a given video the way a machine
does (killed by SIGKILL, or ENOSPC), through the ``ABAW2_PREPROCESS_FAULT`` environment variable.
"""

from __future__ import annotations

import errno
import json
import os
import signal
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path

from base.errors import EnvironmentFailure, UserError, os_error_message

FAULT_ENV = "ABAW2_PREPROCESS_FAULT"
BAD_INPUT = "bad input"
MACHINE = "machine"
_WRITE_ERRNOS = (errno.EACCES, errno.EPERM)  # the machine's fault only when the output is concerned


@dataclass(frozen=True)
class Failure:
    """A classified failure: ``kind`` is BAD_INPUT or MACHINE; ``message`` is one line."""

    kind: str
    message: str


def classify(exc: BaseException, output: str | Path) -> Failure:
    """Tell a bad input from a failure of the machine.

    Args:
        exc: what a stage raised (in a worker: the exception it sent back).
        output: the output folder; a permission error on a file under it is the machine's.
    """
    if isinstance(exc, EnvironmentFailure):  # a missing tool, among others
        return Failure(MACHINE, str(exc))
    if isinstance(exc, UserError):
        return Failure(BAD_INPUT, str(exc))
    if isinstance(exc, MemoryError):
        return Failure(MACHINE, "out of memory: lower --jobs (or free memory) and rerun")
    if isinstance(exc, BrokenProcessPool):
        return Failure(MACHINE, "a worker process died (out of memory?): lower --jobs (or free memory) and rerun")
    if isinstance(exc, OSError):
        concerns_output = exc.filename is None or _is_under(exc.filename, output)  # a failed write names no file
        if exc.errno not in _WRITE_ERRNOS or concerns_output:
            message = os_error_message(exc, default_path=str(output))
            if message is not None:
                return Failure(MACHINE, message)
        if exc.errno in _WRITE_ERRNOS:
            return Failure(BAD_INPUT, f"cannot read {exc.filename}: {exc.strerror}")
    return Failure(BAD_INPUT, f"internal error {type(exc).__name__}: {exc}")


def _is_under(path: str | bytes | int, folder: str | Path) -> bool:
    if not isinstance(path, str):
        return False
    try:
        Path(path).resolve().relative_to(Path(folder).resolve())
    except ValueError:
        return False
    return True


def describe_exit(exitcode: int | None) -> str:
    """How a worker process ended, as words that follow "the worker".

    >>> describe_exit(-9)
    'was killed by signal 9 (SIGKILL: usually the out-of-memory killer)'
    >>> describe_exit(-11)
    'was killed by signal 11 (SIGSEGV)'
    >>> describe_exit(1)
    'exited with code 1'
    """
    if exitcode is None:
        return "died"
    if exitcode >= 0:
        return f"exited with code {exitcode}"
    number = -exitcode
    try:
        name = signal.Signals(number).name
    except ValueError:
        name = "unknown signal"
    if number == signal.SIGKILL:
        return f"was killed by signal {number} ({name}: usually the out-of-memory killer)"
    return f"was killed by signal {number} ({name})"


def inject_test_fault(stage: str, video: str) -> None:
    """For tests: fail like the machine does when ``ABAW2_PREPROCESS_FAULT`` names this stage and video.

    The variable holds JSON: ``{"fault": "kill" | "enospc", "stage": ..., "video": ..., "times": N,
    "count_dir": DIR}``; the fault fires the first ``N`` times the stage runs on the video (counted
    with one file per firing in ``DIR``, so it holds across worker processes and restarts).
    """
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return
    fault = json.loads(spec)
    if fault["stage"] != stage or fault["video"] != video:
        return
    for firing in range(int(fault.get("times", 1))):
        try:
            os.close(os.open(Path(fault["count_dir"]) / f"{stage}-{video}-{firing}", os.O_CREAT | os.O_EXCL))
        except FileExistsError:
            continue
        if fault["fault"] == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
