"""The embedded lip-sync model's maths: numpy + OpenCV, no weights, no torch; runs on the CPU everywhere.

Per crop (the lower face; see `MouthWarpFamily.crop_rect`), given the avatar's closed-mouth reference crop:

1. *Find the mouth* in the reference, once per reference (`find_mouth`): the lip seam as a curve (tilt and
   smile included), the mouth's centre and width, and whether the reference already shows its upper teeth.
   Haar boxes put the mouth anywhere from 0.38 to 0.55 of the crop's height, so nothing below assumes a fixed
   lip line.
2. *Neutralise*: inside a feathered mouth/jaw mask the live crop is replaced by the reference, relit with the
   live frame's low-frequency light (`ref * lowpass(live) / lowpass(ref)`, the mouth left out of the estimate),
   so a template whose person talks no longer moves its lips on its own.
3. *Open*: a smooth vertical displacement (`cv2.remap`) drops the lower lip and jaw and lifts the upper lip,
   strongest at the lips, fading towards the chin, the nose and the corners, zero at the mask's edge.
4. *Paint the inside* of the gap: a dark cavity coloured from the face's own skin and light (a dark red of
   this face, not black), shaded darker in the corners and under the upper lip, upper teeth (narrower than the
   mouth, fading into the corners) once the mouth is open enough, and a tongue rising from the lower lip on
   wide openings; anti-aliased edges and a thin inner-lip shadow. The opening's shape follows the openness:
   a narrow slit with pointed corners when barely open, a rounder, taller oval when wide open.

Steps 1, 3 and 4 depend only on the reference and the openness, so the opened reference is made once per
reference and openness level (LEVELS steps) and kept; per crop there is only the light estimate of step 2 and
one multiply (~0.3 ms on one core). Openness 0 gives exactly the neutralised closed mouth. The alpha is a fixed
function of the crop size (it does not flicker with the openness or the reference): 0 on and near the crop
border, 255 over the mouth and jaw. Geometry is in fractions of the crop side, so any crop size works.

Predictor (`dhgen.models.Predictor`): `predict(CropBatch) -> PatchBatch`, uint8 BGR crops, refs and patches,
one uint8 alpha for the batch. The result depends only on each (crop, reference, openness), never on the batch.
"""

from __future__ import annotations

import hashlib
import logging
from collections import OrderedDict
from dataclasses import dataclass

import cv2
import numpy as np

from dhgen.models.batches import CropBatch, PatchBatch

log = logging.getLogger(__name__)

# --- the mask, in fractions of the crop side (x to the right, y down; pixel i has its centre at (i + 0.5) / S) --
MASK_CX, MASK_CY = 0.50, 0.57  # the neutralise/alpha mask: an ellipse over the mouth and the jaw ...
MASK_AX, MASK_AY = 0.45, 0.365  # ... with these semi-axes (it stays clear of the crop border and the nose) ...
MASK_CORE = 0.80  # ... fully opaque out to this fraction of its radius, smoothstep to 0 at the rim

# --- where the mouth may be (find_mouth searches here and clamps to these) ---------------------------------------
DEFAULT_SEAM_Y = 0.49  # the lip line when the reference shows no clear mouth
SEAM_RANGE = (0.36, 0.58)  # the seam's height at the mouth's centre
CX_RANGE = (0.40, 0.60)
HALF_WIDTH_RANGE = (0.15, 0.27)  # half the mouth's width
DEFAULT_HALF_WIDTH = 0.22
MAX_TILT = 0.35  # seam height change from the centre to a corner, in half-widths (a tilted head)
MAX_CURVE = 0.25  # ... and its bend (a smile lifts the corners)
SEAM_KERNEL = 0.10  # dark lines thinner than this (the seam) stand out in a black-hat filter
TEETH_REACH = 0.11  # upper teeth seen in the reference below its seam, at most this tall

# --- motion at openness 1, in fractions of the crop side ---------------------------------------------------------
JAW_DROP = 0.13  # the lower lip moves down this far
LIP_RAISE = 0.025  # the upper lip moves up this far
JAW_HALF_WIDTH = 0.26  # below the lower lip the motion fades sideways like exp(-(dx / JAW_HALF_WIDTH)^2)
LOWER_LIP = 0.07  # below the seam this band moves rigidly with the lip ...
CHIN = 0.95  # ... and the motion fades to zero at this height
UPPER_FADE = 0.11  # above the seam the lift fades out over this distance
SLIT_PROFILE, ROUND_PROFILE = 1.6, 0.55  # lateral profile exponent of the opening, barely open -> wide open

# --- the inside, as multiples of the face's local skin colour (BGR), so it is lit and tinted like the face -----
CAVITY = (0.20, 0.20, 0.35)  # back of the mouth: a dark red of this face
TONGUE = (0.60, 0.60, 0.92)
TEETH = (0.86, 0.93, 0.96)  # of the skin's luminance (teeth are not skin coloured), slightly warm
TEETH_HEIGHT = 0.034  # painted upper teeth when the mouth is wide open (less when it is small)
TEETH_HALF_WIDTH = 0.70  # the teeth arch spans this share of the mouth's width
TONGUE_HEIGHT = 0.5  # share of the opening's height the tongue rises into, at openness 1 ...
TONGUE_HALF_WIDTH = 0.6  # ... over this share of the mouth's width
TOOTH_WIDTH = 0.26  # a front tooth's width, in half-widths of the mouth
EDGE_SOFTNESS = 1.3  # anti-aliasing width of the opening's outline, in pixels of a 128 crop
LIP_SHADOW = 0.22  # inner-lip shadow next to the opening, and its reach in pixels of a 128 crop:
LIP_SHADOW_REACH = 2.5
LIGHT_GRID = 16  # light is compared on a LIGHT_GRID x LIGHT_GRID grid (8 px cells at 128) ...
GAIN_BLUR, SKIN_BLUR = 1.2, 2.0  # ... smoothed over this many cells for the gain and for the skin colour ...
LIGHT_HOLE = (0.10, 0.17, 0.03)  # ... leaving out the mouth: the half-width plus this, this high, this much
# lower than the seam (a talking template's own mouth opens mostly downwards; it must not dim the relit face)
LUMA_SUM = np.ones(3, np.float32)  # brightness of a cell: the sum of its channels
GEOMETRY_CACHE = 8  # references whose geometry is kept (one per avatar in flight; up to ~3.5 MB each)
LEVELS = 64  # openness is applied in steps of 1/LEVELS (a step moves the lower lip 0.24 px of a 128 crop)


def smoothstep(edge0: float, edge1, x):
    t = np.clip((x - edge0) / (edge1 - edge0), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def centres(size: int) -> np.ndarray:
    """Pixel centres as fractions of the side: (i + 0.5) / size, float32."""
    return ((np.arange(size, dtype=np.float32) + 0.5) / size).astype(np.float32)


def alpha_mask(size: int) -> np.ndarray:
    """The paste mask: uint8 (size, size), an ellipse over mouth and jaw, feathered, 0 near the border."""
    c = centres(size)
    ys, xs = np.meshgrid(c, c, indexing="ij")
    r = np.sqrt(((xs - MASK_CX) / MASK_AX) ** 2 + ((ys - MASK_CY) / MASK_AY) ** 2)
    return np.round((1.0 - smoothstep(MASK_CORE, 1.0, r)) * 255.0).astype(np.uint8)


def _ramps(x: np.ndarray, lo0: float, lo1: float, hi1: float, hi0: float) -> np.ndarray:
    """0 below lo0, rising to 1 at lo1, 1 up to hi1, falling to 0 at hi0 (linear ramps: cheap per crop)."""
    return np.minimum(np.maximum(np.minimum((x - lo0) / (lo1 - lo0), (hi0 - x) / (hi0 - hi1)), 0.0), 1.0)


def _blur(a: np.ndarray, sigma: float) -> np.ndarray:
    return cv2.GaussianBlur(a, (0, 0), sigma, borderType=cv2.BORDER_REPLICATE)


def upper_lift(openness: float) -> float:
    """The upper lip lifts late: hardly for a small opening, most on a wide one."""
    return float(openness) ** 1.5


# --- 1. the mouth in the reference ------------------------------------------------------------------------------


@dataclass(frozen=True)
class MouthShape:
    """Where a reference crop's mouth is, in fractions of the crop side.

    The seam (where the lips meet, or the lower edge of upper teeth the reference already shows) is the curve
    y = seam + half_width * (tilt * u + curve * u^2) with u = (x - cx) / half_width, from corner (u = -1) to
    corner (u = 1).
    """

    cx: float = 0.5
    half_width: float = DEFAULT_HALF_WIDTH
    seam: float = DEFAULT_SEAM_Y
    tilt: float = 0.0
    curve: float = 0.0
    teeth: float = 0.0  # height of upper teeth visible in the reference (0: lips closed)

    def seam_at(self, xs: np.ndarray) -> np.ndarray:
        u = np.clip((xs - self.cx) / self.half_width, -1.5, 1.5)
        return self.seam + self.half_width * (self.tilt * u + self.curve * u * u)


def find_mouth(ref: np.ndarray) -> MouthShape:
    """The mouth of a BGR uint8 reference crop: its seam curve, centre, width and visible upper teeth.

    The seam is the strongest thin dark horizontal line in the lower face (a black-hat filter), traced column
    by column and fitted with a quadratic; columns where it is strong give the mouth's corners. Where bright,
    unsaturated pixels (teeth) lie just under it, the seam moves to their lower edge, so a smiling reference
    opens below its own teeth. A reference with no clear mouth gets the default shape.
    """
    size = ref.shape[0]
    gray = cv2.cvtColor(ref, cv2.COLOR_BGR2GRAY).astype(np.float32)
    kernel = cv2.getStructuringElement(cv2.MORPH_RECT, (1, max(3, int(SEAM_KERNEL * size) | 1)))
    dark = cv2.GaussianBlur(cv2.morphologyEx(gray, cv2.MORPH_BLACKHAT, kernel), (0, 0), size / 128)
    r0, r1 = int(SEAM_RANGE[0] * size) - int(0.05 * size), int(SEAM_RANGE[1] * size) + int(0.05 * size)
    c0, c1 = int(0.15 * size), int(0.85 * size)
    window = dark[r0:r1, c0:c1]
    rows = cv2.medianBlur(np.ascontiguousarray(window.argmax(axis=0)[None] + r0, np.uint8), 5)[0]  # no strays
    strength = window.max(axis=0)
    mid = strength[int(0.3 * len(strength)) : int(0.7 * len(strength))]
    contrast = max(6.0, 0.06 * float(np.median(gray)))  # a seam darker than its surroundings by this much
    strong = strength > max(contrast, 0.45 * float(np.median(mid)))
    if strong.sum() < max(4, size // 16):
        return MouthShape()
    lo, hi = _central_run(np.flatnonzero(strong), len(strength) // 2)
    xs = (np.arange(lo, hi + 1) + c0 + 0.5) / size
    ys = (rows[lo : hi + 1].astype(np.float32) + 0.5) / size
    teeth = _teeth_below(ref, rows[lo : hi + 1], lo + c0)
    return _fit_shape(xs, ys + teeth, strength[lo : hi + 1], float(np.percentile(teeth, 75)))


def _central_run(cols: np.ndarray, centre: int) -> tuple[int, int]:
    """First and last column of the run of strong columns (gaps of up to 3 bridged) nearest the centre."""
    breaks = np.flatnonzero(np.diff(cols) > 4)
    starts, ends = cols[np.r_[0, breaks + 1]], cols[np.r_[breaks, len(cols) - 1]]
    distance = np.maximum(0, np.maximum(starts - centre, centre - ends))
    best = int(np.argmin(distance * 1000 - (ends - starts)))  # nearest the centre; the longer of equals
    return int(starts[best]), int(ends[best])


def _teeth_below(ref: np.ndarray, rows: np.ndarray, first_col: int) -> np.ndarray:
    """Per seam column, the height (fraction of the side) of the teeth the reference shows under the seam."""
    size = ref.shape[0]
    ycc = cv2.cvtColor(ref, cv2.COLOR_BGR2YCrCb).astype(np.float32)
    skin = ycc[int(0.62 * size) : int(0.82 * size), int(0.3 * size) : int(0.7 * size)].reshape(-1, 3)
    skin_y, skin_cr = np.median(skin[:, 0]), np.median(skin[:, 1])
    toothy = (ycc[..., 0] > 0.95 * skin_y) & (ycc[..., 1] < skin_cr - 3)
    reach, gap = int(TEETH_REACH * size), max(1, size // 32)
    heights = np.zeros(len(rows), np.float32)
    for k, row in enumerate(rows):
        run = toothy[row + 1 : row + 1 + reach, first_col + k]
        hits = np.flatnonzero(run)
        if hits.size and hits[0] <= gap:
            ends = np.flatnonzero(np.diff(hits) > 1)
            last = hits[ends[0]] if ends.size else hits[-1]
            heights[k] = (last + 1) / size if last - hits[0] >= 1 else 0.0
    return heights


def _fit_shape(xs: np.ndarray, ys: np.ndarray, weights: np.ndarray, teeth: float) -> MouthShape:
    """A quadratic seam through (xs, ys), weighted, with every parameter clamped to a plausible mouth."""
    cx = float(np.clip((xs[0] + xs[-1]) / 2, *CX_RANGE))
    half_width = float(np.clip((xs[-1] - xs[0]) / 2, *HALF_WIDTH_RANGE))
    u = (xs - cx) / half_width
    basis = np.stack([np.ones_like(u), u, u * u], axis=1) * np.sqrt(weights)[:, None]
    seam, tilt, curve = np.linalg.lstsq(basis, ys * np.sqrt(weights), rcond=None)[0]
    return MouthShape(
        cx=cx,
        half_width=half_width,
        seam=float(np.clip(seam, *SEAM_RANGE)),
        tilt=float(np.clip(tilt / half_width, -MAX_TILT, MAX_TILT)),
        curve=float(np.clip(curve / half_width, -MAX_CURVE, MAX_CURVE)),
        teeth=float(np.clip(teeth, 0.0, TEETH_REACH)),
    )


# --- per reference: everything that depends only on the reference and the openness ------------------------------


class Geometry:
    """What one reference crop's mouth needs, made once: the reference's side of the light estimate, the
    motion's building blocks, and the reference opened at each openness level as it is asked for."""

    def __init__(self, ref: np.ndarray, shape: MouthShape, mask: np.ndarray) -> None:
        self.size = size = ref.shape[0]
        self.shape = shape
        c = centres(size)
        self.seam = shape.seam_at(c).astype(np.float32)  # (S,) seam height per column
        self.u = ((c - shape.cx) / shape.half_width).astype(np.float32)
        self._light(ref, c)
        self._motion(c, mask)
        self._opened: dict[int, np.ndarray] = {}

    def _light(self, ref: np.ndarray, c: np.ndarray) -> None:
        """The reference's side of the light estimate (see `MouthWarp.light`), on the G grid, and its skin
        colour at full size (a weighted blur: the mouth takes the colour of the skin around it)."""
        g = (LIGHT_GRID, LIGHT_GRID)
        self.ref = np.ascontiguousarray(ref)
        self.neutral = ref.astype(np.float32)
        self.light_cells = cv2.resize(self._light_weight(c), g, interpolation=cv2.INTER_AREA)
        self.light_total = float(self.light_cells.sum())
        self.ref_cells = cv2.resize(self.neutral, g, interpolation=cv2.INTER_AREA)  # mean colour per cell
        self.ref_luma = self.ref_cells @ LUMA_SUM + 1.0
        norm = np.maximum(_blur(self.light_cells, SKIN_BLUR), 1e-4)[..., None]
        skin = _blur(self.ref_cells * self.light_cells[..., None], SKIN_BLUR) / norm
        self.ref_skin = cv2.resize(skin, (self.size, self.size), interpolation=cv2.INTER_LINEAR)

    def _light_weight(self, c: np.ndarray) -> np.ndarray:
        """(S, S) weights of the light estimate: 0 over the mouth (the live one moves), 1 elsewhere."""
        xs, ys = c[None, :], c[:, None]
        ax, ay = self.shape.half_width + LIGHT_HOLE[0], LIGHT_HOLE[1]
        r = np.sqrt(((xs - self.shape.cx) / ax) ** 2 + ((ys - self.seam[None, :] - LIGHT_HOLE[2]) / ay) ** 2)
        return smoothstep(0.7, 1.0, r).astype(np.float32)

    def _motion(self, c: np.ndarray, mask: np.ndarray) -> None:
        """Rows the motion can reach and, over them, the displacement at openness 1 in pixels, split into the
        part the lips' lateral profile scales (it changes shape with the openness) and the jaw's part."""
        size = self.size
        ys = c[:, None]
        top = max(0, int((self.seam.min() - UPPER_FADE) * size) - 1)
        bottom = min(size, int(CHIN * size) + 1)
        self.rows = (top, bottom)
        ys = ys[top:bottom]
        d = ys - self.seam[None, :]  # height above (<0) or below (>0) the seam
        m = mask[top:bottom].astype(np.float32) / 255.0
        to_jaw = smoothstep(0.02, LOWER_LIP + 0.04, d)  # 0 at the lips, 1 down the jaw
        jaw = np.exp(-(((c - self.shape.cx) / JAW_HALF_WIDTH) ** 2))[None, :]
        fall = 0.5 + 0.5 * np.cos(np.pi * smoothstep(self.seam[None, :] + LOWER_LIP, CHIN, ys))
        down = np.where(d >= 0, JAW_DROP * size * fall, 0.0)
        up = np.where(d < 0, LIP_RAISE * size * (1.0 - smoothstep(0.0, UPPER_FADE, -d)), 0.0)
        f32 = np.float32
        self.drop_lips, self.drop_jaw = f32((1 - to_jaw) * m * down), f32(to_jaw * jaw * m * down)
        self.lift_lips, self.lift_jaw = f32((1 - to_jaw) * m * up), f32(to_jaw * jaw * m * up)
        self.map_x = np.ascontiguousarray(np.broadcast_to(np.arange(size, dtype=f32)[None, :], d.shape))
        self.map_y = f32(ys * size - 0.5 + np.zeros_like(d))  # the identity, in pixels
        # Rows below the seam read from no higher than the seam, rows above from no lower.
        seam_px = f32(self.seam * size - 0.5)[None, :]
        self.floor = f32(np.where(d >= 0, seam_px, -np.inf))
        self.ceiling = f32(np.where(d < 0, seam_px, np.inf))

    def lips(self, openness: float) -> np.ndarray:
        """(S,) share of the lips' motion per column at this openness: 1 at the centre, 0 at the corners;
        pointed when barely open, rounder when wide open."""
        p = SLIT_PROFILE + (ROUND_PROFILE - SLIT_PROFILE) * float(smoothstep(0.0, 1.0, openness))
        width = 0.85 + 0.15 * openness  # the corners spread a little as the jaw drops
        return (1.0 - np.clip(self.u / np.float32(width), -1.0, 1.0) ** 2) ** np.float32(p)

    def opened(self, level: int) -> np.ndarray:
        """The reference with its mouth opened to openness level / LEVELS, uint8 (computed once, then kept)."""
        image = self._opened.get(level)
        if image is None:
            image = self._opened[level] = open_mouth(self, level / LEVELS)
        return image


def open_mouth(geo: Geometry, openness: float) -> np.ndarray:
    """The reference with the lips and jaw warped apart by `openness` and the inside painted, uint8."""
    if openness <= 0:
        return geo.ref
    lips = geo.lips(openness)
    out = warp_apart(geo, openness, lips)
    paint_inside(out, geo, openness, lips)
    return cv2.convertScaleAbs(out)  # rounds and saturates (out >= 0)


def warp_apart(geo: Geometry, openness: float, lips: np.ndarray) -> np.ndarray:
    """The reference, float32, its lips and jaw moved apart (a backward map over the rows that move).

    Each output row reads the source row the motion brought there; rows inside the gap read the seam itself,
    so the opening starts from the lips' own seam colour before the inside is painted over it.
    """
    drop = (geo.drop_lips * lips[None, :] + geo.drop_jaw) * np.float32(openness)
    lift = (geo.lift_lips * lips[None, :] + geo.lift_jaw) * np.float32(upper_lift(openness))
    map_y = np.minimum(np.maximum(geo.map_y - drop + lift, geo.floor), geo.ceiling)
    out = geo.neutral.copy()
    top, bottom = geo.rows
    out[top:bottom] = cv2.remap(out, geo.map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    return out


def paint_inside(out: np.ndarray, geo: Geometry, openness: float, lips: np.ndarray) -> None:
    """Blend, in place, the mouth's inside into the gap between the lips, and the lips' inner shadow around it
    (over the rows and columns these can reach)."""
    size = geo.size
    upper = geo.seam - np.float32(LIP_RAISE * upper_lift(openness)) * lips  # (S,) the gap's edges
    lower = geo.seam + np.float32(JAW_DROP * openness) * lips
    cols = np.flatnonzero(lower - upper > 0.25 / size)
    if cols.size == 0:
        return
    c0, c1 = int(cols[0]), int(cols[-1]) + 1
    reach = (LIP_SHADOW_REACH + 2) / 128
    r0 = max(0, int((upper[c0:c1].min() - reach) * size))
    r1 = min(size, int(np.ceil((lower[c0:c1].max() + reach) * size)) + 1)
    gap = Gap(centres(size)[r0:r1, None], upper[None, c0:c1], lower[None, c0:c1], geo.u[None, c0:c1])
    cover = cv2.GaussianBlur(gap.inside(), (3, 3), 0.6)[..., None]
    skin = geo.ref_skin[r0:r1, c0:c1]
    skin_part, luma_part = inside_parts(gap, openness, geo.shape.teeth)
    inside = skin * skin_part + cv2.cvtColor(skin, cv2.COLOR_BGR2GRAY)[..., None] * luma_part
    region = out[r0:r1, c0:c1]
    out[r0:r1, c0:c1] = region * gap.lip_shadow(openness)[..., None] * (1.0 - cover) + inside * cover


@dataclass(frozen=True)
class Gap:
    """The opening between the lips over a region: rows `ys` (R, 1), its edges and lateral position (1, C),
    all in fractions of the crop side (u: -1 and 1 at the mouth's corners)."""

    ys: np.ndarray
    top: np.ndarray
    bottom: np.ndarray
    u: np.ndarray

    def inside(self) -> np.ndarray:
        """Coverage of each pixel by the opening, anti-aliased over EDGE_SOFTNESS pixels (of a 128 crop)."""
        distance = np.minimum(self.ys - self.top, self.bottom - self.ys) * np.float32(128 / EDGE_SOFTNESS)
        return np.clip(distance + 0.5, 0.0, 1.0)

    def lip_shadow(self, openness: float) -> np.ndarray:
        """The lips' inner edges turn into the mouth: a thin shadow just outside the gap, fading to the corners."""
        outside = np.maximum(np.maximum(self.top - self.ys, self.ys - self.bottom) * 128, 0.0)
        strength = LIP_SHADOW * min(1.0, 4.0 * openness) * np.clip(1.0 - self.u * self.u, 0.0, 1.0)
        return 1.0 - strength * np.exp(-outside / LIP_SHADOW_REACH)


def inside_parts(gap: Gap, openness: float, ref_teeth: float) -> tuple[np.ndarray, np.ndarray]:
    """The mouth's inside over the gap's region, as multiples of the local skin colour (cavity, tongue) and
    of its luminance (teeth), so it is lit and tinted like the face around it."""
    height = np.maximum(gap.bottom - gap.top, 1e-4)
    t = np.clip((gap.ys - gap.top) / height, 0.0, 1.0)  # 0 at the upper lip, 1 at the lower lip
    across = np.clip(1.0 - gap.u * gap.u, 0.0, 1.0)  # 1 at the centre, 0 at the corners
    # Cavity: darkest in the corners and right under the upper lip, lighter towards the lower lip.
    skin_part = np.float32(CAVITY) * ((0.4 + 0.6 * across) * (0.6 + 0.7 * t))[..., None]
    skin_part = _blend(skin_part, tongue(gap, t, across, openness))
    luma_part = np.zeros_like(skin_part)
    if ref_teeth < 0.01:  # a reference that shows its own upper teeth keeps them, above the gap
        teeth_part, cover = teeth(gap, height, openness)
        skin_part = skin_part * (1.0 - cover[..., None])
        luma_part = teeth_part * cover[..., None]
    return skin_part, luma_part


def _blend(under: np.ndarray, over: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    colour, cover = over
    return under + (colour - under) * cover[..., None]


def tongue(gap: Gap, t, across, openness: float) -> tuple[np.ndarray, np.ndarray]:
    """A mound rising from the middle of the lower lip on wider openings: (skin multiples, coverage)."""
    rise = TONGUE_HEIGHT * float(smoothstep(0.25, 0.85, openness))
    crest = 1.0 - rise * np.sqrt(np.clip(1.0 - (gap.u / TONGUE_HALF_WIDTH) ** 2, 0.0, 1.0))  # in t
    cover = smoothstep(0.0, 0.10, t - crest) * (rise > 0.01)
    shade = (0.55 + 0.45 * smoothstep(0.0, 0.5, t - crest)) * (0.55 + 0.45 * across)  # darker at its back
    return np.float32(TONGUE) * shade[..., None], cover


def teeth(gap: Gap, height, openness: float) -> tuple[np.ndarray, np.ndarray]:
    """Upper teeth under the upper lip, narrower than the mouth and receding into the corners, shadowed by
    the lip at the top, faint gaps between the front teeth: (luminance multiples, coverage)."""
    reach = TEETH_HEIGHT * float(smoothstep(0.12, 0.55, openness))
    arch = np.sqrt(np.clip(1.0 - (gap.u / TEETH_HALF_WIDTH) ** 2, 0.0, 1.0))
    band = np.minimum(reach * arch, 0.45 * height) * 128  # pixels of a 128 crop
    below = (gap.ys - gap.top) * 128
    cover = np.clip((band - below) / EDGE_SOFTNESS + 0.5, 0.0, 1.0) * (band > 0.3)
    phase = np.abs(gap.u) % TOOTH_WIDTH
    between = np.exp(-((np.minimum(phase, TOOTH_WIDTH - phase) / 0.035) ** 2))  # 1 where two teeth meet
    light = (0.5 + 0.5 * arch) * (0.72 + 0.28 * smoothstep(0.0, 2.0, below)) * (1.0 - 0.3 * between)
    return light[..., None] * np.float32(TEETH), cover


# --- the model ---------------------------------------------------------------------------------------------------


class MouthWarp:
    """Weight-free mouth re-animation of `size` x `size` lower-face crops: `predict(CropBatch) -> PatchBatch`."""

    device = "cpu"
    dtype = "float32"

    def __init__(self, size: int = 128) -> None:
        self.size = size
        self.alpha = alpha_mask(size)
        self._geometries: OrderedDict[bytes, Geometry] = OrderedDict()
        self._last: tuple[np.ndarray, Geometry] | None = None

    def predict(self, batch: CropBatch) -> PatchBatch:
        """Patches for every crop and the one alpha of the batch (ValueError for crops of the wrong size)."""
        size = self.size
        crops, refs = np.asarray(batch.crops), np.asarray(batch.refs)
        if crops.shape[1:] != (size, size, 3) or refs.shape[1:] != crops.shape[1:] or len(refs) not in (1, len(crops)):
            raise ValueError(
                f"mouthwarp expects crops and refs of shape (B, {size}, {size}, 3), got {crops.shape} and {refs.shape}"
            )
        if len(crops) == 0:
            return PatchBatch(np.zeros((0, size, size, 3), np.uint8), np.zeros((0, size, size), np.uint8))
        cond = np.clip(np.asarray(batch.cond, np.float32).reshape(-1), 0.0, 1.0)
        patches = np.empty(crops.shape, np.uint8)
        for i, (crop, openness) in enumerate(zip(crops, cond, strict=True)):
            patches[i] = self.animate(crop, refs[i if len(refs) > 1 else 0], float(openness))
        return PatchBatch(patches, self.alpha[None])

    def animate(self, crop: np.ndarray, ref: np.ndarray, openness: float) -> np.ndarray:
        """One patch: the reference with its mouth opened by `openness` in [0, 1], relit like `crop`.

        The opened reference depends only on the reference and the openness (in LEVELS steps), so it is made
        once per level; a crop costs its light estimate and one multiply. Light is applied where each pixel
        ends up (the dropped lower lip takes the light of where it now is), inside of the mouth included.
        """
        geo = self.geometry(ref)
        return cv2.multiply(geo.opened(int(round(openness * LEVELS))), self.light(crop, geo), dtype=cv2.CV_8U)

    def geometry(self, ref: np.ndarray) -> Geometry:
        """The reference's geometry, from a small cache (a job sends the same reference with every crop)."""
        if self._last is not None and np.array_equal(self._last[0], ref):
            return self._last[1]
        key = hashlib.blake2b(np.ascontiguousarray(ref).data, digest_size=16).digest()
        geo = self._geometries.get(key)
        if geo is None:
            geo = Geometry(ref, find_mouth(ref), self.alpha)
            log.debug("mouth found at %s", geo.shape)
            self._geometries[key] = geo
            if len(self._geometries) > GEOMETRY_CACHE:
                self._geometries.popitem(last=False)
        self._geometries.move_to_end(key)
        self._last = (ref.copy(), geo)
        return geo

    # --- 2. light ---

    def light(self, live: np.ndarray, geo: Geometry) -> np.ndarray:
        """The full-size, low-frequency gain from the reference to the live crop (uint8), the mouth left out.

        The live crop is averaged onto the G grid and compared there with the reference's cells, both
        weighted (the mouth out); cells where the live crop is far darker or brighter than the crop as a whole
        (its own open mouth, teeth, a hand) are left out too: first against the whole crop, then against their
        neighbours, so a light that falls off across the face is kept. The gain is a ratio of blurred, weighted sums,
        so cells in the hole take their light from the skin around it. Numpy's cost per call is most of the
        time here (it runs per crop), hence ramps rather than smoothsteps.
        """
        w = geo.light_cells
        cells = cv2.resize(live, (LIGHT_GRID, LIGHT_GRID), interpolation=cv2.INTER_AREA).astype(np.float32)
        ratio = (cells @ LUMA_SUM + 1.0) / geo.ref_luma  # per cell, live / reference brightness
        typical = float((ratio * w).sum()) / geo.light_total  # the crop as a whole, then each cell's neighbours
        keep = w * _ramps(ratio / typical, 0.6, 0.8, 1.5, 1.9)
        near = _blur(np.dstack([ratio * keep, keep]), 3.0)
        keep = w * _ramps(ratio * near[..., 1] / np.maximum(near[..., 0], 1e-6), 0.75, 0.9, 1.25, 1.5)
        # One blur for everything the gain needs: live and reference sums and the weights (2 grey levels).
        sums = _blur(np.dstack([cells * keep[..., None], geo.ref_cells * keep[..., None], keep]), GAIN_BLUR)
        floor = 2.0 * sums[..., 6:7]
        gain = np.minimum(np.maximum((sums[..., :3] + floor) / (sums[..., 3:6] + floor), 0.4), 2.5)
        return cv2.resize(gain, (self.size, self.size), interpolation=cv2.INTER_LINEAR)
