"""``logmel.npy``: the VGGish input patch of each labelled frame, before the network (SPEC-ABAW5 §1).

The authors' second generation feeds its own VGGish the log-mel patches, (n, 96, 64) per trial
[inferred]. Row k of ``logmel.npy`` is exactly the patch whose embedding is row k of ``vggish.npy``:
the same waveform (mono, its end padded with one second of its last sample, resampled to 16 kHz:
``vggish.extractor.prepare_waveform``), the same log-mel spectrogram (``vggish.mel_features``), the
same patch of each video frame (``vggish.extractor.patch_starts``) and the same row of each labelled
frame (``sampling.vggish_rows``). Nothing here needs TensorFlow: the spectrogram is pure numpy and is
computed in the audio stage (an openSMILE process), cached as (T, 64) float32 (15 MB per 10 minutes).

Stored as float16 (the authors' dtype [inferred]): log(mel + 0.01) lies in [-4.61, ~10], where
float16 keeps a relative rounding error of at most 2^-11 (4.9e-4). The trial stage gathers the
patches ``chunk_rows`` at a time into an ``np.lib.format.open_memmap`` file, so its memory does not
grow with the video (a 10-minute trial at 30 fps is 18,000 x 96 x 64 x 2 bytes = 221 MB on disk).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from base.errors import UserError
from base.preprocessing.sampling import vggish_rows
from vggish import params
from vggish.extractor import gather_patches, patch_starts, prepare_waveform, read_wav
from vggish.mel_features import log_mel_spectrogram

LOGMEL_DTYPE = np.float16
CHUNK_ROWS = 512  # patches gathered at once: 512 x 96 x 64 float32 = 12.6 MB


def log_mel_of_wav(path: str | Path) -> np.ndarray:
    """The (padded) log-mel spectrogram VGGish embeds, as ``VggishExtractor.embed_wav_file`` computes it.

    Returns:
        float32 (T, 64), 100 rows per second of audio plus the one-second end pad.
    """
    waveform, sample_rate = read_wav(path)  # (n,) or (n, channels)
    samples = prepare_waveform(waveform, sample_rate)  # (n + pad,) float32 at 16 kHz
    del waveform
    return log_mel_spectrogram(samples, params.SAMPLE_RATE_HZ)  # (T, 64)


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


def write_logmel(path: str | Path, log_mel: np.ndarray, starts: np.ndarray, chunk_rows: int = CHUNK_ROWS) -> None:
    """Write ``logmel.npy``: the patches at ``starts`` of ``log_mel``, float16 (N, 96, 64), chunk by chunk.

    Args:
        path: the npy file to write.
        log_mel: (T, 64) spectrogram (may be memory-mapped).
        starts: first log-mel frame of each patch, (N,).
        chunk_rows: patches gathered at once (bounds memory; no effect on the file).

    Raises:
        UserError: the spectrogram holds NaN or infinite values.
    """
    shape = (len(starts), params.PATCH_FRAMES, log_mel.shape[1])
    out = np.lib.format.open_memmap(str(path), mode="w+", dtype=LOGMEL_DTYPE, shape=shape)
    try:
        for first in range(0, len(starts), chunk_rows):
            patches = gather_patches(log_mel, starts[first:first + chunk_rows])  # (B, 96, 64) float32
            if not np.all(np.isfinite(patches)):
                raise UserError(f"the log-mel spectrogram behind {path} has non-finite values")
            out[first:first + len(patches)] = patches.astype(LOGMEL_DTYPE)
        out.flush()
    finally:
        del out
