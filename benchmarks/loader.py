"""Windows per second delivered by the loader, and windows per second ready for the model.

Two measures, on the same generated dataset (SPEC §2 layout, files in the page cache), in the same run,
with the same DataLoader settings, in sequential and shuffled order:

* loader alone: ``WindowDataset`` (memory-mapped trials, each opened once) with ``default_collate``
  and with its own ``collate_windows`` (what ``make_loader`` uses), against a straightforward
  per-window loader that ``np.load``s each whole trial array, z-scores it, slices and pads the window.
* ready for the model: the batches a training step consumes, frames cropped, flipped and scaled to
  [-1, 1] (``prepare_frames`` with a CPU generator, what training on the CPU runs; and, for
  comparison, the one 5-D gather that the GPU path runs, which the CPU ran before), against a reader
  built the way the authors' ``ABAW2_VA_Dataset`` is: per window, index the memory-mapped arrays,
  turn every frame into a PIL image, crop and flip it with PIL, stack, convert to a float tensor and
  normalise frame by frame; z-scored audio features; ``default_collate``.

Usage:
    python benchmarks/loader.py [--trials 16] [--frames 3000] [--batch-size 8] [--workers 0 2]
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, default_collate

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from base.data.augment import FRAME_MEAN, FRAME_STD, crop_flip_gather, draw_crops, normalise, prepare_frames  # noqa: E402
from base.data.dataset import WindowDataset, collate_windows  # noqa: E402
from base.data.processed import ProcessedDataset  # noqa: E402
from tests.processed_helpers import make_processed_dataset  # noqa: E402

MODALITIES = ("frame", "vggish", "mfcc")
NAIVE = "per-window np.load (naive)"
AUTHORS = "authors' reader (PIL per frame)"
CROP = 40


def window_place(ref: WindowDataset, index: int) -> tuple[int, int, Path, int]:
    """Where window ``index`` of ``ref`` lies: trial index, start frame, trial folder, trial length."""
    trial_index = int(ref.window_trial[index])
    trial_dir = ref.dataset.trial_dir(ref.trials[trial_index])
    return trial_index, int(ref.window_start[index]), trial_dir, int(ref.trial_n_frames[trial_index])


class NaiveWindowDataset(Dataset):
    """Per window: load every whole trial array, z-score it, slice and pad the window."""

    def __init__(self, reference: WindowDataset) -> None:
        self.ref = reference

    def __len__(self) -> int:
        return len(self.ref)

    def __getitem__(self, index: int) -> dict:
        ref = self.ref
        trial_index, start, trial_dir, n_frames = window_place(ref, index)
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


class AuthorsStyleWindowDataset(Dataset):
    """The authors' way to a training window: memory-mapped rows, then PIL transforms frame by frame.

    Per window: the window's rows of every array (``np.load(mmap_mode='c')[indices]``); each frame a
    PIL image, one random crop offset and one coin flip for the whole window (Python's ``random``),
    ``Image.crop`` and ``FLIP_LEFT_RIGHT`` per frame, ``np.stack``, a (T, 3, 40, 40) float tensor in
    [0, 1], normalised frame by frame with mean = std = 0.5; audio features z-scored.
    """

    def __init__(self, reference: WindowDataset, crop: int = CROP) -> None:
        self.ref = reference
        self.crop = crop

    def __len__(self) -> int:
        return len(self.ref)

    def _frames(self, window: np.ndarray) -> torch.Tensor:
        height, width = window.shape[1:3]
        left = random.randint(0, width - self.crop)
        top = random.randint(0, height - self.crop)
        flip = random.random() < 0.5
        images = []
        for frame in window:  # (H, W, 3) uint8
            image = Image.fromarray(frame.astype(np.uint8)).convert("RGB")
            image = image.crop((left, top, left + self.crop, top + self.crop))
            images.append(image.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if flip else image)
        stacked = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous().float().div(255)
        return torch.stack([(frame - FRAME_MEAN) / FRAME_STD for frame in stacked])  # (T, 3, crop, crop)

    def __getitem__(self, index: int) -> dict:
        ref = self.ref
        trial_index, start, trial_dir, n_frames = window_place(ref, index)
        indices = np.arange(start, min(start + ref.window_length, n_frames))
        item = {}
        for modality in ref.modalities:
            rows = np.load(trial_dir / f"{modality}.npy", mmap_mode="c")[indices]
            window = np.zeros((ref.window_length, *rows.shape[1:]), dtype=rows.dtype)
            window[:len(indices)] = rows
            if modality == "frame":
                item[modality] = self._frames(window)
            else:
                mean, std = ref.scalars[modality]
                item[modality] = torch.from_numpy((window.astype(np.float32) - mean) / std)
        label = np.zeros((ref.window_length, 2), dtype=np.float32)
        label[:len(indices)] = np.load(trial_dir / "label.npy", mmap_mode="c")[indices]
        item.update(label=label, trial_index=trial_index, start=start, length=len(indices))
        return item


def gather_frames(frames: torch.Tensor, crop: int, train: bool, generator: torch.Generator) -> torch.Tensor:
    """The GPU path run on the CPU (what ``prepare_frames`` did on the CPU before it sliced): same draws."""
    top, left, flip = draw_crops(frames.shape[0], frames.shape[2], frames.shape[3], crop, generator)
    return normalise(crop_flip_gather(frames, top, left, flip, crop).permute(0, 1, 4, 2, 3).contiguous())


def ready_batches(loader: Iterable[dict], generator: torch.Generator,
                  prepare: Callable[..., torch.Tensor] = prepare_frames) -> Iterable[dict]:
    """The loader's batches as a training step on the CPU takes them: frames cropped, flipped, scaled."""
    for batch in loader:
        batch["frame"] = prepare(batch["frame"], crop=CROP, train=True, generator=generator)
        yield batch


def time_epoch(loader: Iterable[dict]) -> tuple[int, float]:
    """Windows delivered and seconds taken by one pass over ``loader``."""
    begin = time.perf_counter()
    n_windows = sum(len(batch["start"]) for batch in loader)  # every batch is built in full
    return n_windows, time.perf_counter() - begin


def best_epoch_s(make: Callable[[int], Iterable[dict]], repeats: int) -> float:
    """Seconds of the fastest of ``repeats`` epochs, after one warm-up (page cache, first memory maps)."""
    time_epoch(make(0))
    return min(time_epoch(make(epoch + 1))[1] for epoch in range(repeats))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=16, help="training trials to generate")
    parser.add_argument("--frames", type=int, default=3000, help="frames per trial")
    parser.add_argument("--window-length", type=int, default=300)
    parser.add_argument("--hop-length", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2], help="DataLoader worker counts to try")
    parser.add_argument("--repeats", type=int, default=3, help="timed epochs per setting after one warm-up (the best is reported)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads of the main process (default: torch's)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        root = make_processed_dataset(Path(tmp) / "processed", n_train=args.trials, n_val=1, n_test=0,
                                      lengths=args.frames, modalities=MODALITIES, seed=0)
        dataset = ProcessedDataset(root)
        trials = dataset.partition_trials("Train_Set")
        ours = WindowDataset(dataset, trials, MODALITIES, "valence", args.window_length, args.hop_length,
                             dataset.mean_std(), fold=0, stats_partition="Train_Set")
        naive = NaiveWindowDataset(ours)
        authors = AuthorsStyleWindowDataset(ours)
        # every reader must deliver the same windows
        for index in (0, len(ours) - 1):
            for key in (*MODALITIES, "label"):
                np.testing.assert_allclose(ours[index][key], naive[index][key], rtol=1e-5, atol=1e-5)
            for key in ("vggish", "mfcc", "label"):
                np.testing.assert_allclose(ours[index][key], authors[index][key], rtol=1e-5, atol=1e-5)
        # ... and the authors' reader the same crop, flip and scaling as prepare_frames
        random.seed(0)
        left, top, flip = random.randint(0, 8), random.randint(0, 8), random.random() < 0.5
        window = torch.from_numpy(ours[0]["frame"][None, :, top:top + CROP, left:left + CROP])  # (1, T, 40, 40, 3)
        expected = prepare_frames(window.flip(3) if flip else window, crop=CROP)[0]
        random.seed(0)
        torch.testing.assert_close(authors[0]["frame"], expected)
        print(f"{args.trials} trials x {args.frames} frames, modalities {' '.join(MODALITIES)}, "
              f"window {args.window_length} hop {args.hop_length}, batch {args.batch_size}, "
              f"{torch.get_num_threads()} torch threads: {len(ours)} windows")
        header = (f"{'what':<13} {'reader':<34} {'order':<9} {'workers':>7} {'seconds':>8} "
                  f"{'windows/s':>10} {'x naive':>8} {'x authors':>9}")
        print(header)
        print("-" * len(header))
        for shuffle in (False, True):
            for workers in args.workers:
                order = "shuffled" if shuffle else "in order"

                def loader(ds: Dataset, collate: Callable, epoch: int, workers: int = workers,
                           shuffle: bool = shuffle) -> DataLoader:
                    return DataLoader(ds, batch_size=args.batch_size, shuffle=shuffle, num_workers=workers,
                                      collate_fn=collate, generator=torch.Generator().manual_seed(epoch))

                def seeded_authors(epoch: int, loader: Callable = loader) -> DataLoader:
                    random.seed(epoch)  # the authors' crops and flips draw from Python's random
                    return loader(authors, default_collate, epoch)

                settings: list[tuple[str, str, Callable[[int], Iterable[dict]]]] = [
                    ("loader alone", NAIVE, lambda e, loader=loader: loader(naive, default_collate, e)),
                    ("loader alone", "WindowDataset + default_collate",
                     lambda e, loader=loader: loader(ours, default_collate, e)),
                    ("loader alone", "WindowDataset + collate_windows",
                     lambda e, loader=loader: loader(ours, collate_windows, e)),
                    ("model-ready", AUTHORS, seeded_authors),
                    ("model-ready", "collate_windows + 5-D gather (old)",
                     lambda e, loader=loader: ready_batches(loader(ours, collate_windows, e),
                                                            torch.Generator().manual_seed(e), gather_frames)),
                    ("model-ready", "collate_windows + prepare_frames",
                     lambda e, loader=loader: ready_batches(loader(ours, collate_windows, e),
                                                            torch.Generator().manual_seed(e))),
                ]
                rates = {}
                for what, name, make in settings:
                    best = best_epoch_s(make, args.repeats)
                    rates[name] = len(ours) / best
                    versus_authors = f"{rates[name] / rates[AUTHORS]:>8.1f}x" if AUTHORS in rates else f"{'':>9}"
                    print(f"{what:<13} {name:<34} {order:<9} {workers:>7} {best:>8.3f} {rates[name]:>10.1f} "
                          f"{rates[name] / rates[NAIVE]:>7.1f}x {versus_authors}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
