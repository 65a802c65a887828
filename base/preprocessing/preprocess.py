"""Raw database -> the authors' preprocessed format (SPEC §2): the orchestration.

Work is split per video (the audio is shared by ``_left``/``_right`` trials) into three stages that
run in separate *spawned* worker processes, because the openSMILE library crashes when TensorFlow
was imported first in the same process:

1. audio   (pool A): probe the video, ffmpeg -> 16 kHz wav, openSMILE MFCC and eGeMAPS per 10 ms;
2. vggish  (pool B): one VGGish embedding per video frame, batched (TensorFlow lives only here);
3. trials  (pool A): labels, face crops and the features sampled at the labeled frames, written to
   ``npy_data/.tmp-<trial>`` and renamed to ``npy_data/<trial>`` when complete.

Per-video intermediate arrays are cached in ``OUT/.cache/<video>/`` (each written atomically), so a
killed run resumes where it stopped; finished trials are skipped; a bad trial is skipped with a
warning and listed in ``preprocessing_summary.csv``.
"""

from __future__ import annotations

import csv
import json
import logging
import multiprocessing
import os
import shutil
from collections import defaultdict
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from base import atomic
from base.errors import UserError
from base.preprocessing.annotations import read_annotation
from base.preprocessing.database import TEST_PARTITION, DatabaseLayout, Trial, discover_trials
from base.preprocessing.frames import load_face_frames
from base.safe_pickle import save_pickle
from configs import FeatureConfig

log = logging.getLogger(__name__)

SUMMARY_NAME = "preprocessing_summary.csv"
META_NAME = "meta.json"
SUMMARY_COLUMNS = ("trial", "partition", "video", "video_frames", "labeled", "missing_faces",
                   "audio_s", "video_s", "status", "message", "openface")
FEATURE_FILES = ("frame", "mfcc", "egemaps", "vggish", "label")


@dataclass
class VggishSource:
    """Where the VGGish weights come from, and whether they are real."""

    checkpoint: str
    pca_params: str | None
    random_weights: bool


@dataclass
class TrialResult:
    trial: str
    partition: str
    video: str
    video_frames: int = 0
    labeled: int = 0
    missing_faces: int = 0
    audio_s: float = 0.0
    video_s: float = 0.0
    status: str = "ok"
    message: str = ""
    openface: str = ""  # "", "ok" or why OpenFace features are missing
    extra: dict[str, Any] = field(default_factory=dict)

    def row(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k in SUMMARY_COLUMNS}


# ----------------------------------------------------------------------------- small file helpers


def write_json_atomic(path: Path, data: Any) -> None:
    atomic.write_text(path, json.dumps(data, indent=1))


def prepare_output(output: Path) -> None:
    if output.exists() and not output.is_dir():
        raise UserError(f"output path {output} is a file; give a folder (it is created if missing)")
    (output / "npy_data").mkdir(parents=True, exist_ok=True)
    for stale in (output / "npy_data").glob(".tmp-*"):  # half-written trials of a killed run
        shutil.rmtree(stale, ignore_errors=True)


# ----------------------------------------------------------------------------- worker stages


def audio_stage(video_path: str, cache_dir: str, sample_rate: int) -> dict[str, Any]:
    """Stage 1 (no TensorFlow in this process): probe, wav, MFCC and eGeMAPS of one video."""
    from base.preprocessing import media, opensmile_features

    cache = Path(cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    info_path = cache / "video.json"
    if info_path.is_file():
        info = json.loads(info_path.read_text())
    else:
        video = media.probe_video(video_path)
        if not video.has_audio:
            raise UserError(f"video {Path(video_path).name} has no audio track")
        info = {"fps": video.fps, "n_frames": video.n_frames, "video_s": video.duration_s}
    wav = cache / "audio.wav"
    if not wav.is_file():
        info["audio_s"] = media.extract_wav(video_path, wav, sample_rate)
    for name, extract in (("mfcc", opensmile_features.extract_mfcc), ("egemaps", opensmile_features.extract_egemaps)):
        target = cache / f"{name}.npy"
        if not target.is_file():
            atomic.save_npy(target, extract(wav).astype(np.float32))
    write_json_atomic(info_path, info)
    return info


_EXTRACTOR = None


def _init_vggish(checkpoint: str, pca_params: str | None, batch_size: int, num_threads: int,
                 device: str = "cpu") -> None:
    """Initializer of a VGGish worker process: hide the GPUs unless asked (before TensorFlow loads), restore."""
    global _EXTRACTOR
    from vggish import VggishExtractor
    from vggish.extractor import check_device, hide_gpus

    if check_device(device) == "cpu":
        hide_gpus()
    _EXTRACTOR = VggishExtractor(checkpoint, pca_params, batch_size=batch_size, num_threads=num_threads,
                                 device=device)


def vggish_stage(cache_dir: str, fps: float, n_frames: int) -> str:
    """Stage 2 (TensorFlow process): one embedding per video frame, cached as ``vggish.npy``."""
    target = Path(cache_dir) / "vggish.npy"
    if not target.is_file():
        assert _EXTRACTOR is not None, "the VGGish pool was started without its initializer"
        embeddings = _EXTRACTOR.embed_wav_file(Path(cache_dir) / "audio.wav", fps, n_frames)
        atomic.save_npy(target, embeddings.astype(np.float32))
    return str(target)


def trial_stage(trial: Trial, cache_dir: str, output: str, features: FeatureConfig) -> TrialResult:
    """Stage 3: labels, frames and sampled features of one trial, written atomically."""
    from base.preprocessing.sampling import opensmile_rows, sample_rows, vggish_rows

    cache = Path(cache_dir)
    info = json.loads((cache / "video.json").read_text())
    fps, n_video_frames = float(info["fps"]), int(info["n_frames"])
    result = TrialResult(trial.name, trial.partition, trial.video, video_frames=n_video_frames,
                         audio_s=round(float(info.get("audio_s", 0.0)), 3), video_s=round(float(info["video_s"]), 3))
    if trial.annotation_path is not None:
        annotation = read_annotation(trial.annotation_path)
        mismatch = abs(annotation.n_rows - n_video_frames)
        if mismatch > max(2, features.max_label_frame_mismatch * n_video_frames):
            raise UserError(
                f"trial {trial.name}: {annotation.n_rows} annotation rows but the video has {n_video_frames} "
                f"frames; is the annotation for another video?"
            )
        indices = annotation.labeled_indices
        labels = annotation.values[indices].astype(np.float32)
        if len(indices) == 0:
            raise UserError(f"trial {trial.name}: every annotation row is -5 (nothing labeled)")
    else:
        indices = np.arange(n_video_frames)
        labels = None
    frames, missing = load_face_frames(trial.face_dir, indices, features.frame_size)
    mfcc = np.load(cache / "mfcc.npy")
    egemaps = np.load(cache / "egemaps.npy")
    vggish = np.load(cache / "vggish.npy")
    arrays = {
        "frame": frames,
        "mfcc": sample_rows(mfcc, opensmile_rows(indices, fps, features.opensmile_hop_s, n_rows=len(mfcc))),
        "egemaps": sample_rows(egemaps, opensmile_rows(indices, fps, features.opensmile_hop_s, n_rows=len(egemaps))),
        "vggish": sample_rows(vggish, vggish_rows(indices, len(vggish))),
    }
    if labels is not None:
        arrays["label"] = labels
    for name, array in arrays.items():
        if name != "frame" and not np.all(np.isfinite(array)):
            raise UserError(f"trial {trial.name}: {name} has non-finite values")
    result.labeled = len(indices)
    result.missing_faces = missing
    final = Path(output) / "npy_data" / trial.name
    staging = final.with_name(f".tmp-{trial.name}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    for name, array in arrays.items():
        np.save(staging / f"{name}.npy", array)
    meta = {**result.row(), "fps": fps, "n": len(indices)}
    (staging / META_NAME).write_text(json.dumps(meta, indent=1))
    if final.exists():
        shutil.rmtree(final)
    os.replace(staging, final)
    return result


def frame_indices_of(trial: Trial, output: Path) -> np.ndarray:
    """The video frame indices a finished trial's arrays hold (labeled frames, or all for test)."""
    if trial.annotation_path is not None:
        return read_annotation(trial.annotation_path).labeled_indices
    meta = json.loads((output / "npy_data" / trial.name / META_NAME).read_text())
    return np.arange(int(meta["n"]))


def openface_stage(trial: Trial, output: str, features: FeatureConfig) -> str:
    """Optional stage 4: ``landmark.npy`` and ``au.npy`` from OpenFace, added to a finished trial."""
    from base.preprocessing import openface

    output_path = Path(output)
    trial_dir = output_path / "npy_data" / trial.name
    images = openface.list_face_images(trial.face_dir)
    if features.openface_output:
        csv_path = openface.existing_csv(features.openface_output, trial.name)
        if csv_path is None:
            raise UserError(f"no OpenFace CSV {trial.name}.csv in {features.openface_output}")
    else:
        out_dir = output_path / ".cache" / "openface" / trial.name
        csv_path = openface.run_feature_extraction(features.openface_bin, trial.face_dir, out_dir, trial.name)
    frames = openface.read_openface_csv(csv_path)
    landmark, au = openface.openface_features(
        frames, frame_indices_of(trial, output_path), len(images),
        image_frame_numbers=openface.face_image_frame_numbers(images))
    openface.write_openface_arrays(trial_dir, landmark, au)
    if not features.openface_output:
        shutil.rmtree(output_path / ".cache" / "openface" / trial.name, ignore_errors=True)
    return "ok"


def _has_openface(output: Path, trial: Trial) -> bool:
    folder = output / "npy_data" / trial.name
    return (folder / "landmark.npy").is_file() and (folder / "au.npy").is_file()


def _run_openface(trials: list[Trial], output: Path, features: FeatureConfig,
                  results: dict[str, TrialResult], quiet: bool) -> None:
    from base.preprocessing.openface import find_openface

    if features.openface_bin:
        find_openface(features.openface_bin)  # one clear error before any work
    elif not Path(features.openface_output).is_dir():
        raise UserError(f"OpenFace output folder {features.openface_output} does not exist")
    todo = [t for t in trials if results[t.name].status != "skipped" and (output / "npy_data" / t.name).is_dir()]
    for trial in todo:
        if _has_openface(output, trial):
            results[trial.name].openface = "ok"
    todo = [t for t in todo if not results[t.name].openface]
    if not todo:
        return
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max(1, features.jobs), mp_context=context) as pool:
        futures = {pool.submit(openface_stage, t, str(output), features): t for t in todo}
        for future in tqdm(futures, desc="openface", disable=quiet):
            trial = futures[future]
            error = future.exception()
            results[trial.name].openface = "ok" if error is None else _error_message(error)
            if error is not None:
                log.warning("OpenFace features of trial %s: %s (its other features are kept)",
                            trial.name, _error_message(error))


# ----------------------------------------------------------------------------- orchestration


def _done_result(output: Path, trial: Trial) -> TrialResult | None:
    meta_path = output / "npy_data" / trial.name / META_NAME
    if not meta_path.is_file():
        return None
    meta = json.loads(meta_path.read_text())
    result = TrialResult(**{k: meta[k] for k in SUMMARY_COLUMNS if k in meta})
    result.status = "done earlier"
    return result


def _failed(trial: Trial, message: str) -> TrialResult:
    return TrialResult(trial.name, trial.partition, trial.video, status="skipped", message=message)


def _error_message(exc: BaseException) -> str:
    if isinstance(exc, UserError):
        return str(exc)
    return f"internal error {type(exc).__name__}: {exc}"


def preprocess_database(database: str | Path, output: str | Path, features: FeatureConfig,
                        vggish_source: VggishSource, quiet: bool = False,
                        keep_cache: bool = False) -> list[TrialResult]:
    """Preprocess every trial of ``database`` into ``output``; returns one result per trial."""
    database, output = Path(database), Path(output)
    trials = discover_trials(database, DatabaseLayout.of(features))
    prepare_output(output)
    results: dict[str, TrialResult] = {}
    pending: dict[str, list[Trial]] = defaultdict(list)
    for trial in trials:
        done = _done_result(output, trial)
        if done is not None:
            results[trial.name] = done
        elif trial.video_path is None:
            results[trial.name] = _failed(trial, f"no video named {trial.video}.* in the video folders")
        else:
            if trial.annotation_path is not None:
                try:  # a bad annotation should not cost an audio extraction
                    read_annotation(trial.annotation_path)
                except UserError as exc:
                    results[trial.name] = _failed(trial, str(exc))
                    continue
            pending[trial.video].append(trial)
    n_done = sum(r.status == "done earlier" for r in results.values())
    log.info("%d trials: %d done earlier, %d to process in %d videos", len(trials), n_done,
             sum(map(len, pending.values())), len(pending))
    if pending:
        _run_pools(pending, output, features, vggish_source, results, quiet)
    for video, video_trials in pending.items():
        if not keep_cache and all(results[t.name].status == "ok" for t in video_trials):
            shutil.rmtree(output / ".cache" / video, ignore_errors=True)
    if features.openface_bin or features.openface_output:
        _run_openface(trials, output, features, results, quiet)
    ordered = [results[t.name] for t in trials]
    for result in ordered:
        if result.status == "skipped":
            log.warning("skipped trial %s: %s", result.trial, result.message)
    write_summary(output / SUMMARY_NAME, ordered)
    write_dataset_info(output, trials, results, vggish_source, features)
    return ordered


def _run_pools(pending: dict[str, list[Trial]], output: Path, features: FeatureConfig,
               vggish_source: VggishSource, results: dict[str, TrialResult], quiet: bool) -> None:
    context = multiprocessing.get_context("spawn")
    n_audio_workers = max(1, features.jobs)
    # VGGish is the heaviest stage: half the jobs as processes, the cores shared out as TF threads
    n_vggish_workers = max(1, min(features.jobs, len(pending)) // 2)
    vggish_threads = max(1, features.jobs // n_vggish_workers)
    cache_root = output / ".cache"
    bars = {name: tqdm(total=total, desc=name, disable=quiet, position=i, leave=True)
            for i, (name, total) in enumerate((("audio", len(pending)), ("vggish", len(pending)),
                                               ("trials", sum(map(len, pending.values())))))}
    with ProcessPoolExecutor(n_audio_workers, mp_context=context) as pool_a, \
            ProcessPoolExecutor(n_vggish_workers, mp_context=context, initializer=_init_vggish,
                                initargs=(vggish_source.checkpoint, vggish_source.pca_params,
                                          features.vggish_batch_size, vggish_threads,
                                          features.vggish_device)) as pool_b:
        futures: dict[Future, tuple[str, str, Any]] = {}
        for video, video_trials in pending.items():
            cache = str(cache_root / video)
            future = pool_a.submit(audio_stage, str(video_trials[0].video_path), cache, features.sample_rate)
            futures[future] = ("audio", video, cache)
        while futures:
            finished, _ = wait(futures, return_when=FIRST_COMPLETED)
            for future in finished:
                stage, video, payload = futures.pop(future)
                bars[stage].update(1)
                error = future.exception()
                if error is not None:
                    affected = [payload] if stage == "trials" else pending[video]
                    for trial in affected:
                        results[trial.name] = _failed(trial, _error_message(error))
                    if stage != "trials":
                        bars["trials"].update(len(affected))
                        if stage == "audio":
                            bars["vggish"].update(1)
                    continue
                if stage == "audio":
                    info = future.result()
                    cache = payload
                    next_future = pool_b.submit(vggish_stage, cache, info["fps"], info["n_frames"])
                    futures[next_future] = ("vggish", video, cache)
                elif stage == "vggish":
                    cache = str(cache_root / video)
                    for trial in pending[video]:
                        next_future = pool_a.submit(trial_stage, trial, cache, str(output), features)
                        futures[next_future] = ("trials", video, trial)
                else:
                    results[payload.name] = future.result()
    for bar in bars.values():
        bar.close()


def write_summary(path: Path, results: list[TrialResult]) -> None:
    with atomic.atomic_path(path) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=SUMMARY_COLUMNS)
        writer.writeheader()
        for result in results:
            writer.writerow(result.row())


def write_dataset_info(output: Path, trials: list[Trial], results: dict[str, TrialResult],
                       vggish_source: VggishSource, features: FeatureConfig) -> None:
    """``dataset_info.pkl`` in the authors' layout, listing the trials that exist on disk."""
    partition: dict[str, dict[str, int]] = {"Train_Set": {}, "Validation_Set": {}, TEST_PARTITION: {}}
    fps: dict[str, float] = {}
    video: dict[str, str] = {}
    for trial in sorted(trials, key=lambda t: t.name):
        meta_path = output / "npy_data" / trial.name / META_NAME
        if results[trial.name].status == "skipped" or not meta_path.is_file():
            continue
        meta = json.loads(meta_path.read_text())
        partition[trial.partition][trial.name] = int(meta["n"])
        fps[trial.name] = float(meta["fps"])
        video[trial.name] = trial.video
    weights = ("RANDOM VGGish weights (demo only: these features carry no AudioSet knowledge)"
               if vggish_source.random_weights else f"VGGish checkpoint {vggish_source.checkpoint}")
    info = {
        "partition": partition,
        "fps": fps,
        "video": video,
        "vggish_weights": weights,
        "egemaps_feature_set": _egemaps_version(),
        "frame_size": features.frame_size,
    }
    save_pickle(info, output / "dataset_info.pkl")


def _egemaps_version() -> str:
    try:
        from base.preprocessing.opensmile_features import EGEMAPS_VERSION
    except ImportError:
        return "unknown"
    return str(EGEMAPS_VERSION)
