"""Jobs handed to an executor while it runs: they arrive, are cancelled, and the feed is closed or stopped.

    runner:   JobFeed.of(jobs, fingerprints)   closed from the start: the executor ends when these are finished
    service:  JobFeed()                        open for the life of the server: submit / cancel / hold / stop

An executor's `serve(feed, emit)` takes what arrived at every turn of its loop (`take`), starts nothing new while
the feed is held (a draining server), ends once the feed is closed and every job it took has finished, and ends
at once when the feed is stopped (it then stops the jobs under way, as on SIGTERM, and yields no record for them).
A job arrives with its record so far: a new one, or one carried over from an earlier server run (its attempts and
incidents), so attempts go on counting from there.

Thread-safe: the service calls it from its request threads while the executor reads it in its own thread. An
executor that sleeps in `multiprocessing.connection.wait` registers a wake-up (`wake_with`); others `wait`.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from dhgen.manifest import Job
from dhgen.results import JobRecord, new_record


@dataclass(frozen=True)
class Submission:
    job: Job
    record: JobRecord  # its record so far (attempts and incidents of earlier server runs included)


class JobFeed:
    def __init__(self, submissions: list[Submission] = (), closed: bool = False) -> None:
        self._changed = threading.Condition()
        self._new: deque[Submission] = deque(submissions)
        self._cancels: list[str] = []
        self._waker: Callable[[], None] | None = None
        self.closed = closed  # no more jobs will arrive
        self.stopped = False  # end now
        self.holding = False  # start no new job (those running go on)

    @classmethod
    def of(cls, jobs: list[Job], fingerprints: dict[str, str | None]) -> JobFeed:
        """A closed feed of `jobs`: what a batch run hands its executor."""
        return cls([Submission(job, new_record(job, fingerprints[job.id])) for job in jobs], closed=True)

    def submit(self, job: Job, record: JobRecord) -> None:
        with self._changed:
            if self.closed:
                raise RuntimeError("the feed is closed")
            self._new.append(Submission(job, record))
            self._notify()

    def cancel(self, job_id: str) -> None:
        """Stop `job_id`: its record ends `cancelled` (a job already finished is left as it is)."""
        with self._changed:
            self._cancels.append(job_id)
            self._notify()

    def hold(self, holding: bool = True) -> None:
        with self._changed:
            self.holding = holding
            self._notify()

    def close(self) -> None:
        with self._changed:
            self.closed = True
            self._notify()

    def stop(self) -> None:
        with self._changed:
            self.closed = self.stopped = True
            self._notify()

    def take(self) -> tuple[list[Submission], list[str]]:
        """What arrived since the last call: new jobs (in order) and the ids to cancel."""
        with self._changed:
            new, cancels = list(self._new), self._cancels
            self._new.clear()
            self._cancels = []
            return new, cancels

    def wait(self, timeout: float) -> None:
        """Sleep until something arrives or changes, or `timeout` seconds."""
        with self._changed:
            if not (self._new or self._cancels or self.stopped):
                self._changed.wait(timeout)

    def wake_with(self, waker: Callable[[], None] | None) -> None:
        """Call `waker` (from the caller's thread) whenever something arrives or changes."""
        with self._changed:
            self._waker = waker

    def _notify(self) -> None:
        self._changed.notify_all()
        if self._waker is not None:
            self._waker()
