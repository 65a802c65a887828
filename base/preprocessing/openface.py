"""OpenFace ``FeatureExtraction``: landmarks and action units of the face crops (SPEC §9, optional).

OpenFace is a C++ program a user builds; the project never bundles it and only calls it when given
the path of its ``FeatureExtraction`` binary. It runs once per ``cropped_aligned/<trial>`` folder
with the authors' flags (``RUN_FLAGS``) and writes ``<out_dir>/<name>.csv``: one row per image of
the folder, in sorted file-name order, ``frame`` numbering the rows from 1. With ``-2Dfp -aus``
the columns are::

    frame, face_id, timestamp, confidence, success,      (META_COLUMNS)
    x_0 .. x_67, y_0 .. y_67,                             (2D landmarks, pixels)
    AU01_r .. AU45_r,                                     (17 intensities, AU_INTENSITY_COLUMNS)
    AU01_c .. AU45_c                                      (18 presences, AU_PRESENCE_COLUMNS)

OpenFace writes ", " between values; the reader strips the spaces. ``-simalign`` also makes it
write ``<name>_aligned/`` (48x48 aligned faces) and ``<name>_of_details.txt`` beside the CSV.

The two features (``openface_features``), sampled at a trial's labeled frames:

- ``landmark.npy`` (n, 68, 2) float32 [x, y]: each of the 136 coordinates standardised (z-score,
  population std like the authors' ``StandardScaler``; a constant coordinate becomes 0) over all
  CSV rows where ``success`` is 1, i.e. over every image of the trial, labeled or not. Rows where
  OpenFace failed are set to 0 (the mean) after standardisation: the authors kept OpenFace's raw
  failed-frame values (zeros in pixels, far from the standardised range), which we do not repeat.
- ``au.npy`` (n, 17) float32: the intensities as OpenFace wrote them, 0 where it failed.

A labeled frame without a CSV row (its jpg is missing, so OpenFace never saw it) gets zeros in
both. Pass ``image_frame_numbers`` (from ``face_image_frame_numbers``) so that CSV row k is matched
to the k-th image's own frame number; without it, CSV frame k is taken to be video frame k - 1.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from base.errors import UserError

logger = logging.getLogger(__name__)

N_LANDMARKS = 68
META_COLUMNS = ("frame", "face_id", "timestamp", "confidence", "success")
LANDMARK_X_COLUMNS = tuple(f"x_{i}" for i in range(N_LANDMARKS))
LANDMARK_Y_COLUMNS = tuple(f"y_{i}" for i in range(N_LANDMARKS))
_AU_NUMBERS = ("01", "02", "04", "05", "06", "07", "09", "10", "12", "14", "15", "17", "20", "23",
               "25", "26", "45")
AU_INTENSITY_COLUMNS = tuple(f"AU{number}_r" for number in _AU_NUMBERS)  # 17
# presence has AU28 too (OpenFace has no intensity model for it)
AU_PRESENCE_COLUMNS = tuple(f"AU{number}_c" for number in sorted((*_AU_NUMBERS, "28")))  # 18
N_ACTION_UNITS = len(AU_INTENSITY_COLUMNS)
REQUIRED_COLUMNS = ("frame", "success", *LANDMARK_X_COLUMNS, *LANDMARK_Y_COLUMNS, *AU_INTENSITY_COLUMNS)

# the authors' flags: 2D landmarks, action units, 48x48 similarity-aligned jpg faces without mask
RUN_FLAGS = ("-2Dfp", "-aus", "-simalign", "-simsize", "48", "-format_aligned", "jpg", "-nomask")
# image files FeatureExtraction -fdir reads from a folder
FACE_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")
DEFAULT_TIMEOUT_S = 4 * 3600.0  # a long Aff-Wild2 trial (~50k frames) takes well under an hour
LANDMARK_FILE = "landmark.npy"
AU_FILE = "au.npy"


@dataclass(frozen=True, eq=False)
class OpenFaceFrames:
    """The rows of one FeatureExtraction CSV."""

    frame_numbers: np.ndarray  # (n,) int64, 1-based row numbers (OpenFace's ``frame``)
    success: np.ndarray  # (n,) bool, OpenFace tracked the face
    landmarks: np.ndarray  # (n, 68, 2) float32, pixels, [x, y]
    action_units: np.ndarray  # (n, 17) float32, intensities in AU_INTENSITY_COLUMNS order
    source: str = ""  # the CSV's path, for messages

    def __len__(self) -> int:
        return len(self.frame_numbers)


def find_openface(binary: str | Path) -> Path:
    """Check the path of OpenFace's ``FeatureExtraction`` binary (a bare name is looked up on PATH).

    Raises:
        UserError: the file does not exist or is not an executable file.
    """
    path = Path(binary).expanduser()
    if not path.exists() and os.sep not in str(binary):
        found = shutil.which(str(binary))
        if found:
            path = Path(found)
    if not path.exists():
        raise UserError(f"OpenFace binary {binary} does not exist; give the path of the FeatureExtraction "
                        "program of your OpenFace build (e.g. OpenFace/build/bin/FeatureExtraction)")
    if not path.is_file() or not os.access(path, os.X_OK):
        raise UserError(f"OpenFace binary {binary} is not executable; give the path of the FeatureExtraction "
                        "program itself (not its folder), or make it executable (chmod +x)")
    return path.resolve()


def feature_extraction_command(binary: str | Path, face_dir: str | Path, out_dir: str | Path,
                               name: str) -> list[str]:
    """The argument list that runs FeatureExtraction on one image folder (no shell)."""
    return [str(binary), "-fdir", str(face_dir), *RUN_FLAGS, "-of", name, "-out_dir", str(out_dir)]


def run_feature_extraction(binary: str | Path, face_dir: str | Path, out_dir: str | Path, name: str,
                           timeout_s: float = DEFAULT_TIMEOUT_S) -> Path:
    """Run FeatureExtraction on the images of ``face_dir``; returns the CSV it wrote, ``out_dir/name.csv``.

    A CSV left by an earlier run under the same name is removed first, so the result is this run's.

    Raises:
        UserError: the program cannot start, fails, runs past ``timeout_s`` or writes no CSV.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    csv_path = out_dir / f"{name}.csv"
    csv_path.unlink(missing_ok=True)
    command = feature_extraction_command(binary, face_dir, out_dir, name)
    logger.debug("running %s", command)
    try:
        completed = subprocess.run(command, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                                   errors="replace", timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired as exc:
        raise UserError(f"OpenFace FeatureExtraction ran longer than {timeout_s:g} s on {face_dir} "
                        "and was stopped") from exc
    except OSError as exc:
        raise UserError(f"OpenFace binary {binary} could not be started: {exc.strerror or exc}") from exc
    if completed.returncode != 0:
        raise UserError(f"OpenFace FeatureExtraction failed on {face_dir} (exit code {completed.returncode}): "
                        f"{_last_line(completed.stderr) or _last_line(completed.stdout) or 'no error output'}")
    if not csv_path.is_file():
        raise UserError(f"OpenFace FeatureExtraction wrote no CSV for {face_dir} (expected {csv_path}); "
                        f"its last output line: {_last_line(completed.stderr) or _last_line(completed.stdout)}")
    return csv_path


def _last_line(text: str | None) -> str:
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    return lines[-1] if lines else ""


def read_openface_csv(path: str | Path) -> OpenFaceFrames:
    """Read a FeatureExtraction CSV made with ``-2Dfp -aus``.

    Raises:
        UserError: the file is missing, not a CSV, lacks the landmark/AU columns or has non-numbers.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"OpenFace CSV {path} does not exist")
    try:
        table = pd.read_csv(path, skipinitialspace=True)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise UserError(f"OpenFace CSV {path} cannot be read as a CSV: {exc}") from exc
    table.columns = [str(column).strip() for column in table.columns]
    missing = [column for column in REQUIRED_COLUMNS if column not in table.columns]
    if missing:
        shown = ", ".join(missing[:4]) + (f" and {len(missing) - 4} more" if len(missing) > 4 else "")
        raise UserError(f"OpenFace CSV {path} lacks the columns {shown}; "
                        "run FeatureExtraction with -2Dfp -aus")
    try:
        values = table[list(REQUIRED_COLUMNS)].to_numpy(dtype=np.float64)  # (n, 2 + 136 + 17)
    except (ValueError, TypeError) as exc:
        raise UserError(f"OpenFace CSV {path} has values that are not numbers") from exc
    if not np.isfinite(values).all():
        raise UserError(f"OpenFace CSV {path} has empty or non-finite values")
    n_rows = len(values)
    x = values[:, 2:2 + N_LANDMARKS]  # (n, 68)
    y = values[:, 2 + N_LANDMARKS:2 + 2 * N_LANDMARKS]  # (n, 68)
    return OpenFaceFrames(
        frame_numbers=values[:, 0].astype(np.int64),
        success=values[:, 1] != 0,
        landmarks=np.stack([x, y], axis=-1).astype(np.float32).reshape(n_rows, N_LANDMARKS, 2),
        action_units=values[:, 2 + 2 * N_LANDMARKS:].astype(np.float32),
        source=str(path),
    )


def standardise_landmarks(landmarks: np.ndarray, success: np.ndarray) -> np.ndarray:
    """Z-score each coordinate over the successful rows; failed rows become 0.

    Args:
        landmarks: (n, 68, 2) pixels.
        success: (n,) bool.

    Returns:
        (n, 68, 2) float32. A coordinate with zero spread is centred only; with no successful row at
        all, everything is 0.
    """
    n_rows = len(landmarks)
    flat = landmarks.reshape(n_rows, -1).astype(np.float64)  # (n, 136)
    standardised = np.zeros_like(flat)
    if success.any():
        mean = flat[success].mean(axis=0)  # (136,)
        std = flat[success].std(axis=0)  # population std, like sklearn's StandardScaler
        std[std == 0] = 1.0
        standardised[success] = (flat[success] - mean) / std
    return standardised.reshape(landmarks.shape).astype(np.float32)


def openface_features(frames: OpenFaceFrames, frame_indices: np.ndarray, n_expected_rows: int | None,
                      image_frame_numbers: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Landmark and AU features of a trial at its labeled frames (see the module docstring).

    Args:
        frames: the trial's CSV rows.
        frame_indices: (m,) 0-based video frame indices of the labeled frames.
        n_expected_rows: the number of images OpenFace was given; None skips the check.
        image_frame_numbers: (n,) 1-based video frame numbers of the images in sorted order (CSV
            row k belongs to image k); None when CSV frame k is video frame k - 1. When given and
            ``n_expected_rows`` is None, its length is the expected row count.

    Returns:
        landmark (m, 68, 2) float32 and au (m, 17) float32; zeros where OpenFace failed or has no row.

    Raises:
        UserError: the CSV's row count differs from the expected one.
    """
    if image_frame_numbers is not None:
        image_frame_numbers = np.asarray(image_frame_numbers, dtype=np.int64)
        if n_expected_rows is None:
            n_expected_rows = len(image_frame_numbers)
    if n_expected_rows is not None and len(frames) != n_expected_rows:
        raise UserError(f"OpenFace CSV {frames.source} has {len(frames)} rows, expected {n_expected_rows} "
                        "(one per face image); delete it and run OpenFace again")
    frame_indices = np.asarray(frame_indices, dtype=np.int64)
    if frame_indices.ndim != 1 or (frame_indices < 0).any():
        raise ValueError("frame_indices must be a 1-D array of non-negative frame indices")

    landmarks = standardise_landmarks(frames.landmarks, frames.success)  # (n, 68, 2)
    action_units = np.where(frames.success[:, None], frames.action_units, 0).astype(np.float32)  # (n, 17)

    video_frame_numbers = frames.frame_numbers  # (n,) 1-based
    if image_frame_numbers is not None:
        if len(frames) and (frames.frame_numbers.min() < 1 or frames.frame_numbers.max() > len(image_frame_numbers)):
            raise UserError(f"OpenFace CSV {frames.source} numbers its frames outside 1..{len(image_frame_numbers)}, "
                            "the images it was given; delete it and run OpenFace again")
        video_frame_numbers = image_frame_numbers[frames.frame_numbers - 1]
    rows = _rows_of_frames(video_frame_numbers, frame_indices + 1)  # (m,), -1 where no row

    has_row = rows >= 0
    landmark_out = np.zeros((len(frame_indices), N_LANDMARKS, 2), np.float32)
    au_out = np.zeros((len(frame_indices), N_ACTION_UNITS), np.float32)
    landmark_out[has_row] = landmarks[rows[has_row]]
    au_out[has_row] = action_units[rows[has_row]]
    if not has_row.all():
        logger.debug("%s: %d of %d labeled frames have no OpenFace row (zeros)", frames.source,
                     int((~has_row).sum()), len(rows))
    return landmark_out, au_out


def _rows_of_frames(row_frame_numbers: np.ndarray, wanted_frame_numbers: np.ndarray) -> np.ndarray:
    """For each wanted frame number, the index of the row that has it (the first one), or -1."""
    rows = np.full(len(wanted_frame_numbers), -1, np.int64)
    if len(row_frame_numbers) == 0:
        return rows
    order = np.argsort(row_frame_numbers, kind="stable")
    sorted_numbers = row_frame_numbers[order]
    position = np.searchsorted(sorted_numbers, wanted_frame_numbers)  # (m,)
    inside = position < len(sorted_numbers)
    found = np.zeros(len(wanted_frame_numbers), bool)
    found[inside] = sorted_numbers[position[inside]] == wanted_frame_numbers[inside]
    rows[found] = order[position[found]]
    return rows


def list_face_images(face_dir: str | Path) -> list[Path]:
    """The image files FeatureExtraction reads from ``face_dir``, in its (sorted file-name) order."""
    return sorted((path for path in Path(face_dir).iterdir()
                   if path.is_file() and path.suffix.lower() in FACE_IMAGE_SUFFIXES), key=lambda path: path.name)


def face_image_frame_numbers(images: list[Path]) -> np.ndarray:
    """(n,) 1-based video frame numbers of Aff-Wild2 crops named ``NNNNN.jpg``.

    Raises:
        UserError: a file name is not a frame number.
    """
    numbers = []
    for image in images:
        if not image.stem.isdigit():
            raise UserError(f"face image {image} is not named by its frame number (like 00001.jpg); "
                            "move other images out of the trial's folder")
        numbers.append(int(image.stem))
    return np.asarray(numbers, dtype=np.int64)


def write_openface_arrays(trial_dir: str | Path, landmark: np.ndarray, au: np.ndarray) -> None:
    """Write ``landmark.npy`` (n, 68, 2) and ``au.npy`` (n, 17) into an existing trial folder.

    Each is written to a hidden temporary file and renamed over the old one, so a killed run never
    leaves a half-written array; the trial's other files are not touched.
    """
    trial_dir = Path(trial_dir)
    if landmark.shape[1:] != (N_LANDMARKS, 2) or au.shape[1:] != (N_ACTION_UNITS,) or len(landmark) != len(au):
        raise ValueError(f"expected landmark (n, {N_LANDMARKS}, 2) and au (n, {N_ACTION_UNITS}), "
                         f"got {landmark.shape} and {au.shape}")
    arrays = {LANDMARK_FILE: landmark.astype(np.float32), AU_FILE: au.astype(np.float32)}
    staged = []
    try:
        for file_name, array in arrays.items():
            tmp = trial_dir / f".{file_name}.tmp"  # no .npy suffix: never mistaken for a feature
            staged.append((tmp, trial_dir / file_name))
            with open(tmp, "wb") as handle:
                np.save(handle, array)
        for tmp, final in staged:
            os.replace(tmp, final)
    finally:
        for tmp, _ in staged:
            tmp.unlink(missing_ok=True)


def existing_csv(openface_output_dir: str | Path, trial: str) -> Path | None:
    """The CSV of ``trial`` in a folder of FeatureExtraction outputs (``<trial>.csv``), or None."""
    path = Path(openface_output_dir) / f"{trial}.csv"
    return path if path.is_file() else None
