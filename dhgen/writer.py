"""The output file: H.264 or HEVC + AAC in MP4, written in one pass with PyAV.

`VideoWriter` owns everything about the file on disk. Frames (BGR uint8) are converted to yuv420p with OpenCV
and encoded with the run's encoder (`dhgen.encoders`: libx264 by default; HEVC is tagged `hvc1`, which Safari and
QuickTime require); the source audio is decoded and AAC-encoded incrementally, muxed up to the current video
time as frames arrive, so the file is interleaved and memory stays flat. All of it goes to a temp file beside the
target (`.<name>.<pid>.partial.mp4`, moov atom first); on success that file is fsynced and atomically renamed
over the target, on any failure it is deleted and the target is left as it was.

Measured on the 2-core dev box (ms per frame, 720p / 1080p): `cv2.cvtColor(BGR2YUV_I420)` + `from_ndarray
(yuv420p)` 0.7 / 1.9, against 3.0 / 15.5 for swscale's bgr24->yuv420p (what the encoder's own reformat or
`frame.reformat` does), so OpenCV converts (~4 ms less CPU per 720p frame end to end). x264 runs frame threads:
one 720p writer made ~12 % more frames/s than with PyAV's default slice threads, at about the same CPU per frame.

`frames_digest` is a sha256 over the yuv420p frames exactly as handed to the encoder (per frame the Y plane, then
U, then V, rows unpadded): the same inputs and options give the same digest whatever encoder, threads, executor or
crash-and-replay produced the file. It costs ~1 ms of CPU per 720p frame (sha256 with SHA-NI): ~4 % of a libx264
veryfast writer's CPU, ~2.4 % of libx265's (tools/digest_cost.py). It is hashed inline: hashing on a background
thread measured no better on 2 cores (CPU +4 %, wall +5 %, within noise), and where the encoders keep every core
busy only CPU counts.
"""

from __future__ import annotations

import errno
import fractions
import hashlib
import logging
import os
from pathlib import Path

import av
import cv2
import numpy as np

from dhgen.encoders import ResolvedEncoder, encoder_for, encoder_settings, failure_words, family, ffmpeg_log
from dhgen.errors import (
    AudioDecodeError,
    DhgenError,
    EncodeError,
    HardwareEncodeError,
    MissingInputError,
    OutputError,
    reason,
)
from dhgen.files import fsync_file, fsync_folder, replace_atomically
from dhgen.options import EncodeOptions

log = logging.getLogger(__name__)

# Sample rates the AAC encoder accepts (MPEG-4 sampling frequency index table).
AAC_RATES = frozenset({96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000, 7350})
AAC_FALLBACK_RATE = 48000
AAC_MAX_BITS_PER_SAMPLE = 6  # 6144 bits per channel per 1024-sample frame: the encoder's hard ceiling

# cv2's BGR->I420 is the BT.601 matrix in limited range; tag the stream so players do not assume BT.709 for HD.
_AVCOL_SPC_SMPTE170M = 6
_AVCOL_RANGE_MPEG = 1
HEVC_TAG = "hvc1"  # parameter sets in the sample entry: what Safari/QuickTime play (FFmpeg's default hev1 is not)

# Test hook: DHGEN_TEST_FAULT=encoder_eof_at:N flushes the encoder before frame N, so FFmpeg refuses that frame
# (a real encoder failure mid-stream, as when a hardware encoder is lost).
_FAULT_PREFIX = "encoder_eof_at:"

_OUTPUT_HINTS = {
    errno.ENOSPC: "free disk space on the output volume",
    errno.EDQUOT: "the disk quota is exhausted; free space or raise the quota",
    errno.EFBIG: "the file exceeds the size limit of the volume or process (ulimit -f)",
    errno.EACCES: "make the output folder writable for this user",
    errno.EPERM: "make the output folder writable for this user",
    errno.EROFS: "the output volume is read-only; choose another --out folder",
    errno.ENOENT: "create the output folder first",
    errno.ENOTDIR: "a path component of the output is a file, not a folder",
}


def aac_rate(rate: int) -> int:
    """The AAC sample rate for a source rate: the same rate if AAC supports it, else 48 kHz."""
    return rate if rate in AAC_RATES else AAC_FALLBACK_RATE


def temp_path_for(target: Path, pid: int | None = None) -> Path:
    """The temp file beside `target` that a writer in process `pid` (default: this one) fills before the rename."""
    return target.with_name(f".{target.name}.{pid or os.getpid()}.partial.mp4")


def output_error(exc: OSError, path: Path, doing: str) -> OutputError:
    """An OutputError naming `path` and the OS reason (strerror) of `exc`."""
    reason = os.strerror(exc.errno) if exc.errno else str(exc)
    return OutputError(f"cannot {doing}: {reason}", path=path, hint=_OUTPUT_HINTS.get(exc.errno))


def _wrap(exc: BaseException, path: Path, doing: str) -> BaseException:
    """Our error for a failure while writing `path`; exceptions that are not media/OS errors pass unchanged."""
    if isinstance(exc, DhgenError):
        return exc
    if isinstance(exc, OSError):  # includes av.error.OSError & co (they subclass the builtins)
        return output_error(exc, path, doing)
    if isinstance(exc, av.error.FFmpegError):
        return EncodeError(f"encoder failed while {doing}: {reason(exc)}", path=path)
    return exc


def _raise_wrapped(err: BaseException, path: Path, doing: str):
    """Raise `_wrap(err)`, chained from `err` (or `err` itself when it passes unchanged)."""
    wrapped = _wrap(err, path, doing)
    if wrapped is err:
        raise err
    raise wrapped from err


class _AudioTranscoder:
    """Decodes the source audio and AAC-encodes it into `container`, a little at a time."""

    def __init__(self, audio_path: Path, container: av.container.OutputContainer, bit_rate: int) -> None:
        self.path = audio_path
        self.container = container
        self.source = _open_audio(audio_path)
        in_stream = self.source.streams.audio[0]
        rate = aac_rate(in_stream.codec_context.sample_rate or 0)
        channels = 1 if in_stream.codec_context.channels == 1 else 2
        self.stream = container.add_stream("aac", rate=rate, layout="mono" if channels == 1 else "stereo")
        self.stream.bit_rate = min(bit_rate, AAC_MAX_BITS_PER_SAMPLE * rate * channels)
        self._frames = self.source.decode(in_stream)
        self._source_rate = 0  # taken from the first decoded frame
        self._samples_in = 0  # source samples handed to the encoder so far
        self._eof = False

    @property
    def seconds_in(self) -> float:
        return self._samples_in / self._source_rate if self._source_rate else 0.0

    def mux_until(self, seconds: float) -> None:
        """Encode and mux source audio until at least `seconds` of it have gone in (or it ends)."""
        while not self._eof and self.seconds_in < seconds:
            frame = self._next_frame()
            if frame is None:
                self._eof = True
            else:
                self._encode(frame)

    def mux_rest(self) -> None:
        """Encode and mux the rest of the source audio, then flush the encoder."""
        self.mux_until(float("inf"))
        self.container.mux(self.stream.encode(None))

    def close(self) -> None:
        self.source.close()

    def _next_frame(self) -> av.AudioFrame | None:
        try:
            return next(self._frames, None)
        except av.error.FFmpegError as exc:
            raise AudioDecodeError(f"cannot decode audio: {reason(exc)}", path=self.path) from exc

    def _encode(self, frame: av.AudioFrame) -> None:
        # Timestamps are re-made from the sample count: the track starts at 0 and has no gaps.
        self._source_rate = self._source_rate or frame.sample_rate
        frame.pts = self._samples_in
        frame.time_base = fractions.Fraction(1, self._source_rate)
        self._samples_in += frame.samples
        try:
            packets = self.stream.encode(frame)
        except ValueError as exc:  # PyAV's resampler refuses a mid-stream format change
            raise AudioDecodeError(f"audio format changes mid-stream: {exc}", path=self.path) from exc
        self.container.mux(packets)


def _open_audio(path: Path) -> av.container.InputContainer:
    try:
        source = av.open(str(path))
    except (FileNotFoundError, PermissionError) as exc:
        raise MissingInputError(f"cannot read audio: {os.strerror(exc.errno or 0)}", path=path) from exc
    except av.error.FFmpegError as exc:
        raise AudioDecodeError(f"cannot open audio: {reason(exc)}", path=path) from exc
    if not source.streams.audio:
        source.close()
        raise AudioDecodeError("no audio stream", path=path)
    return source


class VideoWriter:
    """Context manager writing `target` as H.264/HEVC (yuv420p) + AAC MP4; see the module docstring.

    Usage: `with VideoWriter(out, w, h, fps, audio, options) as writer: writer.write(bgr_frame)`.
    The caller writes round(audio_duration * fps) frames; the audio track is always the source's full length.
    After the block: `frames_written`, `frames_digest`, and `encoder_record` (what ran, for the result record).
    An encoder failure raises EncodeError (HardwareEncodeError for a hardware encoder), a file failure OutputError.
    """

    def __init__(
        self,
        target: Path,
        width: int,
        height: int,
        fps: fractions.Fraction,
        audio_path: Path,
        options: EncodeOptions,
    ) -> None:
        if width <= 0 or height <= 0 or width % 2 or height % 2:
            raise ValueError(f"yuv420p needs a positive, even frame size, got {width}x{height}")
        self.target = Path(os.path.abspath(target))  # absolute: FFmpeg would read `a:b.mp4` as a protocol
        self.temp = temp_path_for(self.target)
        self.width = width
        self.height = height
        self.fps = fractions.Fraction(fps)
        self.audio_path = Path(audio_path)
        self.options = options
        self.encoder: ResolvedEncoder = encoder_for(options)
        self.settings = encoder_settings(self.encoder.name, options.preset, options.crf, options.threads, options.gpu)
        self.frames_written = 0
        self._digest = hashlib.sha256()
        self._frames_digest = ""
        self._fault_at = _fault_frame()
        self._container: av.container.OutputContainer | None = None
        self._video: av.video.stream.VideoStream | None = None
        self._audio: _AudioTranscoder | None = None

    # --- context manager -------------------------------------------------------------------------------------

    def __enter__(self) -> VideoWriter:
        try:
            fd = os.open(self.temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o666)
            os.close(fd)
        except OSError as exc:
            raise output_error(exc, self.target, f"create the temporary file {self.temp}") from exc
        try:
            self._open()
        except BaseException as err:
            self._discard()
            _raise_wrapped(err, self.target, "setting up the encoders")
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is not None:
            self._discard()
            return False
        try:
            self._finish()
        except BaseException as err:
            self._discard()
            _raise_wrapped(err, self.target, "finishing the file")
        return False

    @property
    def frames_digest(self) -> str:
        """sha256 (hex) of the yuv420p frames handed to the encoder (see the module docstring); after the block."""
        return self._frames_digest

    @property
    def encoder_record(self) -> dict:
        return self.encoder.record(self.options, self.settings)

    # --- frames -----------------------------------------------------------------------------------------------

    def write(self, frame: np.ndarray) -> None:
        """Encode one BGR uint8 HxWx3 frame, then mux the audio up to the end of it."""
        if frame.shape != (self.height, self.width, 3) or frame.dtype != np.uint8:
            raise ValueError(f"expected a {self.height}x{self.width}x3 uint8 frame, got {frame.shape} {frame.dtype}")
        if self._container is None:
            raise RuntimeError("VideoWriter.write() outside its `with` block")
        yuv = cv2.cvtColor(frame, cv2.COLOR_BGR2YUV_I420)  # Y, U, V planes one after another, unpadded
        self._digest.update(yuv)
        video_frame = av.VideoFrame.from_ndarray(yuv, format="yuv420p")
        video_frame.pts = self.frames_written
        packets = self._encode(video_frame, f"encoding frame {self.frames_written}")
        try:
            self._container.mux(packets)
            self.frames_written += 1
            self._audio.mux_until(self.frames_written / self.fps)
        except (av.error.FFmpegError, OSError) as exc:
            raise _wrap(exc, self.target, f"writing frame {self.frames_written}") from exc

    def _encode(self, frame: av.VideoFrame | None, doing: str) -> list:
        """The encoder's packets for `frame` (None: flush); any failure of the encoder is the encoder's error, even
        one FFmpeg words as an OS error (NVENC out of sessions is EPERM/ENOMEM)."""
        if frame is not None and self._fault_at == self.frames_written:
            self._container.mux(self._video.encode(None))
        try:
            return self._video.encode(frame)
        except av.error.FFmpegError as exc:
            raise self._encoder_error(exc, doing) from exc

    def _encoder_error(self, exc: BaseException, doing: str, lines=()) -> EncodeError:
        cls = HardwareEncodeError if self.encoder.hardware else EncodeError
        return cls(f"{self.encoder.name} failed {doing}: {failure_words(exc, lines)}", path=self.target)

    # --- internals --------------------------------------------------------------------------------------------

    def _open(self) -> None:
        self._container = av.open(str(self.temp), "w", format="mp4", container_options={"movflags": "+faststart"})
        self._video = self._add_video_stream(self._container)
        self._open_encoder()
        self._audio = _AudioTranscoder(self.audio_path, self._container, self.options.audio_bitrate)

    def _add_video_stream(self, container: av.container.OutputContainer) -> av.video.stream.VideoStream:
        stream = container.add_stream(self.encoder.name, rate=self.fps)
        stream.width = self.width
        stream.height = self.height
        stream.pix_fmt = "yuv420p"
        stream.options = dict(self.settings)
        if self.encoder.codec == "hevc":
            stream.codec_tag = HEVC_TAG
        ctx = stream.codec_context
        if family(self.encoder.name) == "x264":
            ctx.thread_type = "FRAME"  # PyAV defaults to SLICE (see the module docstring)
            ctx.thread_count = max(self.options.threads, 0)  # 0: x264 picks from the core count
        ctx.colorspace = _AVCOL_SPC_SMPTE170M
        ctx.color_range = _AVCOL_RANGE_MPEG
        return stream

    def _open_encoder(self) -> None:
        """Open the encoder now, before any frame is made: a hardware encoder out of sessions fails here."""
        with ffmpeg_log() as lines:
            try:
                self._video.codec_context.open()
            except av.error.FFmpegError as exc:
                raise self._encoder_error(exc, "to open", lines) from exc

    def _finish(self) -> None:
        if self.frames_written == 0:
            raise EncodeError("no video frames were written", path=self.target)
        self._container.mux(self._encode(None, "flushing its last frames"))
        self._audio.mux_rest()
        self._frames_digest = self._digest.hexdigest()
        self._close_media()
        fsync_file(self.temp)
        os.replace(self.temp, self.target)
        fsync_folder(self.target.parent)
        log.debug("wrote %s (%d frames)", self.target, self.frames_written)

    def _close_media(self) -> None:
        container, self._container = self._container, None
        audio, self._audio = self._audio, None
        try:
            if container is not None:
                container.close()  # writes the trailer; with +faststart it moves moov to the front
        finally:
            if audio is not None:
                audio.close()

    def _discard(self) -> None:
        """Close whatever is open and delete the temp file; errors here would hide the real one."""
        try:
            self._close_media()
        except Exception as exc:  # the original failure is the one to report
            log.debug("closing %s after a failure: %s", self.temp, exc)
        try:
            os.unlink(self.temp)
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("could not delete the temporary file %s: %s", self.temp, exc)


def _fault_frame() -> int | None:
    """The frame before which the test hook flushes the encoder (see DHGEN_TEST_FAULT above), if set."""
    fault = os.environ.get("DHGEN_TEST_FAULT", "")
    return int(fault[len(_FAULT_PREFIX) :]) if fault.startswith(_FAULT_PREFIX) else None


def write_file_atomically(target: Path, data: bytes) -> None:
    """Write `data` (a finished MP4 rendered elsewhere, e.g. on a cluster node) to `target` as VideoWriter does:
    through the same temp path, whole or not at all. Raises OutputError; the target is then left as it was."""
    target = Path(os.path.abspath(target))
    try:
        replace_atomically(target, data, temp_path_for(target))
    except OSError as exc:
        raise output_error(exc, target, f"write {target.name}") from exc
