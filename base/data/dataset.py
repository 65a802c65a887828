"""Windows of processed trials as a PyTorch dataset (SPEC §5).

Every trial is cut into windows (``base.data.windowing.window_starts``); an item is one window of every
requested modality. Feature files are memory-mapped (``np.load(mmap_mode='r')``) the first time a
trial is used and kept open, so a window reads only its own rows; labels are small and read whole.
"""

from __future__ import annotations

import collections
import logging
import resource
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from base.data.folds import check_fold
from base.data.processed import FRAME_STEM, LABEL, TEST_SETS, ProcessedDataset, file_stem
from base.data.windowing import window_starts
from base.errors import UserError
from configs import EMOTIONS

logger = logging.getLogger(__name__)

ZSCORED_FEATURES = ("mfcc", "egemaps", "vggish")  # must have statistics; landmark/au only if present
N_LABEL_COLUMNS = len(EMOTIONS)


def shift_labels(labels: np.ndarray, time_delay: int) -> np.ndarray:
    """Labels ``time_delay`` frames later: drop the first ``time_delay`` rows, repeat the last.

    Applied to the whole trial (the authors shifted inside each window), so a window's labels come
    from the trial's real future frames wherever they exist.
    """
    if time_delay == 0 or len(labels) == 0:
        return labels
    index = np.minimum(np.arange(len(labels)) + time_delay, len(labels) - 1)
    return labels[index]


def zscore_scalars(
    mean_std: Mapping | None, stem: str, fold: int, stats_partition: str
) -> tuple[float, float] | None:
    """(mean, std) of a feature for a fold and partition, or None when it is not z-scored."""
    if mean_std is None or stem == FRAME_STEM:
        return None
    if stem not in mean_std:
        if stem in ZSCORED_FEATURES:
            raise UserError(
                f"mean_std_dict.pkl has no statistics for '{stem}'; rerun calculate_mean_and_std.py"
            )
        return None
    try:
        by_partition = mean_std[stem][fold]
        if stats_partition not in by_partition and stats_partition in TEST_SETS:  # Target_Set or Test_Set
            stats_partition = next((name for name in TEST_SETS if name in by_partition), stats_partition)
        entry = by_partition[stats_partition]
        mean, std = float(entry["mean"]), float(entry["std"])
    except (KeyError, TypeError):
        raise UserError(
            f"mean_std_dict.pkl has no statistics for '{stem}' fold {fold} {stats_partition}; "
            "rerun calculate_mean_and_std.py"
        ) from None
    if not np.isfinite(mean) or not np.isfinite(std) or std <= 0:
        raise UserError(f"mean_std_dict.pkl has an unusable std {std} for '{stem}' fold {fold} {stats_partition}")
    return mean, std


def _default_max_open_trials(files_per_trial: int) -> int:
    # a memory map keeps one file descriptor open: use at most half of the process's limit
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return 1 << 30
    return max(8, (soft // 2) // max(1, files_per_trial))


class WindowDataset(Dataset):
    """Windows of ``window_length`` frames every ``hop_length`` frames over the given trials.

    Args:
        dataset: the processed dataset.
        trials: trial names (their order defines ``trial_index``).
        modalities: modality names (``frame``, ``vggish``, ``mfcc``, ``egemaps``, ``flm``, ``fau``).
        emotion: ``valence``, ``arousal`` or ``both`` (the label always holds both columns).
        window_length: frames per window.
        hop_length: frames between window starts.
        mean_std: the ``mean_std_dict.pkl`` content, or None to leave features unscaled.
        fold: fold whose statistics z-score the features.
        stats_partition: partition whose statistics z-score them (``Train_Set`` or ``Validation_Set``).
        time_delay: shift labels this many frames earlier (``shift_labels``).
        with_labels: read ``label.npy`` (False for test trials: the label is zeros).
        zscore_padding: z-score the zero padding of short windows too (it becomes -mean/std), as the
            authors' reader does (``padded_frames=model``); else the padding stays 0.
        max_open_trials: trials kept memory-mapped at once (least recently used are closed);
            default: as many as half the open-file limit allows.

    An item is a dict: ``{modality: (L, ...) array}`` (features float32, z-scored, zero-padded;
    frames uint8 (L, H, W, 3)), ``'label'`` (L, 2) float32, ``'mask'`` (L,) bool (real frames),
    ``'trial_index'``, ``'start'`` and ``'length'`` (real frames) ints.
    """

    def __init__(
        self,
        dataset: ProcessedDataset,
        trials: Sequence[str],
        modalities: Sequence[str],
        emotion: str,
        window_length: int,
        hop_length: int,
        mean_std: Mapping | None,
        fold: int,
        stats_partition: str,
        time_delay: int = 0,
        with_labels: bool = True,
        max_open_trials: int | None = None,
        zscore_padding: bool = False,
    ) -> None:
        if emotion not in (*EMOTIONS, "both"):
            raise UserError(f"emotion must be valence, arousal or both, got '{emotion}'")
        if window_length <= 0 or hop_length <= 0:
            raise UserError("window_length and hop_length must be positive")
        if time_delay < 0:
            raise UserError(f"time_delay must be 0 or more frames, got {time_delay}")
        if not modalities:
            raise UserError("at least one modality is needed")
        self.dataset = dataset
        self.trials = list(trials)
        self.modalities = tuple(modalities)
        self.stems = {m: file_stem(m) for m in self.modalities}
        self.emotion = emotion
        self.window_length = int(window_length)
        self.hop_length = int(hop_length)
        self.fold = check_fold(fold)
        self.stats_partition = stats_partition
        self.time_delay = int(time_delay)
        self.with_labels = with_labels
        self.zscore_padding = zscore_padding
        self.scalars = {m: zscore_scalars(mean_std, stem, fold, stats_partition) for m, stem in self.stems.items()}
        self.trial_n_frames = np.array([dataset.n_frames(t) for t in self.trials], dtype=np.int64)
        starts = [window_starts(int(n), self.window_length, self.hop_length) for n in self.trial_n_frames]
        self.window_trial = np.concatenate(
            [np.full(len(s), i, dtype=np.int64) for i, s in enumerate(starts)] or [np.zeros(0, np.int64)]
        )  # (W,) trial_index of each window
        self.window_start = np.concatenate(starts or [np.zeros(0, np.int64)])  # (W,)
        self.max_open_trials = max_open_trials or _default_max_open_trials(len(self.modalities))
        self._open: collections.OrderedDict[int, dict[str, np.ndarray]] = collections.OrderedDict()

    def __len__(self) -> int:
        return len(self.window_start)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_open"] = collections.OrderedDict()  # memory maps are reopened in each worker
        return state

    def trial_starts(self, trial_index: int) -> np.ndarray:
        """Window starts of one trial."""
        return self.window_start[self.window_trial == trial_index]

    def trial_labels(self, trial_index: int) -> np.ndarray:
        """(n, 2) float32 labels of a whole trial, shifted by ``time_delay``."""
        return self._arrays(trial_index)[LABEL]

    def _arrays(self, trial_index: int) -> dict[str, np.ndarray]:
        arrays = self._open.get(trial_index)
        if arrays is not None:
            self._open.move_to_end(trial_index)
            return arrays
        trial = self.trials[trial_index]
        n_frames = int(self.trial_n_frames[trial_index])
        arrays = {m: self.dataset.load(trial, stem, mmap=True) for m, stem in self.stems.items()}
        if self.with_labels:
            labels = np.asarray(self.dataset.load(trial, LABEL, mmap=False), dtype=np.float32)
            arrays[LABEL] = shift_labels(labels.reshape(len(labels), -1), self.time_delay)
        else:
            arrays[LABEL] = np.zeros((n_frames, N_LABEL_COLUMNS), dtype=np.float32)
        wrong = {name: len(a) for name, a in arrays.items() if len(a) != n_frames}
        if wrong:
            listed = ", ".join(f"{name}: {n}" for name, n in wrong.items())
            raise UserError(
                f"trial '{trial}' has {n_frames} frames in dataset_info.pkl but {listed}; rerun preprocessing.py"
            )
        self._open[trial_index] = arrays
        if len(self._open) > self.max_open_trials:
            self._open.popitem(last=False)
        return arrays

    def __getitem__(self, index: int) -> dict[str, Any]:
        trial_index = int(self.window_trial[index])
        start = int(self.window_start[index])
        arrays = self._arrays(trial_index)
        length = min(self.window_length, int(self.trial_n_frames[trial_index]) - start)
        stop = start + length
        item: dict[str, Any] = {}
        for modality in self.modalities:
            source = arrays[modality]
            if self.stems[modality] == FRAME_STEM:
                window = np.zeros((self.window_length, *source.shape[1:]), dtype=np.uint8)  # (L, H, W, 3)
                window[:length] = source[start:stop]
            else:
                window = np.zeros((self.window_length, *source.shape[1:]), dtype=np.float32)  # (L, D)
                window[:length] = source[start:stop]
                scalars = self.scalars[modality]
                if scalars is not None:
                    mean, std = scalars
                    scaled = window if self.zscore_padding else window[:length]
                    scaled -= mean
                    scaled /= std
            item[modality] = window
        label = np.zeros((self.window_length, N_LABEL_COLUMNS), dtype=np.float32)  # (L, 2)
        label[:length] = arrays[LABEL][start:stop]
        mask = np.zeros(self.window_length, dtype=bool)  # (L,)
        mask[:length] = True
        item.update(label=label, mask=mask, trial_index=trial_index, start=start, length=length)
        return item


def collate_windows(items: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """Stack window items into a batch: arrays with ``np.stack`` (one copy), ints as int64 tensors.

    ``np.stack`` + ``torch.from_numpy`` is several times faster than ``default_collate``'s
    ``torch.stack`` on large uint8 frame windows, and does not depend on torch's thread pool.
    """
    batch: dict[str, torch.Tensor] = {}
    for key, first in items[0].items():
        values = [item[key] for item in items]
        if isinstance(first, np.ndarray):
            batch[key] = torch.from_numpy(np.stack(values))  # (B, L, ...)
        else:
            batch[key] = torch.as_tensor(values, dtype=torch.int64)  # (B,)
    return batch


def make_loader(
    ds: Dataset,
    batch_size: int,
    shuffle: bool,
    seed: int = 0,
    epoch: int = 0,
    num_workers: int = 0,
    pin_memory: bool = False,
) -> DataLoader:
    """A DataLoader of ``collate_windows`` batches whose shuffle order depends only on ``seed + epoch``."""
    generator = torch.Generator()
    generator.manual_seed(int(seed) + int(epoch))
    return DataLoader(
        ds,
        batch_size=batch_size,
        shuffle=shuffle,
        generator=generator,
        num_workers=num_workers,
        pin_memory=pin_memory,
        drop_last=False,
        collate_fn=collate_windows,
    )
