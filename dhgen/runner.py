"""A run over a list of jobs: the lock on the output folder, `--resume`, the result log and the events.

`render()` is the library API (the CLI is a thin layer over it). How jobs are executed is the executor's
business: `InProcessExecutor` renders them one after another in this process; the supervisor
(`dhgen.supervisor`) runs them in supervised child processes. Both yield one `JobRecord` per job.
"""

from __future__ import annotations

import dataclasses
import fcntl
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from dhgen.errors import DhgenError, OutputError, RunLocked
from dhgen.manifest import Job, file_digest, input_fingerprint
from dhgen.options import RenderOptions, RunOptions
from dhgen.results import JobRecord, ResultLog, already_done, last_records, utc_now

log = logging.getLogger(__name__)

EventFn = Callable[[dict], None]


class Executor(Protocol):
    def run(self, jobs: list[Job], fingerprints: dict[str, str | None], emit: EventFn) -> Iterator[JobRecord]: ...


@dataclass
class RunSummary:
    records: list[JobRecord] = field(default_factory=list)

    @property
    def failed(self) -> list[JobRecord]:
        return [r for r in self.records if r.status == "failed"]

    @property
    def exit_code(self) -> int:
        return 1 if self.failed else 0


def render_settings(options: RenderOptions) -> dict:
    """The options that shape an output (what the input fingerprint covers); caches and devices excluded.

    A checkpoint counts by its content, so new weights under the same file name are not skipped by --resume.
    """
    settings = dataclasses.asdict(options)
    settings["face"].pop("cache_dir", None)
    settings["model"].pop("device", None)
    settings["model"].pop("batch_size", None)
    checkpoint = options.model.checkpoint
    if checkpoint is not None:
        try:
            settings["model"]["checkpoint"] = file_digest(Path(checkpoint))
        except OSError:
            pass  # unreadable: the job fails with ModelLoadError anyway
    return settings


def render(
    jobs: Iterable[Job],
    options: RenderOptions | None = None,
    run: RunOptions | None = None,
    on_event: EventFn | None = None,
    executor: Executor | None = None,
) -> RunSummary:
    """Render every job; returns the records (also appended to the result log). Raises RunLocked."""
    options, run = options or RenderOptions(), run or RunOptions()
    jobs = list(jobs)
    emit = on_event or (lambda event: None)
    if executor is None:
        from dhgen.supervisor import Supervisor

        executor = Supervisor(options, run)
    with RunLock(run.out_dir):
        return _render_locked(jobs, options, run, emit, executor)


def _render_locked(jobs, options, run, emit, executor) -> RunSummary:
    summary = RunSummary()
    result_log = ResultLog(run.results_path)
    previous = last_records(run.results_path) if run.resume else {}
    settings = render_settings(options)
    fingerprints = {job.id: input_fingerprint(job, settings) for job in jobs}
    emit({"event": "run_started", "jobs": len(jobs), "time": utc_now()})
    to_run = []
    for job in jobs:
        if already_done(previous.get(job.id), job.output, fingerprints[job.id]):
            _finish(summary, result_log, emit, skipped_record(job, previous[job.id]))
        else:
            to_run.append(job)
    for record in executor.run(to_run, fingerprints, emit):
        _finish(summary, result_log, emit, record)
    emit({"event": "run_finished", "time": utc_now(), **_counts(summary)})
    return summary


def _finish(summary: RunSummary, result_log: ResultLog, emit: EventFn, record: JobRecord) -> None:
    summary.records.append(record)
    try:
        result_log.append(record)
    except OSError as exc:
        log.error("cannot write the result log %s: %s", result_log.path, exc)
    emit({"event": "job_finished", "record": dataclasses.asdict(record)})


def _counts(summary: RunSummary) -> dict:
    statuses = [r.status for r in summary.records]
    return {s: statuses.count(s) for s in ("succeeded", "failed", "skipped")}


def skipped_record(job: Job, previous: dict) -> JobRecord:
    fields = {f.name for f in dataclasses.fields(JobRecord)}
    record = JobRecord(**{k: v for k, v in previous.items() if k in fields})
    record.status, record.attempts, record.errors, record.error = "skipped", 0, [], None
    record.started_at = record.finished_at = utc_now()
    record.elapsed_s = 0.0
    return record


def new_record(job: Job, fingerprint: str | None) -> JobRecord:
    return JobRecord(
        job_id=job.id,
        status="failed",
        audio=str(job.audio),
        avatar=str(job.avatar),
        output=str(job.output),
        input_fingerprint=fingerprint,
        started_at=utc_now(),
    )


def fill_outcome(record: JobRecord, outcome, options: RenderOptions) -> None:
    record.status = "succeeded"
    record.frames, record.fps = outcome.frames, round(float(outcome.fps), 6)
    record.width, record.height = outcome.width, outcome.height
    record.duration_s = round(outcome.duration_s, 6)
    record.encoder = {"codec": "libx264", "preset": options.encode.preset, "crf": options.encode.crf}


def error_dict(exc: BaseException) -> dict:
    """The result-log form of any exception: ours carry their own; anything else is reported as a bug."""
    if isinstance(exc, DhgenError):
        return exc.to_record()
    return {
        "type": type(exc).__name__,
        "message": str(exc) or repr(exc),
        "retryable": False,
        "hint": "this looks like a bug in dhgen: please report it with the traceback from the log",
    }


class InProcessExecutor:
    """Renders jobs one after another in this process (the Python API's simple mode; no supervision)."""

    def __init__(self, options: RenderOptions) -> None:
        self.options = options
        self._inference = None

    def run(self, jobs, fingerprints, emit) -> Iterator[JobRecord]:
        from dhgen.pipeline import render_job

        for job in jobs:
            record = new_record(job, fingerprints[job.id])
            record.attempts = 1
            started = time.monotonic()
            emit({"event": "job_started", "job_id": job.id, "attempt": 1, "time": record.started_at})
            try:
                fill_outcome(record, render_job(job, self.options, self._local_inference()), self.options)
            except Exception as exc:  # noqa: BLE001 - every failure becomes the job's record, never the run's end
                log.debug("job %s failed", job.id, exc_info=True)
                record.error = error_dict(exc)
                record.errors.append(record.error)
            record.elapsed_s = round(time.monotonic() - started, 3)
            record.finished_at = utc_now()
            yield record

    def _local_inference(self):
        if self._inference is None:
            from dhgen.inference import load_predictor
            from dhgen.pipeline import LocalInference

            self._inference = LocalInference(load_predictor(self.options.model))
        return self._inference


class RunLock:
    """An exclusive lock on the output folder (flock on `.dhgen.lock`, holding the owner's pid)."""

    def __init__(self, out_dir: Path) -> None:
        self.path = Path(out_dir) / ".dhgen.lock"
        self._fd: int | None = None

    def __enter__(self) -> RunLock:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise OutputError(f"cannot use the output folder: {exc.strerror or exc}", path=self.path.parent) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise RunLocked(
                f"another dhgen run (pid {holder}) is rendering into {self.path.parent}", path=self.path.parent
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    def __exit__(self, *exc_info) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
