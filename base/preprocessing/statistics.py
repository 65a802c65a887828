"""Scalar mean and standard deviation of each feature per fold and partition (SPEC §2, §5; SPEC-ABAW5 §1).

The statistics are over every value of a feature (one scalar mean and one std, not one per column),
with the sample std: ``mean = sum(x) / N``, ``std = sqrt(sum((x - mean)^2) / (N - 1))``, as both
generations of the authors' code compute them (ABAW5's ``sum / (N + 1e-10)`` differs by a relative
1e-10 / N). The features of each feature set (``ZSCORED``): abaw2 mfcc, egemaps, vggish; abaw5
egemaps_functionals. ``logmel`` is not normalised by the authors (ToTensor only): it gets no entry.

One streaming pass: every trial file is read once (memory-mapped, in row blocks) into its count,
mean and sum of squared deviations in float64; the moments of a fold's partition are then merged
from those of its trials with Chan et al.'s pairwise formula, vectorised over the trials. Nothing
concatenates the dataset, and no sum of squares of raw values is formed (no cancellation).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
from tqdm import tqdm

from base.data.folds import N_FOLDS, trial_fold_partition
from base.data.processed import TEST_SETS, TRAIN_SET, VALIDATION_SET, ProcessedDataset
from configs import FeatureSet

TARGET_SET = TEST_SETS[0]  # the test trials' statistics, the same for every fold (the authors' name)

logger = logging.getLogger(__name__)

AUDIO_FEATURES = ("mfcc", "egemaps", "vggish")
ZSCORED = {FeatureSet.ABAW2: AUDIO_FEATURES, FeatureSet.ABAW5: ("egemaps_functionals",)}  # logmel: none
OPTIONAL_FEATURES = ("landmark", "au")  # OpenFace features, when the dataset has them
BLOCK_VALUES = 4_000_000  # values per block read from one file (bounds memory to ~32 MB)


def moments(array: np.ndarray, block_values: int = BLOCK_VALUES) -> tuple[int, float, float]:
    """Count, mean and sum of squared deviations (M2) of all values of ``array``, in float64.

    The array is read in blocks of rows (it may be memory-mapped) whose moments are merged.
    """
    n_total, mean_total, m2_total = 0, 0.0, 0.0
    n_rows = len(array)
    row_values = max(1, int(np.prod(array.shape[1:])))
    step = max(1, block_values // row_values)
    for start in range(0, n_rows, step):
        block = np.asarray(array[start:start + step], dtype=np.float64).ravel()
        n, mean = block.size, float(block.mean())
        m2 = float(np.square(block - mean).sum())
        n_total, mean_total, m2_total = merge_moments(
            np.array([n_total, n]), np.array([mean_total, mean]), np.array([m2_total, m2])
        )
    return n_total, mean_total, m2_total


def merge_moments(counts: np.ndarray, means: np.ndarray, m2s: np.ndarray) -> tuple[int, float, float]:
    """Merge per-part (count, mean, M2) into those of the union (Chan et al. 1979), vectorised.

    M2 of the union = sum of M2 of the parts + sum of n_i (mean_i - mean)^2.
    """
    counts = np.asarray(counts, dtype=np.float64)
    total = counts.sum()
    if total == 0:
        return 0, 0.0, 0.0
    mean = float(np.dot(counts, means) / total)
    m2 = float(np.sum(m2s) + np.dot(counts, np.square(np.asarray(means) - mean)))
    return int(total), mean, m2


def default_features(dataset: ProcessedDataset) -> tuple[str, ...]:
    """The z-scored features of the dataset's feature sets, plus landmark/au when the first training trial has them.

    The sets are ``feature_sets`` of ``dataset_info.pkl``; a dataset without that entry (written
    before it, or the authors') has the abaw2 set.
    """
    sets = dataset.info.get("feature_sets", [FeatureSet.ABAW2.value])
    zscored = tuple(name for feature_set in FeatureSet if feature_set.value in sets for name in ZSCORED[feature_set])
    first = dataset.partition_trials(TRAIN_SET)[:1]
    optional = tuple(f for f in OPTIONAL_FEATURES if first and dataset.has_file(first[0], f))
    return zscored + optional


def compute_mean_std(
    dataset: ProcessedDataset, features: Sequence[str] | None = None, quiet: bool = False
) -> dict[str, dict[int, dict[str, dict[str, float]]]]:
    """Mean and sample std (n - 1) of every value of each feature, per fold and partition.

    Args:
        dataset: the processed dataset.
        features: file stems (default: ``default_features(dataset)``).
        quiet: hide the progress bar.

    Returns:
        ``{feature: {fold 0..5: {'Train_Set' | 'Validation_Set' | 'Target_Set': {'mean': float, 'std': float}}}}``,
        the layout of the authors' ``mean_std_dict.pkl``: ``Target_Set`` holds the test trials'
        statistics, the same for every fold (left out, with a warning, when there is no test trial).
    """
    features = tuple(features) if features is not None else default_features(dataset)
    train = dataset.partition_trials(TRAIN_SET)
    validation = dataset.partition_trials(VALIDATION_SET)
    test = dataset.partition_trials(TARGET_SET)
    trials = train + validation + test
    index = {trial: i for i, trial in enumerate(trials)}
    folds = trial_fold_partition(train, validation)
    if test:
        for fold in folds.values():
            fold[TARGET_SET] = test
    else:
        logger.warning("%s lists no test trials: mean_std_dict.pkl gets no Target_Set entries", dataset.root)
    counts = np.zeros((len(features), len(trials)))
    means = np.zeros_like(counts)
    m2s = np.zeros_like(counts)
    with tqdm(total=len(features) * len(trials), desc="mean/std", unit="file", disable=quiet) as bar:
        for f, feature in enumerate(features):
            for t, trial in enumerate(trials):
                counts[f, t], means[f, t], m2s[f, t] = moments(dataset.load(trial, feature, mmap=True))
                bar.update()
    result: dict[str, dict[int, dict[str, dict[str, float]]]] = {}
    for f, feature in enumerate(features):
        result[feature] = {}
        for fold in range(N_FOLDS):
            result[feature][fold] = {}
            for partition in folds[fold]:
                rows = [index[trial] for trial in folds[fold][partition]]
                n, mean, m2 = merge_moments(counts[f, rows], means[f, rows], m2s[f, rows])
                std = float(np.sqrt(m2 / (n - 1))) if n > 1 else 0.0
                result[feature][fold][partition] = {"mean": mean, "std": std}
        logger.info("%s fold 0 Train_Set: mean %.4g, std %.4g", feature,
                    result[feature][0][TRAIN_SET]["mean"], result[feature][0][TRAIN_SET]["std"])
    return result


def with_target_set(
    mean_std: dict, dataset: ProcessedDataset, features: Sequence[str], quiet: bool = True
) -> dict:
    """``mean_std`` with ``Target_Set`` statistics of ``features`` computed from the dataset's test trials
    where the file has none (files written before it had them); the file itself is left as it is."""
    missing = [f for f in features if f in mean_std and not any(
        name in mean_std[f].get(0, {}) for name in TEST_SETS)]
    if not missing:
        return mean_std
    logger.info("mean_std_dict.pkl has no Target_Set statistics for %s: computing them from the test trials",
                ", ".join(missing))
    test_only = compute_test_statistics(dataset, missing, quiet)
    filled = {feature: {fold: dict(entries) for fold, entries in folds.items()} for feature, folds in mean_std.items()}
    for feature, entry in test_only.items():
        for fold in filled[feature]:
            filled[feature][fold][TARGET_SET] = entry
    return filled


def compute_test_statistics(
    dataset: ProcessedDataset, features: Sequence[str], quiet: bool = True
) -> dict[str, dict[str, float]]:
    """``{feature: {'mean', 'std'}}`` over every value of the test trials (sample std)."""
    test = dataset.partition_trials(TARGET_SET)
    result = {}
    for feature in tqdm(features, desc="Target_Set mean/std", disable=quiet):
        parts = np.array([moments(dataset.load(trial, feature, mmap=True)) for trial in test]).reshape(-1, 3)
        n, mean, m2 = merge_moments(parts[:, 0], parts[:, 1], parts[:, 2])
        result[feature] = {"mean": mean, "std": float(np.sqrt(m2 / (n - 1))) if n > 1 else 0.0}
    return result
