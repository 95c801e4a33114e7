"""The Wav2Lip generator under torch (published layer layout), checkpoint loading, and its predictor.

The network is laid out exactly like the published Wav2Lip generator (Prajwal et al., 2020), so its checkpoints
load as they are: a face encoder (7 blocks, 96 -> 1 px), an audio encoder for one (1, 80, 16) mel window, a
decoder of transposed convolutions with skip connections from the face encoder, and an output block ending in a
sigmoid. Each layer is a conv + BatchNorm (+ residual) + ReLU unit whose parameters live under `conv_block.0` /
`conv_block.1`, which gives the published key names (`face_encoder_blocks.0.0.conv_block.0.weight`, ...).

Input per frame: the mel window and a 6-channel 96x96 face in [0, 1]: the crop with its lower half zeroed, then
the reference crop. Wav2Lip was trained on OpenCV frames, so the channels are BGR, as dhgen's crops are.
Output: the 96x96 face (BGR, [0, 1]); only its lower half is pasted back, through a feathered alpha.

Checkpoints (`load_generator`): the training format `{"state_dict": ...}` or a bare state dict (a DataParallel
`module.` prefix is stripped, only as a prefix), or a TorchScript archive whose `forward(mel, face)` is the
generator. Anything else is a `ModelLoadError` naming the file and the keys that do not fit.

Precision: a state-dict generator runs under fp16 autocast on CUDA when --precision says fp16; a TorchScript
generator is not put under autocast (PyTorch supports autocast for eager modules, not for scripted graphs): its
weights are cast to the precision that will run (fp16 on CUDA with fp16, else fp32), and the probe that checks
it runs in that precision.
"""

from __future__ import annotations

import logging
import pickle
import zipfile
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from dhgen.composite import feather_mask
from dhgen.errors import ModelLoadError, first_line
from dhgen.models.torch_backend import TorchPredictor, state_dict_mismatches
from dhgen.models.wav2lip import ALPHA_TOP, CHECKPOINT_HINT, FACE_SIZE, MEL_BINS, MEL_STEPS

log = logging.getLogger(__name__)

DP_PREFIX = "module."  # what torch.nn.DataParallel puts in front of every key


# --- the network ------------------------------------------------------------------------------------------------


class ConvUnit(nn.Module):
    """Conv (or transposed conv) + BatchNorm, optionally plus the input, then ReLU (Wav2Lip's `Conv2d` unit)."""

    def __init__(self, cin, cout, kernel_size, stride, padding, residual=False, transpose=False, output_padding=0):
        super().__init__()
        if transpose:
            conv = nn.ConvTranspose2d(cin, cout, kernel_size, stride, padding, output_padding)
        else:
            conv = nn.Conv2d(cin, cout, kernel_size, stride, padding)
        self.conv_block = nn.Sequential(conv, nn.BatchNorm2d(cout))
        self.act = nn.ReLU()
        self.residual = residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv_block(x)
        if self.residual:
            out = out + x
        return self.act(out)


def _down(cin: int, cout: int, stride, residuals: int, kernel_size: int = 3, padding: int = 1) -> list[ConvUnit]:
    """One conv that changes channels/resolution, then `residuals` 3x3 residual convs at `cout` channels."""
    units = [ConvUnit(cin, cout, kernel_size, stride, padding)]
    units += [ConvUnit(cout, cout, 3, 1, 1, residual=True) for _ in range(residuals)]
    return units


def _up(cin: int, cout: int, residuals: int, stride: int = 2, padding: int = 1, output_padding: int = 1):
    """A transposed conv (x2 upsampling unless told otherwise), then `residuals` 3x3 residual convs."""
    units = [ConvUnit(cin, cout, 3, stride, padding, transpose=True, output_padding=output_padding)]
    units += [ConvUnit(cout, cout, 3, 1, 1, residual=True) for _ in range(residuals)]
    return nn.Sequential(*units)


class Wav2Lip(nn.Module):
    """The Wav2Lip generator: `forward(mel (B, 1, 80, 16), face (B, 6, 96, 96)) -> (B, 3, 96, 96)` in [0, 1]."""

    def __init__(self) -> None:
        super().__init__()
        self.face_encoder_blocks = nn.ModuleList(
            [
                nn.Sequential(ConvUnit(6, 16, 7, 1, 3)),  # 96x96
                nn.Sequential(*_down(16, 32, 2, residuals=2)),  # 48x48
                nn.Sequential(*_down(32, 64, 2, residuals=3)),  # 24x24
                nn.Sequential(*_down(64, 128, 2, residuals=2)),  # 12x12
                nn.Sequential(*_down(128, 256, 2, residuals=2)),  # 6x6
                nn.Sequential(*_down(256, 512, 2, residuals=1)),  # 3x3
                nn.Sequential(ConvUnit(512, 512, 3, 1, 0), ConvUnit(512, 512, 1, 1, 0)),  # 1x1
            ]
        )
        self.audio_encoder = nn.Sequential(  # (1, 80, 16) -> (512, 1, 1)
            *_down(1, 32, 1, residuals=2),  # 80x16
            *_down(32, 64, (3, 1), residuals=2),  # 27x16
            *_down(64, 128, 3, residuals=2),  # 9x6
            *_down(128, 256, (3, 2), residuals=1),  # 3x3
            ConvUnit(256, 512, 3, 1, 0),  # 1x1
            ConvUnit(512, 512, 1, 1, 0),
        )
        # Each decoder block's output is concatenated with the face encoder's features of the same size.
        self.face_decoder_blocks = nn.ModuleList(
            [
                nn.Sequential(ConvUnit(512, 512, 1, 1, 0)),  # 1x1, + 512 -> 1024
                _up(1024, 512, residuals=1, stride=1, padding=0, output_padding=0),  # 3x3, + 512 -> 1024
                _up(1024, 512, residuals=2),  # 6x6, + 256 -> 768
                _up(768, 384, residuals=2),  # 12x12, + 128 -> 512
                _up(512, 256, residuals=2),  # 24x24, + 64 -> 320
                _up(320, 128, residuals=2),  # 48x48, + 32 -> 160
                _up(160, 64, residuals=2),  # 96x96, + 16 -> 80
            ]
        )
        self.output_block = nn.Sequential(ConvUnit(80, 32, 3, 1, 1), nn.Conv2d(32, 3, 1, 1, 0), nn.Sigmoid())

    def forward(self, mel: torch.Tensor, face: torch.Tensor) -> torch.Tensor:
        features: list[torch.Tensor] = []
        x = face
        for block in self.face_encoder_blocks:
            x = block(x)
            features.append(x)
        x = self.audio_encoder(mel)
        for block in self.face_decoder_blocks:  # deepest first: each output meets the encoder's of its size
            x = torch.cat((block(x), features.pop()), dim=1)
        return self.output_block(x)


# --- checkpoints --------------------------------------------------------------------------------------------------


def strip_prefix(state_dict: Mapping[str, object], prefix: str = DP_PREFIX) -> dict[str, object]:
    """The state dict with `prefix` removed from the start of each key that has it (never from the middle)."""
    return {(k[len(prefix) :] if k.startswith(prefix) else k): v for k, v in state_dict.items()}


def load_generator(checkpoint: Path, device: str | torch.device, dtype: str = "float32") -> nn.Module:
    """The generator in `checkpoint`, on `device`, in eval mode; `ModelLoadError` if the file is not one. `dtype`
    (float16 / float32): the precision it will run in (a TorchScript generator is cast to it)."""
    path = Path(checkpoint)
    if not path.is_file():
        what = "is not a file" if path.exists() else "does not exist"
        raise ModelLoadError(f"checkpoint {what}", path=path, hint="check --checkpoint; " + CHECKPOINT_HINT)
    if _is_torchscript(path):
        model = _load_torchscript(path, device, _scripted_dtype(dtype, device))
    else:
        model = Wav2Lip()
        model.load_state_dict(_matching_state_dict(path, model))
        model = model.to(device)
    log.info("loaded Wav2Lip generator from %s", path)
    return model.eval()


def _is_torchscript(path: Path) -> bool:
    """A TorchScript archive is a zip with `<name>/constants.pkl` (a `torch.save` zip has only `data.pkl`)."""
    try:
        with zipfile.ZipFile(path) as archive:
            return any(name.rsplit("/", 1)[-1] == "constants.pkl" for name in archive.namelist())
    except (zipfile.BadZipFile, OSError, EOFError):
        return False


def _scripted_dtype(dtype: str, device) -> torch.dtype:
    """What a TorchScript generator runs in: fp16 only on CUDA (and only when asked), fp32 otherwise."""
    return torch.float16 if dtype == "float16" and torch.device(device).type == "cuda" else torch.float32


def _load_torchscript(path: Path, device, dtype: torch.dtype) -> nn.Module:
    try:
        model = torch.jit.load(str(path), map_location=device)
    except torch.cuda.OutOfMemoryError:
        raise
    except Exception as exc:  # noqa: BLE001 - anything the archive reader raises means "not a usable model"
        raise ModelLoadError(
            f"cannot read TorchScript checkpoint: {first_line(exc)}", path=path, hint=CHECKPOINT_HINT
        ) from exc
    model = model.to(dtype=dtype)  # an fp16 export runs fp32 where fp32 was asked for (and on the CPU)
    _probe(model, path, device)  # in the precision that will run
    return model


def _probe(model: nn.Module, path: Path, device) -> None:
    """Run one zero frame through a TorchScript model: it must map (mel, face) to a (1, 3, 96, 96) face."""
    dtype = _input_dtype(model)
    mel = torch.zeros(1, 1, MEL_BINS, MEL_STEPS, device=device, dtype=dtype)
    face = torch.zeros(1, 6, FACE_SIZE, FACE_SIZE, device=device, dtype=dtype)
    try:
        with torch.inference_mode():
            out = model.eval()(mel, face)
    except torch.cuda.OutOfMemoryError:
        raise
    except Exception as exc:  # noqa: BLE001 - a scripted forward can raise anything
        raise ModelLoadError(
            f"TorchScript model does not take (mel (B, 1, 80, 16), face (B, 6, 96, 96)): {first_line(exc)}", path=path
        ) from exc
    shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
    if shape != (1, 3, FACE_SIZE, FACE_SIZE):
        raise ModelLoadError(
            f"TorchScript model returns {shape}, expected a (B, 3, 96, 96) face", path=path, hint=CHECKPOINT_HINT
        )


def _matching_state_dict(path: Path, model: nn.Module) -> dict[str, torch.Tensor]:
    """The checkpoint's weights, keyed like `model`'s, or a `ModelLoadError` listing what does not fit."""
    state = strip_prefix(_read_state_dict(path))
    expected = model.state_dict()
    for key, value in expected.items():  # BatchNorm step counters: not used at inference, absent in some files
        if key.endswith("num_batches_tracked") and key not in state:
            state[key] = value
    problems = state_dict_mismatches(state, expected)
    if problems:
        raise ModelLoadError(
            f"not a Wav2Lip generator checkpoint: {'; '.join(problems)}", path=path, hint=CHECKPOINT_HINT
        )
    return state


def _read_state_dict(path: Path) -> Mapping[str, object]:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:  # never torch's words here: they suggest weights_only=False
        raise ModelLoadError(
            "checkpoint is not a PyTorch file of weights, or it holds pickled Python objects that dhgen does not "
            "load (unpickling them could run code from the file)",
            path=path,
            hint="re-save the weights alone: torch.save({'state_dict': model.state_dict()}, 'wav2lip.pth')",
        ) from exc
    except Exception as exc:  # noqa: BLE001 - truncated zips, random bytes: unreadable
        raise ModelLoadError(f"cannot read checkpoint: {first_line(exc)}", path=path, hint=CHECKPOINT_HINT) from exc
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not obj or not all(isinstance(k, str) for k in obj):
        raise ModelLoadError(
            f"checkpoint holds a {type(obj).__name__}, not a state dict (or {{'state_dict': ...}})",
            path=path,
            hint=CHECKPOINT_HINT,
        )
    return obj


def _input_dtype(model: nn.Module) -> torch.dtype:
    """The dtype a model's weights are stored in (a TorchScript export may be fp16); float32 if it has none."""
    for param in model.parameters():
        return param.dtype if param.is_floating_point() else torch.float32
    return torch.float32


# --- the predictor -----------------------------------------------------------------------------------------------


class Wav2LipModel(nn.Module):
    """dhgen's model contract around a generator: uint8 BGR crops/refs + mel windows -> uint8 patches + alphas.

    `forward(crops (B, 96, 96, 3), refs (B, 96, 96, 3), mels (B, 80, 16))` builds the 6-channel face input the
    way Wav2Lip's own inference does (`[crop with rows 48.. zeroed, ref] / 255`) and returns the generated faces
    as uint8 (B, 96, 96, 3) BGR with a fixed alpha (B, 96, 96): 0 over the top half and on the border, feathered
    to 255 over the mouth and jaw.
    """

    def __init__(self, generator: nn.Module) -> None:
        super().__init__()
        self.generator = generator
        self.register_buffer("alpha", torch.from_numpy(feather_mask(FACE_SIZE, top=ALPHA_TOP)), persistent=False)

    def forward(self, crops: torch.Tensor, refs: torch.Tensor, mels: torch.Tensor):
        if mels.shape[1:] != (MEL_BINS, MEL_STEPS):
            raise ValueError(f"wav2lip expects (B, {MEL_BINS}, {MEL_STEPS}) mel windows, got {tuple(mels.shape)}")
        dtype = _input_dtype(self.generator)
        masked = crops.permute(0, 3, 1, 2).to(dtype).div(255.0)
        masked[:, :, FACE_SIZE // 2 :] = 0.0
        ref = refs.permute(0, 3, 1, 2).to(dtype).div(255.0)
        face = torch.cat((masked, ref), dim=1)
        out = self.generator(mels.to(dtype).unsqueeze(1), face)
        patches = out.float().mul(255.0).add(0.5).clamp(0.0, 255.0).to(torch.uint8).permute(0, 2, 3, 1)
        return patches.contiguous(), self.alpha[None]  # one alpha for the whole batch


def load_predictor(checkpoint: Path, device: str, dtype: str) -> TorchPredictor:
    """The predictor for a `.pth` / TorchScript checkpoint on `device` (already resolved: cpu, cuda, cuda:N) in
    precision `dtype` (see the module docstring)."""
    generator = load_generator(checkpoint, device, dtype)
    model = Wav2LipModel(generator).to(device).eval()
    scripted = isinstance(generator, torch.jit.ScriptModule)
    return TorchPredictor("wav2lip", FACE_SIZE, model, device, dtype, autocast=not scripted)
