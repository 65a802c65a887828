"""Aff-Wild2 valence-arousal annotation files (SPEC §1)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from base.errors import UserError

HEADER = "valence,arousal"
UNLABELED = -5.0


@dataclass(frozen=True)
class Annotation:
    """The rows of one ``<trial>.txt``: one per video frame."""

    values: np.ndarray  # (n_rows, 2) float32, valence and arousal, -5 where nobody annotated

    @property
    def n_rows(self) -> int:
        return int(self.values.shape[0])

    @property
    def labeled_indices(self) -> np.ndarray:
        """0-based frame indices where neither value is -5."""
        return np.flatnonzero(labeled_mask(self.values))

    @property
    def labels(self) -> np.ndarray:
        """(n_labeled, 2) float32: the labeled rows only."""
        return self.values[labeled_mask(self.values)]


def labeled_mask(values: np.ndarray) -> np.ndarray:
    """True where a row is labeled: neither valence nor arousal is -5."""
    return np.all(values != UNLABELED, axis=1)


def read_annotation(path: str | Path) -> Annotation:
    """Parse and check an annotation file; any problem raises a one-line ``UserError``."""
    path = Path(path)
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read annotation {path.name}: {exc}") from None
    if not lines or lines[0].strip().replace(" ", "").lower() != HEADER:
        first = lines[0].strip() if lines else "(empty file)"
        raise UserError(f"annotation {path.name}: header is {first!r}, expected '{HEADER}'")
    rows = [line for line in lines[1:] if line.strip()]
    if not rows:
        raise UserError(f"annotation {path.name} has a header but no rows")
    values = np.empty((len(rows), 2), np.float32)
    for row_number, line in enumerate(rows, start=2):
        parts = line.split(",")
        if len(parts) != 2:
            raise UserError(f"annotation {path.name} line {row_number}: expected 2 values, got {line.strip()!r}")
        try:
            values[row_number - 2] = [float(parts[0]), float(parts[1])]
        except ValueError:
            raise UserError(f"annotation {path.name} line {row_number}: not a number in {line.strip()!r}") from None
    bad = ~((np.abs(values) <= 1.0) | (values == UNLABELED))
    if bad.any():
        row = int(np.argwhere(bad)[0, 0])
        raise UserError(
            f"annotation {path.name} line {row + 2}: value {values[row][bad[row]][0]:g} is outside [-1, 1] "
            f"and is not the unlabeled marker -5"
        )
    return Annotation(values)
