"""Any video -> valence and arousal traces: faces, audio features, trained runs, a CSV and a plot (issue 7).

The video goes through the same steps as a database trial, with every frame kept:

1. ``base.preprocessing.media.probe_video``: frame rate and frame count (the demuxed count preprocessing uses);
2. faces: a detector (``base.prediction.face_detection``: Haar, MTCNN or OpenFace landmarks) finds the face of
   each frame, cropped square to ``frame_size`` (48) RGB; a frame without a face stays black;
3. audio, only when a run reads it: ``base.preprocessing.preprocess.audio_stage`` (ffmpeg wav, openSMILE MFCC and
   eGeMAPS, the eGeMAPS functionals of each frame's second) and ``vggish_stage`` (one VGGish embedding per
   frame), run in spawned processes exactly as preprocessing runs them, then sampled at every frame with
   ``base.preprocessing.sampling``;
4. OpenFace landmarks/action units (``flm``/``fau``), when a run reads them, from its CSV;
5. every run predicts the video (``base.prediction.prediction.predict_ensemble``: the features z-scored as
   test trials are, with the statistics the run's ``test_statistics`` names); the runs of an emotion
   are merged by CCC centering and clipped to [-1, 1].

Outputs in the output folder: ``<video>_traces.csv`` (``frame, time_s, valence, arousal,
face_found``; an emotion no run predicts is left empty) and ``<video>_traces.png``.
"""

from __future__ import annotations

import csv
import logging
import multiprocessing
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from base.data.processed import ProcessedDataset, file_stem
from base.errors import UserError
from base.prediction import face_detection
from base.prediction.face_detection import Detector, FaceTrack
from base.prediction.prediction import ArrayTrials, FoldModel, group_by_emotion, predict_ensemble
from base.preprocessing import media, openface
from base.preprocessing.sampling import opensmile_rows, sample_rows, vggish_rows
from base.preprocessing.statistics import TARGET_SET, with_target_set
from base.training.cross_validation import needs_statistics
from base.training.devices import resolve_device
from configs import EMOTIONS, FeatureConfig, Modality

logger = logging.getLogger(__name__)

CSV_COLUMNS = ("frame", "time_s", "valence", "arousal", "face_found")
AUDIO_MODALITIES = (Modality.MFCC.value, Modality.EGEMAPS.value, Modality.VGGISH.value,
                    Modality.EGEMAPS_FUNCTIONALS.value)
PER_FRAME_MODALITIES = (Modality.VGGISH.value, Modality.EGEMAPS_FUNCTIONALS.value)  # one cached row per video frame
OPENFACE_MODALITIES = (Modality.LANDMARK.value, Modality.ACTION_UNIT.value)
RANDOM_VGGISH_MARK = "RANDOM"  # how dataset_info.pkl's 'vggish_weights' starts for the demo's random weights
REAL_VGGISH_MARK = "VGGish checkpoint "
RANDOM_VGGISH_CHECKPOINT = Path("vggish_random") / "vggish_model.ckpt"  # inside the processed dataset


@dataclass(frozen=True)
class VideoOptions:
    """How ``video_traces`` finds faces and features.

    Attributes:
        detector: ``haar``, ``mtcnn`` or ``openface``; empty: ``openface`` when an OpenFace source is
            given, else ``haar``.
        face_margin: crop side / longer face-box side; None: the detector's default.
        openface_bin: OpenFace ``FeatureExtraction`` to run on the frames.
        openface_output: an OpenFace CSV of the video, or a folder holding ``<video stem>.csv``.
        vggish_checkpoint: the VGGish checkpoint preprocessing used (found from the dataset when empty).
        dataset_path: the runs' processed dataset (its ``mean_std_dict.pkl``); default: each run's own.
        batch_size: windows per forward pass; None: each run's training batch size.
        device: auto, cpu, cuda or cuda:N.
        quiet: no progress bars.
    """

    detector: str = ""
    face_margin: float | None = None
    openface_bin: str = ""
    openface_output: str = ""
    vggish_checkpoint: str = ""
    dataset_path: str = ""
    batch_size: int | None = None
    device: str = "auto"
    quiet: bool = False


@dataclass(frozen=True, eq=False)
class VideoTraces:
    """The result of ``video_traces``."""

    video: Path
    fps: float
    values: np.ndarray  # (n_frames, 2) valence, arousal; NaN for an emotion no run predicts
    face_found: np.ndarray  # (n_frames,) bool
    emotions: tuple[str, ...]  # the emotions some run predicts
    csv_path: Path
    png_path: Path

    @property
    def n_frames(self) -> int:
        return len(self.face_found)


# ----------------------------------------------------------------------------- small pure helpers


def missing_face_runs(found: np.ndarray) -> list[tuple[int, int]]:
    """(start, stop) frame ranges, stop exclusive, where no face was found.

    >>> missing_face_runs(np.array([True, False, False, True, False]))
    [(1, 3), (4, 5)]
    """
    missing = np.concatenate([[False], ~np.asarray(found, bool), [False]]).astype(np.int8)
    edges = np.flatnonzero(np.diff(missing))  # starts and stops alternate
    return [(int(start), int(stop)) for start, stop in zip(edges[::2], edges[1::2])]


def frame_times(n_frames: int, fps: float) -> np.ndarray:
    """(n,) start time of each frame in seconds."""
    return np.arange(n_frames) / float(fps)


def sample_audio_features(cache_dir: Path, names: Sequence[str], n_frames: int, fps: float,
                          opensmile_hop_s: float) -> dict[str, np.ndarray]:
    """The cached per-video features of ``names`` sampled at every frame, as preprocessing's trial stage does."""
    frame_indices = np.arange(n_frames)
    arrays = {}
    for name in names:
        rows = np.load(cache_dir / f"{name}.npy")
        if name in PER_FRAME_MODALITIES:
            index = vggish_rows(frame_indices, len(rows))
        else:
            index = opensmile_rows(frame_indices, fps, opensmile_hop_s, n_rows=len(rows))
        arrays[name] = sample_rows(rows, index).astype(np.float32)
    return arrays


# ----------------------------------------------------------------------------- where things come from


def _dataset_path(fold_model: FoldModel, options: VideoOptions) -> Path | None:
    path = options.dataset_path or fold_model.config.train.dataset_path
    return Path(path) if path else None


class StatisticsSource:
    """Each run's ``mean_std_dict.pkl`` (from ``--dataset-path`` or the dataset its config names), read once."""

    def __init__(self, options: VideoOptions) -> None:
        self.options = options
        self._cache: dict[tuple[Path, tuple[str, ...]], Mapping[str, Any]] = {}

    def __call__(self, fold_model: FoldModel) -> Mapping[str, Any] | None:
        if not needs_statistics(fold_model.modalities):
            return None
        path = _dataset_path(fold_model, self.options)
        if path is None or not (path / "mean_std_dict.pkl").is_file():
            named = f"its config names '{path}', which has no mean_std_dict.pkl" if path else "its config names none"
            raise UserError(f"run {fold_model.name} reads {' '.join(fold_model.modalities)}: their z-scoring needs "
                            f"the mean_std_dict.pkl of the dataset it was trained on; pass --dataset-path ({named})")
        features = tuple(sorted(file_stem(m) for m in fold_model.modalities if m != Modality.FRAME.value))
        if (path, features) not in self._cache:
            dataset = ProcessedDataset(path)
            mean_std = dataset.mean_std()
            if fold_model.config.train.test_statistics == TARGET_SET:  # a file that predates Target_Set
                mean_std = with_target_set(mean_std, dataset, features)
            self._cache[path, features] = mean_std
        return self._cache[path, features]


def resolve_vggish_checkpoint(given: str, models: Sequence[FoldModel], options: VideoOptions) -> str:
    """The VGGish checkpoint for the video: ``given``, else the one the runs' dataset was made with.

    A dataset made with the demo's random VGGish weights keeps them in ``vggish_random/``; a dataset
    made with the real release records the checkpoint's path in ``dataset_info.pkl``.

    Raises:
        UserError: nothing usable is given or recorded.
    """
    from vggish.checkpoint import check_checkpoint

    if given:
        check_checkpoint(given)
        return given
    tried = []
    for fold_model in models:
        path = _dataset_path(fold_model, options)
        if path is None or path in tried or not (path / "dataset_info.pkl").is_file():
            continue
        tried.append(path)
        weights = str(ProcessedDataset(path).info.get("vggish_weights", ""))
        if weights.startswith(RANDOM_VGGISH_MARK):
            candidate = path / RANDOM_VGGISH_CHECKPOINT
            if Path(f"{candidate}.index").is_file():
                logger.warning("VGGish: the runs' dataset was made with RANDOM VGGish weights (demo); using the "
                               "same ones, %s", candidate)
                return str(candidate)
        elif weights.startswith(REAL_VGGISH_MARK):
            candidate = Path(weights[len(REAL_VGGISH_MARK):])
            if candidate.exists() or Path(f"{candidate}.index").is_file():
                check_checkpoint(str(candidate))
                logger.info("VGGish: the checkpoint the runs' dataset was made with, %s", candidate)
                return str(candidate)
    raise UserError("a run reads VGGish features: pass --vggish-checkpoint with the vggish_model.ckpt that "
                    "preprocessing used (a demo dataset keeps its random one in DATASET/vggish_random/"
                    "vggish_model.ckpt)")


def openface_csv_for(video: Path, options: VideoOptions, work_dir: Path, n_frames: int, quiet: bool) -> Path:
    """The OpenFace CSV of the video: the given file or ``<folder>/<stem>.csv``, or one made by running it.

    Running it writes the frames as ``00001.jpg ...`` and calls ``FeatureExtraction -fdir`` on them
    (``base.preprocessing.openface.run_feature_extraction``), so CSV row k is video frame k.
    """
    if options.openface_output:
        given = Path(options.openface_output)
        if given.is_file():
            return given
        if not given.is_dir():
            raise UserError(f"OpenFace output {given} does not exist")
        found = openface.existing_csv(given, video.stem)
        if found is None:
            raise UserError(f"no OpenFace CSV {video.stem}.csv in {given}")
        return found
    binary = openface.find_openface(options.openface_bin)
    frames_dir = work_dir / "openface_frames"
    frames_dir.mkdir(parents=True, exist_ok=True)
    for index, frame in enumerate(face_detection.read_frames(video)):
        if index >= n_frames:
            break
        cv2.imwrite(str(frames_dir / f"{index + 1:05d}.jpg"), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    logger.info("running OpenFace FeatureExtraction on %d frames of %s", n_frames, video.name)
    return openface.run_feature_extraction(binary, frames_dir, work_dir / "openface", video.stem)


def openface_per_frame(frames: openface.OpenFaceFrames, n_frames: int) -> tuple[np.ndarray, np.ndarray]:
    """Landmarks (n_frames, 68, 2) and success (n_frames,) per video frame from CSV rows (frame k = row k).

    Frames the CSV does not cover have no face; of several rows for one frame the first counts.
    """
    landmarks = np.zeros((n_frames, openface.N_LANDMARKS, 2), np.float32)
    success = np.zeros(n_frames, bool)
    frame_index = frames.frame_numbers - 1  # (rows,)
    inside = np.flatnonzero((frame_index >= 0) & (frame_index < n_frames))
    _, first = np.unique(frame_index[inside], return_index=True)
    rows = inside[first]
    landmarks[frame_index[rows]] = frames.landmarks[rows]
    success[frame_index[rows]] = frames.success[rows]
    if len(frames) and len(rows) < n_frames:
        logger.warning("%s covers %d of %d video frames; the others have no face", frames.source, len(rows), n_frames)
    return landmarks, success


# ----------------------------------------------------------------------------- writers


def write_traces_csv(path: Path, values: np.ndarray, face_found: np.ndarray, fps: float) -> None:
    """``frame, time_s, valence, arousal, face_found`` per frame (frame 0-based; NaN written empty)."""
    times = frame_times(len(values), fps)
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(CSV_COLUMNS)
        for frame, (time_s, (valence, arousal), found) in enumerate(zip(times, values, face_found)):
            writer.writerow([frame, f"{time_s:.4f}", *("" if np.isnan(v) else f"{v:.6f}" for v in (valence, arousal)),
                             bool(found)])


def plot_video_traces(path: Path, values: np.ndarray, face_found: np.ndarray, fps: float, title: str) -> None:
    """Valence and arousal over time, one panel each; grey spans mark frames without a face."""
    times = frame_times(len(values), fps)
    figure = Figure(figsize=(12, 5))
    axes_pair = figure.subplots(len(EMOTIONS), 1, sharex=True)
    gaps = missing_face_runs(face_found)
    for column, (axes, emotion) in enumerate(zip(axes_pair, EMOTIONS)):
        for start, stop in gaps:
            axes.axvspan(start / fps, stop / fps, color="0.85", linewidth=0,
                         label="no face" if (start, stop) == gaps[0] else None)
        if np.isnan(values[:, column]).all():
            axes.text(0.5, 0.5, f"no run predicts {emotion}", transform=axes.transAxes, ha="center", va="center")
        else:
            axes.plot(times, values[:, column], linewidth=1.2, label=emotion)
        axes.axhline(0.0, color="0.5", linewidth=0.5)
        axes.set_ylim(-1.05, 1.05)
        axes.set_ylabel(emotion)
        axes.legend(loc="upper right", fontsize=8)
    axes_pair[-1].set_xlabel("time (s)")
    axes_pair[0].set_title(title, fontsize=10)
    FigureCanvasAgg(figure)
    figure.tight_layout()
    figure.savefig(path, dpi=100)


# ----------------------------------------------------------------------------- the pipeline


def _detector(options: VideoOptions) -> Detector:
    if options.openface_bin and options.openface_output:
        raise UserError("give OpenFace either as --openface-bin or as --openface-output, not both")
    has_openface = bool(options.openface_bin or options.openface_output)
    if not options.detector:
        return Detector.OPENFACE if has_openface else Detector.HAAR
    try:
        detector = Detector(options.detector)
    except ValueError:
        choices = ", ".join(d.value for d in Detector)
        raise UserError(f"unknown face detector '{options.detector}' (choose from {choices})") from None
    if detector is Detector.OPENFACE and not has_openface:
        raise UserError("--detector openface needs --openface-bin FeatureExtraction or --openface-output DIR")
    return detector


def _features_config(models: Sequence[FoldModel]) -> FeatureConfig:
    return models[0].config.features


def video_traces(video: str | Path, models: Sequence[FoldModel], output_dir: str | Path,
                 options: VideoOptions = VideoOptions()) -> VideoTraces:
    """Predict valence/arousal for every frame of ``video`` with ``models``; write the CSV and the PNG.

    Raises:
        UserError: the video is unreadable; a run needs audio and the video has none; a run needs
            OpenFace features and no OpenFace source is given; VGGish weights or statistics are missing.
    """
    video = Path(video)
    output_dir = Path(output_dir)
    device = resolve_device(options.device)  # before the slow face detection and VGGish
    if output_dir.exists() and not output_dir.is_dir():
        raise UserError(f"output {output_dir} is a file; give a folder (it is created if missing)")
    detector = _detector(options)
    info = media.probe_video(video)
    n_frames, fps = info.n_frames, info.fps
    groups = group_by_emotion(models, allow_missing=True)
    used = [models[i] for i in sorted({i for members in groups.values() for i in members})]
    needed = {m for fold_model in used for m in fold_model.modalities}
    features = _features_config(used)
    audio_names = [m for m in AUDIO_MODALITIES if m in needed]
    if audio_names and not info.has_audio:
        readers = sorted({fm.name for fm in used if set(fm.modalities) & set(audio_names)})
        raise UserError(f"video {video.name} has no audio track, but run(s) {', '.join(readers)} read "
                        f"{' '.join(audio_names)}; use runs trained on --modality frame only")
    openface_names = [m for m in OPENFACE_MODALITIES if m in needed]
    if openface_names and not (options.openface_bin or options.openface_output):
        raise UserError(f"a run reads {' '.join(openface_names)}, features OpenFace makes: pass --openface-bin "
                        "FeatureExtraction or --openface-output DIR")
    vggish_checkpoint = (resolve_vggish_checkpoint(options.vggish_checkpoint, used, options)
                         if Modality.VGGISH.value in needed else "")
    statistics = StatisticsSource(options)
    for fold_model in used:
        statistics(fold_model)  # a missing mean_std_dict.pkl is reported before the slow work
    logger.info("%s: %d frames at %.3f fps, %s audio; runs: %s", video.name, n_frames, fps,
                "with" if info.has_audio else "no", ", ".join(fm.name for fm in used))

    work_dir = Path(tempfile.mkdtemp(prefix="video_traces_"))
    try:
        arrays, track = _extract(video, n_frames, fps, detector, audio_names, openface_names, vggish_checkpoint,
                                 features, options, work_dir)
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)

    _report_faces(video, track, used)
    arrays[Modality.FRAME.value] = track.faces
    trial = video.stem
    prediction = predict_ensemble(used, ArrayTrials({trial: arrays}), [trial], statistics, device,
                                  options.batch_size, allow_missing_emotion=True, quiet=options.quiet)
    values = prediction.values(trial)  # (n, 2)
    output_dir.mkdir(parents=True, exist_ok=True)
    csv_path = output_dir / f"{trial}_traces.csv"
    png_path = output_dir / f"{trial}_traces.png"
    write_traces_csv(csv_path, values, track.found, fps)
    plot_video_traces(png_path, values, track.found, fps,
                      f"{video.name}: {', '.join(prediction.groups)} from {len(used)} run(s); "
                      f"face found in {int(track.found.sum())}/{n_frames} frames")
    logger.info("wrote %s and %s", csv_path, png_path)
    return VideoTraces(video, fps, values, track.found, tuple(prediction.groups), csv_path, png_path)


def _extract(video: Path, n_frames: int, fps: float, detector: Detector, audio_names: list[str],
             openface_names: list[str], vggish_checkpoint: str, features: FeatureConfig, options: VideoOptions,
             work_dir: Path) -> tuple[dict[str, np.ndarray], FaceTrack]:
    """Faces and features of every frame; the audio runs in spawned processes while the faces are found."""
    from base.preprocessing.preprocess import _init_vggish, audio_caches, audio_stage, vggish_stage

    context = multiprocessing.get_context("spawn")
    cache = work_dir / "audio"
    arrays: dict[str, np.ndarray] = {}
    audio_pool = ProcessPoolExecutor(1, mp_context=context) if audio_names else None
    try:
        audio_future: Future | None = None
        if audio_pool is not None:
            audio_future = audio_pool.submit(audio_stage, str(video), str(cache), features.sample_rate,
                                             audio_caches(audio_names))
        track = _faces(video, n_frames, detector, openface_names, features, options, work_dir, arrays)
        if audio_future is not None:
            audio_future.result()
            if vggish_checkpoint:
                with ProcessPoolExecutor(1, mp_context=context, initializer=_init_vggish,
                                         initargs=(vggish_checkpoint, None, features.vggish_batch_size, 0,
                                                   features.vggish_device)) as pool:
                    pool.submit(vggish_stage, str(cache), fps, n_frames).result()
            arrays.update(sample_audio_features(cache, audio_names, n_frames, fps, features.opensmile_hop_s))
    finally:
        if audio_pool is not None:
            audio_pool.shutdown(cancel_futures=True)
    return arrays, track


def _faces(video: Path, n_frames: int, detector: Detector, openface_names: list[str], features: FeatureConfig,
           options: VideoOptions, work_dir: Path, arrays: dict[str, np.ndarray]) -> FaceTrack:
    """Face crops of every frame; OpenFace's landmark/AU features go into ``arrays`` when asked for."""
    quiet = options.quiet
    if options.openface_bin or options.openface_output:
        frames = openface.read_openface_csv(openface_csv_for(video, options, work_dir, n_frames, quiet))
        if openface_names:
            landmark, au = openface.openface_features(frames, np.arange(n_frames), None)
            arrays[Modality.LANDMARK.value] = landmark.reshape(n_frames, -1)  # (n, 136)
            arrays[Modality.ACTION_UNIT.value] = au  # (n, 17)
        if detector is Detector.OPENFACE:
            landmarks, success = openface_per_frame(frames, n_frames)
            return face_detection.openface_faces(video, n_frames, landmarks, success, features.frame_size,
                                                 options.face_margin, quiet)
    return face_detection.detect_video_faces(video, n_frames, detector, features.frame_size, options.face_margin,
                                             quiet)


def _report_faces(video: Path, track: FaceTrack, models: Sequence[FoldModel]) -> None:
    n_found = int(track.found.sum())
    visual = [fm.name for fm in models if Modality.FRAME.value in fm.modalities]
    if n_found == 0 and visual:
        logger.warning("=" * 72)
        logger.warning("NO FACE was found in any of the %d frames of %s: the visual run(s) %s saw only black "
                       "frames, so their traces carry no facial information (try --detector mtcnn or OpenFace)",
                       len(track), video.name, ", ".join(visual))
        logger.warning("=" * 72)
    elif n_found == 0:
        logger.warning("no face was found in any frame of %s (face_found is False throughout; the runs read "
                       "audio only)", video.name)
    else:
        logger.info("face found in %d of %d frames (%.0f%%)", n_found, len(track), 100.0 * n_found / len(track))
