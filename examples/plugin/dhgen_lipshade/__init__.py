"""lipshade: the smallest useful dhgen model family, as a template for your own.

It darkens the area between the lips by how loud the speech is: a family whose crop is the lower third of the
face, whose conditioning is one loudness value per video frame (numpy, in the job process), and whose model is
a few lines of numpy (no checkpoint, no GPU). A real family swaps `load` for its network.
"""

from __future__ import annotations

import numpy as np

from dhgen.models import CropBatch, ModelFamily, PatchBatch, clip_rect

SAMPLE_RATE = 16_000  # dhgen hands every family 16 kHz mono float32 samples


class LipShade(ModelFamily):
    description = "example plugin: shades the mouth with the speech's loudness (numpy)"
    crop_size = 64
    needs_checkpoint = False
    backend = "numpy"
    gpu = "none"  # a numpy model: one CPU worker, whatever --device says
    cpu_bound = False

    def crop_rect(self, box, frame_w, frame_h, pads=(0, 10, 0, 0)):
        x, y, w, h = box
        return clip_rect((x + 0.2 * w, y + 0.62 * h, x + 0.8 * w, y + 0.98 * h), frame_w, frame_h)

    def conditioning(self, features, fps, n_frames):
        """RMS loudness of each video frame's slice of audio, scaled to [0, 1] by the loudest frame."""
        edges = (np.arange(n_frames + 1) * SAMPLE_RATE / float(fps)).astype(int)
        rms = np.array([np.sqrt(np.mean(features[a:b] ** 2)) if b > a else 0.0 for a, b in zip(edges[:-1], edges[1:], strict=True)])
        return (rms / max(rms.max(), 1e-6)).astype(np.float32)

    def load(self, checkpoint, device, dtype):
        return Shader(self.crop_size)


class Shader:
    """The "model": each crop darkened inside an ellipse, by its frame's loudness."""

    device = "cpu"
    dtype = "float32"

    def __init__(self, size: int) -> None:
        ys, xs = np.mgrid[0:size, 0:size] / (size - 1) - 0.5
        inside = np.clip(1.5 - 6.0 * (xs**2 / 0.16 + ys**2 / 0.09), 0.0, 1.0)
        self.alpha = (255 * inside).astype(np.uint8)[None]

    def predict(self, batch: CropBatch) -> PatchBatch:
        shade = 1.0 - 0.7 * np.clip(batch.cond, 0.0, 1.0)[:, None, None, None]
        return PatchBatch((batch.crops * shade).astype(np.uint8), self.alpha)


family = LipShade()
