"""Submission files and their validator: writing, every corruption a user can hit, and predict.py test/validate
end to end on a tiny processed dataset with fake fold runs (random weights)."""

from __future__ import annotations

import pickle
import re
from pathlib import Path

import numpy as np
import pytest

import predict
from base.errors import UserError
from base.prediction.submission import (
    HEADER,
    check_trial_text,
    expected_from_database,
    expected_from_dataset,
    format_rows,
    validate_submission,
    write_submission,
    write_trial_file,
)
from base.preprocessing.database import TEST_PARTITION, discover_trials
from base.preprocessing.media import probe_video
from tests.prediction_helpers import save_run, tiny_config
from tests.processed_helpers import make_processed_dataset

# tiny models run fastest on one thread (and do not suffer from a busy machine)
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """5 training, 2 validation and 2 test trials (test: 21 and 34 frames), mfcc + egemaps."""
    return make_processed_dataset(tmp_path_factory.mktemp("processed") / "data", n_train=5, n_val=2, n_test=2,
                                  lengths=(20, 14, 26, 18, 22, 16, 12, 21, 34), modalities=("mfcc", "egemaps"))


@pytest.fixture(scope="module")
def both_runs(dataset, tmp_path_factory) -> list[Path]:
    """Two fold runs (folds 0 and 1) of a valence+arousal model reading mfcc and egemaps."""
    save = tmp_path_factory.mktemp("runs")
    config = tiny_config(dataset, modality=["mfcc", "egemaps"], emotion="both")
    return [save_run(save, config, fold, seed=fold) for fold in (0, 1)]


# ----------------------------------------------------------------------------- writing


def test_format_rows_on_hand_values():
    assert format_rows(np.array([[0.5, -1.0], [0.1234567, 0.0]])) == (
        "valence,arousal\n0.500000,-1.000000\n0.123457,0.000000\n")
    with pytest.raises(ValueError, match="n_frames, 2"):
        format_rows(np.zeros((3, 1)))


def test_write_refuses_nan_and_out_of_range_values(tmp_path):
    with pytest.raises(UserError, match="trial t1 contain NaN"):
        write_trial_file(tmp_path, "t1", np.array([[0.0, np.nan]]))
    with pytest.raises(UserError, match=r"trial t2 lie outside \[-1, 1\]"):
        write_trial_file(tmp_path, "t2", np.array([[1.5, 0.0]]))
    assert not list(tmp_path.iterdir())


def test_write_submission_into_a_file_path_is_refused(tmp_path):
    target = tmp_path / "file"
    target.write_text("x")
    with pytest.raises(UserError, match="is a file"):
        write_submission(target, {"a": np.zeros((2, 2))})


# ----------------------------------------------------------------------------- the validator


def _good_submission(folder: Path, expected: dict[str, int]) -> Path:
    rng = np.random.default_rng(0)
    write_submission(folder, {t: rng.uniform(-1, 1, (n, 2)) for t, n in expected.items()})
    return folder


EXPECTED = {"trial_a": 5, "trial_b_left": 4}


def test_a_good_submission_is_valid(tmp_path):
    report = validate_submission(_good_submission(tmp_path / "sub", EXPECTED), EXPECTED)
    assert report.ok and report.n_valid_files == 2
    assert "is valid: 2 of 2" in report.summary()


def _corrupt(folder: Path, kind: str) -> None:
    path = folder / "trial_a.txt"
    lines = path.read_text().splitlines()
    if kind == "missing":
        path.unlink()
    elif kind == "short":
        path.write_text("\n".join(lines[:-2]) + "\n")
    elif kind == "long":
        path.write_text("\n".join([*lines, "0.1,0.1"]) + "\n")
    elif kind == "nan":
        lines[2] = "nan,0.1"
        path.write_text("\n".join(lines) + "\n")
    elif kind == "header":
        lines[0] = "arousal,valence"
        path.write_text("\n".join(lines) + "\n")
    elif kind == "range":
        lines[1] = "0.2,1.5"
        lines[3] = "-5,-5"
        path.write_text("\n".join(lines) + "\n")
    elif kind == "malformed":
        lines[4] = "0.1;0.2"
        path.write_text("\n".join(lines) + "\n")
    elif kind == "empty":
        path.write_text("")
    elif kind == "extra":
        (folder / "not_a_trial.txt").write_text(f"{HEADER}\n0,0\n")


@pytest.mark.parametrize(("kind", "message"), [
    ("missing", r"missing file trial_a\.txt for test trial trial_a"),
    ("short", r"trial_a\.txt has 3 value lines, expected 5 \(one per video frame\)"),
    ("long", r"trial_a\.txt has 6 value lines, expected 5"),
    ("nan", r"trial_a\.txt: 1 line\(s\) hold NaN or infinite values \(line 3\)"),
    ("header", r"trial_a\.txt has the header 'arousal,valence', expected 'valence,arousal'"),
    ("range", r"trial_a\.txt: 2 line\(s\) hold values outside \[-1, 1\] \(line 2, 4\)"),
    ("malformed", r"trial_a\.txt: 1 line\(s\) are not two comma-separated numbers \(line 5\)"),
    ("empty", r"trial_a\.txt is empty; it needs the header 'valence,arousal' and 5 value lines"),
    ("extra", r"unexpected file not_a_trial\.txt: not_a_trial is not a test trial"),
])
def test_each_corruption_is_reported_clearly(tmp_path, capsys, kind, message):
    folder = _good_submission(tmp_path / "sub", EXPECTED)
    _corrupt(folder, kind)
    report = validate_submission(folder, EXPECTED)
    assert not report.ok
    assert len(report.problems) == 1, report.problems
    assert re.search(message, report.problems[0]), report.problems[0]
    assert "INVALID: 1 problem(s)" in report.summary()


def test_many_bad_lines_are_counted_and_a_few_quoted():
    text = HEADER + "\n" + "\n".join(["nan,0"] * 5) + "\n"
    (problem,) = check_trial_text("x.txt", text, 5)
    assert problem == "x.txt: 5 line(s) hold NaN or infinite values (line 2, 3, 4 and 2 more)"


def test_crlf_and_a_trailing_blank_line_are_accepted():
    assert check_trial_text("x.txt", "valence,arousal\r\n0.1,0.2\r\n\r\n", 1) == []


def test_missing_submission_folder(tmp_path):
    with pytest.raises(UserError, match="submission folder .* does not exist"):
        validate_submission(tmp_path / "nope", EXPECTED)


# ----------------------------------------------------------------------------- expected frame counts


def test_expected_from_the_database_are_the_test_videos_frame_counts(demo_database, tmp_path):
    expected = expected_from_database(demo_database)
    test_trials = [t for t in discover_trials(demo_database) if t.partition == TEST_PARTITION]
    assert sorted(expected) == sorted(t.name for t in test_trials) and expected
    for trial in test_trials:
        assert expected[trial.name] == probe_video(trial.video_path).n_frames
    folder = _good_submission(tmp_path / "sub", expected)
    assert predict.main(["validate", str(folder), "--database", str(demo_database)]) == 0
    name = sorted(expected)[0]
    lines = (folder / f"{name}.txt").read_text().splitlines()
    (folder / f"{name}.txt").write_text("\n".join(lines[:-1]) + "\n")
    assert predict.main(["validate", str(folder), "--database", str(demo_database)]) == 1


def test_test_trial_without_video_is_a_user_error(tmp_path):
    root = tmp_path / "db"
    (root / "annotations" / "VA_Set" / "Train_Set").mkdir(parents=True)
    (root / "annotations" / "VA_Set" / "Validation_Set").mkdir(parents=True)
    (root / "annotations" / "VA_Set" / "Train_Set" / "a.txt").write_text("valence,arousal\n0,0\n")
    (root / "cropped_aligned" / "a").mkdir(parents=True)
    (root / "cropped_aligned" / "lonely_test").mkdir(parents=True)
    with pytest.raises(UserError, match="test trial lonely_test has no video lonely_test"):
        expected_from_database(root)


def test_expected_from_the_dataset(dataset):
    assert expected_from_dataset(dataset) == {"test_000": 21, "test_001": 34}


# ----------------------------------------------------------------------------- predict.py test / validate


def test_submission_from_two_fold_runs_is_written_and_valid(dataset, both_runs, tmp_path, capsys):
    output = tmp_path / "submission"
    code = predict.main(["test", "--dataset-path", str(dataset), "--runs", *map(str, both_runs),
                         "--output", str(output), "--device", "cpu", "--quiet"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "wrote 2 trial files" in out and "valence: 2 run(s), arousal: 2 run(s)" in out
    assert "is valid: 2 of 2" in out
    for trial, n_frames in {"test_000": 21, "test_001": 34}.items():
        lines = (output / f"{trial}.txt").read_text().splitlines()
        assert lines[0] == "valence,arousal" and len(lines) == n_frames + 1
        values = np.array([[float(v) for v in line.split(",")] for line in lines[1:]])
        assert np.all(np.abs(values) <= 1) and values.std(axis=0).min() > 0
    assert predict.main(["validate", str(output), "--dataset-path", str(dataset)]) == 0
    (output / "test_001.txt").unlink()
    assert predict.main(["validate", str(output), "--dataset-path", str(dataset)]) == 1
    out = capsys.readouterr().out
    assert "problem: missing file test_001.txt for test trial test_001" in out and "INVALID" in out


def test_the_dataset_defaults_to_the_one_the_runs_name(both_runs, tmp_path, capsys):
    output = tmp_path / "submission"
    assert predict.main(["test", "--runs", str(both_runs[0]), "--output", str(output), "--quiet"]) == 0
    assert len(list(output.glob("*.txt"))) == 2


def test_runs_for_one_emotion_only_name_the_missing_one(dataset, tmp_path):
    run = save_run(tmp_path / "runs", tiny_config(dataset, modality=["mfcc"], emotion="valence"), 0)
    with pytest.raises(UserError, match="no run predicts arousal: add runs trained with --emotion arousal"):
        predict.main(["test", "--dataset-path", str(dataset), "--runs", str(run), "--output", str(tmp_path / "o")])


def test_database_whose_test_trials_are_not_in_the_dataset(dataset, both_runs, demo_database, tmp_path):
    with pytest.raises(UserError, match=r"test trial\(s\) of database .* are not in the processed dataset"):
        predict.main(["test", "--dataset-path", str(dataset), "--runs", str(both_runs[0]),
                      "--output", str(tmp_path / "o"), "--database", str(demo_database), "--quiet"])


def test_validate_needs_a_source_of_frame_counts(tmp_path):
    with pytest.raises(UserError, match="pass --database DB"):
        predict.main(["validate", str(tmp_path)])


def test_test_command_checks_the_videos_of_the_database(demo_database, tmp_path, capsys):
    expected = expected_from_database(demo_database)
    (trial, n_frames), = expected.items()
    data = make_processed_dataset(tmp_path / "data", n_train=5, n_val=2, n_test=1,
                                  lengths=(20, 14, 26, 18, 22, 16, 12, n_frames), modalities=("mfcc",))
    (data / "npy_data" / "test_000").rename(data / "npy_data" / trial)
    info = pickle.loads((data / "dataset_info.pkl").read_bytes())
    info["partition"]["Target_Set"] = {trial: n_frames}
    (data / "dataset_info.pkl").write_bytes(pickle.dumps(info))
    run = save_run(tmp_path / "runs", tiny_config(data, modality=["mfcc"], emotion="both"), 0)
    output = tmp_path / "submission"
    assert predict.main(["test", "--dataset-path", str(data), "--runs", str(run), "--output", str(output),
                         "--database", str(demo_database), "--quiet"]) == 0
    assert "is valid: 1 of 1" in capsys.readouterr().out
    assert len((output / f"{trial}.txt").read_text().splitlines()) == n_frames + 1
    info["partition"]["Target_Set"] = {trial: n_frames - 1}
    (data / "dataset_info.pkl").write_bytes(pickle.dumps(info))
    with pytest.raises(UserError, match=f"e.g. {trial}: {n_frames - 1} rows, video {n_frames} frames"):
        predict.main(["test", "--dataset-path", str(data), "--runs", str(run), "--output", str(output),
                      "--database", str(demo_database), "--quiet"])
