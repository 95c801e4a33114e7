"""Face tracking: Haar detection on a stride, interpolation, smoothing, closed-mouth reference, on-disk cache.

The detector (OpenCV's frontal-face Haar cascade) runs on a grayscale, downscaled copy of every `stride`-th
avatar frame and the last one. Boxes are smoothed across detections with two-sided exponential weights (no lag),
interpolated linearly in between, and left NaN on frames farther than one stride from any detection (those
frames pass through unchanged). The reference frame is the detected frame whose mouth looks most closed.

Tracks are cached in `FaceOptions.cache_dir`, keyed by the avatar's content (sha256) and the detector settings,
so a batch that reuses an avatar detects its faces once.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from dhgen.avatar import AvatarInfo, iter_first_frames
from dhgen.errors import DhgenError, MissingInputError, NoFaceError
from dhgen.files import replace_atomically
from dhgen.manifest import file_digest
from dhgen.options import FaceOptions

log = logging.getLogger(__name__)

CASCADE = "haarcascade_frontalface_default.xml"
CACHE_VERSION = 3  # bump when the tracking maths changes, so old cache entries are not reused
SHRINK_LIMIT = 0.6  # a face found this much smaller than the one tracked a few strides before is a false hit
SHRINK_WINDOW = 4  # ... "a few": this many strides
Box = tuple[float, float, float, float]  # x, y, w, h in frame pixels


@dataclass(frozen=True)
class FaceTrack:
    boxes: np.ndarray  # float32 (n, 4): x, y, w, h per avatar frame index, NaN rows where there is no face
    reference_index: int  # the avatar frame chosen as the neutral (most closed mouth) reference
    reference_frame: np.ndarray  # that frame, BGR uint8
    from_cache: bool


def track_faces(info: AvatarInfo, n_needed: int, options: FaceOptions | None = None) -> FaceTrack:
    """The face track for the first `n_needed` avatar frames, from the cache when it covers them.

    `boxes` has at least min(n_needed, n_frames) rows (a cached track may cover more). Raises NoFaceError
    (naming the file) when no frame shows a face.
    """
    options = options or FaceOptions()
    n = max(1, min(n_needed, info.n_frames))
    cache_file = Path(options.cache_dir) / f"faces-{_cache_key(info.path, options)}.npz"
    cached = _load_cache(cache_file, n, info)
    if cached is not None:
        log.debug("face track of %s from cache %s", info.path, cache_file)
        return cached
    frames = iter_first_frames(info, n, step=max(1, options.stride))
    track = detect_track(frames, n, options, path=info.path)
    _save_cache(cache_file, track)
    return track


def detect_track(
    frames: Iterable[tuple[int, np.ndarray]], n: int, options: FaceOptions | None = None, *, path=None
) -> FaceTrack:
    """Track the face over avatar frames 0..n-1 from (index, BGR frame) pairs (no cache).

    Only indices on the stride (and n-1) are examined, so `frames` may hold just those. `path` names the
    source in NoFaceError.
    """
    options = options or FaceOptions()
    stride = max(1, options.stride)
    cascade = _load_cascade()
    found: dict[int, Box] = {}
    best: tuple[float, int, np.ndarray] | None = None  # (mouth openness, index, frame)
    previous: Box | None = None
    previous_index = -(10**9)
    for i, frame in frames:
        if i >= n:
            break
        if i % stride and i != n - 1:
            continue
        gray, scale = _detection_image(frame, options.detect_width)
        recent = previous if i - previous_index <= SHRINK_WINDOW * stride else None
        box = _pick(cascade_faces(cascade, gray), previous, recent)
        if box is None:
            continue
        previous, previous_index = box, i
        found[i] = tuple(v / scale for v in box)
        openness = mouth_openness(gray, box)
        if best is None or openness < best[0]:
            best = (openness, i, np.array(frame, copy=True))  # a copy: callers may reuse their buffers
    if best is None:
        raise NoFaceError(f"no face found in the first {n} frame(s)", path=path)
    boxes = interpolate_boxes(found, n, stride, options.smooth)
    return FaceTrack(boxes, best[1], best[2], from_cache=False)


# --- detection ---------------------------------------------------------------------------------------------------


def _load_cascade() -> cv2.CascadeClassifier:
    path = os.path.join(cv2.data.haarcascades, CASCADE)
    cascade = cv2.CascadeClassifier(path)
    if cascade.empty():
        raise DhgenError(
            f"cannot load the Haar cascade {path}", hint="install opencv-python-headless<5 (5.x ships no cascades)"
        )
    return cascade


def _detection_image(frame: np.ndarray, detect_width: int) -> tuple[np.ndarray, float]:
    """Grayscale frame, downscaled to at most `detect_width` wide, and the scale applied."""
    gray = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
    scale = min(1.0, detect_width / gray.shape[1]) if detect_width > 0 else 1.0
    if scale < 1.0:
        size = (max(1, round(gray.shape[1] * scale)), max(1, round(gray.shape[0] * scale)))
        gray = cv2.resize(gray, size, interpolation=cv2.INTER_AREA)
    return gray, scale


def cascade_faces(cascade: cv2.CascadeClassifier, gray: np.ndarray) -> list[tuple[Box, float]]:
    """The faces the cascade finds, each with its confidence (the cascade's level weight: a real face scores
    several times what a patch of background or an eye does)."""
    min_side = max(20, min(gray.shape[:2]) // 12)
    faces, _, weights = cascade.detectMultiScale3(
        gray, scaleFactor=1.1, minNeighbors=5, minSize=(min_side, min_side), outputRejectLevels=True
    )
    return [(tuple(float(v) for v in face), float(w)) for face, w in zip(faces, np.ravel(weights), strict=True)]


def _pick(faces: list[tuple[Box, float]], previous: Box | None, recent: Box | None = None) -> Box | None:
    """The most confident face, or, once a face is tracked, the one nearest it among those at least half as large
    as the most confident one. (The largest is not the safest first pick: on the astronaut portrait the cascade
    also fires, larger but with a fifth of the confidence, on the helmet beside the face.)

    None when that face is much smaller than a `recent` detection (SHRINK_LIMIT): a face does not shrink to
    half its size within a few strides, but the cascade does fire on an eye or the background in a frame
    where it misses the real face (a wide-open mouth, a turned head), and such a box must not enter the track
    nor become the reference.
    """
    if not faces:
        return None
    surest = max(faces, key=lambda face: face[1])[0]
    if previous is None:
        return surest
    px, py = previous[0] + previous[2] / 2, previous[1] + previous[3] / 2
    big = [b for b, _ in faces if b[2] * b[3] >= 0.5 * surest[2] * surest[3]]
    box = min(big, key=lambda b: (b[0] + b[2] / 2 - px) ** 2 + (b[1] + b[3] / 2 - py) ** 2)
    if recent is not None and box[2] < SHRINK_LIMIT * recent[2]:
        return None
    return box


def mouth_openness(gray: np.ndarray, box: Box) -> float:
    """How open the mouth looks: the share of dark pixels in the lower third, central half of the face box.

    An open mouth shows a dark interior; "dark" is relative to the face's own median brightness, so lighting
    does not matter.
    """
    x, y, w, h = (int(round(v)) for v in box)
    face = gray[max(0, y) : y + h, max(0, x) : x + w]
    mouth = gray[max(0, y + 2 * h // 3) : y + h, max(0, x + w // 4) : x + 3 * w // 4]
    if face.size == 0 or mouth.size == 0:
        return 1.0
    return float(np.mean(mouth < 0.6 * np.median(face)))


# --- interpolation and smoothing (pure) --------------------------------------------------------------------------


def interpolate_boxes(found: dict[int, Box], n: int, stride: int, smooth: float) -> np.ndarray:
    """float32 (n, 4) boxes from detections at some frame indices.

    Detections are smoothed (see `_smooth_runs`) within runs that have no gap of more than two strides; frames
    between detections are interpolated linearly, except across a longer gap, where each frame takes its nearer
    detection. Frames farther than `stride` from every detection are NaN.
    """
    idx = np.array(sorted(found), dtype=np.int64)
    raw = np.array([found[i] for i in idx], dtype=np.float64).reshape(-1, 4)
    smoothed = _smooth_runs(idx, raw, smooth, max_gap=2 * stride)
    grid = np.arange(n)
    boxes = np.stack([np.interp(grid, idx, smoothed[:, k]) for k in range(4)], axis=1)
    right = np.clip(np.searchsorted(idx, grid), 0, len(idx) - 1)
    left = np.clip(right - 1, 0, len(idx) - 1)
    gap = idx[right] - idx[left]
    nearer = np.where(np.abs(idx[left] - grid) <= np.abs(idx[right] - grid), left, right)
    far_apart = gap > 2 * stride
    boxes[far_apart] = smoothed[nearer[far_apart]]
    distance = np.minimum(np.abs(idx[left] - grid), np.abs(idx[right] - grid))
    boxes[distance > stride] = np.nan
    return boxes.astype(np.float32)


def _smooth_runs(idx: np.ndarray, raw: np.ndarray, smooth: float, max_gap: int) -> np.ndarray:
    """Smooth (x, y, w, h) detections within runs: the size with weight `smooth`, the centre with `smooth`**2.

    Haar boxes jitter mostly in size (its scale steps are 10 %), hardly in position, while the centre is what
    follows head motion; a local quadratic fit keeps that motion, a local mean flattens the size jitter.
    """
    centre = raw[:, :2] + raw[:, 2:] / 2
    size = raw[:, 2:].copy()
    breaks = np.flatnonzero(np.diff(idx) > max_gap) + 1
    for run in np.split(np.arange(len(idx)), breaks):
        centre[run] = local_fit(centre[run], smooth**2, degree=2)
        size[run] = local_fit(size[run], smooth, degree=0)
    return np.concatenate([centre - size / 2, size], axis=1)


def local_fit(x: np.ndarray, a: float, degree: int) -> np.ndarray:
    """Exponentially weighted local polynomial fit: each row of x (m, c) replaced by the value at that row of a
    fit through its neighbours with weights a**|k| (two-sided, so no lag). a = 0 returns x unchanged."""
    a = float(np.clip(a, 0.0, 0.99))
    m = len(x)
    if a == 0.0 or m < 2:
        return x.copy()
    radius = min(m - 1, int(np.ceil(np.log(1e-3) / np.log(a))))
    out = np.empty_like(x, dtype=np.float64)
    for k in range(m):
        lo, hi = max(0, k - radius), min(m, k + radius + 1)
        offsets = np.arange(lo - k, hi - k)
        sqrt_w = np.sqrt(a ** np.abs(offsets))[:, None]
        basis = np.vander(offsets, min(degree, hi - lo - 1) + 1, increasing=True)
        coef = np.linalg.lstsq(basis * sqrt_w, x[lo:hi] * sqrt_w, rcond=None)[0]
        out[k] = coef[0]
    return out


# --- cache -------------------------------------------------------------------------------------------------------


def _cache_key(path: str, options: FaceOptions) -> str:
    settings = {
        "version": CACHE_VERSION,
        "cascade": CASCADE,
        "opencv": cv2.__version__,
        "stride": max(1, options.stride),
        "detect_width": options.detect_width,
        "smooth": options.smooth,
    }
    try:
        content = file_digest(Path(path))
    except OSError as exc:
        raise MissingInputError(f"cannot read avatar: {exc.strerror or exc}", path=path) from exc
    digest = hashlib.sha256(content.encode())
    digest.update(json.dumps(settings, sort_keys=True).encode())
    return digest.hexdigest()[:40]


def _load_cache(cache_file: Path, n: int, info: AvatarInfo) -> FaceTrack | None:
    """The cached track when it is readable, consistent with `info` and covers `n` frames; else None."""
    if not cache_file.is_file():
        return None
    try:
        with np.load(cache_file, allow_pickle=False) as data:
            boxes = data["boxes"].astype(np.float32)
            ref_index = int(data["reference_index"])
            png = data["reference_png"]
        reference = cv2.imdecode(png, cv2.IMREAD_COLOR)
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, cv2.error) as exc:
        log.warning("ignoring unreadable face cache %s: %s", cache_file, exc)
        return None
    valid = (
        boxes.ndim == 2
        and boxes.shape[1] == 4
        and 0 <= ref_index < len(boxes)
        and reference is not None
        and reference.shape == (info.height, info.width, 3)
    )
    if not valid:
        log.warning("ignoring inconsistent face cache %s", cache_file)
        return None
    if len(boxes) < n:
        return None
    return FaceTrack(boxes, ref_index, reference, from_cache=True)


def _save_cache(cache_file: Path, track: FaceTrack) -> None:
    """Write atomically (temp file + rename). A cache that cannot be written only costs a later re-detection."""
    _, png = cv2.imencode(".png", track.reference_frame, [cv2.IMWRITE_PNG_COMPRESSION, 1])
    buffer = io.BytesIO()
    np.savez(buffer, boxes=track.boxes, reference_index=np.int64(track.reference_index), reference_png=png)
    try:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        replace_atomically(cache_file, buffer.getbuffer())
    except OSError as exc:
        log.warning("cannot write face cache %s: %s", cache_file, exc)
