"""The engine: between the job store and one long-lived executor (the same supervisor or Ray driver as `render`).

    request threads ── submit / cancel ──► Engine ── JobFeed ──► executor.serve(feed)   (the executor's thread)
                                             │                        │ events, records
           store (SQLite) ◄──────────────────┴── status, attempts, incidents, records
           hub (GET /v1/events), metrics, live counters ◄── every event

A submit is written to the store and handed to the executor's feed under one lock, so no job is lost or handed
twice. At start, jobs that a stopped server left `running` are queued again with a `ServiceInterrupted` incident
(their attempt counts), and every queued job goes to the executor in submission order. On SIGTERM the feed is
held (nothing new starts), running jobs get `drain_timeout` seconds, then the executor is stopped and what it had
running is queued again for the next start.

If the executor ends on its own (it lost what runs the jobs) or raises, the jobs it held are queued again and a
new executor takes them after a pause. A record whose final error says "retried in a later run"
(`dhgen.retry.retried_in_a_later_run`, e.g. the Ray executor's ClusterLost) is not final here: the job is queued
again, for this executor or the next.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import shutil
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

from dhgen import events
from dhgen.errors import Cancelled, DhgenError, ServiceInterrupted, failure_record
from dhgen.executors.feed import JobFeed
from dhgen.executors.slots import CANCELLED
from dhgen.manifest import Job, jobs_from_dicts
from dhgen.metrics import MetricsFile
from dhgen.options import RenderOptions, RunOptions
from dhgen.results import JobRecord, new_record, utc_now
from dhgen.resume import Fingerprints
from dhgen.retry import retried_in_a_later_run
from dhgen.runner import fill_record
from dhgen.service.errors import Conflict, NotFound, QueueFull, Unavailable
from dhgen.service.hub import Hub
from dhgen.service.store import ACTIVE, JobRow, Store

log = logging.getLogger(__name__)

SOURCE = "job"  # what a job's field errors are located in ("job:1: crf '60' is not in 0..51" before trimming)
RESTART_DELAY_S = (1.0, 60.0)  # pause before a new executor takes over from one that ended: first, at most
RECENT_JOBS = 20  # finished jobs whose time estimates Retry-After
CRASHED = "the server stopped while the job was running (a crash, SIGKILL or reboot); it was queued again"
STOPPED = "the server was stopped before the job finished (its --drain-timeout ran out); it was queued again"


class Engine:
    def __init__(
        self, store: Store, options: RenderOptions, run: RunOptions, max_queue: int, executor_factory: Callable
    ) -> None:
        """`options` as the jobs' fingerprints and records know them (the runner's); `executor_factory()` makes the
        executor (with the options checked and the encoder resolved, as the runner does)."""
        self.store, self.options, self.run, self.max_queue = store, options, run, max_queue
        self.hub = Hub()
        self.metrics = MetricsFile(None, labels={"out_dir": str(run.out_dir)})
        self.draining = False
        self.fatal: dict | None = None  # the model cannot run (every batch fails with this)
        self._make_executor = executor_factory
        self._executor = None
        self._changed = threading.Condition(threading.RLock())  # guards the feed, the jobs handed and live state
        self._feed: JobFeed | None = None
        self._stopping = False
        self._jobs: dict[str, Job] = {}  # handed to the current executor, not finished
        self._live: dict[str, dict] = {}  # running jobs: attempt, pid, node, counters, fps, last progress
        self._workers: dict[int, dict] = {}  # inference workers (actors) that loaded the model
        self._recent: deque[float] = deque(maxlen=RECENT_JOBS)  # seconds the last finished jobs took
        self._fingerprints = Fingerprints(options)
        self._thread: threading.Thread | None = None

    # --- life --------------------------------------------------------------------------------------------------

    def start(self) -> None:
        """Queue again what a stopped server left running, make the executor (a UsageError for one that cannot be
        made here, e.g. Ray not installed), and start it on the queued jobs."""
        self._requeue_running(CRASHED)
        self._executor = self._make_executor()
        self.metrics(events.run_started(0))
        self._thread = threading.Thread(target=self._serve, name="dhgen-executor", daemon=True)
        self._thread.start()

    def drain(self, timeout: float) -> None:
        """Start nothing new; wait up to `timeout` seconds for the running jobs to finish."""
        deadline = time.monotonic() + timeout
        with self._changed:
            self.draining = True
            if self._feed is not None:
                self._feed.hold()
            while self._live and not self._stopping and (left := deadline - time.monotonic()) > 0:
                self._changed.wait(left)

    def stop(self) -> None:
        """Stop the executor (its running jobs are stopped and queued again) and end the event streams."""
        self.stop_now()
        if self._thread is not None:
            self._thread.join()
        self._requeue_running(STOPPED)
        self.hub.close()

    def stop_now(self) -> None:
        """Tell the executor to stop, without waiting (safe in a signal handler: the lock is reentrant)."""
        with self._changed:
            self.draining = self._stopping = True
            if self._feed is not None:
                self._feed.stop()
            self._changed.notify_all()

    @property
    def ready(self) -> bool:
        """Workers are up with the model loaded, it can run, and the server takes jobs."""
        alive = self._thread is not None and self._thread.is_alive()
        return alive and bool(self._workers) and self.fatal is None and not self.draining

    def workers(self) -> list[dict]:
        with self._changed:
            return [{"worker": index, **info} for index, info in sorted(self._workers.items())]

    def metrics_text(self) -> str:
        """Prometheus text of the metrics counted since the server started."""
        with self._changed:
            return self.metrics.text()

    def live(self, job_id: str) -> dict | None:
        with self._changed:
            live = self._live.get(job_id)
            return dict(live) if live is not None else None

    # --- submitting and cancelling -------------------------------------------------------------------------------

    def submit(self, fields: dict, uploads: str | None = None) -> tuple[JobRow, bool]:
        """Store and queue the job `fields` describes (manifest fields; inputs as checked absolute paths); the row
        and True, or the existing job's row and False when its id was submitted before with the same inputs.
        ManifestError for a bad field; Conflict, QueueFull, Unavailable."""
        job = job_of(fields, self.run.out_dir)
        fingerprint = self._fingerprints.of(job)
        with self._changed:
            if self.draining:
                raise Unavailable("the server is stopping and takes no new jobs")
            existing = self.store.get(job.id)
            if existing is not None:
                if _same_inputs(existing, fields, fingerprint):
                    return existing, False
                raise Conflict(f"job {job.id} exists with other inputs (status {existing.status})")
            counts = self.store.counts()
            if sum(counts[s] for s in ACTIVE) >= self.max_queue:
                raise QueueFull(f"{self.max_queue} jobs are queued or running (--max-queue)", self._retry_after())
            try:
                row = self.store.insert(fields, fingerprint, uploads)
            except sqlite3.IntegrityError:
                raise Conflict(f"job {job.id} was submitted at the same time with other inputs") from None
            self._hand(job, new_record(job, fingerprint))
            self.metrics.add_jobs(1)
        return row, True

    def cancel(self, job_id: str, wait_s: float) -> JobRow | None:
        """Cancel a queued or running job (waiting up to `wait_s` for its process to be stopped); delete a finished
        one with its output and uploads (None). NotFound for an unknown id."""
        row = self.store.get(job_id)
        if row is None:
            raise NotFound(f"no job {job_id}")
        if not row.active:
            self._delete(row)
            return None
        with self._changed:
            if job_id in self._jobs:
                self._feed.cancel(job_id)
            else:  # queued, between two executors: nothing runs it
                self._finish_unhanded(row)
            self._changed.wait_for(lambda: job_id not in self._jobs, wait_s)
        return self.store.get(job_id)

    def _delete(self, row: JobRow) -> None:
        self.store.delete(row.id)
        output = Path((row.record or {}).get("output") or self.run.out_dir / f"{row.id}.mp4")
        output.unlink(missing_ok=True)
        if row.uploads:
            shutil.rmtree(row.uploads, ignore_errors=True)

    def _finish_unhanded(self, row: JobRow) -> None:
        job = job_of(row.fields, self.run.out_dir)
        record = _record_of(row, job)
        error = {**Cancelled(f"job {row.id} was cancelled before it started").to_record(), "time": utc_now()}
        record.errors.append(error)
        record.error, record.status, record.finished_at = error, CANCELLED, utc_now()
        self._finished(job, record)

    def _retry_after(self) -> int:
        """Seconds until a slot is likely free: a recent job's mean time over the jobs that run at once."""
        if not self._recent:
            return 5
        return max(1, math.ceil(sum(self._recent) / len(self._recent) / max(1, self.run.jobs)))

    # --- the executor's thread -----------------------------------------------------------------------------------

    def _serve(self) -> None:
        delay = RESTART_DELAY_S[0]
        while True:
            feed = self._new_feed()
            try:
                for record in self._executor.serve(feed, self._on_event):
                    self._on_record(record)
                error = None
            except Exception as exc:  # noqa: BLE001 - the server outlives its executor
                log.exception("the executor failed")
                error = failure_record(exc)
            with self._changed:
                if self._stopping:
                    return
                self._feed = None
                self._hand_back(error)
                self._changed.wait(delay)  # stop() cuts the pause short
                if self._stopping:
                    return
            log.warning("the executor ended; a new one takes the queued jobs")
            delay = min(RESTART_DELAY_S[1], delay * 2)
            self._executor = self._make_executor()

    def _new_feed(self) -> JobFeed:
        """A feed with every queued job, in submission order (those held by an executor that ended included)."""
        with self._changed:
            self._feed = JobFeed()
            self._feed.hold(self.draining)
            for row in self.store.with_status("queued"):
                job = job_of(row.fields, self.run.out_dir)
                self._hand(job, _record_of(row, job))
            return self._feed

    def _hand(self, job: Job, record: JobRecord) -> None:
        if self._feed is None:
            return  # between two executors: the next one takes it from the store
        self._jobs[job.id] = job
        self._feed.submit(job, record)

    def _hand_back(self, error: dict | None) -> None:
        """The executor ended: the jobs it held, running or not, are queued for the next one."""
        self._jobs.clear()
        self._live.clear()
        self._workers.clear()
        incident = error or ServiceInterrupted("the executor ended while the job was running").to_record()
        for row in self.store.with_status("running"):
            self.store.requeue(row.id, row.attempts, [*row.errors, {**incident, "time": utc_now()}])

    def _requeue_running(self, why: str) -> None:
        incident = {**ServiceInterrupted(why).to_record(), "time": utc_now()}
        for row in self.store.with_status("running"):
            self.store.requeue(row.id, row.attempts, [*row.errors, incident])

    def _on_record(self, record: JobRecord) -> None:
        with self._changed:
            job = self._jobs.get(record.job_id)
            if job is None:
                return  # not ours (cannot happen: every job comes through _hand)
            if retried_in_a_later_run(record.error):
                self._requeue_record(job, record)
                return
            self._finished(job, record)

    def _requeue_record(self, job: Job, record: JobRecord) -> None:
        """The executor gave up on the job for reasons of its own (e.g. its cluster is gone): it runs again."""
        self._live.pop(job.id, None)
        self.store.requeue(job.id, record.attempts, record.errors)
        self.hub.publish(events.incident(record.error, job_id=job.id, action="queued again"))
        if not self._feed.closed:
            self._feed.submit(job, dataclasses.replace(record, status="failed", error=None))

    def _finished(self, job: Job, record: JobRecord) -> None:
        fill_record(record, job, self.options)
        status = record.status if record.status in ("succeeded", CANCELLED) else "failed"
        self.store.finish(job.id, status, dataclasses.asdict(record))
        self._jobs.pop(job.id, None)
        self._live.pop(job.id, None)
        if record.elapsed_s:
            self._recent.append(record.elapsed_s)
        self._changed.notify_all()
        event = events.job_finished(record)
        self.metrics(event)
        self.hub.publish(event)

    # --- events ------------------------------------------------------------------------------------------------

    def _on_event(self, event: dict) -> None:
        handler = getattr(self, "_on_" + str(event.get("event")), None)
        with self._changed:
            if handler is not None:
                handler(event)
                self._changed.notify_all()
            self.metrics(event)
        self.hub.publish(event)

    def _on_job_started(self, event: dict) -> None:
        job_id = event["job_id"]
        self.store.started(job_id, event["attempt"])
        self._live[job_id] = {
            "attempt": event["attempt"],
            "pid": event.get("pid"),
            "node": event.get("node"),
            "last_progress_at": event["time"],
        }

    def _on_job_progress(self, event: dict) -> None:
        live = self._live.get(event["job_id"])
        if live is not None:
            counters = {k: event[k] for k in ("total", "decoded", "inferred", "encoded", "fps", "node") if k in event}
            live.update(counters, last_progress_at=event["time"])

    def _on_incident(self, event: dict) -> None:
        if event.get("action") == events.NO_MORE_INFERENCE:  # a worker (Ray: an actor) given up, or the model
            if "worker" in event:
                self._workers.pop(event["worker"], None)
            else:
                self.fatal = event["error"]  # the model cannot run at all: /readyz says so
        ids = [event["job_id"]] if "job_id" in event else event.get("job_ids") or []
        details = {k: v for k, v in event.items() if k not in ("event", "job_id", "job_ids", "error")}
        for job_id in ids:
            self.store.add_incident(job_id, {**event["error"], **details})

    def _on_worker_started(self, event: dict) -> None:
        self._workers[event["worker"]] = {k: event.get(k) for k in ("pid", "device", "node")}


def job_of(fields: dict, out_dir: Path) -> Job:
    """The Job of a submit's fields, checked by the manifest's own rules (ManifestError, located `job:1:`)."""
    return jobs_from_dicts([fields], out_dir, source=SOURCE)[0]


def _record_of(row: JobRow, job: Job) -> JobRecord:
    """The record so far of a stored job: its attempts and incidents carry over to its next attempt."""
    record = new_record(job, row.fingerprint)
    record.attempts, record.errors = row.attempts, list(row.errors)
    record.started_at = row.started_at or record.started_at
    return record


def _same_inputs(row: JobRow, fields: dict, fingerprint: str | None) -> bool:
    """The same inputs: the same content and settings (the input fingerprint), or, while an input cannot be read,
    the same fields."""
    if fingerprint is not None or row.fingerprint is not None:
        return fingerprint == row.fingerprint
    return fields == row.fields


def field_error(exc: DhgenError) -> str:
    """A job field's error without the manifest's location prefix."""
    return exc.message.removeprefix(f"{SOURCE}:1: ")
