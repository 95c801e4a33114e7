"""The inference worker process: loads the model once and serves batches of face crops from any job.

From the supervisor: ("batch", dispatch_id, [CropBatch | AudioRequest, ...]) or ("stop",). To it: ("ready",
{pid, device, dtype}), ("result", dispatch_id, [PatchBatch | audio features, ...]), ("oom", {batch_size,
message}) when it halves its batch size after an out-of-memory error, ("error", dispatch_id, record) when a batch
raised, ("fatal", record) when the model cannot be loaded (the worker then exits). Crops from several jobs are
run as one forward pass, in slices of at most the current batch size (`dhgen.models.serving`). A worker whose
CUDA context breaks says why (("broken", record): the CUDA error's type and message; its traceback goes to the
crash file) and exits (code 70) to be replaced.
"""

from __future__ import annotations

import os
import sys
import traceback
from multiprocessing.connection import Connection
from pathlib import Path

from dhgen.errors import failure_record
from dhgen.executors.local.children import init_child
from dhgen.models import answer_requests
from dhgen.models.serving import AdaptivePredictor, context_broken, load_for_serving
from dhgen.options import ModelOptions

EXIT_CONTEXT_BROKEN = 70  # the CUDA context is broken: the process ends so that a fresh one replaces it


def worker_main(conn: Connection, options: ModelOptions, parent_pid: int, crash_path: Path, threads: int) -> None:
    """Entry point of an inference worker process (spawned by the supervisor)."""
    init_child(parent_pid, crash_path, threads)
    try:
        predictor = load_for_serving(options, threads)
    except Exception as exc:  # noqa: BLE001 - reported to the supervisor, typed
        conn.send(("fatal", failure_record(exc)))
        return
    adaptive = AdaptivePredictor(
        predictor,
        options.batch_for(predictor.device),
        lambda limit, why: conn.send(("oom", {"batch_size": limit, "message": why})),
    )
    conn.send(("ready", {"pid": os.getpid(), "device": predictor.device, "dtype": predictor.dtype}))
    _serve(conn, adaptive)


def _serve(conn: Connection, predictor: AdaptivePredictor) -> None:
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return  # the supervisor is gone
        if message[0] == "stop":
            os._exit(0)  # nothing to save; skips torch's slow interpreter teardown
        _, dispatch_id, requests = message
        try:
            answers = answer_requests(predictor, requests)
        except Exception as exc:  # noqa: BLE001 - the jobs that sent this batch get the error
            if context_broken(exc):
                _end_broken(conn, exc)
            conn.send(("error", dispatch_id, failure_record(exc)))
            continue
        conn.send(("result", dispatch_id, answers))


def _end_broken(conn: Connection, exc: BaseException) -> None:
    """The CUDA context is broken: tell the supervisor the CUDA error, leave its traceback in the crash file (this
    process's stderr), and exit so that the supervisor replaces this worker and replays its batches."""
    traceback.print_exception(exc, file=sys.stderr)
    sys.stderr.flush()
    try:
        conn.send(("broken", failure_record(exc)))
    except OSError:
        pass  # the supervisor is gone
    os._exit(EXIT_CONTEXT_BROKEN)
