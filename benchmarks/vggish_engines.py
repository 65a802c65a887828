"""VGGish's two engines side by side: seconds per audio-minute and peak memory, TensorFlow vs torch.

Each engine runs in its own fresh process (``benchmarks/vggish_memory.py --child``), so that each
peak resident set size (``ru_maxrss``) is that engine's alone: it loads the weights, embeds the same
16-bit mono wav at ``--fps`` (one 0.96 s patch per video frame, ``--batch-size`` patches per pass)
and saves the embeddings, which are compared here (``max |torch - tf| / max |tf|``).

On the CPU both engines run; on a GPU (``torch.cuda.is_available()``) the torch engine runs there
too (``--vggish-device gpu``), else the table says "no GPU". TensorFlow's GPU path is not measured
(requirements.txt installs tensorflow-cpu).

Without ``--checkpoint`` a random-weight checkpoint in the release's format is written to a
temporary folder (speed and memory do not depend on the weights).

Usage:
    python benchmarks/vggish_engines.py [--minutes 1] [--fps 30] [--batch-size 64] [--threads 1]
                                        [--checkpoint vggish_model.ckpt]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks import vggish_memory  # noqa: E402
from configs import FeatureConfig  # noqa: E402

# (engine, vggish_device) measured on every machine; the GPU row is added where torch sees one
CPU_RUNS = (("tf", "cpu"), ("torch", "cpu"))
GPU_RUN = ("torch", "gpu")


def measure(checkpoint: str, wav: Path, engine: str, device: str, args: argparse.Namespace, save: Path) -> dict:
    """One engine's run in a fresh process: the child's JSON line."""
    command = vggish_memory.child_command(checkpoint, wav, args.minutes, args.fps, args.batch_size, args.threads,
                                          engine, device, str(save))
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO, env=env)
    if result.returncode != 0:
        raise SystemExit(f"error: the {engine} engine on {device} failed: {result.stderr.strip().splitlines()[-1:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def gpu_name() -> str | None:
    """The first CUDA GPU's name, or None (asked in a child: this process stays free of torch)."""
    code = "import torch; print(torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return result.stdout.strip() or None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=1.0, help="audio minutes (default: 1)")
    parser.add_argument("--fps", type=float, default=30.0, help="video frames per second (default: 30)")
    parser.add_argument("--batch-size", type=int, default=FeatureConfig().vggish_batch_size,
                        help="patches per forward pass (default: FeatureConfig.vggish_batch_size)")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads of either engine (default: 1)")
    parser.add_argument("--checkpoint", default="", help="vggish_model.ckpt or vggish.pth (default: random weights)")
    args = parser.parse_args(argv)

    gpu = gpu_name()
    runs = [*CPU_RUNS, GPU_RUN] if gpu else list(CPU_RUNS)
    print(f"VGGish engines: {args.minutes:g} audio min at {args.fps:g} fps, batch {args.batch_size}, "
          f"{args.threads} CPU thread(s), {os.cpu_count()} CPU(s), load average {os.getloadavg()[0]:.1f}, "
          f"GPU: {gpu or 'no GPU (torch.cuda.is_available() is False)'}", flush=True)
    with tempfile.TemporaryDirectory(prefix="vggish_engines_") as tmp_name:
        tmp = Path(tmp_name)
        checkpoint = args.checkpoint
        if not checkpoint:
            checkpoint = str(tmp / "vggish_model.ckpt")
            vggish_memory.write_random_weights(Path(checkpoint))
        wav = tmp / "audio.wav"
        vggish_memory.write_test_wav(wav, args.minutes)
        header = (f"{'engine':>6} {'device':>6} {'load s':>7} {'embed s':>8} {'s / audio min':>14} "
                  f"{'peak RSS MiB':>13} {'TF imported':>12} {'max|d|/max|tf|':>15}")
        print(header)
        print("-" * len(header), flush=True)
        reference = None
        for engine, device in runs:
            saved = tmp / f"{engine}_{device}.npy"
            row = measure(checkpoint, wav, engine, device, args, saved)
            embeddings = np.load(saved)
            if reference is None:
                reference = embeddings  # the first run: tf on the CPU
            difference = float(np.abs(embeddings - reference).max() / np.abs(reference).max())
            print(f"{engine:>6} {device:>6} {row['restore_s']:>7.1f} {row['embed_s']:>8.1f} "
                  f"{row['embed_s'] / args.minutes:>14.1f} {row['peak_mib']:>13.0f} "
                  f"{'yes' if row['tensorflow_imported'] else 'no':>12} {difference:>15.2e}", flush=True)
        if not gpu:
            print(f"{'torch':>6} {'gpu':>6}  no GPU")
    return 0


if __name__ == "__main__":
    sys.exit(main())
