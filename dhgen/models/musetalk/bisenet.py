"""The face parser MuseTalk pastes through: BiSeNet (Yu et al., 2018) as face-parsing.PyTorch trained it.

A ResNet-18 backbone gives features at 1/8, 1/16 and 1/32 of the input; the context path refines the two
deeper ones with attention and a global average, upsamples them onto the 1/8 grid, and a feature-fusion module
merges them with the 1/8 features; a 3x3 conv head scores 19 CelebAMask-HQ classes per pixel, upsampled to the
input (bilinear, corners aligned). Module and parameter names follow the published `79999_iter.pth`
(`cp.resnet.layer1.0.conv1.weight`, `cp.arm16.conv_atten.weight`, `ffm.convblk.bn.running_mean`,
`conv_out.conv_out.weight`, ...); the backbone's follow torchvision's ResNet-18 (`resnet18-5c106cde.pth`).
The two auxiliary heads the file also holds (`conv_out16`, `conv_out32`) only served training and are not built.

`load_parser` reads the backbone file into the backbone (its classifier `fc.*` is not used), then the parser
file over the whole network, as MuseTalk's `FaceParsing` does; either file not fitting is a `ModelLoadError`.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from dhgen.errors import ModelLoadError
from dhgen.models.musetalk.layout import PARSER_STEP
from dhgen.models.musetalk.networks import brief, load_weights

N_CLASSES = 19
TRAINING_ONLY = ("conv_out16.", "conv_out32.")  # auxiliary heads in 79999_iter.pth
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # ImageNet statistics, RGB


class ConvBNReLU(nn.Module):
    def __init__(self, cin: int, cout: int, kernel_size: int = 3, padding: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel_size, 1, padding, bias=False)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


class BasicBlock(nn.Module):
    """ResNet's two 3x3 convs plus a shortcut (a strided 1x1 conv where the shape changes)."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if cin != cout or stride != 1:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        shortcut = x if self.downsample is None else self.downsample(x)
        return F.relu(out + shortcut)


class ResNet18(nn.Module):
    """The backbone: features at 1/8, 1/16 and 1/32 of the input (128, 256, 512 channels)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = nn.Sequential(BasicBlock(64, 64), BasicBlock(64, 64))
        self.layer2 = nn.Sequential(BasicBlock(64, 128, 2), BasicBlock(128, 128))
        self.layer3 = nn.Sequential(BasicBlock(128, 256, 2), BasicBlock(256, 256))
        self.layer4 = nn.Sequential(BasicBlock(256, 512, 2), BasicBlock(512, 512))

    def forward(self, x: torch.Tensor):
        x = self.layer1(self.maxpool(F.relu(self.bn1(self.conv1(x)))))
        feat8 = self.layer2(x)
        feat16 = self.layer3(feat8)
        return feat8, feat16, self.layer4(feat16)


class AttentionRefinement(nn.Module):
    """A 3x3 conv whose channels are re-weighted by a sigmoid of their global average."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv = ConvBNReLU(cin, cout)
        self.conv_atten = nn.Conv2d(cout, cout, 1, bias=False)
        self.bn_atten = nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feat = self.conv(x)
        attention = torch.sigmoid(self.bn_atten(self.conv_atten(feat.mean(dim=(2, 3), keepdim=True))))
        return feat * attention


class ContextPath(nn.Module):
    """Backbone features refined and brought onto the 1/8 grid: (feat8, context at 1/8)."""

    def __init__(self) -> None:
        super().__init__()
        self.resnet = ResNet18()
        self.arm16 = AttentionRefinement(256, 128)
        self.arm32 = AttentionRefinement(512, 128)
        self.conv_head32 = ConvBNReLU(128, 128)
        self.conv_head16 = ConvBNReLU(128, 128)
        self.conv_avg = ConvBNReLU(512, 128, kernel_size=1, padding=0)

    def forward(self, x: torch.Tensor):
        feat8, feat16, feat32 = self.resnet(x)
        average = self.conv_avg(feat32.mean(dim=(2, 3), keepdim=True))  # broadcast over 1/32 = nearest upsampling
        up32 = self.conv_head32(F.interpolate(self.arm32(feat32) + average, feat16.shape[2:], mode="nearest"))
        up16 = self.conv_head16(F.interpolate(self.arm16(feat16) + up32, feat8.shape[2:], mode="nearest"))
        return feat8, up16


class FeatureFusion(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.convblk = ConvBNReLU(cin, cout, kernel_size=1, padding=0)
        self.conv1 = nn.Conv2d(cout, cout // 4, 1, bias=False)
        self.conv2 = nn.Conv2d(cout // 4, cout, 1, bias=False)

    def forward(self, spatial: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        feat = self.convblk(torch.cat([spatial, context], dim=1))
        attention = torch.sigmoid(self.conv2(F.relu(self.conv1(feat.mean(dim=(2, 3), keepdim=True)))))
        return feat * attention + feat


class OutputHead(nn.Module):
    def __init__(self, cin: int, mid: int, n_classes: int) -> None:
        super().__init__()
        self.conv = ConvBNReLU(cin, mid)
        self.conv_out = nn.Conv2d(mid, n_classes, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_out(self.conv(x))


class BiSeNet(nn.Module):
    """`forward(x (B, 3, H, W) normalised RGB) -> (B, 19, H, W)` class scores."""

    def __init__(self) -> None:
        super().__init__()
        self.cp = ContextPath()
        self.ffm = FeatureFusion(256, 256)
        self.conv_out = OutputHead(256, 256, N_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feat8, context = self.cp(x)
        scores = self.conv_out(self.ffm(feat8, context))
        return F.interpolate(scores, x.shape[2:], mode="bilinear", align_corners=True)

    def labels(self, rgb: torch.Tensor) -> torch.Tensor:
        """int64 (B, H, W) class per pixel for uint8 RGB images (B, H, W, 3)."""
        mean = torch.tensor(MEAN, device=rgb.device).view(1, 3, 1, 1)
        std = torch.tensor(STD, device=rgb.device).view(1, 3, 1, 1)
        x = (rgb.permute(0, 3, 1, 2).float() / 255.0 - mean) / std
        return self(x).argmax(dim=1)


def load_parser(weights: Path, backbone: Path, device: str) -> BiSeNet:
    """BiSeNet with the backbone file, then the parser file, loaded; on `device`, eval mode, fp32 (MuseTalk
    parses in fp32 whatever the rest runs in)."""
    net = BiSeNet()
    state = {k: v for k, v in _read(backbone).items() if not k.startswith("fc.")}
    load_weights(net.cp.resnet, state, backbone, "a ResNet-18", PARSER_STEP)
    state = {k: v for k, v in _read(weights).items() if not k.startswith(TRAINING_ONLY)}
    load_weights(net, state, weights, "a face-parsing BiSeNet (79999_iter.pth)", PARSER_STEP)
    return net.to(device).eval()


def _read(path: Path):
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - unreadable for whatever reason: the file is named
        hint = f"get it with {PARSER_STEP}"
        raise ModelLoadError(f"cannot read weights: {brief(exc)}", path=path, hint=hint) from exc
    if not isinstance(state, dict) or not all(isinstance(k, str) for k in state):
        raise ModelLoadError(
            f"holds a {type(state).__name__}, not a state dict", path=path, hint=f"get it with {PARSER_STEP}"
        )
    return state
