"""VGGish: log-mel maths, patch placement, checkpoint/PCA checks, and the network on a sine.

TensorFlow is imported only by the fixtures and tests that need it (never at collection time), and
the 288 MB random checkpoints are written once per session (``vggish_checkpoints``, tests/conftest.py).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile

from base.errors import UserError
from configs import Config, apply_overrides
from vggish import params
from vggish.checkpoint import (
    PcaParams,
    check_checkpoint,
    check_pca_params,
    load_pca_params,
    write_random_pca_params,
)
from vggish.extractor import VggishExtractor, gather_patches, patch_starts, prepare_waveform, to_float_mono
from vggish.mel_features import (
    fft_length_for,
    hz_to_mel,
    log_mel_spectrogram,
    mel_matrix,
    n_stft_frames,
    periodic_hann,
)
from vggish.slim_checkpoint import read_checkpoint_variables
from vggish.slim_model import variable_shapes

SR = params.SAMPLE_RATE_HZ


def sine(freq_hz: float, seconds: float, amplitude: float = 0.5, sample_rate: int = SR) -> np.ndarray:
    t = np.arange(int(round(seconds * sample_rate))) / sample_rate
    return (amplitude * np.sin(2 * np.pi * freq_hz * t)).astype(np.float32)


# ----------------------------------------------------------------------------- import hygiene


def test_importing_vggish_does_not_import_tensorflow():
    code = "import sys, vggish, vggish.extractor; assert 'tensorflow' not in sys.modules, 'tf imported'"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=Path(__file__).resolve().parents[1])
    assert result.returncode == 0, result.stderr


# ----------------------------------------------------------------------------- log-mel


def test_small_helpers_on_hand_values():
    assert hz_to_mel(0.0) == 0.0
    assert hz_to_mel(700.0) == pytest.approx(1127.0 * np.log(2.0))  # 781.17 mel
    assert fft_length_for(400) == 512 and fft_length_for(512) == 512 and fft_length_for(513) == 1024
    np.testing.assert_allclose(periodic_hann(4), [0.0, 0.5, 1.0, 0.5], atol=1e-12)
    assert n_stft_frames(16000, 400, 160) == 98  # 1 + (16000 - 400) // 160
    assert n_stft_frames(399, 400, 160) == 0


def test_mel_matrix_triangles_are_complementary():
    weights = mel_matrix(257, SR)  # (257, 64)
    assert weights.shape == (257, 64)
    assert np.all(weights[0] == 0.0)  # DC bin excluded
    assert weights.max() <= 1.0 and weights.min() >= 0.0
    bin_mel = hz_to_mel(np.linspace(0, SR / 2, 257))
    edges = np.linspace(hz_to_mel(125.0), hz_to_mel(7500.0), 66)
    between_centres = (bin_mel >= edges[1]) & (bin_mel <= edges[-2])
    np.testing.assert_allclose(weights[between_centres].sum(axis=1), 1.0, atol=1e-9)
    assert np.all(weights[bin_mel < edges[0]] == 0) and np.all(weights[bin_mel > edges[-1]] == 0)


def test_log_mel_frame_count_and_dtype():
    log_mel = log_mel_spectrogram(np.zeros(SR * 2 + 57, dtype=np.float32))
    assert log_mel.shape == (1 + (2 * SR + 57 - 400) // 160, 64) == (198, 64)
    assert log_mel.dtype == np.float32
    np.testing.assert_allclose(log_mel, np.log(0.01), rtol=1e-6)  # silence: log(0 + offset)
    assert log_mel_spectrogram(np.zeros(399)).shape == (0, 64)


def test_log_mel_of_1khz_tone_peaks_in_its_band():
    # 1 kHz is FFT bin 32 exactly (16000 / 512 = 31.25 Hz per bin) and 1000.0 mel. The 400-sample
    # periodic Hann, zero-padded to 512, gives a sine of amplitude A a spectrum of A * 100 * 1.0,
    # 0.663, 0.139 at 0, 1, 2 bins off (|sinc(x) / (1 - x^2)| at x = 0, 0.78, 1.56 window bins):
    # 50, 33.17, 6.93 for A = 0.5. Band edges lie at 185.17 + k * 39.82 mel, so band 19 spans
    # 941.7..1021.4 mel and weighs bins 30..33 by 0.404, 0.939, 0.536, 0.021; its magnitude is
    # 0.404 * 6.93 + 0.939 * 33.17 + 0.536 * 50 + 0.021 * 33.17 = 61.45 (band 20 gets 59.2).
    log_mel = log_mel_spectrogram(sine(1000.0, 1.0, amplitude=0.5))
    profile = log_mel.mean(axis=0)  # (64,)
    assert int(np.argmax(profile)) == 19
    assert profile[19] == pytest.approx(np.log(61.45 + 0.01), abs=0.01)
    assert profile[19] - profile[0] > 5 and profile[19] - profile[63] > 5


def test_log_mel_does_not_depend_on_block_size():
    rng = np.random.default_rng(0)
    waveform = rng.uniform(-0.5, 0.5, SR + 1234).astype(np.float32)
    np.testing.assert_array_equal(
        log_mel_spectrogram(waveform, block_frames=7), log_mel_spectrogram(waveform, block_frames=4096)
    )


# ----------------------------------------------------------------------------- patches per video frame


@pytest.mark.parametrize(
    ("fps", "expected"),
    [
        (30.0, [0, 3, 7, 10]),  # 3.33, 6.67, 10.0 frames of 10 ms
        (25.0, [0, 4, 8, 12]),
        (40.0, [0, 2, 5, 8]),  # 2.5 and 7.5 round to even, as Python's round
    ],
)
def test_patch_starts_on_hand_values(fps, expected):
    np.testing.assert_array_equal(patch_starts(4, fps, n_log_mel_frames=1000), expected)


def test_patch_starts_reuse_the_last_patch_past_the_end():
    # 110 rows hold 1 + floor((110 - 96) / 3.33) = 5 patches at 30 fps: starts 0, 3, 7, 10, 13.
    np.testing.assert_array_equal(
        patch_starts(8, 30.0, n_log_mel_frames=110), [0, 3, 7, 10, 13, 13, 13, 13]
    )
    # 100 rows at 25 fps: 1 + floor(4 / 4) = 2 patches.
    np.testing.assert_array_equal(patch_starts(5, 25.0, n_log_mel_frames=100), [0, 4, 4, 4, 4])
    assert patch_starts(0, 30.0, n_log_mel_frames=96).shape == (0,)
    with pytest.raises(ValueError, match="cannot hold"):
        patch_starts(3, 30.0, n_log_mel_frames=95)


def test_gather_patches_picks_rows():
    log_mel = np.arange(200 * 64, dtype=np.float32).reshape(200, 64)
    patches = gather_patches(log_mel, np.array([0, 5]))
    assert patches.shape == (2, 96, 64)
    np.testing.assert_array_equal(patches[1], log_mel[5:101])


def test_prepare_waveform_pads_one_second_of_the_last_sample():
    out = prepare_waveform(np.array([0.1, -0.2, 0.3]), SR)
    assert out.shape == (3 + SR,) and out.dtype == np.float32
    np.testing.assert_allclose(out[:3], [0.1, -0.2, 0.3], rtol=1e-6)
    assert np.all(out[3:] == np.float32(0.3))


def test_to_float_mono_scales_int16_and_averages_channels():
    np.testing.assert_array_equal(to_float_mono(np.array([16384, -32768], dtype=np.int16)), [0.5, -1.0])
    np.testing.assert_allclose(to_float_mono(np.array([[0.2, 0.4], [1.0, 0.0]])), [0.3, 0.5])
    with pytest.raises(UserError, match="audio is empty"):
        to_float_mono(np.zeros(0))
    with pytest.raises(UserError, match="unsigned integer audio"):
        to_float_mono(np.zeros(3, dtype=np.uint8))
    with pytest.raises(UserError, match=r"\(samples,\) or \(samples, channels\)"):
        to_float_mono(np.zeros((2, 2, 2)))


@pytest.mark.slow  # TensorFlow (or numba) start-up
def test_prepare_waveform_resamples_to_16k():
    out = prepare_waveform(sine(440.0, 0.5, sample_rate=8000), 8000)
    assert out.shape == (2 * (4000 + 8000),)  # 0.5 s + 1 s of padding, at twice the rate


# ----------------------------------------------------------------------------- PCA parameters


def test_pca_params_roundtrip_and_quantization(tmp_path):
    path = tmp_path / "vggish_pca_params.npz"
    write_random_pca_params(path, seed=1)
    pca = load_pca_params(path)
    assert pca.eigen_vectors.shape == (128, 128) and pca.means.shape == (128, 1)
    identity = PcaParams(np.eye(128), np.zeros((128, 1)))
    embedding = np.zeros((1, 128))
    embedding[0, :3] = [0.0, 2.0, -3.0]
    quantized = identity.apply(embedding)
    assert quantized.dtype == np.uint8
    assert quantized[0, :3].tolist() == [127, 255, 0]  # (x + 2) * 255 / 4, clipped to [-2, 2]
    np.testing.assert_allclose(identity.apply(embedding, quantize=False), embedding)


def test_pca_params_errors(tmp_path):
    with pytest.raises(UserError, match="PCA parameters .* not found; download"):
        load_pca_params(tmp_path / "missing.npz")
    wrong_keys = tmp_path / "wrong_keys.npz"
    np.savez(wrong_keys, eigen=np.eye(128))
    with pytest.raises(UserError, match=r"lack the key\(s\) pca_eigen_vectors, pca_means \(found: eigen\)"):
        load_pca_params(wrong_keys)
    wrong_shape = tmp_path / "wrong_shape.npz"
    np.savez(wrong_shape, pca_eigen_vectors=np.eye(64), pca_means=np.zeros((128, 1)))
    with pytest.raises(UserError, match=r"pca_eigen_vectors \(64, 64\) .* expected \(128, 128\)"):
        load_pca_params(wrong_shape)
    with pytest.raises(UserError, match=r"pca_eigen_vectors \(64, 64\)"):
        check_pca_params(wrong_shape)
    not_npz = tmp_path / "not.npz"
    not_npz.write_text("hello")
    with pytest.raises(UserError, match="could not be read as a numpy .npz file"):
        load_pca_params(not_npz)


# ----------------------------------------------------------------------------- checkpoint checks


def _save_variables(prefix: Path, shapes: dict[str, tuple[int, ...]], checkpoint_format: str = "v2") -> None:
    """A tiny checkpoint holding zero-valued variables of the given names and shapes."""
    from vggish.slim_model import import_tensorflow

    tf = import_tensorflow()
    prefix.parent.mkdir(parents=True, exist_ok=True)
    graph = tf.Graph()
    with graph.as_default():
        variables = [tf.get_variable(name, shape=shape, initializer=tf.zeros_initializer()) for name, shape in shapes.items()]
        version = tf.train.SaverDef.V1 if checkpoint_format == "v1" else tf.train.SaverDef.V2
        saver = tf.train.Saver(variables, write_version=version)
        with tf.Session(graph=graph) as session:
            session.run(tf.global_variables_initializer())
            saver.save(session, str(prefix), write_meta_graph=False, write_state=False)


def test_missing_checkpoint_says_which_files_and_where(tmp_path):
    with pytest.raises(UserError, match=r"not found: expected the file vggish_model.ckpt .*"
                       r"vggish_model.ckpt.index .* AudioSet VGGish release"):
        check_checkpoint(tmp_path / "vggish_model.ckpt")


def test_garbage_checkpoint_is_reported(tmp_path):
    path = tmp_path / "vggish_model.ckpt"
    path.write_bytes(b"not a checkpoint" * 10)
    with pytest.raises(UserError, match="truncated or not a TensorFlow checkpoint"):
        check_checkpoint(path)


@pytest.mark.slow  # needs TensorFlow
@pytest.mark.parametrize("checkpoint_format", ["v1", "v2"])
def test_checkpoint_with_other_variables_lists_the_missing_ones(tmp_path, checkpoint_format):
    prefix = tmp_path / "other.ckpt"
    _save_variables(prefix, {"resnet/conv1/weights": (3, 3, 1, 8)}, checkpoint_format)
    with pytest.raises(UserError, match=r"lacks 18 of the 18 VGGish variables \(first missing: "
                       r"vggish/conv1/weights, vggish/conv1/biases, vggish/conv2/weights; "
                       r"it holds e.g. resnet/conv1/weights\)"):
        check_checkpoint(prefix)


@pytest.mark.slow  # needs TensorFlow
def test_checkpoint_with_other_shapes_is_reported(tmp_path):
    prefix = tmp_path / "small.ckpt"
    _save_variables(prefix, {name: (2,) for name in variable_shapes()})
    with pytest.raises(UserError, match=r"other shapes than VGGish's \(vggish/conv1/weights \(2,\) "
                       r"instead of \(3, 3, 1, 64\)"):
        check_checkpoint(prefix)


@pytest.mark.slow  # needs TensorFlow
def test_truncated_v1_checkpoint_is_reported(tmp_path):
    prefix = tmp_path / "vggish_model.ckpt"
    _save_variables(prefix, {"vggish/conv1/weights": (3, 3, 1, 64)}, "v1")
    prefix.write_bytes(prefix.read_bytes()[:-100])
    with pytest.raises(UserError, match="is truncated or not a TensorFlow checkpoint"):
        check_checkpoint(prefix)


# ----------------------------------------------------------------------------- the network


@pytest.fixture(scope="module")
def extractor(vggish_checkpoints):
    with VggishExtractor(str(vggish_checkpoints["v2"]), batch_size=256, num_threads=1) as vggish:
        yield vggish


@pytest.mark.slow  # needs TensorFlow
def test_random_checkpoints_hold_the_release_variables(vggish_checkpoints):
    v1 = vggish_checkpoints["v1"]
    assert sorted(v1.parent.iterdir()) == [v1]  # one file, as released
    assert (vggish_checkpoints["v2"].parent / "vggish_model.ckpt.index").is_file()
    for path in vggish_checkpoints.values():
        found = read_checkpoint_variables(path)
        assert {name: entry.shape for name, entry in found.items()} == variable_shapes()
        assert check_checkpoint(path) == str(path)
    assert check_checkpoint(vggish_checkpoints["v1"].parent) == str(v1)  # a folder holding it
    assert check_checkpoint(f"{vggish_checkpoints['v2']}.index") == str(vggish_checkpoints["v2"])


@pytest.mark.slow  # needs TensorFlow
def test_graph_has_the_release_names(extractor):
    from vggish.slim_model import import_tensorflow

    tf = import_tensorflow()
    graph = extractor._graph
    shapes = {v.op.name: tuple(v.shape.as_list()) for v in graph.get_collection(tf.GraphKeys.GLOBAL_VARIABLES)}
    assert shapes == variable_shapes()
    assert graph.get_tensor_by_name("vggish/input_features:0").shape.as_list() == [None, 96, 64]
    assert graph.get_tensor_by_name("vggish/embedding:0").shape.as_list() == [None, 128]
    assert graph.get_operation_by_name("vggish/pool4/MaxPool") is not None


@pytest.mark.slow  # needs TensorFlow
def test_embed_frames_on_a_sine(extractor, vggish_checkpoints):
    waveform, fps, n_frames = sine(440.0, 3.0), 10.0, 35  # 35 frames > 3 s of video: the end repeats
    first = extractor.embed_frames(waveform, SR, fps, n_frames)
    assert first.shape == (n_frames, 128) and first.dtype == np.float32
    assert np.isfinite(first).all() and first.std() > 0
    np.testing.assert_array_equal(extractor.embed_frames(waveform, SR, fps, n_frames), first)

    with VggishExtractor(str(vggish_checkpoints["v1"]), batch_size=7) as small_batches:
        np.testing.assert_allclose(small_batches.embed_frames(waveform, SR, fps, n_frames), first,
                                   rtol=1e-4, atol=1e-4)

    # Frame i is the embedding of the patch at round(i / fps / 10 ms) of the padded log-mel.
    log_mel = log_mel_spectrogram(prepare_waveform(waveform, SR))  # 3 s + 1 s: 398 rows
    starts = patch_starts(n_frames, fps, n_log_mel_frames=len(log_mel))
    assert starts[12] == 120 and starts[-1] == 300  # 1 + floor((398 - 96) / 10) = 31 patches
    direct = extractor.embed_patches(gather_patches(log_mel, starts[[12, -1]]))
    np.testing.assert_allclose(first[[12, -1]], direct, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(first[30], first[34])


@pytest.mark.slow  # needs TensorFlow
def test_embed_wav_file_reads_int16(extractor, tmp_path):
    pcm = (sine(300.0, 1.5) * 32767).astype(np.int16)
    path = tmp_path / "audio.wav"
    soundfile.write(path, np.stack([pcm, pcm], axis=1), SR, subtype="PCM_16")  # stereo
    from_file = extractor.embed_wav_file(path, fps=30.0, n_frames=45)
    np.testing.assert_array_equal(from_file, extractor.embed_frames(pcm, SR, 30.0, 45))
    assert extractor.embed_frames(pcm, SR, 30.0, 0).shape == (0, 128)
    with pytest.raises(UserError, match="audio file .* not found"):
        extractor.embed_wav_file(tmp_path / "missing.wav", fps=30.0, n_frames=3)
    with pytest.raises(UserError, match="video frame rate must be positive"):
        extractor.embed_frames(pcm, SR, 0.0, 3)


@pytest.mark.slow  # needs TensorFlow
def test_postprocess_uses_the_pca_params(vggish_checkpoints, tmp_path):
    pca_path = tmp_path / "vggish_pca_params.npz"
    write_random_pca_params(pca_path)
    with pytest.raises(UserError, match="postprocessing needs the PCA parameters"):
        VggishExtractor(str(vggish_checkpoints["v2"]), postprocess=True)
    with VggishExtractor(str(vggish_checkpoints["v2"]), str(pca_path), postprocess=True) as vggish:
        out = vggish.embed_frames(sine(440.0, 1.0), SR, 5.0, 5)
    assert out.shape == (5, 128) and out.dtype == np.float32
    assert out.min() >= 0 and out.max() <= 255 and np.all(out == np.round(out))


@pytest.mark.slow  # needs TensorFlow
def test_extractor_settings_and_corrupt_data_are_user_errors(vggish_checkpoints, tmp_path):
    with pytest.raises(UserError, match="batch size must be at least 1"):
        VggishExtractor(str(vggish_checkpoints["v2"]), batch_size=0)
    source = vggish_checkpoints["v2"]
    copy = tmp_path / "vggish_model.ckpt"
    shutil.copy(f"{source}.index", f"{copy}.index")
    data = Path(f"{copy}.data-00000-of-00001")
    shutil.copy(f"{source}.data-00000-of-00001", data)
    with open(data, "r+b") as handle:  # same size, wrong bytes: only the checksums can tell
        handle.seek(1000)
        handle.write(b"\xff" * 64)
    with pytest.raises(UserError, match="could not be restored"):
        VggishExtractor(str(copy))
    with open(data, "r+b") as handle:
        handle.truncate(10_000_000)
    with pytest.raises(UserError, match="is truncated: vggish_model.ckpt.data-00000-of-00001 ends before"):
        check_checkpoint(copy)


# ----------------------------------------------------------------------------- device


def test_a_vggish_worker_hides_the_gpus_before_tensorflow_loads_unless_asked(monkeypatch):
    from base.preprocessing import preprocess
    from vggish import extractor

    built = []
    monkeypatch.setattr(extractor, "VggishExtractor", lambda *args, **kwargs: built.append(kwargs))  # the tf engine
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")  # restored after the test
    preprocess._init_vggish("ckpt", None, 64, 1, "gpu")
    assert built[-1]["device"] == "gpu" and os.environ["CUDA_VISIBLE_DEVICES"] == "0"
    preprocess._init_vggish("ckpt", None, 64, 1)  # the default: cpu
    assert built[-1]["device"] == "cpu" and os.environ["CUDA_VISIBLE_DEVICES"] == "-1"
    with pytest.raises(UserError, match="VGGish device must be cpu or gpu, got 'cuda'"):
        preprocess._init_vggish("ckpt", None, 64, 1, "cuda")
    with pytest.raises(UserError, match="config key 'vggish_device' must be cpu or gpu, got 'cuda'"):
        apply_overrides(Config(), {"vggish_device": "cuda"})
    assert Config().features.vggish_device == "cpu"


@pytest.mark.slow  # needs TensorFlow
def test_the_vggish_device_reaches_the_tensorflow_session(extractor, vggish_checkpoints):
    from vggish.slim_model import import_tensorflow

    assert extractor.device == "cpu"
    assert extractor.session_config.device_count["GPU"] == 0 and not extractor.session_config.gpu_options.allow_growth
    assert import_tensorflow().config.get_visible_devices("GPU") == []
    assert extractor.session_config.intra_op_parallelism_threads == 1
    with VggishExtractor(str(vggish_checkpoints["v2"]), num_threads=1, device="gpu") as on_gpu:
        assert on_gpu.session_config.gpu_options.allow_growth and "GPU" not in on_gpu.session_config.device_count
        patches = np.random.default_rng(0).normal(size=(3, 96, 64)).astype(np.float32)
        np.testing.assert_array_equal(on_gpu.embed_patches(patches), extractor.embed_patches(patches))  # no GPU here
