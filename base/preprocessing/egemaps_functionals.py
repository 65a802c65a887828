"""eGeMAPSv02 functionals (88 values) of the one-second audio segment of each video frame (SPEC-ABAW5 §1).

The authors' second generation reads ``egemaps.npy`` of shape (n, 88): the eGeMAPS *functionals*
count, one row per labelled frame [inferred: their preprocessing package is not public]. This module
computes, for video frame ``k``, the eGeMAPSv02 functionals of the audio segment
``[k / fps, k / fps + 1 s)`` with the real openSMILE library (the ``opensmile`` package, 2.4.2).

Segment of frame k, in samples (``segment_bounds``): ``[a_k, a_k + L)`` with ``a_k = round(k / fps *
sample_rate)`` (ties to even) and ``L = round(segment_s * sample_rate)``: the samples that
``opensmile.Smile.process_signal(signal, sample_rate, start=k / fps, end=k / fps + 1)`` cuts.
A segment that would run past the end of the audio is moved back to end there: ``[n - L, n)``, the
last full second (frames in the last second of a trial, and frames past the end of a shorter audio
track, share it). Neither clipped (the last frames' segments would shrink to a few ms, too short for
openSMILE's pitch: NaN) nor padded (silence would bias loudness and voicing). Audio shorter than one
segment gives one segment, the whole audio; audio too short for openSMILE to compute any functional
(under ~80 ms) is a ``UserError``, one line, like the "too short" wav of the LLD features.

Why one openSMILE run per segment: the functionals of a segment depend on openSMILE's low-level
descriptors of *that segment alone* (their frames start at the segment's first sample, the
3-frame smoothing and the Viterbi pitch smoother see only the segment). Computing the LLDs of the
whole file once and the functionals over segments (openSMILE's ``frameMode = list``) is not equal:
on 2 s of the demo voice it differs by 1.5 % (median) in 78 of the 88 values. So every segment is
run through openSMILE, but batched: one openSMILE instance per call, reset between segments
(``smile_reset``: the config is parsed and the components are built once), segments of identical
bounds computed once, and no pandas frame per segment. The rows equal
``process_signal(..., start, end)`` one by one bit for bit (tests: within 1e-4 relative).

The wav is read a segment at a time (``WavSegments``), so memory does not grow with the audio.
Like ``opensmile_features``, this module must run in a process without TensorFlow (see there).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from types import TracebackType

import numpy as np
import soundfile as sf

from base.errors import UserError
from base.preprocessing.opensmile_features import _smile

logger = logging.getLogger(__name__)

FUNCTIONALS_VERSION = "eGeMAPSv02"  # the 88-value set the authors' 88 columns match (v01a/b give 88 too, older)
FUNCTIONALS_LEVEL = "func"
FUNCTIONALS_DIM = 88
SEGMENT_S = 1.0  # seconds of audio per frame (SPEC-ABAW5 §1 [inferred])
PCM_FULL_SCALE = 32768  # the opensmile package feeds 16-bit samples: round-trip of float * 32768 to int16


def segment_bounds(
    frame_indices: np.ndarray, fps: float, sample_rate: int, n_samples: int, segment_s: float = SEGMENT_S
) -> tuple[np.ndarray, np.ndarray]:
    """First and end (exclusive) sample of the segment of each video frame.

    Args:
        frame_indices: 0-based video frame indices, (N,).
        fps: video frames per second.
        sample_rate: Hz.
        n_samples: samples of the audio.
        segment_s: seconds per segment.

    Returns:
        ``(starts, ends)``, int64 (N,) each: ``start = min(round(k / fps * sample_rate), n - L)``
        clamped at 0, ``end = min(start + L, n)``, ``L = round(segment_s * sample_rate)``.

    >>> starts, ends = segment_bounds(np.array([0, 1, 2, 3, 4]), fps=4.0, sample_rate=8, n_samples=16,
    ...                               segment_s=1.0)
    >>> starts.tolist(), ends.tolist()  # frame k starts at 2k samples; 4 and later end at 16
    ([0, 2, 4, 6, 8], [8, 10, 12, 14, 16])
    >>> segment_bounds(np.array([3, 9]), fps=4.0, sample_rate=8, n_samples=12)[0].tolist()  # moved back
    [4, 4]
    """
    if not fps > 0 or sample_rate <= 0 or not segment_s > 0:
        raise ValueError(f"fps, sample_rate and segment_s must be positive, got {fps}, {sample_rate}, {segment_s}")
    indices = np.asarray(frame_indices, dtype=np.int64)
    length = int(round(segment_s * sample_rate))
    starts = np.rint(indices / fps * sample_rate).astype(np.int64)  # float64, half to even as Python's round
    starts = np.clip(starts, 0, max(n_samples - length, 0))
    return starts, np.minimum(starts + length, n_samples)


class WavSegments:
    """A wav whose samples are read on demand: ``segments[start:end]`` is ``media.read_wav(path)[0][start:end]``
    (float32, channels averaged), ``len(segments)`` its sample count.

    Raises:
        UserError: the file is missing or not a readable audio file (``media.read_wav``'s messages).
    """

    def __init__(self, path: str | Path) -> None:
        path = Path(path)
        if not path.is_file():
            raise UserError(f"wav file {path} does not exist")
        try:
            self._file = sf.SoundFile(str(path))
        except (sf.LibsndfileError, RuntimeError) as exc:
            raise UserError(f"cannot read wav file {path}: {exc}") from None
        self.sample_rate = int(self._file.samplerate)

    def __len__(self) -> int:
        return int(self._file.frames)

    def __getitem__(self, bounds: slice) -> np.ndarray:
        self._file.seek(bounds.start)
        samples = self._file.read(bounds.stop - bounds.start, dtype="float32", always_2d=True)  # (n, channels)
        return samples.mean(axis=1, dtype=np.float32)

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> WavSegments:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def feature_names() -> list[str]:
    """The 88 column names of openSMILE's eGeMAPSv02 functionals, in the order of the rows."""
    return list(_smile(FUNCTIONALS_VERSION, FUNCTIONALS_LEVEL).feature_names)


def segment_functionals(samples: np.ndarray | WavSegments, sample_rate: int, starts: np.ndarray,
                        ends: np.ndarray) -> np.ndarray:
    """eGeMAPSv02 functionals of ``samples[start:end]`` for each segment, one openSMILE instance for all.

    Args:
        samples: mono float samples in [-1, 1], (n,), or a ``WavSegments``; fed to openSMILE as 16-bit
            PCM, as the ``opensmile`` package does (``int16(x * 32768)``).
        sample_rate: Hz.
        starts, ends: sample bounds of the segments, (N,) each.

    Returns:
        float32 (N, 88); a row of NaN where openSMILE computed nothing (a segment too short).
    """
    smile = _smile(FUNCTIONALS_VERSION, FUNCTIONALS_LEVEL)  # refuses in a process that imported TensorFlow
    from opensmile.core.config import config as smile_config

    options = smile._options()  # the package's own options (sink, levels, buffer modes), as in Smile._extract
    options["source"] = os.path.join(smile.default_config_root, smile_config.EXTERNAL_INPUT_CONFIG)
    options["sampleRate"] = sample_rate
    options["nBits"] = 16
    out = np.full((len(starts), FUNCTIONALS_DIM), np.nan, dtype=np.float32)
    engine = smile._smile(options=options)  # parses the config and builds the components once
    try:
        for row, (start, end) in enumerate(zip(starts, ends)):
            values: list[np.ndarray] = []
            engine.external_sink_set_callback_ex(  # callbacks do not survive a reset
                smile_config.EXTERNAL_OUTPUT_COMPONENT, lambda data, meta, got=values: got.append(data.copy()))
            pcm = (samples[start:end] * np.float32(PCM_FULL_SCALE)).astype(np.int16)
            engine.external_audio_source_write_data(smile_config.EXTERNAL_SOURCE_COMPONENT, bytes(pcm))
            engine.external_audio_source_set_eoi(smile_config.EXTERNAL_SOURCE_COMPONENT)
            engine.run()
            engine.reset()
            if values:
                out[row] = values[0].reshape(-1)  # (1, 88) from the sink
    finally:
        engine.free()
    return out


def functionals_per_frame(samples: np.ndarray | WavSegments, sample_rate: int, fps: float, n_frames: int,
                          segment_s: float = SEGMENT_S) -> np.ndarray:
    """eGeMAPSv02 functionals of the segment of every video frame 0..n_frames-1: float32 (n_frames, 88).

    Frames whose segments have the same bounds (the last second, frames past the audio) share one
    openSMILE run.
    """
    starts, ends = segment_bounds(np.arange(n_frames), fps, sample_rate, len(samples), segment_s)
    unique_starts, frame_to_segment = np.unique(starts, return_inverse=True)  # ends follow from starts
    unique_ends = np.minimum(unique_starts + int(round(segment_s * sample_rate)), len(samples))
    values = segment_functionals(samples, sample_rate, unique_starts, unique_ends)  # (U, 88)
    return values[frame_to_segment.reshape(-1)]


def extract_egemaps_functionals(wav_path: str | Path, fps: float, n_frames: int) -> np.ndarray:
    """eGeMAPSv02 functionals of the one-second segment of every video frame of a wav.

    Args:
        wav_path: the video's wav (mono 16-bit PCM as ``media.extract_wav`` writes it).
        fps: video frames per second.
        n_frames: video frames.

    Returns:
        float32 (n_frames, 88), columns as ``feature_names()``.

    Raises:
        UserError: the wav is missing, unreadable, empty or too short for openSMILE's functionals.
    """
    with WavSegments(wav_path) as samples:
        if n_frames <= 0:
            return np.zeros((0, FUNCTIONALS_DIM), dtype=np.float32)
        sample_rate = samples.sample_rate
        values = functionals_per_frame(samples, sample_rate, fps, n_frames) if len(samples) else None
        if values is None or not np.all(np.isfinite(values)):
            raise UserError(f"wav file {wav_path} is too short ({len(samples) / sample_rate:.3f} s) to compute "
                            "eGeMAPS functionals")
    return values
