"""The in-process executor: renders jobs one after another in the caller's process, the model loaded here too.

No child processes and no supervision (a crash takes the caller with it); for tests and the simplest use of
the Python API. Records, events and retry decisions (`dhgen.retry.RetryPolicy`, each attempt rendered with
`job_options` of the job's incidents so far) are the same as under the supervisor.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator

from dhgen import events
from dhgen.errors import failure_record
from dhgen.executors.slots import retrying
from dhgen.options import RenderOptions, job_options
from dhgen.results import JobRecord, fill_outcome, new_record, note_served, utc_now
from dhgen.retry import RetryPolicy

log = logging.getLogger(__name__)


class InProcessExecutor:
    def __init__(self, options: RenderOptions, retry: RetryPolicy | None = None) -> None:
        self.options = options
        self.retry = retry or RetryPolicy()
        self._inference = None

    def run(self, jobs, fingerprints, emit) -> Iterator[JobRecord]:
        for job in jobs:
            record = new_record(job, fingerprints[job.id])
            started = time.monotonic()
            while not self._attempt(job, record, emit):
                delay = self.retry.delay(record.attempts)
                emit(events.incident(record.errors[-1], job_id=job.id, action=retrying(delay, record.attempts)))
                time.sleep(delay)
            record.elapsed_s = round(time.monotonic() - started, 3)
            record.finished_at = utc_now()
            yield record

    def _attempt(self, job, record: JobRecord, emit) -> bool:
        """One attempt of `job`; False when it failed and is to be tried again."""
        from dhgen.pipeline import render_job

        record.attempts += 1
        emit(events.job_started(job.id, record.attempts))
        options = job_options(self.options, job, record.errors)
        try:
            inference = self._local_inference()
            fill_outcome(record, render_job(job, options, inference))
            note_served(record, inference.device, inference.dtype)
            return True
        except Exception as exc:  # noqa: BLE001 - every failure becomes the job's record, never the run's end
            log.debug("job %s failed", job.id, exc_info=True)
            error = failure_record(exc)
            record.errors.append(error)
        if self.retry.should_retry(error, record.attempts, record.errors):
            return False
        record.error = error
        return True

    def _local_inference(self):
        if self._inference is None:
            from dhgen.models.serving import load_for_serving
            from dhgen.pipeline import LocalInference

            self._inference = LocalInference(load_for_serving(self.options.model))
        return self._inference
