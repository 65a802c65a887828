"""Seconds per training step exactly as ``main.py`` runs one (``base.training.trainer.training_step``).

A step: the loader's uint8 frames and features are moved to the device, the frames get the random
40x40 crop and flip, then forward, weighted 1 - CCC loss, backward and one Adam step. The batch is
the recipe's (8 windows x 300 frames) unless shrunk with ``--batch-size`` / ``--window``; the
backbone is at the recipe's first release level (its output layer trains). Weights are random:
speed does not depend on them. Runs on the CPU and, when available, on CUDA, in each precision of
``--precision`` (fp16 and bf16 on the GPU need what the trainer needs: fp16 CUDA only, bf16 compute
capability 8.0). On CUDA the batch is pinned as the loader pins it, and the GPU utilisation that
``torch.cuda.utilization`` samples during the timed steps is printed when ``pynvml`` is installed.

Usage:
    python benchmarks/train_step.py [--batch-size 8] [--window 300] [--devices cpu cuda]
                                    [--modality frame vggish mfcc] [--steps 3] [--warmup 1]
                                    [--precision fp32 bf16 fp16] [--channels-last] [--deterministic 0]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from base.errors import UserError, run_cli  # noqa: E402
from base.training.devices import resolve_device, set_determinism  # noqa: E402
from base.training.trainer import (  # noqa: E402
    autocast_dtype,
    batch_inputs,
    loss_weights,
    output_emotions,
    training_step,
)
from configs import Modality, ModelConfig  # noqa: E402
from model import build_model  # noqa: E402

FRAME_SIDE = 48  # stored face crops (SPEC §2)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=8, help="windows per batch (default: 8)")
    parser.add_argument("--window", type=int, default=300, help="frames per window (default: 300)")
    default_devices = ["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"]
    parser.add_argument("--devices", nargs="+", default=default_devices,
                        help=f"devices to time (default: {' '.join(default_devices)})")
    parser.add_argument("--modality", nargs="+", default=list(ModelConfig().modality),
                        help="model inputs (default: frame vggish mfcc, the fusion model)")
    parser.add_argument("--release", type=int, default=1, help="backbone groups released (default: 1)")
    parser.add_argument("--steps", type=int, default=3, help="timed steps (default: 3)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first (default: 1)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch default)")
    parser.add_argument("--precision", nargs="+", default=["fp32"], choices=("fp32", "bf16", "fp16"),
                        help="precisions to time (default: fp32); one the device lacks is reported and skipped")
    parser.add_argument("--channels-last", action="store_true", help="channels_last backbone")
    parser.add_argument("--deterministic", type=int, default=1, choices=(0, 1),
                        help="1: cuDNN deterministic (the training default); 0: cudnn.benchmark")
    return parser.parse_args(argv)


def make_batch(modalities: tuple[str, ...], n_windows: int, n_frames: int) -> dict[str, torch.Tensor]:
    """A CPU batch shaped like ``base.data.dataset.collate_windows`` output."""
    generator = torch.Generator().manual_seed(0)
    batch: dict[str, torch.Tensor] = {}
    for name in modalities:
        if name == Modality.FRAME.value:
            batch[name] = torch.randint(0, 256, (n_windows, n_frames, FRAME_SIDE, FRAME_SIDE, 3),
                                        dtype=torch.uint8, generator=generator)  # (B, T, 48, 48, 3)
        else:
            batch[name] = torch.randn(n_windows, n_frames, Modality(name).feature_dim, generator=generator)
    batch["label"] = torch.rand(n_windows, n_frames, 2, generator=generator) * 2 - 1  # (B, T, 2)
    batch["mask"] = torch.ones(n_windows, n_frames, dtype=torch.bool)  # (B, T)
    return batch


class UtilisationSampler:
    """Samples ``torch.cuda.utilization`` (percent of time a kernel ran) every 50 ms while running."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.samples = device, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        try:
            torch.cuda.utilization(device)
            self.available = device.type == "cuda"
        except Exception:  # noqa: BLE001 - pynvml missing or no NVML: report n/a
            self.available = False

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            self.samples.append(torch.cuda.utilization(self.device))

    def __enter__(self) -> UtilisationSampler:
        if self.available:
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self.available:
            self._thread.join()

    @property
    def mean(self) -> float:
        return statistics.mean(self.samples) if self.samples else float("nan")


def time_device(device: torch.device, precision: str, args: argparse.Namespace) -> dict[str, float]:
    """Mean and fastest seconds per step on ``device`` in ``precision``, peak CUDA memory, GPU utilisation."""
    config = ModelConfig(modality=tuple(args.modality), random_backbone=True)
    amp_dtype = autocast_dtype(precision, device)
    model = build_model(config).to(device)
    if args.channels_last and getattr(model, "backbone", None) is not None:
        model.backbone.to(memory_format=torch.channels_last)
    model.release_groups(min(args.release, len(model.release_group_names)))
    model.train()
    optimizer = torch.optim.Adam(model.trainable_parameters(), lr=1e-5, weight_decay=1e-3)
    scaler = torch.amp.GradScaler(device.type) if amp_dtype == torch.float16 else None
    emotions, weights = output_emotions(config), loss_weights(config, 10.0)
    batch = make_batch(config.modality, args.batch_size, args.window)
    if device.type == "cuda":
        batch = {name: value.pin_memory() for name, value in batch.items()}  # as the CUDA loader delivers it
        torch.cuda.reset_peak_memory_stats(device)
    generator = torch.Generator().manual_seed(0)  # the trainer's crop generator is a CPU one

    def step() -> None:
        inputs = batch_inputs(batch, config.modality, device, config.crop_size, train=True, generator=generator)
        labels = batch["label"].to(device, non_blocking=True)
        mask = batch["mask"].to(device, non_blocking=True)
        training_step(model, optimizer, inputs, labels, mask, emotions, weights, amp_dtype, scaler)
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(args.warmup):
        step()
    seconds = []
    with UtilisationSampler(device) as utilisation:
        for _ in range(args.steps):
            started = time.perf_counter()
            step()
            seconds.append(time.perf_counter() - started)
    peak_gib = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    return {"mean_s": statistics.mean(seconds), "min_s": min(seconds), "peak_gib": peak_gib,
            "gpu_util": utilisation.mean}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    set_determinism(bool(args.deterministic))
    frames = args.batch_size * args.window
    print(f"training step: {' + '.join(args.modality)}, batch {args.batch_size} x {args.window} frames, "
          f"{args.release} backbone group(s) released, {args.steps} timed step(s), channels_last "
          f"{args.channels_last}, cudnn.benchmark {not args.deterministic}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} CPU thread(s)")
    print(f"{'device':<10} {'precision':<9} {'s/step (mean)':>14} {'s/step (min)':>13} {'frames/s':>10} "
          f"{'peak GiB':>9} {'GPU util %':>10}")
    for name in args.devices:
        device = resolve_device(name)
        if device.type == "cuda":
            print(f"{str(device):<10} {torch.cuda.get_device_name(device)}, compute capability "
                  f"{'.'.join(map(str, torch.cuda.get_device_capability(device)))}")
        for precision in args.precision:
            try:
                result = time_device(device, precision, args)
            except UserError as exc:
                print(f"{str(device):<10} {precision:<9} skipped: {exc}")
                continue
            print(f"{str(device):<10} {precision:<9} {result['mean_s']:>14.3f} {result['min_s']:>13.3f} "
                  f"{frames / result['min_s']:>10.1f} {result['peak_gib']:>9.2f} {result['gpu_util']:>10.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
