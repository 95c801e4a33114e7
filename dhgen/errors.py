"""Typed errors: every failure dhgen reports is one of these, with a message and a hint.

The `type_name` of each class is the `error.type` string of the result log (see DESIGN.md). Whether a failure is
retried is decided by its class (`retryable`), never by matching message text.
"""

from __future__ import annotations

import traceback
from pathlib import Path


class DhgenError(Exception):
    """Base class. `message` is never empty; `hint` says what the user should try."""

    retryable = False
    default_hint = "see the message above"

    def __init__(self, message: str, *, path: str | Path | None = None, hint: str | None = None) -> None:
        self.path = str(path) if path is not None else None
        self.message = message.strip() or f"{type(self).__name__} (no detail)"
        if self.path and self.path not in self.message:
            self.message = f"{self.path}: {self.message}"
        self.hint = hint or self.default_hint
        super().__init__(self.message)

    @property
    def type_name(self) -> str:
        return type(self).__name__

    def to_record(self) -> dict:
        record = {"type": self.type_name, "message": self.message, "retryable": self.retryable, "hint": self.hint}
        if self.path:
            record["path"] = self.path
        return record

    def __reduce__(self):  # keep path/hint when pickled across processes
        return (_rebuild, (type(self), self.message, self.path, self.hint))


def _rebuild(cls, message, path, hint):
    return cls(message, path=path, hint=hint)


# --- usage: the whole run is refused (exit 2) ------------------------------------------------------------------


class UsageError(DhgenError):
    """Bad command line or unreadable manifest."""

    default_hint = "run `dhgen render --help` for the expected arguments"


class ManifestError(UsageError):
    default_hint = "a manifest is CSV with header `id,audio,avatar[,output]` or JSON Lines with those keys"


class Interrupted(Exception):
    """The run was stopped by SIGINT or SIGTERM: finished jobs are recorded, the rest are not (exit 128+signum)."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        super().__init__(f"stopped by signal {signum}")


class RunLocked(DhgenError):
    """Another dhgen run holds the lock on the output folder (exit 75)."""

    default_hint = "wait for the other run to finish, or use another --out folder"


# --- input errors: not retryable ---------------------------------------------------------------------------------


class MissingInputError(DhgenError):
    default_hint = "check the path in the manifest (relative paths are relative to the manifest's folder)"


class AudioDecodeError(DhgenError):
    default_hint = "use an audio file PyAV/FFmpeg can read (wav, mp3, m4a, ogg, flac) that contains sound"


class AvatarDecodeError(DhgenError):
    default_hint = "use a complete video file (mp4, mov, mkv, webm) or a still image (png, jpg)"


class NoFaceError(DhgenError):
    default_hint = "use an avatar with a clearly visible, frontal face"


class ModelLoadError(DhgenError):
    default_hint = "check --checkpoint: `dhgen models` says what each model family takes"


class ModelError(DhgenError):
    """The model itself failed on a batch: it raised an error of its own, or answered with the wrong shapes (a
    plugin's bug, a checkpoint that does not fit its family). The traceback travels in the record."""

    default_hint = (
        "the model failed, not the inputs: check that the checkpoint belongs to this model family and that the "
        "family's package is up to date (`dhgen models`); the record's traceback shows where it failed"
    )


class OutputError(DhgenError):
    default_hint = "check that the output folder exists, is writable and has free space"


class EncodeError(DhgenError):
    default_hint = "check `dhgen doctor` for the encoders that open here; try another --encoder, --preset or --crf"


class HardwareEncodeError(EncodeError):
    """A hardware encoder (NVENC, ...) failed to open or mid-stream: retried once, with the CPU encoder."""

    retryable = True
    default_hint = (
        "the hardware encoder failed (NVENC allows few sessions at once on consumer cards); the job is retried once "
        "with the CPU encoder. --encoder libx264 (or libx265) avoids it"
    )


class DigestMismatch(DhgenError):
    """`--resume --verify`: a job rendered again made other frames than its last success (its output is the new one)."""

    default_hint = (
        "the same inputs and options made other frames than last time: another dhgen or model version, or a model "
        "that is not deterministic on this device (fp16 on a GPU)"
    )


class Cancelled(DhgenError):
    """The job was cancelled (`dhgen serve`: DELETE /v1/jobs/ID) while queued or running; its record's status is
    `cancelled`."""

    default_hint = "submit it again (after deleting it) if it is still wanted"


# --- process and resource failures: retryable --------------------------------------------------------------------


class WorkerCrashed(DhgenError):
    retryable = True
    default_hint = "an inference worker died; it was replaced. If this repeats, check GPU memory and drivers"


class JobProcessCrashed(DhgenError):
    retryable = True
    default_hint = "the job's process died; if this repeats, check memory (`dmesg` for the OOM killer)"


class Stalled(DhgenError):
    retryable = True
    default_hint = "a stage made no progress; raise --stall-timeout if the machine is just slow"


class JobTimeout(DhgenError):
    retryable = True
    default_hint = "raise --job-timeout for long jobs"


class OutOfMemory(DhgenError):
    retryable = True
    default_hint = "lower --batch-size or run fewer --jobs at once"


class NodeLost(DhgenError):
    """A cluster node died or stopped answering while it held the job (Ray executor); the message names the node
    (IP and Ray node id)."""

    retryable = True
    default_hint = "the job is re-run on the remaining nodes; if nodes keep dropping out, check their health"


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type's name when it has none)."""
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


class ServiceInterrupted(DhgenError):
    """The server (`dhgen serve`) stopped while the job was running: a SIGTERM whose drain timeout ran out, or a
    crash, a SIGKILL, a reboot. The job was queued again and runs at the server's next start."""

    retryable = True
    default_hint = "nothing to do: the job runs again when the server starts; raise --drain-timeout for long jobs"


class ClusterLost(DhgenError):
    """The Ray cluster as a whole is gone for this run: its head (GCS) stopped answering for longer than
    --ray-head-timeout, or the driver process lost it. Every unfinished job gets this record and the run ends;
    retryable in a later run (`--resume`), not within this one."""

    retryable = True
    default_hint = (
        "restart the Ray head (or wait until it answers again), then run the same command with --resume: jobs that "
        "finished are kept"
    )


def reason(exc: BaseException) -> str:
    """The readable part of an OS or FFmpeg error ("Invalid data found when processing input"), without the
    errno number and the repeated file name."""
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__


INPUT_ERRORS = (MissingInputError, AudioDecodeError, AvatarDecodeError, NoFaceError, ModelLoadError)


def error_class(type_name: str) -> type[DhgenError]:
    """The error class for a result-log `type` string (unknown names map to the base class)."""
    for cls in _all_subclasses(DhgenError):
        if cls.__name__ == type_name:
            return cls
    return DhgenError


def _all_subclasses(cls):
    for sub in cls.__subclasses__():
        yield sub
        yield from _all_subclasses(sub)


BUG_HINT = "this looks like a bug in dhgen: please report it with the traceback from the log"


def failure_record(exc: BaseException) -> dict:
    """The result-log form of any failure: ours carry their own record (a failure that happened in another process
    keeps the record it arrived with); anything else is reported as a bug. The traceback of the cause travels too."""
    if hasattr(exc, "remote_record"):
        return exc.remote_record
    if isinstance(exc, DhgenError):
        record = exc.to_record()
        if exc.__cause__ is not None:
            record["traceback"] = "".join(traceback.format_exception(exc.__cause__)).strip()
        return record
    return {
        "type": type(exc).__name__,
        "message": str(exc) or repr(exc),
        "retryable": False,
        "hint": BUG_HINT,
        "traceback": "".join(traceback.format_exception(exc)).strip(),
    }


def error_from_record(record: dict) -> DhgenError:
    """An exception to raise here for a failure that happened elsewhere; its record travels on unchanged."""
    exc = error_class(record.get("type", ""))(record.get("message", ""), hint=record.get("hint"))
    exc.remote_record = record
    return exc
