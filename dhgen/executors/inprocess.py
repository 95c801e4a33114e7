"""The in-process executor: renders jobs one after another in the caller's process, the model loaded here too.

No child processes and no supervision (a crash takes the caller with it); for tests and the simplest use of
the Python API. Records, events and retry decisions (`dhgen.executors.slots.JobSlot`, each attempt rendered with
`job_options` of the job's incidents so far) are the same as under the supervisor. A job can be cancelled only
while it waits (a render in this process cannot be stopped from outside).
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Iterator

from dhgen import events
from dhgen.errors import failure_record
from dhgen.executors.feed import JobFeed
from dhgen.executors.slots import JobSlot, retrying
from dhgen.options import RenderOptions, job_options
from dhgen.results import JobRecord, fill_outcome, note_served
from dhgen.retry import RetryPolicy

log = logging.getLogger(__name__)

IDLE_WAIT_S = 0.25  # how long an open feed is waited on before looking again


class InProcessExecutor:
    def __init__(self, options: RenderOptions, retry: RetryPolicy | None = None) -> None:
        self.options = options
        self.retry = retry or RetryPolicy()
        self._inference = None

    def run(self, jobs, fingerprints, emit) -> Iterator[JobRecord]:
        return self.serve(JobFeed.of(jobs, fingerprints), emit)

    def serve(self, feed: JobFeed, emit) -> Iterator[JobRecord]:
        waiting: deque[JobSlot] = deque()
        while not feed.stopped:
            submissions, cancels = feed.take()
            waiting.extend(JobSlot.of(s) for s in submissions)
            for slot in [s for s in waiting if s.job.id in cancels]:
                waiting.remove(slot)
                slot.cancel(time.monotonic())
                yield slot.record
            if waiting and not feed.holding:
                yield self._render(waiting.popleft(), emit)
            elif feed.closed and not waiting:
                return
            else:
                feed.wait(IDLE_WAIT_S)

    def _render(self, slot: JobSlot, emit) -> JobRecord:
        while True:
            error = self._attempt(slot, emit)
            if error is None:
                slot.finish(time.monotonic())
                return slot.record
            delay = slot.attempt_failed(error, self.retry, False, time.monotonic())
            if delay is None:
                return slot.record
            emit(events.incident(error, job_id=slot.job.id, action=retrying(delay, slot.attempt_no)))
            time.sleep(delay)

    def _attempt(self, slot: JobSlot, emit) -> dict | None:
        """One attempt of the slot's job; the error record when it failed."""
        from dhgen.pipeline import render_job

        slot.begin_attempt(time.monotonic())
        emit(events.job_started(slot.job.id, slot.attempt_no))
        options = job_options(self.options, slot.job, slot.record.errors)
        try:
            inference = self._local_inference()
            fill_outcome(slot.record, render_job(slot.job, options, inference))
            note_served(slot.record, inference.device, inference.dtype)
            return None
        except Exception as exc:  # noqa: BLE001 - every failure becomes the job's record, never the run's end
            log.debug("job %s failed", slot.job.id, exc_info=True)
            return failure_record(exc)

    def _local_inference(self):
        if self._inference is None:
            from dhgen.models.serving import load_for_serving
            from dhgen.pipeline import LocalInference

            self._inference = LocalInference(load_for_serving(self.options.model))
        return self._inference
