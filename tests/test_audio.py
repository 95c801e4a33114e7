"""dhgen.audio: decoding real files of every format, the mouth-openness curve, Wav2Lip mel features."""

from __future__ import annotations

import importlib.util
import wave
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np
import pytest

from dhgen.audio import (
    SAMPLE_RATE,
    Audio,
    frame_count,
    load_audio,
    mel_spectrogram,
    mel_windows,
    mouth_openness,
)
from dhgen.errors import AudioDecodeError, MissingInputError

FIXTURES = Path(__file__).parent / "fixtures"


def _load_fixture_script():
    spec = importlib.util.spec_from_file_location("make_audio_fixtures", FIXTURES / "make_audio_fixtures.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _wav_duration(path) -> float:
    with wave.open(str(path), "rb") as w:
        return w.getnframes() / w.getframerate()


@pytest.fixture(scope="module")
def speech() -> Audio:
    return load_audio(FIXTURES / "speech.wav")


# --- load_audio ---------------------------------------------------------------------------------------------

# (file, source duration written by make_audio_fixtures.py, source rate, source channels)
FORMATS = [
    ("speech.wav", _wav_duration(FIXTURES / "speech.wav"), 22050, 1),
    ("speech_stereo44k.wav", 1.5, 44100, 2),
    ("speech.mp3", 2.0, 22050, 1),
    ("speech.m4a", 2.0, 44100, 1),
    ("speech.ogg", 2.0, 48000, 1),
    ("speech.flac", 2.0, 22050, 1),
]


@pytest.mark.parametrize(("name", "duration", "rate", "channels"), FORMATS, ids=[f[0] for f in FORMATS])
def test_every_format_decodes_to_16k_mono_with_the_source_duration(speech, name, duration, rate, channels):
    audio = load_audio(FIXTURES / name)

    assert audio.samples.dtype == np.float32 and audio.samples.ndim == 1
    assert (audio.source_rate, audio.source_channels) == (rate, channels)
    assert audio.duration_s == pytest.approx(duration, abs=0.020)
    assert audio.samples.size / SAMPLE_RATE == pytest.approx(duration, abs=0.020)
    # Same sound at the same time as the reference decode: not shifted by codec delay, not garbled.
    n = min(audio.samples.size, speech.samples.size)
    corr = np.corrcoef(audio.samples[400:n], speech.samples[400:n])[0, 1]
    assert corr > 0.95


def test_stereo_is_downmixed_not_one_channel_taken():
    # Left channel is the speech at 0.25x, right at 1x: a mix lands between, either channel alone does not.
    audio = load_audio(FIXTURES / "speech_stereo44k.wav")
    ref = load_audio(FIXTURES / "speech.wav").samples[: audio.samples.size]
    gain = float(np.dot(audio.samples, ref) / np.dot(ref, ref))
    assert 0.4 < gain < 0.95


def test_path_may_be_str_and_is_recorded():
    audio = load_audio(str(FIXTURES / "silence.wav"))
    assert audio.path == str(FIXTURES / "silence.wav")
    assert audio.duration_s == pytest.approx(2.0)
    assert not audio.samples.any()


def _assert_names_file_with_hint(err: pytest.ExceptionInfo, path) -> None:
    assert str(path) in str(err.value) and str(path) in err.value.message
    assert err.value.path == str(path)
    assert err.value.hint and err.value.hint.strip()


@pytest.mark.parametrize("name", ["garbage.wav", "empty.wav"])
def test_undecodable_audio_raises_audio_decode_error(name):
    path = FIXTURES / name
    with pytest.raises(AudioDecodeError) as err:
        load_audio(path)
    _assert_names_file_with_hint(err, path)


def test_file_without_audio_stream_raises_audio_decode_error(tmp_path):
    path = tmp_path / "picture.png"
    cv2.imwrite(str(path), np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(AudioDecodeError, match="no audio stream") as err:
        load_audio(path)
    _assert_names_file_with_hint(err, path)


@pytest.mark.parametrize("name", ["missing.wav", "a_folder"])
def test_missing_or_unreadable_path_raises_missing_input_error(tmp_path, name):
    (tmp_path / "a_folder").mkdir()
    path = tmp_path / name
    with pytest.raises(MissingInputError) as err:
        load_audio(path)
    _assert_names_file_with_hint(err, path)


# --- frame_count --------------------------------------------------------------------------------------------


def test_frame_count():
    assert frame_count(4.0, 25) == 100
    assert frame_count(2.0, Fraction(30000, 1001)) == 60
    assert frame_count(1.01, 29.97) == 30
    assert frame_count(0.001, 25) == 1


# --- mouth_openness -----------------------------------------------------------------------------------------


def _source_is_silent(samples: np.ndarray, fps: float, n: int) -> np.ndarray:
    """Per video frame: no sound from five frames before (release tail) to two frames after (the window)."""
    hop = SAMPLE_RATE / fps
    spans = [samples[int(max(0, (i - 5) * hop)) : int((i + 2) * hop)] for i in range(n)]
    return np.array([np.abs(span).max(initial=0) < 1e-4 for span in spans])


def test_openness_is_high_in_speech_and_exactly_zero_in_its_pauses(speech):
    n = frame_count(speech.duration_s, 25)
    openness = mouth_openness(speech.samples, 25, n)

    assert openness.dtype == np.float32 and openness.shape == (n,)
    assert openness.min() >= 0.0 and openness.max() <= 1.0
    silent = _source_is_silent(speech.samples, 25, n)
    assert silent.sum() >= 10  # the fixture has two ~0.6 s pauses
    assert np.all(openness[silent] == 0.0)
    speaking = openness[~silent]
    assert speaking.max() > 0.9 and np.mean(speaking > 0.3) > 0.6


@pytest.mark.parametrize("source", ["zeros", "silence.wav"])
def test_silence_gives_a_closed_mouth(source):
    if source == "zeros":
        samples = np.zeros(2 * SAMPLE_RATE, np.float32)
    else:
        samples = load_audio(FIXTURES / source).samples
    openness = mouth_openness(samples, 25, 50)
    assert openness.shape == (50,) and np.all(openness == 0.0)


def test_steady_hiss_and_near_silence_keep_the_mouth_closed():
    rng = np.random.default_rng(0)
    hiss = rng.normal(0, 0.003, 2 * SAMPLE_RATE).astype(np.float32)  # room tone at about -50 dBFS
    dither = rng.normal(0, 1e-5, 2 * SAMPLE_RATE).astype(np.float32)
    assert np.all(mouth_openness(hiss, 25, 50) == 0.0)
    assert np.all(mouth_openness(dither, 25, 50) == 0.0)


def test_quiet_and_loud_recordings_move_alike(speech):
    n = frame_count(speech.duration_s, 25)
    normal = mouth_openness(speech.samples, 25, n)
    quiet = mouth_openness(speech.samples * 0.05, 25, n)
    loud = mouth_openness(speech.samples * (0.99 / np.abs(speech.samples).max()), 25, n)

    for other in (quiet, loud):
        assert np.abs(other - normal).max() < 0.1
        assert np.corrcoef(other, normal)[0, 1] > 0.98
    assert quiet.max() > 0.9


def test_mouth_opens_faster_than_it_closes():
    fps = 25
    t = np.arange(3 * SAMPLE_RATE) / SAMPLE_RATE
    tone = 0.3 * (np.sin(2 * np.pi * 700 * t) + np.sin(2 * np.pi * 1300 * t))
    samples = np.where((t >= 1.0) & (t < 2.0), tone, 0.0).astype(np.float32)  # 1 s of sound from t = 1 s
    openness = mouth_openness(samples, fps, 3 * fps)

    assert np.all(openness[: fps - 2] == 0.0) and np.all(openness[-fps // 2 :] == 0.0)
    frames_to_open = int(np.argmax(openness > 0.9)) - (fps - 1)  # from the last closed frame
    frames_to_close = int(np.argmax((np.arange(openness.size) > 2 * fps) & (openness < 0.1))) - (2 * fps - 1)
    assert frames_to_open <= 2
    assert frames_to_close > frames_to_open + 1


def test_openness_accepts_fractional_fps(speech):
    fps = Fraction(30000, 1001)
    n = frame_count(speech.duration_s, fps)
    openness = mouth_openness(speech.samples, fps, n)
    assert openness.shape == (n,) and openness.max() > 0.9
    assert mouth_openness(speech.samples, fps, 0).shape == (0,)


# --- mel_spectrogram ----------------------------------------------------------------------------------------


def test_mel_shape_and_range(speech):
    mel = mel_spectrogram(speech.samples)
    assert mel.dtype == np.float32
    assert mel.shape == (80, 1 + speech.samples.size // 200)
    assert mel.shape[1] == pytest.approx(80 * speech.duration_s, abs=2)
    assert mel.min() >= -4.0 and mel.max() <= 4.0
    assert mel.max() > 0.0  # speech is well above the floor


def test_mel_of_silence_is_the_floor():
    assert np.all(mel_spectrogram(np.zeros(SAMPLE_RATE, np.float32)) == -4.0)


def _slaney_hz_to_mel(hz: float) -> float:
    return hz * 3 / 200 if hz < 1000 else 15 + np.log(hz / 1000) * 27 / np.log(6.4)


@pytest.mark.parametrize("hz", [250.0, 1000.0, 4000.0])
def test_a_sine_peaks_in_the_mel_bin_centred_nearest_it(hz):
    # Bin k is centred on the (k + 1)-th of 82 points evenly spaced on the Slaney mel scale, 55 to 7600 Hz.
    centres = np.linspace(_slaney_hz_to_mel(55), _slaney_hz_to_mel(7600), 82)[1:-1]
    expected = int(np.argmin(np.abs(centres - _slaney_hz_to_mel(hz))))
    t = np.arange(SAMPLE_RATE) / SAMPLE_RATE
    mel = mel_spectrogram((0.5 * np.sin(2 * np.pi * hz * t)).astype(np.float32))
    assert np.all(np.argmax(mel[:, 4:-4], axis=0) == expected)
    if hz == 1000.0:
        assert expected == 25


def test_mel_matches_wav2lip_librosa_recipe():
    # mel_reference.npy is Wav2Lip's librosa code run on the same signal (see make_audio_fixtures.py).
    signal = _load_fixture_script().reference_signal().astype(np.float32)
    reference = np.load(FIXTURES / "mel_reference.npy")
    np.testing.assert_allclose(mel_spectrogram(signal), reference, atol=1e-4)


# --- mel_windows --------------------------------------------------------------------------------------------


def _ramp_mel(n_mel_frames: int) -> np.ndarray:
    """A mel whose every value says which frame and bin it is."""
    return (np.arange(80)[:, None] * 10_000 + np.arange(n_mel_frames)[None, :]).astype(np.float32)


@pytest.mark.parametrize("fps", [25, 30, Fraction(30000, 1001), 29.97])
def test_window_i_starts_at_int_i_times_80_over_fps(fps):
    duration = 2.0
    mel = _ramp_mel(1 + int(duration * SAMPLE_RATE) // 200)  # 161 frames, as for 2 s of audio
    n = frame_count(duration, fps)
    windows = mel_windows(mel, fps, n)

    assert windows.shape == (n, 80, 16) and windows.dtype == np.float32
    for i in range(n):
        start = min(int(i * 80 / fps), mel.shape[1] - 16)
        np.testing.assert_array_equal(windows[i], mel[:, start : start + 16])


def test_window_mapping_at_25_and_30_fps():
    mel = _ramp_mel(400)
    assert [int(w[0, 0]) for w in mel_windows(mel, 25, 6)] == [0, 3, 6, 9, 12, 16]
    assert [int(w[0, 0]) for w in mel_windows(mel, 30, 6)] == [0, 2, 5, 8, 10, 13]


def test_last_window_is_right_aligned():
    mel = _ramp_mel(161)  # 2 s of audio: frames 46..49 at 25 fps would start at 147..156 and run past the end
    windows = mel_windows(mel, 25, 50)
    assert int(windows[45][0, 0]) == 144  # int(45 * 80 / 25), still fits
    for i in range(46, 50):
        np.testing.assert_array_equal(windows[i], mel[:, -16:])


def test_short_mel_is_padded_with_silence():
    mel = _ramp_mel(5)
    windows = mel_windows(mel, 25, 3)
    assert windows.shape == (3, 80, 16)
    np.testing.assert_array_equal(windows[0][:, :5], mel)
    assert np.all(windows[0][:, 5:] == -4.0)


def test_windows_from_real_audio(speech):
    n = frame_count(speech.duration_s, 25)
    windows = mel_windows(mel_spectrogram(speech.samples), 25, n)
    assert windows.shape == (n, 80, 16)
    assert windows.min() >= -4.0 and windows.max() <= 4.0
