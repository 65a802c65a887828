"""The paper's results table from a folder of run folders (SPEC §5, §6, §7).

``python -m base.report RUNS [--output DIR]`` finds every run folder under RUNS (a folder holding the
``config.json`` a training run writes, ``base.training.run_folder``), groups the runs by model
(model name and head), modalities, trained emotion and recipe (and by experiment name and stamp, so
that two series of runs never mix), and writes into DIR (default RUNS):

    results.md    per group and reported emotion: the best-epoch validation CCC of each fold, the
                  mean and sample standard deviation (n - 1) over the finished folds, the merged-fold
                  CCC (``predict.py validation``: every fold's model on the Validation_Set, fused by
                  CCC centering) where all six folds finished, and the published figures (SPEC §7);
                  then every missing, unfinished or duplicated run
    results.csv   the same table, one row per group and emotion
    results.png   one bar group per model and emotion: the folds, their mean (± std) and the merged CCC,
                  the paper's fold-0 validation figure as a black line

A fold counts only when its run finished (``metrics.json`` exists); a missing or unfinished fold is
listed, never averaged, and the mean says over how many folds it was taken. Runs of the job array
(``base.training.job_array``) also name the array index to resubmit.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from base.errors import UserError, run_cli, setup_logging
from base.training.job_array import N_FOLDS, N_TASKS, VARIANT_MODALITIES, array_task
from base.training.run_folder import RunFolder, read_csv, write_csv
from configs import EMOTIONS

logger = logging.getLogger(__name__)

DEFAULT_RECIPE = "corrected"  # runs written before the recipe key existed behaved as corrected (configs.from_dict)
RESULTS_MD, RESULTS_CSV, RESULTS_PNG = "results.md", "results.csv", "results.png"
FUSION_MODALITIES = VARIANT_MODALITIES["fusion"]
VISUAL_MODALITIES = VARIANT_MODALITIES["unimodal"]


@dataclass(frozen=True)
class Published:
    """Figures of the paper for one model (SPEC §7); None where the paper gives none."""

    validation_fold0: float | None
    test_fold0: float | None
    test_merged: float | None


# (model name, head, modalities) -> emotion -> the paper's figures
PUBLISHED: dict[tuple[str, str, tuple[str, ...]], dict[str, Published]] = {
    ("2d1d", "sh", FUSION_MODALITIES): {
        "valence": Published(0.469, 0.455, 0.463),
        "arousal": Published(0.649, 0.480, 0.492),
    },
    ("2d1d", "sh", VISUAL_MODALITIES): {
        "valence": Published(None, 0.267, None),
        "arousal": Published(None, 0.303, None),
    },
}
BASELINE_VALIDATION = {"valence": 0.210, "arousal": 0.230}  # the challenge baseline (SPEC §7)


# ----------------------------------------------------------------------------- runs


@dataclass(frozen=True, order=True)
class GroupKey:
    """What the folds of one cross-validation share."""

    model: str  # model name
    head: str
    modalities: tuple[str, ...]
    emotion: str  # trained emotion: valence, arousal or both
    recipe: str
    experiment: str
    stamp: str

    @property
    def label(self) -> str:
        """``<experiment>_<model>_<modalities>_<emotion>_<head>_fold*_<stamp>``: the run folders' pattern."""
        return "_".join([self.experiment, self.model, "-".join(self.modalities), self.emotion, self.head,
                         "fold*", self.stamp])

    @property
    def model_label(self) -> str:
        return self.model if self.head == "sh" else f"{self.model} ({self.head})"

    @property
    def reported_emotions(self) -> tuple[str, ...]:
        return EMOTIONS if self.emotion == "both" else (self.emotion,)


@dataclass(frozen=True)
class Run:
    """One run folder as found on disk."""

    path: Path
    group: GroupKey
    fold: int
    finished: bool
    ccc: dict[str, float] = field(default_factory=dict)  # reported emotion -> best-epoch validation CCC
    best_epoch: int | None = None
    epochs_done: int = 0  # rows of history.csv
    best_so_far: dict[str, float] = field(default_factory=dict)  # unfinished runs: best history row's CCC


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"{path} could not be read ({exc}); remove the run folder or rerun it") from None
    if not isinstance(data, dict):
        raise UserError(f"{path} does not hold a JSON object; remove the run folder or rerun it")
    return data


def group_of(config: Mapping[str, Any]) -> GroupKey:
    """The group of a run from its ``config.json`` (a run without ``train.recipe`` predates the recipes: corrected)."""
    model, train = config.get("model", {}), config.get("train", {})
    return GroupKey(
        model=str(model.get("model_name", "2d1d")),
        head=str(model.get("head", "sh")),
        modalities=tuple(model.get("modality", ())),
        emotion=str(model.get("emotion", "")),
        recipe=str(train.get("recipe", DEFAULT_RECIPE)),
        experiment=str(train.get("experiment_name", "")),
        stamp=str(train.get("stamp", "")),
    )


def _history(path: Path) -> list[dict[str, str]]:
    try:
        return read_csv(path) if path.is_file() else []
    except (OSError, ValueError):
        return []


def _best_so_far(history: list[dict[str, str]], emotions: Sequence[str]) -> dict[str, float]:
    """The CCC of the history row with the best selection score (the trainer's rule)."""
    scored = [row for row in history if row.get("score") not in (None, "")]
    if not scored:
        return {}
    best = max(scored, key=lambda row: float(row["score"]))
    return {e: float(best[f"{e}_ccc"]) for e in emotions if best.get(f"{e}_ccc") not in (None, "")}


def read_run(path: Path) -> Run:
    """A run folder's group, fold and (when finished) its best-epoch validation CCC per reported emotion."""
    run = RunFolder(path)
    config = _read_json(run.config_json)
    group = group_of(config)
    folds = config.get("train", {}).get("fold", [])
    folds = [folds] if isinstance(folds, int) else list(folds)
    if len(folds) != 1:
        raise UserError(f"{run.config_json} names folds {folds}; a run folder holds exactly one fold")
    history = _history(run.history_csv)
    if not run.metrics_json.is_file():
        return Run(path, group, int(folds[0]), finished=False, epochs_done=len(history),
                   best_so_far=_best_so_far(history, group.reported_emotions))
    metrics = _read_json(run.metrics_json)
    validation = metrics.get("validation", {})
    try:
        ccc = {e: float(validation[e]["ccc"]) for e in group.reported_emotions}
    except (KeyError, TypeError, ValueError):
        raise UserError(f"{run.metrics_json} has no validation CCC for {', '.join(group.reported_emotions)}; "
                        f"rerun that fold") from None
    return Run(path, group, int(metrics.get("fold", folds[0])), finished=True, ccc=ccc,
               best_epoch=metrics.get("best_epoch"), epochs_done=len(history))


def is_run_config(path: Path) -> bool:
    """Whether ``path`` is the ``config.json`` of a training run (it has model and train sections)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and isinstance(data.get("model"), dict) and isinstance(data.get("train"), dict)


def find_runs(root: str | Path) -> list[Run]:
    """Every run folder under ``root`` (the folders holding a training ``config.json``), sorted by path."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"runs folder {root} does not exist")
    return [read_run(path.parent) for path in sorted(root.rglob("config.json")) if is_run_config(path)]


# ----------------------------------------------------------------------------- statistics


def fold_mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n - 1) of the folds' CCC; std is NaN for one fold, both for none."""
    array = np.asarray(values, dtype=np.float64)
    if array.size == 0:
        return math.nan, math.nan
    return float(array.mean()), float(array.std(ddof=1)) if array.size > 1 else math.nan


def array_index(group: GroupKey, fold: int) -> int | None:
    """The job-array index that trains ``fold`` of ``group``, when the group is one of the array's."""
    if (group.model, group.head) != ("2d1d", "sh"):
        return None
    for index in range(N_TASKS):
        task = array_task(index)
        if (task.emotion, task.fold, task.modalities) == (group.emotion, fold, group.modalities):
            return index
    return None


def array_groups(group: GroupKey) -> list[GroupKey]:
    """The four groups of the job array that share ``group``'s recipe, experiment and stamp."""
    return sorted(GroupKey(group.model, group.head, modalities, emotion, group.recipe, group.experiment,
                           group.stamp)
                  for modalities in VARIANT_MODALITIES.values() for emotion in EMOTIONS)


@dataclass
class GroupResult:
    """The folds of one group, what is missing, and the merged-fold CCC."""

    key: GroupKey
    finished: dict[int, Run] = field(default_factory=dict)
    unfinished: dict[int, list[Run]] = field(default_factory=dict)
    duplicates: dict[int, list[Run]] = field(default_factory=dict)
    merged: dict[str, float] = field(default_factory=dict)
    merged_note: str = ""

    @property
    def complete(self) -> bool:
        return len(self.finished) == N_FOLDS

    def missing_folds(self) -> list[int]:
        """Folds with neither a finished nor an unfinished run (duplicated folds are listed apart)."""
        return [f for f in range(N_FOLDS) if f not in self.finished and f not in self.unfinished
                and f not in self.duplicates]

    def fold_values(self, emotion: str) -> dict[int, float]:
        return {fold: run.ccc[emotion] for fold, run in sorted(self.finished.items())}


def _display_order(key: GroupKey) -> tuple:
    """Series, then model, then the visual model before the fusion, then valence, arousal, both."""
    emotion = (*EMOTIONS, "both").index(key.emotion) if key.emotion in (*EMOTIONS, "both") else 3
    return (key.experiment, key.stamp, key.recipe, key.model, key.head, len(key.modalities), key.modalities, emotion)


def group_runs(runs: Sequence[Run]) -> list[GroupResult]:
    """Runs per group; groups of the job array that have no run at all are included (all folds missing)."""
    by_group: dict[GroupKey, list[Run]] = defaultdict(list)
    for run in runs:
        by_group[run.group].append(run)
    keys = set(by_group)
    for key in list(keys):
        if any(array_index(key, fold) is not None for fold in range(N_FOLDS)):
            keys.update(array_groups(key))
    results = []
    for key in sorted(keys, key=_display_order):
        result = GroupResult(key)
        finished: dict[int, list[Run]] = defaultdict(list)
        for run in by_group.get(key, []):
            (finished[run.fold] if run.finished else result.unfinished.setdefault(run.fold, [])).append(run)
        for fold, fold_runs in finished.items():
            if len(fold_runs) == 1:
                result.finished[fold] = fold_runs[0]
            else:
                result.duplicates[fold] = fold_runs
        for fold in list(result.unfinished):
            if fold in result.finished or fold in result.duplicates:  # a finished copy exists: not missing
                del result.unfinished[fold]
        results.append(result)
    return results


# ----------------------------------------------------------------------------- merged folds


def add_merged_ccc(results: Sequence[GroupResult], dataset_path: str | None, device: str = "auto",
                   batch_size: int | None = None, quiet: bool = True) -> None:
    """Fill ``merged`` of every complete group: ``predict.py validation`` on its six runs."""
    import torch

    from base.data.processed import VALIDATION_SET, ProcessedDataset
    from base.prediction.prediction import load_fold_models, score_validation
    from base.training.devices import resolve_device

    torch_device: torch.device | None = None
    datasets: dict[str, ProcessedDataset] = {}
    for result in results:
        if not result.complete:
            result.merged_note = "needs all 6 folds"
            continue
        runs = [result.finished[f] for f in range(N_FOLDS)]
        if not all(RunFolder(run.path).best.is_file() for run in runs):
            result.merged_note = "a run has no best.pt"
            continue
        path = dataset_path or _dataset_of(runs)
        if not path or not Path(path).is_dir():
            result.merged_note = f"dataset {path or '(none named)'} not found: pass --dataset-path"
            continue
        if path not in datasets:
            datasets[path] = ProcessedDataset(path)
        torch_device = torch_device or resolve_device(device)
        logger.info("merged-fold CCC of %s on %s", result.key.label, path)
        models = load_fold_models([run.path for run in runs])
        score, _ = score_validation(models, datasets[path], VALIDATION_SET, torch_device, batch_size, quiet)
        result.merged = {e: float(score.merged[e]) for e in result.key.reported_emotions if e in score.merged}


def _dataset_of(runs: Sequence[Run]) -> str:
    named = {_read_json(RunFolder(run.path).config_json).get("train", {}).get("dataset_path", "") for run in runs}
    return named.pop() if len(named) == 1 else ""


# ----------------------------------------------------------------------------- table


def published_for(key: GroupKey, emotion: str) -> Published | None:
    return PUBLISHED.get((key.model, key.head, key.modalities), {}).get(emotion)


def table_rows(results: Sequence[GroupResult]) -> list[dict[str, Any]]:
    """One row per group and reported emotion (the columns of results.csv)."""
    rows = []
    for result in results:
        for emotion in result.key.reported_emotions:
            values = result.fold_values(emotion)
            mean, std = fold_mean_std(list(values.values()))
            paper = published_for(result.key, emotion)
            row: dict[str, Any] = {
                "model": result.key.model_label,
                "modalities": "-".join(result.key.modalities),
                "trained": result.key.emotion,
                "recipe": result.key.recipe,
                "emotion": emotion,
            }
            row.update({f"fold{f}": values.get(f, "") for f in range(N_FOLDS)})
            row.update({
                "n_folds": len(values),
                "mean": mean if values else "",
                "std": std if len(values) > 1 else "",
                "merged": result.merged.get(emotion, ""),
                "paper_validation_fold0": paper.validation_fold0 if paper and paper.validation_fold0 else "",
                "paper_test_fold0": paper.test_fold0 if paper and paper.test_fold0 else "",
                "paper_test_merged": paper.test_merged if paper and paper.test_merged else "",
                "runs": result.key.label,
            })
            rows.append(row)
    return rows


def problems(results: Sequence[GroupResult]) -> list[str]:
    """One line per missing, unfinished or duplicated run."""
    lines = []
    for result in results:
        label = result.key.label
        for fold in result.missing_folds():
            index = array_index(result.key, fold)
            hint = f" (job array index {index})" if index is not None else ""
            lines.append(f"missing: {label.replace('fold*', f'fold{fold}')}{hint}")
        for _fold, runs in sorted(result.unfinished.items()):
            for run in runs:
                so_far = ", ".join(f"{e} {v:.3f}" for e, v in run.best_so_far.items())
                detail = f"{run.epochs_done} epochs done" + (f", best validation CCC so far: {so_far}" if so_far else "")
                lines.append(f"unfinished (no metrics.json): {run.path} ({detail})")
        for fold, runs in sorted(result.duplicates.items()):
            lines.append(f"duplicate fold {fold} of {label}, left out of the mean: "
                         + ", ".join(str(run.path) for run in runs))
    return lines


def _cell(value: Any, digits: int = 3) -> str:
    if value == "" or value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def format_markdown(results: Sequence[GroupResult], rows: Sequence[Mapping[str, Any]], runs_root: Path) -> str:
    """results.md: the table, the notes and the list of missing/unfinished runs."""
    header = (["model", "modalities", "trained", "recipe", "emotion"] + [f"fold {f}" for f in range(N_FOLDS)]
              + ["folds", "mean", "std", "merged", "paper val fold 0", "paper test fold 0", "paper test merged"])
    lines = [f"# Validation CCC of the runs under {runs_root}", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [row["model"], row["modalities"], row["trained"], row["recipe"], row["emotion"]]
        cells += [_cell(row[f"fold{f}"]) for f in range(N_FOLDS)]
        cells += [f"{row['n_folds']}/{N_FOLDS}", _cell(row["mean"]), _cell(row["std"]), _cell(row["merged"]),
                  _cell(row["paper_validation_fold0"]), _cell(row["paper_test_fold0"]),
                  _cell(row["paper_test_merged"])]
        lines.append("| " + " | ".join(cells) + " |")
    notes = [
        "- fold k: best-epoch validation CCC of that fold's run (all validation trials concatenated); "
        "mean and std (sample, n - 1) over the finished folds only.",
        "- merged: every fold's model predicts the original Validation_Set and the folds are fused by CCC "
        "centering (`predict.py validation`); folds 1-5 trained on those trials, so it is optimistic.",
        "- paper (SPEC §7): validation of fold 0 and test-set figures of the 2d1d model; the challenge "
        f"baseline's validation CCC is valence {BASELINE_VALIDATION['valence']:.3f}, "
        f"arousal {BASELINE_VALIDATION['arousal']:.3f}.",
    ]
    unmerged = [f"{r.key.label}: {r.merged_note}" for r in results if r.merged_note and r.complete]
    if unmerged:
        notes.append("- merged CCC not computed for " + "; ".join(unmerged) + ".")
    lines += ["", *notes, "", "## Missing and unfinished runs", ""]
    found = problems(results)
    lines += [f"- {line}" for line in found] if found else ["none: every group has its 6 folds"]
    return "\n".join(lines) + "\n"


def plot_results(rows: Sequence[Mapping[str, Any]], path: Path) -> None:
    """One bar group per model and emotion: the folds, their mean (± std), the merged CCC; the paper as a line."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(max(6.0, 1.9 * len(rows) + 2), 4.5))
    FigureCanvasAgg(figure)
    axes = figure.subplots()
    n_bars = N_FOLDS + 2
    width = 0.8 / n_bars
    colours = [f"C{f}" for f in range(N_FOLDS)]
    labelled: set[str] = set()

    def once(label: str) -> str | None:  # each legend entry once
        if label in labelled:
            return None
        labelled.add(label)
        return label

    for x, row in enumerate(rows):
        for f in range(N_FOLDS):
            if row[f"fold{f}"] != "":
                axes.bar(x - 0.4 + (f + 0.5) * width, row[f"fold{f}"], width, color=colours[f],
                         label=once(f"fold {f}"))
        if row["mean"] != "":
            std = row["std"] if row["std"] != "" else 0.0
            axes.bar(x - 0.4 + (N_FOLDS + 0.5) * width, row["mean"], width, yerr=std, color="0.45", capsize=3,
                     label=once("mean ± std"))
        if row["merged"] != "":
            axes.bar(x - 0.4 + (N_FOLDS + 1.5) * width, row["merged"], width, color="0.15",
                     label=once("merged folds"))
        if row["paper_validation_fold0"] != "":
            axes.hlines(row["paper_validation_fold0"], x - 0.45, x + 0.45, colors="black", linestyles="--",
                        label=once("paper, validation fold 0"))
    axes.set_xticks(range(len(rows)))
    axes.set_xticklabels([f"{row['model']} {row['modalities']}\n{row['emotion']} ({row['recipe']})" for row in rows],
                         fontsize=8)
    axes.set_ylabel("validation CCC")
    axes.axhline(0.0, color="black", linewidth=0.5)
    handles, labels = axes.get_legend_handles_labels()
    if handles:
        axes.legend(fontsize=7, ncol=3)
    figure.tight_layout()
    figure.savefig(path, dpi=100)


@dataclass(frozen=True)
class Report:
    """What ``write_report`` wrote."""

    rows: list[dict[str, Any]]
    problems: list[str]
    markdown: Path
    csv: Path
    png: Path


def write_report(runs_root: str | Path, output: str | Path | None = None, merged: bool = True,
                 dataset_path: str | None = None, device: str = "auto", batch_size: int | None = None,
                 quiet: bool = True) -> Report:
    """Find the runs under ``runs_root``, tabulate them, and write results.md/.csv/.png into ``output``."""
    runs_root = Path(runs_root)
    runs = find_runs(runs_root)
    if not runs:
        raise UserError(f"no run folder (a folder with the config.json of a training run) under {runs_root}")
    results = group_runs(runs)
    if merged:
        add_merged_ccc(results, dataset_path, device, batch_size, quiet)
    rows = table_rows(results)
    output = Path(output) if output else runs_root
    output.mkdir(parents=True, exist_ok=True)
    report = Report(rows=rows, problems=problems(results), markdown=output / RESULTS_MD, csv=output / RESULTS_CSV,
                    png=output / RESULTS_PNG)
    report.markdown.write_text(format_markdown(results, rows, runs_root))
    write_csv(rows, report.csv)
    plot_results(rows, report.png)
    return report


# ----------------------------------------------------------------------------- command line


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m base.report",
        description="The results table of a folder of run folders: per-fold validation CCC, mean, std, "
                    "merged-fold CCC and the paper's figures (results.md, results.csv, results.png).",
    )
    parser.add_argument("runs", metavar="RUNS", help="folder holding the run folders (searched recursively)")
    parser.add_argument("--output", metavar="DIR", default=None, help="where to write the results (default: RUNS)")
    parser.add_argument("--dataset-path", metavar="OUT", default=None,
                        help="processed dataset for the merged-fold CCC (default: the one the runs name)")
    parser.add_argument("--no-merged", action="store_true",
                        help="skip the merged-fold CCC (it runs the six models of each complete group)")
    parser.add_argument("--device", default="auto", help="device of the merged-fold prediction (default: auto)")
    parser.add_argument("--batch-size", type=int, default=None, metavar="N",
                        help="windows per forward pass (default: each run's training batch size)")
    parser.add_argument("--quiet", action="store_true", help="warnings only, no progress bars")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.quiet)
    if args.batch_size is not None and args.batch_size <= 0:
        raise UserError(f"--batch-size must be positive, got {args.batch_size}")
    report = write_report(args.runs, args.output, merged=not args.no_merged, dataset_path=args.dataset_path,
                          device=args.device, batch_size=args.batch_size, quiet=args.quiet)
    print(report.markdown.read_text(), end="")
    print(f"wrote {report.markdown}, {report.csv} and {report.png}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
