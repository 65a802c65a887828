"""Seconds per training step (forward + backward of one batch) for each model variant.

The batch is the recipe's: 8 windows of 300 frames of 40x40 faces (plus VGGish and MFCC for the
fusion model), with the backbone at the recipe's first release level (output layer trainable, the
rest frozen and run without autograd). Weights are random: speed does not depend on them.

Usage:
    python benchmarks/model_step.py [--batch-size 8] [--window 300] [--device cpu|cuda]
                                    [--steps 3] [--variants unimodal fusion] [--amp]
"""

from __future__ import annotations

import argparse
import contextlib
import resource
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from base.errors import UserError, run_cli  # noqa: E402
from configs import Modality, ModelConfig  # noqa: E402
from model import build_model  # noqa: E402

VARIANT_MODALITIES = {"unimodal": ("frame",), "fusion": ("frame", "vggish", "mfcc")}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=8, help="windows per batch (default: 8)")
    parser.add_argument("--window", type=int, default=300, help="frames per window (default: 300)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default: cpu)")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per variant (default: 3)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first (default: 1)")
    parser.add_argument("--variants", nargs="+", choices=sorted(VARIANT_MODALITIES), default=["unimodal", "fusion"])
    parser.add_argument("--release", type=int, default=1, help="backbone groups released (default: 1)")
    parser.add_argument("--chunk-size", type=int, default=ModelConfig().backbone_chunk_size,
                        help="frames per backbone pass")
    parser.add_argument("--backbone-mode", choices=("ir", "ir_se"), default="ir")
    parser.add_argument("--amp", action="store_true", help="bfloat16 autocast")
    parser.add_argument("--channels-last", action="store_true", help="channels_last backbone")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch default)")
    return parser.parse_args(argv)


def make_batch(modalities: tuple[str, ...], n_windows: int, n_frames: int,
               device: torch.device) -> dict[str, torch.Tensor]:
    batch = {}
    for name in modalities:
        if name == Modality.FRAME.value:
            batch[name] = torch.rand(n_windows, n_frames, 3, 40, 40, device=device) * 2 - 1
        else:
            batch[name] = torch.randn(n_windows, n_frames, Modality(name).feature_dim, device=device)
    return batch


def time_variant(variant: str, args: argparse.Namespace, device: torch.device) -> dict[str, float | str]:
    """Mean seconds per step and peak memory (CUDA allocations, or the process's resident set)."""
    config = ModelConfig(
        modality=VARIANT_MODALITIES[variant], random_backbone=True, backbone_chunk_size=args.chunk_size,
        backbone_mode=args.backbone_mode,
    )
    model = build_model(config).to(device)
    if args.channels_last:
        model.backbone.to(memory_format=torch.channels_last)
    model.release_groups(args.release)
    model.train()
    batch = make_batch(config.modality, args.batch_size, args.window, device)
    autocast = (
        torch.autocast(device.type, dtype=torch.bfloat16) if args.amp else contextlib.nullcontext()
    )

    def step() -> None:
        model.zero_grad(set_to_none=True)
        with autocast:
            outputs = model(batch)  # (B, T, 1)
        outputs.float().square().mean().backward()

    for _ in range(args.warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = (time.perf_counter() - start) / args.steps
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) / 2**30
    else:  # the process's peak resident memory so far (Linux reports KiB)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return {"variant": variant, "seconds": seconds, "frames_per_s": args.batch_size * args.window / seconds,
            "peak_gib": peak}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for but this PyTorch sees no CUDA device")
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(
        f"batch {args.batch_size} x {args.window} frames (40x40), release level {args.release}, "
        f"backbone {args.backbone_mode}, chunk {args.chunk_size}, amp {args.amp}, "
        f"channels_last {args.channels_last}, threads {torch.get_num_threads()}, torch {torch.__version__}"
    )
    memory = "CUDA peak GiB" if device.type == "cuda" else "peak RSS GiB"
    print(f"{'variant':<10} {'device':<8} {'s/step':>9} {'frames/s':>10} {memory:>14}")
    for variant in args.variants:
        row = time_variant(variant, args, device)
        print(
            f"{variant:<10} {device.type:<8} {row['seconds']:>9.3f} {row['frames_per_s']:>10.1f} "
            f"{row['peak_gib']:>14.2f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
