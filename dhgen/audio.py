"""Audio decoding and features: file I/O in `load_audio`, pure numpy DSP below it.

`load_audio` turns any file PyAV can read (wav, mp3, m4a/aac, ogg/opus, flac; any rate or channel layout) into
16 kHz mono float32. Everything after that is array maths with no I/O and no torch:

- `frame_count`: how many video frames the audio lasts.
- `mouth_openness`: a 0..1 curve per video frame from speech-band loudness (for models that want a scalar).
- `mel_spectrogram` / `mel_windows`: the Wav2Lip mel recipe (see DESIGN.md "Media facts") and the 16-frame
  window each video frame is conditioned on.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from dhgen.errors import AudioDecodeError, MissingInputError, reason

log = logging.getLogger(__name__)

SAMPLE_RATE = 16_000  # feature rate: every feature below is computed at 16 kHz mono
MAX_END_PADDING_S = 0.1  # decoded audio this much longer than the container's duration is encoder padding

# --- Wav2Lip mel recipe -------------------------------------------------------------------------------------
PREEMPHASIS = 0.97
N_FFT = 800  # 50 ms at 16 kHz
HOP_LENGTH = 200  # 12.5 ms: SAMPLE_RATE / HOP_LENGTH = 80 mel frames per second
WIN_LENGTH = 800
N_MELS = 80
MEL_FMIN, MEL_FMAX = 55.0, 7600.0
REF_LEVEL_DB = 20.0
MIN_LEVEL_DB = -100.0  # amplitude floor 1e-5 = 10 ** (MIN_LEVEL_DB / 20)
MAX_ABS_VALUE = 4.0  # features are normalised to [-4, 4]
MEL_FPS = SAMPLE_RATE // HOP_LENGTH  # 80
MEL_STEP = 16  # mel frames per video-frame window (200 ms)
MEL_SILENCE = -MAX_ABS_VALUE  # the normalised value of digital silence, used to pad short mels
_CHUNK_FRAMES = 2048  # analysis frames per FFT batch: bounds memory on long audio (~15 MB per batch)

# --- mouth openness -----------------------------------------------------------------------------------------
SPEECH_BAND_HZ = (300.0, 3400.0)  # telephone band: where voiced speech energy sits
ABS_FLOOR_DB = -70.0  # band RMS (dBFS) below this is silence, whatever the recording's level
DYNAMIC_RANGE_DB = 24.0  # levels from (peak - this) to peak map linearly onto 0..1
PEAK_PERCENTILE = 95.0  # "peak" loudness: robust to a few clicks
MIN_SPREAD_DB = 6.0  # a recording whose loudness never varies this much (hum, hiss) has no speech
OPEN_GATE = 0.05  # raw openness below this is closed
ATTACK_S = 0.015  # the mouth opens within about a frame...
RELEASE_S = 0.06  # ...and closes over a few
SNAP_CLOSED = 0.03  # smoothed values below this are exactly 0 (the release tail ends)


@dataclass(frozen=True)
class Audio:
    """Decoded audio, ready for feature extraction."""

    path: str  # the file it came from
    samples: np.ndarray  # float32 mono at SAMPLE_RATE, shape (n,)
    duration_s: float  # true duration of the source audio (decoded source samples / source rate)
    source_rate: int  # sample rate of the file's audio stream
    source_channels: int  # channel count of the file's audio stream


# --- I/O ----------------------------------------------------------------------------------------------------


def load_audio(path: str | Path) -> Audio:
    """Decode the first audio stream of `path` to 16 kHz mono float32.

    Raises MissingInputError when the path does not exist or cannot be read, and AudioDecodeError when it is
    not audio (random bytes, no audio stream, a corrupt stream) or holds no samples.
    """
    path = str(path)
    p = Path(path)
    if not p.is_file():
        what = "is not a file" if p.exists() else "does not exist"
        raise MissingInputError(f"audio file {what}: {path}", path=path)
    try:
        with av.open(path, mode="r") as container:
            samples, duration_s, rate, channels = _decode_first_audio_stream(container, path)
    except (av.error.FFmpegError, OSError) as exc:
        raise _open_error(path, exc) from exc
    if samples.size == 0:
        raise AudioDecodeError(
            f"audio file {path} contains no samples",
            path=path,
            hint="the file is empty or truncated; export the audio again",
        )
    log.debug("decoded %s: %.3f s, %d Hz, %d ch", path, duration_s, rate, channels)
    return Audio(path, samples, duration_s=duration_s, source_rate=rate, source_channels=channels)


def _open_error(path: str, exc: Exception) -> Exception:
    """Our error for what PyAV or the OS raised: unreadable -> MissingInputError, else AudioDecodeError."""
    unreadable = (FileNotFoundError, PermissionError, IsADirectoryError)
    if isinstance(exc, unreadable) or not isinstance(exc, av.error.FFmpegError):
        return MissingInputError(f"cannot read audio file: {reason(exc)}", path=path)
    return AudioDecodeError(f"cannot decode audio: {reason(exc)}", path=path)


def _decode_first_audio_stream(container, path: str) -> tuple[np.ndarray, float, int, int]:
    if not container.streams.audio:
        raise AudioDecodeError(
            f"{path} has no audio stream",
            path=path,
            hint="pass an audio file (or a video with a sound track) as the job's audio",
        )
    stream = container.streams.audio[0]
    rate = int(stream.codec_context.sample_rate or 0)
    channels = int(stream.codec_context.channels or 0)
    resampler = _Mono16k()
    chunks: list[np.ndarray] = []
    source_seconds = Fraction(0)  # exact: sums of per-frame float durations drift
    for frame in container.decode(stream):
        rate = rate or frame.sample_rate
        channels = channels or frame.layout.nb_channels
        source_seconds += Fraction(frame.samples, frame.sample_rate)
        chunks.extend(resampler.push(frame))
    chunks.extend(resampler.flush())
    samples = np.concatenate(chunks) if chunks else np.zeros(0, np.float32)
    declared = stream.duration * stream.time_base if stream.duration and stream.time_base else None
    if declared and 0 < source_seconds - declared <= MAX_END_PADDING_S:
        # Codecs such as AAC decode whole frames past the end; the container's duration is the true one.
        source_seconds = declared
        samples = samples[: max(1, round(declared * SAMPLE_RATE))]
    return samples, float(source_seconds), rate, channels


class _Mono16k:
    """av.AudioResampler to 16 kHz mono float, rebuilt when the input format, layout or rate changes."""

    def __init__(self) -> None:
        self._resampler: av.AudioResampler | None = None
        self._signature: tuple | None = None

    def push(self, frame: av.AudioFrame) -> list[np.ndarray]:
        signature = (frame.format.name, frame.layout.nb_channels, frame.sample_rate)
        out: list[np.ndarray] = []
        if signature != self._signature:
            out = self.flush()
            self._resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
            self._signature = signature
        frame.pts = None  # timestamps are irrelevant here; gaps in them must not make the resampler pad
        return out + [_mono(f) for f in self._resampler.resample(frame)]

    def flush(self) -> list[np.ndarray]:
        if self._resampler is None:
            return []
        out = [_mono(f) for f in self._resampler.resample(None)]
        self._resampler = None
        return out


def _mono(frame: av.AudioFrame) -> np.ndarray:
    return frame.to_ndarray().reshape(-1).astype(np.float32, copy=False)


# --- timing -------------------------------------------------------------------------------------------------


def frame_count(duration_s: float, fps: float | Fraction) -> int:
    """Number of video frames that cover `duration_s` of audio at `fps` (at least 1)."""
    return max(1, round(duration_s * float(fps)))


# --- mouth openness -----------------------------------------------------------------------------------------


def mouth_openness(
    samples: np.ndarray, fps: float | Fraction, n_frames: int, sample_rate: int = SAMPLE_RATE
) -> np.ndarray:
    """How open the mouth is in each video frame, float32 (n_frames,) in [0, 1].

    Speech-band (300-3400 Hz) RMS per frame, in dB, normalised to the recording's own robust peak so quiet
    and loud recordings move alike; gated so silence (and near-silence, and loudness that never varies) is
    exactly 0; smoothed with a fast attack and a slower release.
    """
    if n_frames <= 0:
        return np.zeros(0, np.float32)
    level_db = _speech_band_level_db(np.asarray(samples, np.float32).reshape(-1), fps, n_frames, sample_rate)
    raw = _normalise_level(level_db)
    return _attack_release(raw, float(fps))


def _speech_band_level_db(samples: np.ndarray, fps, n_frames: int, sample_rate: int) -> np.ndarray:
    """Speech-band RMS (dBFS) of a Hann window two frames long centred on each video frame."""
    hop = sample_rate / float(fps)
    win = max(2, int(round(2 * hop)))
    window = np.hanning(win + 2)[1:-1].astype(np.float32)  # no zero end points: every sample counts
    freqs = np.fft.rfftfreq(win, 1.0 / sample_rate)
    band = (freqs >= SPEECH_BAND_HZ[0]) & (freqs <= SPEECH_BAND_HZ[1])
    scale = 2.0 / (win * float(np.sum(window**2)))  # Parseval: band power -> mean square
    padded = np.concatenate([np.zeros(win, np.float32), samples, np.zeros(win, np.float32)])
    centres = (np.arange(n_frames) + 0.5) * hop
    starts = np.clip(np.round(centres - win / 2).astype(np.int64) + win, 0, padded.size - win)
    power = np.empty(n_frames, np.float64)
    for lo in range(0, n_frames, _CHUNK_FRAMES):
        idx = starts[lo : lo + _CHUNK_FRAMES, None] + np.arange(win)
        spectrum = np.fft.rfft(padded[idx] * window, axis=1)
        power[lo : lo + _CHUNK_FRAMES] = np.sum(np.abs(spectrum[:, band]) ** 2, axis=1) * scale
    with np.errstate(divide="ignore"):
        return 10.0 * np.log10(power)  # -inf for digital silence


def _normalise_level(level_db: np.ndarray) -> np.ndarray:
    """Map dB levels to 0..1 against the recording's robust peak; silence and steady noise give 0."""
    active = level_db[level_db > ABS_FLOOR_DB]
    if active.size == 0:
        return np.zeros(level_db.shape, np.float32)
    floored = np.maximum(level_db, ABS_FLOOR_DB)
    if np.percentile(floored, 90) - np.percentile(floored, 10) < MIN_SPREAD_DB:
        return np.zeros(level_db.shape, np.float32)  # steady hum or hiss, not speech
    peak = float(np.percentile(active, PEAK_PERCENTILE))
    raw = np.clip((floored - (peak - DYNAMIC_RANGE_DB)) / DYNAMIC_RANGE_DB, 0.0, 1.0)
    raw[(level_db <= ABS_FLOOR_DB) | (raw < OPEN_GATE)] = 0.0
    return raw.astype(np.float32)


def _attack_release(raw: np.ndarray, fps: float) -> np.ndarray:
    """One-pole smoothing, fast when opening and slower when closing; the release tail snaps to exactly 0."""
    attack = 1.0 - np.exp(-1.0 / (fps * ATTACK_S))
    release = 1.0 - np.exp(-1.0 / (fps * RELEASE_S))
    out = np.empty_like(raw)
    y = 0.0
    for i, x in enumerate(raw.tolist()):
        y += (attack if x > y else release) * (x - y)
        out[i] = y if y >= SNAP_CLOSED else 0.0
    return out


# --- Wav2Lip mel features -----------------------------------------------------------------------------------


def mel_spectrogram(samples: np.ndarray) -> np.ndarray:
    """Wav2Lip's normalised log-mel spectrogram of 16 kHz mono `samples`: float32 (80, 1 + len // 200)."""
    x = np.asarray(samples, np.float64).reshape(-1)
    if x.size == 0:
        x = np.zeros(1)
    emphasised = np.concatenate([x[:1], x[1:] - PREEMPHASIS * x[:-1]])
    mel = _mel_magnitude(emphasised)
    db = 20.0 * np.log10(np.maximum(10.0 ** (MIN_LEVEL_DB / 20.0), mel)) - REF_LEVEL_DB
    norm = 2 * MAX_ABS_VALUE * ((db - MIN_LEVEL_DB) / -MIN_LEVEL_DB) - MAX_ABS_VALUE
    return np.clip(norm, -MAX_ABS_VALUE, MAX_ABS_VALUE).astype(np.float32)


def _mel_magnitude(x: np.ndarray) -> np.ndarray:
    """mel_basis @ |librosa.stft(x, n_fft=800, hop_length=200, win_length=800)| as Wav2Lip called it (centred,
    reflect-padded, periodic Hann): (80, 1 + len(x) // HOP_LENGTH), computed in chunks to bound memory."""
    padded = np.pad(x, N_FFT // 2, mode="reflect" if x.size > 1 else "constant")
    n_frames = 1 + (padded.size - N_FFT) // HOP_LENGTH
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(WIN_LENGTH) / WIN_LENGTH)  # periodic Hann
    basis = _mel_filterbank()
    out = np.empty((N_MELS, n_frames), np.float64)
    for lo in range(0, n_frames, _CHUNK_FRAMES):
        idx = np.arange(lo, min(lo + _CHUNK_FRAMES, n_frames))[:, None] * HOP_LENGTH + np.arange(N_FFT)
        out[:, lo : lo + _CHUNK_FRAMES] = basis @ np.abs(np.fft.rfft(padded[idx] * window, axis=1)).T
    return out


def _hz_to_mel(hz):
    """Slaney mel scale (librosa's default, htk=False): linear below 1 kHz, logarithmic above."""
    hz = np.asarray(hz, np.float64)
    f_sp, min_log_hz, logstep = 200.0 / 3, 1000.0, np.log(6.4) / 27.0
    mel = hz / f_sp
    log_part = min_log_hz / f_sp + np.log(np.maximum(hz, min_log_hz) / min_log_hz) / logstep
    return np.where(hz >= min_log_hz, log_part, mel)


def _mel_to_hz(mel):
    mel = np.asarray(mel, np.float64)
    f_sp, min_log_hz, logstep = 200.0 / 3, 1000.0, np.log(6.4) / 27.0
    min_log_mel = min_log_hz / f_sp
    return np.where(mel >= min_log_mel, min_log_hz * np.exp(logstep * (mel - min_log_mel)), f_sp * mel)


def _mel_filterbank() -> np.ndarray:
    """librosa.filters.mel(sr=16000, n_fft=800, n_mels=80, fmin=55, fmax=7600): Slaney-normalised triangles,
    shape (80, 401)."""
    fft_freqs = np.linspace(0.0, SAMPLE_RATE / 2, 1 + N_FFT // 2)
    mel_f = _mel_to_hz(np.linspace(_hz_to_mel(MEL_FMIN), _hz_to_mel(MEL_FMAX), N_MELS + 2))
    fdiff = np.diff(mel_f)
    ramps = mel_f[:, None] - fft_freqs[None, :]
    lower = -ramps[:-2] / fdiff[:-1, None]
    upper = ramps[2:] / fdiff[1:, None]
    weights = np.maximum(0.0, np.minimum(lower, upper))
    return weights * (2.0 / (mel_f[2:] - mel_f[:-2]))[:, None]


def mel_windows(mel: np.ndarray, fps: float | Fraction, n_frames: int) -> np.ndarray:
    """The 16-mel-frame window for each video frame: float32 (n_frames, 80, 16).

    Frame i's window starts at mel frame int(i * 80 / fps); a window that would run past the end is the last
    16 frames instead (right-aligned). A mel shorter than 16 frames is padded with silence first.
    """
    mel = np.asarray(mel, np.float32)
    if mel.shape[1] < MEL_STEP:
        pad = np.full((mel.shape[0], MEL_STEP - mel.shape[1]), MEL_SILENCE, np.float32)
        mel = np.concatenate([mel, pad], axis=1)
    starts = np.minimum(_mel_starts(fps, n_frames), mel.shape[1] - MEL_STEP)
    views = np.lib.stride_tricks.sliding_window_view(mel, MEL_STEP, axis=1)  # (80, T - 15, 16)
    return np.ascontiguousarray(views[:, starts].transpose(1, 0, 2))


def _mel_starts(fps: float | Fraction, n_frames: int) -> np.ndarray:
    """int(i * 80 / fps) for i in range(n_frames), exact for Fraction and int fps."""
    i = np.arange(max(0, n_frames), dtype=np.int64)
    if isinstance(fps, (int, Fraction)):
        fps = Fraction(fps)
        return (i * MEL_FPS * fps.denominator) // fps.numerator
    return np.floor(i * MEL_FPS / float(fps)).astype(np.int64)
