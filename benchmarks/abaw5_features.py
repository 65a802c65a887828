"""Speed and memory of the ABAW5 features (logmel.npy, egemaps_functionals.npy) and of a run of both generations.

Three measures, each printed as a table:

* eGeMAPS functionals, seconds per video-minute at ``--fps``: this project's batched computation
  (``egemaps_functionals.functionals_per_frame``: one openSMILE instance, reset between segments)
  against one ``opensmile.Smile.process_signal(signal, sr, start=k / fps, end=k / fps + 1)`` per
  frame (timed on the first ``--one-by-one-frames`` frames and scaled to the whole). The rows of the
  timed frames are compared too (max relative difference).
* the 30 fps demo (``preprocessing.py --make-demo DIR --demo-fps 30``, 10 videos of 16-24 s)
  preprocessed with ``--features abaw2 abaw5 --jobs 2`` (and each set alone with ``--compare``):
  video-minutes per wall-clock minute.
* peak resident memory (VmHWM, reset after the imports) of a fresh process per length
  (``--memory-minutes``), with the imports of a worker (openSMILE, pandas, numpy): the audio stage's ABAW5 part (the log-mel spectrogram, then the functionals at ``--memory-fps``: their count,
  not the audio length, sets their time) and the trial stage writing ``frame.npy``, ``logmel.npy``
  and ``egemaps_functionals.npy`` of a 30 fps test trial (faces: a filled array, as real crops).

Usage:
    python benchmarks/abaw5_features.py [--functionals-seconds 20] [--demo-dir DIR] [--compare]
                                        [--memory-minutes 1 10] [--memory-fps 2] [--skip demo memory]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from base.preprocessing.opensmile_features import import_opensmile  # noqa: E402

import_opensmile()  # before anything could import TensorFlow

SAMPLE_RATE = 16000


def peak_rss_mib() -> float:
    """This process's peak resident set size so far, MiB: VmHWM of /proc/self/status where there is one
    (``ru_maxrss`` keeps the parent's peak across fork + exec: a child of a big benchmark would report it)."""
    try:
        status = Path("/proc/self/status").read_text()
        return int(next(line for line in status.splitlines() if line.startswith("VmHWM:")).split()[1]) / 1024.0
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def reset_peak_rss() -> bool:
    """Forget the peak so far (Linux >= 4.0: ``/proc/self/clear_refs`` 5), so that the import's transient peak
    does not hide the work's; False where that is not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def rss_mib() -> float:
    """This process's resident set size now, MiB (Linux /proc)."""
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def demo_voice(seconds: float, fps: float = 30.0, seed: int = 0) -> np.ndarray:
    """The demo's voice (pitch, loudness and brightness following labels), as 16-bit samples / 32768."""
    from base.preprocessing import demo

    rng = np.random.default_rng(seed)
    n_frames = int(round(seconds * fps))
    voice = demo.synthesize_voice(demo.make_labels(rng, n_frames, fps), fps, SAMPLE_RATE, rng)
    return (np.clip(np.round(voice * 32768), -32768, 32767) / 32768).astype(np.float32)


# ----------------------------------------------------------------------------- functionals


def functionals_table(seconds: float, fps: float, one_by_one_frames: int) -> None:
    import opensmile

    from base.preprocessing.egemaps_functionals import functionals_per_frame

    samples = demo_voice(seconds, fps)
    n_frames = int(round(seconds * fps))
    start = time.perf_counter()
    batched = functionals_per_frame(samples, SAMPLE_RATE, fps, n_frames)
    batched_s = time.perf_counter() - start
    smile = opensmile.Smile(opensmile.FeatureSet.eGeMAPSv02, opensmile.FeatureLevel.Functionals)
    frames = range(min(one_by_one_frames, n_frames))
    start = time.perf_counter()
    one = np.stack([smile.process_signal(samples, SAMPLE_RATE, start=k / fps, end=k / fps + 1.0).to_numpy()[0]
                    for k in frames])
    one_s = (time.perf_counter() - start) / len(frames) * n_frames
    relative = np.abs(batched[: len(frames)] - one) / np.maximum(np.abs(one), 1e-12)
    minutes = seconds / 60.0
    print(f"\neGeMAPSv02 functionals, 1 s segment per frame, {fps:g} fps, {seconds:g} s of the demo voice "
          f"({n_frames} frames; one by one timed on {len(frames)} frames and scaled)")
    print(f"{'method':<44} {'s / video-min':>14} {'ms / frame':>11}")
    print(f"{'batched (one openSMILE instance, reset)':<44} {batched_s / minutes:>14.1f} "
          f"{batched_s / n_frames * 1e3:>11.1f}")
    print(f"{'one by one (Smile.process_signal start/end)':<44} {one_s / minutes:>14.1f} "
          f"{one_s / n_frames * 1e3:>11.1f}")
    print(f"speed-up {one_s / batched_s:.2f}x; max relative difference of the {len(frames)} rows: "
          f"{relative.max():.2e}")


# ----------------------------------------------------------------------------- the 30 fps demo, both generations


def run_preprocessing(database: Path, output: Path, sets: list[str], jobs: int) -> float:
    command = [sys.executable, str(REPO / "preprocessing.py"), "--database", str(database), "--output", str(output),
               "--features", *sets, "--jobs", str(jobs), "--quiet"]
    start = time.perf_counter()
    result = subprocess.run(command, cwd=REPO, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
                            capture_output=True, text=True)  # the demo's random-VGGish banner, TensorFlow's notes
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({result.returncode}): {result.stderr[-2000:]}")
    return time.perf_counter() - start


def video_minutes(output: Path) -> float:
    rows = list(csv.DictReader(open(output / "preprocessing_summary.csv")))
    return sum({row["video"]: float(row["video_s"]) for row in rows}.values()) / 60.0


def demo_table(demo_dir: Path | None, jobs: int, compare: bool, tmp: Path) -> None:
    database = demo_dir or tmp / "Affwild2_30fps"
    if not (database / "demo_database.json").is_file():
        start = time.perf_counter()
        subprocess.run([sys.executable, str(REPO / "preprocessing.py"), "--make-demo", str(database),
                        "--demo-fps", "30", "--quiet"], check=True, cwd=REPO)
        print(f"\n30 fps demo made in {time.perf_counter() - start:.0f} s: {database}")
    runs = [["abaw2", "abaw5"], ["abaw2"], ["abaw5"]] if compare else [["abaw2", "abaw5"]]
    print(f"\nthe 30 fps demo, --jobs {jobs}, os.cpu_count() {os.cpu_count()}, load average before "
          f"{os.getloadavg()[0]:.1f}")
    print(f"{'--features':<14} {'video-min':>10} {'wall s':>8} {'video-min / min':>16}")
    for sets in runs:
        output = tmp / f"out_{'_'.join(sets)}"
        seconds = run_preprocessing(database, output, sets, jobs)
        minutes = video_minutes(output)
        print(f"{' '.join(sets):<14} {minutes:>10.2f} {seconds:>8.0f} {minutes / (seconds / 60):>16.2f}", flush=True)


# ----------------------------------------------------------------------------- memory


def write_wav(path: Path, minutes: float) -> None:
    """The demo voice, a minute at a time (a 10-minute voice at once would take ~0.5 GB to synthesise)."""
    import soundfile

    with soundfile.SoundFile(path, "w", SAMPLE_RATE, 1, subtype="PCM_16") as out:
        for minute in range(int(np.ceil(minutes))):
            out.write(demo_voice(min(60.0, minutes * 60 - minute * 60), seed=minute))


def child_audio(wav: Path, cache: Path, fps: float) -> dict:
    """The audio stage's ABAW5 caches of one wav (as ``audio_stage`` computes them)."""
    import soundfile

    from base.preprocessing.egemaps_functionals import extract_egemaps_functionals
    from base.preprocessing.logmel import log_mel_of_wav

    start = time.perf_counter()
    np.save(cache / "log_mel_spectrogram.npy", log_mel_of_wav(wav))
    log_mel_s = time.perf_counter() - start
    n_frames = int(soundfile.info(str(wav)).frames / SAMPLE_RATE * fps)
    start = time.perf_counter()
    functionals = extract_egemaps_functionals(wav, fps, n_frames)
    return {"log_mel_s": log_mel_s, "functionals_s": time.perf_counter() - start, "n_functionals": len(functionals)}


def child_trial(cache: Path, output: Path, minutes: float) -> dict:
    """The trial stage of a 30 fps test trial with the ABAW5 files (faces: a filled array, as real crops)."""
    from base.preprocessing import frames, preprocess
    from base.preprocessing.database import Trial
    from configs import FeatureConfig

    n_frames = int(round(minutes * 60 * 30))
    (cache / "video.json").write_text(json.dumps({"fps": 30.0, "n_frames": n_frames, "video_s": minutes * 60,
                                                  "audio_s": minutes * 60}))
    np.save(cache / "egemaps_functionals.npy", np.ones((n_frames, 88), np.float32))

    def faces(face_dir, indices, size=48):
        return np.full((len(indices), size, size, 3), 128, np.uint8), 0

    frames.load_face_frames = faces
    trial = Trial("memory", "Target_Set", "memory", cache / "memory.mp4", None, cache / "faces")
    start = time.perf_counter()
    preprocess.trial_stage(trial, str(cache), str(output), FeatureConfig(features=("abaw5",)))
    logmel = np.load(output / "npy_data" / "memory" / "logmel.npy", mmap_mode="r")
    assert logmel.shape == (n_frames, 96, 64)
    return {"trial_s": time.perf_counter() - start, "n_frames": n_frames}


def memory_table(minutes_list: list[float], fps: float, tmp: Path) -> None:
    print(f"\npeak RSS of a fresh process per length (audio stage: functionals at {fps:g} fps; trial stage: 30 fps)")
    print(f"{'part':<44} {'minutes':>8} {'RSS before MiB':>15} {'peak RSS MiB':>13} {'s':>7}")
    peaks: dict[str, list[float]] = {"audio": [], "trial": []}
    for minutes in minutes_list:
        folder = tmp / f"memory_{minutes:g}"
        (folder / "cache").mkdir(parents=True)
        wav = folder / "cache" / "audio.wav"
        write_wav(wav, minutes)
        for part in ("audio", "trial"):
            command = [sys.executable, __file__, "--child", part, "--child-dir", str(folder),
                       "--memory-minutes", str(minutes), "--memory-fps", str(fps)]
            result = subprocess.run(command, check=True, capture_output=True, text=True, cwd=REPO)
            row = json.loads(result.stdout.strip().splitlines()[-1])
            peaks[part].append(row["peak_mib"])
            name = ("audio stage: log-mel spectrogram + functionals" if part == "audio"
                    else "trial stage: frame, logmel, functionals npy")
            seconds = row.get("trial_s", row.get("log_mel_s", 0) + row.get("functionals_s", 0))
            print(f"{name:<44} {minutes:>8g} {row['rss_before_mib']:>15.0f} {row['peak_mib']:>13.0f} "
                  f"{seconds:>7.1f}", flush=True)
    if len(minutes_list) > 1:
        for part, values in peaks.items():
            print(f"{part} stage: peak RSS {minutes_list[-1]:g} min / {minutes_list[0]:g} min = "
                  f"{values[-1] / values[0]:.2f}x ({values[-1] - values[0]:+.0f} MiB)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--functionals-seconds", type=float, default=20.0, help="audio of the functionals measure")
    parser.add_argument("--fps", type=float, default=30.0, help="frame rate of the functionals measure")
    parser.add_argument("--one-by-one-frames", type=int, default=150, help="frames timed one by one (then scaled)")
    parser.add_argument("--demo-dir", type=Path, default=None, help="an existing 30 fps demo (default: made anew)")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--compare", action="store_true", help="also time --features abaw2 and abaw5 alone")
    parser.add_argument("--memory-minutes", type=float, nargs="+", default=[1.0, 10.0])
    parser.add_argument("--memory-fps", type=float, default=2.0, help="frame rate of the memory run's functionals")
    parser.add_argument("--skip", nargs="*", default=[], choices=("functionals", "demo", "memory"))
    parser.add_argument("--child", choices=("audio", "trial"), help=argparse.SUPPRESS)
    parser.add_argument("--child-dir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        cache = args.child_dir / "cache"
        from base.preprocessing import egemaps_functionals, logmel, preprocess  # noqa: F401 (a worker's imports)

        before = rss_mib()
        reset = reset_peak_rss()
        if args.child == "audio":
            row = child_audio(cache / "audio.wav", cache, args.memory_fps)
        else:
            row = child_trial(cache, args.child_dir / "out", args.memory_minutes[0])
        print(json.dumps({**row, "rss_before_mib": before, "peak_mib": peak_rss_mib(), "peak_reset": reset}))
        return 0
    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} (shared with other work: the "
          "figures are upper bounds of the time)")
    with tempfile.TemporaryDirectory(prefix="abaw5_bench_") as name:
        tmp = Path(name)
        if "functionals" not in args.skip:
            functionals_table(args.functionals_seconds, args.fps, args.one_by_one_frames)
        if "memory" not in args.skip:
            memory_table(args.memory_minutes, args.memory_fps, tmp)
        if "demo" not in args.skip:
            demo_table(args.demo_dir, args.jobs, args.compare, tmp)
    return 0


if __name__ == "__main__":
    sys.exit(main())
