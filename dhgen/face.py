"""Face tracking: which face, Haar detection on a stride, filled-in misses, smoothing, the closed-mouth reference,
on-disk cache.

The frontal-face Haar cascade runs on a grayscale, downscaled copy of every `stride`-th avatar frame and the last
one. Where a face first appears, `FaceOptions.choice` picks one of the faces found (`auto`: the one the cascade is
surest of; `largest`, `center`, `left`, `right`, `N`: the Nth from the left; `x,y`: the one containing that pixel);
from then on the track keeps that face by position: each later detection must lie within a face width of the last
one and be of a like size, so a second face, however confident, never takes its place. Where the frontal cascade
misses the tracked face, the profile cascade tries (on the frame and its mirror image, for either side). When a
stride frame has the face and the next does not (or the other way round), the frames between are examined too, so
the track holds up to the frames where the face really goes. Only where a single face was found to choose from
does a face lost for more than a few strides come back wherever it reappears.

Boxes are smoothed across detections with two-sided exponential weights (no lag) and interpolated linearly in
between; a gap of at most two strides between detections is bridged. Frames farther than one stride from every
detection, or separated from the nearest one by a frame examined without the face, have no box (NaN): they pass
through unchanged. The reference frame is the frontally detected frame whose mouth looks most closed.

Tracks are cached in `FaceOptions.cache_dir`, keyed by the avatar's content (sha256), the detector settings and the
choice, so a batch that reuses an avatar detects its faces once.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from dhgen.avatar import AvatarInfo, iter_frame_loaders
from dhgen.errors import DhgenError, MissingInputError, NoFaceError
from dhgen.files import replace_atomically
from dhgen.manifest import file_digest
from dhgen.options import FACE_CHOICE_HINT, FaceOptions, face_choice

log = logging.getLogger(__name__)

CASCADE = "haarcascade_frontalface_default.xml"
PROFILE_CASCADE = "haarcascade_profileface.xml"  # faces turned to one side; the mirrored frame gives the other
CACHE_VERSION = 4  # bump when the tracking maths changes, so old cache entries are not reused
# A face does not shrink or grow by more than SHRINK_LIMIT (or its inverse) within SHRINK_WINDOW strides: a box
# that does is a false hit (an eye, a patch of background) where the cascade missed the real face.
SHRINK_LIMIT = 0.6
SHRINK_WINDOW = 4
MAX_JUMP = 1.0  # a later detection of the tracked face lies within this many face widths of its last box
# Cascade confidences (level weights): real frontal faces score 3-12 on our footage, false hits (the helmet beside
# the astronaut, a patch of a car seat) under 2. A face to choose from scores SURE_WEIGHT, or at least half the
# surest face's weight and WEAK_WEIGHT. The profile cascade fires more readily: its hits need PROFILE_WEIGHT.
SURE_WEIGHT, WEAK_WEIGHT, PROFILE_WEIGHT = 2.5, 1.0, 0.5
Box = tuple[float, float, float, float]  # x, y, w, h in frame pixels
Frame = np.ndarray | Callable[[], np.ndarray]  # a BGR frame, or a function that decodes it when called


@dataclass(frozen=True)
class FaceTrack:
    boxes: np.ndarray  # float32 (n, 4): x, y, w, h per avatar frame index, NaN rows where there is no face
    reference_index: int  # the avatar frame chosen as the neutral (most closed mouth) reference
    reference_frame: np.ndarray  # that frame, BGR uint8
    from_cache: bool
    first_frame: int = 0  # the avatar frame where faces first appeared and the face was chosen
    faces_found: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))  # (k, 4) there, left first
    chosen: int = 0  # the tracked face's row in faces_found

    def record(self, choice: str) -> dict:
        """What the result log says about the face (its `face` field)."""
        boxes = [[round(float(v)) for v in box] for box in self.faces_found]
        return {
            "choice": choice,
            "frame": self.first_frame,
            "box_at_first_frame": boxes[self.chosen] if boxes else None,
            "faces_found": boxes,
        }


def track_faces(info: AvatarInfo, n_needed: int, options: FaceOptions | None = None) -> FaceTrack:
    """The face track for the first `n_needed` avatar frames, from the cache when it covers them.

    `boxes` has at least min(n_needed, n_frames) rows (a cached track may cover more). Raises NoFaceError
    (naming the file) when no frame shows a face, or none that the choice names.
    """
    options = options or FaceOptions()
    n = max(1, min(n_needed, info.n_frames))
    cache_file = Path(options.cache_dir) / f"faces-{_cache_key(info.path, options)}.npz"
    cached = _load_cache(cache_file, n, info)
    if cached is not None:
        log.debug("face track of %s from cache %s", info.path, cache_file)
        return cached
    track = detect_track(iter_frame_loaders(info, n), n, options, path=info.path)
    _save_cache(cache_file, track)
    return track


def detect_track(
    frames: Iterable[tuple[int, Frame]], n: int, options: FaceOptions | None = None, *, path=None
) -> FaceTrack:
    """Track the chosen face over avatar frames 0..n-1 from (index, frame) pairs in order (no cache).

    A frame is a BGR array or a function returning one (then only the frames examined are converted). Frames on the
    stride (and n-1) are examined; the others only between a stride frame with the face and one without, so
    `frames` may hold just the stride frames. `path` names the source in NoFaceError.
    """
    options = options or FaceOptions()
    stride = max(1, options.stride)
    tracker = _Tracker(options, path)
    between: list[tuple[int, Frame]] = []  # frames since the last stride frame, not examined yet
    previous: tuple[int, bool] | None = None  # the last stride frame, and whether it had the face
    for i, frame in frames:
        if i >= n:
            break
        if i % stride and i != n - 1:
            between.append((i, frame))
            continue
        hit = tracker.examine(i, frame)
        if between and previous is not None and hit != previous[1]:  # the face came or went in between
            if previous[1]:
                tracker.fill(between, anchor=previous[0])
            else:
                tracker.fill(between[::-1], anchor=i)
        between, previous = [], (i, hit)
    return tracker.track(n)


# --- choosing and following one face -----------------------------------------------------------------------------


class _Tracker:
    """The detections of one face: chosen where faces first appear, then followed by position."""

    def __init__(self, options: FaceOptions, path) -> None:
        self.options, self.path = options, path
        self.choice = face_choice(options.choice)  # ValueError for none; dhgen.checks refuses such runs up front
        self.frontal, self.profile = _load_cascade(CASCADE), _load_cascade(PROFILE_CASCADE)
        self.found: dict[int, Box] = {}
        self.missed: set[int] = set()  # frames examined without the face
        self.last: int | None = None  # the latest frame with the face
        self.first: tuple[int, list[Box], int] | None = None  # (frame, faces found there, the chosen one)
        self.best: tuple[float, int, np.ndarray] | None = None  # (mouth openness, index, frame) of the reference
        self.stride = max(1, options.stride)

    def examine(self, i: int, frame: Frame) -> bool:
        """Look for the face in stride frame i (the frontal cascade looks at all of it); whether it is there."""
        image = frame() if callable(frame) else frame
        view = _View.of(image, self.options.detect_width)
        if self.last is None:
            found = self._choose(i, view)
        else:
            recent = i - self.last <= SHRINK_WINDOW * self.stride
            alone = len(self.first[1]) == 1  # set with self.last
            found = self._follow(view, self.found[self.last], recent, whole=True, anywhere=alone and not recent)
        return self._note(i, image, view, found)

    def fill(self, frames: list[tuple[int, Frame]], anchor: int) -> None:
        """Examine `frames` (between a stride frame with the face, `anchor`, and one without; nearest `anchor`
        first), following the face from `anchor` (the cascades look only around it)."""
        previous = self.found[anchor]
        for i, frame in frames:
            image = frame() if callable(frame) else frame
            view = _View.of(image, self.options.detect_width)
            if self._note(i, image, view, self._follow(view, previous, recent=True, whole=False)):
                previous = self.found[i]

    def track(self, n: int) -> FaceTrack:
        if self.best is None or self.first is None:
            raise NoFaceError(f"no face found in the first {n} frame(s)", path=self.path)
        boxes = interpolate_boxes(self.found, n, self.stride, self.options.smooth, missed=self.missed)
        frame, faces, chosen = self.first
        log.debug("tracked %s: %d of %d frames with the face", self.path, int((~np.isnan(boxes[:, 0])).sum()), n)
        return FaceTrack(
            boxes,
            self.best[1],
            self.best[2],
            from_cache=False,
            first_frame=frame,
            faces_found=np.array(faces, np.float32).reshape(-1, 4),
            chosen=chosen,
        )

    def _choose(self, i: int, view: _View) -> tuple[Box, bool] | None:
        """The face the choice names among the frontal faces of frame i (None if it has none)."""
        faces = sure_faces(view.faces(self.frontal))
        if not faces:
            return None
        faces.sort(key=lambda face: face[0][0] + face[0][2] / 2)
        k = choose_face(self.choice, faces, *view.frame_size)
        if k is None:
            raise NoFaceError(
                _unmatched(self.choice, i, [box for box, _ in faces]), path=self.path, hint=FACE_CHOICE_HINT
            )
        self.first = (i, [box for box, _ in faces], k)
        return faces[k][0], True

    def _follow(
        self, view: _View, previous: Box, recent: bool, whole: bool, anywhere: bool = False
    ) -> tuple[Box, bool] | None:
        """The detection that continues the face last seen at `previous`: frontal, else profile (None if none).
        The profile cascade (and the frontal one unless `whole`) looks only near `previous`. With `anywhere` (the
        face was the only one and has been lost for a while: it left the picture, the shot changed), the surest
        frontal face anywhere will do: with one person there is no one to swap it for."""
        near = previous if recent else None  # an old box bounds where the face is, not its size
        frontal = view.faces(self.frontal, near, window=not whole)
        box = nearest_face(frontal, previous, recent)
        if box is None and anywhere:
            box = max(sure_faces(frontal), key=lambda face: face[1], default=(None, 0.0))[0]
        if box is not None:
            return box, True
        profiles = view.faces(self.profile, near) + view.faces(self.profile, near, mirrored=True)
        box = nearest_face([face for face in profiles if face[1] >= PROFILE_WEIGHT], previous, recent)
        return (box, False) if box is not None else None

    def _note(self, i: int, image: np.ndarray, view: _View, found) -> bool:
        if found is None:
            self.missed.add(i)
            return False
        box, frontal = found
        self.found[i] = box
        self.last = max(i, self.last if self.last is not None else i)
        if frontal:  # the reference comes from frontal views only
            openness = mouth_openness(view.gray, tuple(v * view.scale for v in box))
            if self.best is None or openness < self.best[0]:
                self.best = (openness, i, np.array(image, copy=True))  # a copy: callers may reuse their buffers
        return True


def choose_face(choice: str, faces: list[tuple[Box, float]], width: int, height: int) -> int | None:
    """The index in `faces` (left to right, with confidences) of the face `choice` names; None if it names none."""
    if choice.isdigit():
        return int(choice) if int(choice) < len(faces) else None
    if "," in choice:
        x, y = (int(v) for v in choice.split(","))
        inside = [k for k, (b, _) in enumerate(faces) if b[0] <= x < b[0] + b[2] and b[1] <= y < b[1] + b[3]]
        return min(inside, key=lambda k: _distance(faces[k][0], (x, y))) if inside else None
    scores: dict[str, Callable[[Box, float], float]] = {  # the chosen face has the lowest score
        "auto": lambda box, weight: -weight,
        "largest": lambda box, weight: -box[2] * box[3],
        "center": lambda box, weight: _distance(box, (width / 2, height / 2)),
        "left": lambda box, weight: box[0] + box[2] / 2,
        "right": lambda box, weight: -(box[0] + box[2] / 2),
    }
    score = scores[choice]
    return min(range(len(faces)), key=lambda k: score(*faces[k]))


def sure_faces(detections: list[tuple[Box, float]]) -> list[tuple[Box, float]]:
    """The detections confident enough to count as faces to choose from (see SURE_WEIGHT)."""
    if not detections:
        return []
    surest = max(weight for _, weight in detections)
    floor = min(SURE_WEIGHT, max(WEAK_WEIGHT, 0.5 * surest))
    return [face for face in detections if face[1] >= floor]


def nearest_face(faces: list[tuple[Box, float]], previous: Box, recent: bool) -> Box | None:
    """The face nearest `previous` among those within MAX_JUMP face widths of it and, when `previous` is `recent`,
    of a like size (SHRINK_LIMIT): a face neither jumps across the frame nor halves in size within a few strides,
    but the cascade fires on an eye or the background where it misses the real face (a wide-open mouth, a turned
    head), and on a second person; none of those may enter the track."""
    width = previous[2]
    candidates = [
        box
        for box, _ in faces
        if _distance(box, _centre(previous)) <= MAX_JUMP * width
        and (not recent or SHRINK_LIMIT <= box[2] / width <= 1 / SHRINK_LIMIT)
    ]
    return min(candidates, key=lambda box: _distance(box, _centre(previous)), default=None)


def _unmatched(choice: str, frame: int, boxes: list[Box]) -> str:
    where = ", ".join("({}, {}, {}, {})".format(*(round(v) for v in box)) for box in boxes)
    return (
        f"face choice {choice!r} names none of the {len(boxes)} face(s) found in avatar frame {frame}, the first "
        f"with faces (x, y, w, h from the left): {where}"
    )


def _centre(box: Box) -> tuple[float, float]:
    return box[0] + box[2] / 2, box[1] + box[3] / 2


def _distance(box: Box, point: tuple[float, float]) -> float:
    cx, cy = _centre(box)
    return float(np.hypot(cx - point[0], cy - point[1]))


# --- detection ---------------------------------------------------------------------------------------------------


def _load_cascade(name: str) -> cv2.CascadeClassifier:
    path = os.path.join(cv2.data.haarcascades, name)
    cascade = cv2.CascadeClassifier(path)
    if cascade.empty():
        raise DhgenError(
            f"cannot load the Haar cascade {path}", hint="install opencv-python-headless<5 (5.x ships no cascades)"
        )
    return cascade


@dataclass(frozen=True)
class _View:
    """A frame as the cascades see it: grayscale, downscaled by `scale` to at most `detect_width` wide."""

    gray: np.ndarray
    scale: float

    @classmethod
    def of(cls, frame: np.ndarray, detect_width: int) -> _View:
        gray = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
        scale = min(1.0, detect_width / gray.shape[1]) if detect_width > 0 else 1.0
        if scale < 1.0:
            size = (max(1, round(gray.shape[1] * scale)), max(1, round(gray.shape[0] * scale)))
            gray = cv2.resize(gray, size, interpolation=cv2.INTER_AREA)
        return cls(gray, scale)

    @property
    def frame_size(self) -> tuple[int, int]:
        """(width, height) of the frame, in frame pixels."""
        return round(self.gray.shape[1] / self.scale), round(self.gray.shape[0] / self.scale)

    def faces(self, cascade, near: Box | None = None, *, window: bool = True, mirrored: bool = False):
        """The cascade's detections, (box in frame pixels, confidence): anywhere in the frame, or, given `near`
        (a recent box of the face), only those that could continue it (MAX_JUMP, SHRINK_LIMIT): of a like size, and
        with `window`, near it. Fewer scales and places make the cascade several times cheaper. `mirrored` looks at
        the mirror image (for the profile cascade: faces turned the other way); boxes are in the frame's own
        coordinates."""
        x0, y0, x1, y1 = self._window(near if window else None)
        gray = self.gray[y0:y1, x0:x1]
        least = max(20, min(self.gray.shape[:2]) // 12)  # of the whole frame, wherever the cascade looks
        most = 0  # no limit
        if near is not None:
            least = max(least, int(SHRINK_LIMIT * near[2] * self.scale))
            most = int(np.ceil(near[2] * self.scale / SHRINK_LIMIT))
        if min(gray.shape[:2]) < least:
            return []
        found = cascade_faces(cascade, gray[:, ::-1] if mirrored else gray, least, most)
        if mirrored:
            found = [((gray.shape[1] - x - w, y, w, h), weight) for (x, y, w, h), weight in found]
        return [(tuple(v / self.scale for v in (x + x0, y + y0, w, h)), weight) for (x, y, w, h), weight in found]

    def _window(self, near: Box | None) -> tuple[int, int, int, int]:
        height, width = self.gray.shape[:2]
        if near is None:
            return 0, 0, width, height
        cx, cy = (v * self.scale for v in _centre(near))
        reach = (MAX_JUMP + 0.5 / SHRINK_LIMIT) * near[2] * self.scale  # the farthest edge of a continuing face
        x0, y0 = max(0, int(cx - reach)), max(0, int(cy - reach))
        return x0, y0, min(width, int(np.ceil(cx + reach))), min(height, int(np.ceil(cy + reach)))


def cascade_faces(
    cascade: cv2.CascadeClassifier, gray: np.ndarray, min_side: int | None = None, max_side: int = 0
) -> list[tuple[Box, float]]:
    """The faces the cascade finds, each with its confidence (the cascade's level weight: a real face scores
    several times what a patch of background or an eye does). Faces from `min_side` (default: a twelfth of the
    image's shorter side, at least 20 px) to `max_side` (0: any) across."""
    min_side = min_side or max(20, min(gray.shape[:2]) // 12)
    faces, _, weights = cascade.detectMultiScale3(
        np.ascontiguousarray(gray),
        scaleFactor=1.1,
        minNeighbors=5,
        minSize=(min_side, min_side),
        maxSize=(max_side, max_side),
        outputRejectLevels=True,
    )
    return [(tuple(float(v) for v in face), float(w)) for face, w in zip(faces, np.ravel(weights), strict=True)]


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


def interpolate_boxes(found: dict[int, Box], n: int, stride: int, smooth: float, missed=()) -> np.ndarray:
    """float32 (n, 4) boxes from detections at some frame indices.

    Detections are smoothed (see `_smooth_runs`) within runs that have no gap of more than two strides; frames
    between detections are interpolated linearly, except across a longer gap, where each frame takes its nearer
    detection. Frames farther than `stride` from every detection are NaN, and so are frames outside the bridged
    gaps that a `missed` frame (examined without the face) separates from their nearer detection.
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
    distance = np.abs(idx[nearer] - grid)
    boxes[distance > stride] = np.nan
    misses = np.zeros(n + 1, np.int64)  # misses[k]: frames examined without the face among frames 0..k-1
    misses[1:] = np.cumsum(np.isin(grid, list(missed)))
    unbridged = far_apart | (grid < idx[0]) | (grid > idx[-1])
    lo, hi = np.minimum(grid, idx[nearer]), np.maximum(grid, idx[nearer])
    boxes[unbridged & (misses[hi + 1] > misses[lo])] = np.nan
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
        "choice": face_choice(options.choice),
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
            first_frame, chosen = int(data["first_frame"]), int(data["chosen"])
            faces = data["faces_found"].astype(np.float32)
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
        and faces.ndim == 2
        and faces.shape[1] == 4
        and 0 <= chosen < len(faces)
    )
    if not valid:
        log.warning("ignoring inconsistent face cache %s", cache_file)
        return None
    if len(boxes) < n:
        return None
    return FaceTrack(boxes, ref_index, reference, True, first_frame, faces, chosen)


def _save_cache(cache_file: Path, track: FaceTrack) -> None:
    """Write atomically (temp file + rename). A cache that cannot be written only costs a later re-detection."""
    _, png = cv2.imencode(".png", track.reference_frame, [cv2.IMWRITE_PNG_COMPRESSION, 1])
    buffer = io.BytesIO()
    np.savez(
        buffer,
        boxes=track.boxes,
        reference_index=np.int64(track.reference_index),
        reference_png=png,
        first_frame=np.int64(track.first_frame),
        faces_found=track.faces_found,
        chosen=np.int64(track.chosen),
    )
    try:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        replace_atomically(cache_file, buffer.getbuffer())
    except OSError as exc:
        log.warning("cannot write face cache %s: %s", cache_file, exc)
