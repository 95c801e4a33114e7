"""A job's place in a supervised run: its record, its attempts, and when it may start again. Kept the same way by
the local supervisor and the Ray driver, so a record's `attempts`, `errors[]`, `error`, `started_at` and
`elapsed_s` mean the same whatever ran the job, and the retry decision (by type: `dhgen.retry.RetryPolicy`) is
taken in one place.
"""

from __future__ import annotations

from dataclasses import dataclass

from dhgen.manifest import Job
from dhgen.results import JobRecord, utc_now
from dhgen.retry import RetryPolicy


@dataclass(eq=False)
class JobSlot:
    job: Job
    record: JobRecord
    attempt_no: int = 0
    running: object | None = None  # the executor's attempt in flight, None between attempts
    not_before: float = 0.0  # monotonic time before which the next attempt may not start (backoff)
    finished: bool = False
    t0: float = 0.0  # monotonic time the first attempt started

    def begin_attempt(self, now: float) -> None:
        self.attempt_no += 1
        self.record.attempts = self.attempt_no
        if self.attempt_no == 1:
            self.t0 = now
            self.record.started_at = utc_now()

    def attempt_failed(self, error: dict, policy: RetryPolicy, stopping: bool, now: float) -> float | None:
        """Record `error`; the delay before the next attempt when the policy retries it (not while the run is
        stopping), else None: `error` is then the job's final error and the job is finished."""
        self.record.errors.append(error)
        if not stopping and policy.should_retry(error, self.attempt_no, self.record.errors):
            delay = policy.delay(self.attempt_no)
            self.not_before = now + delay
            return delay
        self.record.error = error
        self.finish(now)
        return None

    def finish(self, now: float) -> None:
        self.finished = True
        self.record.finished_at = utc_now()
        self.record.elapsed_s = round(now - self.t0, 3) if self.t0 else 0.0


def retrying(delay: float, attempt: int) -> str:
    """The `action` of the incident that ends attempt `attempt` with a retry."""
    return f"retrying in {delay:.1f}s (attempt {attempt + 1})"
