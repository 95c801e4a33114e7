"""Crop and paste: cut the model's rectangle out of a frame and blend a generated patch back into it.

Pure array functions. Only the rectangle is touched; where the alpha mask is 0 the frame keeps its exact pixels.
"""

from __future__ import annotations

import cv2
import numpy as np

from dhgen.models import Rect


def extract_crop(frame: np.ndarray, rect: Rect, size: int) -> np.ndarray:
    """The rectangle of `frame` resized to size x size (uint8, same channel order)."""
    x0, y0, x1, y1 = rect
    region = frame[y0:y1, x0:x1]
    interp = cv2.INTER_AREA if (x1 - x0) > size else cv2.INTER_LINEAR
    return cv2.resize(region, (size, size), interpolation=interp)


def paste(frame: np.ndarray, rect: Rect, patch: np.ndarray, alpha: np.ndarray) -> None:
    """Blend `patch` (S x S x 3 uint8) into `frame[rect]` in place through `alpha` (S x S uint8, 255 = patch)."""
    x0, y0, x1, y1 = rect
    w, h = x1 - x0, y1 - y0
    if w <= 0 or h <= 0:
        return
    a = cv2.resize(alpha, (w, h), interpolation=cv2.INTER_LINEAR)
    ys, xs = np.nonzero(a)
    if ys.size == 0:
        return
    # Blend only the bounding box of the non-zero alpha: cheaper, and pixels outside stay bit-exact.
    by0, by1, bx0, bx1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    p = cv2.resize(patch, (w, h), interpolation=cv2.INTER_LINEAR)[by0:by1, bx0:bx1].astype(np.float32)
    a = a[by0:by1, bx0:bx1, None].astype(np.float32) / 255.0
    region = frame[y0 + by0 : y0 + by1, x0 + bx0 : x0 + bx1]
    blended = region.astype(np.float32) * (1.0 - a) + p * a
    region[...] = np.where(a > 0, np.clip(blended + 0.5, 0, 255), region).astype(np.uint8)


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
