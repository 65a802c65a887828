"""openSMILE MFCC12_0_D_A and eGeMAPS LLDs: shapes, hand-computed relations, and an HTK reference.

Never import tensorflow in this file: the openSMILE library crashes a process that loaded
TensorFlow first.
"""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest
import soundfile as sf

from base.errors import UserError
from base.preprocessing.media import extract_wav, read_wav
from base.preprocessing.opensmile_features import (
    EGEMAPS_COLUMNS,
    MFCC_COLUMNS,
    extract_egemaps,
    extract_mfcc,
    import_opensmile,
)
from tests.media_helpers import make_video, write_tone_wav

C0 = MFCC_COLUMNS.index("mfcc0")  # 12: openSMILE's HTK order puts C0 after C1..C12
N_CEPS = 13
SQRT_2_OVER_26_TIMES_26 = np.sqrt(2 / 26) * 26  # weight of a constant log-mel shift in C0


def htk_mfcc_reference(samples: np.ndarray, sample_rate: int = 16000) -> np.ndarray:
    """HTK MFCC_0 (NUMCHANS 26, CEPLIFTER 22, USEPOWER T) in plain numpy, columns [C0, C1..C12]."""
    x = samples.astype(np.float64) * 32768  # HTK works on 16-bit sample values
    n_win, n_hop, n_fft, n_bands = 400, 160, 512, 26
    n_rows = 1 + (len(x) - n_win) // n_hop
    frames = np.stack([x[r * n_hop : r * n_hop + n_win] for r in range(n_rows)])  # (R, 400)
    emphasised = np.concatenate([frames[:, :1] * (1 - 0.97), frames[:, 1:] - 0.97 * frames[:, :-1]], axis=1)
    hamming = 0.54 - 0.46 * np.cos(2 * np.pi * np.arange(n_win) / (n_win - 1))
    power = np.abs(np.fft.rfft(emphasised * hamming, n_fft)) ** 2  # (R, 257)

    def mel(f_hz):
        return 1127 * np.log(1 + f_hz / 700)

    edges = mel(0) + (mel(sample_rate / 2) - mel(0)) * np.arange(n_bands + 2) / (n_bands + 1)
    bin_mel = mel(np.arange(n_fft // 2 + 1) * sample_rate / n_fft)
    rising = (bin_mel[None, :] - edges[:-2, None]) / (edges[1:-1, None] - edges[:-2, None])
    falling = (edges[2:, None] - bin_mel[None, :]) / (edges[2:, None] - edges[1:-1, None])
    filters = np.clip(np.minimum(rising, falling), 0, None)  # (26, 257)
    filters[:, 0] = 0  # HTK leaves out the DC bin
    log_mel = np.log(np.maximum(power @ filters.T, 1.0))  # (R, 26); HTK floors at 1
    i, j = np.arange(N_CEPS)[:, None], np.arange(1, n_bands + 1)[None, :]
    dct = np.sqrt(2 / n_bands) * np.cos(np.pi * i * (j - 0.5) / n_bands)  # (13, 26)
    lifter = 1 + 11 * np.sin(np.pi * np.arange(N_CEPS) / 22)
    return (log_mel @ dct.T) * lifter  # (R, 13)


def regression_deltas(c: np.ndarray) -> np.ndarray:
    """HTK deltas, W = 2: sum_k k (c[t+k] - c[t-k]) / 10, edges repeat the first/last row."""
    padded = np.concatenate([c[:1], c[:1], c, c[-1:], c[-1:]])
    return ((padded[3:-1] - padded[1:-3]) + 2 * (padded[4:] - padded[:-4])) / 10


@pytest.fixture(scope="module")
def video_wav(tmp_path_factory):
    folder = tmp_path_factory.mktemp("smile")
    video = make_video(folder / "tone.mp4", seconds=3, fps=30, size=32, tone_hz=440)
    wav_path = folder / "tone.wav"
    extract_wav(video, wav_path)
    return wav_path


@pytest.fixture(scope="module")
def tones(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tones")
    # a 400 Hz tone repeats every 40 samples, so every 10 ms hop (160 samples) sees the same frame
    return {
        "loud": write_tone_wav(folder / "loud.wav", tone_hz=400, amplitude=0.5),
        "quiet": write_tone_wav(folder / "quiet.wav", tone_hz=400, amplitude=0.05),
        "growing": write_tone_wav(folder / "growing.wav", tone_hz=400, amplitude=0.05,
                                  growth_per_s=np.log(10) / 3),
    }


# ----------------------------------------------------------------------------- MFCC


def test_mfcc_shape_on_an_extracted_wav(video_wav):
    mfcc = extract_mfcc(video_wav)
    samples, _ = read_wav(video_wav)
    assert mfcc.dtype == np.float32
    assert mfcc.shape == ((len(samples) - 400) // 160 + 1, 39)  # 298 rows for 3 s
    assert np.isfinite(mfcc).all()


def test_mfcc_column_names():
    assert len(MFCC_COLUMNS) == 39 == len(set(MFCC_COLUMNS))
    assert MFCC_COLUMNS[:2] == ("mfcc1", "mfcc2") and MFCC_COLUMNS[12] == "mfcc0"
    assert MFCC_COLUMNS[25] == "mfcc0_de" and MFCC_COLUMNS[38] == "mfcc0_de_de"


def test_mfcc_matches_an_independent_htk_reference(tmp_path):
    rng = np.random.default_rng(0)
    t_s = np.arange(2 * 16000) / 16000
    samples = 0.3 * np.sin(2 * np.pi * 440 * t_s) + 0.05 * rng.standard_normal(t_s.size)
    sf.write(str(tmp_path / "x.wav"), samples, 16000, subtype="PCM_16")
    quantised, _ = read_wav(tmp_path / "x.wav")
    mfcc = extract_mfcc(tmp_path / "x.wav")
    reference = htk_mfcc_reference(quantised)  # (R, 13), C0 first
    reference = np.concatenate([reference[:, 1:], reference[:, :1]], axis=1)  # openSMILE order
    assert mfcc.shape[0] == reference.shape[0]
    np.testing.assert_allclose(mfcc[:, :N_CEPS], reference, atol=2e-3)
    deltas = regression_deltas(reference)
    np.testing.assert_allclose(mfcc[:-2, N_CEPS : 2 * N_CEPS], deltas[:-2], atol=2e-3)
    # accelerations: openSMILE's last two rows handle the end differently; compare the rest
    np.testing.assert_allclose(mfcc[:-2, 2 * N_CEPS :], regression_deltas(deltas)[:-2], atol=2e-3)


def test_mfcc_c0_is_the_log_mel_power_sum(tones):
    loud, quiet = extract_mfcc(tones["loud"]), extract_mfcc(tones["quiet"])
    # 10x amplitude = 100x power: every log-mel band rises by ln(100), and C0 (DCT row 0, weight
    # sqrt(2/26) per band) by sqrt(2/26) * 26 * ln(100) = 33.2; a magnitude spectrum would give
    # half, and log frame energy (HTK _E) only ln(100) = 4.6. Quiet bands clipped at the HTK
    # floor of 1 make the measured rise a little smaller.
    rise = (loud[:, C0] - quiet[:, C0]).mean()
    assert rise == pytest.approx(SQRT_2_OVER_26_TIMES_26 * np.log(100), abs=0.6)


def test_mfcc_deltas_of_a_stationary_tone_are_zero(tones):
    mfcc = extract_mfcc(tones["loud"])
    middle = mfcc[5:-5]
    assert np.abs(middle[:, N_CEPS:]).max() < 1e-4
    assert np.abs(middle[:, :N_CEPS]).max() > 1  # the static cepstrum itself is not zero


def test_mfcc_delta_of_an_exponential_tone_is_its_log_power_slope(tones):
    mfcc = extract_mfcc(tones["growing"])
    growth_per_s = np.log(10) / 3
    # power grows by exp(2 g * 10 ms) per row, so C0 grows linearly and its delta is that step
    expected_delta_c0 = SQRT_2_OVER_26_TIMES_26 * 2 * growth_per_s * 0.01
    middle = mfcc[5:-5]
    assert middle[:, C0 + N_CEPS].mean() == pytest.approx(expected_delta_c0, rel=0.05)
    assert np.abs(middle[:, 2 * N_CEPS :].mean(axis=0)).max() < 0.02  # linear: no acceleration


def test_mfcc_missing_wav_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        extract_mfcc(tmp_path / "absent.wav")


def test_mfcc_too_short_wav_is_a_user_error(tmp_path):
    write_tone_wav(tmp_path / "short.wav", seconds=0.02)
    with pytest.raises(UserError, match="too short"):
        extract_mfcc(tmp_path / "short.wav")


# ----------------------------------------------------------------------------- eGeMAPS


def test_egemaps_shape_and_columns(video_wav):
    egemaps = extract_egemaps(video_wav)
    assert egemaps.dtype == np.float32
    assert egemaps.shape[1] == 23 == len(EGEMAPS_COLUMNS)
    assert 290 <= egemaps.shape[0] <= 300  # 10 ms rows over 3 s
    assert np.isfinite(egemaps).all()


def test_egemaps_pitch_and_loudness_of_a_harmonic_tone(tmp_path):
    t_s = np.arange(2 * 16000) / 16000
    harmonic = sum(np.sin(2 * np.pi * 220 * m * t_s) / m for m in range(1, 6))  # 220 Hz fundamental
    sf.write(str(tmp_path / "loud.wav"), 0.2 * harmonic, 16000, subtype="PCM_16")
    sf.write(str(tmp_path / "quiet.wav"), 0.02 * harmonic, 16000, subtype="PCM_16")
    loud, quiet = extract_egemaps(tmp_path / "loud.wav"), extract_egemaps(tmp_path / "quiet.wav")
    f0 = EGEMAPS_COLUMNS.index("F0semitoneFrom27.5Hz_sma3nz")
    loudness = EGEMAPS_COLUMNS.index("Loudness_sma3")
    # 220 Hz is 12 * log2(220 / 27.5) = 36 semitones above 27.5 Hz
    assert np.median(loud[:, f0]) == pytest.approx(36.0, abs=0.3)
    assert np.median(loud[:, loudness]) > 2 * np.median(quiet[:, loudness])


def test_egemaps_missing_wav_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        extract_egemaps(tmp_path / "absent.wav")


# ----------------------------------------------------------------------------- TensorFlow guard


def test_refuses_to_load_opensmile_after_tensorflow(monkeypatch):
    monkeypatch.delitem(sys.modules, "opensmile", raising=False)
    monkeypatch.setitem(sys.modules, "tensorflow", types.ModuleType("tensorflow"))
    with pytest.raises(RuntimeError, match="TensorFlow was imported first"):
        import_opensmile()
