"""Face crops: ``cropped_aligned/<trial>/NNNNN.jpg`` to (n, size, size, 3) uint8 RGB arrays.

Decoded and resized with Pillow exactly as the authors' ``preprocessing.py`` does
(``Image.open(jpg).resize((48, 48))``: Pillow's default filter, bicubic), so ``frame.npy`` holds
their pixel values.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from base.preprocessing.npy_stream import write_npy

CHUNK_FRAMES = 1024  # crops read and written at once by write_face_frames: 1024 x 48 x 48 x 3 = 7 MB


def jpg_name(frame_index: int) -> str:
    """0-based frame index -> Aff-Wild2's 1-based, 5-digit jpg name."""
    return f"{frame_index + 1:05d}.jpg"


def read_face(path: Path, size: int) -> np.ndarray | None:
    """One crop as (size, size, 3) uint8 RGB, resized like the authors' code; None when unreadable."""
    try:
        with Image.open(path) as image:
            if image.mode != "RGB":  # a greyscale jpg (the authors' np.stack would fail on it)
                image = image.convert("RGB")
            return np.asarray(image.resize((size, size)), dtype=np.uint8)
    except (OSError, UnidentifiedImageError, ValueError):
        return None


def load_face_frames(face_dir: str | Path, frame_indices: np.ndarray, size: int = 48) -> tuple[np.ndarray, int]:
    """Read the crops of ``frame_indices``, resized to ``size``; a missing or unreadable jpg is black.

    Returns the (n, size, size, 3) uint8 RGB array and the number of missing faces.
    """
    face_dir = Path(face_dir)
    frames = np.zeros((len(frame_indices), size, size, 3), np.uint8)
    missing = 0
    for row, index in enumerate(frame_indices):
        path = face_dir / jpg_name(int(index))
        image = read_face(path, size) if path.is_file() else None
        if image is None:  # the face detector failed there (or the jpg is unreadable)
            missing += 1
            continue
        frames[row] = image
    return frames, missing


def write_face_frames(path: str | Path, face_dir: str | Path, frame_indices: np.ndarray, size: int = 48,
                      chunk_frames: int = CHUNK_FRAMES) -> int:
    """``load_face_frames`` written to ``path`` as npy, ``chunk_frames`` crops at a time (memory does not grow
    with the trial; the file is byte-identical to ``np.save`` of the whole array). Returns the missing faces."""
    missing = 0

    def blocks():
        nonlocal missing
        for first in range(0, len(frame_indices), chunk_frames):
            frames, n_missing = load_face_frames(face_dir, frame_indices[first:first + chunk_frames], size)
            missing += n_missing
            yield frames

    write_npy(path, (len(frame_indices), size, size, 3), np.uint8, blocks())
    return missing
