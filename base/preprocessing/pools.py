"""Spawned worker pools that survive a dead worker and say which task it was running.

When one worker process of a ``ProcessPoolExecutor`` dies (the out-of-memory killer sends SIGKILL),
the executor fails every task it holds with ``BrokenProcessPool`` and cannot be used again. A
``WorkerPool`` is replaced by a fresh executor instead (``restart``), and tells who died and how:
every task writes a marker file named after its worker's pid while it runs (in a private temporary
folder), so the pid whose process ended with a signal names the stage and video it was working on.
The workers the executor terminated itself end with SIGTERM and are not blamed.

Workers start with SIGINT ignored: Ctrl-C reaches the whole process group, and only the main
process answers it (it terminates the workers; every output is written atomically), so an
interrupted run prints one line, not a traceback per worker.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import shutil
import signal
import tempfile
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from base.preprocessing.failures import inject_test_fault

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DeadWorker:
    """A worker that died on its own, and the task it was running (``None`` if it was idle or unknown)."""

    exitcode: int | None
    stage: str | None
    video: str | None


def run_marked(markers: str, stage: str, video: str, function: Callable[..., Any], *args: Any) -> Any:
    """In a worker: run ``function(*args)`` with a marker file saying which task this process is on."""
    marker = Path(markers) / str(os.getpid())
    try:
        marker.write_text(json.dumps({"stage": stage, "video": video}))
    except OSError:  # best effort: a full /tmp must not fail the work itself
        pass
    inject_test_fault(stage, video)
    try:
        return function(*args)
    finally:
        marker.unlink(missing_ok=True)


@contextmanager
def _sigint_ignored() -> Iterator[None]:
    """Ignore SIGINT while worker processes are started: they inherit it (Python keeps an ignored SIGINT)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


class WorkerPool:
    """A pool of ``n_workers`` spawned processes, replaced by a fresh one when a worker dies.

    Args:
        name: for messages (``audio``, ``vggish``).
        n_workers: worker processes.
        initializer, initargs: run once in every worker (as ``ProcessPoolExecutor``'s).
    """

    def __init__(self, name: str, n_workers: int, initializer: Callable[..., None] | None = None,
                 initargs: tuple = ()) -> None:
        self.name = name
        self.n_workers = n_workers
        self.initializer = initializer
        self.initargs = initargs
        self.generation = 0  # how many times the executor was replaced
        self._markers = Path(tempfile.mkdtemp(prefix=f"abaw2-{name}-workers-"))
        self._executor = self._new_executor()

    def _new_executor(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(self.n_workers, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=self.initializer, initargs=self.initargs)

    def submit(self, stage: str, video: str, function: Callable[..., Any], *args: Any) -> Future:
        """Run ``function(*args)`` in a worker; the task is known as (``stage``, ``video``) if it dies."""
        with _sigint_ignored():  # the executor starts its processes on submit
            return self._executor.submit(run_marked, str(self._markers), stage, video, function, *args)

    def restart(self) -> list[DeadWorker]:
        """After ``BrokenProcessPool``: replace the executor; returns the workers that died on their own."""
        processes = list((getattr(self._executor, "_processes", None) or {}).values())
        self._executor.shutdown(wait=True, cancel_futures=True)
        dead = []
        for process in processes:
            process.join(timeout=5)
            if process.exitcode in (0, -signal.SIGTERM):  # exited cleanly, or terminated by the executor
                continue
            task = self._read_marker(process.pid)
            dead.append(DeadWorker(process.exitcode, task.get("stage"), task.get("video")))
        for marker in self._markers.iterdir():
            marker.unlink(missing_ok=True)
        self.generation += 1
        self._executor = self._new_executor()
        return dead

    def _read_marker(self, pid: int | None) -> dict[str, str]:
        try:
            return json.loads((self._markers / str(pid)).read_text())
        except (OSError, ValueError):
            return {}

    def shutdown(self, terminate: bool = False) -> None:
        """Stop the workers (tasks not started are cancelled) and remove the marker folder.

        Args:
            terminate: end the running tasks too (SIGTERM), e.g. on Ctrl-C; else wait for them.
        """
        if terminate:
            for process in list((getattr(self._executor, "_processes", None) or {}).values()):
                process.terminate()
        self._executor.shutdown(wait=True, cancel_futures=True)
        shutil.rmtree(self._markers, ignore_errors=True)
