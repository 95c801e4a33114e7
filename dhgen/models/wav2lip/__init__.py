"""The model family `wav2lip`: Wav2Lip's generator (Prajwal et al., 2020) from the checkpoint its users have.

A `.pth` state dict or a TorchScript `.pt` runs under torch (`network`). The crop is the tracked face box grown
by `--pads` (Wav2Lip's own), resized to 96 x 96; the conditioning is one 80 x 16 mel window per video frame
(`dhgen.audio.mel_spectrogram` / `mel_windows`: Wav2Lip's own features), computed in the job process. The
predictor regenerates the lower half of the face and pastes it through a feathered alpha.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np

from dhgen.errors import ModelLoadError
from dhgen.models.checkpoints import check_torch_weights
from dhgen.models.protocol import ModelFamily

CHECKPOINT_HINT = (
    "pass the Wav2Lip generator checkpoint: wav2lip.pth / wav2lip_gan.pth (weights saved with "
    "torch.save({'state_dict': ...})) or a TorchScript .pt whose forward takes (mel, face); not the SyncNet expert "
    "or the quality discriminator"
)


class Wav2LipFamily(ModelFamily):
    name = "wav2lip"
    description = "Wav2Lip (2020) generator: 96 x 96 lower face from mel windows; .pth or TorchScript .pt"
    crop_size = 96
    needs_checkpoint = True
    checkpoint_hint = CHECKPOINT_HINT
    backend = "torch"
    gpu = "optional"
    cpu_bound = True  # ~5 crops/s a core: on a CPU the model, not the encoder, sets the pace

    def check_checkpoint(self, checkpoint: Path) -> None:
        check_torch_weights(checkpoint, CHECKPOINT_HINT)

    def audio_features(self, samples: np.ndarray) -> np.ndarray:
        from dhgen.audio import mel_spectrogram

        return mel_spectrogram(samples)

    def conditioning(self, features: np.ndarray, fps: Fraction, n_frames: int) -> np.ndarray:
        from dhgen.audio import mel_windows

        return mel_windows(features, fps, n_frames)

    def load(self, checkpoint: Path | None, device: str, dtype: str):
        if checkpoint is None:
            raise ModelLoadError("the wav2lip model needs a checkpoint", hint="pass --checkpoint; " + CHECKPOINT_HINT)
        from dhgen.models.wav2lip.network import load_predictor

        return load_predictor(Path(checkpoint), device, dtype)


family = Wav2LipFamily()
