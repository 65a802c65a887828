import os
import pickle
import shutil

import numpy as np
import pytest

from base.data.processed import ProcessedDataset, file_stem
from base.errors import UserError
from tests.processed_helpers import make_processed_dataset


@pytest.fixture
def root(tmp_path):
    return make_processed_dataset(tmp_path / "processed", n_train=5, n_val=2, n_test=2, lengths=(30, 12, 25))


def test_opens_and_lists_partitions(root):
    ds = ProcessedDataset(root)
    assert ds.root == root
    assert ds.test_partition == "Target_Set"
    assert ds.partition_trials("Train_Set") == [f"train_{i:03d}" for i in range(5)]
    assert ds.partition_trials("Validation_Set") == ["val_000", "val_001"]
    assert ds.partition_trials("Target_Set") == ["test_000", "test_001"]
    assert ds.partition_trials("Test_Set") == ["test_000", "test_001"]
    assert ds.n_frames("train_001") == 12
    assert ds.trial_dir("val_000") == root / "npy_data" / "val_000"
    assert ds.is_labeled("val_000") and not ds.is_labeled("test_000")
    assert "Train_Set: 5" in repr(ds)


def test_authors_layout_with_test_set_name(tmp_path):
    root = make_processed_dataset(tmp_path / "p", n_train=5, n_val=1, n_test=1, lengths=10, test_partition="Test_Set")
    ds = ProcessedDataset(root)
    assert ds.test_partition == "Test_Set"
    assert ds.partition_trials("Target_Set") == ["test_000"]
    assert ds.partition_names == ("Train_Set", "Validation_Set", "Test_Set")
    assert ds.check_trial("test_000", ["frame", "mfcc"]) == 10


def test_authors_numpy_scalars_in_info(tmp_path):
    root = make_processed_dataset(tmp_path / "p", n_train=5, n_val=1, n_test=1, lengths=10)
    info = {"partition": {"Train_Set": {f"train_{i:03d}": np.int64(10) for i in range(5)},
                          "Validation_Set": {"val_000": np.int64(10)}, "Target_Set": {"test_000": np.int64(10)}}}
    (root / "dataset_info.pkl").write_bytes(pickle.dumps(info, protocol=2))
    assert ProcessedDataset(root).n_frames("train_000") == 10


def test_load_shapes_and_mmap(root):
    ds = ProcessedDataset(root)
    frames = ds.load("train_000", "frame")
    assert isinstance(frames, np.memmap)
    assert frames.shape == (30, 48, 48, 3) and frames.dtype == np.uint8
    assert ds.load("train_000", "mfcc", mmap=False).shape == (30, 39)
    assert not isinstance(ds.load("train_000", "mfcc", mmap=False), np.memmap)
    assert ds.load("train_000", "egemaps").shape == (30, 23)
    assert ds.load("train_000", "vggish").shape == (30, 128)
    label = ds.load("train_000", "label")
    assert label.shape == (30, 2) and label.dtype == np.float32


def test_landmarks_are_flattened(tmp_path):
    root = make_processed_dataset(tmp_path / "p", n_train=5, n_val=1, n_test=1, lengths=10, modalities=("flm", "fau"))
    ds = ProcessedDataset(root)
    assert ds.load("train_000", "flm").shape == (10, 136)
    assert ds.load("train_000", "landmark").shape == (10, 136)
    assert ds.load("train_000", "fau").shape == (10, 17)
    raw = np.load(root / "npy_data" / "train_000" / "landmark.npy")
    np.testing.assert_array_equal(ds.load("train_000", "flm")[3], raw[3].ravel())


def test_missing_root(tmp_path):
    with pytest.raises(UserError, match=r"the processed dataset folder .*nowhere does not exist"):
        ProcessedDataset(tmp_path / "nowhere")


def test_missing_dataset_info(root):
    (root / "dataset_info.pkl").unlink()
    with pytest.raises(UserError, match=r"has no dataset_info\.pkl; it is not a processed dataset"):
        ProcessedDataset(root)


def test_missing_npy_data(root):
    shutil.rmtree(root / "npy_data")
    with pytest.raises(UserError, match=r"has no npy_data/ folder"):
        ProcessedDataset(root)


def test_info_without_partition(root):
    (root / "dataset_info.pkl").write_bytes(pickle.dumps({"trials": []}))
    with pytest.raises(UserError, match=r"has no 'partition' table"):
        ProcessedDataset(root)
    (root / "dataset_info.pkl").write_bytes(pickle.dumps({"partition": {"Train_Set": {}}}))
    with pytest.raises(UserError, match=r"has no 'Validation_Set' partition"):
        ProcessedDataset(root)


class _Exploit:
    def __reduce__(self):
        return (os.system, ("true",))


def test_info_with_forbidden_class(root):
    (root / "dataset_info.pkl").write_bytes(pickle.dumps({"partition": _Exploit()}))
    with pytest.raises(UserError, match=r"refusing to load .*dataset_info\.pkl: the class posix\.system is not allowed"):
        ProcessedDataset(root)


def test_missing_modality_file(root):
    (root / "npy_data" / "train_002" / "vggish.npy").unlink()
    ds = ProcessedDataset(root)
    with pytest.raises(UserError, match=r"trial 'train_002' has no vggish\.npy"):
        ds.load("train_002", "vggish")
    with pytest.raises(UserError, match=r"trial 'train_002' has no vggish\.npy"):
        ds.check_trial("train_002", ["frame", "vggish"])


def test_corrupt_npy(root):
    (root / "npy_data" / "train_000" / "mfcc.npy").write_bytes(b"not numpy")
    with pytest.raises(UserError, match=r"mfcc\.npy is not a readable npy file"):
        ProcessedDataset(root).load("train_000", "mfcc")


def test_arrays_of_different_lengths(root):
    np.save(root / "npy_data" / "train_001" / "mfcc.npy", np.zeros((11, 39), np.float32))
    ds = ProcessedDataset(root)
    with pytest.raises(UserError, match=r"trial 'train_001' has arrays of different lengths \(frame: 12, mfcc: 11"):
        ds.check_trial("train_001", ["frame", "mfcc"])


def test_length_differs_from_dataset_info(root):
    for stem, shape in (("frame", (13, 48, 48, 3)), ("mfcc", (13, 39)), ("label", (13, 2))):
        np.save(root / "npy_data" / "train_001" / f"{stem}.npy", np.zeros(shape, np.float32))
    with pytest.raises(UserError, match=r"dataset_info\.pkl: 12"):
        ProcessedDataset(root).check_trial("train_001", ["frame", "mfcc"])


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_features(root, bad):
    values = np.load(root / "npy_data" / "val_000" / "egemaps.npy")
    values[3, 5] = bad
    np.save(root / "npy_data" / "val_000" / "egemaps.npy", values)
    with pytest.raises(UserError, match=r"trial 'val_000': egemaps\.npy contains NaN or infinite values"):
        ProcessedDataset(root).check_trial("val_000", ["mfcc", "egemaps"])


def test_label_out_of_range(root):
    np.save(root / "npy_data" / "train_000" / "label.npy", np.full((30, 2), -5.0, np.float32))
    with pytest.raises(UserError, match=r"label\.npy has values outside \[-1, 1\]"):
        ProcessedDataset(root).check_trial("train_000", ["mfcc"])


def test_check_trial_returns_length_and_skips_label_for_test(root):
    ds = ProcessedDataset(root)
    assert ds.check_trial("train_000", ["frame", "mfcc", "egemaps", "vggish"]) == 30
    assert ds.check_trial("test_000", ["frame", "vggish"]) == ds.n_frames("test_000")


def test_unknown_names(root):
    ds = ProcessedDataset(root)
    with pytest.raises(UserError, match=r"unknown modality or file 'audio'"):
        ds.load("train_000", "audio")
    with pytest.raises(UserError, match=r"unknown partition 'Dev_Set'"):
        ds.partition_trials("Dev_Set")
    with pytest.raises(UserError, match=r"trial 'ghost' is not listed"):
        ds.n_frames("ghost")


def test_file_stem():
    assert file_stem("flm") == "landmark"
    assert file_stem("fau") == "au"
    assert file_stem("au") == "au"
    assert file_stem("label") == "label"


def test_mean_std(root, tmp_path):
    ds = ProcessedDataset(root)
    stats = ds.mean_std()
    assert set(stats) == {"mfcc", "egemaps", "vggish"}
    (root / "mean_std_dict.pkl").unlink()
    with pytest.raises(UserError, match=r"has no mean_std_dict\.pkl; run calculate_mean_and_std\.py --output"):
        ds.mean_std()


def test_labels_named_as_in_the_authors_readme_are_read(tmp_path):
    """The authors' README lists ``continuous_label.npy``: a dataset written that way trains too."""
    import shutil

    import numpy as np

    from base.data.processed import ProcessedDataset
    from tests.processed_helpers import make_processed_dataset

    root = make_processed_dataset(tmp_path / "data", n_train=5, n_val=2, n_test=1, modalities=("mfcc",))
    dataset = ProcessedDataset(root)
    trial = dataset.partition_trials("Train_Set")[0]
    expected = np.array(dataset.load(trial, "label"))
    shutil.move(dataset.trial_dir(trial) / "label.npy", dataset.trial_dir(trial) / "continuous_label.npy")
    np.testing.assert_array_equal(dataset.load(trial, "label"), expected)
    assert dataset.has_file(trial, "label")
    assert dataset.check_trial(trial, ("mfcc",)) == len(expected)
