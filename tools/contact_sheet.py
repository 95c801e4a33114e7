"""Dev tool: contact sheets of mouth crops over time from rendered videos, to judge the mouth by eye.

    .venv/bin/python tools/contact_sheet.py OUT.mp4 [MORE.mp4 ...] [--out /tmp/mouth_sheet.png]
        [--tiles 24] [--cols 8] [--scale 3] [--nearest]

For each video (one block per video, stacked, titled with the file name): `--tiles` frames evenly spaced over
the video, each cut around the mouth and chin of the tracked face (the face detector runs on the video itself,
as dhgen tracks an avatar) and enlarged `--scale` times (bicubic, or `--nearest` to see single pixels). Each
tile is labelled with its frame index and the mouth openness dhgen computes from the video's own audio track,
so an open mouth can be checked against the sound that asked for it. Give the before and after renders of the
same job to compare them frame for frame.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import av
import cv2
import numpy as np

from dhgen.audio import load_audio, mouth_openness
from dhgen.avatar import probe_avatar
from dhgen.face import track_faces
from dhgen.options import FaceOptions

MOUTH_AREA = (0.15, 0.52, 0.70, 0.55)  # x, y, w, h of the tile, in fractions of the face box
TITLE_H = 22


def decode(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as container:
        return [f.to_ndarray(format="bgr24") for f in container.decode(video=0)]


def openness_of(path: Path, fps, n: int) -> np.ndarray:
    """The openness dhgen computes for each frame from the video's audio (NaN without an audio track)."""
    try:
        return mouth_openness(load_audio(path).samples, fps, n)
    except Exception:  # noqa: BLE001 - a video without sound still gets its sheet
        return np.full(n, np.nan)


def tile(frame: np.ndarray, box, scale: int, nearest: bool) -> np.ndarray:
    x, y, w, h = box
    ax, ay, aw, ah = MOUTH_AREA
    tw, th = int(round(w * aw)), int(round(h * ah))
    x0, y0 = int(round(x + w * ax)), int(round(y + h * ay))
    padded = cv2.copyMakeBorder(frame, th, th, tw, tw, cv2.BORDER_CONSTANT, value=(40, 40, 40))
    crop = padded[y0 + th : y0 + 2 * th, x0 + tw : x0 + 2 * tw]
    interp = cv2.INTER_NEAREST if nearest else cv2.INTER_CUBIC
    return cv2.resize(crop, (tw * scale, th * scale), interpolation=interp)


def label(image: np.ndarray, text: str) -> np.ndarray:
    out = image.copy()
    cv2.putText(out, text, (3, 13), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 3, cv2.LINE_AA)
    cv2.putText(out, text, (3, 13), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 255), 1, cv2.LINE_AA)
    return out


def block(path: Path, args, cache: Path) -> np.ndarray:
    """One video's grid of labelled mouth tiles under a title."""
    info = probe_avatar(path)
    frames = decode(path)
    track = track_faces(info, len(frames), FaceOptions(cache_dir=cache))
    known = ~np.isnan(track.boxes[:, 0])
    size = np.nanmedian(track.boxes[:, 2:], axis=0)  # one tile size for the whole video
    openness = openness_of(path, info.fps, len(frames))
    picks = np.unique(np.linspace(0, len(frames) - 1, args.tiles).round().astype(int))
    tiles = []
    for i in picks:
        j = i if known[i] else int(np.flatnonzero(known)[np.abs(np.flatnonzero(known) - i).argmin()])
        cx, cy = track.boxes[j, :2] + track.boxes[j, 2:] / 2
        box = (cx - size[0] / 2, cy - size[1] / 2, size[0], size[1])
        tiles.append(label(tile(frames[i], box, args.scale, args.nearest), f"{i} o={openness[i]:.2f}"))
    while len(tiles) % args.cols:
        tiles.append(np.zeros_like(tiles[0]))
    rows = [np.hstack(tiles[k : k + args.cols]) for k in range(0, len(tiles), args.cols)]
    grid = np.vstack([np.pad(r, ((0, 2), (0, 0), (0, 0))) for r in rows])
    title = np.zeros((TITLE_H, grid.shape[1], 3), np.uint8)
    cv2.putText(title, str(path), (4, 15), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1, cv2.LINE_AA)
    return np.vstack([title, grid])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("videos", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, default=Path("/tmp/mouth_sheet.png"))
    parser.add_argument("--tiles", type=int, default=24, help="frames per video (default 24)")
    parser.add_argument("--cols", type=int, default=8, help="tiles per row (default 8)")
    parser.add_argument("--scale", type=int, default=3, help="enlargement (default 3)")
    parser.add_argument("--nearest", action="store_true", help="enlarge without smoothing, to see pixels")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as cache:
        blocks = [block(path, args, Path(cache)) for path in args.videos]
    width = max(b.shape[1] for b in blocks)
    sheet = np.vstack([np.pad(b, ((0, 6), (0, width - b.shape[1]), (0, 0))) for b in blocks])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(args.out), sheet)
    print(args.out)  # noqa: T201


if __name__ == "__main__":
    main()
