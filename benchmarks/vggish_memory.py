"""Peak memory and speed of per-video-frame VGGish embeddings against the length of the audio.

Each duration runs in a fresh Python process (TensorFlow's memory is process-wide, so only a new
process gives a clean peak): it restores the checkpoint, embeds a 16-bit mono wav of that length
at ``--fps`` (one 0.96 s patch per video frame) and reports its peak resident set size
(``ru_maxrss``) after the restore and after embedding. With batched patches the peak should not
grow with the length of the audio (target: 10 minutes within 1.2x of 1 minute).

Without ``--checkpoint`` a random-weight checkpoint with the release's variable names is written
to a temporary folder (speed and memory do not depend on the weights). ``--engine torch`` measures
the torch engine instead of TensorFlow's (``benchmarks/vggish_engines.py`` compares the two).

Usage:
    python benchmarks/vggish_memory.py [--minutes 1 10] [--fps 30] [--batch-size 256] [--threads 1]
                                       [--checkpoint vggish_model.ckpt] [--engine tf|torch]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SAMPLE_RATE = 16000


def peak_rss_mib() -> float:
    """This process's peak resident set size so far, MiB (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def write_test_wav(path: Path, minutes: float, seed: int = 0) -> None:
    """A 16-bit mono wav of gliding tones and noise, written a minute at a time."""
    import soundfile

    rng = np.random.default_rng(seed)
    n_total = int(round(minutes * 60 * SAMPLE_RATE))
    with soundfile.SoundFile(path, "w", SAMPLE_RATE, 1, subtype="PCM_16") as out:
        for first in range(0, n_total, 60 * SAMPLE_RATE):
            t = np.arange(first, min(first + 60 * SAMPLE_RATE, n_total)) / SAMPLE_RATE
            tone = 0.3 * np.sin(2 * np.pi * (200 + 50 * np.sin(0.5 * t)) * t)
            out.write((tone + 0.05 * rng.standard_normal(len(t))).astype(np.float32))


def child(args: argparse.Namespace) -> int:
    """Embed one wav in this (fresh) process and print one JSON line of measurements."""
    from vggish.engines import make_extractor

    n_frames = int(round(args.minutes * 60 * args.fps))
    start = time.perf_counter()
    with make_extractor(args.engine, args.checkpoint, batch_size=args.batch_size, num_threads=args.threads,
                        device=args.device) as vggish:
        restored_mib = peak_rss_mib()
        restore_s = time.perf_counter() - start
        start = time.perf_counter()
        embeddings = vggish.embed_wav_file(args.wav, args.fps, n_frames)
        embed_s = time.perf_counter() - start
    assert embeddings.shape == (n_frames, 128) and np.isfinite(embeddings).all()
    if args.save:
        np.save(args.save, embeddings)
    print(json.dumps({
        "minutes": args.minutes, "n_frames": n_frames, "restored_mib": restored_mib,
        "peak_mib": peak_rss_mib(), "restore_s": restore_s, "embed_s": embed_s,
        "tensorflow_imported": "tensorflow" in sys.modules, "torch_imported": "torch" in sys.modules,
    }))
    return 0


def child_command(checkpoint: str, wav: Path, minutes: float, fps: float, batch_size: int, threads: int,
                  engine: str = "tf", device: str = "cpu", save: str = "") -> list[str]:
    """The command line of one measurement in a fresh process (its last stdout line is JSON)."""
    return [sys.executable, str(Path(__file__).resolve()), "--child", "--minutes", repr(minutes), "--fps", repr(fps),
            "--batch-size", str(batch_size), "--threads", str(threads), "--checkpoint", checkpoint, "--wav", str(wav),
            "--engine", engine, "--device", device, "--save", save]


def write_random_weights(path: Path) -> None:
    """Random weights in the release's variable names, written by a separate process (this one stays TF-free)."""
    subprocess.run([sys.executable, "-c", "import sys; from vggish.checkpoint import write_random_checkpoint; "
                    "write_random_checkpoint(sys.argv[1])", str(path)], check=True, cwd=REPO, capture_output=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, nargs="+", default=[1.0, 10.0])
    parser.add_argument("--fps", type=float, default=30.0)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--threads", type=int, default=1, help="TensorFlow intra/inter-op threads (torch: CPU threads)")
    parser.add_argument("--checkpoint", default="", help="vggish_model.ckpt (default: random weights)")
    parser.add_argument("--engine", default="tf", choices=("tf", "torch"), help="VGGish engine (default: tf)")
    parser.add_argument("--device", default="cpu", choices=("cpu", "gpu"), help="VGGish device (default: cpu)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--wav", default="", help=argparse.SUPPRESS)
    parser.add_argument("--save", default="", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        args.minutes = args.minutes[0]
        return child(args)

    with tempfile.TemporaryDirectory(prefix="vggish_bench_") as tmp:
        checkpoint = args.checkpoint
        if not checkpoint:
            checkpoint = str(Path(tmp) / "vggish_model.ckpt")
            write_random_weights(Path(checkpoint))
        print(f"VGGish ({args.engine} engine, {args.device}), {args.fps:g} fps, batch {args.batch_size}, "
              f"{args.threads} thread(s), checkpoint {'random' if not args.checkpoint else args.checkpoint}")
        header = (f"{'audio min':>9} {'frames':>7} {'RSS after restore MiB':>22} {'peak RSS MiB':>13} "
                  f"{'restore s':>10} {'embed s':>8} {'s / audio min':>14}")
        print(header)
        print("-" * len(header))
        rows = []
        for minutes in args.minutes:
            wav = Path(tmp) / f"audio_{minutes:g}min.wav"
            write_test_wav(wav, minutes)
            command = child_command(checkpoint, wav, minutes, args.fps, args.batch_size, args.threads,
                                    args.engine, args.device)
            result = subprocess.run(command, check=True, capture_output=True, text=True, cwd=REPO)
            row = json.loads(result.stdout.strip().splitlines()[-1])
            rows.append(row)
            print(f"{minutes:>9g} {row['n_frames']:>7} {row['restored_mib']:>22.0f} {row['peak_mib']:>13.0f} "
                  f"{row['restore_s']:>10.1f} {row['embed_s']:>8.1f} {row['embed_s'] / minutes:>14.1f}",
                  flush=True)
            wav.unlink()
        if len(rows) > 1:
            ratio = rows[-1]["peak_mib"] / rows[0]["peak_mib"]
            print(f"peak RSS {rows[-1]['minutes']:g} min / {rows[0]['minutes']:g} min: {ratio:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
