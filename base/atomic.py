"""Atomic file writes: write to a unique temporary file beside the target, then rename over it.

A reader (or a rerun after a kill) never sees a half-written file, and two processes writing the
same target (job-array tasks finishing together) never share a temporary name. A write that fails
(a full disk) leaves the previous file untouched and no temporary file behind; its ``OSError``
names the target when the failing call did not name a file.
"""

from __future__ import annotations

import functools
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np


@functools.cache
def _umask() -> int:
    umask = os.umask(0o022)  # the only way to read it is to set it
    os.umask(umask)
    return umask


def default_file_mode() -> int:
    """The mode ``open`` gives a new file under this process's umask (``mkstemp`` gives 0600)."""
    return 0o666 & ~_umask()


def default_dir_mode() -> int:
    """The mode ``mkdir`` gives a new folder under this process's umask (``mkdtemp`` gives 0700)."""
    return 0o777 & ~_umask()


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path to write; it replaces ``path`` when the block ends without error."""
    path = Path(path)
    handle, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.fchmod(handle, default_file_mode())  # readable like any other output (a shared cluster folder)
    os.close(handle)
    tmp = Path(name)
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as exc:
        if exc.filename is None:  # a failed write() on an open file names no file
            exc.filename = str(path)
        raise
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def save_npy(path: str | Path, array: np.ndarray) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.save(handle, array)
