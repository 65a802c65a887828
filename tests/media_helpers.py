"""Small synthetic videos and wavs for tests, made with the ffmpeg binary the project uses."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import soundfile as sf

from base.preprocessing.media import find_ffmpeg

# container suffix -> (video codec args, audio codec args)
_CODECS = {
    ".mp4": (["-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p"], ["-c:a", "aac"]),
    ".avi": (["-c:v", "mpeg4"], ["-c:a", "libmp3lame"]),
}


def make_video(
    path: str | Path,
    seconds: float = 3.0,
    fps: float = 30.0,
    size: int | tuple[int, int] = (64, 48),
    with_audio: bool = True,
    tone_hz: float = 440.0,
    tone_amplitude: float = 0.5,
    audio_sample_rate: int = 44100,
) -> Path:
    """Write a test-pattern video (.mp4: H.264 + AAC; .avi: MPEG-4 + MP3) with an optional sine tone.

    Args:
        path: output file; its suffix picks the codecs.
        seconds: duration of the video and of the tone.
        fps: frame rate.
        size: side of a square frame, or (width, height); even numbers for H.264.
        with_audio: add a mono sine track.
        tone_hz: tone frequency, Hz.
        tone_amplitude: tone peak amplitude in [0, 1].
        audio_sample_rate: sample rate of the audio track, Hz (real videos mostly use 44.1 or 48 kHz).
    """
    path = Path(path)
    if path.suffix not in _CODECS:
        raise ValueError(f"make_video supports {sorted(_CODECS)}, got {path.suffix}")
    width, height = (size, size) if isinstance(size, int) else size
    video_codec, audio_codec = _CODECS[path.suffix]
    args = [
        find_ffmpeg(), "-nostdin", "-hide_banner", "-loglevel", "error", "-y",
        "-f", "lavfi", "-i", f"testsrc=size={width}x{height}:rate={fps}:duration={seconds}",
    ]
    if with_audio:
        tone = f"{tone_amplitude}*sin(2*PI*{tone_hz}*t)"
        args += ["-f", "lavfi", "-i", f"aevalsrc={tone}:s={audio_sample_rate}:d={seconds}"]
    args += video_codec
    if with_audio:
        args += [*audio_codec, "-ac", "1"]
    args.append(str(path))
    subprocess.run(args, check=True, capture_output=True)
    return path


def write_tone_wav(
    path: str | Path,
    seconds: float = 3.0,
    tone_hz: float = 400.0,
    amplitude: float = 0.5,
    growth_per_s: float = 0.0,
    sample_rate: int = 16000,
) -> Path:
    """Write a mono 16-bit wav of ``amplitude * exp(growth_per_s * t) * sin(2 pi tone_hz t)``."""
    t_s = np.arange(int(round(seconds * sample_rate))) / sample_rate
    samples = amplitude * np.exp(growth_per_s * t_s) * np.sin(2 * np.pi * tone_hz * t_s)
    sf.write(str(path), samples, sample_rate, subtype="PCM_16")
    return Path(path)
