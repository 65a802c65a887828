"""The training loop's recipe (SPEC §5) and its helpers: loss weighting, gradual release, LR plateau,
early stopping, checkpoints, run folders, devices, and the per-partition z-scoring of a fold."""

from __future__ import annotations

import logging
import math
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from base.data.processed import ProcessedDataset
from base.errors import UserError
from base.training.checkpointing import (
    atomic_torch_save,
    capture_rng_state,
    check_resumable,
    config_differences,
    load_torch_file,
    reseed,
    restore_rng_state,
)
from base.training.cross_validation import FoldResult, ccc_line, fold_partitions, format_summary, summary_rows
from base.training.devices import gpu_index_to_device, resolve_device
from base.training.metrics import ccc_loss
from base.training.run_folder import RunFolder, json_safe, read_csv, run_name, write_csv
from base.training.trainer import (
    Evaluation,
    Trainer,
    batch_inputs,
    clone_state,
    loss_weights,
    output_emotions,
    selection_score,
    trained_emotions,
    weighted_ccc_loss,
)
from configs import Config, apply_overrides, to_dict
from tests.processed_helpers import make_processed_dataset

# tiny models run fastest on one thread (and do not suffer from a busy machine)
pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ----------------------------------------------------------------------------- pure helpers


def model_config(**overrides):
    return apply_overrides(Config(), overrides).model


@pytest.mark.parametrize(
    ("emotion", "head", "outputs", "trained", "weights"),
    [
        ("valence", "sh", ("valence",), ("valence",), (1.0,)),
        ("arousal", "sh", ("arousal",), ("arousal",), (1.0,)),
        ("valence", "mh", ("valence", "arousal"), ("valence",), (10.0, 1.0)),
        ("arousal", "mh", ("valence", "arousal"), ("arousal",), (1.0, 10.0)),
        ("both", "sh", ("valence", "arousal"), ("valence", "arousal"), (1.0, 1.0)),
        ("both", "mh", ("valence", "arousal"), ("valence", "arousal"), (1.0, 1.0)),
    ],
)
def test_output_columns_and_loss_weights(emotion, head, outputs, trained, weights):
    config = model_config(emotion=emotion, head=head)
    assert output_emotions(config) == outputs
    assert trained_emotions(config) == trained
    assert loss_weights(config, 10.0) == weights


def test_weighted_loss_is_the_weighted_mean_of_per_emotion_ccc_losses():
    generator = torch.Generator().manual_seed(0)
    outputs = torch.randn(3, 6, 2, generator=generator)  # (B, T, C)
    labels = torch.randn(3, 6, 2, generator=generator)  # (B, T, 2): valence, arousal
    mask = torch.ones(3, 6, dtype=torch.bool)
    mask[2, 4:] = False
    loss = weighted_ccc_loss(outputs, labels, mask, ("valence", "arousal"), (10.0, 1.0))
    valence = ccc_loss(outputs[..., 0], labels[..., 0], mask)
    arousal = ccc_loss(outputs[..., 1], labels[..., 1], mask)
    assert loss.item() == pytest.approx(((10 * valence + arousal) / 2).item(), rel=1e-6)


def test_single_arousal_output_is_compared_with_the_arousal_label_column():
    labels = torch.stack([torch.linspace(-1, 1, 8), torch.linspace(1, -1, 8)], dim=-1)[None]  # (1, 8, 2)
    mask = torch.ones(1, 8, dtype=torch.bool)
    perfect = labels[..., 1:2]  # predicts arousal exactly
    assert weighted_ccc_loss(perfect, labels, mask, ("arousal",), (1.0,)).item() == pytest.approx(0.0, abs=1e-6)
    assert weighted_ccc_loss(perfect, labels, mask, ("valence",), (1.0,)).item() == pytest.approx(2.0, abs=1e-6)


def test_the_model_gets_a_mask_only_for_batches_with_padding():
    batch = {"mfcc": torch.zeros(2, 3, 39), "mask": torch.ones(2, 3, dtype=torch.bool)}
    assert set(batch_inputs(batch, ("mfcc",), torch.device("cpu"), 40, train=False)) == {"mfcc"}
    batch["mask"][1, 2] = False  # the end of a short window
    inputs = batch_inputs(batch, ("mfcc",), torch.device("cpu"), 40, train=False)
    assert torch.equal(inputs["mask"], batch["mask"])


def test_selection_score_is_the_mean_ccc_of_the_trained_emotions():
    metrics = {"valence": {"ccc": 0.2}, "arousal": {"ccc": 0.6}}
    assert selection_score(metrics, ("valence", "arousal")) == pytest.approx(0.4)
    assert selection_score(metrics, ("arousal",)) == pytest.approx(0.6)


# ----------------------------------------------------------------------------- the recipe, scripted


class StubModel(nn.Module):
    """A linear model over mfcc with three frozen 'backbone' groups (the model API of the trainer)."""

    release_group_names = ("group1", "group2", "group3")

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(39, 1)
        self.groups = nn.ModuleList(nn.Linear(1, 1, bias=False) for _ in range(3))
        self.groups.requires_grad_(False)
        self.release_calls: list[int] = []
        self.n_released = 0

    def release_groups(self, n_released: int) -> None:
        self.release_calls.append(n_released)
        for index, group in enumerate(self.groups):
            group.requires_grad_(index < n_released)
        self.n_released = n_released

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def forward(self, inputs):
        out = self.head(inputs["mfcc"])  # (B, T, 1)
        for group in self.groups:
            out = out + 0.0 * group.weight.sum()
        return out


class ScriptedTrainer(Trainer):
    """Training moves every trainable weight by +1; validation returns scripted CCCs per epoch."""

    def __init__(self, *args, scores, **kwargs):
        super().__init__(*args, **kwargs)
        self.scores = list(scores)
        self.calls: list[dict] = []

    def train_epoch(self, epoch):
        self.calls.append({
            "epoch": epoch,
            "lr": self.learning_rate,
            "n_optimized": sum(len(group["params"]) for group in self.optimizer.param_groups),
            "state": clone_state(self.model),
        })
        with torch.no_grad():
            for parameter in self.model.trainable_parameters():
                parameter.add_(1.0)
        return 0.5

    def evaluate(self, partition):
        score = self.scores[min(self.state.next_epoch, len(self.scores) - 1)]
        return Evaluation({e: {"ccc": score, "pcc": score, "rmse": 1.0} for e in self.emotions}, {}, {})


@pytest.fixture(scope="module")
def mfcc_dataset(tmp_path_factory) -> ProcessedDataset:
    root = make_processed_dataset(tmp_path_factory.mktemp("mfcc") / "data", n_train=5, n_val=1, n_test=0,
                                  lengths=12, modalities=("mfcc",))
    return ProcessedDataset(root)


def scripted_trainer(dataset, tmp_path, scores, **train) -> ScriptedTrainer:
    settings = {"learning_rate": 1e-2, "min_learning_rate": 5e-4, "factor": 0.1, "patience": 0,
                "early_stopping": 100, "num_epochs": 20, "load_best_at_each_epoch": False,
                "window_length": 8, "hop_length": 4, "batch_size": 4, "quiet": True, **train}
    config = apply_overrides(Config(), {"model": {"modality": ["mfcc"]}, "train": settings})
    mean_std = dataset.mean_std()
    train_part, validation_part = fold_partitions(dataset, config, 0, mean_std)
    run = RunFolder(tmp_path / "run").create()
    torch.manual_seed(0)  # the same initial weights in every trainer
    return ScriptedTrainer(StubModel(), config, torch.device("cpu"), run, train_part, validation_part,
                           scores=scores)


def test_gradual_release_order_optimizer_recreation_and_stop_when_no_group_is_left(mfcc_dataset, tmp_path):
    # epoch 0 improves, then nothing does: patience 0 divides lr by 10 each epoch; below 5e-4 releases
    trainer = scripted_trainer(mfcc_dataset, tmp_path, scores=[0.5, 0.1])
    state = trainer.fit()
    history = state.history
    assert trainer.model.release_calls == [1, 2, 3]
    assert [row["n_released"] for row in history] == [1, 1, 1, 2, 2, 2, 3, 3, 3]
    assert [row["lr"] for row in history] == pytest.approx([1e-2, 1e-2, 1e-3, 1e-2, 1e-2, 1e-3, 1e-2, 1e-2, 1e-3])
    # the optimizer is re-created over the newly trainable parameters: head (2) + released groups
    assert [call["n_optimized"] for call in trainer.calls] == [3, 3, 3, 4, 4, 4, 5, 5, 5]
    assert state.finished and "no backbone group left" in state.stop_reason
    assert state.best_epoch == 0
    # releasing reloads the best weights (epoch 0's); other epochs continue from the moved weights
    for epoch in (3, 6):
        for key, value in trainer.calls[epoch]["state"].items():
            assert torch.equal(value, trainer.best_state[key]), (epoch, key)
    assert not torch.equal(trainer.calls[2]["state"]["head.bias"], trainer.best_state["head.bias"])


def test_load_best_at_each_epoch_restarts_every_epoch_from_the_best_weights(mfcc_dataset, tmp_path):
    trainer = scripted_trainer(mfcc_dataset, tmp_path, scores=[0.5, 0.1], num_epochs=4, patience=10,
                               load_best_at_each_epoch=True)
    trainer.fit()
    for call in trainer.calls[1:]:
        for key, value in call["state"].items():
            assert torch.equal(value, trainer.best_state[key]), key


def test_early_stopping_after_the_given_number_of_epochs_without_improvement(mfcc_dataset, tmp_path):
    trainer = scripted_trainer(mfcc_dataset, tmp_path, scores=[0.1, 0.5, 0.2], early_stopping=3, patience=10)
    state = trainer.fit()
    assert len(state.history) == 5  # best at epoch 1, then epochs 2, 3, 4 without improvement
    assert state.best_epoch == 1 and state.best_score == pytest.approx(0.5)
    assert [row["improved"] for row in state.history] == [1, 1, 0, 0, 0]
    assert "early stopping" in state.stop_reason


@pytest.mark.parametrize(("recipe", "n_epochs"), [("corrected", 5), ("authors", 6)])
def test_min_num_epochs_delays_the_early_stopping_count(mfcc_dataset, tmp_path, recipe, n_epochs):
    trainer = scripted_trainer(mfcc_dataset, tmp_path, scores=[0.5, 0.1], early_stopping=2, patience=10,
                               min_num_epochs=3, recipe=recipe)
    state = trainer.fit()
    # corrected: epochs 1 and 2 are not counted, 3 and 4 are; authors (epoch > 3): 4 and 5 are
    assert len(state.history) == n_epochs


def test_lr_plateau_follows_the_validation_ccc(mfcc_dataset, tmp_path):
    flat = scripted_trainer(mfcc_dataset, tmp_path, scores=[0.5, 0.1], num_epochs=6, patience=1, factor=0.5,
                            gradual_release=False)
    lrs = [row["lr"] for row in flat.fit().history]
    assert lrs == pytest.approx([1e-2, 1e-2, 1e-2, 5e-3, 5e-3, 2.5e-3])
    assert flat.model.release_calls == []  # gradual release off: the backbone stays frozen
    rising = scripted_trainer(mfcc_dataset, tmp_path, scores=[0.1, 0.2, 0.3, 0.4, 0.5], num_epochs=5,
                              patience=0, gradual_release=False)
    assert {row["lr"] for row in rising.fit().history} == {1e-2}


def test_epoch_budget_and_checkpoint_contents(mfcc_dataset, tmp_path):
    trainer = scripted_trainer(mfcc_dataset, tmp_path, scores=[0.3, 0.4], num_epochs=2)
    state = trainer.fit()
    assert len(state.history) == 2 and not state.finished
    checkpoint = load_torch_file(trainer.run.checkpoint)
    assert set(checkpoint) >= {"config", "model", "optimizer", "scheduler", "best_model", "rng", "state"}
    assert checkpoint["state"]["next_epoch"] == 2
    assert checkpoint["state"]["best_epoch"] == 1
    assert checkpoint["state"]["n_released"] == 1
    assert checkpoint["config"] == to_dict(trainer.config)
    assert len(checkpoint["state"]["history"]) == 2
    best = load_torch_file(trainer.run.best)
    assert best["epoch"] == 1 and set(best["model"]) == set(trainer.model.state_dict())
    assert [row["epoch"] for row in read_csv(trainer.run.history_csv)] == ["0", "1"]


def test_a_restored_trainer_continues_like_the_uninterrupted_one(mfcc_dataset, tmp_path):
    straight = scripted_trainer(mfcc_dataset, tmp_path / "a", scores=[0.5, 0.1], num_epochs=5)
    straight.fit()
    first = scripted_trainer(mfcc_dataset, tmp_path / "b", scores=[0.5, 0.1], num_epochs=3)
    first.fit()
    resumed = scripted_trainer(mfcc_dataset, tmp_path / "c", scores=[0.5, 0.1], num_epochs=5)
    resumed.restore(load_torch_file(first.run.checkpoint))
    resumed.fit()
    strip = [{k: v for k, v in row.items() if k != "seconds"} for row in resumed.state.history]
    assert strip == [{k: v for k, v in row.items() if k != "seconds"} for row in straight.state.history]
    assert resumed.model.release_calls == [1, 2]  # restored with 1 released, then the lr trigger at epoch 3
    for key, value in straight.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[key]), key


def test_a_checkpoint_with_the_other_devices_generator_state_resumes_with_a_warning(mfcc_dataset, tmp_path, caplog):
    first = scripted_trainer(mfcc_dataset, tmp_path / "a", scores=[0.5], num_epochs=1)
    assert first.generator.device.type == "cpu"  # whatever the training device: its state fits every resume
    first.fit()
    checkpoint = load_torch_file(first.run.checkpoint)
    assert checkpoint["rng"]["generator"].numel() == 5056  # a CPU generator's state
    checkpoint["rng"]["generator"] = torch.zeros(16, dtype=torch.uint8)  # the size of a CUDA generator's state
    resumed = scripted_trainer(mfcc_dataset, tmp_path / "b", scores=[0.5], num_epochs=2)
    with caplog.at_level(logging.WARNING, logger="base.training.trainer"):
        resumed.restore(checkpoint)
    assert "does not fit this run's CPU generator (16 bytes, not 5056" in caplog.text
    expected = torch.Generator().manual_seed(reseed(resumed.config.train.seed, 0, 1))  # seed, rank 0, epoch 1
    assert torch.equal(resumed.generator.get_state(), expected.get_state())
    assert len(resumed.fit().history) == 2


def test_a_non_finite_epoch_loss_is_a_user_error(mfcc_dataset, tmp_path):
    config = apply_overrides(Config(), {"model": {"modality": ["mfcc"]},
                                        "train": {"window_length": 8, "hop_length": 4, "quiet": True}})
    train_part, validation_part = fold_partitions(mfcc_dataset, config, 0, mfcc_dataset.mean_std())
    model = StubModel()
    with torch.no_grad():
        model.head.bias.fill_(math.nan)
    trainer = Trainer(model, config, torch.device("cpu"), RunFolder(tmp_path / "run").create(), train_part,
                      validation_part)
    with pytest.raises(UserError, match="the training loss of epoch 0 became nan; check the features"):
        trainer.train_epoch(0)


def test_the_best_epochs_evaluation_is_what_the_best_weights_predict_again(mfcc_dataset, tmp_path):
    # The end of a fit reuses the validation made in the best epoch instead of predicting once more.
    config = apply_overrides(Config(), {"model": {"modality": ["mfcc"]},
                                        "train": {"window_length": 8, "hop_length": 4, "batch_size": 2,
                                                  "learning_rate": 0.5, "num_epochs": 4, "quiet": True,
                                                  "load_best_at_each_epoch": False}})
    train_part, validation_part = fold_partitions(mfcc_dataset, config, 0, mfcc_dataset.mean_std())
    torch.manual_seed(0)
    trainer = Trainer(StubModel(), config, torch.device("cpu"), RunFolder(tmp_path / "run").create(), train_part,
                      validation_part)
    assert trainer.best_evaluation is None
    state = trainer.fit()
    kept = trainer.best_evaluation
    assert kept is not None and state.best_epoch < state.next_epoch - 1, state.history  # the weights moved on after it
    trainer.load_best()
    assert trainer.evaluate_best(validation_part) is kept
    again = trainer.evaluate(validation_part)
    assert kept.metrics == again.metrics
    for trial, predicted in kept.predictions.items():
        np.testing.assert_array_equal(predicted, again.predictions[trial])
    assert trainer.evaluate_best(train_part) is not kept  # another partition is predicted


# ----------------------------------------------------------------------------- z-scoring per partition


def test_fold_windows_are_zscored_with_their_own_partition_statistics(mfcc_dataset):
    config = apply_overrides(Config(), {"model": {"modality": ["mfcc"]},
                                        "train": {"window_length": 8, "hop_length": 4}})
    mean_std = mfcc_dataset.mean_std()
    train, validation = fold_partitions(mfcc_dataset, config, 1, mean_std)
    assert validation.trials == ["train_004"]  # fold 1 validates on training chunk 4
    for partition, name in ((train, "Train_Set"), (validation, "Validation_Set")):
        stats = mean_std["mfcc"][1][name]
        item = partition.windows[0]
        raw = mfcc_dataset.load(partition.trials[item["trial_index"]], "mfcc")[item["start"]:item["start"] + 8]
        np.testing.assert_allclose(item["mfcc"], (raw - stats["mean"]) / stats["std"], rtol=1e-5, atol=1e-5)
    assert mean_std["mfcc"][1]["Train_Set"]["mean"] != mean_std["mfcc"][1]["Validation_Set"]["mean"]


# ----------------------------------------------------------------------------- checkpoints


def test_rng_states_round_trip_through_a_checkpoint_file(tmp_path):
    generator = torch.Generator().manual_seed(3)
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    atomic_torch_save({"rng": capture_rng_state(generator)}, tmp_path / "c.pt")
    expected = (random.random(), np.random.rand(), torch.rand(1).item(), torch.rand(1, generator=generator).item())
    restore_rng_state(load_torch_file(tmp_path / "c.pt")["rng"], generator)
    assert (random.random(), np.random.rand(), torch.rand(1).item(),
            torch.rand(1, generator=generator).item()) == expected
    assert not list(tmp_path.glob("*.tmp"))


def test_resume_compatibility_names_the_differing_keys():
    saved = to_dict(apply_overrides(Config(), {"cnn1d_kernel_size": 3, "num_epochs": 5}))
    current = to_dict(apply_overrides(Config(), {"num_epochs": 50, "learning_rate": 1e-3}))
    assert config_differences(saved, current) == ["model.cnn1d_kernel_size", "train.learning_rate"]
    with pytest.raises(UserError, match=r"model.cnn1d_kernel_size \(checkpoint 3, now 5\)"):
        check_resumable(saved, current, "run/checkpoint.pt")
    check_resumable(saved, to_dict(apply_overrides(Config(), {"cnn1d_kernel_size": 3})), "x")


def test_unreadable_checkpoints_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_torch_file(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="could not be read"):
        load_torch_file(tmp_path / "junk.pt")


# ----------------------------------------------------------------------------- run folders, summaries


def test_run_name_and_bad_name_parts():
    config = apply_overrides(Config(), {"modality": ["frame", "mfcc"], "emotion": "both", "head": "mh",
                                        "stamp": "s1"})
    assert run_name(config, 3) == "ABAW2_2d1d_frame-mfcc_both_mh_fold3_s1"
    with pytest.raises(UserError, match="'stamp'"):
        run_name(apply_overrides(Config(), {"stamp": "a/b"}), 0)


def test_csv_and_json_writers(tmp_path):
    write_csv([{"a": 1, "b": 2.5}, {"a": 2, "c": "x"}], tmp_path / "t.csv")
    assert read_csv(tmp_path / "t.csv") == [{"a": "1", "b": "2.5", "c": ""}, {"a": "2", "b": "", "c": "x"}]
    assert json_safe({"x": math.nan, "y": (np.float32(1.5), math.inf)}) == {"x": None, "y": [1.5, None]}


def test_summary_table_and_ccc_line():
    results = [
        FoldResult(fold, Path(f"run{fold}"), 2, 5, "", ("valence", "arousal"),
                   {"valence": {"ccc": v, "pcc": 0.0, "rmse": 0.1}, "arousal": {"ccc": a, "pcc": 0.0, "rmse": 0.1}})
        for fold, v, a in ((0, 0.5, 0.7), (1, 0.3, 0.5))
    ]
    rows = summary_rows(results)
    assert [row["fold"] for row in rows] == [0, 1, "mean"]
    assert rows[-1]["valence_ccc"] == pytest.approx(0.4)
    table = format_summary(results)
    assert "valence CCC" in table and "0.600" in table.splitlines()[-1]
    assert ccc_line(results) == "validation CCC: valence=0.400 arousal=0.600"
    assert ccc_line(results[:1]) == "validation CCC: valence=0.500 arousal=0.700"


# ----------------------------------------------------------------------------- devices


def test_device_names():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    for bad in ("gpu", "cpu:1", "cuda:x"):
        with pytest.raises(UserError, match="auto, cpu, cuda or cuda:N"):
            resolve_device(bad)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on machines without CUDA")
def test_cuda_without_cuda_is_a_clear_error():
    with pytest.raises(UserError, match="device 'cuda:0' needs a GPU, but torch cannot use one here"):
        resolve_device("cuda:0")
    assert gpu_index_to_device(1) == "cuda:1"  # no silent CPU fallback: resolve_device refuses it
