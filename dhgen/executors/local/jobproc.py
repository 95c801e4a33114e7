"""The job process: renders jobs one at a time, reaching the model through its pipe to the supervisor.

From the supervisor: ("job", Job, RenderOptions) starts a job; ("stop",) ends the process. Then, per job,
messages to the supervisor: ("infer", ticket, CropBatch | AudioRequest), ("progress", counter, value), and last ("done",
JobOutcome) or ("failed", error record). From the supervisor: ("patches", ticket, PatchBatch) or
("infer_failed", ticket, error record). The job never imports torch.
"""

from __future__ import annotations

import dataclasses
import os
from multiprocessing.connection import Connection
from pathlib import Path

from dhgen.errors import error_from_record, failure_record
from dhgen.executors.local.children import init_child
from dhgen.manifest import Job
from dhgen.models import CropBatch, PatchBatch
from dhgen.options import RenderOptions


class RemoteInference:
    """`Inference` over the process's pipe: submit sends a batch, collect waits for its patches.

    One per process, serving its jobs in turn: tickets are never reused, so an answer meant for a job that
    already ended (it failed while other batches were out) is recognised and dropped.
    """

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self._next = 0
        self._waiting: set[int] = set()
        self._arrived: dict[int, PatchBatch] = {}

    def submit(self, batch: CropBatch) -> int:
        self._next += 1
        self._waiting.add(self._next)
        self._conn.send(("infer", self._next, batch))
        return self._next

    def collect(self, ticket: int) -> PatchBatch:
        while ticket not in self._arrived:
            kind, got, payload = self._conn.recv()  # EOFError if the supervisor is gone: the job ends
            if got not in self._waiting:
                continue  # meant for an earlier job
            if kind == "infer_failed":
                self.forget()
                raise error_from_record(payload)
            self._arrived[got] = payload
        self._waiting.discard(ticket)
        return self._arrived.pop(ticket)

    def forget(self) -> None:
        """The job ended: answers still on their way are stale from now on."""
        self._waiting.clear()
        self._arrived.clear()


def job_main(conn: Connection, parent_pid: int, crash_path: Path, threads: int) -> None:
    """Entry point of a job process (spawned by the supervisor): render jobs one at a time until told to stop."""
    init_child(parent_pid, crash_path, threads)
    from dhgen.pipeline import render_job

    inference = RemoteInference(conn)
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return  # the supervisor is gone
        if message[0] in ("patches", "infer_failed"):
            continue  # a late answer for a job that already ended
        if message[0] != "job":
            os._exit(0)  # idle: nothing to save, and a quick exit shortens the run's end
        _, job, options = message
        if options.encode.threads == 0:
            options = dataclasses.replace(options, encode=dataclasses.replace(options.encode, threads=threads))
        if not _render_one(conn, render_job, inference, job, options):
            return


def _render_one(conn: Connection, render_job, inference: RemoteInference, job: Job, options: RenderOptions) -> bool:
    """Render one job and report how it ended; False when the supervisor is gone."""
    try:
        outcome = render_job(job, options, inference, progress=lambda c, v: conn.send(("progress", c, v)))
    except (EOFError, BrokenPipeError, ConnectionResetError):
        return False
    except Exception as exc:  # noqa: BLE001 - every failure is reported, typed, to the supervisor
        conn.send(("failed", failure_record(exc)))
        return True
    finally:
        inference.forget()
    conn.send(("done", outcome))
    return True
