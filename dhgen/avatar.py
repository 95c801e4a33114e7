"""Avatar decoding: probe, frame schedule (loop/ping-pong), streaming frames.

`probe_avatar` reads a file once (demuxing, not decoding: one frame is decoded for size and rotation) and returns
an `AvatarInfo` with the exact frame count and every frame's timestamp. `frame_schedule` says which avatar frame
each output frame shows. `iter_frames` streams those frames without holding the video in memory: forward runs
decode sequentially, the backward half of ping-pong is decoded in bounded chunks (seek to a keyframe, decode
forward, yield the chunk reversed), and "loop" re-decodes from the start.

Frames are BGR uint8, C-contiguous, upright (the display-matrix rotation is applied) and of even size. Each
yielded array is the caller's own (callers paste into frames in place).
"""

from __future__ import annotations

import bisect
import functools
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from fractions import Fraction

import av
import cv2
import numpy as np

from dhgen.errors import AvatarDecodeError, MissingInputError, reason
from dhgen.options import LOOP_MODES, AvatarOptions

log = logging.getLogger(__name__)

REVERSE_CHUNK_BYTES = 256 * 2**20  # memory bound for one backward ping-pong chunk of BGR frames
_ROTATE = {90: cv2.ROTATE_90_CLOCKWISE, 180: cv2.ROTATE_180, 270: cv2.ROTATE_90_COUNTERCLOCKWISE}


@dataclass(frozen=True)
class AvatarInfo:
    """What `probe_avatar` learnt about an avatar file.

    `width` and `height` are those of the frames as yielded: after rotation, and after cropping an odd width or
    height by one pixel (the right column / bottom row) so that yuv420p encoding works.
    """

    path: str
    width: int
    height: int
    fps: Fraction  # the video's average frame rate; for a still image, AvatarOptions.still_fps
    n_frames: int  # frames that demux (counted, not read from metadata); 1 for a still image
    is_still: bool
    rotation: int  # degrees (0/90/180/270) the stored frames are turned clockwise to stand upright
    pts: tuple[int, ...] = field(default=(), repr=False)  # each frame's timestamp, display order; () = unknown
    keyframes: tuple[int, ...] = field(default=(0,), repr=False)  # frame indices a seek can start decoding at


# --- probing -----------------------------------------------------------------------------------------------------


def probe_avatar(path, options: AvatarOptions | None = None) -> AvatarInfo:
    """Probe an avatar video or still image.

    Raises MissingInputError when the file is missing or unreadable, AvatarDecodeError when it is not media,
    has no video stream, or is truncated.
    """
    options = options or AvatarOptions()
    path = str(path)
    if not os.path.isfile(path):
        raise MissingInputError("avatar file not found", path=path)
    try:
        with av.open(path) as container:
            return _probe_container(container, path, options)
    except (av.error.FileNotFoundError, av.error.PermissionError, PermissionError) as exc:
        raise MissingInputError(f"cannot read avatar: {exc}", path=path) from exc
    except av.error.FFmpegError as exc:
        raise AvatarDecodeError(f"cannot decode avatar: {reason(exc)}", path=path) from exc


def _probe_container(container, path: str, options: AvatarOptions) -> AvatarInfo:
    if not container.streams.video:
        raise AvatarDecodeError("no video stream (is this an audio file?)", path=path)
    stream = container.streams.video[0]
    first, pts, keyframes = _scan(container, stream, path)
    if first is None:
        raise AvatarDecodeError("no frame could be decoded", path=path)
    rotation = _rotation(first)
    width, height = (first.height, first.width) if rotation in (90, 270) else (first.width, first.height)
    n_frames = max(len(pts), 1)
    is_still = n_frames == 1
    fps = _as_fraction(options.still_fps) if is_still else _frame_rate(stream, pts)
    return AvatarInfo(
        path=path,
        width=width - width % 2,
        height=height - height % 2,
        fps=fps,
        n_frames=n_frames,
        is_still=is_still,
        rotation=rotation,
        pts=tuple(pts) if None not in pts and len(set(pts)) == len(pts) else (),
        keyframes=tuple(keyframes),
    )


def _scan(container, stream, path: str):
    """Demux every packet of `stream`: (first decoded frame, sorted frame timestamps, keyframe indices)."""
    first = None
    found: list[tuple[int | None, bool]] = []
    demuxed = 0
    for packet in container.demux(stream):
        if packet.size == 0:  # the flush packet at the end
            if first is None:
                first = next(iter(stream.decode(None)), None)
            continue
        demuxed += 1
        if packet.is_corrupt:
            raise AvatarDecodeError(f"truncated or damaged (packet {demuxed} is incomplete)", path=path)
        if first is None:
            first = next(iter(packet.decode()), None)
        if not packet.is_discard:
            found.append((packet.pts, bool(packet.is_keyframe)))
    if stream.frames and demuxed < stream.frames:
        raise AvatarDecodeError(
            f"truncated: the file lists {stream.frames} frames but only {demuxed} could be read", path=path
        )
    if any(p is None for p, _ in found):
        return first, [None] * len(found), [0]
    found.sort(key=lambda item: item[0])
    keyframes = [i for i, (_, key) in enumerate(found) if key] or [0]
    return first, [p for p, _ in found], keyframes if keyframes[0] == 0 else [0, *keyframes]


def _rotation(frame) -> int:
    """Clockwise degrees that make the frame upright (PyAV's `rotation` is counter-clockwise)."""
    try:
        ccw = frame.rotation
    except (AttributeError, ValueError):
        return 0
    return int(-round(float(ccw or 0) / 90.0) * 90) % 360


def _frame_rate(stream, pts: list) -> Fraction:
    for rate in (stream.average_rate, stream.guessed_rate, stream.base_rate):
        if rate and rate > 0:
            return Fraction(rate)
    if len(pts) > 1 and None not in pts and pts[-1] > pts[0] and stream.time_base:
        return ((len(pts) - 1) / ((pts[-1] - pts[0]) * stream.time_base)).limit_denominator(1001)
    return Fraction(25)


def _as_fraction(rate: float) -> Fraction:
    return Fraction(rate).limit_denominator(1001)


# --- schedule (pure) ---------------------------------------------------------------------------------------------


def frame_schedule(n_avatar: int, n_out: int, loop: str = "pingpong") -> np.ndarray:
    """The avatar frame index for each of `n_out` output frames.

    A longer avatar is cut. A shorter one is extended by "pingpong" (0, 1, .., n-1, n-2, .., 1, 0, 1, ..; the end
    frames are not repeated) or "loop" (0, .., n-1, 0, ..).
    """
    if loop not in LOOP_MODES:
        raise ValueError(f"loop must be one of {LOOP_MODES}, not {loop!r}")
    if n_avatar < 1:
        raise ValueError("an avatar has at least one frame")
    out = np.arange(max(n_out, 0), dtype=np.int64)
    if n_out <= n_avatar or n_avatar == 1:
        return np.minimum(out, n_avatar - 1)
    if loop == "loop":
        return out % n_avatar
    period = 2 * n_avatar - 2
    phase = out % period
    return np.where(phase < n_avatar, phase, period - phase)


def decode_plan(schedule: np.ndarray, keyframes, max_frames: int) -> list[tuple[int, int, bool]]:
    """How to produce `schedule` from a decoder: (start, stop, reverse) ranges of avatar frames, in order.

    Ascending runs are decoded forward in one range. A descending run is split into chunks of at most
    `max_frames` frames (whole keyframe intervals where they fit), each decoded forward and yielded reversed.
    """
    plan: list[tuple[int, int, bool]] = []
    for first, last in _runs(schedule):
        if last >= first:
            plan.append((first, last + 1, False))
            continue
        top = first + 1
        while top > last:
            start = _chunk_start(last, top, max_frames, keyframes)
            plan.append((start, top, True))
            top = start
    return plan


def _runs(schedule: np.ndarray) -> Iterator[tuple[int, int]]:
    """Maximal runs of consecutive indices stepping by +1 or -1, as (first, last)."""
    i, n = 0, len(schedule)
    while i < n:
        j = i + 1
        step = int(schedule[j] - schedule[i]) if j < n else 1
        if step not in (1, -1):
            step = 1
        while j < n and schedule[j] - schedule[j - 1] == step:
            j += 1
        yield int(schedule[i]), int(schedule[j - 1])
        i = j


def _chunk_start(low: int, top: int, max_frames: int, keyframes) -> int:
    floor = max(low, top - max(1, max_frames))
    if floor == low:
        return low
    k = bisect.bisect_left(keyframes, floor)
    if k < len(keyframes) and keyframes[k] < top:
        return keyframes[k]
    return floor


# --- streaming ---------------------------------------------------------------------------------------------------


def iter_frames(
    info: AvatarInfo,
    n_out: int,
    loop: str = "pingpong",
    *,
    chunk_bytes: int = REVERSE_CHUNK_BYTES,
    threads: int = 0,
) -> Iterator[tuple[int, np.ndarray]]:
    """Stream (avatar_index, BGR frame) for each of `n_out` output frames, following `frame_schedule`.

    Memory stays bounded: at most about `chunk_bytes` of frames are held (for the backward half of ping-pong).
    `threads` is the decoder's thread count (0: FFmpeg picks, usually one per core). Raises AvatarDecodeError
    (naming the file) when decoding fails part-way.
    """
    schedule = frame_schedule(info.n_frames, n_out, loop)
    if info.is_still:
        still = _decode_still(info)
        for _ in range(n_out):
            yield 0, still.copy()
        return
    max_frames = max(1, chunk_bytes // max(1, info.width * info.height * 3))
    with _Decoder(info, threads) as decoder:
        for start, stop, reverse in decode_plan(schedule, info.keyframes, max_frames):
            if not reverse:
                yield from decoder.frames(start, stop)
                continue
            # Hold the chunk as decoded (YUV) frames and convert each as it is yielded: less memory, and
            # the conversions reuse memory the way a forward pass does.
            chunk = list(decoder.decoded(start, stop))
            while chunk:
                i, frame = chunk.pop()
                yield i, decoder.to_bgr(frame)


def iter_first_frames(info: AvatarInfo, n: int, *, step: int = 1, threads: int = 0) -> Iterator[tuple[int, np.ndarray]]:
    """The first min(n, n_frames) frames in order.

    With `step` > 1 only every step-th frame and the last one are converted and yielded (the others are decoded,
    which sequential decoding needs, but not converted).
    """
    n = min(n, info.n_frames)
    for i, load in iter_frame_loaders(info, n, threads=threads):
        if i % step == 0 or i == n - 1:
            yield i, load()


def iter_frame_loaders(info: AvatarInfo, n: int, *, threads: int = 0) -> Iterator[tuple[int, Callable[[], np.ndarray]]]:
    """(i, load) for the first min(n, n_frames) frames in order, for face detection: every frame is decoded
    (sequential decoding needs it), but converted to a BGR frame only when its `load()` is called, which may be
    after the iteration has moved on (so a detector converts just the frames it looks at)."""
    n = min(n, info.n_frames)
    if n <= 0:
        return
    if info.is_still:
        still = _decode_still(info)
        yield 0, lambda: still
        return
    with _Decoder(info, threads) as decoder:
        for i, frame in decoder.decoded(0, n):
            yield i, functools.partial(decoder.to_bgr, frame)


def _decode_still(info: AvatarInfo) -> np.ndarray:
    with _Decoder(info) as decoder:
        return next(decoder.frames(0, 1))[1]


class _Decoder:
    """One open container that decodes index ranges, seeking only when a range does not continue the last one.

    Frames are identified by their timestamp (so a seek that lands early is harmless: frames before the range
    are decoded but skipped). Without timestamps every seek restarts from the beginning of the file.
    """

    def __init__(self, info: AvatarInfo, threads: int = 0) -> None:
        self.info = info
        self._threads = max(0, threads)
        self._index = {p: i for i, p in enumerate(info.pts)}
        self._container = None
        self._stream = None
        self._packets: Iterator | None = None
        self._pending: list = []
        self._position = 0  # index of the next frame the running decode produces
        self._from_start = True
        self._counter = 0

    def __enter__(self) -> _Decoder:
        self._open()
        return self

    def __exit__(self, *exc) -> None:
        self._close()

    def frames(self, start: int, stop: int, keep=None) -> Iterator[tuple[int, np.ndarray]]:
        """Yield (i, BGR frame) for start <= i < stop (only where keep(i), when given)."""
        for i, frame in self.decoded(start, stop, keep):
            yield i, self.to_bgr(frame)

    def decoded(self, start: int, stop: int, keep=None) -> Iterator[tuple[int, av.VideoFrame]]:
        """Like `frames`, but the decoder's own frames, not yet converted (half the memory of BGR for 4:2:0)."""
        if not self._continues_to(start):
            self._seek(start)
        wanted = start
        while wanted < stop:
            i, frame = self._next_frame(wanted)
            if i < wanted:
                continue
            if i > wanted:  # a seek overshot, or a frame is missing: decode again from the start
                if self._from_start:
                    raise AvatarDecodeError(f"frame {wanted} of {self.info.n_frames} is missing", path=self.info.path)
                self._seek(0)
                continue
            if keep is None or keep(i):
                yield i, frame
            wanted += 1

    def _continues_to(self, start: int) -> bool:
        if self._packets is None or self._position > start:
            return False
        return not self._index or self.info.keyframes[self._keyframe_before(start)] <= self._position

    def _keyframe_before(self, index: int) -> int:
        return max(0, bisect.bisect_right(self.info.keyframes, index) - 1)

    def _seek(self, index: int) -> None:
        key = self.info.keyframes[self._keyframe_before(index)] if self._index else 0
        if key == 0:
            self._close()
            self._open()
            return
        self._call(self._container.seek, self.info.pts[key], stream=self._stream, backward=True)
        self._packets = self._container.demux(self._stream)
        self._pending, self._position, self._from_start = [], key, False

    def _next_frame(self, wanted: int):
        """The next decoded (index, av frame); AvatarDecodeError when the stream ends before `wanted`."""
        while not self._pending:
            packet = self._call(next, self._packets, None)
            if packet is None:
                n = self.info.n_frames
                raise AvatarDecodeError(f"the video ended before frame {wanted} of {n}", path=self.info.path)
            self._pending = self._indexed(self._call(packet.decode))[::-1]
        i, frame = self._pending.pop()
        self._position = i + 1
        return i, frame

    def _indexed(self, frames) -> list:
        if not self._index:  # no timestamps: number frames in decode order (every seek restarts from the start)
            numbered = list(enumerate(frames, start=self._counter))
            self._counter += len(numbered)
            return numbered
        return [(self._index[f.pts], f) for f in frames if f.pts in self._index]

    def to_bgr(self, frame) -> np.ndarray:
        """The one conversion per frame (plus a rotation or an odd-size crop where the file needs it)."""
        info = self.info
        image = frame.to_ndarray(format="bgr24")
        if info.rotation:
            image = cv2.rotate(image, _ROTATE[info.rotation])
        if image.shape[0] != info.height or image.shape[1] != info.width:
            image = _fit(image, info.width, info.height)
        return image

    def _call(self, fn, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except av.error.FFmpegError as exc:
            raise AvatarDecodeError(f"decoding failed: {reason(exc)}", path=self.info.path) from exc

    def _open(self) -> None:
        self._container = self._call(av.open, self.info.path)
        if not self._container.streams.video:
            raise AvatarDecodeError("no video stream", path=self.info.path)
        self._stream = self._container.streams.video[0]
        self._stream.codec_context.thread_type = "AUTO"
        self._stream.codec_context.thread_count = self._threads
        self._packets = self._container.demux(self._stream)
        self._pending, self._position, self._from_start, self._counter = [], 0, True, 0

    def _close(self) -> None:
        if self._container is not None:
            self._container.close()
        self._container, self._packets = None, None


def _fit(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """Crop the odd last row/column (or rescale a frame whose size changed mid-stream) to width x height."""
    h, w = image.shape[:2]
    if h - height in (0, 1) and w - width in (0, 1):
        return np.ascontiguousarray(image[:height, :width])
    log.debug("frame size %dx%d differs from %dx%d; rescaling", w, h, width, height)
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)
