"""Log-mel spectrogram in pure numpy, as VGGish was trained on (SPEC §3).

Magnitude (not power) STFT with a periodic Hann window, multiplied by a matrix of HTK-style mel
triangles, then ``log(mel + offset)``. The STFT is computed a block of frames at a time so that
memory stays bounded on long recordings; the result does not depend on the block size.
"""

from __future__ import annotations

import numpy as np

from vggish import params


def periodic_hann(n_samples: int) -> np.ndarray:
    """Hann window of period ``n_samples`` (ends just before the final zero), float64 (n_samples,)."""
    return 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n_samples) / n_samples)


def hz_to_mel(hz: np.ndarray | float) -> np.ndarray | float:
    """HTK mel scale: ``1127 ln(1 + hz / 700)``."""
    return params.HTK_MEL_Q * np.log1p(np.asarray(hz, dtype=np.float64) / params.HTK_MEL_BREAK_HZ)


def fft_length_for(window_samples: int) -> int:
    """Smallest power of two >= ``window_samples`` (400 samples -> 512)."""
    if window_samples < 1:
        raise ValueError(f"window_samples must be positive, got {window_samples}")
    return 1 << int(window_samples - 1).bit_length()


def mel_matrix(
    n_fft_bins: int,
    sample_rate: int,
    n_mel_bands: int = params.N_MEL_BANDS,
    mel_min_hz: float = params.MEL_MIN_HZ,
    mel_max_hz: float = params.MEL_MAX_HZ,
) -> np.ndarray:
    """Weights that map STFT magnitude rows onto mel bands: ``mel = magnitude @ W``.

    Band k is a triangle, linear in mel, rising from edge k to its centre k+1 and falling to
    edge k+2, where the ``n_mel_bands + 2`` edges are equally spaced in mel between
    ``mel_min_hz`` and ``mel_max_hz``. The DC bin gets no weight (as in HTK).

    Args:
        n_fft_bins: non-redundant FFT bins, ``fft_length // 2 + 1``; bin j is at
            ``j * sample_rate / fft_length`` Hz.
        sample_rate: Hz.
        n_mel_bands: output bands.
        mel_min_hz: lower edge of the lowest band, Hz.
        mel_max_hz: upper edge of the highest band, Hz (at most the Nyquist frequency).

    Returns:
        float64 (n_fft_bins, n_mel_bands).
    """
    nyquist_hz = sample_rate / 2.0
    if not 0.0 <= mel_min_hz < mel_max_hz <= nyquist_hz:
        raise ValueError(
            f"need 0 <= mel_min_hz < mel_max_hz <= Nyquist ({nyquist_hz} Hz), "
            f"got {mel_min_hz} and {mel_max_hz}"
        )
    bin_mel = hz_to_mel(np.linspace(0.0, nyquist_hz, n_fft_bins))  # (F,)
    edges_mel = np.linspace(hz_to_mel(mel_min_hz), hz_to_mel(mel_max_hz), n_mel_bands + 2)
    lower, centre, upper = edges_mel[:-2], edges_mel[1:-1], edges_mel[2:]  # (M,) each
    rising = (bin_mel[:, None] - lower) / (centre - lower)  # (F, M)
    falling = (upper - bin_mel[:, None]) / (upper - centre)  # (F, M)
    weights = np.clip(np.minimum(rising, falling), 0.0, None)
    weights[0, :] = 0.0
    return weights


def n_stft_frames(n_samples: int, window_samples: int, hop_samples: int) -> int:
    """Complete frames in ``n_samples`` (no padding): ``1 + (n - window) // hop``, or 0."""
    if n_samples < window_samples:
        return 0
    return 1 + (n_samples - window_samples) // hop_samples


def stft_magnitude(
    waveform: np.ndarray, window_samples: int, hop_samples: int, fft_length: int
) -> np.ndarray:
    """|rfft| of every complete Hann-windowed frame: float64 (n_frames, fft_length // 2 + 1)."""
    n_frames = n_stft_frames(len(waveform), window_samples, hop_samples)
    if n_frames == 0:
        return np.zeros((0, fft_length // 2 + 1))
    used = waveform[: (n_frames - 1) * hop_samples + window_samples].astype(np.float64, copy=False)
    frames = np.lib.stride_tricks.sliding_window_view(used, window_samples)[::hop_samples]  # (T, W)
    return np.abs(np.fft.rfft(frames * periodic_hann(window_samples), n=fft_length))


def log_mel_spectrogram(
    waveform: np.ndarray,
    sample_rate: int = params.SAMPLE_RATE_HZ,
    window_s: float = params.STFT_WINDOW_S,
    hop_s: float = params.STFT_HOP_S,
    n_mel_bands: int = params.N_MEL_BANDS,
    mel_min_hz: float = params.MEL_MIN_HZ,
    mel_max_hz: float = params.MEL_MAX_HZ,
    log_offset: float = params.LOG_OFFSET,
    block_frames: int = 2048,
) -> np.ndarray:
    """Log mel-magnitude spectrogram of a mono waveform.

    Args:
        waveform: mono samples, float in [-1, 1] (any float or int dtype is accepted as is).
        sample_rate: Hz of ``waveform``.
        window_s: STFT window, seconds (rounded to whole samples).
        hop_s: STFT hop, seconds (rounded to whole samples).
        n_mel_bands: mel bands.
        mel_min_hz: lower edge of the mel range, Hz.
        mel_max_hz: upper edge of the mel range, Hz.
        log_offset: added to the mel magnitudes before the natural log.
        block_frames: STFT frames computed at once (bounds memory; no effect on the result).

    Returns:
        float32 (n_frames, n_mel_bands) with ``n_frames = 1 + (n_samples - window) // hop``
        (0 rows when the waveform is shorter than one window).
    """
    waveform = np.asarray(waveform)
    if waveform.ndim != 1:
        raise ValueError(f"log_mel_spectrogram needs a mono (1-D) waveform, got shape {waveform.shape}")
    window_samples = int(round(sample_rate * window_s))
    hop_samples = int(round(sample_rate * hop_s))
    fft_length = fft_length_for(window_samples)
    weights = mel_matrix(fft_length // 2 + 1, sample_rate, n_mel_bands, mel_min_hz, mel_max_hz)
    n_frames = n_stft_frames(len(waveform), window_samples, hop_samples)
    out = np.empty((n_frames, n_mel_bands), dtype=np.float32)  # (T, M)
    for first in range(0, n_frames, block_frames):
        last = min(first + block_frames, n_frames)  # frames [first, last)
        samples = waveform[first * hop_samples : (last - 1) * hop_samples + window_samples]
        magnitude = stft_magnitude(samples, window_samples, hop_samples, fft_length)  # (t, F)
        out[first:last] = np.log(magnitude @ weights + log_offset)
    return out
