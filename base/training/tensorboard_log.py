"""Per-epoch scalars of a run as TensorBoard event files (``--tensorboard 1``): ``<run folder>/tensorboard/``.

The scalars are the rows of ``history.csv``, written from the same place: the train loss, the
validation CCC/PCC/RMSE of each emotion, the selection score, the learning rate, the number of
released backbone groups and the epoch's duration (``SCALAR_TAGS``; a history column not listed
there is written under ``history/<column>``), with the epoch as the step. View them with
``tensorboard --logdir RUNS``.

The events are written with the ``tensorboard`` package's own event-file writer, not with
``torch.utils.tensorboard``, which imports TensorFlow into the training process when it is installed
(seconds and hundreds of MiB). Each call writes one small event file and closes it, so nothing stays
open between epochs and a killed run loses nothing; TensorBoard reads all the files of the folder. A
run that turns the option on when resuming gets its earlier epochs written too.

TensorBoard is optional: without it, ``require_tensorboard`` (called by ``main.py`` before training)
says how to install it in one line.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from base.errors import UserError

FOLDER = "tensorboard"
EVENT_PREFIX = "events.out.tfevents."
STEP_COLUMN = "epoch"
SKIPPED_COLUMNS = frozenset({STEP_COLUMN, "improved"})
SCALAR_TAGS = {  # history.csv column -> TensorBoard tag (per-emotion metrics: see scalar_tag)
    "train_loss": "train/loss",
    "score": "validation/selection_score",
    "lr": "optimizer/learning_rate",
    "n_released": "backbone/released_groups",
    "seconds": "time/epoch_seconds",
}
METRIC_SUFFIXES = ("_ccc", "_pcc", "_rmse")


def require_tensorboard() -> None:
    """A one-line UserError when the optional ``tensorboard`` package is not installed."""
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        raise UserError("--tensorboard needs the tensorboard package: pip install tensorboard "
                        "(or run without --tensorboard)") from None


def scalar_tag(column: str) -> str:
    """The TensorBoard tag of a ``history.csv`` column.

    >>> scalar_tag("valence_ccc"), scalar_tag("lr"), scalar_tag("new_column")
    ('validation/valence_ccc', 'optimizer/learning_rate', 'history/new_column')
    """
    if column in SCALAR_TAGS:
        return SCALAR_TAGS[column]
    if column.endswith(METRIC_SUFFIXES):
        return f"validation/{column}"
    return f"history/{column}"


def epoch_scalars(row: Mapping[str, Any]) -> dict[str, float]:
    """tag -> value of one history row (its numeric columns but the epoch itself and the improved flag)."""
    scalars = {}
    for column, value in row.items():
        if column in SKIPPED_COLUMNS or isinstance(value, (str, bytes)) or value is None:
            continue
        try:
            scalars[scalar_tag(column)] = float(value)
        except (TypeError, ValueError):
            continue
    return scalars


def event_files(folder: Path) -> list[Path]:
    return sorted(folder.glob(EVENT_PREFIX + "*")) if folder.is_dir() else []


def write_rows(folder: Path, rows: Sequence[Mapping[str, Any]]) -> Path:
    """Write the scalars of ``rows`` (step = their epoch) into one new event file of ``folder``."""
    require_tensorboard()
    from tensorboard.compat.proto.event_pb2 import Event
    from tensorboard.compat.proto.summary_pb2 import Summary
    from tensorboard.summary.writer.event_file_writer import EventFileWriter

    folder.mkdir(parents=True, exist_ok=True)
    first_epoch = int(rows[0][STEP_COLUMN])
    # the epoch in the name keeps two files written within the same second apart
    writer = EventFileWriter(str(folder), filename_suffix=f".epoch{first_epoch:04d}")
    try:
        for row in rows:
            values = [Summary.Value(tag=tag, simple_value=value) for tag, value in epoch_scalars(row).items()]
            writer.add_event(Event(wall_time=time.time(), step=int(row[STEP_COLUMN]), summary=Summary(value=values)))
    finally:
        writer.close()
    return Path(writer.get_logdir())


def log_history(run_dir: str | Path, history: Sequence[Mapping[str, Any]], enabled: bool = True) -> None:
    """After an epoch: write its history row to ``<run_dir>/tensorboard/`` (every row when none was yet)."""
    if not enabled or not history:
        return
    folder = Path(run_dir) / FOLDER
    write_rows(folder, history if not event_files(folder) else history[-1:])
