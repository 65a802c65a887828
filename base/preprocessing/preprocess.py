"""Raw database -> the authors' preprocessed format (SPEC §2): the orchestration.

Work is split per video (the audio is shared by ``_left``/``_right`` trials) into three stages that
run in separate *spawned* worker processes, because the openSMILE library crashes when TensorFlow
was imported first in the same process:

1. audio   (pool A): probe the video, ffmpeg -> 16 kHz wav, and what the feature sets need:
   openSMILE MFCC and eGeMAPS per 10 ms (abaw2), the VGGish log-mel spectrogram (numpy) and the
   eGeMAPS functionals of every video frame's one-second segment (abaw5);
2. vggish  (pool B): one VGGish embedding per video frame, batched (TensorFlow lives only here);
   only for abaw2: with ``features`` abaw5 alone no TensorFlow process starts;
3. trials  (pool A): labels, face crops and the features sampled at the labeled frames, written to
   ``npy_data/.tmp-<trial>`` and renamed to ``npy_data/<trial>`` when complete.

``features`` (``configs.FeatureSet``) chooses the files: abaw2 (the paper's, unchanged) and/or
abaw5 (the authors' second generation: ``logmel.npy``, ``egemaps_functionals.npy``). A finished
trial that lacks a file of the chosen sets gets it in a later run; the files it has are kept.

Per-video intermediate arrays are cached in ``OUT/.cache/<video>/`` (each written atomically), so a
killed run resumes where it stopped; finished trials are skipped; a bad trial is skipped with a
warning and listed in ``preprocessing_summary.csv``.

A failure of the machine is not a bad trial (``base.preprocessing.failures``): no new work starts,
finished trials are kept, and ``EnvironmentFailure`` ends the run with one line. A worker process
that dies is replaced and its videos are retried once (``base.preprocessing.pools``); a video whose
worker dies twice is given up and named. With ``shard``, only that shard's videos are processed
(``base.preprocessing.shards``) and the last shard to finish writes the shared files.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import logging
import multiprocessing
import os
import shutil
import tempfile
from collections import Counter, defaultdict
from collections.abc import Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from base import atomic
from base.errors import EnvironmentFailure, MissingTool, UserError
from base.preprocessing import shards
from base.preprocessing.annotations import read_annotation
from base.preprocessing.database import TEST_PARTITION, DatabaseLayout, Trial, discover_trials
from base.preprocessing.failures import MACHINE, classify, describe_exit
from base.preprocessing.frames import write_face_frames
from base.preprocessing.pools import WorkerPool
from base.safe_pickle import load_pickle, save_pickle
from configs import FeatureConfig, FeatureSet, feature_files

log = logging.getLogger(__name__)

SUMMARY_NAME = "preprocessing_summary.csv"
META_NAME = "meta.json"
SUMMARY_COLUMNS = ("trial", "partition", "video", "video_frames", "labeled", "missing_faces",
                   "audio_s", "video_s", "status", "message", "openface")
LABEL_FILE, FRAME_FILE = "label", "frame"
# per-video caches (OUT/.cache/<video>/<name>.npy) of the audio stage, and the cache each trial file is sampled from
MFCC_CACHE, EGEMAPS_CACHE, LOG_MEL_CACHE, FUNCTIONALS_CACHE = "mfcc", "egemaps", "log_mel_spectrogram", "egemaps_functionals"
VGGISH_CACHE = "vggish"  # the VGGish stage's
AUDIO_CACHES = (MFCC_CACHE, EGEMAPS_CACHE, LOG_MEL_CACHE, FUNCTIONALS_CACHE)
FILE_CACHE = {"mfcc": MFCC_CACHE, "egemaps": EGEMAPS_CACHE, "vggish": VGGISH_CACHE, "logmel": LOG_MEL_CACHE,
              "egemaps_functionals": FUNCTIONALS_CACHE}
NO_VGGISH = "none: this run wrote no vggish.npy (features: abaw5)"
SILENT_AUDIO = "the audio track is silent (every sample is 0): its audio features are constant"
# summary statuses: finished now or before; bad input (exit 1); not finished because the machine failed (exit 3)
OK, DONE_EARLIER, SKIPPED, NOT_DONE = "ok", "done earlier", "skipped", "not done"
MAX_WORKER_DEATHS = 2  # a video whose worker dies twice is given up (the messages say "twice")
MAX_UNEXPLAINED_DEATHS = 3  # workers dying on no known video: the machine itself is the problem
# FeatureConfig fields that change the arrays: every shard of one output must share them
PLAN_SETTINGS = ("frame_size", "sample_rate", "opensmile_hop_s", "max_label_frame_mismatch", "features")


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


def prepare_output(output: Path, trials: Sequence[Trial]) -> None:
    """Create ``npy_data/`` and remove the half-written folders a killed run left for ``trials``.

    Only these trials': another shard may be writing its own ``.tmp-*`` folders at the same time.
    """
    if output.exists() and not output.is_dir():
        raise UserError(f"output path {output} is a file; give a folder (it is created if missing)")
    (output / "npy_data").mkdir(parents=True, exist_ok=True)
    for trial in trials:
        shutil.rmtree(output / "npy_data" / f".tmp-{trial.name}", ignore_errors=True)


def random_vggish_checkpoint(folder: Path) -> Path:
    """The demo's random VGGish weights (seed 0) in ``folder``, written once even by concurrent shards.

    Written into a private folder renamed to ``folder`` when complete: a shard never reads another's
    half-written checkpoint.
    """
    path = folder / "vggish_model.ckpt"
    index = Path(str(path) + ".index")
    if index.is_file():
        return path
    from vggish import checkpoint as vggish_checkpoint

    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    staging.chmod(atomic.default_dir_mode())  # readable by the other users of a shared folder
    try:
        vggish_checkpoint.write_random_checkpoint(str(staging / path.name), seed=0)
        try:
            os.rename(staging, folder)  # fails when another shard got there first
        except OSError:
            if not index.is_file():  # an incomplete folder of an older version: replace it
                shutil.rmtree(folder, ignore_errors=True)
                os.rename(staging, folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return path


def check_tools() -> None:
    """Fail before any work when ffmpeg or openSMILE is missing (a failure of the machine, exit 3)."""
    from base.preprocessing.media import find_ffmpeg

    find_ffmpeg()
    if importlib.util.find_spec("opensmile") is None:
        raise MissingTool("openSMILE (the opensmile package) is not installed: pip install -r requirements.txt")


# ----------------------------------------------------------------------------- worker stages


def audio_caches(files: Sequence[str]) -> tuple[str, ...]:
    """The audio stage's caches that the trial files ``files`` are sampled from, in ``AUDIO_CACHES`` order."""
    wanted = {FILE_CACHE[name] for name in files if name in FILE_CACHE}
    return tuple(name for name in AUDIO_CACHES if name in wanted)


def _is_silent(wav: Path, block_frames: int = 1 << 20) -> bool:
    """Whether every sample of the wav is 0 (read a block at a time)."""
    import soundfile as sf

    return not any(np.any(block) for block in sf.blocks(str(wav), blocksize=block_frames, dtype="int16"))


def audio_stage(video_path: str, cache_dir: str, sample_rate: int,
                caches: Sequence[str] = (MFCC_CACHE, EGEMAPS_CACHE)) -> dict[str, Any]:
    """Stage 1 (no TensorFlow in this process): probe and wav of one video, and its ``caches`` (``AUDIO_CACHES``)."""
    import soundfile as sf

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
    elif "audio_s" not in info:  # the wav of a run stopped before video.json was written
        info["audio_s"] = sf.info(str(wav)).frames / sample_rate
    if "silent" not in info:
        info["silent"] = _is_silent(wav)

    def extract(name: str) -> np.ndarray:
        if name == MFCC_CACHE:
            return opensmile_features.extract_mfcc(wav)
        if name == EGEMAPS_CACHE:
            return opensmile_features.extract_egemaps(wav)
        if name == LOG_MEL_CACHE:
            from base.preprocessing.logmel import log_mel_of_wav

            return log_mel_of_wav(wav)
        from base.preprocessing.egemaps_functionals import extract_egemaps_functionals

        return extract_egemaps_functionals(wav, float(info["fps"]), int(info["n_frames"]))

    for name in caches:
        target = cache / f"{name}.npy"
        if not target.is_file():
            atomic.save_npy(target, extract(name).astype(np.float32))
    write_json_atomic(info_path, info)
    return info


_EXTRACTOR = None


def _init_vggish(checkpoint: str, pca_params: str | None, batch_size: int, num_threads: int,
                 device: str = "cpu", engine: str = "tf") -> None:
    """Initializer of a VGGish worker process: hide the GPUs unless asked (before TensorFlow or torch
    loads), restore the weights into the engine (``tf``; ``torch`` never imports TensorFlow)."""
    global _EXTRACTOR
    from vggish.engines import make_extractor
    from vggish.extractor import check_device, hide_gpus

    if check_device(device) == "cpu":
        hide_gpus()
    _EXTRACTOR = make_extractor(engine, checkpoint, pca_params, batch_size=batch_size, num_threads=num_threads,
                                device=device)


def vggish_stage(cache_dir: str, fps: float, n_frames: int) -> str:
    """Stage 2 (the VGGish engine's process): one embedding per video frame, cached as ``vggish.npy``."""
    target = Path(cache_dir) / "vggish.npy"
    if not target.is_file():
        assert _EXTRACTOR is not None, "the VGGish pool was started without its initializer"
        embeddings = _EXTRACTOR.embed_wav_file(Path(cache_dir) / "audio.wav", fps, n_frames)
        atomic.save_npy(target, embeddings.astype(np.float32))
    return str(target)


def trial_stage(trial: Trial, cache_dir: str, output: str, features: FeatureConfig,
                files: Sequence[str] | None = None) -> TrialResult:
    """Stage 3: labels, frames and sampled features of one trial, written atomically.

    Args:
        files: the npy file stems to write (default: every file of ``features.features``); the other
            files of an earlier run's folder for this trial are kept when they have its length.
    """
    from base.preprocessing.sampling import opensmile_rows, sample_rows, vggish_rows

    files = feature_files(features.features) if files is None else tuple(files)
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
    arrays: dict[str, np.ndarray] = {}
    for name in ("mfcc", "egemaps"):  # openSMILE LLDs: the 10 ms row nearest to each frame
        if name in files:
            lld = np.load(cache / f"{FILE_CACHE[name]}.npy")
            arrays[name] = sample_rows(lld, opensmile_rows(indices, fps, features.opensmile_hop_s, n_rows=len(lld)))
    for name in ("vggish", "egemaps_functionals"):  # one row per video frame
        if name in files:
            per_frame = np.load(cache / f"{FILE_CACHE[name]}.npy")
            arrays[name] = sample_rows(per_frame, vggish_rows(indices, len(per_frame)))
    if labels is not None and LABEL_FILE in files:
        arrays[LABEL_FILE] = labels
    for name, array in arrays.items():
        if not np.all(np.isfinite(array)):
            raise UserError(f"trial {trial.name}: {name} has non-finite values")
    result.labeled = len(indices)
    if info.get("silent"):
        result.message = SILENT_AUDIO
    final = Path(output) / "npy_data" / trial.name
    staging = final.with_name(f".tmp-{trial.name}")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        staging.mkdir(parents=True)
        # (n, 48, 48, 3) crops and (n, 96, 64) patches: written a block at a time (memory flat in the trial length)
        result.missing_faces = write_face_frames(staging / f"{FRAME_FILE}.npy", trial.face_dir, indices,
                                                 features.frame_size)
        for name, array in arrays.items():
            np.save(staging / f"{name}.npy", array)
        if "logmel" in files:
            from base.preprocessing.logmel import patch_starts_of_frames, write_logmel

            log_mel_path = cache / f"{LOG_MEL_CACHE}.npy"
            n_log_mel_frames = len(np.load(log_mel_path, mmap_mode="r"))  # (T, 64)
            write_logmel(staging / "logmel.npy", log_mel_path,
                         patch_starts_of_frames(indices, fps, n_video_frames, n_log_mel_frames))
        _keep_other_files(final, staging, len(indices))
        meta = {**result.row(), "fps": fps, "n": len(indices)}
        (staging / META_NAME).write_text(json.dumps(meta, indent=1))
    except Exception:
        shutil.rmtree(staging, ignore_errors=True)  # a full disk, a bad spectrogram: no half folder left
        raise
    if final.exists():
        shutil.rmtree(final)
    os.replace(staging, final)
    return result


def _keep_other_files(final: Path, staging: Path, n: int) -> None:
    """Link into ``staging`` the npy files of an earlier ``final`` that this run does not write (another
    feature set's, OpenFace's), if they still have the trial's ``n`` rows."""
    if not final.is_dir():
        return
    for old in sorted(final.glob("*.npy")):
        new = staging / old.name
        if new.exists():
            continue
        try:
            rows = np.load(old, mmap_mode="r", allow_pickle=False).shape[:1]
        except (ValueError, OSError):
            rows = ()
        if rows != (n,):
            log.warning("%s: dropped (it does not have the trial's %d rows)", old, n)
            continue
        try:
            os.link(old, new)
        except OSError:  # a file system without hard links
            shutil.copy2(old, new)


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
    machine_failure = None
    with ProcessPoolExecutor(max(1, features.jobs), mp_context=context) as pool:
        futures = {pool.submit(openface_stage, t, str(output), features): t for t in todo}
        for future in tqdm(futures, desc="openface", disable=quiet):
            trial = futures[future]
            error = future.exception()
            if error is None:
                results[trial.name].openface = "ok"
                continue
            failure = classify(error, output)
            results[trial.name].openface = failure.message
            if failure.kind == MACHINE:
                machine_failure = machine_failure or failure.message
            else:
                log.warning("OpenFace features of trial %s: %s (its other features are kept)",
                            trial.name, failure.message)
    if machine_failure is not None:
        raise EnvironmentFailure(f"OpenFace features: {machine_failure} (the other features of every trial "
                                 "are kept)")


# ----------------------------------------------------------------------------- orchestration


def _missing_files(output: Path, trial: Trial | shards.PlannedTrial, files: Sequence[str]) -> list[str] | None:
    """The ``files`` a finished trial lacks (``label`` only counts for an annotated one); None when not finished."""
    folder = output / "npy_data" / trial.name
    if not (folder / META_NAME).is_file():
        return None
    annotated = trial.partition != TEST_PARTITION
    return [name for name in files if (annotated or name != LABEL_FILE) and not (folder / f"{name}.npy").is_file()]


def _done_result(output: Path, trial: Trial | shards.PlannedTrial,
                 files: Sequence[str] = FeatureSet.ABAW2.files) -> TrialResult | None:
    """The summary row of a trial that has every file of ``files``; else None."""
    if _missing_files(output, trial, files) != []:
        return None
    meta = json.loads((output / "npy_data" / trial.name / META_NAME).read_text())
    result = TrialResult(**{k: meta[k] for k in SUMMARY_COLUMNS if k in meta})
    result.status = DONE_EARLIER
    return result


def _failed(trial: Trial, message: str, status: str = SKIPPED) -> TrialResult:
    return TrialResult(trial.name, trial.partition, trial.video, status=status, message=message)


def vggish_weights_text(vggish_source: VggishSource | None) -> str:
    """What ``dataset_info.pkl`` says about the VGGish weights (None: no VGGish in this run)."""
    if vggish_source is None:
        return NO_VGGISH
    if vggish_source.random_weights:
        return "RANDOM VGGish weights (demo only: these features carry no AudioSet knowledge)"
    return f"VGGish checkpoint {vggish_source.checkpoint}"


def plan_settings(features: FeatureConfig, vggish_source: VggishSource | None) -> dict[str, Any]:
    """The settings every shard of one output must share (JSON values: the recorded plan is compared with them)."""
    settings = {key: getattr(features, key) for key in PLAN_SETTINGS}
    settings["features"] = sorted(set(features.features))
    settings["random_vggish_weights"] = vggish_source is not None and vggish_source.random_weights
    return settings


def preprocess_database(database: str | Path, output: str | Path, features: FeatureConfig,
                        vggish_source: VggishSource | None, quiet: bool = False,
                        keep_cache: bool = False, shard: shards.Shard | None = None) -> list[TrialResult]:
    """Preprocess every trial of ``database`` (or of one shard) into ``output``; one result per trial.

    Args:
        vggish_source: the VGGish weights; None when ``features.features`` has no abaw2 (no VGGish).

    Raises:
        EnvironmentFailure: the machine failed (no space, a dead worker, ...); finished trials are
            kept, the summary lists what is not done, and ``dataset_info.pkl`` is not written.
    """
    database, output = Path(database), Path(output)
    trials = discover_trials(database, DatabaseLayout.of(features))
    if shard is not None:
        if output.exists() and not output.is_dir():
            raise UserError(f"output path {output} is a file; give a folder (it is created if missing)")
        plan = shards.record_plan(output, shards.make_plan(trials, shard.count, plan_settings(features, vggish_source),
                                                           vggish_weights_text(vggish_source)))
        mine = {t.name for t in plan.trials_of(shard.index)}
        log.info("shard %s: %d of %d trials", shard, len(mine), len(trials))
        trials = [t for t in trials if t.name in mine]
    if FeatureSet.ABAW2 in features.features and vggish_source is None:
        raise ValueError("the abaw2 features need VGGish weights (vggish_source)")
    prepare_output(output, trials)
    results: dict[str, TrialResult] = {}
    pending: dict[str, list[Trial]] = defaultdict(list)
    wanted = feature_files(features.features)
    todo: dict[str, tuple[str, ...]] = {}  # trial -> the files to write
    for trial in trials:
        missing = _missing_files(output, trial, wanted)
        if missing == []:
            results[trial.name] = _done_result(output, trial, wanted)
            continue
        # an earlier run's trial lacking a feature set: the missing files, and its frames and labels again
        todo[trial.name] = wanted if missing is None else tuple(
            name for name in wanted if name in missing or name in (FRAME_FILE, LABEL_FILE))
        if trial.video_path is None:
            results[trial.name] = _failed(trial, f"no video named {trial.video}.* in the video folders")
        else:
            if trial.annotation_path is not None:
                try:  # a bad annotation should not cost an audio extraction
                    read_annotation(trial.annotation_path)
                except UserError as exc:
                    results[trial.name] = _failed(trial, str(exc))
                    continue
            pending[trial.video].append(trial)
    n_done = sum(r.status == DONE_EARLIER for r in results.values())
    log.info("%d trials: %d done earlier, %d to process in %d videos", len(trials), n_done,
             sum(map(len, pending.values())), len(pending))
    machine_failure = None
    if pending:
        check_tools()
        run = _StageRun(pending, output, features, vggish_source, results, quiet, todo)
        run.run()
        machine_failure = run.failure_line()
    for video, video_trials in pending.items():
        if not keep_cache and all(results[t.name].status == OK for t in video_trials):
            shutil.rmtree(output / ".cache" / video, ignore_errors=True)
    if machine_failure is None and (features.openface_bin or features.openface_output):
        _run_openface(trials, output, features, results, quiet)
    ordered = [results[t.name] for t in trials]
    for result in ordered:
        if result.status == SKIPPED:
            log.warning("skipped trial %s: %s", result.trial, result.message)
        elif result.status == OK and result.message:
            log.warning("trial %s: %s", result.trial, result.message)
    if machine_failure is not None:
        n_ready = sum(r.status in (OK, DONE_EARLIER) for r in ordered)
        _write_results_best_effort(output, ordered, shard)
        raise EnvironmentFailure(f"{machine_failure} ({n_ready} of {len(ordered)} trials are ready and kept; "
                                 "rerunning the same command continues)")
    if shard is None:
        write_summary(output / SUMMARY_NAME, ordered)
        weights = vggish_weights_text(vggish_source) if vggish_source is not None else _previous_vggish_weights(output)
        write_dataset_info(output, trials, {r.trial for r in ordered if r.status in (OK, DONE_EARLIER)},
                           weights, features.frame_size)
    else:
        shards.write_shard_results(output, shard, [r.row() for r in ordered])
        finalize_shards(output, must_complete=False)
    return ordered


def _previous_vggish_weights(output: Path) -> str:
    """What an earlier run's ``dataset_info.pkl`` said about VGGish (its vggish.npy files are kept), else NO_VGGISH."""
    path = output / "dataset_info.pkl"
    if path.is_file():
        previous = load_pickle(path)
        if isinstance(previous, dict) and isinstance(previous.get("vggish_weights"), str):
            return previous["vggish_weights"]
    return NO_VGGISH


def _write_results_best_effort(output: Path, ordered: list[TrialResult], shard: shards.Shard | None) -> None:
    """The summary (or the shard's results) of a run the machine stopped; a full disk may refuse it too."""
    try:
        if shard is None:
            write_summary(output / SUMMARY_NAME, ordered)
        else:
            shards.write_shard_results(output, shard, [r.row() for r in ordered])
    except OSError as exc:
        log.warning("could not write the summary either: %s", classify(exc, output).message)


def finalize_shards(output: str | Path, must_complete: bool = True) -> list[TrialResult] | None:
    """Write ``dataset_info.pkl`` and the summary of a sharded output once every trial is there.

    Args:
        output: the output folder the shards share.
        must_complete: refuse (``UserError`` listing what is missing) when a trial is not done;
            else log it and return None (a shard that is not the last to finish).

    Returns:
        One result per trial of the plan, in the database's order (None when not complete).
    """
    output = Path(output)
    plan = shards.read_plan(output)
    with shards.finalize_lock(output):
        rows = shards.read_shard_results(output)
        results: list[TrialResult] = []
        missing: list[shards.PlannedTrial] = []
        files = feature_files(tuple(shards.setting(plan, "features")))
        for trial in plan.trials:
            done = _done_result(output, trial, files)
            row = rows.get(trial.name)
            if done is not None:
                results.append(TrialResult(**row) if row and row["status"] in (OK, DONE_EARLIER) else done)
            elif row is not None and row["status"] == SKIPPED:
                results.append(TrialResult(**row))
            else:
                missing.append(trial)
        if missing:
            message = shards.missing_message(missing, plan)
            if must_complete:
                raise UserError(f"cannot finalize: {message}; run (or rerun) those shards, then --finalize")
            log.info("%s; the last shard to finish (or --finalize) writes dataset_info.pkl", message)
            return None
        write_summary(output / SUMMARY_NAME, results)
        write_dataset_info(output, plan.trials, {r.trial for r in results if r.status != SKIPPED},
                           plan.vggish_weights, int(plan.settings["frame_size"]))
    log.info("all %d shards are done: wrote %s and %s", plan.n_shards, output / "dataset_info.pkl",
             output / SUMMARY_NAME)
    return results


AUDIO, VGGISH, TRIALS = "audio", "vggish", "trials"  # the stages, in order


@dataclass(frozen=True)
class _Task:
    stage: str
    video: str
    trial: Trial | None = None  # the trials stage works on one trial


class _StageRun:
    """The three stages over the pending videos, in two worker pools that survive dead workers.

    A task that fails on bad input skips its trials; one that fails because of the machine stops
    new work (``stop``); a task whose worker died is retried in a fresh pool, unless its video has
    now killed ``MAX_WORKER_DEATHS`` workers (``given_up``). A video none of whose trials needs
    ``vggish.npy`` skips the VGGish stage; when no video needs it, no VGGish process starts.
    """

    def __init__(self, pending: dict[str, list[Trial]], output: Path, features: FeatureConfig,
                 vggish_source: VggishSource | None, results: dict[str, TrialResult], quiet: bool,
                 todo: dict[str, tuple[str, ...]] | None = None) -> None:
        self.pending, self.output, self.features, self.results = pending, output, features, results
        self.vggish_source = vggish_source or VggishSource("", None, random_weights=False)  # unused then
        wanted = feature_files(features.features)
        self.todo = {t.name: (todo or {}).get(t.name, wanted) for trials in pending.values() for t in trials}
        self.video_files = {video: {name for t in trials for name in self.todo[t.name]}
                            for video, trials in pending.items()}  # the files each video's trials write
        # the VGGish pool starts processes only when a task is submitted: with no such video, none starts
        self.with_vggish = {video for video, files in self.video_files.items() if "vggish" in files}
        if self.with_vggish and vggish_source is None:
            raise ValueError("vggish.npy is to be written but no VGGish weights were given")
        self.cache_root = output / ".cache"
        self.info: dict[str, dict[str, Any]] = {}  # video -> what the audio stage found
        self.futures: dict[Future, tuple[_Task, WorkerPool, int]] = {}
        self.deaths: Counter[str] = Counter()  # video -> workers it killed
        self.unexplained_deaths = 0
        self.stop: str | None = None  # the machine failure that stopped new work
        self.given_up: dict[str, str] = {}  # video -> why
        totals = ((AUDIO, len(pending)), (VGGISH, len(self.with_vggish)), (TRIALS, sum(map(len, pending.values()))))
        self.bars = {name: tqdm(total=total, desc=name, disable=quiet, position=i, leave=True)
                     for i, (name, total) in enumerate(totals)}
        self.pools: dict[str, WorkerPool] = {}

    def run(self) -> None:
        jobs = max(1, self.features.jobs)
        # VGGish is the heaviest stage: half the jobs as processes, the cores shared out as TF threads
        n_vggish_workers = max(1, min(jobs, len(self.pending)) // 2)
        source = self.vggish_source
        interrupted = False
        try:
            self.pools[AUDIO] = self.pools[TRIALS] = WorkerPool(AUDIO, jobs)
            self.pools[VGGISH] = WorkerPool(
                VGGISH, n_vggish_workers, initializer=_init_vggish,
                initargs=(source.checkpoint, source.pca_params, self.features.vggish_batch_size,
                          max(1, jobs // n_vggish_workers), self.features.vggish_device,
                          self.features.vggish_engine))
            for video in self.pending:
                self._submit(_Task(AUDIO, video))
            while self.futures:
                finished, _ = wait(self.futures, return_when=FIRST_COMPLETED)
                for future in finished:
                    self._collect(future)
        except KeyboardInterrupt:
            interrupted = True
            raise
        finally:
            for pool in {id(p): p for p in self.pools.values()}.values():
                pool.shutdown(terminate=interrupted)
            for bar in self.bars.values():
                bar.close()
        for trials in self.pending.values():
            for trial in trials:
                if trial.name not in self.results:
                    self.results[trial.name] = _failed(trial, str(self.stop), status=NOT_DONE)

    def failure_line(self) -> str | None:
        """One line on what the machine did to this run, or None."""
        if self.stop is not None:
            return self.stop
        if self.given_up:
            return "; ".join(f"video {video}: {why}" for video, why in sorted(self.given_up.items()))
        return None

    def _cache(self, video: str) -> str:
        return str(self.cache_root / video)

    def _submit(self, task: _Task) -> None:
        if self.stop is not None:
            return
        pool = self.pools[task.stage]
        if task.stage == AUDIO:
            video_path = str(self.pending[task.video][0].video_path)
            args: tuple = (audio_stage, video_path, self._cache(task.video), self.features.sample_rate,
                           audio_caches(sorted(self.video_files[task.video])))
        elif task.stage == VGGISH:
            info = self.info[task.video]
            args = (vggish_stage, self._cache(task.video), info["fps"], info["n_frames"])
        else:
            args = (trial_stage, task.trial, self._cache(task.video), str(self.output), self.features,
                    self.todo[task.trial.name])
        future = pool.submit(task.stage, task.video, *args)
        self.futures[future] = (task, pool, pool.generation)

    def _collect(self, future: Future) -> None:
        task, pool, generation = self.futures.pop(future)
        if future.cancelled():
            return
        error = future.exception()
        if error is None:
            self._succeeded(task, future.result())
        elif isinstance(error, BrokenProcessPool):
            self._worker_died(task, pool, generation)
        else:
            failure = classify(error, self.output)
            if failure.kind == MACHINE:
                self._stop(failure.message)
            else:
                self._fail(task, failure.message, SKIPPED)

    def _succeeded(self, task: _Task, value: Any) -> None:
        self.bars[task.stage].update(1)
        if task.stage == AUDIO and task.video in self.with_vggish:
            self.info[task.video] = value
            self._submit(_Task(VGGISH, task.video))
        elif task.stage in (AUDIO, VGGISH):
            for trial in self.pending[task.video]:
                self._submit(_Task(TRIALS, task.video, trial))
        else:
            self.results[task.trial.name] = value

    def _fail(self, task: _Task, message: str, status: str) -> None:
        """Record the task's trials (all of its video's before the trials stage) as failed."""
        trials = [task.trial] if task.stage == TRIALS else self.pending[task.video]
        for trial in trials:
            if trial.name not in self.results:
                self.results[trial.name] = _failed(trial, message, status)
        later = (AUDIO, VGGISH, TRIALS)[(AUDIO, VGGISH, TRIALS).index(task.stage):]
        for stage in later:
            if stage != VGGISH or task.video in self.with_vggish:
                self.bars[stage].update(len(trials) if stage == TRIALS else 1)

    def _stop(self, message: str) -> None:
        """A failure of the machine: start nothing new, let the running tasks finish."""
        if self.stop is None:
            self.stop = message
            log.info("stopping: %s", message)
        for future in list(self.futures):
            future.cancel()

    def _worker_died(self, task: _Task, pool: WorkerPool, generation: int) -> None:
        if pool.generation == generation:  # the first news of this death: replace the pool, find who died
            dead = pool.restart()
            explained = [d for d in dead if d.video is not None]
            for worker in explained:
                self.deaths[worker.video] += 1
                how = describe_exit(worker.exitcode)
                if self.deaths[worker.video] >= MAX_WORKER_DEATHS:
                    self.given_up[worker.video] = (
                        f"its worker died twice, the last time in the {worker.stage} stage: it {how}; lower --jobs "
                        "(or free memory) and rerun")
                    log.warning("the %s worker on video %s %s again: that video is given up", worker.stage,
                                worker.video, how)
                else:
                    log.warning("the %s worker on video %s %s: retrying its work in a new pool", worker.stage,
                                worker.video, how)
            if not explained:
                self.unexplained_deaths += 1
                how = describe_exit(dead[0].exitcode) if dead else "died"
                log.warning("a %s worker %s: retrying its work in a new pool", pool.name, how)
                if self.unexplained_deaths >= MAX_UNEXPLAINED_DEATHS:
                    self._stop(f"{pool.name} worker processes keep dying (the last {how}): lower --jobs "
                               "(or free memory) and rerun")
        if task.video in self.given_up:
            self._fail(task, self.given_up[task.video], NOT_DONE)
        else:
            self._submit(task)


def write_summary(path: Path, results: list[TrialResult]) -> None:
    with atomic.atomic_path(path) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=SUMMARY_COLUMNS)
        writer.writeheader()
        for result in results:
            writer.writerow(result.row())


def write_dataset_info(output: Path, trials: Sequence[Trial | shards.PlannedTrial], ready: set[str],
                       vggish_weights: str, frame_size: int) -> None:
    """``dataset_info.pkl`` in the authors' layout, listing the ``ready`` trials that exist on disk.

    ``feature_sets`` names the sets (``configs.FeatureSet``) whose files every listed trial has.
    """
    partition: dict[str, dict[str, int]] = {"Train_Set": {}, "Validation_Set": {}, TEST_PARTITION: {}}
    fps: dict[str, float] = {}
    video: dict[str, str] = {}
    complete = {feature_set: True for feature_set in FeatureSet}
    for trial in sorted(trials, key=lambda t: t.name):
        meta_path = output / "npy_data" / trial.name / META_NAME
        if trial.name not in ready or not meta_path.is_file():
            continue
        meta = json.loads(meta_path.read_text())
        partition[trial.partition][trial.name] = int(meta["n"])
        fps[trial.name] = float(meta["fps"])
        video[trial.name] = trial.video
        for feature_set in FeatureSet:
            complete[feature_set] &= _missing_files(output, trial, feature_set.files) == []
    info = {
        "partition": partition,
        "fps": fps,
        "video": video,
        "vggish_weights": vggish_weights,
        "egemaps_feature_set": _egemaps_version(),
        "frame_size": frame_size,
        "feature_sets": [feature_set.value for feature_set, ok in complete.items() if ok],
    }
    if complete[FeatureSet.ABAW5]:
        from base.preprocessing.egemaps_functionals import FUNCTIONALS_VERSION, SEGMENT_S

        info["egemaps_functionals_feature_set"] = FUNCTIONALS_VERSION
        info["egemaps_functionals_segment_s"] = SEGMENT_S
    save_pickle(info, output / "dataset_info.pkl")


def _egemaps_version() -> str:
    try:
        from base.preprocessing.opensmile_features import EGEMAPS_VERSION
    except ImportError:
        return "unknown"
    return str(EGEMAPS_VERSION)
