"""Where a training run writes its files, and the small writers for its CSV and JSON files.

One folder per (experiment, model, modalities, emotion, head, fold, stamp)::

    <save_path>/<experiment>_<model>_<mod1-mod2-...>_<emotion>_<head>_fold<k>_<stamp>/
        config.json           the resolved config (configs.save_config)
        history.csv           one row per epoch
        learning_curves.png   train loss and validation CCC per epoch
        traces.png            predicted vs true for a few validation trials
        metrics.json          the best epoch's validation metrics, overall and per trial
        checkpoint.pt         everything needed to resume (base.training.checkpointing)
        best.pt               the best model's state dict and config
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from base import atomic
from base.errors import UserError
from configs import Config


@dataclass(frozen=True)
class RunFolder:
    """Paths of the files of one run (one fold of one model)."""

    path: Path

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def config_json(self) -> Path:
        return self.path / "config.json"

    @property
    def history_csv(self) -> Path:
        return self.path / "history.csv"

    @property
    def learning_curves_png(self) -> Path:
        return self.path / "learning_curves.png"

    @property
    def traces_png(self) -> Path:
        return self.path / "traces.png"

    @property
    def metrics_json(self) -> Path:
        return self.path / "metrics.json"

    @property
    def checkpoint(self) -> Path:
        return self.path / "checkpoint.pt"

    @property
    def best(self) -> Path:
        return self.path / "best.pt"

    def create(self) -> RunFolder:
        self.path.mkdir(parents=True, exist_ok=True)
        return self


def _check_name_part(key: str, value: str) -> str:
    if not value or any(sep in value for sep in ("/", "\\", os.sep)) or value in (".", ".."):
        raise UserError(f"config key '{key}' must be a non-empty name without path separators, got '{value}'")
    return value


def experiment_prefix(config: Config) -> str:
    """``<experiment>_<model>_<modalities>_<emotion>_<head>``: the part shared by all folds."""
    m, t = config.model, config.train
    return "_".join([
        _check_name_part("experiment_name", t.experiment_name),
        _check_name_part("model_name", m.model_name),
        "-".join(m.modality),
        m.emotion,
        m.head,
    ])


def run_name(config: Config, fold: int) -> str:
    """The folder name of one fold's run."""
    return f"{experiment_prefix(config)}_fold{fold}_{_check_name_part('stamp', config.train.stamp)}"


def run_folder(config: Config, fold: int) -> RunFolder:
    """The run folder of ``fold`` under ``config.train.save_path`` (not created yet)."""
    return RunFolder(Path(config.train.save_path) / run_name(config, fold))


def cv_summary_path(config: Config) -> Path:
    """``<save_path>/<experiment>_..._<head>_<stamp>_cv_summary.csv``."""
    name = f"{experiment_prefix(config)}_{_check_name_part('stamp', config.train.stamp)}_cv_summary.csv"
    return Path(config.train.save_path) / name


# ----------------------------------------------------------------------------- writers


def _atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic.write_text(path, text)


def write_csv(rows: Iterable[Mapping[str, Any]], path: str | Path) -> None:
    """Write dict rows as CSV (columns in first-seen order), atomically."""
    rows = list(rows)
    columns: list[str] = []
    for row in rows:
        columns.extend(key for key in row if key not in columns)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    _atomic_write_text(Path(path), buffer.getvalue())


def read_csv(path: str | Path) -> list[dict[str, str]]:
    """The rows of a CSV written by ``write_csv`` (values as strings)."""
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def json_safe(value: Any) -> Any:
    """Replace NaN/inf by None and numpy scalars/tuples by plain types, recursively."""
    if isinstance(value, Mapping):
        return {str(key): json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(item) for item in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_json(data: Mapping[str, Any], path: str | Path) -> None:
    """Write ``data`` as indented JSON (NaN written as null), atomically."""
    _atomic_write_text(Path(path), json.dumps(json_safe(data), indent=2, sort_keys=True) + "\n")
