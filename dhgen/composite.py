"""Crop and paste: cut the model's rectangle out of a frame and blend a generated patch back into it.

Pure array functions. Only the rectangle is touched; where the alpha mask is 0 the frame keeps its exact pixels.
"""

from __future__ import annotations

import cv2
import numpy as np

from dhgen.models import Rect


def extract_crop(frame: np.ndarray, rect: Rect, size: int) -> np.ndarray:
    """The rectangle of `frame` resized to size x size (uint8, same channel order).

    Area averaging where the rectangle is at least twice the crop (it would alias otherwise); bilinear below
    that, where it looks the same and costs a quarter as much (this runs on every frame).
    """
    x0, y0, x1, y1 = rect
    region = frame[y0:y1, x0:x1]
    interp = cv2.INTER_AREA if (x1 - x0) >= 2 * size else cv2.INTER_LINEAR
    return cv2.resize(region, (size, size), interpolation=interp)


def paste(frame: np.ndarray, rect: Rect, patch: np.ndarray, alpha: np.ndarray) -> None:
    """Blend `patch` (S x S x 3 uint8) into `frame[rect]` in place through `alpha` (S x S uint8, 255 = patch)."""
    x0, y0, x1, y1 = rect
    w, h = x1 - x0, y1 - y0
    if w <= 0 or h <= 0:
        return
    a = cv2.resize(alpha, (w, h), interpolation=cv2.INTER_LINEAR)
    bx, by, bw, bh = cv2.boundingRect(a)  # of the non-zero alpha
    if bw == 0:
        return
    # Blend only that box: cheaper, and pixels outside stay bit-exact. Inside it, where the alpha is 0 the
    # patch's weight is exactly 0 and the frame's exactly 1, so those pixels keep their values too.
    boxed = (slice(by, by + bh), slice(bx, bx + bw))
    weight = a[boxed].astype(np.float32) * np.float32(1 / 255)
    p = cv2.resize(patch, (w, h), interpolation=cv2.INTER_LINEAR)[boxed]
    region = frame[y0 + by : y0 + by + bh, x0 + bx : x0 + bx + bw]
    region[...] = cv2.blendLinear(region, p, 1.0 - weight, weight)


def feather_mask(size: int, top: float = 0.5, margin: float = 0.08) -> np.ndarray:
    """A uint8 size x size mask: 255 inside, soft towards the edges, 0 on the border and above `top` (fraction)."""
    ramp = max(2, int(round(size * margin)))
    ys = np.arange(size, dtype=np.float32)
    xs = np.arange(size, dtype=np.float32)
    edge_x = np.clip(np.minimum(xs, size - 1 - xs) / ramp, 0, 1)
    y_top = top * size
    edge_y = np.clip(np.minimum((ys - y_top) / ramp, (size - 1 - ys) / ramp), 0, 1)
    mask = np.outer(edge_y, edge_x)
    mask = mask * mask * (3 - 2 * mask)  # smoothstep
    return (mask * 255).astype(np.uint8)
