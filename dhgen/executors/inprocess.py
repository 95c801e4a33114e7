"""The in-process executor: renders jobs one after another in the caller's process, the model loaded here too.

No child processes and no supervision (a crash takes the caller with it); for tests and the simplest use of
the Python API. Records and events are the same as under the supervisor.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator

from dhgen import events
from dhgen.errors import failure_record
from dhgen.options import RenderOptions, job_options
from dhgen.results import JobRecord, fill_outcome, new_record, utc_now

log = logging.getLogger(__name__)


class InProcessExecutor:
    def __init__(self, options: RenderOptions) -> None:
        self.options = options
        self._inference = None

    def run(self, jobs, fingerprints, emit) -> Iterator[JobRecord]:
        from dhgen.pipeline import render_job

        for job in jobs:
            record = new_record(job, fingerprints[job.id])
            record.attempts = 1
            started = time.monotonic()
            emit(events.job_started(job.id, 1))
            options = job_options(self.options, job)
            try:
                fill_outcome(record, render_job(job, options, self._local_inference()), options)
            except Exception as exc:  # noqa: BLE001 - every failure becomes the job's record, never the run's end
                log.debug("job %s failed", job.id, exc_info=True)
                record.error = failure_record(exc)
                record.errors.append(record.error)
            record.elapsed_s = round(time.monotonic() - started, 3)
            record.finished_at = utc_now()
            yield record

    def _local_inference(self):
        if self._inference is None:
            from dhgen.pipeline import LocalInference
            from dhgen.serving import load_model

            self._inference = LocalInference(load_model(self.options.model))
        return self._inference
