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
JAW_DROP = 0.13  # the lower lip moves down this far
LIP_RAISE = 0.022  # the upper lip moves up this far
MOUTH_HALF_WIDTH = 0.25  # the lips part over this distance either side of the centre ...
LIP_PROFILE = 1.3  # ... with this profile: (1 - (dx / MOUTH_HALF_WIDTH)^2)^LIP_PROFILE
JAW_HALF_WIDTH = 0.26  # below the lower lip the motion fades sideways like exp(-(dx / JAW_HALF_WIDTH)^2)
LOWER_LIP = 0.07  # below the lip line this band moves rigidly with the lip ...
CHIN = 0.95  # ... and the motion fades to zero at this height
UPPER_FADE = 0.11  # above the lip line the lift fades out over this distance

# --- the mouth interior (BGR, at the reference brightness below; scaled by the local light) ----------------------
INTERIOR_BGR = (0.075, 0.08, 0.19)  # back of the mouth: dark, slightly red
TONGUE_BGR = (0.22, 0.25, 0.50)
TEETH_BGR = (0.70, 0.76, 0.80)
TEETH_HEIGHT = 0.028  # upper teeth band height (fraction of the crop side) when the mouth is wide open
REFERENCE_LUMA = 0.55  # a face lit at this luminance gets the colours above as they are
EDGE_SOFTNESS = 1.6  # anti-aliasing width of the interior's outline, in pixels
LIGHT_GRID = 16  # the light is compared on a LIGHT_GRID x LIGHT_GRID grid of cells (8 px cells at 128)


def smoothstep(edge0: float, edge1: float, x: torch.Tensor) -> torch.Tensor:
    t = ((x - edge0) / (edge1 - edge0)).clamp(0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def ellipse_radius(xs, ys, cx, cy, ax, ay) -> torch.Tensor:
    return torch.sqrt(((xs - cx) / ax) ** 2 + ((ys - cy) / ay) ** 2)


def blur3(small: torch.Tensor) -> torch.Tensor:
    return F.avg_pool2d(F.pad(small, (1, 1, 1, 1), mode="replicate"), 3, stride=1)


def lip_lateral(xs: torch.Tensor) -> torch.Tensor:
    """The share of the lips' motion each column gets: 1 at the centre, 0 beyond the mouth corners."""
    return (1.0 - ((xs - LIP_X) / MOUTH_HALF_WIDTH).clamp(-1.0, 1.0) ** 2) ** LIP_PROFILE


def row_band(active: torch.Tensor) -> tuple[int, int]:
    """First and one-past-last row index where a (S, S) boolean map has any True."""
    rows = torch.nonzero(active.any(dim=1)).flatten()
    return int(rows.min()), int(rows.max()) + 1


class MouthWarp(nn.Module):
    """Batched, weight-free mouth re-animation of `size` x `size` lower-face crops.

    Everything that depends only on the crop size (mask, motion profiles, the row bands the motion and the
    interior can reach) is computed once here; a forward pass then touches those bands only.
    """

    def __init__(self, size: int = 128) -> None:
        super().__init__()
        self.size = size
        coords = (torch.arange(size, dtype=torch.float32) + 0.5) / size
        ys, xs = torch.meshgrid(coords, coords, indexing="ij")
        mask = 1.0 - smoothstep(MASK_CORE, 1.0, ellipse_radius(xs, ys, MASK_CX, MASK_CY, MASK_AX, MASK_AY))
        hole = smoothstep(0.7, 1.0, ellipse_radius(xs, ys, LIP_X, LIP_Y, LIGHT_HOLE_AX, LIGHT_HOLE_AY))
        self._buffer("alpha", torch.round(mask * 255.0).to(torch.uint8))
        self._buffer("light_weight", F.adaptive_avg_pool2d(hole[None, None], 2 * LIGHT_GRID))
        self._motion_maps(xs, ys, mask)
        self._interior_maps(coords)

    def _buffer(self, name: str, value: torch.Tensor) -> None:
        self.register_buffer(name, value.contiguous(), persistent=False)

    def _motion_maps(self, xs, ys, mask) -> None:
        """Per-pixel lip/jaw displacement at openness 1, over the rows where it is non-zero."""
        lips = lip_lateral(xs)
        jaw = torch.exp(-(((xs - LIP_X) / JAW_HALF_WIDTH) ** 2))
        side = torch.lerp(lips, jaw, smoothstep(LIP_Y + 0.02, LIP_Y + LOWER_LIP + 0.04, ys)) * mask
        fall = 0.5 + 0.5 * torch.cos(math.pi * smoothstep(LIP_Y + LOWER_LIP, CHIN, ys))
        drop = torch.where(ys >= LIP_Y, JAW_DROP * side * fall, 0.0)
        lift = torch.where(ys < LIP_Y, LIP_RAISE * side * (1.0 - smoothstep(0.0, UPPER_FADE, LIP_Y - ys)), 0.0)
        r0, r1 = row_band((drop > 0) | (lift > 0))
        self.warp_rows = (r0, r1)
        self._buffer("warp_xs", xs[None, None, r0:r1])
        self._buffer("warp_ys", ys[None, None, r0:r1])
        self._buffer("drop", drop[None, None, r0:r1])
        self._buffer("lift", lift[None, None, r0:r1])

    def _interior_maps(self, coords) -> None:
        """Column profiles of the opening and the rows the interior can cover at openness 1."""
        xs = coords[None, None, None, :]
        self._buffer("lip_profile", lip_lateral(xs))
        self._buffer("centre", torch.exp(-(((xs - LIP_X) / MOUTH_HALF_WIDTH) ** 2) * 2.5))
        soft = EDGE_SOFTNESS / self.size
        reach = (coords > LIP_Y - LIP_RAISE - soft) & (coords < LIP_Y + JAW_DROP + soft)
        r0, r1 = row_band(reach[:, None])
        self.paint_rows = (r0, r1)
        self._buffer("paint_ys", coords[None, None, r0:r1, None])
        for name, bgr in (("interior_bgr", INTERIOR_BGR), ("tongue_bgr", TONGUE_BGR), ("teeth_bgr", TEETH_BGR)):
            self._buffer(name, torch.tensor(bgr, dtype=torch.float32).reshape(1, 3, 1, 1))

    def forward(self, crops: torch.Tensor, refs: torch.Tensor, cond: torch.Tensor):
        """uint8 (B, S, S, 3) crops and refs, float (B,) openness -> uint8 (B, S, S, 3) patches, (B, S, S) alphas."""
        live = crops.permute(0, 3, 1, 2).float().div_(255.0)
        ref = refs.permute(0, 3, 1, 2).float().div_(255.0)
        openness = cond.float().reshape(-1, 1, 1, 1).clamp(0.0, 1.0)
        gain, light = self.light(live, ref)
        out = self.open_jaw(ref.mul_(gain), openness)
        self.paint_interior(out, openness, light)
        patches = out.mul_(255.0).add_(0.5).clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1)
        return patches.contiguous(), self.alpha[None]  # one alpha for the whole batch

    def light(self, live: torch.Tensor, ref: torch.Tensor):
        """Low-frequency gain ref -> live (the mouth left out of the estimate) and the live luminance, full size.

        Both crops are averaged onto a 2*LIGHT_GRID grid first; the mouth weight is applied there (close enough
        to weighting full-size pixels for an 8-pixel light grid, and it keeps the full-size work to one pass).
        """
        w = self.light_weight
        live2, ref2 = (F.adaptive_avg_pool2d(t, 2 * LIGHT_GRID) for t in (live, ref))
        cells = [F.avg_pool2d(t, 2) for t in (live2 * w, ref2 * w, live2)]
        live_w, ref_w, plain = (blur3(c) for c in cells)
        gain = ((live_w + 1e-3) / (ref_w + 1e-3)).clamp(0.4, 2.5)
        small = torch.cat([gain, plain.mean(dim=1, keepdim=True)], dim=1)
        full = F.interpolate(small, size=live.shape[-2:], mode="bilinear", align_corners=False)
        return full[:, :3], full[:, 3:]

    def open_jaw(self, img: torch.Tensor, openness: torch.Tensor) -> torch.Tensor:
        """Warp lips and jaw apart (backward map over the rows that move), in place; returns `img`."""
        r0, r1 = self.warp_rows
        ys = self.warp_ys
        # Each output row reads the source row the motion brought there; rows inside the gap read the lip line
        # itself, so the opening starts from the lips' own seam colour before the interior is painted over it.
        src_y = torch.where(
            ys >= LIP_Y, (ys - self.drop * openness).clamp(min=LIP_Y), (ys + self.lift * openness).clamp(max=LIP_Y)
        )
        grid = torch.stack([self.warp_xs.expand_as(src_y), src_y], dim=-1)[:, 0] * 2.0 - 1.0
        band = F.grid_sample(img, grid, mode="bilinear", padding_mode="border", align_corners=False)
        img[:, :, r0:r1] = band
        return img

    def paint_interior(self, img: torch.Tensor, openness: torch.Tensor, light: torch.Tensor) -> None:
        """Blend, in place, a dark mouth interior (teeth and tongue hints) into the gap between the lips."""
        r0, r1 = self.paint_rows
        ys, centre = self.paint_ys, self.centre
        top = LIP_Y - LIP_RAISE * openness * self.lip_profile
        bottom = LIP_Y + JAW_DROP * openness * self.lip_profile
        soft = EDGE_SOFTNESS / self.size
        inside = (torch.minimum(ys - top, bottom - ys) / soft).clamp(0.0, 1.0)
        height = (bottom - top).clamp(min=1e-6)
        t = ((ys - top) / height).clamp(0.0, 1.0)  # 0 at the upper lip, 1 at the lower lip
        # Darkest in the corners and just under the upper teeth; lighter and redder towards the tongue.
        colour = self.interior_bgr * (0.6 + 0.4 * centre) * (0.8 + 0.5 * t * centre)
        tongue = smoothstep(0.5, 1.0, t) * centre * smoothstep(0.2, 1.0, openness) * 0.7
        colour = torch.lerp(colour, self.tongue_bgr, tongue)
        teeth_height = torch.minimum(TEETH_HEIGHT * smoothstep(0.1, 0.7, openness), 0.35 * height)
        teeth = ((teeth_height - (ys - top)) / soft).clamp(0.0, 1.0) * smoothstep(0.15, 0.8, centre) * 0.9
        colour = torch.lerp(colour, self.teeth_bgr.expand_as(colour), teeth)
        lit = colour * (light[:, :, r0:r1] / REFERENCE_LUMA).clamp(0.25, 1.6)
        band = img[:, :, r0:r1]
        band.copy_(torch.lerp(band, lit, inside))


def build_model(options, device: str) -> MouthWarp:
    """The model for `dhgen.inference.load_predictor` (no checkpoint: `options` only selects the crop size)."""
    from dhgen.models import get_spec

    return MouthWarp(get_spec("mouthwarp").crop_size).to(device).eval()
