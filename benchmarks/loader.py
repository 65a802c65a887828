"""Windows per second of ``WindowDataset`` + ``DataLoader`` against a straightforward per-window loader.

The straightforward loader is what a first version would do: for every window, ``np.load`` each
whole trial array, z-score it, slice the window and pad it, batched by ``default_collate``. The
project's ``WindowDataset`` (memory-mapped trials, each opened once) is timed with
``default_collate`` and with its own ``collate_windows`` (what ``make_loader`` uses), so the two
gains show separately. All read the same generated dataset (SPEC §2 layout) in the same run, with
the same DataLoader settings, in sequential and shuffled order; the files are in the page cache.

Usage:
    python benchmarks/loader.py [--trials 16] [--frames 1500] [--batch-size 8] [--workers 0 2]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, default_collate

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from base.data.dataset import WindowDataset, collate_windows  # noqa: E402
from base.data.processed import ProcessedDataset  # noqa: E402
from tests.processed_helpers import make_processed_dataset  # noqa: E402

MODALITIES = ("frame", "vggish", "mfcc")
NAIVE = "per-window np.load (naive)"


class NaiveWindowDataset(Dataset):
    """Per window: load every whole trial array, z-score it, slice and pad the window."""

    def __init__(self, reference: WindowDataset) -> None:
        self.ref = reference

    def __len__(self) -> int:
        return len(self.ref)

    def __getitem__(self, index: int) -> dict:
        ref = self.ref
        trial_index = int(ref.window_trial[index])
        start = int(ref.window_start[index])
        trial_dir = ref.dataset.trial_dir(ref.trials[trial_index])
        n_frames = int(ref.trial_n_frames[trial_index])
        length = min(ref.window_length, n_frames - start)
        item = {}
        for modality in ref.modalities:
            whole = np.load(trial_dir / f"{modality}.npy")
            if modality != "frame":
                mean, std = ref.scalars[modality]
                whole = ((whole - mean) / std).astype(np.float32)
            window = np.zeros((ref.window_length, *whole.shape[1:]), dtype=whole.dtype)
            window[:length] = whole[start:start + length]
            item[modality] = window
        labels = np.load(trial_dir / "label.npy")
        label = np.zeros((ref.window_length, 2), dtype=np.float32)
        label[:length] = labels[start:start + length]
        mask = np.zeros(ref.window_length, dtype=bool)
        mask[:length] = True
        item.update(label=label, mask=mask, trial_index=trial_index, start=start, length=length)
        return item


def time_epoch(loader: DataLoader) -> tuple[int, float]:
    """Windows delivered and seconds taken by one pass over ``loader``."""
    begin = time.perf_counter()
    n_windows = sum(len(batch["start"]) for batch in loader)  # every batch is built in full
    return n_windows, time.perf_counter() - begin


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=16, help="training trials to generate")
    parser.add_argument("--frames", type=int, default=3000, help="frames per trial")
    parser.add_argument("--window-length", type=int, default=300)
    parser.add_argument("--hop-length", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2], help="DataLoader worker counts to try")
    parser.add_argument("--repeats", type=int, default=3, help="timed epochs per setting after one warm-up (the best is reported)")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        root = make_processed_dataset(Path(tmp) / "processed", n_train=args.trials, n_val=1, n_test=0,
                                      lengths=args.frames, modalities=MODALITIES, seed=0)
        dataset = ProcessedDataset(root)
        trials = dataset.partition_trials("Train_Set")
        ours = WindowDataset(dataset, trials, MODALITIES, "valence", args.window_length, args.hop_length,
                             dataset.mean_std(), fold=0, stats_partition="Train_Set")
        naive = NaiveWindowDataset(ours)
        # both loaders must deliver the same windows
        for index in (0, len(ours) - 1):
            for key in (*MODALITIES, "label", "mask"):
                np.testing.assert_allclose(ours[index][key], naive[index][key], rtol=1e-5, atol=1e-5)
        print(f"{args.trials} trials x {args.frames} frames, modalities {' '.join(MODALITIES)}, "
              f"window {args.window_length} hop {args.hop_length}, batch {args.batch_size}: {len(ours)} windows")
        header = (f"{'loader':<34} {'order':<9} {'workers':>7} {'windows':>8} {'seconds':>8} "
                  f"{'windows/s':>10} {'speed-up':>9}")
        print(header)
        print("-" * len(header))
        settings = (
            (NAIVE, naive, default_collate),
            ("WindowDataset + default_collate", ours, default_collate),
            ("WindowDataset + collate_windows", ours, collate_windows),
        )
        for shuffle in (False, True):
            for workers in args.workers:
                rates = {}
                for name, ds, collate in settings:
                    options = dict(batch_size=args.batch_size, shuffle=shuffle, num_workers=workers, collate_fn=collate)
                    time_epoch(DataLoader(ds, **options))  # warm-up: page cache, first memory maps
                    best = min(time_epoch(DataLoader(ds, generator=torch.Generator().manual_seed(epoch), **options))[1]
                               for epoch in range(args.repeats))
                    rates[name] = len(ds) / best
                    order = "shuffled" if shuffle else "in order"
                    print(f"{name:<34} {order:<9} {workers:>7} {len(ds):>8} {best:>8.3f} "
                          f"{rates[name]:>10.1f} {rates[name] / rates[NAIVE]:>8.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
