"""A job's place in a supervised run: its record, its attempts, and when it may start again. Kept the same way by
every executor, so a record's `attempts`, `errors[]`, `error`, `status`, `started_at` and `elapsed_s` mean the
same whatever ran the job, and the retry decision (by type: `dhgen.retry.RetryPolicy`) is taken in one place.

A job that arrives with a record carried over from an earlier server run (`dhgen.executors.feed`) goes on counting
its attempts from there.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from dhgen.errors import Cancelled
from dhgen.executors.feed import JobFeed, Submission
from dhgen.manifest import Job
from dhgen.results import JobRecord, utc_now
from dhgen.retry import RetryPolicy

log = logging.getLogger(__name__)

CANCELLED = "cancelled"  # the record status of a job whose final error is Cancelled


@dataclass(eq=False)
class JobSlot:
    job: Job
    record: JobRecord
    attempt_no: int = 0
    running: object | None = None  # the executor's attempt in flight, None between attempts
    not_before: float = 0.0  # monotonic time before which the next attempt may not start (backoff)
    finished: bool = False
    t0: float = 0.0  # monotonic time the first attempt (of this executor) started

    @classmethod
    def of(cls, submission: Submission) -> JobSlot:
        return cls(submission.job, submission.record, attempt_no=submission.record.attempts)

    def begin_attempt(self, now: float) -> None:
        self.attempt_no += 1
        self.record.attempts = self.attempt_no
        if not self.t0:
            self.t0 = now
            if self.attempt_no == 1:
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
        if error.get("type") == Cancelled.__name__:
            self.record.status = CANCELLED
        self.finish(now)
        return None

    def cancel(self, now: float) -> None:
        """Cancel a job that is not running (waiting for its first attempt or between attempts)."""
        when = "before it started" if self.attempt_no == 0 else "between two attempts"
        error = Cancelled(f"job {self.job.id} was cancelled {when}").to_record()
        self.attempt_failed({**error, "time": utc_now()}, RetryPolicy(), True, now)

    def finish(self, now: float) -> None:
        self.finished = True
        self.record.finished_at = utc_now()
        self.record.elapsed_s = round(now - self.t0, 3) if self.t0 else 0.0


def take_from(feed: JobFeed, slots: dict[str, JobSlot]) -> tuple[list[JobSlot], list[str]]:
    """What arrived on `feed`: slots for the new jobs (also added to `slots`, the executor's unfinished jobs by id)
    and the ids to cancel. A job that arrives again while its slot is unfinished is ignored."""
    submissions, cancels = feed.take()
    new = []
    for submission in submissions:
        if submission.job.id in slots:
            log.error("job %s arrived again while it is under way; ignored", submission.job.id)
            continue
        slots[submission.job.id] = JobSlot.of(submission)
        new.append(slots[submission.job.id])
    return new, cancels


def retrying(delay: float, attempt: int) -> str:
    """The `action` of the incident that ends attempt `attempt` with a retry."""
    return f"retrying in {delay:.1f}s (attempt {attempt + 1})"
