"""``logmel.npy``: the VGGish input patch of each labelled frame, before the network (SPEC-ABAW5 §1).

The authors' second generation feeds its own VGGish the log-mel patches, (n, 96, 64) per trial
[inferred]. Row k of ``logmel.npy`` is exactly the patch whose embedding is row k of ``vggish.npy``:
the same waveform (mono, its end padded with one second of its last sample, resampled to 16 kHz:
``vggish.extractor.prepare_waveform``), the same log-mel spectrogram (``vggish.mel_features``), the
same patch of each video frame (``vggish.extractor.patch_starts``) and the same row of each labelled
frame (``sampling.vggish_rows``). Nothing here needs TensorFlow: the spectrogram is pure numpy and is
computed in the audio stage (an openSMILE process), cached as (T, 64) float32 (15 MB per 10 minutes).
A 16 kHz mono wav (what preprocessing extracts) is read a block of spectrogram frames at a time, the
blocks of ``log_mel_spectrogram`` itself, so the values are the whole-signal ones and memory does not
grow with the audio; another rate or channel count is read whole (resampling needs the whole signal).

Stored as float16 (the authors' dtype [inferred]): log(mel + 0.01) lies in [-4.61, ~10], where
float16 keeps a relative rounding error of at most 2^-11 (4.9e-4). The trial stage reads the
spectrogram rows and gathers the patches of ``chunk_rows`` frames at a time, written with plain
writes (``npy_stream``; a memory map would keep every page in memory), so its memory does not grow
with the video (a 10-minute trial at 30 fps is 18,000 x 96 x 64 x 2 bytes = 221 MB on disk).
"""

from __future__ import annotations

import inspect
from pathlib import Path

import numpy as np
import soundfile as sf

from base.errors import UserError
from base.preprocessing.npy_stream import write_npy
from base.preprocessing.sampling import vggish_rows
from vggish import params
from vggish.extractor import gather_patches, patch_starts, prepare_waveform, read_wav
from vggish.mel_features import log_mel_spectrogram, n_stft_frames

LOGMEL_DTYPE = np.float16
CHUNK_ROWS = 512  # patches gathered at once: 512 x 96 x 64 float32 = 12.6 MB
# the spectrogram frames log_mel_spectrogram computes at once: reading blocks aligned with its own gives its
# very arithmetic (the same matrix products on the same samples)
LOG_MEL_BLOCK_FRAMES = inspect.signature(log_mel_spectrogram).parameters["block_frames"].default


def log_mel_of_wav(path: str | Path) -> np.ndarray:
    """The (padded) log-mel spectrogram VGGish embeds, as ``VggishExtractor.embed_wav_file`` computes it.

    Returns:
        float32 (T, 64), 100 rows per second of audio plus the one-second end pad.

    Raises:
        UserError: the wav is missing, unreadable or empty.
    """
    path = Path(path)
    try:
        info = sf.info(str(path)) if path.is_file() else None
    except (RuntimeError, sf.LibsndfileError):
        info = None
    if info is None or info.samplerate != params.SAMPLE_RATE_HZ or info.channels != 1 or info.frames == 0:
        waveform, sample_rate = read_wav(path)  # (n,) or (n, channels); its errors are the user's messages
        samples = prepare_waveform(waveform, sample_rate)  # (n + pad,) float32 at 16 kHz
        del waveform
        return log_mel_spectrogram(samples, params.SAMPLE_RATE_HZ)  # (T, 64)
    return _streamed_log_mel(path, info.frames)


def _streamed_log_mel(path: Path, n_samples: int) -> np.ndarray:
    """``log_mel_of_wav`` of a 16 kHz mono wav, read one spectrogram block at a time."""
    rate = params.SAMPLE_RATE_HZ
    window, hop = int(round(rate * params.STFT_WINDOW_S)), int(round(rate * params.STFT_HOP_S))
    n_padded = n_samples + int(round(params.END_PAD_S * rate))  # prepare_waveform's end pad
    n_frames = n_stft_frames(n_padded, window, hop)
    out = np.empty((n_frames, params.N_MEL_BANDS), dtype=np.float32)  # (T, 64)
    with sf.SoundFile(str(path)) as wav:
        wav.seek(n_samples - 1)
        last = wav.read(1, dtype="float32")[0]
        for first in range(0, n_frames, LOG_MEL_BLOCK_FRAMES):
            stop = min(first + LOG_MEL_BLOCK_FRAMES, n_frames)  # frames [first, stop)
            begin, end = first * hop, (stop - 1) * hop + window  # their samples in the padded waveform
            wav.seek(min(begin, n_samples))
            samples = wav.read(max(0, min(end, n_samples) - begin), dtype="float32")
            if end > n_samples:
                samples = np.concatenate([samples, np.full(end - max(begin, n_samples), last, np.float32)])
            out[first:stop] = log_mel_spectrogram(samples, rate)
    return out


def patch_starts_of_frames(frame_indices: np.ndarray, fps: float, n_video_frames: int,
                           n_log_mel_frames: int) -> np.ndarray:
    """First log-mel frame of the patch of each labelled frame: int64 (N,).

    The patch of ``vggish.npy`` row k: the video's frames get ``patch_starts``, a labelled frame
    takes its own frame's (``vggish_rows``: clamped to the video's last frame).

    >>> patch_starts_of_frames(np.array([0, 1, 3, 7]), fps=10.0, n_video_frames=5, n_log_mel_frames=200)
    array([ 0, 10, 30, 40])
    """
    starts = patch_starts(n_video_frames, fps, n_log_mel_frames=n_log_mel_frames)  # (n_video_frames,)
    return starts[vggish_rows(frame_indices, n_video_frames)]


def _spectrogram_rows(log_mel: np.ndarray | str | Path, first: int, last: int) -> np.ndarray:
    """Rows [first, last) of a spectrogram, or of the npy file holding it (mapped for this read only: a map
    kept open would hold every page read so far in the process's memory)."""
    if isinstance(log_mel, np.ndarray):
        return log_mel[first:last]
    mapped = np.load(log_mel, mmap_mode="r")
    rows = np.array(mapped[first:last])
    del mapped
    return rows


def write_logmel(path: str | Path, log_mel: np.ndarray | str | Path, starts: np.ndarray,
                 chunk_rows: int = CHUNK_ROWS) -> None:
    """Write ``logmel.npy``: the patches at ``starts`` of ``log_mel``, float16 (N, 96, 64), chunk by chunk.

    Args:
        path: the npy file to write.
        log_mel: (T, 64) spectrogram, or the npy file holding it (read a chunk's rows at a time).
        starts: first log-mel frame of each patch, (N,).
        chunk_rows: patches gathered at once (bounds memory; no effect on the file).

    Raises:
        UserError: the spectrogram holds NaN or infinite values.
    """
    starts = np.asarray(starts, dtype=np.int64)
    n_bands = (log_mel if isinstance(log_mel, np.ndarray) else np.load(log_mel, mmap_mode="r")).shape[1]

    def blocks():
        for first in range(0, len(starts), chunk_rows):
            chunk = starts[first:first + chunk_rows]  # (B,)
            low, high = int(chunk.min()), int(chunk.max()) + params.PATCH_FRAMES
            patches = gather_patches(_spectrogram_rows(log_mel, low, high), chunk - low)  # (B, 96, 64) float32
            if not np.all(np.isfinite(patches)):
                raise UserError(f"the log-mel spectrogram behind {path} has non-finite values")
            yield patches.astype(LOGMEL_DTYPE)

    write_npy(path, (len(starts), params.PATCH_FRAMES, n_bands), LOGMEL_DTYPE, blocks())
