"""The authors' published dataset as it is (SPEC §2): int16 frame.npy where a jpg was missing, the test
partition called ``Test_Set``, labels in ``continuous_label.npy``, and trials listed in a non-sorted
order in dataset_info.pkl, whose order cuts the folds (their ``generate_partition_dict_for_cross_validation``)."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest

import calculate_mean_and_std
import main
from base.data.dataset import WindowDataset
from base.data.folds import fold_split
from base.data.processed import ProcessedDataset
from tests.processed_helpers import make_processed_dataset

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def authors_layout(root: Path) -> list[str]:
    """Turn a processed dataset into the authors' published form; returns the listed training order."""
    info_path = root / "dataset_info.pkl"
    info = pickle.loads(info_path.read_bytes())
    train = dict(info["partition"]["Train_Set"])
    listed = [sorted(train)[i] for i in (3, 0, 9, 5, 1, 7, 2, 8, 4, 6)]  # not sorted
    info["partition"]["Train_Set"] = {trial: train[trial] for trial in listed}
    info_path.write_bytes(pickle.dumps(info, protocol=4))
    for folder in sorted((root / "npy_data").iterdir()):
        frames = np.load(folder / "frame.npy")
        frames[1] = 0  # a missing jpg: np.stack of uint8 frames and their int8 black frame gives int16
        np.save(folder / "frame.npy", np.stack([f.astype(np.int8) if not f.any() else f for f in frames]))
        if (folder / "label.npy").is_file():
            (folder / "label.npy").rename(folder / "continuous_label.npy")
    return listed


@pytest.fixture(scope="module")
def authors_dataset(tmp_path_factory) -> tuple[Path, list[str]]:
    root = make_processed_dataset(tmp_path_factory.mktemp("authors") / "data", n_train=10, n_val=2, n_test=2,
                                  lengths=(7, 9, 6), modalities=("frame", "mfcc", "vggish"),
                                  test_partition="Test_Set", with_mean_std=False)
    listed = authors_layout(root)
    assert calculate_mean_and_std.main(["--output", str(root), "--features", "mfcc", "vggish", "--quiet"]) == 0
    return root, listed


def test_the_files_are_in_the_authors_form(authors_dataset):
    root, listed = authors_dataset
    dataset = ProcessedDataset(root)
    assert np.load(root / "npy_data" / listed[0] / "frame.npy").dtype == np.int16
    assert dataset.partition_trials("Train_Set") == listed
    assert dataset.test_partition == "Test_Set" and len(dataset.partition_trials("Target_Set")) == 2
    windows = WindowDataset(dataset, listed[:1], ("frame",), "valence", 4, 4, None, 0, "Train_Set")
    stored = np.load(root / "npy_data" / listed[0] / "frame.npy")
    assert windows[0]["frame"].dtype == np.uint8 and np.array_equal(windows[0]["frame"], stored[:4])
    assert np.array_equal(windows.trial_labels(0), np.load(root / "npy_data" / listed[0] / "continuous_label.npy"))


def test_it_trains_as_it_is_and_its_folds_follow_the_listed_order(authors_dataset, tmp_path, capsys):
    root, listed = authors_dataset
    save = tmp_path / "runs"
    args = ["--dataset-path", str(root), "--save-path", str(save), "--modality", "frame", "mfcc", "vggish",
            "--random-backbone", "--fold", "1", "--window-length", "4", "--hop-length", "4", "--batch-size", "4",
            "--num-epochs", "1", "--quiet"]
    assert main.main(args) == 0
    (run,) = [p for p in save.iterdir() if p.is_dir()]
    validation = sorted(json.loads((run / "metrics.json").read_text())["per_trial"])
    validation_trials = ProcessedDataset(root).partition_trials("Validation_Set")
    expected = fold_split(listed, validation_trials, 1)[1]  # fold 1 validates on the 5th chunk of the listed order
    assert validation == sorted(expected) == sorted(listed[8:])
    assert validation != sorted(fold_split(sorted(listed), validation_trials, 1)[1])  # sorted order: other trials
    assert "validation CCC" in capsys.readouterr().out
