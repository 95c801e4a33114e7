"""The model family `wav2lip`: Wav2Lip's generator (Prajwal et al., 2020) from the checkpoint its users have.

A `.pth` state dict or a TorchScript `.pt` runs under torch (`network`); a `.onnx` graph with FaceFusion's I/O
(`wav2lip_96.onnx`, `wav2lip_gan_96.onnx`) runs under onnxruntime (`onnx`), never importing torch. The crop is
the tracked face box grown by `--pads` (Wav2Lip's own), resized to 96 x 96; the conditioning is one 80 x 16 mel
window per video frame (`dhgen.audio.mel_spectrogram` / `mel_windows`: Wav2Lip's own features), computed in the
job process. The predictor regenerates the lower half of the face and pastes it through a feathered alpha.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np

from dhgen.errors import ModelLoadError
from dhgen.models.checkpoints import check_torch_weights
from dhgen.models.protocol import ModelFamily

FACE_SIZE = 96  # the generator's face input and output side, pixels
MEL_BINS, MEL_STEPS = 80, 16  # one mel window: 80 bins x 16 frames (0.2 s at 80 frames/s)
ALPHA_TOP = 0.5  # the patch is pasted below this fraction of the crop: the half Wav2Lip regenerates
ONNX_SUFFIX = ".onnx"
CHECKPOINT_HINT = (
    "pass the Wav2Lip generator checkpoint: wav2lip.pth / wav2lip_gan.pth (weights saved with "
    "torch.save({'state_dict': ...})), a TorchScript .pt whose forward takes (mel, face), or an ONNX graph with "
    "FaceFusion's inputs (wav2lip_96.onnx, wav2lip_gan_96.onnx); not the SyncNet expert or the quality discriminator"
)


class Wav2LipFamily(ModelFamily):
    name = "wav2lip"
    description = "Wav2Lip (2020) generator: 96 x 96 lower face from mel windows; .pth, TorchScript .pt or .onnx"
    crop_size = FACE_SIZE
    needs_checkpoint = True
    checkpoint_hint = CHECKPOINT_HINT
    backend = "torch"
    backends = ("torch", "onnxruntime")
    gpu = "optional"
    cpu_bound = True  # ~5 crops/s a core: on a CPU the model, not the encoder, sets the pace

    def backend_for(self, checkpoint: Path | None) -> str:
        return "onnxruntime" if _is_onnx(checkpoint) else "torch"

    def check_checkpoint(self, checkpoint: Path) -> None:
        if _is_onnx(checkpoint):
            from dhgen.models.wav2lip.onnx import check_graph

            check_graph(Path(checkpoint))
        else:
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
        if _is_onnx(checkpoint):
            from dhgen.models.wav2lip.onnx import load_predictor
        else:
            from dhgen.models.wav2lip.network import load_predictor

        return load_predictor(Path(checkpoint), device, dtype)


def _is_onnx(checkpoint: Path | None) -> bool:
    return checkpoint is not None and Path(checkpoint).suffix.lower() == ONNX_SUFFIX


family = Wav2LipFamily()
