"""Job records and the result log: what every executor fills in for a job, the JSON object per finished job
appended to `results.jsonl`, and reading it back (`dhgen.resume` decides what is done).

Records are built here, below the runner and every executor (`dhgen.executors`), so whatever runs a job, its
record has the same fields filled the same way.

Each line is written whole and flushed to disk before the next job is reported, so a crash or a kill never
leaves a half record that hides the others; a torn last line (a power cut) is skipped on reading.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from dhgen.options import effective_settings

log = logging.getLogger(__name__)

RESULT_LOGS = ("results.jsonl", "results.shard-*-of-*.jsonl")  # the result logs a folder's runs write


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass
class JobRecord:
    job_id: str
    status: str  # succeeded | failed | skipped
    audio: str
    avatar: str
    output: str
    attempts: int = 0
    errors: list[dict] = field(default_factory=list)  # every incident, including absorbed crashes
    error: dict | None = None  # the final error, when failed
    frames: int | None = None
    fps: float | None = None
    width: int | None = None
    height: int | None = None
    duration_s: float | None = None
    elapsed_s: float | None = None
    encoder: dict | None = None  # {name, codec, preset, crf, settings, reason}: what encoded the output, and why
    started_at: str | None = None
    finished_at: str | None = None
    input_fingerprint: str | None = None
    frames_digest: str | None = None  # sha256 of the frames as handed to the encoder (dhgen.writer), when succeeded
    face: dict | None = None  # {choice, frame, box_at_first_frame, faces_found}: the face animated, when succeeded
    face_coverage: float | None = None  # the share of output frames that got a mouth, when succeeded
    settings: dict | None = None  # loop, fps (of a still avatar), crf, preset, pads, face: what it rendered with
    overrides: dict = field(default_factory=dict)  # those of them that the job's manifest row set itself
    meta: dict = field(default_factory=dict)  # the row's own x_ columns (a customer id, say), as given
    model: dict | None = None  # {name, family, source, backend, checkpoint_sha256, device, dtype}: what drew the mouth

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False)


def new_record(job, fingerprint: str | None) -> JobRecord:
    """A job's record before its first attempt (failed until an outcome says otherwise)."""
    return JobRecord(
        job_id=job.id,
        status="failed",
        audio=str(job.audio),
        avatar=str(job.avatar),
        output=str(job.output),
        input_fingerprint=fingerprint,
        started_at=utc_now(),
    )


def fill_outcome(record: JobRecord, outcome) -> None:
    """Mark `record` succeeded with what the render produced (`pipeline.JobOutcome`): frames, size, the frames'
    digest, the encoder that ran and the face it animated."""
    record.status = "succeeded"
    record.frames, record.fps = outcome.frames, round(float(outcome.fps), 6)
    record.width, record.height = outcome.width, outcome.height
    record.duration_s = round(outcome.duration_s, 6)
    record.encoder = outcome.encoder
    record.frames_digest = outcome.frames_digest
    record.face, record.face_coverage = outcome.face, outcome.face_coverage


def note_served(record: JobRecord, device: str, dtype: str | None) -> None:
    """The model served `record`'s job on `device` in `dtype` (a job served on several GPUs lists each once)."""
    model = record.model or {}
    devices = [d for d in str(model.get("device") or "").split(",") if d]
    record.model = {**model, "device": ",".join(dict.fromkeys([*devices, device])), "dtype": dtype}


def fill_model(record: JobRecord, identity: dict) -> None:
    """The model's identity (`runner.model_identity`: name, family, source, backend, checkpoint_sha256) beside
    where it ran for this job (`note_served`; null when no batch of the job reached the model)."""
    served = record.model or {}
    record.model = {**identity, "device": served.get("device"), "dtype": served.get("dtype")}


def fill_job_settings(record: JobRecord, job, options) -> None:
    """The per-job settings `options` (the job's own, `job_options`) rendered `job` with, and the row's own."""
    record.settings = effective_settings(options)
    record.overrides = job.settings.given()
    record.meta = dict(job.meta)


def skipped_record(previous: dict) -> JobRecord:
    """`--resume`: the record of a job not rendered again, carrying what its last success produced."""
    fields = {f.name for f in dataclasses.fields(JobRecord)}
    record = JobRecord(**{k: v for k, v in previous.items() if k in fields})
    record.status, record.attempts, record.errors, record.error = "skipped", 0, [], None
    record.started_at = record.finished_at = utc_now()
    record.elapsed_s = 0.0
    return record


class ResultLog:
    """Appends records to a JSONL file, each durable before `append` returns."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def create(self) -> None:
        """Make sure the log exists, empty when nothing was recorded: a run that finished with nothing to do (a
        shard without jobs) leaves a log that says it ran."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        open(self.path, "ab").close()

    def append(self, record: JobRecord) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a+b") as f:
            # A torn last line (no newline) is ended first, or this record would be glued onto it and lost too.
            torn = f.seek(0, os.SEEK_END) > 0 and os.pread(f.fileno(), 1, f.tell() - 1) != b"\n"
            f.write((("\n" if torn else "") + record.to_json() + "\n").encode("utf-8"))
            f.flush()
            os.fsync(f.fileno())


def last_records(path: Path) -> dict[str, dict]:
    """The last record of each job id in a result log (empty when the log does not exist)."""
    records: dict[str, dict] = {}
    try:
        lines = Path(path).read_text(encoding="utf-8", errors="replace").splitlines()
    except FileNotFoundError:
        return records
    for number, line in enumerate(lines, start=1):
        try:
            record = json.loads(line)
            records[record["job_id"]] = record
        except (json.JSONDecodeError, KeyError, TypeError):
            log.warning("%s:%d: skipping an unreadable result line", path, number)
    return records


def result_logs(out_dir: Path) -> list[Path]:
    """The result logs of every run into `out_dir`: `results.jsonl` and one per shard."""
    found = {p for pattern in RESULT_LOGS for p in Path(out_dir).glob(pattern) if p.is_file()}
    return sorted(found)


def last_records_of(paths: list[Path]) -> dict[str, dict]:
    """The last record of each job id over several result logs: within a log the last line, across logs the
    one that finished last (records carry UTC ISO times, which sort as strings)."""
    return latest(last_records(path) for path in dict.fromkeys(Path(p).absolute() for p in paths))  # each log once


def latest(logs: Iterable[dict[str, dict]]) -> dict[str, dict]:
    """The record of each job id that finished last, over the `last_records` of several logs."""
    records: dict[str, dict] = {}
    for log_records in logs:
        for job_id, record in log_records.items():
            if job_id not in records or _finished(record) >= _finished(records[job_id]):
                records[job_id] = record
    return records


def _finished(record: dict) -> str:
    return str(record.get("finished_at") or record.get("started_at") or "")
