"""Write a MuseTalk models/ folder with random weights, laid out as MuseTalk's download script lays it out.

    .venv/bin/python tools/musetalk_checkpoint.py OUT_DIR [--size full|tiny] [--no-parser] [--seed 0]

`full` builds every network at its published size from the published configs (MuseTalk 1.5's musetalk.json,
sd-vae-ft-mse's config.json, whisper-tiny's defaults; ~1.1 GB of weights): for the sameness check
(tools/musetalk_sameness.py) and the benchmark. `tiny` keeps the architectures with a few channels (a few MB):
for the test suite. The face-parsing folder holds a BiSeNet with random weights in the published key layout
(79999_iter.pth, auxiliary heads included) and a ResNet-18 backbone file with torchvision's keys (classifier
included), unless --no-parser. Weight files are torch state dicts (.bin / .pth), as published.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

UNET_FULL = {
    "_class_name": "UNet2DConditionModel",
    "act_fn": "silu",
    "attention_head_dim": 8,
    "block_out_channels": [320, 640, 1280, 1280],
    "center_input_sample": False,
    "cross_attention_dim": 384,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "downsample_padding": 1,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 8,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "out_channels": 4,
    "sample_size": 64,
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
}
UNET_TINY = {
    **UNET_FULL,
    "attention_head_dim": 2,
    "block_out_channels": [8, 16],
    "cross_attention_dim": 16,
    "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"],
    "layers_per_block": 1,
    "norm_num_groups": 4,
}
VAE_FULL = {
    "act_fn": "silu",
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "in_channels": 3,
    "out_channels": 3,
    "latent_channels": 4,
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "sample_size": 256,
}
VAE_TINY = {**VAE_FULL, "block_out_channels": [4, 4, 4, 4], "layers_per_block": 1, "norm_num_groups": 2}
WHISPER_TINY = {  # a few channels; 1500 positions (whisper's 30-s window) as every whisper has
    "d_model": 16,
    "encoder_layers": 1,
    "encoder_attention_heads": 2,
    "encoder_ffn_dim": 32,
    "decoder_layers": 1,
    "decoder_attention_heads": 2,
    "decoder_ffn_dim": 32,
    "vocab_size": 64,
    "max_target_positions": 16,
    "pad_token_id": 0,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "decoder_start_token_id": 1,
}
SIZES = {"full": (UNET_FULL, VAE_FULL, {}), "tiny": (UNET_TINY, VAE_TINY, WHISPER_TINY)}


def write_checkpoint(folder: Path, size: str = "tiny", parser: bool = True, seed: int = 0) -> Path:
    """A random-weight MuseTalk models/ folder at `folder`; returns it."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperModel

    unet_config, vae_config, whisper_config = SIZES[size]
    folder = Path(folder)
    torch.manual_seed(seed)
    (folder / "musetalkV15").mkdir(parents=True, exist_ok=True)
    (folder / "musetalkV15" / "musetalk.json").write_text(json.dumps(unet_config, indent=2))
    unet = UNet2DConditionModel.from_config(unet_config)
    torch.save(unet.state_dict(), folder / "musetalkV15" / "unet.pth")
    AutoencoderKL.from_config(vae_config).save_pretrained(folder / "sd-vae", safe_serialization=False)
    whisper = WhisperModel(WhisperConfig(**whisper_config))
    whisper.config.save_pretrained(folder / "whisper")
    torch.save(whisper.state_dict(), folder / "whisper" / "pytorch_model.bin")
    WhisperFeatureExtractor().save_pretrained(folder / "whisper")
    if parser:
        write_parser(folder / "face-parse-bisent")
    return folder


def write_parser(folder: Path) -> None:
    """BiSeNet with random weights (non-trivial BatchNorm statistics) in the published layout."""
    from torch import nn

    from dhgen.models.musetalk.bisenet import BiSeNet, OutputHead

    net = BiSeNet()
    for module in net.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.normal_(0.0, 0.1)
            module.running_var.uniform_(0.5, 2.0)
    state = dict(net.state_dict())
    for head in ("conv_out16", "conv_out32"):  # the auxiliary heads the published file holds
        state.update({f"{head}.{k}": v for k, v in OutputHead(128, 64, 19).state_dict().items()})
    backbone = {k.removeprefix("cp.resnet."): v for k, v in state.items() if k.startswith("cp.resnet.")}
    backbone.update({"fc.weight": torch.randn(1000, 512) * 0.01, "fc.bias": torch.zeros(1000)})
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(state, folder / "79999_iter.pth")
    torch.save(backbone, folder / "resnet18-5c106cde.pth")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", type=Path)
    p.add_argument("--size", choices=sorted(SIZES), default="full")
    p.add_argument("--no-parser", action="store_true", help="leave out face-parse-bisent/")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    write_checkpoint(args.out, args.size, parser=not args.no_parser, seed=args.seed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
