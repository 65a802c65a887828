"""The training loop of one fold: the authors' recipe (SPEC §5).

Adam over the trainable parameters, ReduceLROnPlateau on the validation CCC, gradual release of the
visual backbone, early stopping, and a checkpoint each epoch from which a killed run continues
exactly (history.csv, checkpoint.pt, best.pt). Data assembly, the run sequence, the final evaluation
and the plots live in ``base.training.cross_validation``; file helpers in ``base.training.run_folder`` and
``base.training.checkpointing``.

Gradual release (SPEC §5): the backbone starts frozen. At epoch 0, and at the start of every epoch
where the learning rate has fallen below ``min_learning_rate``, the next backbone group is made
trainable, the best weights so far are reloaded and Adam and the scheduler are re-created at the
initial learning rate. A trigger with no group left ends training. With ``gradual_release`` off
nothing is ever released and the backbone stays frozen (as in the authors' code); models without
a frame modality have no groups and train until early stopping or the epoch budget.

Under ``torchrun`` (``base.training.distributed``) the training step runs the model wrapped in
DistributedDataParallel, every rank sees its share of the windows, evaluation outputs are gathered
from all ranks before the overlap averaging and the CCC, and only rank 0 writes files. Each rank has
its own random streams (``seed + rank``) and the checkpoint holds every rank's. ``precision``
bf16/fp16 runs the model under autocast (the loss stays fp32; fp16 adds a gradient scaler; bf16 on a
GPU needs compute capability 8.0) and ``channels_last`` stores the backbone in that memory format.

On CUDA the loader uses pinned memory and worker processes (``num_workers`` -1: auto), copies do not
block, and the loss is summed on the device and read once per epoch. The crop/flip generator lives
on the CPU, so a checkpoint resumes on any device type.
Recipe (``configs.RECIPE_SETTINGS``): under ``authors`` (the default) the training step is the
authors' step: padded frames of short windows go through the model and count in the loss, the loss is
their per-window CCC (``authors_ccc_loss``), the windows are shuffled once and read in that order every
epoch, and early stopping counts epochs after ``min_num_epochs``. The frozen BatchNorm mode and the
release groups live in the model (``model.freezing``). Evaluation is the same under both recipes: the
padding skips the backbone there, which is exact (per-frame backbone in eval mode, causal TCNs).
"""

from __future__ import annotations

import enum
import itertools
import logging
import math
import random
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Subset
from tqdm import tqdm

from base.data.augment import prepare_frames
from base.data.dataset import WindowDataset, make_loader
from base.data.windowing import overlap_average
from base.errors import UserError
from base.training import tensorboard_log
from base.training.batchnorm import precise_batchnorm
from base.training.checkpointing import (
    atomic_torch_save,
    capture_rng_state,
    rank_seed,
    reseed,
    restore_rng_state,
    seed_everything,
)
from base.training.devices import loader_workers
from base.training.distributed import (
    DistributedContext,
    all_gather_objects,
    broadcast_buffers,
    broadcast_weights,
    gather_window_pieces,
    shard_dataset,
    sum_across_ranks,
    wrap_model,
)
from base.training.metrics import authors_ccc_loss, ccc_loss, evaluate_partition
from base.training.rank_exit import fail_if_asked
from base.training.run_folder import RunFolder, write_csv
from configs import EMOTIONS, Config, Modality, ModelConfig, resolve_recipe, to_dict

logger = logging.getLogger(__name__)

LABEL_COLUMN = {"valence": 0, "arousal": 1}  # columns of label.npy (SPEC §2)
CHECKPOINT_FORMAT = 1


class Precision(enum.StrEnum):
    """Arithmetic of the model's forward pass (``precision`` config key)."""

    FP32 = "fp32"
    BF16 = "bf16"
    FP16 = "fp16"


AUTOCAST_DTYPE = {Precision.FP32: None, Precision.BF16: torch.bfloat16, Precision.FP16: torch.float16}
# Below compute capability 8.0 (T4, V100) torch emulates bf16: convolutions leave cuDNN's fast kernels.
BF16_MIN_CAPABILITY = (8, 0)


# ----------------------------------------------------------------------------- pure helpers


def output_emotions(model_config: ModelConfig) -> tuple[str, ...]:
    """The emotion of each model output column: both when the model has two outputs."""
    return EMOTIONS if model_config.output_dim == 2 else (model_config.emotion,)


def trained_emotions(model_config: ModelConfig) -> tuple[str, ...]:
    """The emotions whose validation CCC selects the best epoch and is reported."""
    return EMOTIONS if model_config.emotion == "both" else (model_config.emotion,)


def loss_weights(model_config: ModelConfig, multi_head_weight: float) -> tuple[float, ...]:
    """Weight of each output column in the loss: a multi-head model weights the chosen emotion."""
    emotions = output_emotions(model_config)
    if model_config.head == "mh" and model_config.emotion != "both":
        return tuple(multi_head_weight if e == model_config.emotion else 1.0 for e in emotions)
    return tuple(1.0 for _ in emotions)


def weighted_ccc_loss(
    outputs: torch.Tensor,
    labels: torch.Tensor,
    mask: torch.Tensor | None,
    emotions: tuple[str, ...],
    weights: tuple[float, ...],
    loss: str = "population",
) -> torch.Tensor:
    """Mean over output columns of weight x (1 - CCC per window), the mean over windows.

    Args:
        outputs: (B, T, C) model outputs, column c predicts ``emotions[c]``.
        labels: (B, T, 2) valence and arousal.
        mask: (B, T) True on the frames that count (None: all, padding included).
        loss: ``population`` (``ccc_loss``) or ``authors`` (``authors_ccc_loss``).
    """
    if loss == "authors":  # their loss on all columns at once, operation for operation
        columns = [LABEL_COLUMN[emotion] for emotion in emotions]
        column_weights = torch.tensor(weights, dtype=outputs.dtype).to(outputs.device, non_blocking=True)
        return authors_ccc_loss(outputs, labels[..., columns], mask, column_weights)
    losses = [
        weight * ccc_loss(outputs[..., column], labels[..., LABEL_COLUMN[emotion]], mask)  # (B, T) -> ()
        for column, (emotion, weight) in enumerate(zip(emotions, weights))
    ]
    return torch.stack(losses).mean()


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of ``precision`` on ``device`` (None: plain fp32); UserError when unusable."""
    try:
        chosen = Precision(precision)
    except ValueError:
        raise UserError(f"config key 'precision' must be fp32, bf16 or fp16, got '{precision}'") from None
    if chosen is Precision.FP16 and device.type != "cuda":
        raise UserError("precision fp16 needs a CUDA device (with its gradient scaler); use bf16 on the CPU")
    if chosen is Precision.BF16 and device.type == "cuda":
        capability = tuple(torch.cuda.get_device_capability(device))
        if capability < BF16_MIN_CAPABILITY:
            raise UserError(
                f"precision bf16 needs a GPU of compute capability 8.0 or newer (A100, A10, L4, RTX 30xx...); "
                f"{torch.cuda.get_device_name(device)} ({device}) is {capability[0]}.{capability[1]}, where bf16 is "
                "emulated and slow: use --precision fp16"
            )
    return AUTOCAST_DTYPE[chosen]


def fixed_order(n_windows: int, seed: int) -> list[int]:
    """The authors' training order: window indices shuffled once by ``random.seed(seed); random.shuffle``.

    Their ``experiment_regular.py`` seeds Python's ``random`` with 0 and shuffles the list of training
    windows (trials in fold order, windows in time order, as ``WindowDataset`` lists them), then
    reads it without shuffling every epoch; the same permutation comes out here.
    """
    order = list(range(n_windows))
    random.Random(seed).shuffle(order)
    return order


def counts_for_early_stopping(epoch: int, min_num_epochs: int, inclusive: bool) -> bool:
    """Whether an epoch without improvement counts: from ``min_num_epochs`` on, or after it (the authors')."""
    return epoch >= min_num_epochs if inclusive else epoch > min_num_epochs


def inference_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype with which a run trained in ``precision`` predicts on ``device``.

    The training precision where ``device`` has it (the run's validation CCC was measured with it),
    else fp32, with a log line (fp16 on the CPU, bf16 on a GPU older than compute capability 8.0).
    """
    try:
        return autocast_dtype(precision, device)
    except UserError as exc:
        logger.info("predicting in fp32 on %s: %s", device, exc)
        return None


def selection_score(metrics: Mapping[str, Mapping[str, float]], emotions: tuple[str, ...]) -> float:
    """Mean partition CCC over ``emotions``: the figure that selects the best epoch."""
    return float(np.mean([metrics[emotion]["ccc"] for emotion in emotions]))


def clone_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """A detached copy of a module's state dict (kept on the module's device)."""
    return {key: value.detach().clone() for key, value in module.state_dict().items()}


def batch_inputs(
    batch: Mapping[str, torch.Tensor],
    modalities: tuple[str, ...],
    device: torch.device,
    crop_size: int,
    train: bool,
    generator: torch.Generator | None = None,
    mask_padding: bool = True,
) -> dict[str, torch.Tensor]:
    """Model inputs of a loader batch on ``device``: frames cropped (random when training) and scaled.

    With ``mask_padding`` the batch's (B, T) mask goes along (kept on the host: the backbone takes
    the valid frames' indices there); without it padded frames go through the whole model.
    """
    inputs = {}
    for name in modalities:
        values = batch[name].to(device, non_blocking=True)
        if name == Modality.FRAME.value:
            # (B, T, 48, 48, 3) uint8 -> (B, T, 3, crop, crop) float in [-1, 1]
            values = prepare_frames(values, crop=crop_size, train=train, generator=generator if train else None)
        else:
            values = values.float()  # (B, T, D)
        inputs[name] = values
    # (B, T) valid frames: padded ones skip the backbone. Checked on the host (and kept there: the backbone
    # takes the valid frames' indices on the host): a batch without padding gets no mask at all.
    if mask_padding and "mask" in batch and not bool(batch["mask"].all()):
        inputs["mask"] = batch["mask"]
    return inputs


def training_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    inputs: Mapping[str, torch.Tensor],
    labels: torch.Tensor,
    mask: torch.Tensor | None,
    emotions: tuple[str, ...],
    weights: tuple[float, ...],
    amp_dtype: torch.dtype | None = None,
    scaler: torch.amp.GradScaler | None = None,
    loss_name: str = "population",
) -> torch.Tensor:
    """Forward, weighted CCC loss, backward and one optimizer step; returns the (detached) loss.

    ``mask`` selects the frames of the loss (None: all). ``amp_dtype`` runs the forward pass under
    autocast (the loss is computed in fp32); ``scaler`` scales the loss for fp16. The loss is not read
    here (that would make the host wait for the GPU at every step): ``Trainer.train_epoch`` checks the
    epoch's loss.
    """
    with torch.autocast(labels.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
        outputs = model(inputs)  # (B, T, C)
    loss = weighted_ccc_loss(outputs.float(), labels, mask, emotions, weights, loss_name)
    optimizer.zero_grad(set_to_none=True)
    if scaler is None:
        loss.backward()
        optimizer.step()
    else:
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    return loss.detach()


# ----------------------------------------------------------------------------- data and state


@dataclass
class Partition:
    """The windows of one partition of a fold, and what rebuilding whole trials needs."""

    trials: list[str]
    n_frames: list[int]  # frames of each trial, same order as ``trials``
    windows: WindowDataset


@dataclass
class TrainState:
    """What evolves from epoch to epoch besides the model, optimizer and scheduler."""

    next_epoch: int = 0
    best_score: float = -math.inf
    best_epoch: int = -1
    n_released: int = 0
    epochs_without_improvement: int = 0
    finished: bool = False
    stop_reason: str = ""
    history: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Evaluation:
    """Overlap-averaged predictions and labels of a partition and their metrics."""

    metrics: dict[str, Any]  # evaluate_partition output
    predictions: dict[str, np.ndarray]  # trial -> (n_frames, C)
    labels: dict[str, np.ndarray]  # trial -> (n_frames, C)


# ----------------------------------------------------------------------------- trainer


class Trainer:
    """Trains one model on one fold and writes its checkpoint and history into a run folder."""

    def __init__(
        self,
        model: nn.Module,
        config: Config,
        device: torch.device,
        run: RunFolder,
        train: Partition,
        validation: Partition,
        context: DistributedContext | None = None,
    ) -> None:
        config = resolve_recipe(config)
        self.model = model.to(device)
        self.context = context or DistributedContext(device=device)
        broadcast_weights(self.model, self.context)  # each rank drew its own initial weights: rank 0's win
        if config.train.channels_last and getattr(self.model, "backbone", None) is not None:
            self.model.backbone.to(memory_format=torch.channels_last)
        self.amp_dtype = autocast_dtype(config.train.precision, device)
        self.scaler = torch.amp.GradScaler(device.type) if self.amp_dtype == torch.float16 else None
        self._ddp: tuple[tuple[bool, ...], nn.Module] | None = None  # (trainable flags, wrapper)
        self.config = config
        self.device = device
        self.run = run
        self.train_data = train
        self.validation_data = validation
        self.emotions = output_emotions(config.model)
        self.selected_emotions = trained_emotions(config.model)
        self.weights = loss_weights(config.model, config.train.multi_head_weight)
        # Crops and flips of the training frames, drawn on the CPU (the draws move to the frames'
        # device), so a checkpoint's generator state fits whatever device the run resumes on.
        self.generator = torch.Generator()
        self.generator.manual_seed(rank_seed(config.train.seed, self.context.rank))
        self.state = TrainState()
        self.best_state = clone_state(self.model)
        # The validation of the best weights, kept from their epoch in this process (None after a
        # resume, until an epoch improves): the end of a fit reuses it.
        self.best_evaluation: Evaluation | None = None
        self.optimizer, self.scheduler = self._new_optimizer()

    # -- optimisation pieces

    def _new_optimizer(self) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.ReduceLROnPlateau]:
        t = self.config.train
        optimizer = torch.optim.Adam(
            list(self.model.trainable_parameters()), lr=t.learning_rate, weight_decay=t.weight_decay
        )
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="max", patience=t.patience, factor=t.factor
        )
        return optimizer, scheduler

    @property
    def train_model(self) -> nn.Module:
        """What the training step runs: the model, in DDP when distributed (re-wrapped after a release)."""
        if not self.context.is_distributed:
            return self.model
        trainable = tuple(p.requires_grad for p in self.model.parameters())
        if self._ddp is None or self._ddp[0] != trainable:
            self._ddp = None  # the old wrapper's gradient hooks go with it
            self._ddp = (trainable, wrap_model(self.model, self.context))
        return self._ddp[1]

    @property
    def learning_rate(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    @property
    def n_release_groups(self) -> int:
        """How many backbone groups this run may release in total."""
        if not self.config.train.gradual_release:
            return 0
        return min(self.config.train.release_count, len(self.model.release_group_names))

    def _release_if_due(self, epoch: int) -> bool:
        """Release the next backbone group when due (SPEC §5); False when training must stop."""
        if self.n_release_groups == 0:
            return True
        if epoch != 0 and self.learning_rate >= self.config.train.min_learning_rate:
            return True
        if self.state.n_released >= self.n_release_groups:
            self.state.stop_reason = "learning rate fell below its minimum with no backbone group left to release"
            return False
        self.state.n_released += 1
        self.model.release_groups(self.state.n_released)
        self.model.load_state_dict(self.best_state)
        self.optimizer, self.scheduler = self._new_optimizer()
        names = self.model.release_group_names[: self.state.n_released]
        logger.info("epoch %d: released backbone group %d (%s); optimizer re-created at lr %.1e",
                    epoch, self.state.n_released, names[-1], self.learning_rate)
        return True

    # -- batches

    @property
    def masks_padding(self) -> bool:
        """Whether padded frames stay out of the training step (``padded_frames=masked``)."""
        return self.config.train.padded_frames == "masked"

    def _inputs(self, batch: Mapping[str, Any], train: bool) -> dict[str, torch.Tensor]:
        m = self.config.model
        # evaluation always masks: exact there (eval-mode backbone per frame, causal TCNs), and faster
        mask_padding = self.masks_padding or not train
        return batch_inputs(batch, m.modality, self.device, m.crop_size, train, self.generator, mask_padding)

    def _loader(self, partition: Partition, shuffle: bool, epoch: int) -> torch.utils.data.DataLoader:
        t = self.config.train
        windows = partition.windows
        pad = shuffle  # DDP training: every rank takes the same number of steps
        if shuffle and t.epoch_order == "fixed":  # the authors: one shuffled list, read in order every epoch
            windows, shuffle = Subset(windows, fixed_order(len(windows), t.seed)), False
        if self.context.is_distributed:  # this rank's share, already in the epoch's order
            windows, shuffle = shard_dataset(windows, self.context, shuffle, t.seed, epoch, pad=pad), False
        return make_loader(
            windows, batch_size=t.batch_size, shuffle=shuffle, seed=t.seed, epoch=epoch,
            num_workers=loader_workers(t.num_workers, self.device, self.context.world_size),
            pin_memory=self.device.type == "cuda",
        )

    def train_epoch(self, epoch: int) -> float:
        """One pass over the training windows; returns the mean loss per window.

        The loss is summed on the device and read once, at the end of the epoch; a non-finite
        epoch loss is a UserError (on every rank alike).
        """
        fail_if_asked(self.context.rank)  # a test hook: off unless its environment variable names this rank
        self.model.train()
        total_loss = torch.zeros((), dtype=torch.float64, device=self.device)
        n_windows = 0
        show_loss = self.device.type == "cpu"  # reading a CPU loss costs nothing; a GPU one waits for the GPU
        loader = self._loader(self.train_data, shuffle=True, epoch=epoch)
        progress = tqdm(loader, desc=f"epoch {epoch} train", leave=False, disable=self.config.train.quiet)
        for batch in progress:
            labels = batch["label"].to(self.device, non_blocking=True)  # (B, T, 2)
            mask = batch["mask"].to(self.device, non_blocking=True) if self.masks_padding else None  # (B, T)
            n_batch = len(batch["label"])
            loss = training_step(self.train_model, self.optimizer, self._inputs(batch, train=True), labels, mask,
                                 self.emotions, self.weights, self.amp_dtype, self.scaler,
                                 self.config.train.ccc_loss)
            total_loss += loss.double() * n_batch
            n_windows += n_batch
            if show_loss:
                progress.set_postfix(loss=f"{loss.item():.3f}")
        total, n_windows = sum_across_ranks((total_loss.item(), n_windows), self.context)
        broadcast_buffers(self.model, self.context)  # every rank evaluates with rank 0's BatchNorm statistics
        mean_loss = total / max(n_windows, 1)
        if not math.isfinite(mean_loss):
            raise UserError(f"the training loss of epoch {epoch} became {mean_loss}; check the features for extreme "
                            "values or lower --learning-rate")
        return mean_loss

    @torch.no_grad()
    def evaluate(self, partition: Partition) -> Evaluation:
        """Predict every window, average overlaps per frame, and score the whole partition."""
        self.model.eval()
        pieces: dict[int, list[tuple[int, int, np.ndarray, np.ndarray]]] = {}
        label_columns = [LABEL_COLUMN[emotion] for emotion in self.emotions]
        loader = self._loader(partition, shuffle=False, epoch=0)
        for batch in tqdm(loader, desc="validate", leave=False, disable=self.config.train.quiet):
            with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
                outputs = self.model(self._inputs(batch, train=False))
            outputs = outputs.float().cpu().numpy()  # (B, T, C)
            labels = batch["label"].numpy()[..., label_columns]  # (B, T, C)
            for row, trial_index in enumerate(batch["trial_index"].tolist()):
                pieces.setdefault(trial_index, []).append(
                    (int(batch["start"][row]), int(batch["length"][row]), outputs[row], labels[row])
                )
        pieces = gather_window_pieces(pieces, self.context)  # every rank's windows, on every rank
        predictions, labels = {}, {}
        for trial_index, windows in pieces.items():
            trial = partition.trials[trial_index]
            starts = np.array([w[0] for w in windows])
            lengths = np.array([w[1] for w in windows])
            n_frames = partition.n_frames[trial_index]
            predictions[trial] = overlap_average(np.stack([w[2] for w in windows]), starts, n_frames, lengths)
            labels[trial] = overlap_average(np.stack([w[3] for w in windows]), starts, n_frames, lengths)
        metrics = evaluate_partition(predictions, labels, self.emotions)
        return Evaluation(metrics=metrics, predictions=predictions, labels=labels)

    # -- epochs

    def warm_up_batchnorm(self) -> None:
        """``batchnorm_warmup_batches`` training batches set the backbone's BatchNorm running statistics
        (``base.training.batchnorm``; centre crops, padding left out), before the first epoch."""
        n_batches = self.config.train.batchnorm_warmup_batches
        if n_batches <= 0 or getattr(self.model, "backbone", None) is None:
            return
        crop = self.config.model.crop_size
        loader = self._loader(self.train_data, shuffle=True, epoch=0)
        batches = (
            (prepare_frames(batch["frame"].to(self.device, non_blocking=True), crop, train=False), batch["mask"])
            for batch in itertools.islice(loader, n_batches)
        )
        used = precise_batchnorm(self.model.backbone, batches)
        broadcast_buffers(self.model, self.context)
        self.best_state = clone_state(self.model)  # what a release reloads
        logger.info("backbone BatchNorm statistics taken from %d training batches", used)

    def fit(self) -> TrainState:
        """Train until the epoch budget, early stopping, or no group left to release."""
        t = self.config.train
        if self.state.next_epoch == 0:
            self.warm_up_batchnorm()
        while not self.state.finished and self.state.next_epoch < t.num_epochs:
            epoch = self.state.next_epoch
            if not self._release_if_due(epoch):
                self.state.finished = True
                self.save_checkpoint()
                break
            started = time.perf_counter()
            learning_rate = self.learning_rate
            train_loss = self.train_epoch(epoch)
            evaluation = self.evaluate(self.validation_data)
            score = selection_score(evaluation.metrics, self.selected_emotions)
            improved = score > self.state.best_score
            self._update_best(epoch, score, improved, evaluation)
            self.scheduler.step(score)
            if t.load_best_at_each_epoch and not improved:
                self.model.load_state_dict(self.best_state)
            self._record_epoch(epoch, train_loss, evaluation, score, improved, learning_rate, started)
            self.state.next_epoch = epoch + 1
            if t.early_stopping and self.state.epochs_without_improvement >= t.early_stopping:
                self.state.finished = True
                self.state.stop_reason = f"no improvement for {t.early_stopping} epochs (early stopping)"
            self.save_checkpoint()
        if self.state.stop_reason:
            logger.info("training stopped: %s", self.state.stop_reason)
        return self.state

    def _update_best(self, epoch: int, score: float, improved: bool, evaluation: Evaluation) -> None:
        if improved:
            self.best_evaluation = evaluation
            self.state.best_score = score
            self.state.best_epoch = epoch
            self.state.epochs_without_improvement = 0
            self.best_state = clone_state(self.model)
            if self.config.train.save_model and self.context.is_main:
                atomic_torch_save(
                    {"model": self.best_state, "config": to_dict(self.config), "epoch": epoch, "score": score},
                    self.run.best,
                )
        elif counts_for_early_stopping(epoch, self.config.train.min_num_epochs, self.config.train.min_epochs_inclusive):
            self.state.epochs_without_improvement += 1

    def _record_epoch(self, epoch: int, train_loss: float, evaluation: Evaluation, score: float,
                      improved: bool, learning_rate: float, started: float) -> None:
        row: dict[str, Any] = {"epoch": epoch, "train_loss": train_loss}
        for emotion in self.emotions:
            for metric in ("ccc", "pcc", "rmse"):
                row[f"{emotion}_{metric}"] = float(evaluation.metrics[emotion][metric])
        row.update(score=score, improved=int(improved), lr=learning_rate, n_released=self.state.n_released,
                   seconds=round(time.perf_counter() - started, 3))
        self.state.history.append(row)
        if self.context.is_main:
            write_csv(self.state.history, self.run.history_csv)
            tensorboard_log.log_history(self.run.path, self.state.history, self.config.train.tensorboard)
        summary = " ".join(f"{e}={row[f'{e}_ccc']:.3f}" for e in self.emotions)
        logger.info("epoch %d: train loss %.4f, validation CCC %s, lr %.1e, released %d, best epoch %d%s",
                    epoch, train_loss, summary, learning_rate, self.state.n_released, self.state.best_epoch,
                    " (improved)" if improved else "")

    # -- checkpoints

    def checkpoint_dict(self, rank_rng: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        """Everything needed to continue this run as if it had never stopped.

        ``rank_rng``: every rank's ``capture_rng_state`` in rank order (DDP); stored as ``rank_rng``,
        rank 0's also as ``rng``.
        """
        rank_rng = rank_rng or [capture_rng_state(self.generator)]
        checkpoint = {
            "format": CHECKPOINT_FORMAT,
            "config": to_dict(self.config),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "best_model": self.best_state,
            "rng": rank_rng[0],
            "state": asdict(self.state),
        }
        if len(rank_rng) > 1:
            checkpoint["rank_rng"] = rank_rng
        if self.scaler is not None:
            checkpoint["scaler"] = self.scaler.state_dict()
        return checkpoint

    def save_checkpoint(self) -> None:
        rank_rng = all_gather_objects(capture_rng_state(self.generator), self.context)  # a collective: every rank
        if self.context.is_main:
            atomic_torch_save(self.checkpoint_dict(rank_rng), self.run.checkpoint)

    def restore(self, checkpoint: Mapping[str, Any]) -> None:
        """Continue from ``checkpoint_dict()`` output (the caller checked its config)."""
        if checkpoint.get("format") != CHECKPOINT_FORMAT:
            raise UserError(f"checkpoint {self.run.checkpoint} has an unknown format; use --resume 0 to start over")
        self.state = TrainState(**checkpoint["state"])
        if self.state.n_released:
            self.model.release_groups(self.state.n_released)
        self.model.load_state_dict(checkpoint["model"])
        self.best_state = {key: value.to(self.device) for key, value in checkpoint["best_model"].items()}
        self.optimizer, self.scheduler = self._new_optimizer()
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.scheduler.load_state_dict(checkpoint["scheduler"])
        if self.scaler is not None and "scaler" in checkpoint:
            self.scaler.load_state_dict(checkpoint["scaler"])
        self._restore_rng(checkpoint)
        logger.info("resumed %s after epoch %d (best epoch %d)", self.run.name, self.state.next_epoch - 1,
                    self.state.best_epoch)

    def _restore_rng(self, checkpoint: Mapping[str, Any]) -> None:
        """This rank's random states from the checkpoint; what it cannot give back is reseeded from seed and epoch."""
        rank, seed, epoch = self.context.rank, self.config.train.seed, self.state.next_epoch
        states = checkpoint.get("rank_rng") or [checkpoint["rng"]]
        if rank >= len(states):
            logger.warning("checkpoint %s holds the random states of %d rank(s), none for rank %d: reseeding it "
                           "from the seed and epoch %d", self.run.checkpoint, len(states), rank, epoch)
            seed_everything(reseed(seed, rank, epoch))
            self.generator.manual_seed(reseed(seed, rank, epoch))
        elif not restore_rng_state(states[rank], self.generator):
            logger.warning("the crop/flip generator state in checkpoint %s does not fit this run's CPU generator "
                           "(%d bytes, not %d: written on another device type?): reseeding it from the seed and "
                           "epoch %d", self.run.checkpoint, states[rank]["generator"].numel(),
                           self.generator.get_state().numel(), epoch)
            self.generator.manual_seed(reseed(seed, rank, epoch))

    def load_best(self) -> None:
        """Put the best weights into the model (end of training)."""
        self.model.load_state_dict(self.best_state)

    def evaluate_best(self, partition: Partition) -> Evaluation:
        """The best weights' evaluation of the validation partition, after ``load_best``: the one made in
        their epoch when this process made it (the same weights, BatchNorm statistics and eval-mode
        forward give the same outputs), else predicted now."""
        if self.best_evaluation is not None and partition is self.validation_data:
            return self.best_evaluation
        return self.evaluate(partition)
