"""Executors: what turns jobs into `JobRecord`s. Three alternatives behind one contract.

    runner (lock, manifest, --resume, result log, events)
        │  executor.run(jobs, fingerprints, emit) -> JobRecord per job
        ├─ InProcessExecutor  dhgen.executors.inprocess   one job after another in this process (tests, simple API)
        ├─ Supervisor         dhgen.executors.local       job processes + inference workers on this machine
        └─ RayExecutor        dhgen.executors.raycluster  a driver process; job tasks + inference actors on the nodes
                                                          of a Ray cluster

Whatever runs a job, it renders the same frames through `dhgen.pipeline.render_job`, fills its record with
`dhgen.results` (new_record / fill_outcome), decides retries with `dhgen.retry.RetryPolicy` and reports with
`dhgen.events`, and judges liveness with `dhgen.liveness`, so the record fields, the typed errors and the exit
code do not depend on the executor. `slots` (a job's attempts and the retry decision), `shares` (threads per
process) and `stopping` (SIGINT/SIGTERM) serve the executors that supervise processes.

`run(jobs, ...)` renders a fixed list (the runner's batch). The three built-ins also `serve(feed, emit)`: jobs
that arrive over time through a `feed.JobFeed`, for as long as it is open, with the model loaded once; the service
(`dhgen serve`) keeps one such executor for its whole life. `run` is `serve` over a closed feed.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

from dhgen.errors import UsageError
from dhgen.events import EventFn
from dhgen.executors.feed import JobFeed
from dhgen.manifest import Job
from dhgen.options import RenderOptions, RunOptions
from dhgen.results import JobRecord


class Executor(Protocol):
    def run(self, jobs: list[Job], fingerprints: dict[str, str | None], emit: EventFn) -> Iterator[JobRecord]: ...


class ServingExecutor(Executor, Protocol):
    def serve(self, feed: JobFeed, emit: EventFn) -> Iterator[JobRecord]: ...


def make_executor(options: RenderOptions, run: RunOptions) -> ServingExecutor:
    """The executor `run.executor` names: "local" (the default) or "ray". UsageError for another name, or for
    "ray" without Ray installed."""
    if run.executor == "ray":
        from dhgen.executors.raycluster.cluster import require_ray

        require_ray()
        from dhgen.executors.raycluster import RayExecutor

        return RayExecutor(options, run)
    if run.executor != "local":
        raise UsageError(f"unknown executor {run.executor!r}", hint="use local or ray")
    from dhgen.executors.local import Supervisor

    return Supervisor(options, run)
