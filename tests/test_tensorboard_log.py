"""``--tensorboard``: the event files of a run hold exactly the scalars of its history.csv."""

from __future__ import annotations

import sys

import pytest
import torch

from base.data.processed import ProcessedDataset
from base.errors import UserError
from base.training import tensorboard_log
from base.training.cross_validation import fold_partitions
from base.training.run_folder import RunFolder, read_csv
from base.training.tensorboard_log import epoch_scalars, log_history, scalar_tag
from base.training.trainer import Trainer
from model import build_model
from tests.prediction_helpers import tiny_config
from tests.processed_helpers import make_processed_dataset

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def read_scalars(folder) -> dict[str, list[tuple[int, float]]]:
    """tag -> [(step, value)] of every event file in ``folder``, read with TensorBoard's own reader."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(folder))
    accumulator.Reload()
    return {tag: [(event.step, event.value) for event in accumulator.Scalars(tag)]
            for tag in accumulator.Tags()["scalars"]}


def test_tags_of_history_columns():
    assert scalar_tag("train_loss") == "train/loss"
    assert scalar_tag("arousal_rmse") == "validation/arousal_rmse"
    assert scalar_tag("n_released") == "backbone/released_groups"
    row = {"epoch": 3, "train_loss": 0.5, "valence_ccc": 0.25, "improved": 1, "lr": 1e-5, "note": "x"}
    assert epoch_scalars(row) == {"train/loss": 0.5, "validation/valence_ccc": 0.25, "optimizer/learning_rate": 1e-5}


def test_training_with_tensorboard_writes_the_history_as_events(tmp_path):
    dataset = ProcessedDataset(make_processed_dataset(tmp_path / "data", n_train=5, n_val=1, n_test=0, lengths=12,
                                                      modalities=("mfcc",)))
    config = tiny_config(dataset.root, modality=["mfcc"], emotion="both", num_epochs=3, early_stopping=0,
                         window_length=8, hop_length=4, quiet=True, tensorboard=True)
    train, validation = fold_partitions(dataset, config, 0, dataset.mean_std())
    run = RunFolder(tmp_path / "run").create()
    torch.manual_seed(0)
    Trainer(build_model(config), config, torch.device("cpu"), run, train, validation).fit()

    history = read_csv(run.history_csv)
    assert len(history) == 3
    scalars = read_scalars(run.path / "tensorboard")
    expected_tags = {"train/loss", "optimizer/learning_rate", "backbone/released_groups",
                     "validation/selection_score", "time/epoch_seconds"}
    expected_tags |= {f"validation/{e}_{m}" for e in ("valence", "arousal") for m in ("ccc", "pcc", "rmse")}
    assert expected_tags <= set(scalars)
    for tag, points in scalars.items():
        column = next(c for c in history[0] if scalar_tag(c) == tag)
        assert [step for step, _ in points] == [int(row["epoch"]) for row in history], tag
        # event scalars are float32
        assert [value for _, value in points] == pytest.approx([float(row[column]) for row in history], rel=1e-6), tag


def test_turning_it_on_at_resume_writes_the_earlier_epochs_too(tmp_path):
    history = [{"epoch": e, "train_loss": 1.0 - 0.1 * e, "lr": 1e-5} for e in range(3)]
    log_history(tmp_path, history[:2], enabled=False)
    assert not (tmp_path / "tensorboard").exists()
    log_history(tmp_path, history[:2])  # first call: both rows
    log_history(tmp_path, history)  # then the new row only
    assert len(tensorboard_log.event_files(tmp_path / "tensorboard")) == 2
    loss = read_scalars(tmp_path / "tensorboard")["train/loss"]
    assert loss == [(0, pytest.approx(1.0)), (1, pytest.approx(0.9)), (2, pytest.approx(0.8))]


def test_missing_tensorboard_is_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # import tensorboard now raises ImportError
    with pytest.raises(UserError, match="pip install tensorboard"):
        tensorboard_log.require_tensorboard()
