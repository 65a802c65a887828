"""Feature-to-frame sampling on values computed by hand."""

from __future__ import annotations

import numpy as np
import pytest

from base.preprocessing.sampling import opensmile_rows, sample_rows, vggish_rows


@pytest.mark.parametrize(
    ("fps", "expected"),
    [
        (30.0, [0, 3, 7, 10]),  # 0, 3.33, 6.67, 10.0
        (25.0, [0, 4, 8, 12]),  # 4 rows per frame exactly
        (40.0, [0, 2, 5, 8]),  # 0, 2.5 -> 2 and 7.5 -> 8 (ties to even), 5.0
        (10.0, [0, 10, 20, 30]),
    ],
)
def test_opensmile_rows_hand_values(fps, expected):
    rows = opensmile_rows(np.array([0, 1, 2, 3]), fps, n_rows=1000)
    assert rows.tolist() == expected
    assert rows.dtype == np.int64


def test_opensmile_rows_past_the_end_take_the_last_row():
    # fps 25: frames 73, 74, 75 -> rows 292, 296, 300; only 298 rows exist
    assert opensmile_rows(np.array([73, 74, 75]), 25.0, n_rows=298).tolist() == [292, 296, 297]


def test_opensmile_rows_other_hop():
    # hop 20 ms at fps 25: i * 0.04 / 0.02 = 2 i
    assert opensmile_rows(np.array([0, 1, 5]), 25.0, hop_s=0.02, n_rows=100).tolist() == [0, 2, 10]


@pytest.mark.parametrize("fps", [23.976, 24.0, 25.0, 29.97, 30.0, 40.0, 50.0, 60.0])
def test_opensmile_rows_match_python_round_of_the_authors_expression(fps):
    indices = np.arange(20000)
    expected = [min(round(int(i) / fps / 0.01), 99999) for i in indices]
    assert opensmile_rows(indices, fps, n_rows=100000).tolist() == expected


def test_opensmile_rows_empty_input():
    assert opensmile_rows(np.array([], dtype=np.int64), 30.0, n_rows=5).shape == (0,)


def test_opensmile_rows_reject_bad_arguments():
    with pytest.raises(ValueError, match="n_rows"):
        opensmile_rows(np.array([0]), 30.0, n_rows=0)
    with pytest.raises(ValueError, match="positive"):
        opensmile_rows(np.array([0]), 0.0, n_rows=5)
    with pytest.raises(ValueError, match=">= 0"):
        opensmile_rows(np.array([-1]), 30.0, n_rows=5)
    with pytest.raises(ValueError, match="integers"):
        opensmile_rows(np.array([0.5]), 30.0, n_rows=5)


def test_vggish_rows():
    assert vggish_rows(np.array([0, 1, 4, 5, 9]), n_rows=5).tolist() == [0, 1, 4, 4, 4]


def test_sample_rows_gathers_rows():
    features = np.arange(12, dtype=np.float32).reshape(4, 3)  # row r = [3r, 3r+1, 3r+2]
    sampled = sample_rows(features, np.array([3, 0, 0, 2]))
    assert sampled.dtype == np.float32
    assert sampled.tolist() == [[9, 10, 11], [0, 1, 2], [0, 1, 2], [6, 7, 8]]


def test_sample_rows_with_opensmile_rows_end_to_end():
    features = np.arange(300, dtype=np.float32)[:, None] * np.ones((1, 2), np.float32)  # (300, 2)
    rows = opensmile_rows(np.array([0, 2, 89, 95]), 30.0, n_rows=len(features))
    assert sample_rows(features, rows)[:, 0].tolist() == [0, 7, 297, 299]


def test_sample_rows_rejects_bad_rows():
    with pytest.raises(ValueError, match="rows must lie"):
        sample_rows(np.zeros((3, 2)), np.array([3]))
    with pytest.raises(ValueError, match="2-D"):
        sample_rows(np.zeros(3), np.array([0]))
