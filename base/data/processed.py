"""The preprocessed dataset on disk (SPEC §2): ``dataset_info.pkl``, ``mean_std_dict.pkl``, ``npy_data/``.

Reads the layout this project writes and the one the authors publish (whose test partition may be
called ``Test_Set`` instead of ``Target_Set``). Every problem a user can hit is a ``UserError``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from base.errors import UserError
from base.safe_pickle import load_pickle
from configs import Modality

logger = logging.getLogger(__name__)

DATASET_INFO = "dataset_info.pkl"
MEAN_STD = "mean_std_dict.pkl"
NPY_DATA = "npy_data"
TRAIN_SET = "Train_Set"
VALIDATION_SET = "Validation_Set"
TEST_SETS = ("Target_Set", "Test_Set")  # this project writes Target_Set; both are read
LABEL = "label"
# The authors' README shows ``continuous_label.npy``; SPEC §2 (and this project) write ``label.npy``.
AUTHORS_LABEL_STEM = "continuous_label"
LANDMARK_STEM = Modality.LANDMARK.file_stem
FRAME_STEM = Modality.FRAME.file_stem


def file_stem(name: str) -> str:
    """The npy file stem of a modality name (``flm`` -> ``landmark``) or of a stem itself (``label``)."""
    try:
        return Modality(name).file_stem
    except ValueError:
        pass
    stems = {m.file_stem for m in Modality} | {LABEL}
    if name not in stems:
        choices = ", ".join(sorted({m.value for m in Modality} | stems))
        raise UserError(f"unknown modality or file '{name}' (choose from {choices})")
    return name


class ProcessedDataset:
    """A processed dataset folder, checked on opening.

    Args:
        root: the folder holding ``dataset_info.pkl`` and ``npy_data/``.

    Raises:
        UserError: the folder, ``dataset_info.pkl`` or ``npy_data/`` is missing, or the partition
            table lacks ``Train_Set``/``Validation_Set``.
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise UserError(
                f"the processed dataset folder {self.root} does not exist; run preprocessing.py "
                "or point to the authors' preprocessed dataset"
            )
        info_path = self.root / DATASET_INFO
        if not info_path.is_file():
            raise UserError(
                f"{self.root} has no {DATASET_INFO}; it is not a processed dataset (run preprocessing.py first)"
            )
        if not (self.root / NPY_DATA).is_dir():
            raise UserError(f"{self.root} has no {NPY_DATA}/ folder; rerun preprocessing.py")
        self.info: dict[str, Any] = load_pickle(info_path)
        partitions = self.info.get("partition") if isinstance(self.info, dict) else None
        if not isinstance(partitions, dict):
            raise UserError(f"{info_path} has no 'partition' table; it is not a processed dataset")
        for name in (TRAIN_SET, VALIDATION_SET):
            if not isinstance(partitions.get(name), dict):
                raise UserError(f"{info_path} has no '{name}' partition")
        self._partitions: dict[str, dict[str, int]] = partitions
        self.test_partition = next((name for name in TEST_SETS if name in partitions), TEST_SETS[0])
        self._n_frames: dict[str, int] = {}
        for table in partitions.values():
            if isinstance(table, dict):
                self._n_frames.update({str(trial): int(n) for trial, n in table.items()})

    def __repr__(self) -> str:
        counts = ", ".join(f"{name}: {len(self.partition_trials(name))}" for name in self.partition_names)
        return f"ProcessedDataset({str(self.root)!r}; {counts})"

    @property
    def partition_names(self) -> tuple[str, str, str]:
        return (TRAIN_SET, VALIDATION_SET, self.test_partition)

    def partition_trials(self, name: str) -> list[str]:
        """Trial names of a partition in the order ``dataset_info.pkl`` lists them.

        That order cuts the cross-validation folds, as in the authors' code (their published
        dataset is not in sorted order; this project's preprocessing writes sorted names).
        ``Target_Set`` and ``Test_Set`` both mean the test set.
        """
        if name in TEST_SETS:
            name = self.test_partition
        elif name not in (TRAIN_SET, VALIDATION_SET):
            raise UserError(f"unknown partition '{name}' (choose from Train_Set, Validation_Set, Target_Set)")
        return [str(trial) for trial in self._partitions.get(name, {})]

    def is_labeled(self, trial: str) -> bool:
        """Whether ``trial`` belongs to the training or validation partition (and so has label.npy)."""
        return trial in self._partitions[TRAIN_SET] or trial in self._partitions[VALIDATION_SET]

    def n_frames(self, trial: str) -> int:
        """Number of frames of ``trial`` as recorded in ``dataset_info.pkl``."""
        try:
            return self._n_frames[trial]
        except KeyError:
            raise UserError(f"trial '{trial}' is not listed in {self.root / DATASET_INFO}") from None

    def trial_dir(self, trial: str) -> Path:
        return self.root / NPY_DATA / trial

    def file_path(self, trial: str, modality: str) -> Path:
        path = self.trial_dir(trial) / f"{file_stem(modality)}.npy"
        if file_stem(modality) == LABEL and not path.is_file():
            authors = path.with_name(f"{AUTHORS_LABEL_STEM}.npy")
            if authors.is_file():
                return authors
        return path

    def has_file(self, trial: str, modality: str) -> bool:
        return self.file_path(trial, modality).is_file()

    def load(self, trial: str, modality: str, mmap: bool = True) -> np.ndarray:
        """One array of a trial: a modality name or file stem (``frame``, ``mfcc``, ``flm``, ``label`` ...).

        Landmarks (n, 68, 2) are returned flattened to (n, 136). With ``mmap`` the file is
        memory-mapped read-only, so only the rows used are read from disk.
        """
        path = self.file_path(trial, modality)
        if not path.is_file():
            raise UserError(f"trial '{trial}' has no {path.name} in {path.parent}; rerun preprocessing.py")
        try:
            array = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
        except (ValueError, OSError) as exc:
            raise UserError(f"{path} is not a readable npy file ({exc}); rerun preprocessing.py") from None
        if path.stem == LANDMARK_STEM and array.ndim == 3:
            array = array.reshape(len(array), -1)  # (n, 68, 2) -> (n, 136)
        return array

    def mean_std(self) -> dict:
        """The feature statistics ``{feature: {fold: {partition: {'mean', 'std'}}}}``."""
        path = self.root / MEAN_STD
        if not path.is_file():
            raise UserError(
                f"{self.root} has no {MEAN_STD}; run calculate_mean_and_std.py --output {self.root}"
            )
        return load_pickle(path)

    def check_trial(self, trial: str, modalities: Iterable[str], with_label: bool | None = None) -> int:
        """Check that a trial's arrays exist, agree in length and hold finite values.

        Args:
            trial: trial name.
            modalities: modality names or file stems to check.
            with_label: also check ``label.npy`` (values in [-1, 1]); default: when the trial is labeled.

        Returns:
            The common number of frames.
        """
        stems = [file_stem(m) for m in modalities]
        if with_label is None:
            with_label = self.is_labeled(trial)
        if with_label and LABEL not in stems:
            stems.append(LABEL)
        lengths = {}
        for stem in stems:
            array = self.load(trial, stem, mmap=True)
            lengths[stem] = len(array)
            if stem != FRAME_STEM and not np.isfinite(array).all():
                raise UserError(
                    f"trial '{trial}': {stem}.npy contains NaN or infinite values; rerun preprocessing.py"
                )
            if stem == LABEL and np.abs(array).max(initial=0.0) > 1.0:
                raise UserError(f"trial '{trial}': label.npy has values outside [-1, 1]")
        if trial in self._n_frames:
            lengths[DATASET_INFO] = self._n_frames[trial]
        if len(set(lengths.values())) > 1:
            listed = ", ".join(f"{name}: {n}" for name, n in lengths.items())
            raise UserError(f"trial '{trial}' has arrays of different lengths ({listed}); rerun preprocessing.py")
        return next(iter(lengths.values()), 0)
