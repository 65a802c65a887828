"""The embedded demo database: a few synthetic videos in the exact Aff-Wild2 layout (SPEC §1).

The faces and the sound carry the labels so that a model can learn them:
- valence: skin brightness and mouth curvature (smile / frown), and the timbre of the voice
  (more harmonics when positive);
- arousal: eye opening and eyebrow height, and the pitch and loudness of the voice.

Everything is deterministic from the seed (videos are encoded with bit-exact flags).

``demo_layout`` abaw3 lays the very same files out as the later Aff-Wild2 releases do
(``base.preprocessing.database``): the VA annotations in ``6th ABAW Annotations/VA_Estimation_Challenge/``,
the videos (test ones included) spread over ``batch1/`` and ``batch2/``, extra ``cropped_aligned``
folders of videos annotated for another challenge only (``EXPR_Recognition_Challenge``), and the
organisers' test list in ``names_of_videos_in_each_test_set/``.
"""

from __future__ import annotations

import enum
import json
import logging
import shutil
import subprocess
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
import soundfile
from tqdm import tqdm

from base.errors import UserError
from base.preprocessing.database import (
    ANNOTATION_DIR,
    FACES_DIR,
    LABELED_PARTITIONS,
    TEST_LIST_NAME,
    VA_CHALLENGE_DIR,
)
from base.preprocessing.media import find_ffmpeg
from configs import DemoConfig

log = logging.getLogger(__name__)

UNLABELED = -5.0
PARTITIONS = ("Train_Set", "Validation_Set", "Test_Set")
MARKER = "demo_database.json"  # written last: its presence means the database is complete


class DemoLayout(enum.StrEnum):
    """How the demo database lays its files out (``demo_layout``)."""

    ABAW2 = "abaw2"  # the paper's release (SPEC §1)
    ABAW3 = "abaw3"  # the later releases (ABAW3 in 2022 and after)


LATER_ANNOTATIONS = Path("6th ABAW Annotations")  # '<N>th ABAW Annotations' in the later releases
OTHER_CHALLENGE = "EXPR_Recognition_Challenge"  # annotations of the extra cropped_aligned folders
EXPR_HEADER = "Neutral,Anger,Disgust,Fear,Happiness,Sadness,Surprise,Other"
VIDEO_BATCHES = ("batch1", "batch2")
TEST_LIST_DIR = "names_of_videos_in_each_test_set"
N_OTHER_CHALLENGE_FOLDERS = 2


@dataclass(frozen=True)
class DemoTrial:
    """One person of one demo video."""

    name: str  # trial name (annotation/cropped_aligned stem)
    video: str  # video stem
    partition: str
    side: int  # 0 single person / left, 1 right


@dataclass(frozen=True)
class DemoVideo:
    name: str
    partition: str
    container: str  # "mp4" or "avi"
    n_frames: int
    n_persons: int

    @property
    def trials(self) -> list[DemoTrial]:
        if self.n_persons == 1:
            return [DemoTrial(self.name, self.name, self.partition, 0)]
        return [DemoTrial(f"{self.name}_{side}", self.name, self.partition, i)
                for i, side in enumerate(("left", "right"))]


# ----------------------------------------------------------------------------- labels


def smooth_trace(rng: np.random.Generator, n_frames: int, fps: float, amplitude: float = 0.9) -> np.ndarray:
    """A slowly varying signal in [-amplitude, amplitude]: a sum of a few low-frequency sinusoids."""
    t_s = np.arange(n_frames) / fps
    freqs_hz = rng.uniform(0.02, 0.12, size=3)
    phases = rng.uniform(0, 2 * np.pi, size=3)
    weights = rng.uniform(0.5, 1.0, size=3)
    trace = (weights[:, None] * np.sin(2 * np.pi * freqs_hz[:, None] * t_s + phases[:, None])).sum(0)
    trace -= trace.mean()
    peak = np.abs(trace).max()
    return (amplitude * trace / peak if peak > 0 else trace).astype(np.float32)


def make_labels(rng: np.random.Generator, n_frames: int, fps: float) -> np.ndarray:
    """(n_frames, 2) valence, arousal in [-0.9, 0.9]."""
    return np.stack([smooth_trace(rng, n_frames, fps), smooth_trace(rng, n_frames, fps)], axis=1)


def random_runs_mask(rng: np.random.Generator, n: int, rate: float, max_run: int) -> np.ndarray:
    """Boolean mask with about ``rate * n`` True values in short runs (detector failures, gaps)."""
    mask = np.zeros(n, dtype=bool)
    target = int(round(rate * n))
    while mask.sum() < target:
        start = int(rng.integers(0, n))
        mask[start:start + int(rng.integers(1, max_run + 1))] = True
    return mask


# ----------------------------------------------------------------------------- rendering


@dataclass(frozen=True)
class Identity:
    skin_bgr: tuple[float, float, float]
    face_width: float  # fraction of the canvas
    background: int


def random_identity(rng: np.random.Generator) -> Identity:
    base = np.array([150.0, 170.0, 205.0]) * rng.uniform(0.92, 1.05)
    return Identity(tuple(base.tolist()), float(rng.uniform(0.30, 0.36)), int(rng.integers(25, 60)))


def render_face(valence: float, arousal: float, size: int, identity: Identity,
                offset: tuple[float, float] = (0.0, 0.0)) -> np.ndarray:
    """A cartoon face on a ``size`` x ``size`` BGR canvas whose expression follows the labels."""
    canvas = np.full((size, size, 3), identity.background, np.uint8)
    s = size / 112.0
    cx, cy = size / 2 + offset[0] * size, size / 2 + offset[1] * size
    brightness = 0.72 + 0.28 * valence  # valence -> skin brightness
    skin = tuple(float(np.clip(c * brightness, 0, 255)) for c in identity.skin_bgr)
    axes = (int(identity.face_width * size), int(identity.face_width * size * 1.25))
    cv2.ellipse(canvas, (int(cx), int(cy)), axes, 0, 0, 360, skin, -1, cv2.LINE_AA)
    eye_open = 2 + 7 * (arousal + 1) / 2  # arousal -> eye opening, pixels at 112
    brow_lift = 4 + 8 * (arousal + 1) / 2
    for side in (-1, 1):
        ex, ey = cx + side * 15 * s, cy - 10 * s
        cv2.ellipse(canvas, (int(ex), int(ey)), (int(8 * s), max(1, int(eye_open * s))), 0, 0, 360,
                    (250, 250, 250), -1, cv2.LINE_AA)
        cv2.circle(canvas, (int(ex), int(ey)), max(1, int(3 * s)), (40, 30, 20), -1, cv2.LINE_AA)
        brow_y = ey - (eye_open + brow_lift) * s
        cv2.line(canvas, (int(ex - 9 * s), int(brow_y + side * 0)), (int(ex + 9 * s), int(brow_y)),
                 (30, 30, 60), max(1, int(2 * s)), cv2.LINE_AA)
    # mouth: a parabola whose curvature follows valence (smile up, frown down)
    xs = np.linspace(-16, 16, 21)
    ys = 20 + valence * 8 * (1 - (xs / 16) ** 2)  # image y grows downwards: a smile sags in the middle
    points = np.stack([cx + xs * s, cy + ys * s], axis=1).astype(np.int32)
    cv2.polylines(canvas, [points], False, (40, 40, 150), max(1, int(3 * s)), cv2.LINE_AA)
    return canvas


def head_motion(rng: np.random.Generator, n_frames: int, fps: float) -> np.ndarray:
    """(n_frames, 2) small smooth head translation, fraction of the canvas."""
    return 0.03 * np.stack([smooth_trace(rng, n_frames, fps, 1.0), smooth_trace(rng, n_frames, fps, 1.0)], 1)


# ----------------------------------------------------------------------------- sound


def synthesize_voice(labels: np.ndarray, fps: float, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """A voiced tone per sample: pitch and loudness follow arousal, brightness follows valence."""
    n_frames = labels.shape[0]
    n_samples = int(round(n_frames / fps * sample_rate))
    frame_t = np.arange(n_frames) / fps
    sample_t = np.arange(n_samples) / sample_rate
    valence = np.interp(sample_t, frame_t, labels[:, 0])
    arousal = np.interp(sample_t, frame_t, labels[:, 1])
    f0_hz = 140.0 + 220.0 * (arousal + 1) / 2
    amplitude = 0.04 + 0.30 * (arousal + 1) / 2
    phase = 2 * np.pi * np.cumsum(f0_hz) / sample_rate
    tilt = 0.25 + 0.6 * (valence + 1) / 2  # harmonic decay: more harmonics when positive
    wave = np.zeros(n_samples)
    for harmonic in range(1, 7):
        wave += tilt ** (harmonic - 1) * np.sin(harmonic * phase)
    syllables = 0.6 + 0.4 * np.sin(2 * np.pi * 3.0 * sample_t) ** 2  # a speech-like 3 Hz rhythm
    noise = rng.normal(0, 0.004, n_samples)
    return (amplitude * syllables * wave / 2.0 + noise).astype(np.float32)


# ----------------------------------------------------------------------------- encoding


def encode_video(frames_bgr: np.ndarray, audio: np.ndarray | None, sample_rate: int, fps: float,
                 path: Path, container: str) -> None:
    """Encode (n, H, W, 3) BGR frames and a mono track (none when ``audio`` is None):
    mp4 = libx264 + aac, avi = mpeg4 + mp3, mkv = libx264 + aac."""
    video_codecs = {"mp4": ["-c:v", "libx264", "-preset", "veryfast", "-pix_fmt", "yuv420p"],
                    "mkv": ["-c:v", "libx264", "-preset", "veryfast", "-pix_fmt", "yuv420p"],
                    "avi": ["-c:v", "mpeg4", "-q:v", "4"]}
    audio_codecs = {"mp4": ["-c:a", "aac"], "mkv": ["-c:a", "aac"], "avi": ["-c:a", "libmp3lame"]}
    n, height, width, _ = frames_bgr.shape
    with tempfile.TemporaryDirectory() as tmp:
        if audio is None:
            audio_input, audio_codec = [], ["-an"]
        else:
            wav = Path(tmp) / "audio.wav"
            soundfile.write(wav, audio, sample_rate, subtype="PCM_16")
            audio_input, audio_codec = ["-i", str(wav)], [*audio_codecs[container], "-shortest"]
        command = [
            find_ffmpeg(), "-y", "-loglevel", "error",
            "-f", "rawvideo", "-pix_fmt", "bgr24", "-s", f"{width}x{height}", "-r", f"{fps}", "-i", "-",
            *audio_input, *video_codecs[container], *audio_codec, "-threads", "1",
            "-fflags", "+bitexact", "-flags:v", "+bitexact", "-flags:a", "+bitexact",
            str(path),
        ]
        result = subprocess.run(command, input=frames_bgr.tobytes(), capture_output=True)
    if result.returncode != 0:
        raise UserError(f"ffmpeg could not encode {path.name}: {result.stderr.decode(errors='replace')[-300:]}")


# ----------------------------------------------------------------------------- the database


def plan_videos(config: DemoConfig, rng: np.random.Generator) -> list[DemoVideo]:
    counts = (config.demo_n_train_videos, config.demo_n_validation_videos, config.demo_n_test_videos)
    videos = []
    index = 1
    for partition, count in zip(PARTITIONS, counts):
        for k in range(count):
            seconds = rng.uniform(config.demo_min_seconds, config.demo_max_seconds)
            n_frames = int(round(seconds * config.demo_fps))
            two_people = partition == "Train_Set" and k == 1
            width = config.demo_video_size * (2 if two_people else 1)
            name = f"{index}-{int(config.demo_fps)}-{width}x{config.demo_video_size}"
            container = "avi" if k % 2 == 1 else "mp4"
            videos.append(DemoVideo(name, partition, container, n_frames, 2 if two_people else 1))
            index += 1
    return videos


def write_annotation(path: Path, labels: np.ndarray, unlabeled: np.ndarray) -> None:
    rows = ["valence,arousal"]
    for (valence, arousal), missing in zip(labels, unlabeled):
        rows.append("-5,-5" if missing else f"{valence:.3f},{arousal:.3f}")
    path.write_text("\n".join(rows) + "\n")


def _write_video(root: Path, video: DemoVideo, config: DemoConfig, rng: np.random.Generator) -> dict:
    fps, size, n = config.demo_fps, config.demo_video_size, video.n_frames
    trials = video.trials
    labels = [make_labels(rng, n, fps) for _ in trials]
    motion = [head_motion(rng, n, fps) for _ in trials]
    identities = [random_identity(rng) for _ in trials]
    frames = np.zeros((n, size, size * len(trials), 3), np.uint8)
    audio = np.zeros(int(round(n / fps * config.demo_sample_rate)), np.float32)
    record = {"video": video.name, "partition": video.partition, "n_frames": n, "trials": {}}
    for trial, trial_labels, trial_motion, identity in zip(trials, labels, motion, identities):
        face_dir = root / "cropped_aligned" / trial.name
        face_dir.mkdir(parents=True)
        missing = random_runs_mask(rng, n, config.demo_missing_face_rate, max_run=6)
        for i in range(n):
            valence, arousal = (float(v) for v in trial_labels[i])
            offset = (float(trial_motion[i, 0]), float(trial_motion[i, 1]))
            x0 = trial.side * size
            frames[i, :, x0:x0 + size] = render_face(valence, arousal, size, identity, offset)
            if not missing[i]:
                face = render_face(valence, arousal, config.demo_face_size, identity)
                cv2.imwrite(str(face_dir / f"{i + 1:05d}.jpg"), face, [cv2.IMWRITE_JPEG_QUALITY, 90])
        audio += synthesize_voice(trial_labels, fps, config.demo_sample_rate, rng) / len(trials)
        entry = {"missing_jpgs": int(missing.sum())}
        if video.partition != "Test_Set":
            unlabeled = random_runs_mask(rng, n, config.demo_unlabeled_rate, max_run=15)
            folder = root / "annotations" / "VA_Set" / video.partition
            write_annotation(folder / f"{trial.name}.txt", trial_labels, unlabeled)
            entry["unlabeled_rows"] = int(unlabeled.sum())
        record["trials"][trial.name] = entry
    video_dir = root / ("Test_Set" if video.partition == "Test_Set" else "raw_video")
    encode_video(frames, audio, config.demo_sample_rate, fps, video_dir / f"{video.name}.{video.container}",
                 video.container)
    return record


def make_demo_database(root: str | Path, config: DemoConfig = DemoConfig(), quiet: bool = False) -> Path:
    """Write the demo database to ``root`` and return it.

    The database is built in a temporary sibling folder and renamed when complete, so an interrupted
    run never leaves a half database; a complete one with the same settings is reused as it is.
    """
    root = Path(root)
    marker = root / MARKER
    settings = asdict(config)
    try:
        layout = DemoLayout(config.demo_layout)
    except ValueError:
        raise UserError(f"config key 'demo_layout' must be abaw2 or abaw3, got '{config.demo_layout}'") from None
    if marker.is_file():
        if json.loads(marker.read_text()).get("config") == settings:
            log.info("demo database already complete at %s (same settings): reused", root)
            return root
        raise UserError(f"{root} holds a demo database made with other settings; remove it or choose another folder")
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise UserError(f"{root} exists and is not an empty folder; choose a new folder for the demo database")
    rng = np.random.default_rng(config.demo_seed)
    videos = plan_videos(config, rng)
    video_rngs = [np.random.default_rng(s) for s in np.random.SeedSequence(config.demo_seed).spawn(len(videos))]
    root.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{root.name}.", dir=root.parent))
    try:
        for folder in ("annotations/VA_Set/Train_Set", "annotations/VA_Set/Validation_Set",
                       "cropped_aligned", "raw_video", "Test_Set"):
            (staging / folder).mkdir(parents=True)
        records = [
            _write_video(staging, video, config, video_rng)
            for video, video_rng in tqdm(list(zip(videos, video_rngs)), desc="demo videos", disable=quiet)
        ]
        if layout is DemoLayout.ABAW3:
            to_later_layout(staging, videos, config, np.random.default_rng([config.demo_seed, 3]))
        (staging / MARKER).write_text(json.dumps({"config": settings, "videos": records}, indent=1))
        if root.exists():
            root.rmdir()
        staging.rename(root)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log.info("demo database written to %s: %d videos", root, len(videos))
    return root


def to_later_layout(root: Path, videos: list[DemoVideo], config: DemoConfig, rng: np.random.Generator) -> None:
    """Move an ABAW2-layout demo into the later releases' layout and add what those releases also hold."""
    va_root = root / LATER_ANNOTATIONS / VA_CHALLENGE_DIR
    va_root.mkdir(parents=True)
    for partition in LABELED_PARTITIONS:
        (root / ANNOTATION_DIR / partition).rename(va_root / partition)
    shutil.rmtree(root / ANNOTATION_DIR.parts[0])
    for batch in VIDEO_BATCHES:
        (root / batch).mkdir()
    for index, video in enumerate(videos):  # test videos among the others, as in the later releases
        source = root / ("Test_Set" if video.partition == "Test_Set" else "raw_video") / f"{video.name}.{video.container}"
        source.rename(root / VIDEO_BATCHES[index % len(VIDEO_BATCHES)] / source.name)
    (root / "raw_video").rmdir()
    (root / "Test_Set").rmdir()
    # faces of videos annotated for another challenge only: neither VA training data nor VA test trials
    expr = root / LATER_ANNOTATIONS / OTHER_CHALLENGE / "Train_Set"
    expr.mkdir(parents=True)
    identity = random_identity(rng)
    for k in range(N_OTHER_CHALLENGE_FOLDERS):
        name = f"{900 + k}-{int(config.demo_fps)}-{config.demo_video_size}x{config.demo_video_size}"
        face_dir = root / FACES_DIR / name
        face_dir.mkdir()
        n_frames = 3
        for i in range(n_frames):
            face = render_face(float(rng.uniform(-1, 1)), float(rng.uniform(-1, 1)), config.demo_face_size, identity)
            cv2.imwrite(str(face_dir / f"{i + 1:05d}.jpg"), face, [cv2.IMWRITE_JPEG_QUALITY, 90])
        classes = rng.integers(0, 8, size=n_frames)
        (expr / f"{name}.txt").write_text("\n".join([EXPR_HEADER, *map(str, classes)]) + "\n")
    test_trials = [trial.name for video in videos if video.partition == "Test_Set" for trial in video.trials]
    (root / TEST_LIST_DIR).mkdir()
    (root / TEST_LIST_DIR / TEST_LIST_NAME).write_text("\n".join(test_trials) + "\n")
