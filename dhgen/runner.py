"""A run over a list of jobs: the checks before it, the lock on the output folder, `--resume`, the result log and
the events.

`render()` is the library API (the CLI is a thin layer over it). How jobs are executed is an executor's
business (`dhgen.executors`): each yields one `JobRecord` per job it was given; the runner writes them. Before
the lock is taken, the options are checked (`dhgen.checks`) and outputs that must not be replaced are refused,
so a usage error leaves nothing behind. A run stopped by a signal ends with a `run_stopped` event that names
the jobs it interrupted and those it never started.
"""

from __future__ import annotations

import dataclasses
import fcntl
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from dhgen import events
from dhgen.checks import check_options
from dhgen.errors import Interrupted, OutputError, RunLocked, UsageError
from dhgen.events import EventFn
from dhgen.executors import Executor, make_executor
from dhgen.manifest import Job, file_digest, input_fingerprint
from dhgen.options import RenderOptions, RunOptions
from dhgen.results import JobRecord, ResultLog, already_done, last_records, skipped_record

log = logging.getLogger(__name__)


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
    """Render every job; returns the records (also appended to the result log).

    Raises UsageError before anything starts (bad options, an output that may not be replaced, a script without
    the `__main__` guard), RunLocked, OutputError when the output folder cannot be used, Interrupted."""
    refuse_in_spawned_child()
    options, run = options or RenderOptions(), run or RunOptions()
    jobs = list(jobs)
    check_options(options, run)
    if not run.overwrite:
        refuse_existing_outputs(jobs, options, run)
    emit = on_event or (lambda event: None)
    executor = executor or make_executor(options, run)
    with RunLock(run.out_dir):
        return _render_locked(jobs, options, run, emit, executor)


def refuse_in_spawned_child() -> None:
    """A child process re-running a script's top level (no `__main__` guard) never starts a run of its own."""
    from dhgen.executors.local.children import refuse_during_bootstrap

    refuse_during_bootstrap()


def refuse_existing_outputs(jobs: list[Job], options: RenderOptions, run: RunOptions) -> None:
    """`overwrite=False`: an existing output is an error, unless --resume would skip its job anyway."""
    previous = last_records(run.results_path) if run.resume else {}
    settings = render_settings(options) if run.resume else {}
    for job in jobs:
        if not Path(job.output).exists():
            continue
        if run.resume and already_done(previous.get(job.id), job.output, input_fingerprint(job, settings)):
            continue
        raise UsageError(
            f"{job.output} already exists",
            hint="pass --overwrite to replace it (--resume keeps it when it was rendered from the same inputs)",
        )


def _render_locked(jobs, options, run, emit, executor) -> RunSummary:
    summary = RunSummary()
    result_log = ResultLog(run.results_path)
    previous = last_records(run.results_path) if run.resume else {}
    settings = render_settings(options)
    fingerprints = {job.id: input_fingerprint(job, settings) for job in jobs}
    emit(events.run_started(len(jobs)))
    to_run = []
    for job in jobs:
        if already_done(previous.get(job.id), job.output, fingerprints[job.id]):
            _finish(summary, result_log, emit, skipped_record(previous[job.id]))
        else:
            to_run.append(job)
    started: set[str] = set()

    def watch(event: dict) -> None:
        if event.get("event") == "job_started":
            started.add(event["job_id"])
        emit(event)

    try:
        for record in executor.run(to_run, fingerprints, watch):
            _finish(summary, result_log, emit, record)
    except Interrupted as exc:
        finished = {r.job_id for r in summary.records}
        interrupted = [j.id for j in to_run if j.id in started and j.id not in finished]
        not_started = [j.id for j in to_run if j.id not in started]
        emit(events.run_stopped(exc.signum, _counts(summary), interrupted, not_started))
        raise
    emit(events.run_finished(_counts(summary)))
    return summary


def _finish(summary: RunSummary, result_log: ResultLog, emit: EventFn, record: JobRecord) -> None:
    summary.records.append(record)
    try:
        result_log.append(record)
    except OSError as exc:
        log.error("cannot write the result log %s: %s", result_log.path, exc)
    emit(events.job_finished(record))


def _counts(summary: RunSummary) -> dict:
    statuses = [r.status for r in summary.records]
    return {s: statuses.count(s) for s in ("succeeded", "failed", "skipped")}


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
