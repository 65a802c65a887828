"""The authors' recipe, step for step (issue: faithful by default).

One training step of ``Trainer`` under ``recipe=authors`` is compared with a direct transcription of
the authors' step (their ``base/trainer.py`` loop, ``base/dataset.py`` reader and
``experiment_regular.py`` loss) on the same batch and weights: ``model.train()`` on the whole model
(frozen BatchNorm layers use batch statistics), one backbone pass over all B x T frames, padded
frames through the model and into the loss, their CCC loss, and Adam on the released parameters.
"""

from __future__ import annotations

import copy
import random

import numpy as np
import pytest
import torch
from torch import nn

from base.data.augment import prepare_frames
from base.data.processed import ProcessedDataset
from base.training.batchnorm import precise_batchnorm
from base.training.cross_validation import fold_partitions
from base.training.run_folder import RunFolder
from base.training.trainer import Trainer
from configs import Config, apply_overrides, resolve_recipe
from model import IR50, build_model
from tests.processed_helpers import make_processed_dataset

pytestmark = pytest.mark.usefixtures("one_torch_thread")

WINDOW = 6


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> ProcessedDataset:
    # five training trials of 6 frames but one of 4 (a padded window): one window each, one batch of 5
    root = make_processed_dataset(tmp_path_factory.mktemp("recipe") / "data", n_train=5, n_val=1, n_test=1,
                                  lengths=(6, 4, 6, 6, 6, 6, 6), modalities=("frame", "mfcc", "vggish"))
    return ProcessedDataset(root)


def make_trainer(dataset, tmp_path, **overrides) -> Trainer:
    settings = {"modality": ["frame", "mfcc", "vggish"], "random_backbone": True, "emotion": "valence",
                "head": "mh", "window_length": WINDOW, "hop_length": WINDOW, "batch_size": 5, "learning_rate": 1e-3,
                "backbone_chunk_size": 7, "quiet": True, **overrides}
    config = resolve_recipe(apply_overrides(Config(), settings))
    torch.manual_seed(0)
    model = build_model(config)
    train, validation = fold_partitions(dataset, config, 0, dataset.mean_std())
    return Trainer(model, config, torch.device("cpu"), RunFolder(tmp_path / "run").create(), train, validation)


def their_batch(dataset: ProcessedDataset, trials: list[str], mean_std: dict, generator: torch.Generator):
    """The batch their reader gives: windows shuffled once by random.seed(0), zero padding before z-scoring."""
    windows = [(trial, 0) for trial in trials]  # one window per trial (every trial has <= 6 frames)
    random.seed(0)
    random.shuffle(windows)
    frames, features, labels = [], {"mfcc": [], "vggish": []}, []
    for trial, _start in windows:
        n = dataset.n_frames(trial)
        frame = np.zeros((WINDOW, 48, 48, 3), np.int16)
        frame[:n] = dataset.load(trial, "frame")
        frames.append(frame)
        for name in features:
            values = np.zeros((WINDOW, 39 if name == "mfcc" else 128), np.float32)
            values[:n] = dataset.load(trial, name)
            entry = mean_std[name][0]["Train_Set"]
            features[name].append((values - entry["mean"]) / entry["std"])  # padding -> -mean/std
        label = np.zeros((WINDOW, 2), np.float32)
        label[:n] = dataset.load(trial, "label")
        labels.append(label)
    frames = prepare_frames(torch.from_numpy(np.stack(frames).astype(np.uint8)), 40, train=True, generator=generator)
    inputs = {"frame": frames, **{k: torch.from_numpy(np.stack(v)) for k, v in features.items()}}
    return inputs, torch.from_numpy(np.stack(labels))


def their_loss(gold: torch.Tensor, pred: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """experiment_regular.CCCLoss of the authors."""
    gold_mean, pred_mean = torch.mean(gold, 1, keepdim=True), torch.mean(pred, 1, keepdim=True)
    covariance = (gold - gold_mean) * (pred - pred_mean)
    gold_var, pred_var = torch.var(gold, 1, keepdim=True, unbiased=True), torch.var(pred, 1, keepdim=True, unbiased=True)
    ccc = 2.0 * covariance / ((gold_var + pred_var + torch.mul(gold_mean - pred_mean, gold_mean - pred_mean)) + 1e-08)
    return torch.mean((1.0 - ccc) * weights)


def test_one_training_step_equals_the_authors_step(dataset, tmp_path):
    trainer = make_trainer(dataset, tmp_path)
    assert trainer._release_if_due(0) and trainer.model.n_released == 1  # epoch 0 releases the output layer
    reference = copy.deepcopy(trainer.model)
    crops = torch.Generator().manual_seed(0)
    crops.set_state(trainer.generator.get_state())  # the same crop/flip draws

    torch.manual_seed(7)  # dropout
    our_loss = trainer.train_epoch(0)

    # --- the authors' step, written out
    nn.Module.train(reference, True)  # their trainer: self.model.train() on the whole model
    assert all(module.training for module in reference.modules())
    inputs, labels = their_batch(dataset, trainer.train_data.trials, dataset.mean_std(), crops)
    optimizer = torch.optim.Adam([p for p in reference.parameters() if p.requires_grad], lr=1e-3, weight_decay=0.001)
    optimizer.zero_grad()
    torch.manual_seed(7)
    outputs = reference(inputs)  # no mask: every frame, padding included, in one backbone pass
    weights = torch.ones_like(labels)
    weights[:, :, 0] *= 10  # multi-headed, valence chosen
    loss = their_loss(outputs, labels, weights)
    loss.backward()
    optimizer.step()

    assert our_loss == pytest.approx(loss.item(), rel=1e-6)
    ours = trainer.model.state_dict()
    for key, value in reference.state_dict().items():  # parameters and BatchNorm statistics
        torch.testing.assert_close(ours[key], value, rtol=0, atol=1e-6, msg=key)
    # the released output layer and the frozen BatchNorm statistics both moved
    assert not torch.equal(ours["backbone.output_layer.3.weight"], trainer.best_state["backbone.output_layer.3.weight"])
    assert not torch.equal(ours["backbone.body.0.res_layer.0.running_mean"],
                           trainer.best_state["backbone.body.0.res_layer.0.running_mean"])
    assert torch.equal(ours["backbone.body.0.res_layer.1.weight"], trainer.best_state["backbone.body.0.res_layer.1.weight"])


def test_the_corrected_step_differs(dataset, tmp_path):
    authors, corrected = make_trainer(dataset, tmp_path / "a"), make_trainer(dataset, tmp_path / "c", recipe="corrected")
    for trainer in (authors, corrected):
        trainer._release_if_due(0)
        torch.manual_seed(7)
        trainer.train_epoch(0)
    assert not torch.equal(authors.model.state_dict()["backbone.body.0.res_layer.0.running_mean"],
                           corrected.model.state_dict()["backbone.body.0.res_layer.0.running_mean"])
    assert torch.equal(corrected.model.state_dict()["backbone.body.0.res_layer.0.running_mean"],
                       corrected.best_state["backbone.body.0.res_layer.0.running_mean"])  # frozen: eval mode


def _epoch_order(trainer: Trainer, epoch: int) -> list[tuple[int, int]]:
    loader = trainer._loader(trainer.train_data, shuffle=True, epoch=epoch)
    return [(int(t), int(s)) for batch in loader for t, s in zip(batch["trial_index"], batch["start"])]


@pytest.mark.parametrize("recipe", ["authors", "corrected"])
def test_epoch_order(dataset, tmp_path, recipe):
    trainer = make_trainer(dataset, tmp_path, modality=["mfcc"], batch_size=2, window_length=2, hop_length=2,
                           recipe=recipe)
    orders = [_epoch_order(trainer, epoch) for epoch in range(3)]
    if recipe == "authors":  # shuffled once (random.seed(0); random.shuffle), the same every epoch
        assert orders[0] == orders[1] == orders[2]
        windows = list(zip(trainer.train_data.windows.window_trial.tolist(),
                           trainer.train_data.windows.window_start.tolist()))
        random.seed(0)
        random.shuffle(windows)
        assert orders[0] == windows
    else:
        assert orders[0] != orders[1] and sorted(orders[0]) == sorted(orders[1])


def test_precise_batchnorm_averages_the_batch_statistics():
    torch.manual_seed(0)
    backbone = IR50("ir").eval()
    batches = [torch.rand(2, 3, 3, 40, 40) * 2 - 1, torch.rand(1, 4, 3, 40, 40) * 2 - 1]
    with torch.no_grad():  # the first BatchNorm normalises the input convolution's output
        conv = [backbone.input_layer[0](b.reshape(-1, 3, 40, 40)) for b in batches]
    assert precise_batchnorm(backbone, [(b, None) for b in batches]) == 2
    layer = backbone.input_layer[1]
    torch.testing.assert_close(layer.running_mean, sum(c.mean(dim=(0, 2, 3)) for c in conv) / 2)
    torch.testing.assert_close(layer.running_var, sum(c.var(dim=(0, 2, 3), unbiased=True) for c in conv) / 2)
    assert not any(m.training for m in backbone.modules()) and layer.momentum == 0.1  # modes and momentum kept


def test_the_demo_warms_up_the_random_backbone_before_epoch_0(dataset, tmp_path):
    trainer = make_trainer(dataset, tmp_path, batchnorm_warmup_batches=1)
    before = trainer.model.backbone.input_layer[1].running_mean.clone()
    trainer.warm_up_batchnorm()
    after = trainer.best_state["backbone.input_layer.1.running_mean"]
    assert not torch.equal(before, after) and torch.equal(after, trainer.model.backbone.input_layer[1].running_mean)
