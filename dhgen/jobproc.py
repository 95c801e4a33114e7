"""The job process: renders one job, reaching the model through its pipe to the supervisor.

Messages to the supervisor: ("infer", ticket, CropBatch), ("progress", counter, value), and last ("done",
JobOutcome) or ("failed", error record). From the supervisor: ("patches", ticket, PatchBatch) or
("infer_failed", ticket, error record). The job never imports torch.
"""

from __future__ import annotations

import dataclasses
import traceback
from multiprocessing.connection import Connection
from pathlib import Path

from dhgen.children import init_child
from dhgen.errors import DhgenError, error_class
from dhgen.manifest import Job
from dhgen.models import CropBatch, PatchBatch
from dhgen.options import RenderOptions


class RemoteInference:
    """`Inference` over the job's pipe: submit sends a batch, collect waits for its patches."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self._next = 0
        self._arrived: dict[int, PatchBatch] = {}

    def submit(self, batch: CropBatch) -> int:
        self._next += 1
        self._conn.send(("infer", self._next, batch))
        return self._next

    def collect(self, ticket: int) -> PatchBatch:
        while ticket not in self._arrived:
            kind, got, payload = self._conn.recv()  # EOFError if the supervisor is gone: the job ends
            if kind == "infer_failed":
                raise remote_error(payload)
            self._arrived[got] = payload
        return self._arrived.pop(ticket)


def remote_error(record: dict) -> DhgenError:
    """An exception to raise in the job for a failure that happened elsewhere; its record travels unchanged."""
    exc = error_class(record.get("type", ""))(record.get("message", ""), hint=record.get("hint"))
    exc.remote_record = record
    return exc


def failure_record(exc: BaseException) -> dict:
    """The result-log form of a failure, with the traceback of whatever caused it."""
    if hasattr(exc, "remote_record"):
        return exc.remote_record
    if isinstance(exc, DhgenError):
        record = exc.to_record()
        if "traceback" not in record and exc.__cause__ is not None:
            record["traceback"] = "".join(traceback.format_exception(exc.__cause__)).strip()
        return record
    return {
        "type": type(exc).__name__,
        "message": str(exc) or repr(exc),
        "retryable": False,
        "hint": "this looks like a bug in dhgen: please report it with the traceback",
        "traceback": traceback.format_exc().strip(),
    }


def job_main(
    conn: Connection, job: Job, options: RenderOptions, parent_pid: int, crash_path: Path, threads: int
) -> None:
    """Entry point of a job process (spawned by the supervisor)."""
    init_child(parent_pid, crash_path, threads)
    from dhgen.pipeline import render_job

    if options.encode.threads == 0:
        options = dataclasses.replace(options, encode=dataclasses.replace(options.encode, threads=threads))
    try:
        outcome = render_job(job, options, RemoteInference(conn), progress=lambda c, v: conn.send(("progress", c, v)))
    except (EOFError, BrokenPipeError, ConnectionResetError):
        return  # the supervisor is gone: nobody to report to
    except Exception as exc:  # noqa: BLE001 - every failure is reported, typed, to the supervisor
        conn.send(("failed", failure_record(exc)))
        return
    conn.send(("done", outcome))
