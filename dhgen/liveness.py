"""Liveness judged from progress, for every executor that watches jobs and inference workers it cannot see into
(the local supervisor, the Ray driver): when an attempt is Stalled or over its JobTimeout, when a worker holding
batches is Stalled, and how often progress counters become `job_progress` events.

Only progress counts: a job's counters (frames decoded / inferred / encoded) or a worker's batches served. A stage
whose counter has not moved for `stall_timeout` while work is pending is Stalled; before frames flow (model loading,
face tracking, a task waiting for its node) the longer `startup_timeout` applies. An attempt waiting on the model
is not judged here: the worker's own counter is.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from dhgen.errors import DhgenError, JobTimeout, Stalled

PROGRESS_EVERY_S = 1.0  # job_progress events per job at most this often


@dataclass
class AttemptProgress:
    """What one attempt of a job has reported so far, and when it last moved."""

    started: float
    last_activity: float
    counters: dict = field(default_factory=dict)  # total, decoded, inferred, encoded
    rendering: bool = False  # frames have started to flow (before that the startup allowance applies)
    last_event: float = 0.0  # when its last job_progress event was emitted

    def count(self, counter: str, value: int, now: float) -> bool:
        """Take a counter's new value; True when it is the first value of that counter (a stage starts)."""
        new_stage = counter not in self.counters
        self.counters[counter] = value
        self.rendering = self.rendering or counter == "decoded"
        self.last_activity = now
        return new_stage

    def event_due(self, now: float, force: bool) -> bool:
        """Whether to emit job_progress now: when a stage starts or ends, else at most every PROGRESS_EVERY_S."""
        done = self.counters.get("encoded") == self.counters.get("total")
        if not (force or done) and now - self.last_event < PROGRESS_EVERY_S:
            return False
        self.last_event = now
        return True

    def fps(self, now: float) -> float:
        return self.counters.get("encoded", 0) / max(1e-6, now - self.started)

    def stalled_stage(self) -> str:
        if "decoded" not in self.counters:
            return "preparation (audio, avatar, face tracking)"
        return "encoding" if self.counters.get("inferred", 0) > self.counters.get("encoded", 0) else "decoding"


@dataclass(frozen=True)
class Limits:
    stall_timeout: float = 60.0
    startup_timeout: float = 300.0
    job_timeout: float | None = None

    @classmethod
    def of(cls, run) -> Limits:
        """The limits of a run (`RunOptions`)."""
        return cls(run.stall_timeout, run.startup_timeout, run.job_timeout)

    def allowance(self, started: bool) -> float:
        """Seconds without progress allowed: `stall_timeout` once work flows, more while starting up."""
        return self.stall_timeout if started else max(self.stall_timeout, self.startup_timeout)

    def attempt_verdict(
        self, job_id: str, progress: AttemptProgress, now: float, waiting: bool, where: str
    ) -> DhgenError | None:
        """JobTimeout or Stalled when the attempt must be killed, else None. `waiting`: it has batches out at
        the model (then it is not stalled: the worker is judged instead). `where` names its process."""
        if self.job_timeout and now - progress.started > self.job_timeout:
            return JobTimeout(f"job {job_id} took longer than {self.job_timeout:g}s")
        if not waiting and now - progress.last_activity > self.allowance(progress.rendering):
            return Stalled(
                f"job {job_id}: {progress.stalled_stage()} made no progress for {self.stall_timeout:g}s ({where}); "
                "killed"
            )
        return None

    def worker_stalled(self, now: float, last_progress: float, ready: bool, waiting: bool) -> bool:
        """An inference worker is stalled when it has batches to serve (or has not loaded its model yet) and its
        served counter has not moved within the allowance."""
        return (waiting or not ready) and now - last_progress > self.allowance(ready)
