"""Tiny processed datasets in the exact SPEC §2 layout, for tests of the training side.

``make_processed_dataset`` writes ``dataset_info.pkl`` (plain ``pickle``, as the authors' code does),
``npy_data/<trial>/<stem>.npy`` per modality and ``label.npy`` for labeled trials, and by default
``mean_std_dict.pkl`` computed the plain way (concatenate every trial of a fold's partition).
The labels are smooth curves in [-1, 1] that the features carry (mfcc column 0 and vggish column 0
follow valence, frame brightness and egemaps column 0 follow arousal), so a model can learn them.
"""

from __future__ import annotations

import pickle
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from base.data.folds import trial_fold_partition

DEFAULT_MODALITIES = ("frame", "mfcc", "egemaps", "vggish")
DEFAULT_LENGTHS = (250, 120, 430, 300, 180)
STEM_DIM = {"mfcc": 39, "egemaps": 23, "vggish": 128, "au": 17}
NAME_TO_STEM = {"flm": "landmark", "fau": "au"}  # modality name -> file stem where they differ
AUDIO_STEMS = ("mfcc", "egemaps", "vggish", "landmark", "au")


def trial_names(n_train: int, n_val: int, n_test: int) -> dict[str, list[str]]:
    """Sorted trial names per partition (``Train_Set``, ``Validation_Set``, ``Target_Set``)."""
    return {
        "Train_Set": [f"train_{i:03d}" for i in range(n_train)],
        "Validation_Set": [f"val_{i:03d}" for i in range(n_val)],
        "Target_Set": [f"test_{i:03d}" for i in range(n_test)],
    }


def _labels(n_frames: int, rng: np.random.Generator) -> np.ndarray:
    """(n, 2) float32 smooth valence/arousal curves in [-1, 1]."""
    t = np.arange(n_frames, dtype=np.float64)
    period = rng.uniform(60, 200, size=2)
    phase = rng.uniform(0, 2 * np.pi, size=2)
    amplitude = rng.uniform(0.4, 0.9, size=2)
    curves = amplitude * np.sin(2 * np.pi * t[:, None] / period + phase)  # (n, 2)
    return np.clip(curves, -1.0, 1.0).astype(np.float32)


def _features(stem: str, label: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    n_frames = len(label)
    valence, arousal = label[:, 0], label[:, 1]
    if stem == "frame":
        base = rng.integers(60, 160, size=(1, 48, 48, 3)).astype(np.float32)
        brightness = (arousal * 60.0)[:, None, None, None]
        noise = rng.normal(0, 8, size=(n_frames, 48, 48, 3)).astype(np.float32)
        return np.clip(base + brightness + noise, 0, 255).astype(np.uint8)
    if stem == "landmark":
        return rng.normal(0, 1, size=(n_frames, 68, 2)).astype(np.float32)
    dim = STEM_DIM[stem]
    values = rng.normal(0, 1, size=(n_frames, dim))
    offset = {"mfcc": 5.0, "egemaps": -2.0, "vggish": 0.5, "au": 1.0}[stem]
    values[:, 0] += 3.0 * (arousal if stem in ("egemaps", "au") else valence)
    return (values + offset).astype(np.float32)


def _stem(modality: str) -> str:
    return NAME_TO_STEM.get(modality, modality)


def reference_mean_std(root: Path, partitions: dict[str, list[str]], stems: Sequence[str]) -> dict:
    """Mean/std per feature, fold and partition the plain way (concatenate all values; ddof=1)."""
    folds = trial_fold_partition(partitions["Train_Set"], partitions["Validation_Set"])
    if partitions.get("Target_Set"):  # the test trials' statistics, the same for every fold
        for split in folds.values():
            split["Target_Set"] = partitions["Target_Set"]
    result: dict = {}
    for stem in stems:
        result[stem] = {}
        for fold, split in folds.items():
            result[stem][fold] = {}
            for partition, trials in split.items():
                values = np.concatenate(
                    [np.load(root / "npy_data" / trial / f"{stem}.npy").astype(np.float64).ravel()
                     for trial in trials]
                )
                result[stem][fold][partition] = {"mean": float(values.mean()), "std": float(values.std(ddof=1))}
    return result


def make_processed_dataset(
    root: str | Path,
    n_train: int = 5,
    n_val: int = 2,
    n_test: int = 2,
    lengths: int | Sequence[int] | None = None,
    modalities: Sequence[str] = DEFAULT_MODALITIES,
    seed: int = 0,
    test_partition: str = "Target_Set",
    with_mean_std: bool = True,
) -> Path:
    """Write a tiny processed dataset (SPEC §2) under ``root`` and return ``root`` as a Path.

    Args:
        root: folder to create (the dataset root: holds ``dataset_info.pkl`` and ``npy_data/``).
        n_train, n_val, n_test: trials per partition; trials are named ``train_000``, ``val_000``,
            ``test_000`` ... so that sorted order is creation order. 6-fold statistics need
            ``n_train >= 5``.
        lengths: frames per trial: one int for all, or a sequence cycled over the trials in the
            order train, validation, test. Default cycles ``DEFAULT_LENGTHS``.
        modalities: modality names (``frame``, ``mfcc``, ``egemaps``, ``vggish``, ``flm``, ``fau``)
            or file stems; ``label.npy`` is always written for train/validation trials.
        seed: seed of the random content.
        test_partition: key of the test partition in ``dataset_info.pkl`` (``Target_Set`` as this
            project writes it, or ``Test_Set``).
        with_mean_std: also write ``mean_std_dict.pkl`` for the non-frame features (needs n_train >= 5).
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    names = trial_names(n_train, n_val, n_test)
    if lengths is None:
        lengths = DEFAULT_LENGTHS
    if isinstance(lengths, int):
        lengths = (lengths,)
    stems = [_stem(m) for m in modalities]
    partition_info: dict[str, dict[str, int]] = {}
    index = 0
    for partition, trials in names.items():
        key = test_partition if partition == "Target_Set" else partition
        partition_info[key] = {}
        for trial in trials:
            n_frames = int(lengths[index % len(lengths)])
            index += 1
            partition_info[key][trial] = n_frames
            trial_dir = root / "npy_data" / trial
            trial_dir.mkdir(parents=True, exist_ok=True)
            label = _labels(n_frames, rng)
            for stem in stems:
                np.save(trial_dir / f"{stem}.npy", _features(stem, label, rng))
            if partition != "Target_Set":
                np.save(trial_dir / "label.npy", label)
    info = {"partition": partition_info}
    with open(root / "dataset_info.pkl", "wb") as handle:
        pickle.dump(info, handle, protocol=4)
    feature_stems = [s for s in stems if s in AUDIO_STEMS]
    if with_mean_std and feature_stems and n_train >= 5:
        mean_std = reference_mean_std(root, names, feature_stems)
        with open(root / "mean_std_dict.pkl", "wb") as handle:
            pickle.dump(mean_std, handle, protocol=4)
    return root
