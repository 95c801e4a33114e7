"""The embedded model family `mouthwarp`: weight-free mouth re-animation in numpy + OpenCV (the maths: `warp`).

It needs no checkpoint and no GPU, so a fresh machine and CI render real videos with it. Its crop is a square
around the mouth and chin; its conditioning is one mouth openness in [0, 1] per video frame, from the speech
band's loudness (`dhgen.audio.mouth_openness`), computed in the job process.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np

from dhgen.models.protocol import Box, ModelFamily, Pads, Rect, clip_rect

MOUTH_SIDE = 0.78  # the crop's side, in face-box widths ...
MOUTH_CENTRE_Y = 0.84  # ... centred this far down the face box (the mouth and the chin)


class MouthWarpFamily(ModelFamily):
    name = "mouthwarp"
    description = "embedded, weight-free mouth re-animation (numpy + OpenCV); the default"
    crop_size = 128
    needs_checkpoint = False
    backend = "numpy"
    gpu = "none"
    cpu_bound = False  # ~0.3 ms a crop on one core: faster than any encoder

    def crop_rect(self, box: Box, frame_w: int, frame_h: int, pads: Pads = (0, 10, 0, 0)) -> Rect:
        """A square around the mouth and chin (the pads are Wav2Lip's and mean nothing here)."""
        x, y, w, h = (float(v) for v in box)
        side, cx, cy = MOUTH_SIDE * w, x + 0.5 * w, y + MOUTH_CENTRE_Y * h
        return clip_rect((cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2), frame_w, frame_h)

    def conditioning(self, features: np.ndarray, fps: Fraction, n_frames: int) -> np.ndarray:
        from dhgen.audio import mouth_openness

        return mouth_openness(features, fps, n_frames)

    def load(self, checkpoint: Path | None, device: str, dtype: str):
        from dhgen.models.mouthwarp.warp import MouthWarp

        return MouthWarp(self.crop_size)


family = MouthWarpFamily()
