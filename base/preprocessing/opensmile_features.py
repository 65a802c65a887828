"""openSMILE low-level descriptors of a wav: MFCC12_0_D_A (39-d) and eGeMAPS (23-d), 10 ms rows (SPEC §3).

Both run the real openSMILE library through the ``opensmile`` package (2.4.2), which feeds the
samples to openSMILE's ``cExternalAudioSource`` and reads rows from a ``cExternalSink``.

MFCC: the package ships no MFCC config, so the project's own ``opensmile_configs/MFCC12_0_D_A.conf``
chains openSMILE's standard components the HTK way (25 ms Hamming frames every 10 ms, per-frame
pre-emphasis 0.97, power spectrum, 26 HTK-mel bands 0-8000 Hz, DCT, cepstral liftering 22,
deltas and accelerations with regression window 2). Column order is openSMILE's HTK-compatible
order, in which C0 comes *after* C1..C12 (HTK's ``_0`` convention)::

    [c1..c12, c0, d(c1)..d(c12), d(c0), a(c1)..a(c12), a(c0)]     (MFCC_COLUMNS)

eGeMAPS: ``FeatureSet.eGeMAPSv01a`` (the version the paper names) at the LLD level gives exactly
23 columns (EGEMAPS_COLUMNS). v01b gives the same 23 names; v02 gives 25 (it adds the F2 and F3
bandwidths), so it is not used.

Warning: the openSMILE shared library crashes the process (``malloc(): invalid size``) when it is
loaded after TensorFlow. This module imports ``opensmile`` lazily and refuses, with a clear error,
when TensorFlow is already imported and openSMILE is not. Run it in a spawned worker process whose
modules (including the ``__main__`` script, which spawn re-imports) do not import TensorFlow at top
level, or call ``import_opensmile()`` before importing TensorFlow.
"""

from __future__ import annotations

import functools
import logging
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from base.errors import MissingTool, UserError
from base.preprocessing.media import read_wav

logger = logging.getLogger(__name__)

MFCC_CONFIG_PATH = Path(__file__).resolve().parent / "opensmile_configs" / "MFCC12_0_D_A.conf"
MFCC_LEVEL = "lld"  # the data-memory level the MFCC config concatenates its 39 values into
MFCC_DIM = 39
_CEPSTRA = tuple(f"mfcc{i}" for i in (*range(1, 13), 0))  # HTK order: C0 last
MFCC_COLUMNS = (*_CEPSTRA, *(f"{c}_de" for c in _CEPSTRA), *(f"{c}_de_de" for c in _CEPSTRA))

EGEMAPS_VERSION = "eGeMAPSv01a"
EGEMAPS_DIM = 23
EGEMAPS_COLUMNS = (
    "Loudness_sma3",
    "alphaRatio_sma3",
    "hammarbergIndex_sma3",
    "slope0-500_sma3",
    "slope500-1500_sma3",
    "spectralFlux_sma3",
    "mfcc1_sma3",
    "mfcc2_sma3",
    "mfcc3_sma3",
    "mfcc4_sma3",
    "F0semitoneFrom27.5Hz_sma3nz",
    "jitterLocal_sma3nz",
    "shimmerLocaldB_sma3nz",
    "HNRdBACF_sma3nz",
    "logRelF0-H1-H2_sma3nz",
    "logRelF0-H1-A3_sma3nz",
    "F1frequency_sma3nz",
    "F1bandwidth_sma3nz",
    "F1amplitudeLogRelF0_sma3nz",
    "F2frequency_sma3nz",
    "F2amplitudeLogRelF0_sma3nz",
    "F3frequency_sma3nz",
    "F3amplitudeLogRelF0_sma3nz",
)


def import_opensmile() -> Any:
    """Import the ``opensmile`` package, refusing when TensorFlow was loaded first (it would crash)."""
    if "opensmile" not in sys.modules and "tensorflow" in sys.modules:
        raise RuntimeError(
            "openSMILE crashes a process into which TensorFlow was imported first; run openSMILE "
            "in a spawned process whose modules do not import tensorflow at top level, or call "
            "base.preprocessing.opensmile_features.import_opensmile() before importing tensorflow"
        )
    try:
        import opensmile
    except ImportError as exc:
        raise MissingTool(f"openSMILE cannot be loaded ({exc}): pip install -r requirements.txt") from None
    return opensmile


@functools.cache
def _smile(feature_set: str, feature_level: str) -> Any:
    """A cached ``opensmile.Smile`` (it keeps no state between calls; building one runs openSMILE once)."""
    opensmile = import_opensmile()
    if feature_set in opensmile.FeatureSet.__members__:
        set_arg = opensmile.FeatureSet[feature_set]
        level_arg = opensmile.FeatureLevel(feature_level)
    else:  # a config file path
        set_arg, level_arg = feature_set, feature_level
    with warnings.catch_warnings():
        # eGeMAPSv01a is deprecated in favour of v02 in the package, but it is what the paper used
        warnings.filterwarnings("ignore", message=".*deprecated.*", category=UserWarning)
        return opensmile.Smile(feature_set=set_arg, feature_level=level_arg)


def _run(smile: Any, wav_path: str | Path, what: str) -> tuple[np.ndarray, list[str]]:
    samples, sample_rate = read_wav(wav_path)  # (n_samples,)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        frame = smile.process_signal(samples, sample_rate)
    values = frame.to_numpy(dtype=np.float32)  # (n_rows, D)
    too_short = [w for w in caught if "too short" in str(w.message)]
    for other in caught:
        if other not in too_short:
            logger.warning("openSMILE on %s: %s", wav_path, other.message)
    if too_short or len(values) == 0:
        raise UserError(
            f"wav file {wav_path} is too short ({len(samples) / sample_rate:.3f} s) to compute {what}"
        )
    return values, list(frame.columns)


def extract_mfcc(wav_path: str | Path) -> np.ndarray:
    """MFCC12_0_D_A of a wav: one row every 10 ms, columns as ``MFCC_COLUMNS``.

    Returns:
        float32 array (n_rows, 39); n_rows = floor((n_samples - 400) / 160) + 1 at 16 kHz.

    Raises:
        UserError: the wav is missing, unreadable or shorter than one 25 ms frame.
    """
    values, _ = _run(_smile(str(MFCC_CONFIG_PATH), MFCC_LEVEL), wav_path, "MFCC")
    if values.shape[1] != MFCC_DIM:
        raise RuntimeError(f"{MFCC_CONFIG_PATH} produced {values.shape[1]} columns, expected {MFCC_DIM}")
    return values


def extract_egemaps(wav_path: str | Path) -> np.ndarray:
    """eGeMAPS v01a low-level descriptors of a wav: one row every 10 ms, columns as ``EGEMAPS_COLUMNS``.

    Returns:
        float32 array (n_rows, 23).

    Raises:
        UserError: the wav is missing, unreadable or too short.
    """
    values, columns = _run(_smile(EGEMAPS_VERSION, "lld"), wav_path, "eGeMAPS")
    if tuple(columns) != EGEMAPS_COLUMNS:
        missing = sorted(set(EGEMAPS_COLUMNS) - set(columns))
        if missing:
            raise RuntimeError(f"openSMILE {EGEMAPS_VERSION} lacks the LLD columns {missing}")
        values = values[:, [columns.index(name) for name in EGEMAPS_COLUMNS]]
    return values
