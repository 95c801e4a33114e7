"""The model family `musetalk`: MuseTalk 1.5 (TMElyralab, 2025) from its own models/ folder.

A 256 x 256 face is generated in one UNet step between the encoder and decoder of Stable Diffusion's VAE,
conditioned on whisper-tiny's encoder states. What runs where:

- job process (numpy, this module): the crop is the tracked face box grown by `--pads` (by default the bottom
  by 10 px, MuseTalk 1.5's `extra_margin`), stretched to 256 x 256 with LANCZOS4; `conditioning` cuts each
  frame's window of whisper states (`windows`);
- inference worker (torch, `predictor`, imported by `load`): whisper once per job (`audio_features`), then per
  batch the VAE, the UNet and the paste alpha (face parsing as MuseTalk's jaw blend where the folder has its
  BiSeNet weights, else a soft lower-face mask: `masks`), with each avatar crop's preparation cached.

The checkpoint folder is judged up front by `layout` (no torch): every piece that is missing or malformed
stops the run before anything starts, naming the file and the download step.
"""

from __future__ import annotations

import importlib.util
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np

from dhgen.errors import ModelLoadError, UsageError
from dhgen.models.musetalk.layout import EXTRA_HINT, FOLDER_HINT, read_layout
from dhgen.models.musetalk.windows import AudioWindows
from dhgen.models.protocol import ModelFamily, Rect


class MuseTalkFamily(ModelFamily):
    name = "musetalk"
    description = "MuseTalk 1.5: 256 x 256 face, VAE latent + one UNet step on whisper-tiny; MuseTalk's models/"
    crop_size = 256
    needs_checkpoint = True
    checkpoint_hint = FOLDER_HINT
    backend = "torch"
    gpu = "optional"
    cpu_bound = True  # seconds a frame on a CPU
    audio_in_worker = True  # whisper runs beside the UNet, once per job

    def check_checkpoint(self, checkpoint: Path) -> None:
        missing = [name for name in ("diffusers", "transformers") if importlib.util.find_spec(name) is None]
        if missing:
            needed = " and ".join(missing)
            raise UsageError(f"--model musetalk needs {needed}, which this Python lacks", hint=EXTRA_HINT)
        read_layout(checkpoint)

    def checkpoint_files(self, checkpoint: Path) -> list[Path]:
        """Only what is read (MuseTalk's folder also holds dwpose, syncnet and v1.0 weights, unused here)."""
        try:
            return read_layout(checkpoint).files
        except UsageError:
            return super().checkpoint_files(checkpoint)

    def extract_crop(self, frame: np.ndarray, rect: Rect) -> np.ndarray:
        x0, y0, x1, y1 = rect
        size = self.crop_size
        return cv2.resize(frame[y0:y1, x0:x1], (size, size), interpolation=cv2.INTER_LANCZOS4)

    def conditioning(self, features: np.ndarray, fps: Fraction, n_frames: int) -> AudioWindows:
        return AudioWindows(features, fps, n_frames)

    def load(self, checkpoint: Path | None, device: str, dtype: str):
        if checkpoint is None:
            raise ModelLoadError("the musetalk model needs a checkpoint", hint="pass --checkpoint; " + FOLDER_HINT)
        from dhgen.models.musetalk.predictor import load_predictor

        return load_predictor(Path(checkpoint), device, dtype, self.crop_size)


family = MuseTalkFamily()
