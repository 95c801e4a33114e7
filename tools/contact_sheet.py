"""Dev tool: render the mouthwarp model on a portrait at several openness values and save a contact sheet.

    .venv/bin/python tools/contact_sheet.py [PORTRAIT] [--out /tmp/mouthwarp_sheet.png]

Row 1: the still portrait (live == reference) at openness 0, 0.25, 0.5, 0.75, 1.
Row 2: a "talking template": the live frame already has an open mouth and darker, uneven light; the model must
close it (openness 0) and re-open it with the requested openness.
Row 3: the portrait with its lips closed (teeth warped away), as a neutral template face, at the same openness.
Row 4: row 1 and the last of row 3 at their real size.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np

from dhgen.composite import extract_crop, paste
from dhgen.inference import load_predictor
from dhgen.models import CropBatch
from dhgen.options import ModelOptions

OPENNESS = (0.0, 0.25, 0.5, 0.75, 1.0)


def detect_face(frame: np.ndarray) -> tuple[int, int, int, int]:
    cascade = cv2.CascadeClassifier(cv2.data.haarcascades + "haarcascade_frontalface_default.xml")
    gray = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
    faces = cascade.detectMultiScale(gray, 1.1, 5, minSize=(40, 40))
    return tuple(int(v) for v in max(faces, key=lambda f: f[2] * f[3]))


def render(predictor, frame, ref_frame, rect, openness):
    size = predictor.spec.crop_size
    crop, ref = extract_crop(frame, rect, size), extract_crop(ref_frame, rect, size)
    batch = CropBatch(
        crops=np.stack([crop] * len(openness)),
        refs=np.stack([ref] * len(openness)),
        cond=np.asarray(openness, dtype=np.float32),
    )
    out = predictor.predict(batch)
    frames = []
    for patch, alpha in zip(out.patches, out.alphas, strict=True):
        f = frame.copy()
        paste(f, rect, patch, alpha)
        frames.append(f)
    return frames


def talking_template(predictor, frame, rect):
    """A frame whose person already has the mouth open, under dimmer light falling off to one side."""
    (opened,) = render(predictor, frame, frame, rect, [0.8])
    h, w = frame.shape[:2]
    ramp = np.linspace(0.6, 0.95, w, dtype=np.float32)[None, :, None]
    return np.clip(opened.astype(np.float32) * ramp, 0, 255).astype(np.uint8)


def closed_mouth(frame, rect):
    """The portrait with its smile's teeth squeezed out (lips meet at the lip line): a closed-mouth test face."""
    x0, y0, x1, y1 = rect
    side = x1 - x0
    ys, xs = np.mgrid[0 : frame.shape[0], 0 : frame.shape[1]].astype(np.float32)
    u = np.clip((xs - (x0 + 0.5 * side)) / (0.29 * side), -1, 1)
    lateral = (1 - u * u) ** 0.6 * ((xs > x0) & (xs < x1))
    line = y0 + 0.485 * side
    d = (ys - line) / side
    up = 0.06 * lateral * np.clip(1 - (-d) / 0.14, 0, 1) ** 2  # above the line: read from further up
    down = 0.055 * lateral * np.clip(1 - d / 0.16, 0, 1) ** 2  # below the line: read from further down
    src_y = np.where(d < 0, ys - up * side, ys + down * side).astype(np.float32)
    return cv2.remap(frame, xs, src_y, cv2.INTER_LINEAR)


def zoom(frame, box, scale=4, area=(0.125, 0.55, 0.75, 0.65)):
    """`area` (x, y, w, h in fractions of the face box) of the frame, enlarged; default: around the mouth."""
    x, y, w, h = box
    x0, y0 = max(0, x + int(w * area[0])), max(0, y + int(h * area[1]))
    tile = frame[y0 : y0 + int(h * area[3]), x0 : x0 + int(w * area[2])]
    return cv2.resize(tile, None, fx=scale, fy=scale, interpolation=cv2.INTER_CUBIC)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("portrait", nargs="?", default="/work/shared/fixtures/astronaut.png")
    parser.add_argument("--out", default="/tmp/mouthwarp_sheet.png")
    args = parser.parse_args()
    frame = cv2.imread(args.portrait)
    predictor = load_predictor(ModelOptions(name="mouthwarp", device="cpu"))
    box = detect_face(frame)
    rect = predictor.spec.crop_rect(box, frame.shape[1], frame.shape[0])
    still = render(predictor, frame, frame, rect, OPENNESS)
    live = talking_template(predictor, frame, rect)
    talking = render(predictor, live, frame, rect, OPENNESS)
    closed = closed_mouth(frame, rect)
    shut = render(predictor, closed, closed, rect, OPENNESS)
    rows = [
        np.hstack([zoom(f, box) for f in still]),
        np.hstack([zoom(live, box)] + [zoom(f, box) for f in talking]),
        np.hstack([zoom(f, box) for f in shut]),
        np.hstack([zoom(f, box, scale=1, area=(-0.3, -0.35, 1.6, 1.7)) for f in still + shut[-1:]]),
    ]
    width = max(r.shape[1] for r in rows)
    rows = [np.pad(r, ((0, 4), (0, width - r.shape[1]), (0, 0))) for r in rows]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(args.out, np.vstack(rows))
    print(args.out)  # noqa: T201


if __name__ == "__main__":
    main()
