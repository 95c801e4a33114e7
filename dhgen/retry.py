"""Retry decisions, by error type only: one policy for every executor (in-process, local supervisor, Ray).

A failure is retried when its record says `retryable` (set by its class in `dhgen.errors`), the job has attempts
left, and the run is not stopping. `JobTimeout` and `HardwareEncodeError` are retried once (the attempt after a
hardware encoder failed runs on the CPU encoder: `dhgen.options.job_options`). The delay doubles per attempt, with
jitter. Never decided by matching message text.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from dhgen.errors import HardwareEncodeError, JobTimeout

RETRIED_ONCE = frozenset({JobTimeout.__name__, HardwareEncodeError.__name__})
# The executor lost what runs jobs (the Ray head: issue 17): final for this run, retried by a later one (the next
# `dhgen render --resume`, or the service's next executor).
RETRIED_IN_A_LATER_RUN = frozenset({"ClusterLost"})


def retried_in_a_later_run(error: dict | None) -> bool:
    """A job's final error that a later run retries (the service queues such a job again at once)."""
    return error is not None and error.get("type") in RETRIED_IN_A_LATER_RUN


@dataclass(frozen=True)
class RetryPolicy:
    retries: int = 2  # extra attempts after the first
    backoff_s: float = 1.0  # delay before the second attempt; doubles each attempt, times a jitter of 0.5..1.5

    def should_retry(self, error: dict, attempt: int, errors: list[dict]) -> bool:
        """Whether a job whose attempt number `attempt` just failed with `error` gets another one; `errors` is every
        incident recorded for the job so far, `error` included."""
        if not error.get("retryable") or attempt > self.retries:
            return False
        kind = error.get("type")
        if kind in RETRIED_ONCE:
            return sum(e.get("type") == kind for e in errors) <= 1
        return True

    def delay(self, attempt: int) -> float:
        """Seconds to wait before attempt `attempt + 1`."""
        return self.backoff_s * 2 ** (attempt - 1) * random.uniform(0.5, 1.5)
