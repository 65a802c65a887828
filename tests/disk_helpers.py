"""Small filesystems that fill up: a tmpfs mounted for a test (when the test runs as root), else nothing.

Tests that use ``tmpfs`` fall back to a fake writer raising ENOSPC when ``mounted`` is False.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def tmpfs(path: Path, size: str) -> Iterator[bool]:
    """Mount a tmpfs of ``size`` (``"3m"``) on ``path`` for the block; yields whether it could."""
    path.mkdir(parents=True, exist_ok=True)
    mounted = False
    if shutil.which("mount") and hasattr(os, "geteuid") and os.geteuid() == 0:
        command = ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)]
        mounted = subprocess.run(command, capture_output=True).returncode == 0
    try:
        yield mounted
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(path)], capture_output=True)


def resize(path: Path, size: str) -> None:
    """Grow (or shrink) a mounted tmpfs."""
    subprocess.run(["mount", "-o", f"remount,size={size}", str(path)], check=True, capture_output=True)


def fill(folder: Path) -> Path:
    """Write a filler file in ``folder`` until its filesystem is full; returns it (delete it to free space)."""
    filler = folder / "filler.bin"
    block = b"\0" * (1 << 16)
    with open(filler, "wb", buffering=0) as handle:
        try:
            while True:
                handle.write(block)
        except OSError as exc:
            if exc.errno != errno.ENOSPC:
                raise
    with open(filler, "ab", buffering=0) as handle:  # the last partial block, byte by byte
        try:
            while True:
                handle.write(b"\0" * 512)
        except OSError:
            pass
    return filler
