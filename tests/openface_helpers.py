"""OpenFace stand-ins for tests: CSVs in FeatureExtraction's exact column layout, and a fake binary.

The fake ``FeatureExtraction`` is a small Python script (shebang = this interpreter, chmod +x) that
records its argument list as JSON, reads the images of ``-fdir`` in sorted order and writes
``<-out_dir>/<-of>.csv`` with one row per image, like the real program run with ``-2Dfp -aus``.
Its values come from ``fake_landmarks`` / ``fake_action_units`` so tests can predict them.
"""

from __future__ import annotations

import json
import stat
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

N_LANDMARKS = 68
AU_NUMBERS = ("01", "02", "04", "05", "06", "07", "09", "10", "12", "14", "15", "17", "20", "23", "25",
              "26", "45")
PRESENCE_NUMBERS = ("01", "02", "04", "05", "06", "07", "09", "10", "12", "14", "15", "17", "20", "23",
                    "25", "26", "28", "45")
HEADER = (
    "frame", "face_id", "timestamp", "confidence", "success",
    *(f"x_{i}" for i in range(N_LANDMARKS)), *(f"y_{i}" for i in range(N_LANDMARKS)),
    *(f"AU{n}_r" for n in AU_NUMBERS), *(f"AU{n}_c" for n in PRESENCE_NUMBERS),
)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")


def fake_landmarks(frame_numbers: Sequence[int]) -> np.ndarray:
    """(n, 68, 2) landmark pixels that vary with the frame and the point: x = 10 f + k, y = 3 f^2 - k / 2."""
    f = np.asarray(frame_numbers, np.float64)[:, None]  # (n, 1)
    k = np.arange(N_LANDMARKS, dtype=np.float64)[None, :]  # (1, 68)
    return np.stack([10 * f + k, 3 * f**2 - k / 2], axis=-1)


def fake_action_units(frame_numbers: Sequence[int]) -> np.ndarray:
    """(n, 17) AU intensities in [0, 5]: 0.25 f + 0.01 j, wrapped."""
    f = np.asarray(frame_numbers, np.float64)[:, None]
    j = np.arange(len(AU_NUMBERS), dtype=np.float64)[None, :]
    return np.round((0.25 * f + 0.01 * j) % 5, 2)


def write_openface_csv(path: str | Path, landmarks: np.ndarray, action_units: np.ndarray,
                       success: Iterable[bool], frame_numbers: Sequence[int] | None = None,
                       drop_columns: Iterable[str] = (), fps: float = 30.0) -> Path:
    """Write a CSV as FeatureExtraction does (``", "`` between values; failed rows have confidence 0).

    Args:
        landmarks: (n, 68, 2) pixels [x, y].
        action_units: (n, 17) intensities.
        success: (n,) tracked or not.
        frame_numbers: 1-based ``frame`` values; 1..n when None.
        drop_columns: columns to leave out (to test the reader's checks).
    """
    path = Path(path)
    success = [bool(s) for s in success]
    n_rows = len(success)
    frame_numbers = list(range(1, n_rows + 1)) if frame_numbers is None else list(frame_numbers)
    landmarks = np.asarray(landmarks, np.float64)
    action_units = np.asarray(action_units, np.float64)
    dropped = set(drop_columns)
    keep = [i for i, name in enumerate(HEADER) if name not in dropped]
    lines = [", ".join(HEADER[i] for i in keep)]
    for row in range(n_rows):
        presence = [1.0 if value >= 1 else 0.0 for value in action_units[row]]
        presence.insert(PRESENCE_NUMBERS.index("28"), 0.0)
        values = [
            f"{frame_numbers[row]:d}", "0", f"{(frame_numbers[row] - 1) / fps:.3f}",
            "0.98" if success[row] else "0.00", "1" if success[row] else "0",
            *(f"{v:.3f}" for v in landmarks[row, :, 0]), *(f"{v:.3f}" for v in landmarks[row, :, 1]),
            *(f"{v:.2f}" for v in action_units[row]), *(f"{v:.2f}" for v in presence),
        ]
        lines.append(", ".join(values[i] for i in keep))
    path.write_text("\n".join(lines) + "\n")
    return path


_FAKE_SCRIPT = """#!{python}
import json, sys, time
from pathlib import Path
sys.path.insert(0, {helpers_dir!r})
import numpy as np
from openface_helpers import IMAGE_SUFFIXES, fake_action_units, fake_landmarks, write_openface_csv

args = sys.argv[1:]
Path({argv_log!r}).write_text(json.dumps(args))
for line in {stderr_lines!r}:
    print(line, file=sys.stderr)
time.sleep({sleep_s!r})
if {exit_code!r}:
    sys.exit({exit_code!r})
if {write_csv!r}:
    face_dir = Path(args[args.index("-fdir") + 1])
    out_dir = Path(args[args.index("-out_dir") + 1])
    name = args[args.index("-of") + 1]
    images = sorted(p for p in face_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    numbers = list(range(1, len(images) + 1))
    success = [n not in {failed_rows!r} for n in numbers]
    landmarks = fake_landmarks(numbers)
    aus = fake_action_units(numbers)
    for row, ok in enumerate(success):
        if not ok:  # OpenFace writes zeros where it lost the face
            landmarks[row] = 0
            aus[row] = 0
    out_dir.mkdir(parents=True, exist_ok=True)
    write_openface_csv(out_dir / (name + ".csv"), landmarks, aus, success, numbers,
                       drop_columns={drop_columns!r})
print("Processing done")
"""


def write_fake_feature_extraction(path: str | Path, argv_log: str | Path, failed_rows: Iterable[int] = (2,),
                                  exit_code: int = 0, stderr_lines: Sequence[str] = (),
                                  write_csv: bool = True, drop_columns: Iterable[str] = (),
                                  sleep_s: float = 0.0) -> Path:
    """Write an executable stand-in for OpenFace's FeatureExtraction.

    Args:
        path: where the script goes.
        argv_log: file that receives its argument list (JSON list, program name excluded).
        failed_rows: 1-based CSV rows written with success 0 (and zeros, like OpenFace).
        exit_code: exit status (non-zero: no CSV).
        stderr_lines: lines printed on stderr before exiting.
        write_csv: False to exit 0 without a CSV.
        drop_columns: columns left out of the CSV.
        sleep_s: seconds to wait before doing anything else (for the timeout).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(_FAKE_SCRIPT.format(
        python=sys.executable, helpers_dir=str(Path(__file__).resolve().parent), argv_log=str(argv_log),
        stderr_lines=list(stderr_lines), sleep_s=float(sleep_s), exit_code=int(exit_code),
        write_csv=bool(write_csv), failed_rows=sorted(int(r) for r in failed_rows),
        drop_columns=list(drop_columns)))
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


def read_argv_log(argv_log: str | Path) -> list[str]:
    """The argument list the fake recorded."""
    return json.loads(Path(argv_log).read_text())


def write_face_images(face_dir: str | Path, frame_numbers: Iterable[int]) -> list[Path]:
    """Empty stand-ins named like Aff-Wild2 crops (``00001.jpg``); the fake only lists them."""
    face_dir = Path(face_dir)
    face_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for number in frame_numbers:
        path = face_dir / f"{number:05d}.jpg"
        path.write_bytes(b"")
        paths.append(path)
    return paths
