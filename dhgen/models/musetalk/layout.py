"""MuseTalk's checkpoint folder, as its download script lays it out, judged before anything starts (no torch).

`--checkpoint` names MuseTalk's own `models/` folder:

    musetalkV15/musetalk.json   the UNet's diffusers `UNet2DConditionModel` arguments
    musetalkV15/unet.pth        its weights (a torch state dict)
    sd-vae/                     diffusers `AutoencoderKL` folder (sd-vae-ft-mse): config.json + weights
    whisper/                    whisper-tiny (transformers): config.json, preprocessor_config.json + weights
    face-parse-bisent/          optional: 79999_iter.pth (BiSeNet) + resnet18-5c106cde.pth (its backbone)

Other folders the script fills (musetalk/, dwpose/, syncnet/) are not read. `read_layout` finds every file dhgen
reads and judges each by its bytes (JSON parses to an object, weights are a torch file of weights or a
safetensors file); the first missing or malformed piece is a `UsageError` naming the file and the download step
that provides it. The configs must also fit together (the UNet takes the VAE's latents twice over and attends to
whisper's states), which is checked here too, from the JSON alone.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path

from dhgen.errors import UsageError
from dhgen.models.checkpoints import check_torch_weights

DOWNLOAD = "MuseTalk's download_weights.sh (README 'Download weights')"
UNET_STEP = f"{DOWNLOAD}, step 'MuseTalk V1.5 weights': TMElyralab/MuseTalk musetalkV15/musetalk.json + unet.pth"
VAE_STEP = f"{DOWNLOAD}, step 'SD VAE weights': stabilityai/sd-vae-ft-mse config.json + diffusion_pytorch_model.bin"
WHISPER_STEP = (
    f"{DOWNLOAD}, step 'Whisper weights': openai/whisper-tiny config.json, preprocessor_config.json, pytorch_model.bin"
)
PARSER_STEP = (
    f"{DOWNLOAD}, step 'Face Parse Bisent weights': 79999_iter.pth and resnet18-5c106cde.pth; or remove "
    "face-parse-bisent/ to paste through dhgen's lower-face mask instead"
)
FOLDER_HINT = "pass MuseTalk's models/ folder (the one its download_weights.sh fills) as --checkpoint"
EXTRA_HINT = 'install the musetalk extra: pip install "dhgen[musetalk]" (diffusers + transformers)'

VAE_WEIGHTS = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")  # diffusers prefers the first
WHISPER_WEIGHTS = ("model.safetensors", "pytorch_model.bin")  # transformers prefers the first
PARSER_FILES = ("79999_iter.pth", "resnet18-5c106cde.pth")


@dataclass(frozen=True)
class Layout:
    """The files of a checkpoint folder that dhgen reads."""

    root: Path
    unet_config: Path
    unet_weights: Path
    vae_dir: Path
    vae_weights: Path
    whisper_dir: Path
    whisper_weights: Path
    parser_weights: Path | None  # None, None: no face-parsing weights (dhgen's own mask is used)
    backbone_weights: Path | None

    @property
    def files(self) -> list[Path]:
        """Every file read, configs included: what the checkpoint's digest covers."""
        files = [self.unet_config, self.unet_weights, self.vae_dir / "config.json", self.vae_weights]
        files += [self.whisper_dir / "config.json", self.whisper_dir / "preprocessor_config.json"]
        files += [self.whisper_weights, self.parser_weights, self.backbone_weights]
        return sorted(p for p in files if p is not None)


def read_layout(folder: Path) -> Layout:
    """The layout of `folder`, every piece judged; `UsageError` naming the first one missing or malformed."""
    root = Path(folder)
    if not root.is_dir():
        what = "is not a folder" if root.exists() else "does not exist"
        raise UsageError(f"checkpoint {root} {what}", hint=FOLDER_HINT)
    unet_config = read_json(root / "musetalkV15" / "musetalk.json", UNET_STEP)
    vae_config = read_json(root / "sd-vae" / "config.json", VAE_STEP)
    whisper_config = read_json(root / "whisper" / "config.json", WHISPER_STEP)
    read_json(root / "whisper" / "preprocessor_config.json", WHISPER_STEP)
    check_fit(root, unet_config, vae_config, whisper_config)
    unet_weights = root / "musetalkV15" / "unet.pth"
    check_torch_weights(unet_weights, UNET_STEP, torchscript=False)
    parser, backbone = parser_files(root)
    return Layout(
        root=root,
        unet_config=root / "musetalkV15" / "musetalk.json",
        unet_weights=unet_weights,
        vae_dir=root / "sd-vae",
        vae_weights=weights_file(root / "sd-vae", VAE_WEIGHTS, VAE_STEP),
        whisper_dir=root / "whisper",
        whisper_weights=weights_file(root / "whisper", WHISPER_WEIGHTS, WHISPER_STEP),
        parser_weights=parser,
        backbone_weights=backbone,
    )


def read_json(path: Path, step: str) -> dict:
    """A JSON object from `path`; `UsageError` (with the download step) when missing or not one."""
    if not path.is_file():
        raise UsageError(f"{path} {'is not a file' if path.exists() else 'is missing'}", hint=f"get it with {step}")
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise UsageError(f"{path} is not readable JSON: {exc}", hint=f"download it again with {step}") from exc
    if not isinstance(value, dict):
        raise UsageError(f"{path} holds a JSON {type(value).__name__}, not an object", hint=f"use {step}")
    return value


def weights_file(folder: Path, names: tuple[str, ...], step: str) -> Path:
    """The first of `names` present in `folder` (the one the library loads), judged by its bytes."""
    for name in names:
        path = folder / name
        if path.exists():
            if name.endswith(".safetensors"):
                check_safetensors(path, step)
            else:
                check_torch_weights(path, f"get it with {step}", torchscript=False)
            return path
    raise UsageError(f"{folder} has no weights ({' or '.join(names)})", hint=f"get them with {step}")


def check_safetensors(path: Path, step: str) -> None:
    """A safetensors file starts with the length of its JSON header, then the header (an object)."""
    try:
        with open(path, "rb") as f:
            head = f.read(8)
            size = struct.unpack("<Q", head)[0] if len(head) == 8 else 0
            header = f.read(size) if 2 <= size <= path.stat().st_size - 8 else b""
        valid = isinstance(json.loads(header), dict) if header else False
    except (OSError, ValueError):  # a torn file, a header that is not JSON
        valid = False
    if not valid:
        raise UsageError(f"{path} is not a safetensors file", hint=f"download it again with {step}")


def parser_files(root: Path) -> tuple[Path | None, Path | None]:
    """Both face-parsing files, judged, or (None, None) when neither is there; one without the other is an error
    (a download that stopped half-way)."""
    folder = root / "face-parse-bisent"
    present = [(folder / name).exists() for name in PARSER_FILES]
    if not any(present):
        return None, None
    if not all(present):
        missing = folder / PARSER_FILES[present.index(False)]
        raise UsageError(f"{missing} is missing (its companion is there)", hint=f"get it with {PARSER_STEP}")
    for name in PARSER_FILES:
        check_torch_weights(folder / name, f"get it with {PARSER_STEP}", torchscript=False)
    return folder / PARSER_FILES[0], folder / PARSER_FILES[1]


def check_fit(root: Path, unet: dict, vae: dict, whisper: dict) -> None:
    """The three configs describe networks that fit together (checked where the JSON says; sizes are read, not
    assumed): the UNet takes masked + reference VAE latents, predicts one latent, and attends to whisper states."""
    latent = vae.get("latent_channels")
    twice = None if latent is None else 2 * latent
    pairs = [
        ("in_channels", unet.get("in_channels"), "2 x the VAE's latent_channels", twice),
        ("out_channels", unet.get("out_channels"), "the VAE's latent_channels", latent),
        ("cross_attention_dim", unet.get("cross_attention_dim"), "whisper's d_model", whisper.get("d_model")),
    ]
    for key, have, what, want in pairs:
        if have is not None and want is not None and have != want:
            raise UsageError(
                f"{root / 'musetalkV15' / 'musetalk.json'}: {key} is {have}, but {what} is {want}: these files are "
                "not from one MuseTalk release",
                hint=f"download MuseTalk 1.5's weights again with {DOWNLOAD}",
            )
