"""Seconds per training step exactly as ``main.py`` runs one (``base.training.trainer.training_step``).

A step: the loader's uint8 frames and features are moved to the device, the frames get the random
40x40 crop and flip, then forward, weighted 1 - CCC loss, backward and one Adam step. The batch is
the recipe's (8 windows x 300 frames) unless shrunk with ``--batch-size`` / ``--window``; the
backbone is at the recipe's first release level (its output layer trains). Weights are random:
speed does not depend on them. Runs on the CPU and, when available, on CUDA.

Usage:
    python benchmarks/train_step.py [--batch-size 8] [--window 300] [--devices cpu cuda]
                                    [--modality frame vggish mfcc] [--steps 3] [--warmup 1]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from base.errors import run_cli  # noqa: E402
from base.training.devices import resolve_device  # noqa: E402
from base.training.trainer import batch_inputs, loss_weights, output_emotions, training_step  # noqa: E402
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


def time_device(device: torch.device, args: argparse.Namespace) -> dict[str, float]:
    """Mean and fastest seconds per step on ``device``, and peak CUDA memory."""
    config = ModelConfig(modality=tuple(args.modality), random_backbone=True)
    model = build_model(config).to(device)
    model.release_groups(min(args.release, len(model.release_group_names)))
    model.train()
    optimizer = torch.optim.Adam(model.trainable_parameters(), lr=1e-5, weight_decay=1e-3)
    emotions, weights = output_emotions(config), loss_weights(config, 10.0)
    batch = make_batch(config.modality, args.batch_size, args.window)
    generator = torch.Generator(device=device).manual_seed(0)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    def step() -> None:
        inputs = batch_inputs(batch, config.modality, device, config.crop_size, train=True, generator=generator)
        labels, mask = batch["label"].to(device), batch["mask"].to(device)
        training_step(model, optimizer, inputs, labels, mask, emotions, weights)
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(args.warmup):
        step()
    seconds = []
    for _ in range(args.steps):
        started = time.perf_counter()
        step()
        seconds.append(time.perf_counter() - started)
    peak_gib = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    return {"mean_s": statistics.mean(seconds), "min_s": min(seconds), "peak_gib": peak_gib}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    frames = args.batch_size * args.window
    print(f"training step: {' + '.join(args.modality)}, batch {args.batch_size} x {args.window} frames, "
          f"{args.release} backbone group(s) released, {args.steps} timed step(s), "
          f"torch {torch.__version__}, {torch.get_num_threads()} CPU thread(s)")
    print(f"{'device':<10} {'s/step (mean)':>14} {'s/step (min)':>13} {'frames/s':>10} {'peak GiB':>9}")
    for name in args.devices:
        device = resolve_device(name)
        result = time_device(device, args)
        print(f"{str(device):<10} {result['mean_s']:>14.3f} {result['min_s']:>13.3f} "
              f"{frames / result['min_s']:>10.1f} {result['peak_gib']:>9.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
