import numpy as np
import pytest
import torch

from base.data.dataset import WindowDataset, make_loader, shift_labels
from base.data.processed import ProcessedDataset
from base.errors import UserError
from tests.processed_helpers import make_processed_dataset

WINDOW, HOP = 30, 20


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = make_processed_dataset(
        tmp_path_factory.mktemp("ds") / "p", n_train=5, n_val=2, n_test=1, lengths=(70, 12, 30, 65, 41),
        modalities=("frame", "mfcc", "egemaps", "vggish", "flm"),
    )
    return ProcessedDataset(root)


def _window_dataset(dataset, trials=None, modalities=("frame", "mfcc", "vggish"), **kwargs):
    options = dict(emotion="valence", window_length=WINDOW, hop_length=HOP, mean_std=dataset.mean_std(),
                   fold=0, stats_partition="Train_Set")
    options.update(kwargs)
    trials = dataset.partition_trials("Train_Set") if trials is None else trials
    return WindowDataset(dataset, trials, modalities, **options)


def test_window_count_and_index(dataset):
    ds = _window_dataset(dataset)
    # lengths 70, 12, 30, 65, 41 -> starts [0,20,40], [0], [0], [0,20,35], [0,11]
    assert len(ds) == 3 + 1 + 1 + 3 + 2
    assert ds.window_trial.tolist() == [0, 0, 0, 1, 2, 3, 3, 3, 4, 4]
    assert ds.window_start.tolist() == [0, 20, 40, 0, 0, 0, 20, 35, 0, 11]
    assert ds.trial_starts(3).tolist() == [0, 20, 35]
    item = ds[7]
    assert (item["trial_index"], item["start"], item["length"]) == (3, 35, 30)


def test_item_shapes_and_types(dataset):
    ds = _window_dataset(dataset, modalities=("frame", "mfcc", "egemaps", "vggish", "flm"))
    item = ds[0]
    assert item["frame"].shape == (WINDOW, 48, 48, 3) and item["frame"].dtype == np.uint8
    assert item["mfcc"].shape == (WINDOW, 39) and item["mfcc"].dtype == np.float32
    assert item["egemaps"].shape == (WINDOW, 23)
    assert item["vggish"].shape == (WINDOW, 128)
    assert item["flm"].shape == (WINDOW, 136)
    assert item["label"].shape == (WINDOW, 2) and item["label"].dtype == np.float32
    assert item["mask"].dtype == bool and item["mask"].all()


def test_short_trial_is_padded_and_masked(dataset):
    ds = _window_dataset(dataset)
    item = ds[3]  # train_001: 12 frames
    assert item["length"] == 12
    assert item["mask"].tolist() == [True] * 12 + [False] * 18
    frames = dataset.load("train_001", "frame")
    np.testing.assert_array_equal(item["frame"][:12], frames)
    assert not item["frame"][12:].any()
    assert not item["mfcc"][12:].any() and not item["label"][12:].any()
    np.testing.assert_array_equal(item["label"][:12], dataset.load("train_001", "label"))


def test_zscore_uses_the_fold_and_partition_scalars(dataset):
    stats = dataset.mean_std()
    for fold, partition in ((0, "Train_Set"), (3, "Validation_Set")):
        ds = _window_dataset(dataset, fold=fold, stats_partition=partition)
        entry = stats["vggish"][fold][partition]
        raw = dataset.load("train_003", "vggish")[20:50]
        np.testing.assert_allclose(ds[6]["vggish"], (raw - entry["mean"]) / entry["std"], rtol=1e-5, atol=1e-5)
    assert stats["vggish"][0]["Train_Set"] != stats["vggish"][3]["Validation_Set"]


def test_no_statistics_leaves_features_unscaled(dataset):
    ds = _window_dataset(dataset, mean_std=None)
    np.testing.assert_array_equal(ds[0]["mfcc"], dataset.load("train_000", "mfcc")[:WINDOW])


def test_missing_statistics(dataset):
    stats = {k: v for k, v in dataset.mean_std().items() if k != "mfcc"}
    with pytest.raises(UserError, match=r"mean_std_dict\.pkl has no statistics for 'mfcc'"):
        _window_dataset(dataset, mean_std=stats)
    stats = {"mfcc": {0: {"Train_Set": {"mean": 0.0, "std": 1.0}}}, "vggish": {0: {}}}
    with pytest.raises(UserError, match=r"no statistics for 'vggish' fold 0 Train_Set"):
        _window_dataset(dataset, mean_std=stats)
    stats = {"mfcc": {0: {"Train_Set": {"mean": 0.0, "std": 0.0}}}}
    with pytest.raises(UserError, match=r"unusable std 0.0 for 'mfcc'"):
        _window_dataset(dataset, modalities=("mfcc",), mean_std=stats)


def test_time_delay_shifts_labels(dataset):
    labels = dataset.load("train_000", "label")
    ds = _window_dataset(dataset, time_delay=5)
    np.testing.assert_array_equal(ds[0]["label"], labels[5:35])
    last = ds[2]  # start 40, frames 40..69: labels 45..69 then the last repeated 5 times
    np.testing.assert_array_equal(last["label"][:25], labels[45:70])
    np.testing.assert_array_equal(last["label"][25:], np.repeat(labels[-1:], 5, axis=0))
    np.testing.assert_array_equal(ds.trial_labels(0), shift_labels(labels, 5))


def test_shift_labels_by_hand():
    labels = np.array([[1.0], [2.0], [3.0], [4.0]])
    assert shift_labels(labels, 0).ravel().tolist() == [1, 2, 3, 4]
    assert shift_labels(labels, 2).ravel().tolist() == [3, 4, 4, 4]
    assert shift_labels(labels, 9).ravel().tolist() == [4, 4, 4, 4]


def test_modalities_subset(dataset):
    item = _window_dataset(dataset, modalities=("mfcc",))[0]
    assert set(item) == {"mfcc", "label", "mask", "trial_index", "start", "length"}


def test_test_trials_without_labels(dataset):
    ds = _window_dataset(dataset, trials=dataset.partition_trials("Target_Set"), with_labels=False)
    assert not ds[0]["label"].any()
    with pytest.raises(UserError, match=r"trial 'test_000' has no label\.npy"):
        _window_dataset(dataset, trials=dataset.partition_trials("Target_Set"))[0]


def test_arrays_memory_mapped_and_opened_once(dataset, monkeypatch):
    calls = []
    original = np.load

    def counting_load(path, *args, **kwargs):
        calls.append((str(path), kwargs.get("mmap_mode")))
        return original(path, *args, **kwargs)

    monkeypatch.setattr(np, "load", counting_load)
    ds = _window_dataset(dataset)
    for _ in range(2):
        for i in range(len(ds)):
            ds[i]
    assert len(calls) == 5 * 4  # 5 trials x (frame, mfcc, vggish, label)
    assert len(set(calls)) == len(calls)
    assert {mode for path, mode in calls if not path.endswith("label.npy")} == {"r"}


def test_least_recently_used_trials_are_closed(dataset, monkeypatch):
    ds = _window_dataset(dataset, max_open_trials=2)
    for i in range(len(ds)):
        ds[i]
    assert list(ds._open) == [3, 4]


def test_dataset_pickles_without_open_arrays(dataset):
    import pickle

    ds = _window_dataset(dataset)
    ds[0]
    clone = pickle.loads(pickle.dumps(ds))
    assert not clone._open
    np.testing.assert_array_equal(clone[0]["mfcc"], ds[0]["mfcc"])


def test_length_mismatch_with_dataset_info(tmp_path):
    root = make_processed_dataset(tmp_path / "p", n_train=5, n_val=1, n_test=0, lengths=10, modalities=("mfcc",))
    np.save(root / "npy_data" / "train_002" / "mfcc.npy", np.zeros((9, 39), np.float32))
    ds = WindowDataset(ProcessedDataset(root), ["train_002"], ("mfcc",), "arousal", 8, 4, None, 0, "Train_Set")
    with pytest.raises(UserError, match=r"trial 'train_002' has 10 frames in dataset_info\.pkl but mfcc: 9"):
        ds[0]


def test_bad_arguments(dataset):
    with pytest.raises(UserError, match="emotion must be valence, arousal or both"):
        _window_dataset(dataset, emotion="joy")
    with pytest.raises(UserError, match="time_delay must be 0 or more"):
        _window_dataset(dataset, time_delay=-1)
    with pytest.raises(UserError, match="fold 7 is outside"):
        _window_dataset(dataset, fold=7)
    with pytest.raises(UserError, match="unknown modality or file 'sound'"):
        _window_dataset(dataset, modalities=("sound",))


def _order(loader):
    return [(int(t), int(s)) for batch in loader for t, s in zip(batch["trial_index"], batch["start"])]


def test_make_loader_order_depends_on_seed_and_epoch(dataset):
    ds = _window_dataset(dataset, modalities=("mfcc",))
    first = _order(make_loader(ds, batch_size=3, shuffle=True, seed=0, epoch=1))
    again = _order(make_loader(ds, batch_size=3, shuffle=True, seed=0, epoch=1))
    other = _order(make_loader(ds, batch_size=3, shuffle=True, seed=0, epoch=2))
    assert first == again
    assert first != other
    assert sorted(first) == sorted(other) == sorted(zip(ds.window_trial.tolist(), ds.window_start.tolist()))
    ordered = _order(make_loader(ds, batch_size=3, shuffle=False, seed=0, epoch=0))
    assert ordered == list(zip(ds.window_trial.tolist(), ds.window_start.tolist()))


def test_make_loader_batches(dataset):
    ds = _window_dataset(dataset)
    batch = next(iter(make_loader(ds, batch_size=4, shuffle=False)))
    assert batch["frame"].shape == (4, WINDOW, 48, 48, 3) and batch["frame"].dtype == torch.uint8
    assert batch["mfcc"].shape == (4, WINDOW, 39) and batch["mfcc"].dtype == torch.float32
    assert batch["label"].shape == (4, WINDOW, 2)
    assert batch["mask"].dtype == torch.bool
    assert batch["length"].tolist() == [30, 30, 30, 12]


def test_make_loader_with_worker(dataset):
    ds = _window_dataset(dataset, modalities=("mfcc",))
    single = [b["mfcc"] for b in make_loader(ds, batch_size=4, shuffle=False)]
    workers = [b["mfcc"] for b in make_loader(ds, batch_size=4, shuffle=False, num_workers=1)]
    for a, b in zip(single, workers, strict=True):
        torch.testing.assert_close(a, b)


def test_collate_windows_equals_default_collate(dataset):
    from torch.utils.data import default_collate

    from base.data.dataset import collate_windows

    ds = _window_dataset(dataset, modalities=("frame", "mfcc"))
    items = [ds[i] for i in (0, 3, 7)]
    ours, reference = collate_windows(items), default_collate(items)
    assert set(ours) == set(reference)
    for key in ours:
        assert ours[key].dtype == reference[key].dtype, key
        assert torch.equal(ours[key], reference[key]), key
