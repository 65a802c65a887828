import numpy as np
import pytest

import calculate_mean_and_std
from base.data.folds import fold_split
from base.data.processed import ProcessedDataset
from base.preprocessing.statistics import compute_mean_std, merge_moments, moments, with_target_set
from base.safe_pickle import load_pickle
from tests.processed_helpers import make_processed_dataset


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return make_processed_dataset(
        tmp_path_factory.mktemp("stats") / "p", n_train=7, n_val=3, n_test=1, lengths=(9, 14, 5, 21),
        modalities=("mfcc", "egemaps", "vggish", "flm", "fau"), with_mean_std=False,
    )


def _numpy_reference(dataset, feature, trials):
    values = np.concatenate([np.asarray(dataset.load(t, feature), np.float64).ravel() for t in trials])
    return values.mean(), values.std(ddof=1)


def test_matches_numpy_for_every_fold_and_partition(root):
    dataset = ProcessedDataset(root)
    stats = compute_mean_std(dataset, quiet=True)
    assert set(stats) == {"mfcc", "egemaps", "vggish", "landmark", "au"}
    train, validation = dataset.partition_trials("Train_Set"), dataset.partition_trials("Validation_Set")
    test = dataset.partition_trials("Target_Set")
    for fold in range(6):
        fold_train, fold_validation = fold_split(train, validation, fold)
        for feature in stats:
            assert set(stats[feature][fold]) == {"Train_Set", "Validation_Set", "Target_Set"}
            for partition, trials in (("Train_Set", fold_train), ("Validation_Set", fold_validation),
                                      ("Target_Set", test)):
                mean, std = _numpy_reference(dataset, feature, trials)
                entry = stats[feature][fold][partition]
                assert entry["mean"] == pytest.approx(mean, rel=1e-12, abs=1e-12)
                assert entry["std"] == pytest.approx(std, rel=1e-12)
                assert type(entry["mean"]) is float


def test_each_file_read_once(root, monkeypatch):
    dataset = ProcessedDataset(root)
    calls = []
    original = ProcessedDataset.load

    def counting_load(self, trial, modality, mmap=True):
        calls.append((trial, modality))
        return original(self, trial, modality, mmap=mmap)

    monkeypatch.setattr(ProcessedDataset, "load", counting_load)
    compute_mean_std(dataset, features=("mfcc", "vggish"), quiet=True)
    assert len(calls) == len(set(calls)) == 2 * 11  # 7 training, 3 validation and 1 test trial


def test_moments_in_blocks_equal_whole_array():
    rng = np.random.default_rng(1)
    array = (rng.normal(size=(101, 7)) * 3 + 1e6).astype(np.float32)  # large offset: naive sums lose digits
    n, mean, m2 = moments(array, block_values=50)
    reference = array.astype(np.float64).ravel()
    assert n == reference.size
    assert mean == pytest.approx(reference.mean(), rel=1e-14)
    assert m2 / (n - 1) == pytest.approx(reference.var(ddof=1), rel=1e-9)


def test_merge_moments_by_hand():
    # parts [1, 2] and [4]: union mean 7/3, M2 = 0.5 + 0 + 2*(1.5-7/3)^2 + 1*(4-7/3)^2 = 14/3
    n, mean, m2 = merge_moments(np.array([2, 1]), np.array([1.5, 4.0]), np.array([0.5, 0.0]))
    assert (n, mean, m2) == (3, pytest.approx(7 / 3), pytest.approx(14 / 3))
    assert merge_moments(np.zeros(2), np.zeros(2), np.zeros(2)) == (0, 0.0, 0.0)


def test_script_writes_mean_std_dict(root, tmp_path):
    assert calculate_mean_and_std.main(["--output", str(root), "--features", "mfcc", "--quiet"]) == 0
    written = load_pickle(root / "mean_std_dict.pkl")
    assert set(written) == {"mfcc"}
    assert set(written["mfcc"]) == set(range(6))
    assert set(written["mfcc"][0]) == {"Train_Set", "Validation_Set", "Target_Set"}
    assert all(written["mfcc"][fold]["Target_Set"] == written["mfcc"][0]["Target_Set"] for fold in range(6))
    assert ProcessedDataset(root).mean_std() == written


def test_target_set_filled_in_for_files_without_it(root):
    dataset = ProcessedDataset(root)
    full = compute_mean_std(dataset, features=("mfcc",), quiet=True)
    old = {"mfcc": {fold: {k: v for k, v in entries.items() if k != "Target_Set"} for fold, entries in full["mfcc"].items()}}
    filled = with_target_set(old, dataset, ("mfcc",))
    assert filled == full and "Target_Set" not in old["mfcc"][0]
    assert with_target_set(full, dataset, ("mfcc",)) is full


def test_script_reports_missing_dataset(tmp_path, capsys):
    from base.errors import run_cli

    code = run_cli(calculate_mean_and_std.main, ["--output", str(tmp_path / "missing"), "--quiet"])
    assert code == 2
    assert "does not exist" in capsys.readouterr().err
