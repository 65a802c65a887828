"""The authors' second generation's features (SPEC-ABAW5 §1): logmel.npy, eGeMAPS functionals per frame,
the ``features`` choice, their statistics, and the preprocessing runs that write them.

Never import tensorflow at module level here: openSMILE crashes a process that loaded it first.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

import calculate_mean_and_std
import configs
import preprocessing
from base.data.processed import ProcessedDataset
from base.errors import UserError, run_cli
from base.preprocessing import demo, shards
from base.preprocessing.egemaps_functionals import (
    FUNCTIONALS_DIM,
    WavSegments,
    extract_egemaps_functionals,
    feature_names,
    functionals_per_frame,
    segment_bounds,
)
from base.preprocessing.logmel import log_mel_of_wav, patch_starts_of_frames, write_logmel
from base.preprocessing.media import extract_wav, read_wav
from base.preprocessing.preprocess import NO_VGGISH, SILENT_AUDIO, plan_settings
from base.preprocessing.sampling import vggish_rows
from base.safe_pickle import load_pickle
from tests.conftest import ROOT, make_tiny_video
from tests.processed_helpers import make_processed_dataset
from vggish import params
from vggish.extractor import VggishExtractor, gather_patches, patch_starts, prepare_waveform
from vggish.mel_features import log_mel_spectrogram

SR = 16000
CHECKER = ROOT.parent / "shared" / "tools" / "check_processed.py"
ABAW2_FILES = configs.FeatureSet.ABAW2.files
ABAW5_FILES = configs.FeatureSet.ABAW5.files


def smile_functionals():
    """The package's own extractor: the one-by-one reference."""
    import opensmile

    return opensmile.Smile(opensmile.FeatureSet.eGeMAPSv02, opensmile.FeatureLevel.Functionals)


@pytest.fixture(scope="module")
def voice_wav(tmp_path_factory) -> Path:
    """3 s of the demo voice through a real mp4 (AAC), extracted as the pipeline does: 16 kHz mono PCM."""
    folder = tmp_path_factory.mktemp("voice")
    video = folder / "voice.mp4"
    make_tiny_video(video, seconds=3.0)
    extract_wav(video, folder / "voice.wav")
    return folder / "voice.wav"


def write_wav(path: Path, samples: np.ndarray, sample_rate: int = SR) -> Path:
    sf.write(str(path), samples, sample_rate, subtype="PCM_16")
    return path


# ----------------------------------------------------------------------------- the choice of features


def test_feature_sets_and_their_files():
    assert configs.FeatureConfig().features == ("abaw2",)
    assert ABAW2_FILES == ("frame", "mfcc", "egemaps", "vggish", "label")
    assert set(ABAW5_FILES) == {"frame", "label", "logmel", "egemaps_functionals"}
    assert configs.feature_files(("abaw5", "abaw2"))[:4] == ("frame", "logmel", "egemaps_functionals", "label")
    assert set(configs.feature_files(("abaw2", "abaw5"))) == set(ABAW2_FILES) | set(ABAW5_FILES)


def test_features_flag_config_file_and_bad_values(tmp_path):
    parser = argparse.ArgumentParser()
    configs.add_config_arguments(parser, sections=("demo", "features"))
    assert configs.resolve(parser.parse_args(["--features", "abaw2", "abaw5"])).features.features == ("abaw2", "abaw5")
    # 'features' is a section and a key of it: a list is the key, a mapping the section
    assert configs.apply_overrides(configs.Config(), {"features": "abaw5"}).features.features == ("abaw5",)
    nested = configs.apply_overrides(configs.Config(), {"features": {"features": ["abaw5"], "jobs": 3}})
    assert nested.features.features == ("abaw5",) and nested.features.jobs == 3
    config_file = tmp_path / "c.json"
    config_file.write_text(json.dumps({"features": ["abaw2", "abaw5"]}))
    assert configs.load_config(str(config_file)).features.features == ("abaw2", "abaw5")
    with pytest.raises(UserError, match="config key 'features' must list abaw2 and/or abaw5, got 'abaw4'"):
        configs.apply_overrides(configs.Config(), {"features": ["abaw2", "abaw4"]})
    with pytest.raises(UserError, match="config key 'features' needs at least one of abaw2, abaw5"):
        configs.apply_overrides(configs.Config(), {"features": []})


def test_a_shard_with_other_features_refuses(tmp_path):
    features = configs.FeatureConfig()
    (tmp_path / "raw_video").mkdir()
    (tmp_path / "raw_video" / "a.mp4").write_bytes(b"\0" * 10)
    from base.preprocessing.database import Trial

    trials = [Trial("a", "Train_Set", "a", tmp_path / "raw_video" / "a.mp4", None, tmp_path / "a")]
    out = tmp_path / "out"
    abaw2 = plan_settings(features, None)
    assert abaw2["features"] == ["abaw2"]
    shards.record_plan(out, shards.make_plan(trials, 2, abaw2, "w"))
    both = plan_settings(configs.FeatureConfig(features=("abaw5", "abaw2")), None)
    assert both["features"] == ["abaw2", "abaw5"]  # the order given does not matter
    with pytest.raises(UserError, match=r"features is \['abaw2'\] there, \['abaw2', 'abaw5'\] here"):
        shards.record_plan(out, shards.make_plan(trials, 2, both, "w"))
    # a plan recorded before the feature sets existed was an abaw2 one
    legacy = tmp_path / "legacy"
    shards.record_plan(legacy, shards.make_plan(trials, 2, {k: v for k, v in abaw2.items() if k != "features"}, "w"))
    assert shards.record_plan(legacy, shards.make_plan(trials, 2, abaw2, "w")).n_shards == 2


def test_abaw5_alone_needs_no_vggish_and_no_lld(tmp_path):
    from base.preprocessing.database import Trial
    from base.preprocessing.preprocess import VggishSource, _StageRun, audio_caches

    assert audio_caches(configs.feature_files(("abaw2",))) == ("mfcc", "egemaps")
    assert audio_caches(configs.feature_files(("abaw5",))) == ("log_mel_spectrogram", "egemaps_functionals")
    assert audio_caches(configs.feature_files(("abaw5", "abaw2"))) == (
        "mfcc", "egemaps", "log_mel_spectrogram", "egemaps_functionals")
    pending = {"v": [Trial("v", "Train_Set", "v", tmp_path / "v.mp4", None, tmp_path / "v")]}
    source = VggishSource("vggish_model.ckpt", None, random_weights=False)
    for sets, with_vggish in ((("abaw5",), set()), (("abaw2",), {"v"}), (("abaw2", "abaw5"), {"v"})):
        run = _StageRun(pending, tmp_path, configs.FeatureConfig(features=sets), source if with_vggish else None,
                        {}, quiet=True)
        assert run.with_vggish == with_vggish  # no VGGish task, so no VGGish process (no TensorFlow) when empty
    with pytest.raises(ValueError, match="no VGGish weights"):
        _StageRun(pending, tmp_path, configs.FeatureConfig(), None, {}, quiet=True)
    # an abaw2 trial of an earlier run that now gets abaw5: no VGGish again
    run = _StageRun(pending, tmp_path, configs.FeatureConfig(features=("abaw2", "abaw5")), None, {}, quiet=True,
                    todo={"v": ("frame", "label", "logmel", "egemaps_functionals")})
    assert run.with_vggish == set()
    with pytest.raises(UserError, match="config key 'features'"):
        preprocessing.main(["--database", str(tmp_path), "--output", str(tmp_path / "o"), "--features", "abaw6"])


def test_the_new_files_are_known_to_the_dataset_reader(tmp_path):
    root = make_processed_dataset(tmp_path / "p", n_train=1, n_val=1, n_test=0, lengths=4, modalities=("frame",),
                                  with_mean_std=False)
    folder = root / "npy_data" / "train_000"
    np.save(folder / "logmel.npy", np.zeros((4, 96, 64), np.float16))
    np.save(folder / "egemaps_functionals.npy", np.ones((4, 88), np.float32))
    dataset = ProcessedDataset(root)
    assert dataset.load("train_000", "logmel").shape == (4, 96, 64)
    assert configs.Modality("egemaps_functionals").feature_dim == 88
    assert dataset.check_trial("train_000", ["frame", "logmel", "egemaps_functionals"]) == 4


def test_predicting_a_video_samples_the_functionals_per_frame(tmp_path):
    from base.prediction.video_traces import sample_audio_features

    np.save(tmp_path / "egemaps_functionals.npy", np.arange(4 * 88, dtype=np.float32).reshape(4, 88))
    np.save(tmp_path / "egemaps.npy", np.arange(30 * 23, dtype=np.float32).reshape(30, 23))
    arrays = sample_audio_features(tmp_path, ["egemaps_functionals", "egemaps"], n_frames=6, fps=10.0,
                                   opensmile_hop_s=0.01)
    assert arrays["egemaps_functionals"][:, 0].tolist() == [0, 88, 176, 264, 264, 264]  # row = frame (clamped)
    assert arrays["egemaps"][:, 0].tolist() == [0, 230, 460, 667, 667, 667]  # row = nearest 10 ms (clamped)


# ----------------------------------------------------------------------------- eGeMAPS functionals


def test_segment_bounds_by_hand():
    # 30 fps at 16 kHz: frame k starts at round(533.33 k) samples; a segment is 16000 samples
    starts, ends = segment_bounds(np.array([0, 1, 2, 3, 4]), fps=30.0, sample_rate=SR, n_samples=40000)
    assert starts.tolist() == [0, 533, 1067, 1600, 2133] and (ends - starts).tolist() == [16000] * 5
    # 2.5 s of audio: frames whose second runs past the end take the last full second, [24000, 40000)
    starts, ends = segment_bounds(np.array([44, 45, 46, 80, 500]), fps=30.0, sample_rate=SR, n_samples=40000)
    assert starts.tolist() == [23467, 24000, 24000, 24000, 24000] and ends[1:].tolist() == [40000] * 4
    # audio shorter than a segment: one segment, the whole audio
    starts, ends = segment_bounds(np.array([0, 7]), fps=30.0, sample_rate=SR, n_samples=8000)
    assert starts.tolist() == [0, 0] and ends.tolist() == [8000, 8000]


def test_segment_bounds_are_the_samples_opensmile_cuts():
    from audinterface.core.utils import segment_to_indices

    signal = np.zeros((1, 10 * SR))
    for fps in (30.0, 25.0, 29.97):
        frames = np.arange(0, int(8 * fps))
        starts, ends = segment_bounds(frames, fps, SR, signal.shape[1])
        for k, start, end in zip(frames, starts, ends):
            expected = segment_to_indices(signal, SR, pd_seconds(k / fps), pd_seconds(k / fps + 1.0))
            assert (start, end) == expected, (fps, k)


def pd_seconds(seconds: float):
    import pandas as pd

    return pd.to_timedelta(seconds, unit="s")


def test_batched_functionals_equal_the_one_by_one_computation(voice_wav):
    samples, sample_rate = read_wav(voice_wav)
    fps, n_frames = 30.0, 90
    batched = extract_egemaps_functionals(voice_wav, fps, n_frames)  # (90, 88), the wav read a segment at a time
    assert batched.shape == (n_frames, FUNCTIONALS_DIM) and batched.dtype == np.float32
    smile = smile_functionals()
    checked = [0, 1, 2, 17, 40, 59, 60, 89]  # 60..89: the last second of the 3 s, which they all share
    for k in checked:
        start, end = segment_bounds(np.array([k]), fps, sample_rate, len(samples))
        if k < 60:
            assert start[0] / sample_rate == pytest.approx(k / fps, abs=1e-4)  # the plain [k/fps, k/fps + 1 s)
        one = smile.process_signal(samples, sample_rate, start=start[0] / sample_rate,
                                   end=end[0] / sample_rate).to_numpy()[0]
        np.testing.assert_allclose(batched[k], one, rtol=1e-4, atol=1e-6 * np.abs(one).max(), err_msg=f"frame {k}")
    np.testing.assert_array_equal(batched[60:], np.broadcast_to(batched[60], (30, FUNCTIONALS_DIM)))
    assert not np.array_equal(batched[0], batched[1])  # neighbouring frames are different segments
    with WavSegments(voice_wav) as segments:
        assert len(segments) == len(samples)
        np.testing.assert_array_equal(segments[533:16533], samples[533:16533])


def test_functionals_of_a_harmonic_tone_by_hand(tmp_path):
    # 220 Hz with harmonics: F0 = 12 log2(220 / 27.5) = 36 semitones above 27.5 Hz, voiced throughout
    t = np.arange(2 * SR) / SR
    tone = sum(0.3 / h * np.sin(2 * np.pi * 220 * h * t) for h in (1, 2, 3))
    values = extract_egemaps_functionals(write_wav(tmp_path / "tone.wav", tone), fps=10.0, n_frames=5)
    names = feature_names()
    assert len(names) == FUNCTIONALS_DIM == values.shape[1]
    f0 = values[:, names.index("F0semitoneFrom27.5Hz_sma3nz_amean")]
    np.testing.assert_allclose(f0, 36.0, atol=0.3)
    assert np.all(values[:, names.index("VoicedSegmentsPerSec")] <= 2)  # one voiced stretch per second


def test_silent_audio_gives_the_functionals_of_silence(tmp_path):
    samples = np.zeros(2 * SR, np.float32)
    values = functionals_per_frame(samples, SR, fps=30.0, n_frames=60)  # from samples in memory
    names = feature_names()
    assert np.all(np.isfinite(values)) and np.array_equal(values, np.broadcast_to(values[0], values.shape))
    assert 0.0 <= values[0, names.index("loudness_sma3_amean")] < 0.01  # openSMILE's floor, not 0
    assert values[0, names.index("F0semitoneFrom27.5Hz_sma3nz_amean")] == 0.0  # no voiced frame
    assert values[0, names.index("VoicedSegmentsPerSec")] == 0.0


def test_audio_shorter_than_a_segment_and_audio_too_short(tmp_path):
    rng = np.random.default_rng(0)
    half = rng.normal(0, 0.1, SR // 2)
    values = extract_egemaps_functionals(write_wav(tmp_path / "half.wav", half), fps=30.0, n_frames=15)
    whole = smile_functionals().process_signal(read_wav(tmp_path / "half.wav")[0], SR).to_numpy()[0]
    np.testing.assert_allclose(values, np.broadcast_to(whole, values.shape), rtol=1e-6)  # every frame: all 0.5 s
    with pytest.raises(UserError, match=r"too short \(0\.040 s\) to compute eGeMAPS functionals"):
        extract_egemaps_functionals(write_wav(tmp_path / "blip.wav", half[:640]), fps=30.0, n_frames=1)
    with pytest.raises(UserError, match="missing.wav does not exist"):
        extract_egemaps_functionals(tmp_path / "missing.wav", fps=30.0, n_frames=1)


# ----------------------------------------------------------------------------- logmel


class PatchRecorder(VggishExtractor):
    """The extractor without a network: embedding i is the number of the i-th patch it was given."""

    def __init__(self, batch_size: int = 7) -> None:  # no checkpoint, no TensorFlow
        self.batch_size, self.postprocess, self.pca, self._session = batch_size, False, None, None
        self.patches: list[np.ndarray] = []

    def embed_patches(self, patches: np.ndarray) -> np.ndarray:
        first = len(self.patches)
        self.patches.extend(np.asarray(patches, np.float32))
        return np.repeat(np.arange(first, first + len(patches), dtype=np.float32)[:, None], 128, axis=1)


def test_logmel_rows_are_the_patches_vggish_embeds(voice_wav, tmp_path):
    fps, n_video_frames = 30.0, 90
    labelled = np.array([0, 1, 2, 3, 10, 44, 45, 88, 89, 91])  # 91: an annotation row past the video's end
    recorder = PatchRecorder()
    vggish = recorder.embed_wav_file(voice_wav, fps, n_video_frames)  # what vggish_stage caches, (90, 128)
    embedded = np.stack(recorder.patches)[vggish[vggish_rows(labelled, len(vggish)), 0].astype(int)]
    log_mel = log_mel_of_wav(voice_wav)
    write_logmel(tmp_path / "logmel.npy", log_mel, patch_starts_of_frames(labelled, fps, n_video_frames, len(log_mel)),
                 chunk_rows=3)
    logmel = np.load(tmp_path / "logmel.npy")
    assert logmel.shape == (len(labelled), 96, 64) and logmel.dtype == np.float16
    np.testing.assert_array_equal(logmel, embedded.astype(np.float16))
    # the same as gathering the extractor's patches of those frames directly
    waveform, sample_rate = sf.read(str(voice_wav), dtype="float32")
    spectrogram = log_mel_spectrogram(prepare_waveform(waveform, sample_rate), params.SAMPLE_RATE_HZ)
    starts = patch_starts(n_video_frames, fps, n_log_mel_frames=len(spectrogram))[np.minimum(labelled, 89)]
    np.testing.assert_array_equal(logmel, gather_patches(spectrogram, starts).astype(np.float16))
    assert np.abs(logmel.astype(np.float32) - embedded).max() <= 2 ** -11 * np.abs(embedded).max()


def test_the_log_mel_read_a_block_at_a_time_is_the_whole_signals(tmp_path):
    noise = np.random.default_rng(1).normal(0, 0.2, int(25.3 * SR)).clip(-1, 1)  # 2628 frames: two blocks
    wav = write_wav(tmp_path / "noise.wav", noise)
    waveform, sample_rate = sf.read(str(wav), dtype="float32")
    whole = log_mel_spectrogram(prepare_waveform(waveform, sample_rate), params.SAMPLE_RATE_HZ)
    np.testing.assert_array_equal(log_mel_of_wav(wav), whole)
    eight_k = write_wav(tmp_path / "8k.wav", noise[: 2 * SR : 2], sample_rate=8000)  # resampled: read whole
    waveform, sample_rate = sf.read(str(eight_k), dtype="float32")
    np.testing.assert_array_equal(log_mel_of_wav(eight_k),
                                  log_mel_spectrogram(prepare_waveform(waveform, sample_rate), params.SAMPLE_RATE_HZ))
    with pytest.raises(UserError, match="not found"):
        log_mel_of_wav(tmp_path / "missing.wav")


def test_logmel_by_hand(tmp_path):
    # 2 s of silence at 10 fps: every log-mel value is log(0 + 0.01); frame k's patch starts at 10 k
    wav = write_wav(tmp_path / "silent.wav", np.zeros(2 * SR))
    log_mel = log_mel_of_wav(wav)
    assert log_mel.shape == (1 + (3 * SR - 400) // 160, 64)  # 2 s + the 1 s end pad
    starts = patch_starts_of_frames(np.array([0, 1, 5, 19, 25]), 10.0, 20, len(log_mel))
    assert starts.tolist() == [0, 10, 50, 190, 190]
    write_logmel(tmp_path / "logmel.npy", log_mel, starts)
    logmel = np.load(tmp_path / "logmel.npy")
    assert np.all(logmel == np.float16(np.log(0.01)))
    # a ramp spectrogram: row r of patch s is log-mel frame s + r
    ramp = np.repeat(np.arange(300, dtype=np.float32)[:, None], 64, axis=1)
    write_logmel(tmp_path / "ramp.npy", ramp, np.array([0, 10, 190]), chunk_rows=2)
    patches = np.load(tmp_path / "ramp.npy")
    assert patches[1, :, 0].tolist() == list(range(10, 106)) and patches[2, 95, 63] == 285


def test_files_written_a_block_at_a_time_equal_np_save(tmp_path, jpg_folder):
    from base.preprocessing.frames import load_face_frames, write_face_frames
    from base.preprocessing.npy_stream import write_npy

    rng = np.random.default_rng(0)
    for name, array in (("u8", rng.integers(0, 255, (10, 4, 4, 3), dtype=np.uint8)),
                        ("f16", rng.normal(0, 1, (7, 96, 64)).astype(np.float16)),
                        ("empty", np.zeros((0, 96, 64), np.float16))):
        np.save(tmp_path / f"{name}_ref.npy", array)
        write_npy(tmp_path / f"{name}.npy", array.shape, array.dtype, (array[i:i + 3] for i in range(0, len(array), 3)))
        assert (tmp_path / f"{name}.npy").read_bytes() == (tmp_path / f"{name}_ref.npy").read_bytes(), name
    with pytest.raises(ValueError, match="2 rows written, the header says 3"):
        write_npy(tmp_path / "short.npy", (3, 2), np.float32, [np.zeros((2, 2))])
    folder, missing = jpg_folder
    indices = np.array([0, 1, 2, 3, 6, 7, 9])
    frames, n_missing = load_face_frames(folder, indices)
    np.save(tmp_path / "frame_ref.npy", frames)
    assert write_face_frames(tmp_path / "frame.npy", folder, indices, chunk_frames=3) == n_missing == 2
    assert (tmp_path / "frame.npy").read_bytes() == (tmp_path / "frame_ref.npy").read_bytes()
    spectrogram = rng.normal(0, 1, (400, 64)).astype(np.float32)
    np.save(tmp_path / "spectrogram.npy", spectrogram)
    starts = np.array([0, 3, 7, 150, 151, 300])
    write_logmel(tmp_path / "from_array.npy", spectrogram, starts)
    write_logmel(tmp_path / "from_file.npy", tmp_path / "spectrogram.npy", starts, chunk_rows=2)
    assert (tmp_path / "from_array.npy").read_bytes() == (tmp_path / "from_file.npy").read_bytes()


# ----------------------------------------------------------------------------- statistics


def test_egemaps_functionals_statistics_are_one_scalar_per_fold_and_partition(tmp_path):
    root = make_processed_dataset(tmp_path / "p", n_train=6, n_val=2, n_test=1, lengths=(5, 9, 4),
                                  modalities=("frame",), with_mean_std=False)
    info = load_pickle(root / "dataset_info.pkl")
    rng = np.random.default_rng(0)
    for table in info["partition"].values():
        for trial, n in table.items():
            scale = rng.uniform(1, 100, 88)  # columns of very different scales, as the functionals' are
            np.save(root / "npy_data" / trial / "egemaps_functionals.npy", (rng.normal(0, 1, (n, 88)) * scale)
                    .astype(np.float32))
            np.save(root / "npy_data" / trial / "logmel.npy", np.zeros((n, 96, 64), np.float16))
    info["feature_sets"] = ["abaw5"]
    with open(root / "dataset_info.pkl", "wb") as handle:
        pickle.dump(info, handle)
    assert run_cli(calculate_mean_and_std.main, ["--output", str(root), "--quiet"]) == 0
    stats = load_pickle(root / "mean_std_dict.pkl")
    assert set(stats) == {"egemaps_functionals"}  # no mfcc/egemaps/vggish in an abaw5 dataset; logmel never
    dataset = ProcessedDataset(root)
    from base.data.folds import fold_split

    train, validation = dataset.partition_trials("Train_Set"), dataset.partition_trials("Validation_Set")
    for fold in range(6):
        fold_train, fold_validation = fold_split(train, validation, fold)
        for partition, trials in (("Train_Set", fold_train), ("Validation_Set", fold_validation),
                                  ("Target_Set", dataset.partition_trials("Target_Set"))):
            x = np.concatenate([np.load(root / "npy_data" / t / "egemaps_functionals.npy").ravel() for t in trials])
            x = x.astype(np.float64)
            authors_mean = x.sum() / (x.size + 1e-10)  # SPEC-ABAW5 §1 (base/dataset.py:56-86)
            authors_std = np.sqrt(np.sum((x - authors_mean) ** 2) / (x.size - 1))
            entry = stats["egemaps_functionals"][fold][partition]
            assert entry["mean"] == pytest.approx(authors_mean, rel=1e-9)
            assert entry["std"] == pytest.approx(authors_std, rel=1e-9)


# ----------------------------------------------------------------------------- preprocessing runs (slow)


def _run(argv: list[str]) -> int:
    return run_cli(preprocessing.main, argv)


def _arrays(output: Path, stems: tuple[str, ...] | None = None) -> dict[str, bytes]:
    return {str(p.relative_to(output)): p.read_bytes() for p in sorted((output / "npy_data").glob("[!.]*/*.npy"))
            if stems is None or p.stem in stems}


@pytest.fixture(scope="module")
def database_30fps(tmp_path_factory) -> Path:
    """A 30 fps demo: 2 training videos (one with two people), 1 validation, 1 test video, 2.5-3 s each."""
    config = configs.DemoConfig(demo_n_train_videos=2, demo_n_validation_videos=1, demo_n_test_videos=1,
                                demo_min_seconds=2.5, demo_max_seconds=3.0, demo_fps=30.0)
    return demo.make_demo_database(tmp_path_factory.mktemp("db30") / "Affwild2", config, quiet=True)


@pytest.fixture(scope="module")
def runs(database_30fps, vggish_checkpoints, tmp_path_factory) -> dict[str, Path]:
    """The same database preprocessed with abaw2, abaw5, and both (each from scratch); VGGish with the
    session's random weights (seed 0, what the demo would write into each output)."""
    outputs = {}
    for name, sets in (("abaw5", ["abaw5"]), ("abaw2", ["abaw2"]), ("both", ["abaw2", "abaw5"])):
        output = tmp_path_factory.mktemp(name) / "out"
        argv = ["--database", str(database_30fps), "--output", str(output), "--jobs", "2", "--quiet",
                "--features", *sets]
        if "abaw2" in sets:
            argv += ["--vggish-checkpoint", str(vggish_checkpoints["v2"])]
        assert _run(argv + (["--keep-cache"] if name == "abaw5" else [])) == 0
        outputs[name] = output
    return outputs


@pytest.mark.slow
@pytest.mark.xdist_group("abaw5_runs")  # one worker builds the runs they share
def test_abaw5_run_writes_the_second_generation_files_without_vggish(runs):
    output = runs["abaw5"]
    info = load_pickle(output / "dataset_info.pkl")
    assert info["feature_sets"] == ["abaw5"] and info["vggish_weights"] == NO_VGGISH
    assert info["egemaps_functionals_feature_set"] == "eGeMAPSv02" and info["egemaps_functionals_segment_s"] == 1.0
    assert not (output / "vggish_random").exists()  # no VGGish weights were even made
    for partition, trials in info["partition"].items():
        for trial, n in trials.items():
            folder = output / "npy_data" / trial
            expected = {"frame", "logmel", "egemaps_functionals", "meta"} | ({"label"} if partition != "Target_Set"
                                                                               else set())
            assert {p.stem for p in folder.iterdir()} == expected
            assert np.load(folder / "logmel.npy").shape == (n, 96, 64)
            assert np.load(folder / "logmel.npy").dtype == np.float16
            functionals = np.load(folder / "egemaps_functionals.npy")
            assert functionals.shape == (n, 88) and functionals.dtype == np.float32
            assert np.isfinite(functionals).all()
    caches = {p.name for p in (output / ".cache").rglob("*.npy")}
    assert caches == {"log_mel_spectrogram.npy", "egemaps_functionals.npy"}  # no mfcc, egemaps or vggish


@pytest.mark.slow
@pytest.mark.xdist_group("abaw5_runs")  # one worker builds the runs they share
def test_abaw5_rows_equal_the_patches_and_the_one_by_one_functionals(runs, database_30fps):
    output = runs["abaw5"]
    info = load_pickle(output / "dataset_info.pkl")
    trial = next(t for t in info["partition"]["Train_Set"] if t.endswith("_right"))  # shares its video's audio
    annotation = (database_30fps / "annotations" / "VA_Set" / "Train_Set" / f"{trial}.txt").read_text().splitlines()
    rows = np.array([[float(v) for v in line.split(",")] for line in annotation[1:]])
    labelled = np.where((rows[:, 0] != -5) & (rows[:, 1] != -5))[0]
    meta = json.loads((output / "npy_data" / trial / "meta.json").read_text())
    wav = output / ".cache" / info["video"][trial] / "audio.wav"
    fps, n_video_frames = float(meta["fps"]), int(meta["video_frames"])
    recorder = PatchRecorder()
    vggish = recorder.embed_wav_file(wav, fps, n_video_frames)
    embedded = np.stack(recorder.patches)[vggish[vggish_rows(labelled, len(vggish)), 0].astype(int)]
    np.testing.assert_array_equal(np.load(output / "npy_data" / trial / "logmel.npy"), embedded.astype(np.float16))
    functionals = np.load(output / "npy_data" / trial / "egemaps_functionals.npy")
    samples, sample_rate = read_wav(wav)
    smile = smile_functionals()
    for row in (0, len(labelled) // 2, len(labelled) - 1):
        start, end = segment_bounds(labelled[row:row + 1], fps, sample_rate, len(samples))
        one = smile.process_signal(samples, sample_rate, start=start[0] / sample_rate,
                                   end=end[0] / sample_rate).to_numpy()[0]
        np.testing.assert_allclose(functionals[row], one, rtol=1e-4, atol=1e-6 * np.abs(one).max())


@pytest.mark.slow
@pytest.mark.xdist_group("abaw5_runs")  # one worker builds the runs they share
def test_abaw2_arrays_are_bit_identical_with_the_new_features(runs, database_30fps, tmp_path):
    both = _arrays(runs["both"])
    assert {k: v for k, v in both.items() if Path(k).stem in ABAW2_FILES} == _arrays(runs["abaw2"])
    assert {k: v for k, v in both.items() if Path(k).stem in ABAW5_FILES} == _arrays(runs["abaw5"])
    assert load_pickle(runs["both"] / "dataset_info.pkl")["feature_sets"] == ["abaw2", "abaw5"]
    if CHECKER.is_file():  # the independent checker accepts the output of both generations (no mean/std:
        # 3 training trials are too few for the folds; test_egemaps_functionals_statistics_... covers them)
        result = subprocess.run([sys.executable, str(CHECKER), str(runs["both"]), str(database_30fps)],
                                capture_output=True, text=True, env={**os.environ, "NO_MS": "1"})
        assert result.returncode == 0, result.stdout
    # an abaw2 output gets the abaw5 files in a later run; its own files are kept as they are
    added = tmp_path / "added"
    shutil.copytree(runs["abaw2"], added)
    database = load_pickle(added / "dataset_info.pkl")
    assert _run(["--database", str(database_30fps), "--output", str(added), "--features", "abaw5",
                 "--jobs", "2", "--quiet"]) == 0
    assert _arrays(added) == both
    info = load_pickle(added / "dataset_info.pkl")
    assert info["feature_sets"] == ["abaw2", "abaw5"] and info["vggish_weights"] == database["vggish_weights"]


def write_video(path: Path, n_frames: int, fps: float, audio: np.ndarray | None) -> Path:
    """A grey mkv of ``n_frames`` with ``audio`` (16 kHz, stored as PCM: its length is kept) or no audio track."""
    from base.preprocessing.media import find_ffmpeg

    command = [find_ffmpeg(), "-y", "-loglevel", "error", "-f", "lavfi",
               "-i", f"color=c=gray:s=64x64:r={fps}:d={n_frames / fps}"]
    if audio is not None:
        write_wav(path.with_suffix(".wav"), audio)
        command += ["-i", str(path.with_suffix(".wav")), "-c:a", "pcm_s16le"]
    subprocess.run([*command, "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", str(path)],
                   check=True, capture_output=True)
    path.with_suffix(".wav").unlink(missing_ok=True)
    return path


@pytest.mark.slow
@pytest.mark.xdist_group("abaw5_runs")  # one worker builds the runs they share
def test_bad_audio_is_one_line_each_and_nothing_else_is_lost(runs, database_30fps, tmp_path, capsys):
    root = tmp_path / "db"
    shutil.copytree(database_30fps, root)
    info = load_pickle(runs["abaw2"] / "dataset_info.pkl")
    single = next(t for t in info["partition"]["Train_Set"] if not t.endswith(("_left", "_right")))
    validation = next(iter(info["partition"]["Validation_Set"]))
    test = next(iter(info["partition"]["Target_Set"]))
    for trial, audio_s in ((single, None), (validation, "silent"), (test, 0.04)):
        old = next(p for p in root.rglob(f"{info['video'][trial]}.*") if p.parent.name in ("raw_video", "Test_Set"))
        n_frames = info["partition"]["Target_Set"][trial] if trial == test else \
            len((root / "annotations" / "VA_Set" / ("Validation_Set" if trial == validation else "Train_Set") /
                 f"{trial}.txt").read_text().splitlines()) - 1
        old.unlink()
        audio = None if audio_s is None else np.zeros(round(n_frames / 30.0 * SR)) if audio_s == "silent" else \
            np.random.default_rng(0).normal(0, 0.1, round(audio_s * SR))
        write_video(old.with_suffix(".mkv"), n_frames, 30.0, audio)
    output = tmp_path / "out"
    shutil.copytree(runs["abaw2"], output)  # an earlier run's trials: none of their files may be lost
    (output / "notes.txt").write_text("mine")
    before = _arrays(output)
    capsys.readouterr()
    assert _run(["--database", str(root), "--output", str(output), "--features", "abaw5", "--jobs", "2",
                 "--quiet"]) == 1
    err = capsys.readouterr().err.splitlines()
    rows = {r["trial"]: r for r in csv.DictReader(open(output / "preprocessing_summary.csv"))}
    assert rows[single]["status"] == "skipped" and "has no audio track" in rows[single]["message"]
    assert rows[test]["status"] == "skipped"
    assert "too short (0.040 s) to compute eGeMAPS functionals" in rows[test]["message"]
    assert rows[validation]["status"] == "ok" and rows[validation]["message"] == SILENT_AUDIO
    for trial, text in ((single, "has no audio track"), (test, "too short"), (validation, "is silent")):
        assert sum(trial in line and text in line for line in err) == 1, err  # one line each
    assert sum("Traceback" in line for line in err) == 0
    after = _arrays(output)
    assert {k: v for k, v in after.items() if k in before} == before  # every earlier file, byte for byte
    assert (output / "notes.txt").read_text() == "mine"
    folder = output / "npy_data" / validation
    assert np.all(np.load(folder / "logmel.npy") == np.float16(np.log(0.01)))
    functionals = np.load(folder / "egemaps_functionals.npy")
    assert np.array_equal(functionals, np.broadcast_to(functionals[0], functionals.shape))
    assert not (output / "npy_data" / single / "logmel.npy").exists()
    listed = load_pickle(output / "dataset_info.pkl")
    assert single not in listed["partition"]["Train_Set"] and validation in listed["partition"]["Validation_Set"]
