"""A run over a list of jobs: the lock on the output folder, `--resume`, the result log and the events.

`render()` is the library API (the CLI is a thin layer over it). How jobs are executed is an executor's
business (`dhgen.executors`): each yields one `JobRecord` per job it was given; the runner writes them.
With `run.shard` only that shard's jobs run, under the shard's own lock and result log (`dhgen.shards`).
`--resume --verify` renders again what would be skipped and reports a job whose `frames_digest` differs from its
last success's (`dhgen.verify`). Before the lock is taken, the run's encoder is resolved once
(`dhgen.encoders.resolve_encoder`: a named encoder that does not open here refuses the run with UsageError) and
every job is handed the resolved name. Also before the lock, the options are checked (`dhgen.checks`) and
outputs that must not be replaced are refused, so a usage error leaves nothing behind. A run stopped by a signal
ends with a `run_stopped` event that names the jobs it interrupted and those it never started.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from dhgen import events
from dhgen.checks import check_options
from dhgen.encoders import requested_codec, resolve_encoder, with_encoder
from dhgen.errors import DigestMismatch, Interrupted, UsageError
from dhgen.events import EventFn
from dhgen.executors import Executor, make_executor
from dhgen.locks import RunLock
from dhgen.manifest import Job, file_digest, input_fingerprint
from dhgen.models import registry
from dhgen.options import ModelOptions, RenderOptions, RunOptions, job_options
from dhgen.results import (
    JobRecord,
    ResultLog,
    already_done,
    fill_job_settings,
    fill_model,
    last_records_of,
    result_logs,
    skipped_record,
)
from dhgen.shards import select
from dhgen.verify import MISMATCH, DigestCheck, check, digest_of

__all__ = ["RunLock", "RunSummary", "render", "render_settings"]

log = logging.getLogger(__name__)


@dataclass
class RunSummary:
    records: list[JobRecord] = field(default_factory=list)
    mismatches: list[DigestCheck] = field(default_factory=list)  # --verify: jobs whose frames changed

    @property
    def failed(self) -> list[JobRecord]:
        return [r for r in self.records if r.status == "failed"]

    @property
    def exit_code(self) -> int:
        return 1 if self.failed or self.mismatches else 0


def render_settings(options: RenderOptions) -> dict:
    """The options that shape an output (what the input fingerprint covers); caches and devices excluded.

    A checkpoint counts by its content, so new weights under the same file name are not skipped by --resume.
    The encoder counts as asked for (`auto`, the codec), not as resolved on this machine, so a run resumed on a box
    without NVENC does not render again what NVENC rendered.
    """
    settings = dataclasses.asdict(options)
    for where in ("encoder_reason", "resolved_from", "gpu"):  # how and where it was resolved, not what was asked
        settings["encode"].pop(where, None)
    settings["encode"]["codec"] = requested_codec(options.encode)  # --codec h264 is what no --codec means
    settings["face"].pop("cache_dir", None)
    settings["model"].pop("device", None)
    settings["model"].pop("batch_size", None)
    identity = model_identity(options.model)
    settings["model"].update(family=identity["family"], source=identity["source"])
    settings["model"]["checkpoint"] = identity["checkpoint_sha256"] or options.model.checkpoint
    return settings


def model_identity(model: ModelOptions) -> dict:
    """What a record says drew its mouth, and what the input fingerprint covers of it: the family's name and
    dotted name, where it comes from (built-in or `package==version`), its backend for this checkpoint, and the
    checkpoint's content (`checkpoint_digest`)."""
    entry = registry.entry(model.name)
    family = entry.family
    checkpoint = model.checkpoint
    return {
        "name": model.name,
        "family": entry.target,
        "source": entry.source,
        "backend": family.backend_for(checkpoint) if family is not None else None,
        "checkpoint_sha256": checkpoint_digest(family, checkpoint) if family and checkpoint else None,
    }


def checkpoint_digest(family, checkpoint: Path) -> str | None:
    """sha256 of a one-file checkpoint; of a folder, sha256 over the files its family reads (path and content of
    each). None when it cannot be read (the job fails with ModelLoadError anyway)."""
    try:
        files = family.checkpoint_files(Path(checkpoint))
        if files == [Path(checkpoint)]:
            return file_digest(Path(checkpoint))
        lines = [f"{p.relative_to(checkpoint).as_posix()} {file_digest(p)}\n" for p in files]
    except (OSError, ValueError):
        return None
    return hashlib.sha256("".join(lines).encode()).hexdigest()


def render(
    jobs: Iterable[Job],
    options: RenderOptions | None = None,
    run: RunOptions | None = None,
    on_event: EventFn | None = None,
    executor: Executor | None = None,
) -> RunSummary:
    """Render every job (of `run.shard` only, when given); returns the records (also appended to the result log).

    Raises UsageError before anything starts (bad options, an encoder that does not open here, an output that may
    not be replaced, a script without the `__main__` guard), RunLocked, OutputError when the output folder cannot
    be used, Interrupted."""
    refuse_in_spawned_child()
    options, run = options or RenderOptions(), run or RunOptions()
    jobs = select(jobs, run.shard)
    check_options(options, run)
    if not run.overwrite:
        refuse_existing_outputs(jobs, options, run)
    emit = on_event or (lambda event: None)
    resolved = dataclasses.replace(options, encode=with_encoder(options.encode, resolve_encoder(options.encode)))
    executor = executor or make_executor(resolved, run)
    with RunLock(run.out_dir, run.shard):
        return _render_locked(jobs, options, run, emit, executor)


def refuse_in_spawned_child() -> None:
    """A child process re-running a script's top level (no `__main__` guard) never starts a run of its own."""
    from dhgen.executors.local.children import refuse_during_bootstrap

    refuse_during_bootstrap()


def refuse_existing_outputs(jobs: list[Job], options: RenderOptions, run: RunOptions) -> None:
    """`overwrite=False`: an existing output is an error, unless --resume would skip its job anyway."""
    previous = _previous_records(run) if run.resume else {}
    settings = _settings_by_job(jobs, options) if run.resume else {}
    for job in jobs:
        if not Path(job.output).exists():
            continue
        if run.resume and already_done(
            previous.get(job.id), job.output, input_fingerprint(job, settings[job.settings])
        ):
            continue
        raise UsageError(
            f"{job.output} already exists",
            hint="pass --overwrite to replace it (--resume keeps it when it was rendered from the same inputs)",
        )


def _render_locked(jobs, options, run, emit, executor) -> RunSummary:
    summary = RunSummary()
    result_log = ResultLog(run.results_path)
    previous = _previous_records(run) if run.resume else {}
    settings = _settings_by_job(jobs, options)
    fingerprints = {job.id: input_fingerprint(job, settings[job.settings]) for job in jobs}
    by_id = {job.id: job for job in jobs}
    identity = model_identity(options.model)

    def finish(record: JobRecord) -> None:
        _fill(record, by_id[record.job_id], options, identity)
        _finish(summary, result_log, emit, record)

    emit(events.run_started(len(jobs), **({"shard": str(run.shard)} if run.shard else {})))
    to_run, to_verify = [], {}
    for job in jobs:
        if not already_done(previous.get(job.id), job.output, fingerprints[job.id]):
            to_run.append(job)
        elif run.verify:  # rendered again; its digest is checked against the last success's
            to_verify[job.id] = digest_of(previous[job.id])
            to_run.append(job)
        else:
            finish(skipped_record(previous[job.id]))
    started: set[str] = set()

    def watch(event: dict) -> None:
        if event.get("event") == "job_started":
            started.add(event["job_id"])
        emit(event)

    try:
        for record in executor.run(to_run, fingerprints, watch):
            if record.job_id in to_verify:
                _verify(summary, record, to_verify[record.job_id], emit)
            finish(record)
    except Interrupted as exc:
        finished = {r.job_id for r in summary.records}
        interrupted = [j.id for j in to_run if j.id in started and j.id not in finished]
        not_started = [j.id for j in to_run if j.id not in started]
        emit(events.run_stopped(exc.signum, _counts(summary), interrupted, not_started))
        raise
    emit(events.run_finished(_counts(summary)))
    return summary


def _fill(record: JobRecord, job: Job, options: RenderOptions, identity: dict) -> None:
    """What the runner adds to an executor's record: the job's settings and (unless skipped: that record keeps
    what rendered it) the model."""
    fill_job_settings(record, job, job_options(options, job))
    if record.status != "skipped":
        fill_model(record, identity)


def _verify(summary: RunSummary, record: JobRecord, expected: str | None, emit: EventFn) -> None:
    """--verify: a mismatch with the last success's frames_digest becomes an incident of the job (and exit 1)."""
    result = check(record.job_id, expected, digest_of(dataclasses.asdict(record)))
    if result.outcome != MISMATCH:
        return
    summary.mismatches.append(result)
    error = DigestMismatch(
        f"job {record.job_id}: frames_digest {result.actual} differs from the last success's {result.expected}"
    ).to_record()
    record.errors.append(error)
    emit(events.incident(error, job_id=record.job_id, action="output replaced by the new render"))


def _settings_by_job(jobs: list[Job], options: RenderOptions) -> dict:
    """`render_settings` of each distinct per-job setting in the batch (a manifest has few), by JobSettings."""
    by_settings: dict = {}
    for job in jobs:
        if job.settings not in by_settings:
            by_settings[job.settings] = render_settings(job_options(options, job))
    return by_settings


def _previous_records(run: RunOptions) -> dict[str, dict]:
    """`--resume` reads this run's own log and every other result log in the output folder (other shards, an
    earlier unsharded run or another shard count), so a job done under any of them is not rendered again."""
    return last_records_of([run.results_path, *result_logs(run.out_dir)])


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
