"""Video probing, audio extraction and wav reading on small videos made by ffmpeg in the test."""

from __future__ import annotations

import os

import cv2
import imageio_ffmpeg
import numpy as np
import pytest
import soundfile as sf

from base.errors import UserError
from base.preprocessing import media
from base.preprocessing.media import extract_wav, find_ffmpeg, parse_ffmpeg_input, probe_video, read_wav
from tests.media_helpers import make_video


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("videos")
    corrupt = folder / "corrupt.mp4"
    corrupt.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    return {
        "mp4": make_video(folder / "tone.mp4", seconds=3, fps=30, size=(64, 48), tone_hz=440),
        "avi": make_video(folder / "tone.avi", seconds=3, fps=25, size=32, tone_hz=440),
        "silent": make_video(folder / "silent.mp4", seconds=2, fps=10, size=32, with_audio=False),
        "corrupt": corrupt,
    }


def _decoded_frame_count(path) -> int:
    capture = cv2.VideoCapture(str(path))
    n_frames = 0
    while capture.grab():
        n_frames += 1
    capture.release()
    return n_frames


# ----------------------------------------------------------------------------- ffmpeg


def test_find_ffmpeg_returns_an_executable():
    assert os.access(find_ffmpeg(), os.X_OK)


def test_find_ffmpeg_falls_back_to_imageio(monkeypatch):
    monkeypatch.setattr(media.shutil, "which", lambda name: None)
    assert find_ffmpeg() == imageio_ffmpeg.get_ffmpeg_exe()


def test_find_ffmpeg_without_any_binary_is_a_user_error(monkeypatch):
    def no_binary():
        raise RuntimeError("no ffmpeg exe could be found")

    monkeypatch.setattr(media.shutil, "which", lambda name: None)
    monkeypatch.setattr(imageio_ffmpeg, "get_ffmpeg_exe", no_binary)
    with pytest.raises(UserError, match="ffmpeg was not found"):
        find_ffmpeg()


def test_parse_ffmpeg_input_ignores_the_output_section():
    stderr = (
        "Input #0, mov,mp4,m4a,3gp,3g2,mj2, from 'x.mp4':\n"
        "  Duration: 01:02:03.25, start: 0.000000, bitrate: 95 kb/s\n"
        "  Stream #0:0[0x1](und): Video: h264 (High), yuv420p, 64x48, 30 fps (default)\n"
        "Stream mapping:\n  Stream #0:0 -> #0:0 (copy)\n"
        "Output #0, null, to 'pipe:':\n  Stream #0:0: Audio: pcm_s16le\n"
    )
    assert parse_ffmpeg_input(stderr) == (["Video"], 3723.25)
    assert parse_ffmpeg_input("garbage: Invalid data found when processing input") == ([], None)


# ----------------------------------------------------------------------------- probe_video


def test_probe_mp4(videos):
    info = probe_video(videos["mp4"])
    assert (info.fps, info.n_frames, info.width, info.height) == (30.0, 90, 64, 48)
    assert info.duration_s == pytest.approx(3.0)
    assert info.has_audio
    assert info.audio_duration_s == pytest.approx(3.0, abs=0.1)


def test_probe_avi_counts_the_frames_a_decoder_yields(videos):
    info = probe_video(videos["avi"])
    assert (info.fps, info.width, info.height, info.has_audio) == (25.0, 32, 32, True)
    # ffmpeg-written AVIs announce 76 frames in the header here; demuxing finds the real 75
    assert info.n_frames == _decoded_frame_count(videos["avi"]) == 75
    assert info.audio_duration_s == pytest.approx(3.0, abs=0.1)


def test_probe_video_without_audio(videos):
    info = probe_video(videos["silent"])
    assert (info.n_frames, info.has_audio, info.audio_duration_s) == (20, False, None)


def test_probe_corrupt_file_is_a_user_error(videos):
    with pytest.raises(UserError, match="cannot read video .*corrupt.mp4"):
        probe_video(videos["corrupt"])


def test_probe_missing_file_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        probe_video(tmp_path / "absent.mp4")


# ----------------------------------------------------------------------------- extract_wav


@pytest.mark.parametrize("kind", ["mp4", "avi"])
def test_extract_wav_is_16k_mono_pcm16_with_the_tone(videos, tmp_path, kind):
    wav_path = tmp_path / "sub" / f"{kind}.wav"
    duration_s = extract_wav(videos[kind], wav_path)
    info = sf.info(str(wav_path))
    assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
    assert duration_s == pytest.approx(info.frames / 16000)
    assert duration_s == pytest.approx(3.0, abs=0.06)
    samples, sample_rate = read_wav(wav_path)
    spectrum = np.abs(np.fft.rfft(samples))
    peak_hz = np.argmax(spectrum) * sample_rate / len(samples)
    assert peak_hz == pytest.approx(440, abs=2)
    assert [p.name for p in wav_path.parent.iterdir()] == [wav_path.name]  # no temp file left


def test_extract_wav_overwrites_an_existing_wav(videos, tmp_path):
    wav_path = tmp_path / "a.wav"
    wav_path.write_bytes(b"stale")
    extract_wav(videos["mp4"], wav_path)
    assert sf.info(str(wav_path)).samplerate == 16000


def test_extract_wav_other_sample_rate(videos, tmp_path):
    duration_s = extract_wav(videos["mp4"], tmp_path / "a.wav", sample_rate=8000)
    assert sf.info(str(tmp_path / "a.wav")).samplerate == 8000
    assert duration_s == pytest.approx(3.0, abs=0.06)


def test_extract_wav_without_audio_is_a_user_error(videos, tmp_path):
    with pytest.raises(UserError, match="no audio"):
        extract_wav(videos["silent"], tmp_path / "a.wav")
    assert not any(tmp_path.iterdir())


def test_extract_wav_from_corrupt_file_is_a_user_error(videos, tmp_path):
    with pytest.raises(UserError, match="cannot read video"):
        extract_wav(videos["corrupt"], tmp_path / "a.wav")
    assert not any(tmp_path.iterdir())


# ----------------------------------------------------------------------------- read_wav


def test_read_wav_mixes_down_to_float32_mono(tmp_path):
    left = np.array([16384, -32768, 0, 32767], dtype=np.int16)
    right = np.array([0, -32768, 16384, 32767], dtype=np.int16)
    sf.write(str(tmp_path / "s.wav"), np.stack([left, right], axis=1), 16000, subtype="PCM_16")
    samples, sample_rate = read_wav(tmp_path / "s.wav")
    assert sample_rate == 16000
    assert samples.dtype == np.float32
    np.testing.assert_allclose(samples, [0.25, -1.0, 0.25, 32767 / 32768])


def test_read_wav_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        read_wav(tmp_path / "absent.wav")
    (tmp_path / "bad.wav").write_text("not audio")
    with pytest.raises(UserError, match="cannot read wav file"):
        read_wav(tmp_path / "bad.wav")
