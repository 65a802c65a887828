import numpy as np
import pytest

from base.data.windowing import overlap_average, window_lengths, window_starts


@pytest.mark.parametrize(
    "n_frames, expected",
    [(700, [0, 200, 400]), (650, [0, 200, 350]), (300, [0]), (120, [0]), (500, [0, 200]), (301, [0, 1]),
     (1, [0])],
)
def test_window_starts_by_hand(n_frames, expected):
    starts = window_starts(n_frames, 300, 200)
    assert starts.tolist() == expected
    assert starts.dtype == np.int64


@pytest.mark.parametrize("n_frames", range(1, 1000, 37))
def test_window_starts_cover_the_trial_and_end_at_its_end(n_frames):
    starts = window_starts(n_frames, 300, 200)
    assert len(np.unique(starts)) == len(starts)
    assert np.all(np.diff(starts) > 0) and np.all(np.diff(starts) <= 200)
    if n_frames > 300:
        assert starts[-1] + 300 == n_frames
    covered = np.zeros(n_frames, bool)
    for start in starts:
        covered[start:start + 300] = True
    assert covered.all()


def test_window_starts_rejects_bad_sizes():
    with pytest.raises(ValueError, match="must be positive"):
        window_starts(10, 0, 1)


def test_window_lengths():
    assert window_lengths(np.array([0, 200, 350]), 650, 300).tolist() == [300, 300, 300]
    assert window_lengths(np.array([0]), 120, 300).tolist() == [120]


def test_overlap_average_by_hand():
    # 7 frames, windows of 4 at starts 0 and 3 (frame 3 is covered twice)
    outputs = np.array([[[1.0], [2.0], [3.0], [4.0]],
                        [[10.0], [20.0], [30.0], [40.0]]])  # (W=2, L=4, C=1)
    result = overlap_average(outputs, np.array([0, 3]), 7)
    assert result[:, 0].tolist() == [1.0, 2.0, 3.0, 7.0, 20.0, 30.0, 40.0]


def test_overlap_average_three_windows_two_channels():
    # 6 frames, windows of 4 at 0, 1, 2: frame coverage 1, 2, 3, 3, 2, 1
    outputs = np.stack([np.full((4, 2), v) for v in (3.0, 6.0, 9.0)])  # (3, 4, 2)
    outputs[..., 1] *= -1
    result = overlap_average(outputs, np.array([0, 1, 2]), 6)
    expected = [3.0, 4.5, 6.0, 6.0, 7.5, 9.0]
    np.testing.assert_allclose(result[:, 0], expected)
    np.testing.assert_allclose(result[:, 1], -np.array(expected))


def test_overlap_average_ignores_padding_of_short_trial():
    outputs = np.zeros((1, 5, 1))
    outputs[0, :3, 0] = [1, 2, 3]
    outputs[0, 3:, 0] = 99  # padding
    result = overlap_average(outputs, np.array([0]), 3, lengths=np.array([3]))
    assert result[:, 0].tolist() == [1, 2, 3]
    np.testing.assert_array_equal(overlap_average(outputs, np.array([0]), 3), result)  # default lengths


def test_overlap_average_round_trip_of_a_sequence():
    rng = np.random.default_rng(0)
    sequence = rng.normal(size=(650, 2))
    starts = window_starts(650, 300, 200)
    windows = np.stack([sequence[s:s + 300] for s in starts])  # (3, 300, 2)
    np.testing.assert_allclose(overlap_average(windows, starts, 650), sequence)


def test_overlap_average_uncovered_frames():
    with pytest.raises(ValueError, match="2 of 6 frames are covered by no window"):
        overlap_average(np.zeros((1, 4, 1)), np.array([0]), 6)
    with pytest.raises(ValueError, match="outside the trial"):
        overlap_average(np.zeros((1, 4, 1)), np.array([3]), 6, lengths=np.array([4]))
