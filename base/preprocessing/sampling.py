"""Feature-to-frame sampling: which audio-feature row belongs to each video frame (SPEC §2).

Audio features come at their own rate (openSMILE: one row every ``hop_s`` = 10 ms; VGGish: one
row per video frame). A trial keeps only its labeled frames, so each labeled frame index ``i``
picks one row:

- openSMILE: row ``round(i / fps / hop_s)``, the row whose start time is nearest to the frame's
  time. Rounding is half-to-even (``np.rint``), the same as Python 3's built-in ``round`` that
  the authors used; the division is done in the same order (``i / fps / hop_s``, float64), so the
  float that is rounded is bit-for-bit the one the authors' expression produced. For example
  ``3 / 30 / 0.01`` is exactly ``10.0`` in float64, and a true tie such as ``1 / 40 / 0.01 = 2.5``
  goes to the even row 2 in both.
- VGGish: row ``i``.

A frame past the last row takes the last row (audio tracks are often a little shorter than the
video).
"""

from __future__ import annotations

import numpy as np


def _check_frame_indices(frame_indices: np.ndarray) -> np.ndarray:
    indices = np.asarray(frame_indices)
    if indices.ndim != 1:
        raise ValueError(f"frame_indices must be 1-D, got shape {indices.shape}")
    if indices.size and not np.issubdtype(indices.dtype, np.integer):
        raise ValueError(f"frame_indices must be integers, got dtype {indices.dtype}")
    if indices.size and indices.min() < 0:
        raise ValueError("frame_indices must be >= 0")
    return indices.astype(np.int64, copy=False)


def _check_n_rows(n_rows: int) -> None:
    if n_rows <= 0:
        raise ValueError(f"n_rows must be positive, got {n_rows}")


def opensmile_rows(frame_indices: np.ndarray, fps: float, hop_s: float = 0.01, *, n_rows: int) -> np.ndarray:
    """openSMILE row of each video frame: ``rint(i / fps / hop_s)``, clamped to ``n_rows - 1``.

    Args:
        frame_indices: 0-based video frame indices, shape (N,).
        fps: video frame rate, frames per second.
        hop_s: openSMILE frame step in seconds.
        n_rows: number of rows of the feature matrix.

    Returns:
        Row indices, shape (N,), int64.

    >>> opensmile_rows(np.array([0, 1, 2, 3, 1000]), fps=30.0, n_rows=100).tolist()
    [0, 3, 7, 10, 99]
    """
    if fps <= 0 or hop_s <= 0:
        raise ValueError(f"fps and hop_s must be positive, got fps={fps}, hop_s={hop_s}")
    _check_n_rows(n_rows)
    indices = _check_frame_indices(frame_indices)
    time_in_hops = indices.astype(np.float64) / fps / hop_s  # same operation order as the authors
    rows = np.rint(time_in_hops).astype(np.int64)
    return np.minimum(rows, n_rows - 1)


def vggish_rows(frame_indices: np.ndarray, n_rows: int) -> np.ndarray:
    """VGGish row of each video frame: the frame index itself, clamped to ``n_rows - 1``.

    >>> vggish_rows(np.array([0, 5, 9]), n_rows=6).tolist()
    [0, 5, 5]
    """
    _check_n_rows(n_rows)
    return np.minimum(_check_frame_indices(frame_indices), n_rows - 1)


def sample_rows(features: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Gather ``features[rows]``: (n_rows, D) and (N,) -> (N, D), keeping the dtype.

    >>> sample_rows(np.arange(6).reshape(3, 2), np.array([2, 0])).tolist()
    [[4, 5], [0, 1]]
    """
    features = np.asarray(features)
    if features.ndim != 2:
        raise ValueError(f"features must be 2-D (n_rows, D), got shape {features.shape}")
    rows = np.asarray(rows, dtype=np.int64)
    if rows.size and (rows.min() < 0 or rows.max() >= len(features)):
        raise ValueError(f"rows must lie in [0, {len(features) - 1}], got {rows.min()}..{rows.max()}")
    return features[rows]  # (N, D)
