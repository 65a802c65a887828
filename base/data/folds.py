"""6-fold cross-validation over the training and validation trials (SPEC §5).

The training trials, in the order ``dataset_info.pkl`` lists them, make chunks 0-4 (``n // 5`` trials each, the remainder in the last
chunk: 351 -> 70, 70, 70, 70, 71); the validation trials are chunk 5. Fold ``f`` rolls the chunk
list by ``f`` and validates on its last chunk, so fold 0 is the original partition and folds 1-5
validate on training chunks 4, 3, 2, 1, 0.
"""

from __future__ import annotations

from base.errors import UserError

N_FOLDS = 6
N_TRAIN_CHUNKS = N_FOLDS - 1
TRAIN_PARTITION = "Train_Set"
VALIDATION_PARTITION = "Validation_Set"


def chunk_sizes(n_train: int) -> list[int]:
    """Sizes of the 5 training chunks: ``n // 5`` for the first four, the rest in the last."""
    if n_train < N_TRAIN_CHUNKS:
        raise UserError(
            f"cross-validation needs at least {N_TRAIN_CHUNKS} training trials, got {n_train}"
        )
    size = n_train // N_TRAIN_CHUNKS
    return [size] * (N_TRAIN_CHUNKS - 1) + [n_train - size * (N_TRAIN_CHUNKS - 1)]


def chunks(train_trials: list[str], validation_trials: list[str]) -> list[list[str]]:
    """The 6 chunks: 5 of the training trials (in the order given) and the validation trials."""
    result: list[list[str]] = []
    start = 0
    for size in chunk_sizes(len(train_trials)):
        result.append(list(train_trials[start:start + size]))
        start += size
    result.append(list(validation_trials))
    return result


def check_fold(fold: int) -> int:
    """Return ``fold`` if it is a valid fold index, else raise ``UserError``."""
    if isinstance(fold, bool) or not isinstance(fold, int) or not 0 <= fold < N_FOLDS:
        raise UserError(f"fold {fold!r} is outside 0-{N_FOLDS - 1}")
    return fold


def fold_split(train_trials: list[str], validation_trials: list[str], fold: int) -> tuple[list[str], list[str]]:
    """Training and validation trials of ``fold``.

    Args:
        train_trials: the original training trials in their listed order (chunks 0-4 follow it).
        validation_trials: the original validation trials (chunk 5).
        fold: 0-5.

    Returns:
        ``(train, validation)``: train is the concatenation of the 5 other chunks in rolled order.
    """
    check_fold(fold)
    parts = chunks(train_trials, validation_trials)
    rolled = parts[-fold:] + parts[:-fold] if fold else parts  # numpy.roll(parts, fold) on a list
    train = [trial for chunk in rolled[:-1] for trial in chunk]
    return train, list(rolled[-1])


def trial_fold_partition(train_trials: list[str], validation_trials: list[str]) -> dict[int, dict[str, list[str]]]:
    """For every fold, its trials per partition: ``{fold: {'Train_Set': [...], 'Validation_Set': [...]}}``."""
    result = {}
    for fold in range(N_FOLDS):
        train, validation = fold_split(train_trials, validation_trials, fold)
        result[fold] = {TRAIN_PARTITION: train, VALIDATION_PARTITION: validation}
    return result
