"""OpenFace CSV -> landmark/au arrays, the FeatureExtraction call (through a fake binary), and errors."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest

from base.errors import UserError
from base.preprocessing.openface import (
    AU_INTENSITY_COLUMNS,
    AU_PRESENCE_COLUMNS,
    RUN_FLAGS,
    existing_csv,
    face_image_frame_numbers,
    find_openface,
    list_face_images,
    openface_features,
    read_openface_csv,
    run_feature_extraction,
    standardise_landmarks,
    write_openface_arrays,
)
from tests.openface_helpers import (
    HEADER,
    fake_action_units,
    fake_landmarks,
    read_argv_log,
    write_face_images,
    write_fake_feature_extraction,
    write_openface_csv,
)

SQRT_1_5 = math.sqrt(1.5)


def _tiny_csv(path, drop_columns=()):
    """4 frames, frame 3 failed (with garbage values OpenFace would not write, to prove they are ignored).

    x_0 = [1, 2, 100, 3] -> over frames 1, 2, 4: mean 2, std sqrt(2/3) -> [-sqrt(1.5), 0, 0, sqrt(1.5)]
    y_0 = [10, 30, -7, 20] -> mean 20, std sqrt(200/3) -> [-sqrt(1.5), sqrt(1.5), 0, 0]
    every other coordinate is 5 everywhere -> constant -> 0
    """
    landmarks = np.full((4, 68, 2), 5.0)
    landmarks[:, 0, 0] = [1, 2, 100, 3]
    landmarks[:, 0, 1] = [10, 30, -7, 20]
    aus = np.tile(np.arange(17) * 0.1, (4, 1)) + np.array([[1.0], [2.0], [3.0], [4.0]])
    success = [1, 1, 0, 1]
    return write_openface_csv(path, landmarks, aus, success, drop_columns=drop_columns), aus


def test_header_layout_matches_openface():
    assert HEADER[:5] == ("frame", "face_id", "timestamp", "confidence", "success")
    assert HEADER[5] == "x_0" and HEADER[72] == "x_67" and HEADER[73] == "y_0" and HEADER[140] == "y_67"
    assert HEADER[141:158] == AU_INTENSITY_COLUMNS
    assert HEADER[158:] == AU_PRESENCE_COLUMNS
    assert len(AU_INTENSITY_COLUMNS) == 17 and len(AU_PRESENCE_COLUMNS) == 18 and "AU28_c" in AU_PRESENCE_COLUMNS


def test_read_csv_with_spaces_after_commas(tmp_path):
    path, aus = _tiny_csv(tmp_path / "trial.csv")
    assert path.read_text().startswith("frame, face_id, timestamp, confidence, success, x_0, x_1")
    frames = read_openface_csv(path)
    assert len(frames) == 4
    np.testing.assert_array_equal(frames.frame_numbers, [1, 2, 3, 4])
    np.testing.assert_array_equal(frames.success, [True, True, False, True])
    assert frames.landmarks.shape == (4, 68, 2) and frames.landmarks.dtype == np.float32
    np.testing.assert_array_equal(frames.landmarks[:, 0, 0], [1, 2, 100, 3])  # x
    np.testing.assert_array_equal(frames.landmarks[:, 0, 1], [10, 30, -7, 20])  # y
    assert frames.action_units.shape == (4, 17) and frames.action_units.dtype == np.float32
    np.testing.assert_allclose(frames.action_units, aus, atol=1e-6)
    assert frames.source == str(path)


def test_standardise_landmarks_by_hand():
    landmarks = np.full((4, 68, 2), 5.0)
    landmarks[:, 0, 0] = [1, 2, 100, 3]
    landmarks[:, 0, 1] = [10, 30, -7, 20]
    result = standardise_landmarks(landmarks, np.array([True, True, False, True]))
    assert result.dtype == np.float32
    np.testing.assert_allclose(result[:, 0, 0], [-SQRT_1_5, 0, 0, SQRT_1_5], atol=1e-6)
    np.testing.assert_allclose(result[:, 0, 1], [-SQRT_1_5, SQRT_1_5, 0, 0], atol=1e-6)
    np.testing.assert_array_equal(result[:, 1:], 0)  # constant coordinates


def test_standardise_landmarks_without_success_is_zero():
    result = standardise_landmarks(np.ones((3, 68, 2)), np.zeros(3, bool))
    np.testing.assert_array_equal(result, 0)


def test_features_at_labeled_frames(tmp_path):
    path, aus = _tiny_csv(tmp_path / "trial.csv")
    # labeled video frames (0-based): 3 -> CSV frame 4, 0 -> frame 1, 2 -> frame 3 (failed), 7 -> no row
    landmark, au = openface_features(read_openface_csv(path), np.array([3, 0, 2, 7]), n_expected_rows=4)
    assert landmark.shape == (4, 68, 2) and landmark.dtype == np.float32
    assert au.shape == (4, 17) and au.dtype == np.float32
    np.testing.assert_allclose(landmark[:, 0, 0], [SQRT_1_5, -SQRT_1_5, 0, 0], atol=1e-6)
    np.testing.assert_allclose(landmark[:, 0, 1], [0, -SQRT_1_5, 0, 0], atol=1e-6)
    np.testing.assert_allclose(au[0], aus[3], atol=1e-6)
    np.testing.assert_allclose(au[1], aus[0], atol=1e-6)
    np.testing.assert_array_equal(au[2:], 0)
    np.testing.assert_array_equal(landmark[2:], 0)


def test_features_follow_image_frame_numbers(tmp_path):
    # the jpg of frame 3 is missing: OpenFace's rows 1, 2, 3 are the images 00001, 00002, 00004
    face_dir = tmp_path / "trial"
    write_face_images(face_dir, [1, 2, 4])
    images = list_face_images(face_dir)
    numbers = face_image_frame_numbers(images)
    np.testing.assert_array_equal(numbers, [1, 2, 4])
    landmarks = fake_landmarks([1, 2, 3])
    csv = write_openface_csv(tmp_path / "trial.csv", landmarks, fake_action_units([10, 20, 30]), [1, 1, 1])
    landmark, au = openface_features(read_openface_csv(csv), np.arange(4), None, image_frame_numbers=numbers)
    np.testing.assert_allclose(au[[0, 1, 3]], fake_action_units([10, 20, 30]), atol=1e-6)
    np.testing.assert_array_equal(au[2], 0)  # frame index 2 = jpg 00003, missing
    np.testing.assert_array_equal(landmark[2], 0)
    assert not np.allclose(landmark[3], 0)


def test_frame_without_row_is_zero(tmp_path):
    aus = fake_action_units([1, 3, 4])
    csv = write_openface_csv(tmp_path / "t.csv", fake_landmarks([1, 3, 4]), aus, [1, 1, 1], frame_numbers=[1, 3, 4])
    landmark, au = openface_features(read_openface_csv(csv), np.array([0, 1, 2, 3]), None)
    np.testing.assert_allclose(au[[0, 2, 3]], aus, atol=1e-6)
    np.testing.assert_array_equal(au[1], 0)
    np.testing.assert_array_equal(landmark[1], 0)


def test_row_count_mismatch(tmp_path):
    path, _ = _tiny_csv(tmp_path / "short.csv")
    with pytest.raises(UserError, match=re.escape(f"OpenFace CSV {path} has 4 rows, expected 5")):
        openface_features(read_openface_csv(path), np.arange(3), n_expected_rows=5)
    with pytest.raises(UserError, match="has 4 rows, expected 3"):
        openface_features(read_openface_csv(path), np.arange(3), None, image_frame_numbers=np.array([1, 2, 3]))


def test_missing_columns(tmp_path):
    path, _ = _tiny_csv(tmp_path / "no_aus.csv", drop_columns=AU_INTENSITY_COLUMNS)
    message = f"OpenFace CSV {path} lacks the columns AU01_r, AU02_r, AU04_r, AU05_r and 13 more"
    with pytest.raises(UserError, match=re.escape(message) + ".*-2Dfp -aus"):
        read_openface_csv(path)
    path, _ = _tiny_csv(tmp_path / "no_success.csv", drop_columns=("success",))
    with pytest.raises(UserError, match=r"lacks the columns success;"):
        read_openface_csv(path)


@pytest.mark.parametrize(("content", "message"), [
    ("", "cannot be read as a CSV"),
    ("frame, success\n1, 1\n", "lacks the columns x_0, x_1"),
])
def test_unreadable_csv(tmp_path, content, message):
    path = tmp_path / "bad.csv"
    path.write_text(content)
    with pytest.raises(UserError, match=message):
        read_openface_csv(path)


def test_non_numeric_and_missing_csv(tmp_path):
    path, _ = _tiny_csv(tmp_path / "t.csv")
    path.write_text(path.read_text().replace("0.98, 1, 1.000", "0.98, 1, oops", 1))
    with pytest.raises(UserError, match="values that are not numbers"):
        read_openface_csv(path)
    with pytest.raises(UserError, match="nothing.csv does not exist"):
        read_openface_csv(tmp_path / "nothing.csv")


# ------------------------------------------------------------------------------------- the binary


def test_find_openface_missing(tmp_path):
    missing = tmp_path / "OpenFace" / "FeatureExtraction"
    with pytest.raises(UserError, match=re.escape(f"OpenFace binary {missing} does not exist")):
        find_openface(str(missing))


def test_find_openface_not_executable(tmp_path):
    binary = tmp_path / "FeatureExtraction"
    binary.write_text("not a program")
    binary.chmod(0o644)
    with pytest.raises(UserError, match=re.escape(f"OpenFace binary {binary} is not executable")):
        find_openface(binary)
    with pytest.raises(UserError, match="is not executable"):
        find_openface(tmp_path)  # a folder


def test_find_openface_ok(tmp_path):
    binary = write_fake_feature_extraction(tmp_path / "bin" / "FeatureExtraction", tmp_path / "argv.json")
    assert find_openface(str(binary)) == binary.resolve()


def test_run_feature_extraction_with_spaces(tmp_path):
    """Argument list (no shell): spaces and shell characters in paths and names reach the program intact."""
    face_dir = tmp_path / "cropped aligned" / "video 1_left"
    write_face_images(face_dir, [1, 2, 3, 5, 6])
    out_dir = tmp_path / "open face $HOME; out"
    argv_log = tmp_path / "argv.json"
    binary = write_fake_feature_extraction(tmp_path / "bin dir" / "FeatureExtraction", argv_log, failed_rows=[2])
    csv_path = run_feature_extraction(find_openface(binary), face_dir, out_dir, "video 1_left")

    assert csv_path == out_dir / "video 1_left.csv" and csv_path.is_file()
    assert read_argv_log(argv_log) == [
        "-fdir", str(face_dir), "-2Dfp", "-aus", "-simalign", "-simsize", "48", "-format_aligned", "jpg",
        "-nomask", "-of", "video 1_left", "-out_dir", str(out_dir),
    ]
    assert RUN_FLAGS == ("-2Dfp", "-aus", "-simalign", "-simsize", "48", "-format_aligned", "jpg", "-nomask")

    images = list_face_images(face_dir)
    numbers = face_image_frame_numbers(images)
    frames = read_openface_csv(csv_path)
    np.testing.assert_array_equal(frames.success, [True, False, True, True, True])
    landmark, au = openface_features(frames, np.arange(6), len(images), image_frame_numbers=numbers)
    # video frames 0..5: rows 1, 2 (failed), 3, none (jpg 00004 missing), 4, 5
    expected_au = np.zeros((6, 17), np.float32)
    expected_au[[0, 2, 4, 5]] = fake_action_units([1, 3, 4, 5])
    np.testing.assert_allclose(au, expected_au, atol=1e-6)
    raw = fake_landmarks([1, 3, 4, 5]).reshape(4, -1)
    expected_flat = (raw - raw.mean(axis=0)) / raw.std(axis=0)
    np.testing.assert_allclose(landmark[[0, 2, 4, 5]].reshape(4, -1), expected_flat, atol=1e-5)
    np.testing.assert_array_equal(landmark[[1, 3]], 0)


def test_rerun_replaces_old_csv(tmp_path):
    face_dir = tmp_path / "faces"
    write_face_images(face_dir, [1, 2])
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    (out_dir / "t.csv").write_text("stale")
    binary = write_fake_feature_extraction(tmp_path / "FeatureExtraction", tmp_path / "argv.json", write_csv=False)
    with pytest.raises(UserError, match=re.escape(f"wrote no CSV for {face_dir} (expected {out_dir / 't.csv'})")):
        run_feature_extraction(binary, face_dir, out_dir, "t")


def test_run_feature_extraction_fails(tmp_path):
    face_dir = tmp_path / "faces"
    write_face_images(face_dir, [1])
    binary = write_fake_feature_extraction(
        tmp_path / "FeatureExtraction", tmp_path / "argv.json", exit_code=3,
        stderr_lines=["Loading the model", "ERROR: could not open the image folder"])
    message = f"OpenFace FeatureExtraction failed on {face_dir} (exit code 3): ERROR: could not open the image folder"
    with pytest.raises(UserError, match=re.escape(message)):
        run_feature_extraction(binary, face_dir, tmp_path / "out", "faces")
    assert not (tmp_path / "out" / "faces.csv").exists()


def test_run_feature_extraction_timeout(tmp_path):
    face_dir = tmp_path / "faces"
    write_face_images(face_dir, [1])
    binary = write_fake_feature_extraction(tmp_path / "FeatureExtraction", tmp_path / "argv.json", sleep_s=30)
    with pytest.raises(UserError, match=r"ran longer than 0.5 s on .*faces and was stopped"):
        run_feature_extraction(binary, face_dir, tmp_path / "out", "faces", timeout_s=0.5)


def test_fake_binary_missing_columns_are_reported(tmp_path):
    face_dir = tmp_path / "faces"
    write_face_images(face_dir, [1, 2])
    binary = write_fake_feature_extraction(tmp_path / "FeatureExtraction", tmp_path / "argv.json",
                                           drop_columns=["x_5", "y_5"])
    csv_path = run_feature_extraction(binary, face_dir, tmp_path / "out", "faces")
    with pytest.raises(UserError, match=re.escape(f"OpenFace CSV {csv_path} lacks the columns x_5, y_5;")):
        read_openface_csv(csv_path)


def test_face_image_frame_numbers_rejects_other_names(tmp_path):
    (tmp_path / "00001.jpg").write_bytes(b"")
    (tmp_path / "cover.png").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("ignored")
    images = list_face_images(tmp_path)
    assert [p.name for p in images] == ["00001.jpg", "cover.png"]
    with pytest.raises(UserError, match="cover.png is not named by its frame number"):
        face_image_frame_numbers(images)


# ------------------------------------------------------------------------------------- outputs


def test_write_openface_arrays_atomic(tmp_path):
    trial_dir = tmp_path / "npy_data" / "trial"
    trial_dir.mkdir(parents=True)
    frame = np.arange(12, dtype=np.uint8).reshape(1, 2, 2, 3)
    np.save(trial_dir / "frame.npy", frame)
    before = (trial_dir / "frame.npy").stat()
    (trial_dir / "landmark.npy").write_bytes(b"old")

    landmark = np.random.default_rng(0).normal(size=(3, 68, 2))
    au = np.ones((3, 17))
    write_openface_arrays(trial_dir, landmark, au)

    assert sorted(p.name for p in trial_dir.iterdir()) == ["au.npy", "frame.npy", "landmark.npy"]
    loaded = np.load(trial_dir / "landmark.npy")
    assert loaded.dtype == np.float32
    np.testing.assert_allclose(loaded, landmark, atol=1e-6)
    np.testing.assert_array_equal(np.load(trial_dir / "au.npy"), au.astype(np.float32))
    after = (trial_dir / "frame.npy").stat()
    assert (after.st_mtime_ns, after.st_ino) == (before.st_mtime_ns, before.st_ino)
    np.testing.assert_array_equal(np.load(trial_dir / "frame.npy"), frame)
    with pytest.raises(ValueError, match="expected landmark"):
        write_openface_arrays(trial_dir, landmark, np.ones((2, 17)))


def test_existing_csv(tmp_path):
    (tmp_path / "video1_left.csv").write_text("frame\n")
    assert existing_csv(tmp_path, "video1_left") == tmp_path / "video1_left.csv"
    assert existing_csv(tmp_path, "video1_right") is None
