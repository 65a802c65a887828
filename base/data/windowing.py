"""Cutting trials into overlapping windows and rebuilding per-frame sequences (SPEC §5, §6)."""

from __future__ import annotations

import numpy as np


def window_starts(n_frames: int, window_length: int, hop_length: int) -> np.ndarray:
    """First frame of every window of a trial.

    Windows start at 0, hop, 2 hop, ... while they end before the trial's end; one more window
    ends exactly at the end (start ``n_frames - window_length``). A trial no longer than a window is
    one window at 0 (zero-padded by the caller).

    >>> window_starts(700, 300, 200).tolist(), window_starts(650, 300, 200).tolist()
    ([0, 200, 400], [0, 200, 350])
    """
    if window_length <= 0 or hop_length <= 0:
        raise ValueError("window_length and hop_length must be positive")
    if n_frames <= window_length:
        return np.zeros(1, dtype=np.int64)
    last = n_frames - window_length
    return np.append(np.arange(0, last, hop_length, dtype=np.int64), last)


def window_lengths(starts: np.ndarray, n_frames: int, window_length: int) -> np.ndarray:
    """Number of real (unpadded) frames of each window."""
    return np.minimum(window_length, n_frames - np.asarray(starts)).astype(np.int64)


def overlap_average(
    window_outputs: np.ndarray, starts: np.ndarray, n_frames: int, lengths: np.ndarray | None = None
) -> np.ndarray:
    """Average the outputs of overlapping windows frame by frame.

    Args:
        window_outputs: (W, L, C) outputs of W windows of length L (padding at the end of each).
        starts: (W,) first frame of each window.
        n_frames: length of the trial.
        lengths: (W,) valid frames of each window; default ``min(L, n_frames - start)``.

    Returns:
        (n_frames, C) float64 mean of every window output covering each frame.

    Raises:
        ValueError: some frame is covered by no window.
    """
    window_outputs = np.asarray(window_outputs, dtype=np.float64)
    n_windows, window_length, n_channels = window_outputs.shape
    starts = np.asarray(starts, dtype=np.int64)
    if lengths is None:
        lengths = window_lengths(starts, n_frames, window_length)
    offsets = np.arange(window_length)
    valid = offsets[None, :] < np.asarray(lengths)[:, None]  # (W, L)
    frame_index = (starts[:, None] + offsets[None, :])[valid]  # (V,)
    if frame_index.size and (frame_index.min() < 0 or frame_index.max() >= n_frames):
        raise ValueError("a window reaches outside the trial")
    counts = np.bincount(frame_index, minlength=n_frames)  # (n_frames,)
    if (counts == 0).any():
        raise ValueError(f"{int((counts == 0).sum())} of {n_frames} frames are covered by no window")
    values = window_outputs[valid]  # (V, C)
    sums = np.stack(
        [np.bincount(frame_index, weights=values[:, c], minlength=n_frames) for c in range(n_channels)], axis=1
    )  # (n_frames, C)
    return sums / counts[:, None]
