"""All the project's speed and memory figures in one table, each beside a straightforward baseline.

Every measure runs on this machine, in this run, against its baseline (the same data, the same
settings); ``ratio`` is always baseline cost / our cost, so > 1 means the project's way is better:

* preprocessing, seconds per video-minute per stage of one demo video (SPEC §3): ffmpeg wav,
  openSMILE MFCC, openSMILE eGeMAPS, VGGish and the per-trial stage (face crops, sampling, writes).
  The wav, openSMILE and per-trial stages have no second implementation: their baseline is real time
  (60 s per video-minute). VGGish's baseline is the authors' way: the whole video in one batch.
* VGGish peak resident memory: batches of ``vggish_batch_size`` patches against the whole video in
  one batch (each in a fresh process: TensorFlow's memory is process-wide).
* loader windows/s: ``WindowDataset`` + ``make_loader`` against a per-window ``np.load`` of the
  whole trial arrays with ``default_collate`` (``benchmarks/loader.py``).
* model training step (forward + backward of the fusion model, ``benchmarks/model_step.py``):
  bf16 autocast + channels_last against fp32 in the default layout.
* stitching + metrics of a partition: ``overlap_average`` + ``evaluate_partition`` (numpy)
  against Python loops over windows and frames.

Usage:
    python benchmarks/run_all.py [--demo-seconds 30] [--fps 30] [--step-window 32] [--small]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from base.preprocessing.opensmile_features import import_opensmile  # noqa: E402

import_opensmile()  # before anything could import TensorFlow (see base.preprocessing.preprocess)

import torch  # noqa: E402
from torch.utils.data import DataLoader, default_collate  # noqa: E402

from base.data.dataset import WindowDataset, make_loader  # noqa: E402
from base.data.processed import ProcessedDataset  # noqa: E402
from base.data.windowing import overlap_average, window_lengths, window_starts  # noqa: E402
from base.training.metrics import evaluate_partition  # noqa: E402
from benchmarks import loader as loader_bench  # noqa: E402
from benchmarks import model_step, vggish_memory  # noqa: E402
from configs import DemoConfig, FeatureConfig  # noqa: E402
from tests.processed_helpers import make_processed_dataset  # noqa: E402


@dataclass(frozen=True)
class Row:
    """One line of the table: our figure, the baseline's, and baseline cost / our cost."""

    measure: str
    ours: str
    baseline_name: str
    baseline: str
    ratio: float


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--demo-seconds", type=float, default=30.0, help="length of the demo video (default: 30)")
    parser.add_argument("--fps", type=float, default=30.0, help="frame rate of the demo video (default: 30)")
    parser.add_argument("--vggish-threads", type=int, default=1, help="TensorFlow threads (default: 1)")
    parser.add_argument("--loader-trials", type=int, default=8, help="trials of the loader dataset, >= 5 (default: 8)")
    parser.add_argument("--loader-frames", type=int, default=1500, help="frames per loader trial (default: 1500)")
    parser.add_argument("--step-batch", type=int, default=2, help="windows per training step (default: 2)")
    parser.add_argument("--step-window", type=int, default=32, help="frames per training window (default: 32)")
    parser.add_argument("--steps", type=int, default=2, help="timed training steps (default: 2)")
    parser.add_argument("--stitch-trials", type=int, default=20, help="trials of the stitching partition (default: 20)")
    parser.add_argument("--stitch-frames", type=int, default=3000, help="frames per stitching trial (default: 3000)")
    parser.add_argument("--small", action="store_true", help="a quick run: 10 s video, smaller loader and partition")
    parser.add_argument("--skip", nargs="*", default=[], choices=("preprocessing", "loader", "step", "stitching"),
                        help="measures to leave out")
    args = parser.parse_args(argv)
    if args.small:
        args.demo_seconds, args.loader_trials, args.loader_frames = 10.0, 5, 900
        args.stitch_trials, args.stitch_frames, args.step_window = 8, 1500, 16
    return args


def best_seconds(function: Callable[[], object], repeats: int = 2) -> float:
    """Fastest wall-clock seconds of ``repeats`` calls."""
    timings = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        timings.append(time.perf_counter() - start)
    return min(timings)


# ----------------------------------------------------------------------------- preprocessing + VGGish


def make_demo_video(root: Path, seconds: float, fps: float):
    """One demo video (one person) with its face crops and annotation; returns its trial."""
    from base.preprocessing import demo
    from base.preprocessing.database import discover_trials

    config = DemoConfig(demo_n_train_videos=1, demo_n_validation_videos=0, demo_n_test_videos=0, demo_fps=fps,
                        demo_min_seconds=seconds, demo_max_seconds=seconds)
    demo.make_demo_database(root, config, quiet=True)
    (trial,) = discover_trials(root)
    return trial


def vggish_run(checkpoint: str, wav: Path, minutes: float, fps: float, batch_size: int, threads: int,
               engine: str = "tf") -> dict:
    """``benchmarks/vggish_memory.py``'s measurement of one wav, in a fresh process."""
    command = vggish_memory.child_command(checkpoint, wav, minutes, fps, batch_size, threads, engine)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    result = subprocess.run(command, check=True, capture_output=True, text=True, cwd=REPO, env=env)
    return json.loads(result.stdout.strip().splitlines()[-1])


def preprocessing_rows(args: argparse.Namespace, tmp: Path) -> list[Row]:
    from base.preprocessing import media, opensmile_features
    from base.preprocessing.preprocess import trial_stage

    trial = make_demo_video(tmp / "Affwild2", args.demo_seconds, args.fps)
    info = media.probe_video(trial.video_path)
    video_minutes = info.n_frames / info.fps / 60.0
    cache = tmp / "cache"
    cache.mkdir()
    wav = cache / "audio.wav"
    stage_seconds: dict[str, float] = {}
    start = time.perf_counter()
    audio_s = media.extract_wav(trial.video_path, wav, FeatureConfig().sample_rate)
    stage_seconds["ffmpeg wav"] = time.perf_counter() - start
    for name, extract in (("openSMILE MFCC", opensmile_features.extract_mfcc),
                          ("openSMILE eGeMAPS", opensmile_features.extract_egemaps)):
        start = time.perf_counter()
        features = extract(wav)
        stage_seconds[name] = time.perf_counter() - start
        np.save(cache / ("mfcc.npy" if "MFCC" in name else "egemaps.npy"), features.astype(np.float32))

    checkpoint = str(tmp / "vggish" / "vggish_model.ckpt")
    vggish_memory.write_random_weights(Path(checkpoint))
    minutes = info.n_frames / info.fps / 60.0
    batched = vggish_run(checkpoint, wav, minutes, info.fps, FeatureConfig().vggish_batch_size, args.vggish_threads)
    whole = vggish_run(checkpoint, wav, minutes, info.fps, info.n_frames, args.vggish_threads)
    torch_engine = vggish_run(checkpoint, wav, minutes, info.fps, FeatureConfig().vggish_batch_size,
                              args.vggish_threads, engine="torch")

    # the per-trial stage reads vggish.npy: its values do not change the stage's time
    np.save(cache / "vggish.npy", np.zeros((info.n_frames, 128), np.float32))
    (cache / "video.json").write_text(json.dumps({"fps": info.fps, "n_frames": info.n_frames,
                                                  "video_s": info.duration_s, "audio_s": audio_s}))
    start = time.perf_counter()
    trial_stage(trial, str(cache), str(tmp / "processed"), FeatureConfig())
    stage_seconds["trial (faces, sampling, npy)"] = time.perf_counter() - start

    rows = []
    per_minute = {name: seconds / video_minutes for name, seconds in stage_seconds.items()}
    for name in ("ffmpeg wav", "openSMILE MFCC", "openSMILE eGeMAPS"):
        rows.append(Row(f"preprocess: {name}", f"{per_minute[name]:.2f} s/video-min", "real time", "60 s/video-min",
                        60.0 / per_minute[name]))
    vggish_ours = batched["embed_s"] / video_minutes
    vggish_whole = whole["embed_s"] / video_minutes
    rows.append(Row(f"preprocess: VGGish (batch {FeatureConfig().vggish_batch_size})", f"{vggish_ours:.2f} s/video-min",
                    "whole video, 1 batch", f"{vggish_whole:.2f} s/video-min", vggish_whole / vggish_ours))
    vggish_torch = torch_engine["embed_s"] / video_minutes
    rows.append(Row("preprocess: VGGish, --vggish-engine torch (CPU)", f"{vggish_torch:.2f} s/video-min",
                    "--vggish-engine tf", f"{vggish_ours:.2f} s/video-min", vggish_ours / vggish_torch))
    name = "trial (faces, sampling, npy)"
    rows.append(Row(f"preprocess: {name}", f"{per_minute[name]:.2f} s/video-min", "real time", "60 s/video-min",
                    60.0 / per_minute[name]))
    total = sum(per_minute.values()) + vggish_ours
    rows.append(Row("preprocess: all stages", f"{total:.2f} s/video-min", "real time", "60 s/video-min", 60.0 / total))
    rows.append(Row(f"VGGish peak RSS ({info.n_frames} patches)", f"{batched['peak_mib']:.0f} MiB",
                    "whole video, 1 batch", f"{whole['peak_mib']:.0f} MiB", whole["peak_mib"] / batched["peak_mib"]))
    return rows


# ----------------------------------------------------------------------------- loader


def loader_rows(args: argparse.Namespace, tmp: Path) -> list[Row]:
    modalities = loader_bench.MODALITIES
    root = make_processed_dataset(tmp / "loader", n_train=args.loader_trials, n_val=1, n_test=0,
                                  lengths=args.loader_frames, modalities=modalities, seed=0)
    dataset = ProcessedDataset(root)
    ours = WindowDataset(dataset, dataset.partition_trials("Train_Set"), modalities, "valence", 300, 200,
                         dataset.mean_std(), fold=0, stats_partition="Train_Set")
    naive = loader_bench.NaiveWindowDataset(ours)
    for key in (*modalities, "label"):  # both deliver the same windows
        np.testing.assert_allclose(ours[len(ours) - 1][key], naive[len(ours) - 1][key], rtol=1e-5, atol=1e-5)

    def epoch(build: Callable[[int], DataLoader]) -> float:
        loader_bench.time_epoch(build(0))  # warm-up: page cache, first memory maps
        return min(loader_bench.time_epoch(build(seed))[1] for seed in range(1, 3))

    ours_s = epoch(lambda seed: make_loader(ours, batch_size=8, shuffle=True, seed=seed))
    naive_s = epoch(lambda seed: DataLoader(naive, batch_size=8, shuffle=True, collate_fn=default_collate,
                                            generator=torch.Generator().manual_seed(seed)))
    n = len(ours)
    return [Row(f"loader, {n} windows of 300 ({'+'.join(modalities)})", f"{n / ours_s:.0f} windows/s",
                "per-window np.load", f"{n / naive_s:.0f} windows/s", naive_s / ours_s)]


# ----------------------------------------------------------------------------- training step


def step_rows(args: argparse.Namespace) -> list[Row]:
    common = ["--batch-size", str(args.step_batch), "--window", str(args.step_window), "--steps", str(args.steps),
              "--variants", "fusion"]
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        common += ["--device", "cuda"]
    settings = {"fp32": model_step.parse_args(common),
                "bf16": model_step.parse_args([*common, "--amp", "--channels-last"])}
    seconds: dict[str, list[float]] = {name: [] for name in settings}
    for _ in range(2):  # alternated, best of two: a busy machine slows whichever runs at the wrong moment
        for name, step_args in settings.items():
            seconds[name].append(model_step.time_variant("fusion", step_args, device)["seconds"])
    ours, baseline = min(seconds["bf16"]), min(seconds["fp32"])
    frames = args.step_batch * args.step_window
    return [Row(f"train step, fusion, {args.step_batch}x{args.step_window} frames ({device.type}), "
                "bf16 + channels_last", f"{ours:.3f} s ({frames / ours:.0f} frames/s)",
                "fp32, default layout", f"{baseline:.3f} s", baseline / ours)]


# ----------------------------------------------------------------------------- stitching and metrics


def loop_overlap_average(window_outputs: np.ndarray, starts: np.ndarray, n_frames: int,
                         lengths: np.ndarray) -> np.ndarray:
    """Per frame, the mean of every window output covering it: Python loops (the baseline)."""
    n_channels = window_outputs.shape[2]
    sums = [[0.0] * n_channels for _ in range(n_frames)]
    counts = [0] * n_frames
    for window, start, length in zip(window_outputs, starts, lengths):
        for offset in range(int(length)):
            frame = int(start) + offset
            counts[frame] += 1
            for channel in range(n_channels):
                sums[frame][channel] += float(window[offset, channel])
    return np.array([[value / counts[frame] for value in sums[frame]] for frame in range(n_frames)])


def loop_metrics(x: list[float], y: list[float]) -> dict[str, float]:
    """CCC, Pearson r and RMSE with Python loops (population statistics, as base.training.metrics)."""
    n = len(x)
    mean_x, mean_y = sum(x) / n, sum(y) / n
    var_x = sum((a - mean_x) ** 2 for a in x) / n
    var_y = sum((b - mean_y) ** 2 for b in y) / n
    covariance = sum((a - mean_x) * (b - mean_y) for a, b in zip(x, y)) / n
    return {"ccc": 2 * covariance / (var_x + var_y + (mean_x - mean_y) ** 2),
            "pcc": covariance / math.sqrt(var_x * var_y),
            "rmse": math.sqrt(sum((a - b) ** 2 for a, b in zip(x, y)) / n)}


def stitching_rows(args: argparse.Namespace) -> list[Row]:
    rng = np.random.default_rng(0)
    emotions = ("valence", "arousal")
    trials = {}
    for index in range(args.stitch_trials):
        n_frames = int(args.stitch_frames * rng.uniform(0.5, 1.5))
        starts = window_starts(n_frames, 300, 200)
        lengths = window_lengths(starts, n_frames, 300)
        trials[f"trial_{index:03d}"] = (n_frames, starts, lengths, rng.uniform(-1, 1, size=(len(starts), 300, 2)),
                                        rng.uniform(-1, 1, size=(n_frames, 2)))

    def ours() -> dict:
        predictions = {name: overlap_average(outputs, starts, n, lengths)
                       for name, (n, starts, lengths, outputs, _) in trials.items()}
        return evaluate_partition(predictions, {name: t[4] for name, t in trials.items()}, emotions)

    def baseline() -> dict:
        predictions = {name: loop_overlap_average(outputs, starts, n, lengths)
                       for name, (n, starts, lengths, outputs, _) in trials.items()}
        result = {}
        for column, emotion in enumerate(emotions):
            x = [float(v) for name in sorted(trials) for v in predictions[name][:, column]]
            y = [float(v) for name in sorted(trials) for v in trials[name][4][:, column]]
            result[emotion] = loop_metrics(x, y)
        return result

    fast, slow = ours(), baseline()
    for emotion in emotions:  # the two agree
        for metric in ("ccc", "pcc", "rmse"):
            assert math.isclose(fast[emotion][metric], slow[emotion][metric], rel_tol=1e-9, abs_tol=1e-12)
    ours_s, baseline_s = best_seconds(ours), best_seconds(baseline, repeats=1)
    n_frames = sum(t[0] for t in trials.values())
    return [Row(f"stitching + CCC/PCC/RMSE, {len(trials)} trials, {n_frames} frames", f"{ours_s * 1e3:.1f} ms",
                "Python loops", f"{baseline_s * 1e3:.0f} ms", baseline_s / ours_s)]


# ----------------------------------------------------------------------------- table


def format_table(rows: list[Row]) -> str:
    headers = ("measure", "ours", "baseline", "baseline figure", "ratio")
    cells = [(r.measure, r.ours, r.baseline_name, r.baseline, f"{r.ratio:.2f}x") for r in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) if cells else len(h) for i, h in enumerate(headers)]
    lines = [" | ".join(h.ljust(w) for h, w in zip(headers, widths)), "-+-".join("-" * w for w in widths)]
    lines += [" | ".join(c.ljust(w) for c, w in zip(cell, widths)) for cell in cells]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.manual_seed(0)
    print(f"{platform.node()}: {os.cpu_count()} CPU(s), torch {torch.__version__} ({torch.get_num_threads()} threads), "
          f"CUDA {'yes: ' + torch.cuda.get_device_name() if torch.cuda.is_available() else 'no'}, "
          f"OPENBLAS_NUM_THREADS={os.environ.get('OPENBLAS_NUM_THREADS', 'unset')}, load average "
          f"{os.getloadavg()[0]:.1f}; ratio = baseline cost / our cost (> 1: ours is better)", flush=True)
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="bench_") as tmp_name:
        tmp = Path(tmp_name)
        sections = (("preprocessing", lambda: preprocessing_rows(args, tmp)),
                    ("loader", lambda: loader_rows(args, tmp)),
                    ("step", lambda: step_rows(args)),
                    ("stitching", lambda: stitching_rows(args)))
        for name, measure in sections:
            if name in args.skip:
                continue
            start = time.perf_counter()
            new_rows = measure()
            rows += new_rows
            print(f"[{name}: {time.perf_counter() - start:.0f} s]", file=sys.stderr, flush=True)
    print(format_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
