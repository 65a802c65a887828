"""The ABAW2 valence-arousal submission: one ``<trial>.txt`` per test trial, and its validator (SPEC §6).

A file has the header ``valence,arousal`` and one line per video frame with the two predicted values in
[-1, 1]. The validator checks a submission folder against the expected frame count of every test trial,
taken either from the videos of the raw database (``expected_from_database``: what the challenge counts)
or from a processed dataset (``expected_from_dataset``: its test trials hold every video frame), and
reports every problem it finds, one sentence each.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from base import atomic
from base.data.processed import ProcessedDataset
from base.errors import UserError
from base.preprocessing.database import TEST_PARTITION, DatabaseLayout, discover_trials

logger = logging.getLogger(__name__)

HEADER = "valence,arousal"
N_COLUMNS = 2
VALUE_RANGE = (-1.0, 1.0)
SUFFIX = ".txt"
DECIMALS = 6  # printed digits after the point: finer than any annotation (3 decimals)
MAX_ROWS_QUOTED = 3  # row numbers quoted per kind of problem in one file


# ----------------------------------------------------------------------------- writing


def format_rows(values: np.ndarray) -> str:
    """The text of one submission file: the header, then ``valence,arousal`` per frame.

    Args:
        values: (n_frames, 2) valence and arousal.

    >>> format_rows(np.array([[0.5, -1.0]]))
    'valence,arousal\\n0.500000,-1.000000\\n'
    """
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 2 or values.shape[1] != N_COLUMNS:
        raise ValueError(f"expected (n_frames, 2) valence/arousal values, got shape {values.shape}")
    lines = [HEADER, *(f"{v:.{DECIMALS}f},{a:.{DECIMALS}f}" for v, a in values)]
    return "\n".join(lines) + "\n"


def write_trial_file(folder: str | Path, trial: str, values: np.ndarray) -> Path:
    """Write ``folder/<trial>.txt`` atomically (temporary file, then rename); returns its path.

    Raises:
        UserError: the values are not finite or lie outside [-1, 1] (a bug upstream, never written).
    """
    values = np.asarray(values, dtype=np.float64)
    if not np.isfinite(values).all():
        raise UserError(f"the predictions of trial {trial} contain NaN or infinite values; nothing was written")
    low, high = VALUE_RANGE
    if values.size and (values.min() < low or values.max() > high):
        raise UserError(f"the predictions of trial {trial} lie outside [{low:g}, {high:g}]; clip them first")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{trial}{SUFFIX}"
    atomic.write_text(path, format_rows(values))
    return path


def write_submission(folder: str | Path, predictions: Mapping[str, np.ndarray]) -> list[Path]:
    """Write one file per trial of ``predictions`` (trial -> (n_frames, 2)) into ``folder``."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise UserError(f"submission output {folder} is a file; give a folder (it is created if missing)")
    return [write_trial_file(folder, trial, predictions[trial]) for trial in sorted(predictions)]


# ----------------------------------------------------------------------------- what is expected


def expected_from_database(database: str | Path, layout: DatabaseLayout | None = None) -> dict[str, int]:
    """Test trial -> number of frames of its video, for every test trial of a raw database.

    A test trial is a ``cropped_aligned`` folder that no annotation names (SPEC §1), or one the
    ``layout``'s test list names (later releases); its video is found as preprocessing finds it
    (``base.preprocessing.database``). Each video is probed once (``_left``/``_right`` trials share it).

    Raises:
        UserError: the database has no test trial, or a test trial has no video.
    """
    from base.preprocessing.media import probe_video

    trials = [t for t in discover_trials(database, layout) if t.partition == TEST_PARTITION]
    if not trials:
        raise UserError(f"database {database} has no test trials (cropped_aligned folders without an annotation)")
    counts: dict[str, int] = {}
    probed: dict[Path, int] = {}
    for trial in trials:
        if trial.video_path is None:
            raise UserError(f"test trial {trial.name} has no video {trial.video}.* in the video folders of "
                            f"{database}, so its frame count is unknown")
        if trial.video_path not in probed:
            probed[trial.video_path] = probe_video(trial.video_path).n_frames
        counts[trial.name] = probed[trial.video_path]
    return counts


def expected_from_dataset(dataset: ProcessedDataset | str | Path) -> dict[str, int]:
    """Test trial -> frames, from a processed dataset (its test trials hold one row per video frame).

    Raises:
        UserError: the dataset has no test partition or it is empty.
    """
    if not isinstance(dataset, ProcessedDataset):
        dataset = ProcessedDataset(dataset)
    trials = dataset.partition_trials(dataset.test_partition)
    if not trials:
        raise UserError(f"the processed dataset {dataset.root} lists no test trials ({dataset.test_partition})")
    return {trial: dataset.n_frames(trial) for trial in trials}


# ----------------------------------------------------------------------------- validation


@dataclass
class ValidationReport:
    """The outcome of ``validate_submission``: one sentence per problem, and what was fine."""

    folder: Path
    n_expected: int
    n_valid_files: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        """One line: valid, or how many problems."""
        if self.ok:
            return f"submission {self.folder} is valid: {self.n_valid_files} of {self.n_expected} trial files checked"
        return (f"submission {self.folder} is INVALID: {len(self.problems)} problem(s); "
                f"{self.n_valid_files} of {self.n_expected} trial files are fine")


def _quote_rows(rows: list[int], n_total: int) -> str:
    shown = ", ".join(str(r) for r in rows[:MAX_ROWS_QUOTED])
    more = f" and {n_total - MAX_ROWS_QUOTED} more" if n_total > MAX_ROWS_QUOTED else ""
    return f"{shown}{more}"


def check_trial_text(name: str, text: str, n_frames: int) -> list[str]:
    """Problems of one submission file's text (empty when it is valid).

    Args:
        name: the file name, for the messages.
        text: the file's content.
        n_frames: the number of video frames, i.e. of value lines, the trial must have.
    """
    lines = text.splitlines()
    while lines and not lines[-1].strip():  # a trailing blank line is harmless
        lines.pop()
    if not lines:
        return [f"{name} is empty; it needs the header '{HEADER}' and {n_frames} value lines"]
    problems = []
    header = lines[0].strip().lstrip("\ufeff")
    if header != HEADER:
        problems.append(f"{name} has the header '{header[:40]}', expected '{HEADER}'")
    rows = lines[1:]
    if len(rows) != n_frames:
        problems.append(f"{name} has {len(rows)} value lines, expected {n_frames} (one per video frame)")
    malformed: list[int] = []
    not_finite: list[int] = []
    out_of_range: list[int] = []
    counts = {"malformed": 0, "not_finite": 0, "out_of_range": 0}
    low, high = VALUE_RANGE
    for line_number, row in enumerate(rows, start=2):
        fields = row.split(",")
        try:
            if len(fields) != N_COLUMNS:
                raise ValueError
            values = [float(f) for f in fields]
        except ValueError:
            counts["malformed"] += 1
            malformed.append(line_number)
            continue
        if not all(math.isfinite(v) for v in values):
            counts["not_finite"] += 1
            not_finite.append(line_number)
        elif any(v < low or v > high for v in values):
            counts["out_of_range"] += 1
            out_of_range.append(line_number)
    if counts["malformed"]:
        problems.append(f"{name}: {counts['malformed']} line(s) are not two comma-separated numbers "
                        f"(line {_quote_rows(malformed, counts['malformed'])})")
    if counts["not_finite"]:
        problems.append(f"{name}: {counts['not_finite']} line(s) hold NaN or infinite values "
                        f"(line {_quote_rows(not_finite, counts['not_finite'])})")
    if counts["out_of_range"]:
        problems.append(f"{name}: {counts['out_of_range']} line(s) hold values outside [{low:g}, {high:g}] "
                        f"(line {_quote_rows(out_of_range, counts['out_of_range'])})")
    return problems


def validate_submission(folder: str | Path, expected: Mapping[str, int]) -> ValidationReport:
    """Check a submission folder: every trial has a file, with the header, the row count and valid values.

    Args:
        folder: the submission folder.
        expected: trial -> number of video frames (``expected_from_database`` or ``expected_from_dataset``).

    Returns:
        The report; files for trials outside ``expected`` are problems too.

    Raises:
        UserError: the folder does not exist.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"submission folder {folder} does not exist")
    report = ValidationReport(folder=folder, n_expected=len(expected))
    present = {path.stem: path for path in folder.iterdir() if path.is_file() and path.suffix == SUFFIX}
    missing = sorted(set(expected) - set(present))
    for trial in missing:
        report.problems.append(f"missing file {trial}{SUFFIX} for test trial {trial}")
    for trial in sorted(set(present) - set(expected)):
        report.problems.append(f"unexpected file {trial}{SUFFIX}: {trial} is not a test trial")
    for trial in sorted(set(expected) & set(present)):
        path = present[trial]
        try:
            text = path.read_text()
        except (OSError, UnicodeDecodeError) as exc:
            report.problems.append(f"{path.name} cannot be read as text ({exc})")
            continue
        problems = check_trial_text(path.name, text, expected[trial])
        report.problems.extend(problems)
        report.n_valid_files += not problems
    for problem in report.problems:
        logger.debug("submission problem: %s", problem)
    return report
