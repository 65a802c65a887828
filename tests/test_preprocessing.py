"""Preprocessing end to end on the demo database: the authors' format, resumability, bad input."""

from __future__ import annotations

import csv
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import calculate_mean_and_std
import preprocessing
from base.errors import run_cli
from base.safe_pickle import load_pickle
from tests.conftest import ROOT, make_tiny_video
from tests.shared_work import build_once

CHECKER = ROOT.parent / "shared" / "tools" / "check_processed.py"
pytestmark = pytest.mark.slow


def _run(argv: list[str]) -> int:
    return run_cli(preprocessing.main, argv)


@pytest.fixture(scope="session")
def processed_demo(demo_database: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The small demo preprocessed (--jobs 2) with its statistics, once for all workers; read-only."""

    def build(folder: Path) -> None:
        output = folder / "Affwild2_processed"
        assert _run(["--database", str(demo_database), "--output", str(output), "--jobs", "2", "--quiet"]) == 0
        assert run_cli(calculate_mean_and_std.main, ["--output", str(output), "--quiet"]) == 0

    folder, _ = build_once(tmp_path_factory, "small_demo_processed", build)
    return folder / "Affwild2_processed"


def _arrays(output: Path) -> dict[str, bytes]:
    return {str(p.relative_to(output)): p.read_bytes() for p in sorted((output / "npy_data").rglob("*.npy"))}


def test_output_passes_the_independent_checker(processed_demo: Path, demo_database: Path) -> None:
    if not CHECKER.is_file():
        pytest.skip("shared/tools/check_processed.py is not beside the project")
    result = subprocess.run([sys.executable, str(CHECKER), str(processed_demo), str(demo_database)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_authors_format(processed_demo: Path, demo_database: Path) -> None:
    info = load_pickle(processed_demo / "dataset_info.pkl")
    partitions = info["partition"]
    assert set(partitions) == {"Train_Set", "Validation_Set", "Target_Set"}
    assert "RANDOM" in info["vggish_weights"], "the demo's random VGGish must be declared"
    for partition, trials in partitions.items():
        assert list(trials) == sorted(trials)
        for trial, n in trials.items():
            folder = processed_demo / "npy_data" / trial
            frame = np.load(folder / "frame.npy")
            assert frame.shape == (n, 48, 48, 3) and frame.dtype == np.uint8
            assert np.load(folder / "mfcc.npy").shape == (n, 39)
            assert np.load(folder / "egemaps.npy").shape == (n, 23)
            assert np.load(folder / "vggish.npy").shape == (n, 128)
            assert (folder / "label.npy").is_file() == (partition != "Target_Set")
    summary = list(csv.DictReader(open(processed_demo / "preprocessing_summary.csv")))
    assert {row["status"] for row in summary} == {"ok"}
    assert all(abs(float(r["audio_s"]) - float(r["video_s"])) < 0.5 for r in summary)
    assert sum(int(r["missing_faces"]) for r in summary) > 0
    assert not (processed_demo / ".cache").exists() or not any((processed_demo / ".cache").iterdir())


def test_frames_are_pillows_resize_of_each_jpg_bit_for_bit(processed_demo: Path, demo_database: Path) -> None:
    # the authors' preprocessing: Image.open(jpg).resize((48, 48)) (default filter), black where missing
    from PIL import Image

    trial = load_pickle(processed_demo / "dataset_info.pkl")["partition"]["Target_Set"]
    trial = sorted(trial)[0]  # a test trial: every frame of the video is kept, row k is jpg k + 1
    frames = np.load(processed_demo / "npy_data" / trial / "frame.npy")
    folder = demo_database / "cropped_aligned" / trial
    n_checked = 0
    for row, frame in enumerate(frames):
        jpg = folder / f"{row + 1:05d}.jpg"
        if not jpg.is_file():
            assert frame.max() == 0
            continue
        np.testing.assert_array_equal(frame, np.array(Image.open(jpg).resize((48, 48))))
        n_checked += 1
    assert n_checked > 0


def test_labels_survive_into_the_features(processed_demo: Path) -> None:
    """Features sampled at the labeled frames still follow the labels (frame/label alignment check)."""
    from base.preprocessing.opensmile_features import EGEMAPS_COLUMNS

    info = load_pickle(processed_demo / "dataset_info.pkl")
    trials = [t for p in ("Train_Set", "Validation_Set") for t in info["partition"][p]
              if not t.endswith(("_left", "_right"))]
    loudness, brightness, labels = [], [], []
    for trial in trials:
        folder = processed_demo / "npy_data" / trial
        egemaps, frame = np.load(folder / "egemaps.npy"), np.load(folder / "frame.npy").astype(float)
        present = frame.reshape(len(frame), -1).max(1) > 0
        loudness.append(egemaps[present, EGEMAPS_COLUMNS.index("Loudness_sma3")])
        brightness.append(frame[present][:, 14:34, 14:34].mean(axis=(1, 2, 3)))
        labels.append(np.load(folder / "label.npy")[present])
    labels = np.concatenate(labels)
    assert np.corrcoef(np.concatenate(brightness), labels[:, 0])[0, 1] > 0.8
    # one 10 ms loudness row per frame also samples the voice's 3 Hz syllable rhythm: a noisier cue
    assert np.corrcoef(np.concatenate(loudness), labels[:, 1])[0, 1] > 0.4


def test_rerun_skips_finished_trials(processed_demo: Path, demo_database: Path, tmp_path: Path, capsys) -> None:
    output = tmp_path / "rerun"
    shutil.copytree(processed_demo, output)  # the shared output stays as built
    before = _arrays(output)
    start = time.perf_counter()
    assert _run(["--database", str(demo_database), "--output", str(output), "--quiet"]) == 0
    assert time.perf_counter() - start < 30
    assert _arrays(output) == before
    summary = list(csv.DictReader(open(output / "preprocessing_summary.csv")))
    assert {row["status"] for row in summary} == {"done earlier"}


def test_killed_run_resumes_to_identical_arrays(processed_demo: Path, demo_database: Path, tmp_path: Path) -> None:
    output = tmp_path / "killed"
    command = [sys.executable, str(ROOT / "preprocessing.py"), "--database", str(demo_database),
               "--output", str(output), "--jobs", "1", "--quiet"]
    process = subprocess.Popen(command, cwd=ROOT, start_new_session=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline and process.poll() is None:
        if (output / ".cache").is_dir() and any((output / ".cache").rglob("mfcc.npy")):
            break
        time.sleep(0.2)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert not (output / "dataset_info.pkl").exists() or process.returncode == 0
    assert _run(["--database", str(demo_database), "--output", str(output), "--quiet"]) == 0
    assert _arrays(output) == _arrays(processed_demo)


def _copy_database(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    (target / "demo_database.json").unlink()  # no longer the pristine demo
    return target


def test_bad_trials_are_skipped_and_listed(demo_database: Path, tmp_path: Path) -> None:
    from vggish.checkpoint import write_random_checkpoint

    root = _copy_database(demo_database, tmp_path / "db")
    annotations = root / "annotations/VA_Set"
    train = sorted((annotations / "Train_Set").glob("*.txt"))
    single = [p for p in train if not p.stem.endswith(("_left", "_right"))]
    # 1) a header other than valence,arousal
    validation = next((annotations / "Validation_Set").glob("*.txt"))
    validation.write_text("arousal,valence\n" + "\n".join(validation.read_text().splitlines()[1:]))
    # 2) a video with no audio track replaces the first single-person video
    video = next((root / "raw_video").glob(single[0].stem + ".*"))
    video.unlink()
    n_rows = len(single[0].read_text().splitlines()) - 1
    make_tiny_video(video.with_suffix(".mp4"), seconds=n_rows / 10.0, with_audio=False)
    # 3) a trial whose video is missing: its annotation names a video nobody has
    orphan = annotations / "Train_Set" / "ghost.txt"
    orphan.write_text("valence,arousal\n0.1,0.1\n")
    (root / "cropped_aligned" / "ghost").mkdir()
    # 4) an unreadable video for the test set
    test_video = next((root / "Test_Set").iterdir())
    test_video.write_bytes(b"not a video at all" * 100)
    # 5) the two-person trials get an annotation far shorter than the video
    left = next(p for p in train if p.stem.endswith("_left"))
    left.write_text("\n".join(left.read_text().splitlines()[:20]) + "\n")
    checkpoint = tmp_path / "vggish" / "vggish_model.ckpt"
    checkpoint.parent.mkdir()
    write_random_checkpoint(str(checkpoint), seed=0)
    output = tmp_path / "out"
    code = _run(["--database", str(root), "--output", str(output), "--jobs", "2", "--quiet",
                 "--vggish-checkpoint", str(checkpoint)])
    assert code == 1
    rows = {r["trial"]: r for r in csv.DictReader(open(output / "preprocessing_summary.csv"))}
    assert "header is 'arousal,valence'" in rows[validation.stem]["message"]
    assert "no audio track" in rows[single[0].stem]["message"]
    assert "no video named ghost" in rows["ghost"]["message"]
    assert "cannot read video" in rows[test_video.stem]["message"]
    assert "annotation rows but the video has" in rows[left.stem]["message"]
    assert rows[left.stem.replace("_left", "_right")]["status"] == "ok"
    info = load_pickle(output / "dataset_info.pkl")
    assert validation.stem not in info["partition"]["Validation_Set"]
    assert single[1].stem in info["partition"]["Train_Set"]
    assert "RANDOM" not in info["vggish_weights"]


def test_clear_errors_for_bad_arguments(demo_database: Path, tmp_path: Path, capsys) -> None:
    assert _run(["--database", str(tmp_path / "missing"), "--output", str(tmp_path / "o")]) == 2
    assert "database folder" in capsys.readouterr().err
    a_file = tmp_path / "file"
    a_file.write_text("x")
    assert _run(["--database", str(demo_database), "--output", str(a_file)]) == 2
    assert "is a file" in capsys.readouterr().err
    root = _copy_database(demo_database, tmp_path / "db")
    assert _run(["--database", str(root), "--output", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "--vggish-checkpoint" in err and "Traceback" not in err
    assert _run(["--database", str(root), "--output", str(tmp_path / "o"),
                 "--vggish-checkpoint", str(tmp_path / "nope.ckpt")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "vggish_model.ckpt" in err or "nope.ckpt" in err
    empty = tmp_path / "empty_db"
    empty.mkdir()
    assert _run(["--database", str(empty), "--output", str(tmp_path / "o2")]) == 2
    assert "annotations/VA_Set" in capsys.readouterr().err


def test_openface_features_join_finished_trials(processed_demo: Path, demo_database: Path, tmp_path: Path) -> None:
    """``--openface-bin`` adds landmark.npy/au.npy to each trial, other arrays untouched (SPEC §9)."""
    from tests.openface_helpers import write_fake_feature_extraction

    output = tmp_path / "with_openface"
    shutil.copytree(processed_demo, output)
    before = _arrays(output)
    fake = write_fake_feature_extraction(tmp_path / "Open Face" / "FeatureExtraction", tmp_path / "argv.json")
    assert _run(["--database", str(demo_database), "--output", str(output), "--quiet",
                 "--openface-bin", str(fake)]) == 0
    info = load_pickle(output / "dataset_info.pkl")
    for trials in info["partition"].values():
        for trial, n in trials.items():
            assert np.load(output / "npy_data" / trial / "landmark.npy").shape == (n, 68, 2)
            assert np.load(output / "npy_data" / trial / "au.npy").shape == (n, 17)
    after = _arrays(output)
    assert {k: v for k, v in after.items() if k in before} == before
    rows = list(csv.DictReader(open(output / "preprocessing_summary.csv")))
    assert {r["openface"] for r in rows} == {"ok"}


def test_openface_failure_keeps_the_trial(processed_demo: Path, demo_database: Path, tmp_path: Path) -> None:
    from tests.openface_helpers import write_fake_feature_extraction

    output = tmp_path / "failing_openface"
    shutil.copytree(processed_demo, output)
    fake = write_fake_feature_extraction(tmp_path / "FeatureExtraction", tmp_path / "argv.json", exit_code=3,
                                         stderr_lines=["could not open the model files"])
    assert _run(["--database", str(demo_database), "--output", str(output), "--quiet",
                 "--openface-bin", str(fake)]) == 0
    rows = list(csv.DictReader(open(output / "preprocessing_summary.csv")))
    assert all("could not open the model files" in r["openface"] for r in rows)
    assert all(r["status"] == "done earlier" for r in rows)
    assert not list((output / "npy_data").rglob("landmark.npy"))
    assert _run(["--database", str(demo_database), "--output", str(output), "--quiet",
                 "--openface-bin", str(tmp_path / "missing" / "FeatureExtraction")]) == 2
