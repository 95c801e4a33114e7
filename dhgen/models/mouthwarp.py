"""The embedded lip-sync model: no weights, deterministic, batched; closes the original mouth and opens a new one.

Per crop (the lower face, mouth near the centre; see `ModelSpec.crop_rect`):

1. *Neutralise*: inside a feathered mouth/jaw mask the live crop is replaced by the closed-mouth reference crop,
   relit with the live frame's low-frequency light (`ref * lowpass(live) / lowpass(ref)`, the mouth itself left
   out of the light estimate), so a template whose person talks no longer moves its lips on its own.
2. *Open*: a smooth vertical displacement field (`grid_sample`) drops the lower lip and jaw and lifts the upper
   lip a little; strongest at the lips, fading towards the chin, nose and sides, zero at the mask edge.
3. *Paint the interior*: the gap between the lips gets a soft, dark, slightly red mouth interior with a hint of
   upper teeth and tongue, lit like the live crop. Its height is proportional to the openness, so openness 0
   gives exactly the neutralised closed mouth.

The alpha is a fixed function of the crop size (it does not flicker with the openness): 0 on and near the crop
border, 255 over the mouth and jaw. Geometry is in fractions of the crop side, so any crop size works.

Tensor contract (shared by every model in `dhgen.models`, driven by `dhgen.inference.Predictor`):
`forward(crops, refs, cond) -> (patches, alphas)` with uint8 NHWC crops/refs/patches and uint8 NHW alphas.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

# --- geometry, in fractions of the crop side (x to the right, y down; pixel i has its centre at (i + 0.5) / S) --
LIP_X, LIP_Y = 0.50, 0.49  # centre of the line where the lips meet
MASK_CX, MASK_CY = 0.50, 0.60  # the neutralise/alpha mask: an ellipse over the mouth and the jaw ...
MASK_AX, MASK_AY = 0.44, 0.37  # ... with these semi-axes (it stays clear of the crop border) ...
MASK_CORE = 0.62  # ... fully opaque out to this fraction of its radius, smoothstep to 0 at the rim
LIGHT_HOLE_AX, LIGHT_HOLE_AY = 0.30, 0.13  # the mouth region left out of the light estimate

# --- motion at openness 1, in fractions of the crop side --------------------------------------------------------
JAW_DROP = 0.105  # the lower lip moves down this far
LIP_RAISE = 0.022  # the upper lip moves up this far
MOUTH_HALF_WIDTH = 0.215  # the opening fades out towards the mouth corners at this distance from the centre
LOWER_LIP = 0.07  # below the lip line this band moves rigidly with the lip ...
CHIN = 0.95  # ... and the motion fades to zero at this height
UPPER_FADE = 0.11  # above the lip line the lift fades out over this distance

# --- the mouth interior (BGR, at the reference brightness below; scaled by the local light) ----------------------
INTERIOR_BGR = (0.075, 0.07, 0.17)  # back of the mouth: dark, slightly red
TONGUE_BGR = (0.20, 0.19, 0.40)
TEETH_BGR = (0.70, 0.76, 0.80)
TEETH_HEIGHT = 0.028  # upper teeth band height (fraction of the crop side) when the mouth is wide open
REFERENCE_LUMA = 0.55  # a face lit at this luminance gets the colours above as they are
EDGE_SOFTNESS = 1.2  # anti-aliasing width of the interior's outline, pixels at 128


def smoothstep(edge0: float, edge1: float, x: torch.Tensor) -> torch.Tensor:
    t = ((x - edge0) / (edge1 - edge0)).clamp(0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def ellipse_radius(xs, ys, cx, cy, ax, ay) -> torch.Tensor:
    return torch.sqrt(((xs - cx) / ax) ** 2 + ((ys - cy) / ay) ** 2)


def lowpass(img: torch.Tensor, factor: int) -> torch.Tensor:
    """A smooth, heavily blurred copy: average-pool by `factor`, blur 3x3, upsample bilinearly."""
    size = img.shape[-2:]
    small = F.avg_pool2d(img, factor)
    small = F.avg_pool2d(F.pad(small, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    return F.interpolate(small, size=size, mode="bilinear", align_corners=False)


def relight(live: torch.Tensor, ref: torch.Tensor, weight: torch.Tensor, factor: int) -> torch.Tensor:
    """`ref` with the low-frequency light of `live`; pixels with weight 0 do not influence the estimate."""
    gain = (lowpass(live * weight, factor) + 1e-3) / (lowpass(ref * weight, factor) + 1e-3)
    return ref * gain.clamp(0.4, 2.5)


class MouthWarp(nn.Module):
    """Batched, weight-free mouth re-animation of `size` x `size` lower-face crops."""

    def __init__(self, size: int = 128) -> None:
        super().__init__()
        self.size = size
        coords = (torch.arange(size, dtype=torch.float32) + 0.5) / size
        ys, xs = torch.meshgrid(coords, coords, indexing="ij")
        mask = 1.0 - smoothstep(MASK_CORE, 1.0, ellipse_radius(xs, ys, MASK_CX, MASK_CY, MASK_AX, MASK_AY))
        hole = smoothstep(0.7, 1.0, ellipse_radius(xs, ys, LIP_X, LIP_Y, LIGHT_HOLE_AX, LIGHT_HOLE_AY))
        self.register_buffer("xs", xs[None, None], persistent=False)
        self.register_buffer("ys", ys[None, None], persistent=False)
        self.register_buffer("mask", mask[None, None], persistent=False)
        self.register_buffer("light_weight", hole[None, None], persistent=False)
        self.register_buffer("alpha", torch.round(mask * 255.0).to(torch.uint8), persistent=False)
        self.lowpass_factor = max(1, size // 16)

    def forward(self, crops: torch.Tensor, refs: torch.Tensor, cond: torch.Tensor):
        """uint8 (B, S, S, 3) crops and refs, float (B,) openness -> uint8 (B, S, S, 3) patches, (B, S, S) alphas."""
        live = crops.permute(0, 3, 1, 2).float() / 255.0
        ref = refs.permute(0, 3, 1, 2).float() / 255.0
        openness = cond.float().reshape(-1, 1, 1, 1).clamp(0.0, 1.0)
        neutral = relight(live, ref, self.light_weight, self.lowpass_factor)
        opened, top, bottom = self.open_jaw(neutral, openness)
        light = lowpass(live, self.lowpass_factor).mean(dim=1, keepdim=True)
        out = self.paint_interior(opened, top, bottom, openness, light)
        patches = (out * 255.0 + 0.5).clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1)
        return patches.contiguous(), self.alpha.expand(len(crops), -1, -1)

    def lateral(self) -> torch.Tensor:
        """How much of the full motion each column gets: 1 at the mouth centre, small at the corners."""
        return torch.exp(-(((self.xs - LIP_X) / MOUTH_HALF_WIDTH) ** 2) * 1.4)

    def open_jaw(self, img: torch.Tensor, openness: torch.Tensor):
        """Warp lips and jaw apart; returns the warped image and the inner lip edges (y fractions, B1HW)."""
        ys = self.ys
        side = self.lateral() * self.mask
        fall = 0.5 + 0.5 * torch.cos(math.pi * smoothstep(LIP_Y + LOWER_LIP, CHIN, ys))
        drop = JAW_DROP * openness * side * fall
        lift = LIP_RAISE * openness * side * (1.0 - smoothstep(0.0, UPPER_FADE, LIP_Y - ys))
        # Backward map: each output row reads the source row the motion brought there; rows inside the gap read
        # the lip line itself, so the opening starts from the lips' own seam colour before it is painted over.
        src_y = torch.where(ys >= LIP_Y, (ys - drop).clamp(min=LIP_Y), (ys + lift).clamp(max=LIP_Y))
        grid = torch.stack([self.xs.expand_as(src_y), src_y], dim=-1)[:, 0] * 2.0 - 1.0
        warped = F.grid_sample(img, grid, mode="bilinear", padding_mode="border", align_corners=False)
        lip_side = self.lateral()
        return warped, LIP_Y - LIP_RAISE * openness * lip_side, LIP_Y + JAW_DROP * openness * lip_side

    def paint_interior(self, img, top, bottom, openness, light):
        """Blend a dark mouth interior (teeth, tongue hints) into the gap between `top` and `bottom`."""
        ys, size = self.ys, self.size
        soft = EDGE_SOFTNESS / 128.0 * max(1.0, 128.0 / size)
        inside = (torch.minimum(ys - top, bottom - ys) / soft).clamp(0.0, 1.0)
        height = (bottom - top).clamp(min=1e-6)
        t = ((ys - top) / height).clamp(0.0, 1.0)  # 0 at the upper lip, 1 at the lower lip
        centre = torch.exp(-(((self.xs - LIP_X) / MOUTH_HALF_WIDTH) ** 2) * 2.0)
        colour = self.colour(INTERIOR_BGR, img) * (0.55 + 0.45 * (1.0 - centre * (1.0 - t) * t * 4.0))
        tongue = smoothstep(0.55, 1.0, t) * centre * smoothstep(0.3, 1.0, openness) * 0.8
        colour = torch.lerp(colour, self.colour(TONGUE_BGR, img), tongue)
        teeth_rows = (TEETH_HEIGHT * smoothstep(0.15, 0.8, openness) - (ys - top)) / soft
        teeth = teeth_rows.clamp(0.0, 1.0) * smoothstep(0.2, 0.9, centre) * 0.85
        colour = torch.lerp(colour, self.colour(TEETH_BGR, img), teeth)
        lit = colour * (light / REFERENCE_LUMA).clamp(0.25, 1.6)
        return torch.lerp(img, lit, inside)

    @staticmethod
    def colour(bgr, like: torch.Tensor) -> torch.Tensor:
        return torch.tensor(bgr, dtype=like.dtype, device=like.device).reshape(1, 3, 1, 1)


def build_model(options, device: str) -> MouthWarp:
    """The model for `dhgen.inference.load_predictor` (no checkpoint: `options` only selects the crop size)."""
    from dhgen.models import get_spec

    return MouthWarp(get_spec("mouthwarp").crop_size).to(device).eval()
