"""Annotation parsing, trial discovery and face-frame loading on hand-made inputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from base.errors import UserError
from base.preprocessing.annotations import read_annotation
from base.preprocessing.database import TEST_PARTITION, discover_trials, video_stem
from base.preprocessing.frames import jpg_name, load_face_frames
from tests.conftest import write_annotation_file


def test_labeled_rows_drop_minus_five(annotation_file: Path) -> None:
    annotation = read_annotation(annotation_file)
    assert annotation.n_rows == 6
    np.testing.assert_array_equal(annotation.labeled_indices, [0, 1, 3, 4, 5])
    np.testing.assert_allclose(annotation.labels[2], [0.4, -0.1])
    assert annotation.labels.dtype == np.float32


def test_a_row_with_one_minus_five_is_unlabeled(tmp_path: Path) -> None:
    annotation = read_annotation(write_annotation_file(tmp_path / "t.txt", ["0.1,-5", "-5,0.2", "0.3,0.3"]))
    np.testing.assert_array_equal(annotation.labeled_indices, [2])


@pytest.mark.parametrize(
    ("header", "rows", "message"),
    [
        ("arousal,valence", ["0,0"], "header is 'arousal,valence', expected 'valence,arousal'"),
        ("valence,arousal", ["0.1"], "line 2: expected 2 values"),
        ("valence,arousal", ["0.1,0.2", "0.1,abc"], "line 3: not a number"),
        ("valence,arousal", ["0.1,1.5"], "line 2: value 1.5 is outside \\[-1, 1\\]"),
        ("valence,arousal", ["-4,0"], "value -4 is outside"),
        ("valence,arousal", [], "no rows"),
    ],
)
def test_bad_annotations_are_one_clear_line(tmp_path: Path, header: str, rows: list[str], message: str) -> None:
    with pytest.raises(UserError, match=message):
        read_annotation(write_annotation_file(tmp_path / "bad.txt", rows, header=header))


def test_video_stem_strips_sides() -> None:
    assert video_stem("10-60-1280x720_left") == "10-60-1280x720"
    assert video_stem("10-60-1280x720_right") == "10-60-1280x720"
    assert video_stem("video59") == "video59"


def _database(root: Path) -> Path:
    for partition, trials in (("Train_Set", ["b", "a_left", "a_right"]), ("Validation_Set", ["c"])):
        for trial in trials:
            write_annotation_file(root / "annotations/VA_Set" / partition / f"{trial}.txt", ["0,0"])
            (root / "cropped_aligned" / trial).mkdir(parents=True)
    for name in ("a.mp4", "b.avi", "c.mp4"):
        (root / "raw_video").mkdir(exist_ok=True)
        (root / "raw_video" / name).write_bytes(b"")
    (root / "Test_Set").mkdir()
    (root / "Test_Set" / "t.mp4").write_bytes(b"")
    (root / "cropped_aligned" / "t").mkdir()
    (root / "cropped_aligned" / "orphan").mkdir()
    return root


def test_discovery_is_sorted_and_maps_sides_to_videos(tmp_path: Path) -> None:
    trials = discover_trials(_database(tmp_path))
    assert [(t.name, t.partition) for t in trials] == [
        ("a_left", "Train_Set"), ("a_right", "Train_Set"), ("b", "Train_Set"), ("c", "Validation_Set"),
        ("orphan", TEST_PARTITION), ("t", TEST_PARTITION),
    ]
    by_name = {t.name: t for t in trials}
    assert by_name["a_left"].video_path == by_name["a_right"].video_path == tmp_path / "raw_video" / "a.mp4"
    assert by_name["t"].video_path == tmp_path / "Test_Set" / "t.mp4"
    assert by_name["t"].annotation_path is None
    assert by_name["orphan"].video_path is None  # reported later as a trial with no video


def test_discovery_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="does not exist"):
        discover_trials(tmp_path / "nowhere")
    with pytest.raises(UserError, match="no VA annotations found .* annotations/VA_Set"):
        discover_trials(tmp_path)
    (tmp_path / "annotations/VA_Set/Train_Set").mkdir(parents=True)
    (tmp_path / "cropped_aligned").mkdir()
    with pytest.raises(UserError, match="no VA annotations found"):  # Validation_Set is missing
        discover_trials(tmp_path)
    (tmp_path / "annotations/VA_Set/Validation_Set").mkdir()
    with pytest.raises(UserError, match="no annotation files"):
        discover_trials(tmp_path)


def test_missing_jpgs_become_black_frames(jpg_folder: tuple[Path, list[int]]) -> None:
    folder, missing = jpg_folder
    assert jpg_name(0) == "00001.jpg"
    frames, n_missing = load_face_frames(folder, np.arange(10), size=48)
    assert frames.shape == (10, 48, 48, 3) and frames.dtype == np.uint8
    assert n_missing == 2
    black = frames.reshape(10, -1).max(axis=1) == 0
    np.testing.assert_array_equal(np.flatnonzero(black), [m - 1 for m in missing])
    # labeled subset: only rows 1 and 2 (jpgs 2 and 3); jpg 3 is missing
    subset, n_missing = load_face_frames(folder, np.array([1, 2]), size=48)
    assert n_missing == 1 and subset[1].max() == 0 and subset[0].max() > 0


def test_frames_are_rgb(tmp_path: Path) -> None:
    import cv2

    folder = tmp_path / "f"
    folder.mkdir()
    image = np.zeros((112, 112, 3), np.uint8)
    image[:, :, 2] = 255  # pure red in OpenCV's BGR order
    cv2.imwrite(str(folder / "00001.png"), image)
    cv2.imwrite(str(folder / "00001.jpg"), image)
    frames, _ = load_face_frames(folder, np.array([0]), size=48)
    assert frames[0, 24, 24, 0] > 200 and frames[0, 24, 24, 2] < 50
