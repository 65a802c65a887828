"""Video probing and audio extraction with OpenCV and the ffmpeg binary (SPEC §3).

ffmpeg runs as a subprocess with an argument list (never a shell). There is no ffprobe here, so
stream facts are read from what ``ffmpeg -i FILE`` prints on stderr.

Frame count: OpenCV's ``CAP_PROP_FRAME_COUNT`` comes from the container header (or is estimated
from duration x fps when the header has none) and can be wrong for some AVI and MP4 files.
``probe_video`` therefore also counts the video packets with a stream copy to ffmpeg's null muxer
(``-map 0:v:0 -c copy -f null``): it demuxes without decoding, so it costs about one read of the
file (milliseconds for short clips). That count is used; a disagreement with the header is logged
(e.g. ffmpeg-written AVIs whose header claims one frame more than they decode to).
"""

from __future__ import annotations

import errno
import logging
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import soundfile as sf

from base.errors import MissingTool, UserError

logger = logging.getLogger(__name__)

_DURATION_RE = re.compile(r"Duration:\s*(\d+):(\d{2}):(\d{2}(?:\.\d+)?)")
_STREAM_RE = re.compile(r"^\s*Stream #\d+:\d+\S*: (Video|Audio|Subtitle|Data|Attachment):", re.MULTILINE)
_PROGRESS_FRAME_RE = re.compile(r"^frame=(\d+)\s*$", re.MULTILINE)


@dataclass(frozen=True)
class VideoInfo:
    """What preprocessing needs to know about a video file.

    Attributes:
        fps: frames per second (OpenCV).
        n_frames: number of video frames (demuxed packet count; OpenCV's header count if that fails).
        duration_s: ``n_frames / fps``.
        width: frame width, pixels.
        height: frame height, pixels.
        has_audio: whether the file has at least one audio stream.
        audio_duration_s: the container duration ffmpeg reports when there is audio, else None.
            It is the longest stream's length, so an approximation of the audio length; the exact
            length is what ``extract_wav`` returns.
    """

    fps: float
    n_frames: int
    duration_s: float
    width: int
    height: int
    has_audio: bool
    audio_duration_s: float | None


def find_ffmpeg() -> str:
    """Path of the ffmpeg binary: ``ffmpeg`` on PATH, else the one shipped by ``imageio-ffmpeg``."""
    on_path = shutil.which("ffmpeg")
    if on_path:
        return on_path
    try:
        import imageio_ffmpeg

        return imageio_ffmpeg.get_ffmpeg_exe()
    except (ImportError, RuntimeError) as exc:
        raise MissingTool(
            f"ffmpeg was not found: install it on PATH or `pip install imageio-ffmpeg` ({exc})"
        ) from None


def _run_ffmpeg(args: list[str]) -> subprocess.CompletedProcess[str]:
    """Run ffmpeg with ``args`` (no shell), capturing stdout and stderr as text."""
    command = [find_ffmpeg(), "-nostdin", "-hide_banner", *args]
    return subprocess.run(command, capture_output=True, text=True, errors="replace", check=False)


def _input_section(stderr: str) -> str:
    """The part of ffmpeg's stderr that describes the input file (not the output)."""
    start = stderr.find("Input #0")
    if start < 0:
        return ""
    end_candidates = [i for i in (stderr.find("Output #0", start), stderr.find("Stream mapping:", start)) if i >= 0]
    return stderr[start : min(end_candidates)] if end_candidates else stderr[start:]


# what ffmpeg prints (strerror) when writing its output fails because of the machine, not the input
_WRITE_ERRORS = {"No space left on device": errno.ENOSPC, "Disk quota exceeded": errno.EDQUOT,
                 "Read-only file system": errno.EROFS}


def ffmpeg_write_error(stderr: str, output: Path) -> OSError | None:
    """The ``OSError`` behind a failed ffmpeg run that could not write ``output``, else None.

    >>> ffmpeg_write_error("[wav] Error writing trailer: No space left on device", Path("a.wav")).errno == errno.ENOSPC
    True
    >>> ffmpeg_write_error("a.mp4: Invalid data found when processing input", Path("a.wav")) is None
    True
    """
    for message, code in _WRITE_ERRORS.items():
        if message in stderr:
            return OSError(code, os.strerror(code), str(output))
    if any(str(output) in line and "Permission denied" in line for line in stderr.splitlines()):
        return OSError(errno.EACCES, os.strerror(errno.EACCES), str(output))
    return None


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "no message from ffmpeg"


def parse_ffmpeg_input(stderr: str) -> tuple[list[str], float | None]:
    """Stream kinds (``["Video", "Audio"]``) and container duration in seconds from ffmpeg's stderr.

    >>> parse_ffmpeg_input("Input #0, avi, from 'a.avi':\\n  Duration: 00:01:02.50, start: 0.0\\n"
    ...                    "  Stream #0:0: Video: mpeg4\\n  Stream #0:1: Audio: mp3\\n")
    (['Video', 'Audio'], 62.5)
    """
    section = _input_section(stderr)
    kinds = _STREAM_RE.findall(section)
    match = _DURATION_RE.search(section)
    duration_s = None
    if match:
        hours, minutes, seconds = match.groups()
        duration_s = int(hours) * 3600 + int(minutes) * 60 + float(seconds)
    return kinds, duration_s


def _check_exists(path: Path, what: str) -> None:
    if not path.is_file():
        raise UserError(f"{what} {path} does not exist")


def probe_video(path: str | Path) -> VideoInfo:
    """Frame rate, frame count, size and audio presence of a video file.

    Raises:
        UserError: the file is missing, unreadable, or has no video stream.
    """
    path = Path(path)
    _check_exists(path, "video")
    capture = cv2.VideoCapture(str(path))
    try:
        if not capture.isOpened():
            raise UserError(f"cannot read video {path}: OpenCV cannot open it (corrupt or unsupported file?)")
        fps = float(capture.get(cv2.CAP_PROP_FPS))
        header_n_frames = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
        width = int(capture.get(cv2.CAP_PROP_FRAME_WIDTH))
        height = int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT))
    finally:
        capture.release()
    if not fps > 0:
        raise UserError(f"cannot read video {path}: it reports no frame rate")

    # one ffmpeg call: stream list and duration on stderr, demuxed video packet count on stdout
    result = _run_ffmpeg(
        ["-progress", "pipe:1", "-nostats", "-i", str(path), "-map", "0:v:0", "-c", "copy", "-f", "null", "-"]
    )
    kinds, container_duration_s = parse_ffmpeg_input(result.stderr)
    if result.returncode != 0:
        if kinds and "Video" not in kinds:
            raise UserError(f"cannot read video {path}: it has no video stream")
        raise UserError(f"cannot read video {path}: {_last_line(result.stderr)}")
    counts = _PROGRESS_FRAME_RE.findall(result.stdout)
    n_frames = header_n_frames
    if counts and int(counts[-1]) > 0:
        n_frames = int(counts[-1])
        if n_frames != header_n_frames:
            logger.info(
                "%s: container header says %d frames, demuxing counts %d; using %d",
                path, header_n_frames, n_frames, n_frames,
            )
    if n_frames <= 0:
        raise UserError(f"cannot read video {path}: it has no video frames")
    has_audio = "Audio" in kinds
    return VideoInfo(
        fps=fps,
        n_frames=n_frames,
        duration_s=n_frames / fps,
        width=width,
        height=height,
        has_audio=has_audio,
        audio_duration_s=container_duration_s if has_audio else None,
    )


def has_audio_stream(path: str | Path) -> bool:
    """Whether ``ffmpeg -i`` lists an audio stream in the file.

    Raises:
        UserError: the file is missing or ffmpeg cannot read it.
    """
    path = Path(path)
    _check_exists(path, "video")
    result = _run_ffmpeg(["-i", str(path)])  # exits 1 ("no output file") even for a good file
    if "Input #0" not in result.stderr:
        raise UserError(f"cannot read video {path}: {_last_line(result.stderr)}")
    kinds, _ = parse_ffmpeg_input(result.stderr)
    return "Audio" in kinds


def extract_wav(video_path: str | Path, wav_path: str | Path, sample_rate: int = 16000) -> float:
    """Write the first audio track of a video as mono 16-bit PCM wav at ``sample_rate`` Hz.

    The wav is written under a temporary name and renamed when complete, so an interrupted run
    never leaves a truncated wav behind.

    Returns:
        Duration of the written audio in seconds.

    Raises:
        UserError: the video is missing, unreadable, or has no audio track.
        OSError: the wav could not be written (no space left, read-only or not writable).
    """
    video_path, wav_path = Path(video_path), Path(wav_path)
    if not has_audio_stream(video_path):
        raise UserError(f"video {video_path} has no audio track")
    wav_path.parent.mkdir(parents=True, exist_ok=True)
    tmp_path = wav_path.with_name(f".{wav_path.stem}.{os.getpid()}.tmp.wav")
    args = [
        "-y", "-loglevel", "error", "-i", str(video_path), "-map", "0:a:0",
        "-vn", "-ac", "1", "-ar", str(sample_rate), "-acodec", "pcm_s16le", "-f", "wav", str(tmp_path),
    ]
    try:
        result = _run_ffmpeg(args)
        if result.returncode != 0 or not tmp_path.is_file():
            write_error = ffmpeg_write_error(result.stderr, tmp_path)
            if write_error is not None:
                raise write_error
            raise UserError(f"cannot extract audio from {video_path}: {_last_line(result.stderr)}")
        n_samples = sf.info(str(tmp_path)).frames
        os.replace(tmp_path, wav_path)
    finally:
        tmp_path.unlink(missing_ok=True)
    duration_s = n_samples / sample_rate
    logger.debug("extracted %.2f s of audio from %s to %s", duration_s, video_path, wav_path)
    return duration_s


def read_wav(path: str | Path) -> tuple[np.ndarray, int]:
    """Read a wav as float32 samples in [-1, 1], shape (n_samples,), and its sample rate in Hz.

    A multi-channel file is mixed down to mono by averaging the channels.

    Raises:
        UserError: the file is missing or not a readable audio file.
    """
    path = Path(path)
    _check_exists(path, "wav file")
    try:
        samples, sample_rate = sf.read(str(path), dtype="float32", always_2d=True)  # (n, channels)
    except (sf.LibsndfileError, RuntimeError) as exc:
        raise UserError(f"cannot read wav file {path}: {exc}") from None
    return samples.mean(axis=1, dtype=np.float32), int(sample_rate)
