"""Where a generated MuseTalk face is pasted: the alpha over its 256 x 256 crop (numpy + OpenCV, no torch).

MuseTalk pastes through a face-parsing mask ("jaw" mode of its `blending.get_image`): BiSeNet labels a square
around the face box 1.5 times its size, resized to 512 x 512; the skin is dilated with a cone and, on the
cheeks, eroded by a flat ellipse; the nose is left out and the mouth and lips put in; then, back at the
square's size, only the face box's part is kept, only its lower half (below the square's centre row, which is
the face box's), and the edge is softened by a Gaussian blur 5 % of the square's side across.

dhgen computes the same, per crop, in crop coordinates: the parser sees the crop on a black square with
MuseTalk's proportions (the face box's surroundings are not sent to the inference worker, so they are black
rather than the frame's; only labels inside the box are used either way), and the blur is MuseTalk's kernel
measured on that square. Without the face-parsing weights the alpha is `lower_face_mask`: a soft ellipse over
the mouth and jaw from the crop's own geometry, cut and blurred the same way. Either alpha is 0 above the
crop's middle row (but for the blurred edge, `BLUR_REACH` rows), and a paste never reaches past the crop.
"""

from __future__ import annotations

import cv2
import numpy as np

PARSE_SIZE = 512  # BiSeNet's input side, as MuseTalk feeds it
CONTEXT = 1.5  # MuseTalk's `expand`: the parsed square is this many face boxes across
BLUR_FRACTION = 0.05  # MuseTalk's blur kernel, as a fraction of the square's side (get_image)
UPPER_BOUNDARY = 0.5  # rows above this fraction of the square (= of the face box) keep the frame

# The jaw rule's labels (CelebAMask-HQ, BiSeNet's 19 classes) and shapes, in the 512 x 512 parse.
SKIN, NOSE, MOUTH_AND_LIPS = 1, 10, (11, 12, 13)
CONE_HEIGHT, CONE_TAIL = 21, 12  # the downward dilation: a cone widening by 2 px a row, then a straight tail
CHEEK_ERODE_SIZE, CHEEK_ERODE_ITERATIONS = (35, 3), 2  # a flat ellipse: trims the dilated skin on the cheeks
CHEEK_WIDTH = 90  # px either side of the centre where the chin is kept whole (MuseTalk 1.5's inference default)

# The fallback ellipse over the mouth and jaw, in fractions of the crop (the face box, chin margin included).
FALLBACK_CENTRE = (0.5, 0.55)  # x, y
FALLBACK_AXES = (0.36, 0.42)  # half-width, half-height


def box_in_canvas(size: int = PARSE_SIZE) -> tuple[int, int]:
    """(offset, side) of the face box inside the parsed square."""
    side = int(round(size / CONTEXT))
    return (size - side) // 2, side


def parser_canvas(crop: np.ndarray) -> np.ndarray:
    """uint8 (512, 512, 3): the crop (BGR) on a black square with MuseTalk's proportions, as RGB for BiSeNet."""
    offset, side = box_in_canvas()
    canvas = np.zeros((PARSE_SIZE, PARSE_SIZE, 3), np.uint8)
    face = cv2.resize(crop, (side, side), interpolation=cv2.INTER_LINEAR)
    canvas[offset : offset + side, offset : offset + side] = cv2.cvtColor(face, cv2.COLOR_BGR2RGB)
    return canvas


def cone_kernel() -> np.ndarray:
    """MuseTalk's structuring element for the skin: a cone widening downwards, then a straight tail; anchored
    at its centre, it grows the skin 16 rows up (and 6 down) in a cone's shape."""
    size = CONE_HEIGHT + CONE_TAIL
    kernel = np.zeros((size, size), np.uint8)
    centre = size // 2
    for row in range(CONE_HEIGHT // 2, CONE_HEIGHT):
        half = row - CONE_HEIGHT // 2
        kernel[row, centre - half : centre + half + 1] = 1
    half = CONE_HEIGHT // 2
    kernel[CONE_HEIGHT:, max(0, centre - half) : centre + half + 1] = 1
    return kernel


def jaw_region(labels: np.ndarray) -> np.ndarray:
    """uint8 0/255 (512, 512): the region MuseTalk's jaw mode repaints, from BiSeNet's labels."""
    skin = np.where(labels == SKIN, 255, 0).astype(np.uint8)
    dilated = cv2.dilate(skin, cone_kernel(), iterations=1)
    eroded = cv2.erode(
        dilated, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, CHEEK_ERODE_SIZE), iterations=CHEEK_ERODE_ITERATIONS
    )
    cheeks = np.zeros_like(skin)  # the sides, where the dilated skin is trimmed; the middle keeps all of it
    centre = PARSE_SIZE // 2
    cheeks[:, : centre - CHEEK_WIDTH + 1] = 255
    cheeks[:, centre + CHEEK_WIDTH :] = 255
    region = (eroded & cheeks) | (dilated & ~cheeks)
    keep = ((region == 255) & (labels != NOSE)) | np.isin(labels, MOUTH_AND_LIPS)
    return np.where(keep, 255, 0).astype(np.uint8)


def paste_alpha(region: np.ndarray, size: int) -> np.ndarray:
    """uint8 (size, size): a 512 x 512 parse region cut to the face box, its upper half cleared, blurred."""
    offset, side = box_in_canvas(len(region))
    box = region[offset : offset + side, offset : offset + side]
    return soften(cv2.resize(box, (size, size), interpolation=cv2.INTER_LINEAR))


def lower_face_mask(size: int) -> np.ndarray:
    """uint8 (size, size): without face parsing, a soft ellipse over the mouth and jaw, cut and blurred like
    the parsing mask."""
    mask = np.zeros((size, size), np.uint8)
    centre = tuple(int(round(c * size)) for c in FALLBACK_CENTRE)
    axes = tuple(int(round(a * size)) for a in FALLBACK_AXES)
    cv2.ellipse(mask, centre, axes, 0, 0, 360, 255, thickness=-1)
    return soften(mask)


def blur_kernel(size: int) -> int:
    """MuseTalk's blur kernel (odd, 5 % of the square's side) for a crop of side `size`."""
    return int(BLUR_FRACTION * CONTEXT * size // 2 * 2) + 1


def soften(mask: np.ndarray) -> np.ndarray:
    """MuseTalk's last steps in crop coordinates: clear the upper half, blur with its kernel (zeros beyond the
    crop, as beyond the face box in its square)."""
    size = len(mask)
    mask = mask.copy()
    mask[: int(size * UPPER_BOUNDARY)] = 0
    kernel = blur_kernel(size)
    return cv2.GaussianBlur(mask, (kernel, kernel), 0, borderType=cv2.BORDER_CONSTANT)
