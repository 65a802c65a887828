"""The demo database follows SPEC §1 exactly, is deterministic, and its labels are in the pixels and the sound."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from base.errors import UserError
from base.preprocessing import demo
from base.preprocessing.annotations import read_annotation
from base.preprocessing.media import extract_wav, probe_video, read_wav
from configs import DemoConfig
from tests.conftest import ROOT, SMALL_DEMO

CHECKER = ROOT.parent / "shared" / "tools" / "check_demo_db.py"


def test_layout_passes_the_independent_checker(demo_database: Path) -> None:
    if not CHECKER.is_file():
        pytest.skip("shared/tools/check_demo_db.py is not beside the project")
    result = subprocess.run([sys.executable, str(CHECKER), str(demo_database)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert " 0 problems" in result.stdout


def test_layout_follows_spec(demo_database: Path) -> None:
    train = sorted((demo_database / "annotations/VA_Set/Train_Set").glob("*.txt"))
    validation = sorted((demo_database / "annotations/VA_Set/Validation_Set").glob("*.txt"))
    assert len(validation) == 1
    names = [p.stem for p in train]
    left = [n for n in names if n.endswith("_left")]
    assert left and left[0].replace("_left", "_right") in names, names
    videos = {p.stem: p for p in (demo_database / "raw_video").iterdir()}
    tests = {p.stem: p for p in (demo_database / "Test_Set").iterdir()}
    assert {p.suffix for p in [*videos.values(), *tests.values()]} == {".mp4", ".avi"}
    for path in [*train, *validation]:
        assert path.read_text().splitlines()[0] == "valence,arousal"
        trial = path.stem
        video = trial.removesuffix("_left").removesuffix("_right")
        assert video in videos
        annotation = read_annotation(path)
        info = probe_video(videos[video])
        assert annotation.n_rows == info.n_frames
        assert info.has_audio
        jpgs = sorted(p.name for p in (demo_database / "cropped_aligned" / trial).iterdir())
        assert all(len(n) == 9 and n.endswith(".jpg") for n in jpgs)
        assert int(jpgs[-1][:5]) <= annotation.n_rows
        image = cv2.imread(str(demo_database / "cropped_aligned" / trial / jpgs[0]))
        assert image.shape == (112, 112, 3)
    all_rows = np.concatenate([read_annotation(p).values for p in [*train, *validation]])
    assert (all_rows == -5).any(), "some rows must be unannotated (-5)"
    assert np.all((np.abs(all_rows) <= 1) | (all_rows == -5))
    n_jpgs = sum(len(list((demo_database / "cropped_aligned" / p.stem).iterdir())) for p in train)
    assert n_jpgs < sum(read_annotation(p).n_rows for p in train), "some jpgs must be missing"
    annotated = {p.stem for p in [*train, *validation]}
    test_trials = {p.name for p in (demo_database / "cropped_aligned").iterdir()} - annotated
    assert test_trials == set(tests), "test trials are the cropped_aligned folders without annotation"
    assert probe_video(next(iter(tests.values()))).has_audio


def _fingerprint(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_deterministic_for_a_seed(tmp_path: Path) -> None:
    config = DemoConfig(demo_n_train_videos=2, demo_n_validation_videos=1, demo_n_test_videos=1,
                        demo_min_seconds=2.0, demo_max_seconds=3.0)
    first = _fingerprint(demo.make_demo_database(tmp_path / "a", config, quiet=True))
    second = _fingerprint(demo.make_demo_database(tmp_path / "b", config, quiet=True))
    assert first.keys() == second.keys()
    assert first == second
    other = DemoConfig(**{**config.__dict__, "demo_seed": 1})
    third = _fingerprint(demo.make_demo_database(tmp_path / "c", other, quiet=True))
    annotations = [k for k in first if k.endswith(".txt")]
    assert any(first[k] != third.get(k) for k in annotations)


def test_rerun_reuses_and_refuses_foreign_folders(demo_database: Path, tmp_path: Path) -> None:
    assert demo.make_demo_database(demo_database, SMALL_DEMO, quiet=True) == demo_database
    with pytest.raises(UserError, match="other settings"):
        demo.make_demo_database(demo_database, DemoConfig(demo_seed=5), quiet=True)
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "thesis.tex").write_text("precious")
    with pytest.raises(UserError, match="not an empty folder"):
        demo.make_demo_database(busy, SMALL_DEMO, quiet=True)
    assert (busy / "thesis.tex").read_text() == "precious"


def _single_person_trials(root: Path) -> list[Path]:
    return [p for p in sorted((root / "annotations/VA_Set").rglob("*.txt"))
            if not p.stem.endswith(("_left", "_right"))]


def test_valence_is_visible_in_the_faces(demo_database: Path) -> None:
    brightness, valence = [], []
    for path in _single_person_trials(demo_database):
        annotation = read_annotation(path)
        for index in annotation.labeled_indices:
            jpg = demo_database / "cropped_aligned" / path.stem / f"{index + 1:05d}.jpg"
            if jpg.is_file():
                brightness.append(cv2.imread(str(jpg))[30:80, 30:80].mean())  # cheeks and nose: skin only
                valence.append(annotation.values[index, 0])
    r = np.corrcoef(brightness, valence)[0, 1]
    assert r > 0.8, f"brightness/valence r={r:.2f}"


def test_arousal_is_audible(demo_database: Path, tmp_path: Path) -> None:
    rms, arousal = [], []
    for path in _single_person_trials(demo_database):
        video = next((demo_database / "raw_video").glob(path.stem + ".*"))
        wav = tmp_path / f"{path.stem}.wav"
        extract_wav(video, wav, 16000)
        audio, rate = read_wav(wav)
        annotation = read_annotation(path)
        samples_per_frame = int(rate / probe_video(video).fps)
        for index in annotation.labeled_indices:
            chunk = audio[index * samples_per_frame:(index + 1) * samples_per_frame]
            if len(chunk) == samples_per_frame:
                rms.append(np.sqrt(np.mean(chunk ** 2)))
                arousal.append(annotation.values[index, 1])
    r = np.corrcoef(rms, arousal)[0, 1]
    assert r > 0.8, f"loudness/arousal r={r:.2f}"


def test_shuffled_labels_are_not_visible(demo_database: Path) -> None:
    """Guards the test above: a label trace of another trial does not correlate."""
    paths = _single_person_trials(demo_database)
    a, b = read_annotation(paths[0]), read_annotation(paths[1])
    n = min(a.n_rows, b.n_rows)
    r = np.corrcoef(a.values[:n, 0], b.values[:n, 0])[0, 1]
    assert abs(r) < 0.8
