"""One job, start to finish: audio -> features, avatar -> frames, faces -> crops -> model -> paste -> encode.

Runs in whichever process calls it (a job process under the supervisor, or the caller's own). The model is
reached through an `Inference` object, so the same loop serves a model in this process or a remote inference
worker. Frames stream through in small chunks; at most `max_in_flight` chunks wait for the model at a time.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections import deque
from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from itertools import islice
from pathlib import Path
from typing import Protocol

import numpy as np

from dhgen.audio import Audio, frame_count, load_audio
from dhgen.avatar import AvatarInfo, frame_schedule, iter_frames, probe_avatar
from dhgen.composite import paste
from dhgen.errors import NoFaceError
from dhgen.face import FaceTrack, track_faces
from dhgen.manifest import Job
from dhgen.models import AudioRequest, CropBatch, ModelFamily, PatchBatch, Rect, answer_requests, get_family
from dhgen.options import RenderOptions
from dhgen.writer import VideoWriter, output_error

log = logging.getLogger(__name__)

ProgressFn = Callable[[str, int], None]  # (counter, value): "decoded" / "inferred" / "encoded" frames so far
CHUNK_FRAMES = 16  # frames a job hands to the model at once (the worker may merge chunks of several jobs)


class Inference(Protocol):
    """How a job reaches its model: requests are submitted and collected later (several in flight). A CropBatch
    is answered with a PatchBatch; an AudioRequest (once per job, for a family that computes its audio features
    with a network) with the features."""

    def submit(self, request: CropBatch | AudioRequest) -> Hashable: ...

    def collect(self, ticket: Hashable) -> PatchBatch | np.ndarray: ...


class LocalInference:
    """Runs the model in this process: `submit` computes, `collect` hands the result back."""

    def __init__(self, predictor) -> None:
        self._predictor = predictor
        self.device, self.dtype = predictor.device, predictor.dtype
        self._results: dict[int, PatchBatch | np.ndarray] = {}
        self._next = 0

    def submit(self, request: CropBatch | AudioRequest) -> int:
        self._next += 1
        self._results[self._next] = answer_requests(self._predictor, [request])[0]
        return self._next

    def collect(self, ticket: int) -> PatchBatch | np.ndarray:
        return self._results.pop(ticket)


@dataclass(frozen=True)
class JobOutcome:
    frames: int
    fps: Fraction
    width: int
    height: int
    duration_s: float
    frames_digest: str  # sha256 of the frames as handed to the encoder (dhgen.writer)
    encoder: dict  # what encoded them, and why (dhgen.encoders.ResolvedEncoder.record)
    face: dict | None = None  # which face was animated (dhgen.face.FaceTrack.record)
    face_coverage: float | None = None  # the share of frames that got a mouth


@dataclass
class _Chunk:
    frames: list[np.ndarray]
    rects: list[Rect | None]  # None: no face in that frame, it passes through unchanged
    ticket: Hashable | None


class _Job:
    """The state of one render: its inputs, prepared once, and the loop that streams frames through."""

    def __init__(self, job: Job, options: RenderOptions, inference: Inference, progress: ProgressFn | None) -> None:
        self.job, self.options, self.inference = job, options, inference
        self.family: ModelFamily = get_family(options.model.name)
        self.progress = progress or (lambda counter, value: None)
        self.audio: Audio = load_audio(job.audio)
        self.info: AvatarInfo = probe_avatar(job.avatar, options.avatar)
        self.n_out = frame_count(self.audio.duration_s, self.info.fps)
        self.track: FaceTrack = track_faces(self.info, min(self.n_out, self.info.n_frames), options.face)
        self.ref_crop = self._reference_crop()
        self.face_coverage = self._coverage()
        self.counts = {"decoded": 0, "inferred": 0, "encoded": 0}
        self.progress("total", self.n_out)
        self.cond = conditioning(self.family, self.audio, self.info.fps, self.n_out, inference)

    def run(self, max_in_flight: int) -> JobOutcome:
        info = self.info
        make_output_folder(self.job.output)
        # encode.threads is this process's share of the cores (the supervisor sets it); decoding gets the same.
        frames = prefetched(
            iter_frames(info, self.n_out, self.options.avatar.loop, threads=self.options.encode.threads),
            depth=CHUNK_FRAMES,
        )
        pending: deque[_Chunk] = deque()
        with VideoWriter(
            self.job.output, info.width, info.height, info.fps, self.job.audio, self.options.encode
        ) as writer:
            while chunk := list(islice(frames, CHUNK_FRAMES)):
                pending.append(self._submit(chunk))
                while len(pending) > max_in_flight:
                    self._finish(pending.popleft(), writer)
            while pending:
                self._finish(pending.popleft(), writer)
            written = writer.frames_written
        return JobOutcome(
            written,
            info.fps,
            info.width,
            info.height,
            float(written / info.fps),
            frames_digest=writer.frames_digest,
            encoder=writer.encoder_record,
            face=self.track.record(self.options.face.choice),
            face_coverage=round(self.face_coverage, 4),
        )

    def _rect(self, avatar_index: int) -> Rect | None:
        box = self.track.boxes[avatar_index] if avatar_index < len(self.track.boxes) else None
        if box is None or np.isnan(box).any():
            return None
        rect = self.family.crop_rect(box, self.info.width, self.info.height, self.options.model.pads)
        return rect if rect[2] - rect[0] >= 8 and rect[3] - rect[1] >= 8 else None

    def _reference_crop(self) -> np.ndarray:
        rect = self._rect(self.track.reference_index)
        if rect is None:
            raise NoFaceError("the face is too small to animate (under 8 pixels across)", path=self.job.avatar)
        return self.family.extract_crop(self.track.reference_frame, rect)

    def _coverage(self) -> float:
        """The share of output frames that get a mouth; NoFaceError under `--min-face-coverage`, before any
        frame is encoded."""
        schedule = frame_schedule(self.info.n_frames, self.n_out, self.options.avatar.loop)
        faced = np.array([self._rect(i) is not None for i in range(int(schedule.max()) + 1)])
        covered = int(faced[schedule].sum())
        share = covered / self.n_out
        least = self.options.face.min_coverage
        if share < least:
            raise NoFaceError(
                f"the face is in {covered} of {self.n_out} frames ({share:.0%}), under --min-face-coverage {least:g}",
                path=self.job.avatar,
                hint="use an avatar whose face stays in view and turned to the camera, choose another face (--face), "
                "or lower --min-face-coverage",
            )
        return share

    def _submit(self, chunk: list[tuple[int, np.ndarray]]) -> _Chunk:
        start = self.counts["decoded"]
        frames = [frame for _, frame in chunk]
        rects = [self._rect(avatar_index) for avatar_index, _ in chunk]
        self._count("decoded", len(chunk))
        faced = [i for i, rect in enumerate(rects) if rect is not None]
        if not faced:
            return _Chunk(frames, rects, None)
        batch = CropBatch(
            crops=np.stack([self.family.extract_crop(frames[i], rects[i]) for i in faced]),
            refs=self.ref_crop[None],
            cond=self.cond[[start + i for i in faced]],
        )
        return _Chunk(frames, rects, self.inference.submit(batch))

    def _finish(self, chunk: _Chunk, writer: VideoWriter) -> None:
        if chunk.ticket is not None:
            result = self.inference.collect(chunk.ticket)
            faced = [(frame, rect) for frame, rect in zip(chunk.frames, chunk.rects, strict=True) if rect]
            for i, (frame, rect) in enumerate(faced):
                paste(frame, rect, result.patches[i], result.alpha(i))
        self._count("inferred", len(chunk.frames))
        for frame in chunk.frames:
            writer.write(frame)
        self._count("encoded", len(chunk.frames))

    def _count(self, counter: str, n: int) -> None:
        self.counts[counter] += n
        self.progress(counter, self.counts[counter])


def make_output_folder(output: Path) -> None:
    """Create the folder an output goes to (a manifest's `output` may name a subfolder of the output folder)."""
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise output_error(exc, output, f"create the folder {output.parent}") from exc


def conditioning(
    family: ModelFamily, audio: Audio, fps: Fraction, n_frames: int, inference: Inference | None = None
) -> np.ndarray:
    """The model's input for each video frame: the family's audio features, computed here (DSP) or, for a family
    whose features come from a network, by the inference worker (once per job), then cut per frame here."""
    if family.audio_in_worker:
        features = inference.collect(inference.submit(AudioRequest(audio.samples)))
    else:
        features = family.audio_features(audio.samples)
    return family.conditioning(features, fps, n_frames)


def render_job(
    job: Job, options: RenderOptions, inference: Inference, progress: ProgressFn | None = None, max_in_flight: int = 2
) -> JobOutcome:
    """Render one job to `job.output`; raises a DhgenError subclass when its input or output fails."""
    return _Job(job, options, inference, progress).run(max_in_flight)


def prefetched(items: Iterator, depth: int) -> Iterator:
    """`items`, produced by a background thread up to `depth` ahead (decoding overlaps encoding: both release
    the GIL). An exception in the producer is raised here, at the item where it happened."""
    buffer: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        buffer.put((item, None), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer
            buffer.put((None, exc))
            return
        buffer.put((None, StopIteration()))

    thread = threading.Thread(target=produce, name="decode", daemon=True)
    thread.start()
    try:
        while True:
            item, exc = buffer.get()
            if isinstance(exc, StopIteration):
                return
            if exc is not None:
                raise exc
            yield item
    finally:
        stop.set()
        thread.join()
