"""The inference worker process: loads the model once and serves batches of face crops from any job.

From the supervisor: ("batch", dispatch_id, [CropBatch, ...]) or ("stop",). To it: ("ready", {pid, device}),
("result", dispatch_id, [PatchBatch, ...]), ("oom", {batch_size, message}) when it halves its batch size after
an out-of-memory error, ("error", dispatch_id, record) when a batch raised, ("fatal", record) when the model
cannot be loaded (the worker then exits). Crops from several jobs are run as one forward pass, in slices of at
most the current batch size.

Test hook: DHGEN_TEST_FAULT=raise makes every forward raise; DHGEN_TEST_FAULT=oom_above:N raises OutOfMemory
for forward passes larger than N crops. Tests use it for faults that real signals cannot produce.
"""

from __future__ import annotations

import os
from multiprocessing.connection import Connection
from pathlib import Path

from dhgen.children import init_child
from dhgen.errors import OutOfMemory
from dhgen.jobproc import failure_record
from dhgen.models import CropBatch, PatchBatch, concat_patches, merge_batches, split_patches
from dhgen.options import ModelOptions


class AdaptivePredictor:
    """Runs a batch in slices of `limit` crops; halves `limit` and retries on OutOfMemory."""

    def __init__(self, predictor, limit: int, on_oom) -> None:
        self.predictor, self.limit, self.on_oom = predictor, limit, on_oom

    def predict(self, batch: CropBatch) -> PatchBatch:
        while True:
            try:
                parts = [self.predictor.predict(self._slice(batch, i)) for i in range(0, len(batch), self.limit)]
                return concat_patches(parts)
            except OutOfMemory as exc:
                if self.limit <= 1:
                    raise
                self.limit = max(1, self.limit // 2)
                self.on_oom(self.limit, exc.message)

    def _slice(self, batch: CropBatch, start: int) -> CropBatch:
        end = start + self.limit
        return CropBatch(batch.crops[start:end], batch.refs[start:end], batch.cond[start:end])


class _FaultInjector:
    """The DHGEN_TEST_FAULT hook (see module docstring)."""

    def __init__(self, predictor, fault: str) -> None:
        self.predictor, self.fault = predictor, fault

    def predict(self, batch: CropBatch) -> PatchBatch:
        if self.fault == "raise":
            raise RuntimeError("injected fault: the model raised (DHGEN_TEST_FAULT=raise)")
        if self.fault.startswith("oom_above:") and len(batch) > int(self.fault.split(":")[1]):
            raise OutOfMemory(f"injected CUDA out of memory for a batch of {len(batch)} (DHGEN_TEST_FAULT)")
        return self.predictor.predict(batch)


def worker_main(conn: Connection, options: ModelOptions, parent_pid: int, crash_path: Path, threads: int) -> None:
    """Entry point of an inference worker process (spawned by the supervisor)."""
    init_child(parent_pid, crash_path, threads)
    try:
        predictor = _load(options, threads)
    except Exception as exc:  # noqa: BLE001 - reported to the supervisor, typed
        conn.send(("fatal", failure_record(exc)))
        return
    adaptive = AdaptivePredictor(
        predictor,
        options.batch_for(str(getattr(predictor, "device", options.device))),
        lambda limit, why: conn.send(("oom", {"batch_size": limit, "message": why})),
    )
    conn.send(("ready", {"pid": os.getpid(), "device": str(getattr(predictor, "device", options.device))}))
    _serve(conn, adaptive)


def _load(options: ModelOptions, threads: int):
    import torch

    torch.set_num_threads(threads)
    from dhgen.inference import load_predictor

    predictor = load_predictor(options)
    fault = os.environ.get("DHGEN_TEST_FAULT", "")
    return _FaultInjector(predictor, fault) if fault else predictor


def _serve(conn: Connection, predictor: AdaptivePredictor) -> None:
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return  # the supervisor is gone
        if message[0] == "stop":
            os._exit(0)  # nothing to save; skips torch's slow interpreter teardown
        _, dispatch_id, batches = message
        try:
            result = predictor.predict(merge_batches(batches))
        except Exception as exc:  # noqa: BLE001 - the jobs that sent this batch get the error
            conn.send(("error", dispatch_id, failure_record(exc)))
            continue
        conn.send(("result", dispatch_id, split_patches(result, [len(b) for b in batches])))
