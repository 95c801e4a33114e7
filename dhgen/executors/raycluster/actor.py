"""The inference actor: one per GPU (`num_gpus=1`), or one CPU actor on a node without GPUs. It loads the model
once and serves the face crops of every job on its node, queued requests merged into one forward pass as the
local worker does (in slices of the batch size, halved on out-of-memory: `dhgen.models.serving`).

    job task ──infer(CropBatch)──► queue ──► one forward over the queued crops (model thread) ──► patches per call
    (an AudioRequest, once per job of a family that computes its audio features in the worker, rides the same way)
    driver ◄── watch(): {pid, device, gpu_ids, node_id, fatal, restarted} once the model is loaded, then every
               REPORT_EVERY_S {served, pending, ooms, broken}: the counters the driver judges the actor's liveness by

Ray restarts the actor when its process dies (the driver creates it with max_restarts=-1, and max_task_retries=0
so that Ray never re-runs a call: the jobs replay their own batches). A CUDA error that breaks the context ends
the process (os._exit) so that Ray replaces it, EXIT_GRACE_S later: meanwhile every call is answered {"broken":
record} (the CUDA error's type, message and traceback tail; the jobs replay their batches on the replacement and
say why), and `watch` reports the record, so that the driver's incident carries it too. A model that cannot be
loaded is not raised here: `watch` reports its error record and every call answers with it.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections import deque
from concurrent.futures import ThreadPoolExecutor

from dhgen.errors import failure_record
from dhgen.executors.shares import limit_threads
from dhgen.models import CropBatch, answer_requests
from dhgen.models.serving import AdaptivePredictor, context_broken, load_for_serving
from dhgen.options import ModelOptions

log = logging.getLogger(__name__)

REPORT_EVERY_S = 0.5  # how often watch() reports the counters
EXIT_CONTEXT_BROKEN = 70  # the CUDA context is broken: the process ends so that Ray starts a fresh one
EXIT_GRACE_S = 3 * REPORT_EVERY_S  # from a broken context to the exit: time for its record to reach the driver
TAIL_LINES = 20  # of a broken context's traceback, in its record


class InferenceActor:
    def __init__(self, options: ModelOptions, threads: int) -> None:
        import ray

        limit_threads(threads)
        self.pid = os.getpid()
        context = ray.get_runtime_context()
        self.info = {
            "pid": self.pid,
            "node_id": context.get_node_id(),
            "device": options.device,
            "dtype": None,
            "fatal": None,
            "restarted": bool(context.was_current_actor_reconstructed),  # Ray restarted it at least once
            "gpu_ids": [str(i) for i in ray.get_gpu_ids()],  # the node's GPU(s) Ray gave it (NVENC uses the same)
        }
        self._broken: dict | None = None  # the CUDA error that broke this process's context
        self._queue: deque = deque()  # (CropBatch, Future) in arrival order
        self._served = 0  # forward passes done by this process
        self._busy = 0  # requests in the forward pass now
        self._ooms: list[dict] = []
        self._model_thread = ThreadPoolExecutor(1, thread_name_prefix="model")
        self._serving: asyncio.Task | None = None
        try:
            predictor = load_for_serving(options, threads)
        except Exception as exc:  # noqa: BLE001 - reported through watch() and every answer, typed
            self.info["fatal"] = failure_record(exc)
            return
        self.info["device"] = device = predictor.device
        self.info["dtype"] = predictor.dtype
        self._limit = options.batch_for(device)
        self._predictor = AdaptivePredictor(predictor, self._limit, self._on_oom)

    async def watch(self):
        """Streamed to the driver (num_returns="streaming"): who this process is, then its counters."""
        yield dict(self.info)
        while True:
            await asyncio.sleep(REPORT_EVERY_S)
            ooms, self._ooms = self._ooms, []
            yield {
                "served": self._served,
                "pending": len(self._queue) + self._busy,
                "ooms": ooms,
                "broken": self._broken,
            }

    async def infer(self, batch: CropBatch) -> dict:
        """{"patches": PatchBatch, "pid"} or {"error": record, "pid"} for one job's batch."""
        if self.info["fatal"] is not None:
            return {"error": self.info["fatal"], "pid": self.pid}
        if self._broken is not None:
            return {"broken": self._broken, "pid": self.pid}
        loop = asyncio.get_running_loop()
        answer = loop.create_future()
        self._queue.append((batch, answer))
        if self._serving is None or self._serving.done():
            self._serving = loop.create_task(self._serve())
        return await answer

    async def _serve(self) -> None:
        """Run the queued requests, as many as fit in a batch at a time, until the queue is empty."""
        loop = asyncio.get_running_loop()
        while self._queue:
            items = self._take()
            self._busy = len(items)
            try:
                requests = [batch for batch, _ in items]
                results = await loop.run_in_executor(self._model_thread, answer_requests, self._predictor, requests)
            except Exception as exc:  # noqa: BLE001 - the jobs that sent these batches get the error
                if context_broken(exc):
                    self._end_broken(exc, items)
                    return
                answers = [{"error": failure_record(exc)}] * len(items)
            else:
                answers = [{"patches": r} for r in results]
            finally:
                self._busy = 0
            self._served += 1
            for (_, future), answer in zip(items, answers, strict=True):
                if not future.done():
                    future.set_result({**answer, "pid": self.pid})

    def _end_broken(self, exc: BaseException, items: list) -> None:
        """The CUDA context is broken: answer every call so far with its record, and end the process EXIT_GRACE_S
        from now (Ray replaces it)."""
        log.error("CUDA context broken (%s): this actor process ends so that Ray replaces it", exc)
        record = failure_record(exc)
        tail = "\n".join(record.pop("traceback", "").splitlines()[-TAIL_LINES:])
        self._broken = {"type": record["type"], "message": record["message"], "crash_tail": tail}
        waiting, self._queue = [*items, *self._queue], deque()
        for _, future in waiting:
            if not future.done():
                future.set_result({"broken": self._broken, "pid": self.pid})
        asyncio.get_running_loop().call_later(EXIT_GRACE_S, os._exit, EXIT_CONTEXT_BROKEN)

    def _take(self) -> list:
        items, size = [], 0
        while self._queue:
            batch = self._queue[0][0]
            if items and size + len(batch) > self._limit:
                break
            items.append(self._queue.popleft())
            size += len(batch)
        return items

    def _on_oom(self, limit: int, why: str) -> None:  # called from the model thread
        self._ooms.append({"batch_size": limit, "message": why})
