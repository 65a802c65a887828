"""Expensive test inputs built once per test session, also when pytest-xdist runs the suite in parallel.

A session-scoped fixture is built once per *process*; under ``pytest -n 2`` each worker would build
its own demo database and train its own demo model. ``build_once`` puts the result in the folder
that every worker of one session shares (the parent of each worker's ``basetemp``), guarded by an
exclusive file lock: the first worker builds it while the others wait, then all of them read it.

Inputs built this way are read-only by convention: a test that changes one copies it first.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

DONE = ".built.json"  # NAME.built.json, written last: a folder without it is a build that died half-way


def session_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The temporary folder shared by every worker of this session (this process's own without xdist)."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


def build_once(tmp_path_factory: pytest.TempPathFactory, name: str, build: Callable[[Path], Any]) -> tuple[Path, Any]:
    """``session_root/name``, built by ``build(folder)`` once across all workers; and what ``build`` returned.

    ``build`` receives the empty folder and returns something JSON can store (kept in the
    marker file, so the workers that did not build get the same value). A build that raised leaves
    nothing behind; the next worker to ask tries again and raises its own error.
    """
    root = session_root(tmp_path_factory)
    folder = root / name
    with open(root / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, also if this process dies
        marker = root / f"{name}{DONE}"  # beside the folder: its content stays what build wrote
        if not marker.is_file():
            shutil.rmtree(folder, ignore_errors=True)  # a build that died half-way
            folder.mkdir(parents=True)
            try:
                value = build(folder)  # in place: what it writes may record its own path
                marker.write_text(json.dumps({"value": value}))
            except BaseException:
                shutil.rmtree(folder, ignore_errors=True)
                raise
        return folder, json.loads(marker.read_text())["value"]
