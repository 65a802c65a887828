"""Prediction with trained fold models: windows, overlap averaging and fold fusion (SPEC §6).

A *fold model* is one run's ``best.pt`` (``{"model": state_dict, "config": dict, ...}``, written by
``base.training.trainer``) rebuilt as its config describes. Each fold model predicts every trial window by
window, exactly as validation does during training (``WindowDataset`` in evaluation mode, centre
crops, ``base.data.windowing.overlap_average``); the predictions of the runs that share an emotion are
then merged frame by frame with CCC centering (``base.training.metrics.ccc_centering``) and clipped to [-1, 1].

Runs are grouped by emotion: a run trained on ``valence`` (single- or multi-headed) serves valence
with its valence column, an ``arousal`` run serves arousal, a ``both`` run serves both. A
multi-headed run's second column is an auxiliary output weighted 1/10 in its loss and never selected
on, so it is not used.

Feature z-scoring for unlabeled (test) trials follows each run's ``test_statistics`` (recipe):
``Target_Set`` (the authors: the test trials' own statistics, the same for every fold) or
``Validation_Set`` (corrected: the run's fold's validation statistics, the ones that scaled the
windows which selected its best epoch). The validation-set command scores labeled trials with the
fold's ``Validation_Set`` statistics (``STATS_PARTITION``), as validation during training does.

The folds are merged with each run's ``fold_fusion`` style (``base.training.metrics.ccc_centering``).

A run trained with ``time_delay = d`` predicts at frame t the label of frame t + d; its output is
shifted back by d frames (the first value repeated) so that row t of a submission is frame t.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from base.data.dataset import WindowDataset, make_loader
from base.data.processed import LABEL, VALIDATION_SET, ProcessedDataset, file_stem
from base.data.windowing import overlap_average
from base.errors import UserError
from base.training.checkpointing import load_torch_file
from base.training.cross_validation import fold_trials, needs_statistics
from base.training.devices import loader_workers
from base.training.metrics import ccc_centering, evaluate_partition
from base.training.trainer import (
    LABEL_COLUMN,
    batch_inputs,
    inference_dtype,
    output_emotions,
    trained_emotions,
)
from configs import EMOTIONS, Config, Modality, from_dict, resolve_recipe
from model import IR50, assemble_model, plan_modalities

logger = logging.getLogger(__name__)

BEST_FILE = "best.pt"
STATS_PARTITION = VALIDATION_SET  # statistics that z-score the features of unlabeled trials (see above)
VALUE_RANGE = (-1.0, 1.0)

MeanStd = Mapping[str, Any]  # the content of mean_std_dict.pkl


# ----------------------------------------------------------------------------- fold models


@dataclass(frozen=True, eq=False)
class FoldModel:
    """One trained run, ready to predict.

    Attributes:
        source: the ``best.pt`` it was loaded from.
        config: the run's resolved config.
        model: the network with the run's best weights, in eval mode, on the CPU until used.
    """

    source: Path
    config: Config
    model: nn.Module

    @property
    def name(self) -> str:
        """The run folder's name (or the file's, for a loose file)."""
        return self.source.parent.name if self.source.name == BEST_FILE else self.source.stem

    @property
    def fold(self) -> int:
        return int(self.config.train.fold[0])

    @property
    def modalities(self) -> tuple[str, ...]:
        return tuple(self.config.model.modality)

    @property
    def output_emotions(self) -> tuple[str, ...]:
        """The emotion of each output column."""
        return output_emotions(self.config.model)

    @property
    def emotions(self) -> tuple[str, ...]:
        """The emotions this run is used for (its trained emotions)."""
        return trained_emotions(self.config.model)

    def column(self, emotion: str) -> int:
        """The output column that predicts ``emotion``."""
        return self.output_emotions.index(emotion)


def find_checkpoints(paths: Sequence[str | Path]) -> list[Path]:
    """The ``best.pt`` files named by ``paths``: run folders, ``best.pt`` files or folders of run folders.

    Raises:
        UserError: a path does not exist or holds no ``best.pt``; no path was given.
    """
    if not paths:
        raise UserError("no runs given: pass --runs with run folders (each holding best.pt) or best.pt files")
    found: list[Path] = []
    for given in paths:
        path = Path(given)
        if path.is_file():
            candidates = [path]
        elif (path / BEST_FILE).is_file():
            candidates = [path / BEST_FILE]
        elif path.is_dir():
            candidates = sorted(path.glob(f"*/{BEST_FILE}"))
            if not candidates:
                raise UserError(f"{path} holds no {BEST_FILE}, neither itself nor its run folders; "
                                "train with --save-model 1 or point --runs to a run folder")
        else:
            raise UserError(f"run {path} does not exist")
        for candidate in candidates:
            if candidate.resolve() not in {f.resolve() for f in found}:
                found.append(candidate)
    return found


def _backbone_for(config: Config) -> IR50 | None:
    # a blank backbone of the right kind: the run's state dict holds every weight, so no file is read
    if plan_modalities(config.model.modality).leader is not Modality.FRAME:
        return None
    return IR50(config.model.backbone_mode, input_size=config.model.crop_size).eval()


def load_fold_model(path: str | Path) -> FoldModel:
    """Rebuild the model of a run's ``best.pt`` (a ``checkpoint.pt`` also works: its best weights are used).

    Raises:
        UserError: the file is missing, unreadable, not a model file of this project, or its weights
            do not fit the model its config describes.
    """
    path = Path(path)
    data = load_torch_file(path, what="model file")
    state = data.get("best_model") if isinstance(data.get("best_model"), Mapping) else data.get("model")
    if not isinstance(state, Mapping) or not isinstance(data.get("config"), Mapping):
        raise UserError(f"{path} is not a model file of this project: it needs a 'model' state dict and its "
                        "'config' (the best.pt a training run writes)")
    try:
        config = from_dict(data["config"])
    except UserError as exc:
        raise UserError(f"the config stored in {path} does not fit this version of the code ({exc})") from None
    if len(config.train.fold) != 1:
        logger.warning("%s records folds %s; its statistics are taken from fold %d", path, config.train.fold,
                       config.train.fold[0])
    model = assemble_model(config, _backbone_for(config))
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        first_line = str(exc).strip().splitlines()[0]
        raise UserError(f"the weights in {path} do not fit the model its config describes ({first_line})") from None
    model.eval()
    return FoldModel(source=path, config=config, model=model)


def load_fold_models(paths: Sequence[str | Path]) -> list[FoldModel]:
    """``load_fold_model`` of every ``best.pt`` that ``find_checkpoints(paths)`` finds."""
    models = [load_fold_model(path) for path in find_checkpoints(paths)]
    for fold_model in models:
        logger.info("run %s: fold %d, %s, modalities %s", fold_model.name, fold_model.fold,
                    "+".join(fold_model.emotions), " ".join(fold_model.modalities))
    return models


def group_by_emotion(models: Sequence[FoldModel], allow_missing: bool = False) -> dict[str, list[int]]:
    """Emotion -> indices of the models that serve it, for valence and arousal.

    Raises:
        UserError: an emotion has no model (unless ``allow_missing``: it is then left out).
    """
    groups: dict[str, list[int]] = {}
    for emotion in EMOTIONS:
        members = [i for i, m in enumerate(models) if emotion in m.emotions]
        if members:
            groups[emotion] = members
            folds = [models[i].fold for i in members]
            if len(set(folds)) != len(folds):
                logger.info("%s: several runs share a fold (%s); all of them are merged", emotion, folds)
        elif not allow_missing:
            raise UserError(f"no run predicts {emotion}: add runs trained with --emotion {emotion} (or --emotion "
                            "both) to --runs; a submission needs valence and arousal")
    if not groups:
        raise UserError("none of the runs predicts valence or arousal")
    return groups


# ----------------------------------------------------------------------------- pure helpers


def align_to_frames(outputs: np.ndarray, time_delay: int) -> np.ndarray:
    """Undo a label time delay: row t becomes the output of frame t - d (the first row repeated).

    >>> align_to_frames(np.array([[1.0], [2.0], [3.0]]), 1)[:, 0].tolist()
    [1.0, 1.0, 2.0]
    """
    if time_delay < 0:
        raise ValueError(f"time_delay must be >= 0, got {time_delay}")
    if time_delay == 0 or len(outputs) == 0:
        return outputs
    index = np.maximum(np.arange(len(outputs)) - time_delay, 0)
    return outputs[index]


def fuse_folds(predictions: Sequence[np.ndarray], style: str = "clipped") -> np.ndarray:
    """Merge K fold predictions (each (n,)) of one trial and emotion: CCC centering (``style``: clipped
    or authors, see ``ccc_centering``), then clipped to [-1, 1].

    >>> np.round(fuse_folds([np.array([0.25, 0.75]), np.array([0.5, 1.75])]), 6).tolist()
    [0.375, 1.0]
    """
    if not predictions:
        raise ValueError("no prediction to fuse")
    lengths = {len(p) for p in predictions}
    if len(lengths) != 1:
        raise ValueError(f"fold predictions differ in length: {sorted(lengths)}")
    return ccc_centering(np.stack([np.asarray(p, dtype=np.float64) for p in predictions]), clip=VALUE_RANGE,
                         style=style)


def fold_fusion_style(models: Sequence[FoldModel]) -> str:
    """The ``fold_fusion`` style of a set of runs (the first run's, with a warning when they disagree)."""
    styles = [resolve_recipe(fm.config).train.fold_fusion for fm in models]
    if len(set(styles)) > 1:
        logger.warning("the runs were trained with different fold_fusion settings (%s); using %s (run %s)",
                       ", ".join(sorted(set(styles))), styles[0], models[0].name)
    return styles[0]


# ----------------------------------------------------------------------------- in-memory trials


class ArrayTrials:
    """In-memory trials that ``WindowDataset`` reads like a ``ProcessedDataset`` (``n_frames``, ``load``).

    Args:
        arrays: trial -> {modality name or file stem: (n, ...) array}; every array of a trial has
            the same length n. Landmarks may be (n, 68, 2) or (n, 136).
    """

    def __init__(self, arrays: Mapping[str, Mapping[str, np.ndarray]]) -> None:
        self._arrays = {trial: {file_stem(name): array for name, array in by_name.items()}
                        for trial, by_name in arrays.items()}
        self._n_frames = {}
        for trial, by_stem in self._arrays.items():
            lengths = {len(array) for array in by_stem.values()}
            if len(lengths) != 1:
                raise ValueError(f"trial {trial}: arrays of different lengths {sorted(lengths)}")
            self._n_frames[trial] = lengths.pop()

    def n_frames(self, trial: str) -> int:
        return self._n_frames[trial]

    def has_file(self, trial: str, modality: str) -> bool:
        return file_stem(modality) in self._arrays[trial]

    def load(self, trial: str, modality: str, mmap: bool = True) -> np.ndarray:
        stem = file_stem(modality)
        if stem not in self._arrays[trial]:
            raise UserError(f"trial '{trial}' has no {stem} features")
        array = self._arrays[trial][stem]
        return array.reshape(len(array), -1) if stem == file_stem(Modality.LANDMARK) else array


# ----------------------------------------------------------------------------- predicting


@torch.no_grad()
def predict_trials(
    fold_model: FoldModel,
    dataset: ProcessedDataset | ArrayTrials,
    trials: Sequence[str],
    mean_std: MeanStd | None,
    device: torch.device,
    batch_size: int | None = None,
    stats_partition: str | None = None,
    quiet: bool = True,
) -> dict[str, np.ndarray]:
    """Overlap-averaged outputs of one fold model on every trial (evaluation mode, centre crops).

    The model runs in the run's training precision where ``device`` supports it (``inference_dtype``),
    with the run's DataLoader workers (``num_workers``, -1: auto) and pinned memory on CUDA.

    Args:
        fold_model: the run.
        dataset: a processed dataset or in-memory trials.
        trials: trial names.
        mean_std: ``mean_std_dict.pkl`` content; needed when the run reads any feature but frames.
        device: where the model runs.
        batch_size: windows per forward pass (default: the run's training batch size).
        stats_partition: partition whose statistics of the run's fold z-score the features (default:
            the run's ``test_statistics``, for unlabeled trials).
        quiet: hide the progress bar.

    Returns:
        trial -> (n_frames, C) float64 outputs, column c predicting ``fold_model.output_emotions[c]``,
        aligned to the frames (``align_to_frames``).
    """
    config = resolve_recipe(fold_model.config)
    if needs_statistics(fold_model.modalities) and mean_std is None:
        raise UserError(f"run {fold_model.name} reads {' '.join(fold_model.modalities)}: its features need the "
                        "mean_std_dict.pkl of the dataset it was trained on")
    windows = WindowDataset(
        dataset, trials, fold_model.modalities, config.model.emotion,  # ArrayTrials reads like a dataset
        window_length=config.train.window_length, hop_length=config.train.hop_length,
        mean_std=mean_std if needs_statistics(fold_model.modalities) else None, fold=fold_model.fold,
        stats_partition=stats_partition or config.train.test_statistics, with_labels=False,
    )
    loader = make_loader(windows, batch_size=batch_size or config.train.batch_size, shuffle=False,
                         num_workers=loader_workers(config.train.num_workers, device),
                         pin_memory=device.type == "cuda")
    amp_dtype = inference_dtype(config.train.precision, device)
    model = fold_model.model.to(device).eval()
    pieces: dict[int, list[tuple[int, int, np.ndarray]]] = {}
    for batch in tqdm(loader, desc=f"predict {fold_model.name}", leave=False, disable=quiet):
        inputs = batch_inputs(batch, fold_model.modalities, device, config.model.crop_size, train=False)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            outputs = model(inputs)
        outputs = outputs.float().cpu().numpy()  # (B, T, C)
        for row, trial_index in enumerate(batch["trial_index"].tolist()):
            pieces.setdefault(trial_index, []).append(
                (int(batch["start"][row]), int(batch["length"][row]), outputs[row]))
    fold_model.model.to("cpu")
    predictions = {}
    for trial_index, trial in enumerate(trials):
        windows_of_trial = pieces[trial_index]
        starts = np.array([w[0] for w in windows_of_trial])
        lengths = np.array([w[1] for w in windows_of_trial])
        averaged = overlap_average(np.stack([w[2] for w in windows_of_trial]), starts,
                                   dataset.n_frames(trial), lengths)  # (n, C)
        predictions[trial] = align_to_frames(averaged, config.train.time_delay)
    return predictions


@dataclass
class EnsemblePrediction:
    """Per-run outputs and their per-emotion fusion for a list of trials.

    Attributes:
        trials: the trials, in order.
        models: the runs.
        groups: emotion -> indices of the runs that serve it.
        per_model: for each run, trial -> (n, C) outputs (empty for a run that serves no emotion).
        fused: emotion -> trial -> (n,) CCC-centred, clipped fusion of the group's runs.
    """

    trials: list[str]
    models: list[FoldModel]
    groups: dict[str, list[int]]
    per_model: list[dict[str, np.ndarray]]
    fused: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)

    def values(self, trial: str) -> np.ndarray:
        """(n, 2) valence and arousal of ``trial``; NaN in the column of an emotion no run predicts."""
        n_frames = len(next(iter(self.fused.values()))[trial])
        out = np.full((n_frames, len(EMOTIONS)), np.nan)
        for column, emotion in enumerate(EMOTIONS):
            if emotion in self.fused:
                out[:, column] = self.fused[emotion][trial]
        return out

    def model_values(self, index: int, emotion: str) -> dict[str, np.ndarray]:
        """trial -> (n,) output of run ``index`` for ``emotion``."""
        column = self.models[index].column(emotion)
        return {trial: outputs[:, column] for trial, outputs in self.per_model[index].items()}


def predict_ensemble(
    models: Sequence[FoldModel],
    dataset: ProcessedDataset | ArrayTrials,
    trials: Sequence[str],
    mean_std: MeanStd | None | Callable[[FoldModel], MeanStd | None],
    device: torch.device,
    batch_size: int | None = None,
    stats_partition: str | None = None,
    allow_missing_emotion: bool = False,
    quiet: bool = True,
) -> EnsemblePrediction:
    """Every run predicts every trial; the runs of each emotion are fused per trial (``fuse_folds``).

    Args:
        mean_std: the statistics for all runs, or a function giving each run's.
        allow_missing_emotion: leave out an emotion no run predicts instead of raising.
        (the others as in ``predict_trials``)
    """
    models = list(models)
    trials = list(trials)
    groups = group_by_emotion(models, allow_missing=allow_missing_emotion)
    used = sorted({i for members in groups.values() for i in members})
    per_model: list[dict[str, np.ndarray]] = [{} for _ in models]
    for i in tqdm(used, desc="runs", disable=quiet or len(used) < 2):
        statistics = mean_std(models[i]) if callable(mean_std) else mean_std
        per_model[i] = predict_trials(models[i], dataset, trials, statistics, device, batch_size,
                                      stats_partition, quiet)
    result = EnsemblePrediction(trials=trials, models=models, groups=groups, per_model=per_model)
    style = fold_fusion_style([models[i] for i in used])
    for emotion, members in groups.items():
        outputs = [result.model_values(i, emotion) for i in members]
        result.fused[emotion] = {trial: fuse_folds([o[trial] for o in outputs], style) for trial in trials}
    return result


def check_inputs(models: Sequence[FoldModel], dataset: ProcessedDataset, trials: Sequence[str],
                 quiet: bool = True) -> None:
    """Every trial has every modality any run reads, of equal lengths and finite (UserError if not)."""
    modalities = sorted({m for fold_model in models for m in fold_model.modalities})
    for trial in tqdm(trials, desc="checking trials", leave=False, disable=quiet):
        dataset.check_trial(trial, modalities, with_label=False)


def check_same_lengths(prediction_lengths: Mapping[str, int], expected: Mapping[str, int], source: str) -> None:
    """Every expected trial is predicted, with the expected number of frames (UserError if not).

    Args:
        prediction_lengths: trial -> frames the processed dataset holds.
        expected: trial -> frames of its video.
        source: where ``expected`` comes from, for the message.
    """
    missing = sorted(set(expected) - set(prediction_lengths))
    if missing:
        raise UserError(f"{len(missing)} test trial(s) of {source} are not in the processed dataset "
                        f"(e.g. {', '.join(missing[:3])}); rerun preprocessing.py on that database")
    wrong = [(t, prediction_lengths[t], n) for t, n in sorted(expected.items()) if prediction_lengths[t] != n]
    if wrong:
        trial, have, want = wrong[0]
        raise UserError(f"{len(wrong)} test trial(s) have a frame count in the processed dataset that differs from "
                        f"their video's (e.g. {trial}: {have} rows, video {want} frames); rerun preprocessing.py")


# ----------------------------------------------------------------------------- validation set


@dataclass(frozen=True)
class ModelScore:
    """The partition CCC of one run alone, and whether it trained on any of the scored trials."""

    name: str
    fold: int
    emotion: str
    ccc: float
    trained_on_scored_trials: bool


@dataclass(frozen=True)
class ValidationResult:
    """Partition CCC per run and of the merged runs, per emotion."""

    partition: str
    n_trials: int
    per_model: list[ModelScore]
    merged: dict[str, float]
    n_merged: dict[str, int]

    @property
    def optimistic(self) -> bool:
        return any(score.trained_on_scored_trials for score in self.per_model)


def trial_labels(dataset: ProcessedDataset, trials: Sequence[str]) -> dict[str, np.ndarray]:
    """trial -> (n, 2) float64 valence/arousal labels (UserError for an unlabeled trial)."""
    unlabeled = [t for t in trials if not dataset.is_labeled(t)]
    if unlabeled:
        raise UserError(f"trial {unlabeled[0]} has no labels; score the Validation_Set or Train_Set only")
    return {t: np.asarray(dataset.load(t, LABEL, mmap=False), dtype=np.float64).reshape(-1, 2) for t in trials}


def score_ensemble(prediction: EnsemblePrediction, labels: Mapping[str, np.ndarray],
                   training_trials: Callable[[FoldModel], set[str]], partition: str) -> ValidationResult:
    """Partition CCC (all trials concatenated) of every run alone and of the fused runs, per emotion.

    Args:
        prediction: ``predict_ensemble`` output.
        labels: trial -> (n, 2) labels as in label.npy.
        training_trials: the trials a run was trained on (to flag optimistic figures).
        partition: the scored partition's name, for the report.
    """
    trials = prediction.trials
    per_model: list[ModelScore] = []
    merged: dict[str, float] = {}
    for emotion, members in prediction.groups.items():
        column = LABEL_COLUMN[emotion]
        truth = {t: labels[t][:, column:column + 1] for t in trials}
        for i in members:
            fold_model = prediction.models[i]
            outputs = {t: v[:, None] for t, v in prediction.model_values(i, emotion).items()}
            ccc = evaluate_partition(outputs, truth, (emotion,))[emotion]["ccc"]
            seen = bool(training_trials(fold_model) & set(trials))
            per_model.append(ModelScore(fold_model.name, fold_model.fold, emotion, ccc, seen))
        fused = {t: prediction.fused[emotion][t][:, None] for t in trials}
        merged[emotion] = evaluate_partition(fused, truth, (emotion,))[emotion]["ccc"]
    n_merged = {emotion: len(members) for emotion, members in prediction.groups.items()}
    return ValidationResult(partition, len(trials), per_model, merged, n_merged)


def score_validation(models: Sequence[FoldModel], dataset: ProcessedDataset, partition: str = VALIDATION_SET,
                     device: torch.device | None = None, batch_size: int | None = None,
                     quiet: bool = True) -> tuple[ValidationResult, EnsemblePrediction]:
    """Predict a labeled partition with every run, fuse the folds per emotion and score them.

    What ``predict.py validation`` prints (and ``base.training.report`` tabulates): the partition CCC
    of each run alone and of the CCC-centred fusion of the runs of each emotion.
    """
    trials = dataset.partition_trials(partition)
    if not trials:
        raise UserError(f"the processed dataset {dataset.root} has no {partition} trials")
    check_inputs(models, dataset, trials, quiet)
    labels = trial_labels(dataset, trials)
    mean_std = dataset.mean_std() if any(needs_statistics(fm.modalities) for fm in models) else None
    prediction = predict_ensemble(models, dataset, trials, mean_std, device or torch.device("cpu"), batch_size,
                                  stats_partition=STATS_PARTITION, allow_missing_emotion=True, quiet=quiet)
    return score_ensemble(prediction, labels, fold_training_trials(dataset), partition), prediction


def fold_training_trials(dataset: ProcessedDataset) -> Callable[[FoldModel], set[str]]:
    """A function giving the training trials of a run's fold in ``dataset``."""
    cache: dict[int, set[str]] = {}

    def training(fold_model: FoldModel) -> set[str]:
        if fold_model.fold not in cache:
            cache[fold_model.fold] = set(fold_trials(dataset, fold_model.fold)[0])
        return cache[fold_model.fold]

    return training


def format_validation(result: ValidationResult) -> str:
    """A plain-text table: each run's CCC, then the merged CCC per emotion and one summary line."""
    merged_labels = {e: f"merged ({n} runs, CCC centering)" for e, n in result.n_merged.items()}
    width = max([len(s.name) for s in result.per_model] + [len(label) for label in merged_labels.values()])
    lines = [f"{result.partition}: {result.n_trials} trials, partition CCC (all trials concatenated)",
             f"{'run':<{width}} {'fold':>4} {'emotion':>8} {'CCC':>7}  trained on these trials"]
    for score in result.per_model:
        lines.append(f"{score.name:<{width}} {score.fold:>4} {score.emotion:>8} {score.ccc:>7.3f}  "
                     f"{'yes' if score.trained_on_scored_trials else 'no'}")
    for emotion, value in result.merged.items():
        lines.append(f"{merged_labels[emotion]:<{width}} {'':>4} {emotion:>8} {value:>7.3f}")
    if result.optimistic:
        lines.append("note: some runs trained on these trials (folds other than 0 train on the original "
                     "Validation_Set), so their figures and the merged one are optimistic")
    lines.append("merged validation CCC: " + " ".join(f"{e}={v:.3f}" for e, v in result.merged.items()))
    return "\n".join(lines)
