"""Train and evaluate folds in sequence, and summarise their validation CCC (SPEC §5, §6).

``run_cross_validation(config)`` opens the dataset, checks the trials it will use, then for every
fold in ``config.train.fold``: builds the fold's windows (features z-scored with the statistics of
that fold and of the partition each window belongs to), the model and a ``Trainer``, trains with
resume support, evaluates the best weights and writes the run folder. The per-fold results go to
``<save_path>/<prefix>_<stamp>_cv_summary.csv``.

Under ``torchrun`` every rank runs this with its ``DistributedContext`` (``base.training.distributed``);
only rank 0 writes the run folder and the summary.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from base.data.dataset import WindowDataset
from base.data.folds import TRAIN_PARTITION, VALIDATION_PARTITION, check_fold, fold_split
from base.data.processed import ProcessedDataset
from base.errors import UserError
from base.training.checkpointing import check_resumable, load_torch_file, rank_seed, seed_everything
from base.training.devices import resolve_device, set_determinism
from base.training.distributed import DistributedContext
from base.training.plots import plot_learning_curves, plot_traces
from base.training.run_folder import cv_summary_path, run_folder, write_csv, write_json
from base.training.trainer import Partition, Trainer, output_emotions, trained_emotions
from configs import Config, Modality, resolve_recipe, save_config, to_dict
from model import build_model

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class FoldResult:
    """The outcome of one fold: where it was written and its best validation metrics."""

    fold: int
    run_dir: Path
    best_epoch: int
    epochs_run: int
    stop_reason: str
    emotions: tuple[str, ...]  # the trained emotions (reported)
    metrics: dict[str, dict[str, float]]  # emotion -> {'ccc', 'pcc', 'rmse'}, every output emotion


# ----------------------------------------------------------------------------- data of a fold


def open_dataset(config: Config) -> ProcessedDataset:
    """The processed dataset named by ``dataset_path`` (a UserError when it is not given)."""
    if not config.train.dataset_path:
        raise UserError(
            "no dataset given: pass --dataset-path (or -dataset_path) with the folder written by "
            "preprocessing.py (it holds dataset_info.pkl and npy_data/)"
        )
    return ProcessedDataset(config.train.dataset_path)


def fold_trials(dataset: ProcessedDataset, fold: int, debug: int = 0) -> tuple[list[str], list[str]]:
    """Training and validation trials of ``fold``; ``debug`` > 0 keeps only that many of each."""
    train, validation = fold_split(
        dataset.partition_trials(TRAIN_PARTITION), dataset.partition_trials(VALIDATION_PARTITION), check_fold(fold)
    )
    if debug > 0:
        train, validation = train[:debug], validation[:debug]
    return train, validation


def check_trials(dataset: ProcessedDataset, trials: list[str], modalities: tuple[str, ...], quiet: bool) -> None:
    """Every trial has every modality and its label, of equal lengths and finite (UserError if not)."""
    for trial in tqdm(trials, desc="checking trials", leave=False, disable=quiet):
        dataset.check_trial(trial, modalities, with_label=True)


def needs_statistics(modalities: tuple[str, ...]) -> bool:
    """Whether any modality is a feature that gets z-scored (all but the face frames)."""
    return any(name != Modality.FRAME.value for name in modalities)


def make_partition(
    dataset: ProcessedDataset,
    trials: list[str],
    config: Config,
    fold: int,
    stats_partition: str,
    mean_std: Mapping[str, Any] | None,
) -> Partition:
    """Windows of ``trials``, z-scored with ``mean_std[feature][fold][stats_partition]``."""
    config = resolve_recipe(config)
    windows = WindowDataset(
        dataset, trials, config.model.modality, config.model.emotion,
        window_length=config.train.window_length, hop_length=config.train.hop_length,
        mean_std=mean_std, fold=fold, stats_partition=stats_partition, time_delay=config.train.time_delay,
        zscore_padding=config.train.padded_frames == "model",
    )
    return Partition(trials=list(trials), n_frames=[dataset.n_frames(t) for t in trials], windows=windows)


def fold_partitions(
    dataset: ProcessedDataset, config: Config, fold: int, mean_std: Mapping[str, Any] | None
) -> tuple[Partition, Partition]:
    """Training and validation windows of ``fold``, each z-scored with its own partition's statistics."""
    train_trials, validation_trials = fold_trials(dataset, fold, config.train.debug)
    return (
        make_partition(dataset, train_trials, config, fold, TRAIN_PARTITION, mean_std),
        make_partition(dataset, validation_trials, config, fold, VALIDATION_PARTITION, mean_std),
    )


# ----------------------------------------------------------------------------- one fold


def fold_config(config: Config, fold: int) -> Config:
    """``config`` as recorded for one fold's run (its ``fold`` is that fold alone)."""
    return dataclasses.replace(config, train=dataclasses.replace(config.train, fold=(fold,)))


def run_fold(
    config: Config,
    dataset: ProcessedDataset,
    fold: int,
    device: torch.device,
    mean_std: Mapping[str, Any] | None,
    context: DistributedContext | None = None,
) -> FoldResult:
    """Train (or resume) one fold, evaluate its best weights and fill its run folder (rank 0 only)."""
    config = fold_config(resolve_recipe(config), fold)
    is_main = context is None or context.is_main
    run = run_folder(config, fold)
    if is_main:
        run.create()
    checkpoint = None
    if config.train.resume and run.checkpoint.is_file():
        checkpoint = load_torch_file(run.checkpoint)
        check_resumable(checkpoint.get("config", {}), to_dict(config), run.checkpoint)
    elif config.train.resume:
        logger.info("fold %d: no checkpoint in %s, starting from scratch", fold, run.path)
    elif run.checkpoint.is_file():
        logger.warning("fold %d: overwriting the run in %s (pass --resume 1 to continue it)", fold, run.path)

    seed_everything(rank_seed(config.train.seed, context.rank if context is not None else 0))  # dropout per rank
    set_determinism(config.train.deterministic)
    model_config = config.model
    if checkpoint is not None:  # the checkpoint holds every weight: no backbone file needed
        model_config = dataclasses.replace(model_config, backbone_checkpoint="", random_backbone=True)
    model = build_model(model_config)
    train, validation = fold_partitions(dataset, config, fold, mean_std)
    logger.info("fold %d: %d training trials (%d windows), %d validation trials (%d windows), run folder %s",
                fold, len(train.trials), len(train.windows), len(validation.trials), len(validation.windows),
                run.path)

    trainer = Trainer(model, config, device, run, train, validation, context)
    if checkpoint is not None:
        trainer.restore(checkpoint)
    if is_main:
        save_config(config, run.path)
    state = trainer.fit()

    trainer.load_best()
    evaluation = trainer.evaluate_best(validation)
    emotions = output_emotions(config.model)
    overall = {emotion: dict(evaluation.metrics[emotion]) for emotion in emotions}
    result = FoldResult(
        fold=fold, run_dir=run.path, best_epoch=state.best_epoch, epochs_run=state.next_epoch,
        stop_reason=state.stop_reason, emotions=trained_emotions(config.model), metrics=overall,
    )
    if not is_main:
        return result
    write_json({
        "fold": fold,
        "run": run.name,
        "best_epoch": state.best_epoch,
        "best_score": state.best_score,
        "epochs_run": state.next_epoch,
        "stop_reason": state.stop_reason or "epoch budget reached",
        "trained_emotions": list(trained_emotions(config.model)),
        "validation": overall,
        "per_trial": evaluation.metrics.get("per_trial", {}),
    }, run.metrics_json)
    if state.history:
        plot_learning_curves(state.history, emotions, run.learning_curves_png)
    plot_traces(evaluation.predictions, evaluation.labels, validation.trials[: config.train.n_plot_trials],
                emotions, run.traces_png)
    return result


# ----------------------------------------------------------------------------- all folds


def run_cross_validation(config: Config, context: DistributedContext | None = None) -> list[FoldResult]:
    """Run every fold of ``config.train.fold`` in sequence and write the CV summary CSV.

    ``context``: this process's place in a ``torchrun`` run (its device wins over ``device``).
    """
    device = context.device if context is not None else resolve_device(config.train.device)
    dataset = open_dataset(config)
    folds = [check_fold(fold) for fold in config.train.fold]
    used = sorted({trial for fold in folds for trial in sum(fold_trials(dataset, fold, config.train.debug), [])})
    check_trials(dataset, used, config.model.modality, config.train.quiet)
    mean_std = dataset.mean_std() if needs_statistics(config.model.modality) else None
    logger.info("device %s; folds %s; %d trials checked", device, folds, len(used))
    results = [run_fold(config, dataset, fold, device, mean_std, context) for fold in folds]
    if context is None or context.is_main:
        write_csv(summary_rows(results), cv_summary_path(config))
    return results


def summary_rows(results: list[FoldResult]) -> list[dict[str, Any]]:
    """One row per fold (best epoch, validation CCC/PCC/RMSE per trained emotion) and a mean row."""
    rows: list[dict[str, Any]] = []
    for result in results:
        row: dict[str, Any] = {"fold": result.fold, "best_epoch": result.best_epoch, "epochs_run": result.epochs_run}
        for emotion in result.emotions:
            for metric in ("ccc", "pcc", "rmse"):
                row[f"{emotion}_{metric}"] = result.metrics[emotion][metric]
        row["run"] = result.run_dir.name
        rows.append(row)
    if results:
        mean_row: dict[str, Any] = {"fold": "mean", "best_epoch": "", "epochs_run": ""}
        for key in rows[0]:
            if key.endswith(("_ccc", "_pcc", "_rmse")):
                mean_row[key] = float(np.mean([row[key] for row in rows]))
        mean_row["run"] = ""
        rows.append(mean_row)
    return rows


def format_summary(results: list[FoldResult]) -> str:
    """A plain-text table of the per-fold validation CCC and its mean over folds."""
    if not results:
        return "no fold was run"
    emotions = results[0].emotions
    header = f"{'fold':>6} {'best epoch':>10} " + " ".join(f"{e + ' CCC':>12}" for e in emotions)
    lines = [header]
    for result in results:
        values = " ".join(f"{result.metrics[e]['ccc']:>12.3f}" for e in emotions)
        lines.append(f"{result.fold:>6} {result.best_epoch:>10} {values}")
    means = mean_ccc(results)
    lines.append(f"{'mean':>6} {'':>10} " + " ".join(f"{means[e]:>12.3f}" for e in emotions))
    return "\n".join(lines)


def mean_ccc(results: list[FoldResult]) -> dict[str, float]:
    """Validation CCC per trained emotion, averaged over the folds."""
    emotions = results[0].emotions
    return {e: float(np.mean([r.metrics[e]["ccc"] for r in results])) for e in emotions}


def ccc_line(results: list[FoldResult]) -> str:
    """``validation CCC: valence=0.512 arousal=0.601`` (mean over folds when several ran)."""
    return "validation CCC: " + " ".join(f"{e}={v:.3f}" for e, v in mean_ccc(results).items())
