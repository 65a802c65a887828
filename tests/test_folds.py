import pytest

from base.data.folds import N_FOLDS, chunk_sizes, fold_split, trial_fold_partition
from base.errors import UserError

TRAIN = [f"t{i:03d}" for i in range(351)]
VALIDATION = [f"v{i:02d}" for i in range(71)]


def _train_chunk(k):
    sizes = [70, 70, 70, 70, 71]
    start = sum(sizes[:k])
    return TRAIN[start:start + sizes[k]]


def test_chunk_sizes():
    assert chunk_sizes(351) == [70, 70, 70, 70, 71]
    assert chunk_sizes(10) == [2, 2, 2, 2, 2]
    assert chunk_sizes(7) == [1, 1, 1, 1, 3]
    with pytest.raises(UserError, match="at least 5 training trials, got 4"):
        chunk_sizes(4)


def test_fold_0_is_the_original_partition():
    train, validation = fold_split(TRAIN, VALIDATION, 0)
    assert train == TRAIN
    assert validation == VALIDATION


@pytest.mark.parametrize("fold, chunk", [(1, 4), (2, 3), (3, 2), (4, 1), (5, 0)])
def test_folds_validate_on_train_chunks(fold, chunk):
    train, validation = fold_split(TRAIN, VALIDATION, fold)
    assert validation == _train_chunk(chunk)
    assert len(validation) == (71 if chunk == 4 else 70)


@pytest.mark.parametrize("fold", range(N_FOLDS))
def test_partitions_are_disjoint_and_cover_everything(fold):
    train, validation = fold_split(TRAIN, VALIDATION, fold)
    assert not set(train) & set(validation)
    assert sorted(train + validation) == sorted(TRAIN + VALIDATION)
    assert len(train) + len(validation) == 422


def test_fold_1_train_order_follows_the_rolled_chunks():
    train, _ = fold_split(TRAIN, VALIDATION, 1)
    assert train[:71] == VALIDATION
    assert train[71:] == TRAIN[:280]


def test_every_trial_validated_exactly_once_across_folds():
    validated = [t for f in range(N_FOLDS) for t in fold_split(TRAIN, VALIDATION, f)[1]]
    assert sorted(validated) == sorted(TRAIN + VALIDATION)


@pytest.mark.parametrize("fold", [-1, 6, 1.0, True])
def test_bad_fold(fold):
    with pytest.raises(UserError, match="is outside 0-5"):
        fold_split(TRAIN, VALIDATION, fold)


def test_trial_fold_partition():
    table = trial_fold_partition(TRAIN, VALIDATION)
    assert sorted(table) == list(range(6))
    assert table[5]["Validation_Set"] == _train_chunk(0)
    assert table[0]["Train_Set"] == TRAIN
