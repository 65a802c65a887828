"""Any video -> traces: face crops (geometry, Haar, MTCNN, OpenFace CSVs), the checks a user can hit, and
predict.py video end to end (CSV of the right length with face_found, and a PNG)."""

from __future__ import annotations

import csv
import logging
import pickle
from pathlib import Path

import cv2
import numpy as np
import pytest

import predict
from base.errors import UserError
from base.prediction.face_detection import (
    FaceBox,
    crop_face,
    detect_video_faces,
    eye_angle_deg,
    landmark_box,
    largest_face,
    openface_faces,
    square_region,
)
from base.prediction.prediction import load_fold_model
from base.prediction.video_traces import (
    CSV_COLUMNS,
    VideoOptions,
    frame_times,
    missing_face_runs,
    openface_per_frame,
    resolve_vggish_checkpoint,
    video_traces,
)
from base.preprocessing import openface
from tests.openface_helpers import fake_action_units, write_openface_csv
from tests.prediction_helpers import face_video, save_run, tiny_config
from tests.processed_helpers import make_processed_dataset

# tiny models run fastest on one thread (and do not suffer from a busy machine)
pytestmark = pytest.mark.usefixtures("one_torch_thread")

N_FACE, N_BLACK = 12, 8


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return make_processed_dataset(tmp_path_factory.mktemp("processed") / "data", n_train=5, n_val=1, n_test=1,
                                  lengths=(12,), modalities=("mfcc", "egemaps"))


@pytest.fixture(scope="module")
def audio_run(dataset, tmp_path_factory) -> Path:
    """A valence+arousal run reading mfcc and egemaps (no backbone: predicts in milliseconds)."""
    config = tiny_config(dataset, modality=["mfcc", "egemaps"], emotion="both")
    return save_run(tmp_path_factory.mktemp("runs"), config, 0)


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    """12 frames of a face, then 8 black frames, with sound (10 fps)."""
    return face_video(tmp_path_factory.mktemp("video") / "clip.mp4", N_FACE, N_BLACK)


@pytest.fixture(scope="module")
def silent_clip(tmp_path_factory) -> Path:
    return face_video(tmp_path_factory.mktemp("video") / "silent.mkv", N_FACE, N_BLACK, with_audio=False)


def read_traces(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        assert tuple(reader.fieldnames or ()) == CSV_COLUMNS
        return list(reader)


def face_landmarks(n_frames: int, centre: tuple[float, float] = (80.0, 80.0), half: float = 40.0) -> np.ndarray:
    """(n, 68, 2) landmarks spread over a square of side 2*half, eyes level, on every frame."""
    rng = np.random.default_rng(0)
    points = rng.uniform(-half, half, (68, 2))
    points[0], points[1] = (-half, -half), (half, half)  # the box corners
    points[36:42] = (-15, -10)
    points[42:48] = (15, -10)
    return np.broadcast_to(points + np.array(centre), (n_frames, 68, 2)).copy()


# ----------------------------------------------------------------------------- pure helpers


def test_missing_face_runs_and_frame_times():
    assert missing_face_runs(np.array([True, False, False, True, False])) == [(1, 3), (4, 5)]
    assert missing_face_runs(np.array([False, False])) == [(0, 2)]
    assert missing_face_runs(np.ones(3, bool)) == []
    assert frame_times(3, 4.0).tolist() == [0.0, 0.25, 0.5]


def test_box_geometry_on_hand_values():
    assert square_region(FaceBox(10, 20, 40, 60), 1.5) == (30.0, 50.0, 90.0)
    assert round(eye_angle_deg((10, 10), (30, 30)), 6) == 45.0
    assert eye_angle_deg((30, 5), (10, 5)) == 0.0  # the left-most point is the first eye
    assert largest_face([FaceBox(0, 0, 2, 2), FaceBox(5, 5, 3, 3), FaceBox(1, 1, 1, 1)]) == FaceBox(5, 5, 3, 3)
    assert largest_face([]) is None
    box = landmark_box(face_landmarks(1, centre=(100, 60), half=30)[0])
    assert (box.x, box.y, box.width, box.height, box.angle_deg) == (70, 30, 60, 60, 0.0)


def test_crop_face_is_the_box_square_black_outside_and_levels_the_eyes():
    image = np.random.default_rng(0).integers(0, 255, (100, 120, 3)).astype(np.uint8)
    assert np.array_equal(crop_face(image, FaceBox(10, 20, 30, 30), size=30), image[20:50, 10:40])
    corner = crop_face(image, FaceBox(-10, -10, 20, 20), size=20)
    assert corner[:10, :10].max() == 0 and np.array_equal(corner[10:, 10:], image[:10, :10])
    canvas = np.zeros((200, 200, 3), np.uint8)
    left_eye, right_eye = (80, 90), (120, 110)  # the right eye is lower: the head is tilted
    cv2.circle(canvas, left_eye, 4, (255, 0, 0), -1)
    cv2.circle(canvas, right_eye, 4, (0, 255, 0), -1)
    levelled = crop_face(canvas, FaceBox(60, 60, 80, 80, eye_angle_deg(left_eye, right_eye)), size=80)
    row_left = np.nonzero(levelled[:, :, 0] > 128)[0].mean()
    row_right = np.nonzero(levelled[:, :, 1] > 128)[0].mean()
    assert abs(row_left - row_right) < 1.0
    assert crop_face(canvas, FaceBox(0, 0, 150, 100), size=48, margin=1.2).shape == (48, 48, 3)


# ----------------------------------------------------------------------------- detectors


def test_haar_finds_the_face_frames_and_leaves_the_others_black(silent_clip):
    track = detect_video_faces(silent_clip, N_FACE + N_BLACK, "haar")
    assert track.faces.shape == (N_FACE + N_BLACK, 48, 48, 3) and len(track) == N_FACE + N_BLACK
    assert not track.found[N_FACE:].any()
    assert track.found[:N_FACE].mean() >= 0.9
    assert track.faces[~track.found].max() == 0 and track.faces[track.found].mean() > 40


def test_frames_past_the_decoded_ones_have_no_face(silent_clip, caplog):
    with caplog.at_level(logging.WARNING):
        track = detect_video_faces(silent_clip, N_FACE + N_BLACK + 3, "haar")
    assert not track.found[-3:].any() and "the last 3 have no face" in caplog.text


@pytest.mark.slow
def test_mtcnn_runs_in_a_spawned_process(silent_clip):
    track = detect_video_faces(silent_clip, N_FACE + N_BLACK, "mtcnn")
    assert track.faces.shape == (N_FACE + N_BLACK, 48, 48, 3)
    assert not track.found[N_FACE:].any()
    assert track.faces[~track.found].max() == 0


def test_openface_rows_map_to_frames_and_success_to_face_found(silent_clip, tmp_path):
    n_frames = N_FACE + N_BLACK
    numbers = [1, 2, 3, 3, 5, *range(6, n_frames)]  # frame 3 twice (the first row counts), 4 and 20 absent
    success = [True, False, True, False, True, *([True] * (n_frames - 6))]
    path = write_openface_csv(tmp_path / "silent.csv", face_landmarks(len(numbers)),
                              fake_action_units(numbers), success, numbers)
    landmarks, found = openface_per_frame(openface.read_openface_csv(path), n_frames)
    expected = np.array([True, False, True, False, True, *([True] * (n_frames - 6)), False])
    assert np.array_equal(found, expected) and landmarks.shape == (n_frames, 68, 2)
    track = openface_faces(silent_clip, n_frames, landmarks, found)
    assert np.array_equal(track.found, expected)
    assert track.faces[~expected].max() == 0 and track.faces[0].max() > 0


# ----------------------------------------------------------------------------- checks before any work


def test_a_video_without_audio_and_a_run_that_reads_audio(silent_clip, audio_run, tmp_path):
    with pytest.raises(UserError, match="silent.mkv has no audio track, but run\\(s\\) .* read mfcc egemaps; "
                                        "use runs trained on --modality frame only"):
        predict.main(["video", str(silent_clip), "--runs", str(audio_run), "--output", str(tmp_path)])


def test_openface_detector_and_features_need_an_openface_source(clip, dataset, audio_run, tmp_path):
    with pytest.raises(UserError, match="--detector openface needs --openface-bin"):
        predict.main(["video", str(clip), "--runs", str(audio_run), "--output", str(tmp_path),
                      "--detector", "openface"])
    au_run = save_run(tmp_path / "runs", tiny_config(dataset, modality=["mfcc", "fau"], emotion="valence"), 0)
    with pytest.raises(UserError, match="a run reads fau, features OpenFace makes: pass --openface-bin"):
        video_traces(clip, [load_fold_model(au_run / "best.pt")], tmp_path / "out")


def test_missing_statistics_ask_for_the_dataset(clip, tmp_path):
    run = save_run(tmp_path / "runs", tiny_config(tmp_path / "gone", modality=["mfcc"], emotion="valence"), 0)
    with pytest.raises(UserError, match="needs the mean_std_dict.pkl of the dataset it was trained on; pass "
                                        "--dataset-path \\(its config names .*gone'"):
        video_traces(clip, [load_fold_model(run / "best.pt")], tmp_path / "out")


def test_vggish_checkpoint_comes_from_the_option_or_the_runs_dataset(dataset, tmp_path):
    config = tiny_config(dataset, modality=["vggish"], emotion="valence")
    model = load_fold_model(save_run(tmp_path / "runs", config, 0) / "best.pt")
    info_path = dataset / "dataset_info.pkl"
    original = info_path.read_bytes()
    try:
        with pytest.raises(UserError, match="a run reads VGGish features: pass --vggish-checkpoint"):
            resolve_vggish_checkpoint("", [model], VideoOptions())
        info = pickle.loads(original)
        info["vggish_weights"] = "RANDOM VGGish weights (demo only)"
        info_path.write_bytes(pickle.dumps(info))
        random_ckpt = dataset / "vggish_random" / "vggish_model.ckpt"
        random_ckpt.parent.mkdir(exist_ok=True)
        Path(f"{random_ckpt}.index").write_bytes(b"")
        assert resolve_vggish_checkpoint("", [model], VideoOptions()) == str(random_ckpt)
        with pytest.raises(UserError, match="VGGish checkpoint .*missing.ckpt"):
            resolve_vggish_checkpoint(str(tmp_path / "missing.ckpt"), [model], VideoOptions())
    finally:
        info_path.write_bytes(original)


# ----------------------------------------------------------------------------- end to end


@pytest.mark.slow
def test_video_with_face_and_faceless_frames_gives_a_csv_and_a_png(clip, audio_run, tmp_path, capsys):
    output = tmp_path / "traces"
    assert predict.main(["video", str(clip), "--runs", str(audio_run), "--output", str(output), "--quiet"]) == 0
    assert "face found in" in capsys.readouterr().out
    rows = read_traces(output / "clip_traces.csv")
    assert len(rows) == N_FACE + N_BLACK
    assert [int(r["frame"]) for r in rows] == list(range(N_FACE + N_BLACK))
    assert float(rows[5]["time_s"]) == pytest.approx(0.5)
    found = [r["face_found"] == "True" for r in rows]
    assert not any(found[N_FACE:]) and sum(found[:N_FACE]) >= 0.9 * N_FACE
    values = np.array([[float(r["valence"]), float(r["arousal"])] for r in rows])
    assert np.all(np.abs(values) <= 1)
    png = output / "clip_traces.png"
    assert png.stat().st_size > 10_000 and png.read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow
def test_openface_output_folder_places_the_faces(clip, audio_run, tmp_path):
    n_frames = N_FACE + N_BLACK
    success = np.arange(n_frames) % 3 != 1
    folder = tmp_path / "openface"
    folder.mkdir()
    write_openface_csv(folder / "clip.csv", face_landmarks(n_frames), fake_action_units(range(1, n_frames + 1)),
                       success)
    model = load_fold_model(audio_run / "best.pt")
    traces = video_traces(clip, [model], tmp_path / "out", VideoOptions(openface_output=str(folder), quiet=True))
    assert np.array_equal(traces.face_found, success)
    rows = read_traces(traces.csv_path)
    assert [r["face_found"] == "True" for r in rows] == success.tolist()


@pytest.mark.slow
def test_visual_run_on_a_silent_video_without_any_face(tmp_path, caplog):
    video = face_video(tmp_path / "dark.mkv", 0, 6, with_audio=False)
    run = save_run(tmp_path / "runs", tiny_config(modality=["frame"], emotion="arousal"), 0)
    with caplog.at_level(logging.WARNING):
        traces = video_traces(video, [load_fold_model(run / "best.pt")], tmp_path / "out",
                              VideoOptions(device="cpu", quiet=True))
    assert "NO FACE was found in any of the 6 frames of dark.mkv" in caplog.text
    assert traces.emotions == ("arousal",) and traces.n_frames == 6 and not traces.face_found.any()
    rows = read_traces(traces.csv_path)
    assert [r["valence"] for r in rows] == [""] * 6  # no run predicts valence
    assert all(-1 <= float(r["arousal"]) <= 1 for r in rows)
    assert traces.png_path.is_file()


def test_openface_binary_runs_on_the_video_frames(silent_clip, tmp_path):
    from base.prediction.video_traces import openface_csv_for
    from tests.openface_helpers import read_argv_log, write_fake_feature_extraction

    binary = write_fake_feature_extraction(tmp_path / "FeatureExtraction", tmp_path / "argv.json", failed_rows=(2,))
    n_frames = N_FACE + N_BLACK
    csv_path = openface_csv_for(silent_clip, VideoOptions(openface_bin=str(binary)), tmp_path / "work", n_frames,
                                quiet=True)
    argv = read_argv_log(tmp_path / "argv.json")
    frames_dir = Path(argv[argv.index("-fdir") + 1])
    assert sorted(p.name for p in frames_dir.iterdir())[:2] == ["00001.jpg", "00002.jpg"]
    assert len(list(frames_dir.iterdir())) == n_frames
    _, found = openface_per_frame(openface.read_openface_csv(csv_path), n_frames)
    assert found.tolist() == [True, False, *([True] * (n_frames - 2))]


@pytest.mark.slow
def test_vggish_run_with_the_demo_random_weights_of_its_dataset(clip, tmp_path):
    from vggish.checkpoint import write_random_checkpoint

    data = make_processed_dataset(tmp_path / "data", n_train=5, n_val=1, n_test=1, lengths=(12,),
                                  modalities=("mfcc", "vggish"))
    info = pickle.loads((data / "dataset_info.pkl").read_bytes())
    info["vggish_weights"] = "RANDOM VGGish weights (demo only)"
    (data / "dataset_info.pkl").write_bytes(pickle.dumps(info))
    write_random_checkpoint(str(data / "vggish_random" / "vggish_model.ckpt"), seed=0)
    run = save_run(tmp_path / "runs", tiny_config(data, modality=["vggish", "mfcc"], emotion="valence"), 0)
    traces = video_traces(clip, [load_fold_model(run / "best.pt")], tmp_path / "out", VideoOptions(quiet=True))
    assert traces.n_frames == N_FACE + N_BLACK and traces.emotions == ("valence",)
    assert np.isfinite(traces.values[:, 0]).all() and np.isnan(traces.values[:, 1]).all()
