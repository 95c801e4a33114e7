"""MuseTalk 1.5's audio windows: which whisper steps condition each video frame (numpy only, job process).

The inference worker turns a job's audio into whisper-tiny encoder states, `(steps, layers, width)`: one step per
20 ms (`STEPS_PER_SECOND`), every hidden state (the embedding and each layer's output) stacked per step. Video
frame i is conditioned on `WINDOW_STEPS` consecutive steps starting at floor(i * 50 / fps) of that sequence
padded with 2 * ceil(50 / fps) zero steps in front (MuseTalk's `get_whisper_chunk`), flattened time-major to
`(WINDOW_STEPS * layers, width)`: step 0's layers first.

Two things MuseTalk's chunker does that dhgen does not: it truncates fps with `int()` (29.97 -> 29, so the audio
drifts 3 % against the video), and it computes frame starts and the number of steps with float products (which
now and then drop a step at the end); here both are exact integer arithmetic on the true rate. A window that
runs past either end of the audio reads zeros, as MuseTalk's padding does.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np

STEPS_PER_SECOND = 50  # whisper's encoder: 16 kHz, hop 160 (100 mel frames/s), then a stride-2 conv
PAD_LEFT, PAD_RIGHT = 2, 2  # MuseTalk's audio_padding_length_left / _right (its inference defaults)
WINDOW_STEPS = 2 * (PAD_LEFT + PAD_RIGHT + 1)  # 10 steps (200 ms) per video frame


def step_count(n_samples: int, sample_rate: int) -> int:
    """How many encoder steps `n_samples` of audio cover (the rest of whisper's 30-s segment is padding)."""
    return n_samples * STEPS_PER_SECOND // sample_rate


def window_starts(fps: Fraction, n_frames: int) -> np.ndarray:
    """int64 (n_frames,): for each video frame, the first step of its window in the unpadded sequence (may be
    negative: the zero padding in front)."""
    fps = Fraction(fps)
    lead = PAD_LEFT * math.ceil(STEPS_PER_SECOND / fps)  # the zero steps MuseTalk puts in front
    frames = np.arange(n_frames, dtype=np.int64)
    return frames * (STEPS_PER_SECOND * fps.denominator) // fps.numerator - lead


class AudioWindows:
    """Every frame's window over one job's encoder states, cut when asked for (`[indices]`), never all at once:
    a minute at 25 fps would be 1500 x 50 x 384 floats (115 MB) if held whole."""

    def __init__(self, features: np.ndarray, fps: Fraction, n_frames: int) -> None:
        if features.ndim != 3:
            raise ValueError(f"expected whisper states (steps, layers, width), got shape {features.shape}")
        self.features = features
        self.starts = window_starts(fps, n_frames)
        steps, layers, width = features.shape
        self.shape = (n_frames, WINDOW_STEPS * layers, width)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, frames) -> np.ndarray:
        """float32 (len(frames), WINDOW_STEPS * layers, width) for a list (or array) of frame indices."""
        starts = self.starts[np.asarray(frames, dtype=np.int64)]
        if len(self.features) == 0:  # under 20 ms of audio: no step at all, every window is padding
            return np.zeros((len(starts), *self.shape[1:]), np.float32)
        steps = starts[:, None] + np.arange(WINDOW_STEPS)  # (n, WINDOW_STEPS) step indices, maybe out of range
        inside = (steps >= 0) & (steps < len(self.features))
        windows = self.features[np.clip(steps, 0, len(self.features) - 1)].astype(np.float32)
        windows[~inside] = 0.0
        return windows.reshape(len(starts), *self.shape[1:])
