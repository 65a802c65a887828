"""Face crops: ``cropped_aligned/<trial>/NNNNN.jpg`` to (n, size, size, 3) uint8 RGB arrays."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np


def jpg_name(frame_index: int) -> str:
    """0-based frame index -> Aff-Wild2's 1-based, 5-digit jpg name."""
    return f"{frame_index + 1:05d}.jpg"


def load_face_frames(face_dir: str | Path, frame_indices: np.ndarray, size: int = 48) -> tuple[np.ndarray, int]:
    """Read the crops of ``frame_indices``, resized to ``size``; a missing or unreadable jpg is black.

    Returns the (n, size, size, 3) uint8 RGB array and the number of missing faces.
    """
    face_dir = Path(face_dir)
    frames = np.zeros((len(frame_indices), size, size, 3), np.uint8)
    missing = 0
    for row, index in enumerate(frame_indices):
        path = face_dir / jpg_name(int(index))
        image = cv2.imread(str(path), cv2.IMREAD_COLOR) if path.is_file() else None
        if image is None:  # the face detector failed there (or the jpg is unreadable)
            missing += 1
            continue
        if image.shape[:2] != (size, size):
            image = cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)
        frames[row] = image[:, :, ::-1]  # OpenCV reads BGR
    return frames, missing
