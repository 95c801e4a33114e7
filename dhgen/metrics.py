"""Metrics for cron: a Prometheus textfile-collector file, rewritten atomically as the run's events arrive.

node_exporter's textfile collector reads `*.prom` files from one folder at every scrape; a half-written file
would be read as garbage, so each version is written to a temp file beside the target, fsynced, and renamed
over it. The file is rewritten at the run's start and end and whenever a job starts, finishes or has an
incident (not on progress events). `dhgen_last_success_timestamp_seconds` is carried over from the previous
file, so a failed run does not erase when the last good one happened.
"""

from __future__ import annotations

import logging
import re
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from dhgen.files import replace_atomically

log = logging.getLogger(__name__)

STATUSES = ("succeeded", "failed", "skipped", "running", "pending")
LAST_SUCCESS = "dhgen_last_success_timestamp_seconds"

# name -> (type, help)
METRICS = {
    "dhgen_run_start_timestamp_seconds": ("gauge", "Unix time the current or last run started."),
    "dhgen_run_end_timestamp_seconds": ("gauge", "Unix time the last run ended (0 while a run is in progress)."),
    "dhgen_run_in_progress": ("gauge", "1 while a run is in progress."),
    "dhgen_run_success": ("gauge", "1 if the last run ended with no failed job, else 0."),
    LAST_SUCCESS: ("gauge", "Unix time of the last run that ended with no failed job."),
    "dhgen_run_duration_seconds": ("gauge", "Seconds the current or last run has taken."),
    "dhgen_jobs": ("gauge", "Jobs of the current or last run by status."),
    "dhgen_frames_rendered_total": ("counter", "Video frames in outputs written by this run."),
    "dhgen_retries_total": ("counter", "Job attempts after the first in this run."),
    "dhgen_worker_crashes_total": ("counter", "Inference workers that died in this run."),
    "dhgen_job_process_crashes_total": ("counter", "Job processes that died in this run."),
    "dhgen_stalls_total": ("counter", "Stages killed for making no progress in this run."),
    "dhgen_incidents_total": ("counter", "Incidents in this run by error type (absorbed and final)."),
}


class MetricsFile:
    """An event handler that keeps a Prometheus textfile up to date; a context manager for the run. Without a path
    it only counts (`dhgen serve` answers GET /metrics with `text()`)."""

    def __init__(
        self, path: Path | None, labels: dict[str, str] | None = None, clock: Callable[[], float] = time.time
    ) -> None:
        self.path = Path(path) if path is not None else None
        self.labels = dict(labels or {})
        self.clock = clock
        self.start = self.end = None
        self.total = 0
        self.statuses: Counter[str] = Counter()
        self.running: set[str] = set()
        self.frames = self.retries = 0
        self.incidents: Counter[str] = Counter()
        self.worker_deaths = 0  # inference workers (Ray: actors) that died, each counted once
        self.last_success = read_last_success(self.path) if self.path is not None else None

    def __enter__(self) -> MetricsFile:
        return self

    def __exit__(self, exc_type, *rest) -> None:
        if self.start is not None and self.end is None:  # the run was stopped: say it ended, unsuccessfully
            self.end = self.clock()
            self.write()

    def __call__(self, event: dict) -> None:
        handler = getattr(self, "_on_" + str(event.get("event")), None)
        if handler is not None:
            handler(event)
            self.write()

    def add_jobs(self, count: int) -> None:
        """Jobs that joined the run after it started (a service's submits)."""
        self.total += count

    def _on_run_started(self, event: dict) -> None:
        self.start, self.total = self.clock(), int(event.get("jobs", 0))

    def _on_job_started(self, event: dict) -> None:
        self.running.add(event["job_id"])
        if event.get("attempt", 1) > 1:
            self.retries += 1

    def _on_incident(self, event: dict) -> None:
        kind = event.get("error", {}).get("type", "unknown")
        self.incidents[kind] += 1
        if kind == "WorkerCrashed" and "job_id" not in event:  # a job's own note of replayed batches is no death
            self.worker_deaths += 1

    def _on_job_finished(self, event: dict) -> None:
        record = event["record"]
        self.running.discard(record["job_id"])
        self.statuses[record["status"]] += 1
        if record["status"] == "succeeded":
            self.frames += int(record.get("frames") or 0)
        if record["status"] == "failed" and record.get("error"):  # a final error is not also an incident event
            self.incidents[record["error"].get("type", "unknown")] += 1

    def _on_run_finished(self, event: dict) -> None:
        self.end = self.clock()
        if not self.statuses["failed"]:
            self.last_success = self.end

    def samples(self) -> list[tuple[str, dict[str, str], float]]:
        """(metric, labels, value) for every series, in file order."""
        now = self.end or self.clock()
        finished = sum(self.statuses.values())
        jobs = dict(self.statuses, running=len(self.running), pending=max(0, self.total - finished - len(self.running)))
        ok = self.end is not None and self.statuses["failed"] == 0 and not self.running and finished == self.total
        out = [
            ("dhgen_run_start_timestamp_seconds", {}, self.start or 0.0),
            ("dhgen_run_end_timestamp_seconds", {}, self.end or 0.0),
            ("dhgen_run_in_progress", {}, 0.0 if self.end else 1.0),
            ("dhgen_run_success", {}, 1.0 if ok else 0.0),
            (LAST_SUCCESS, {}, self.last_success or 0.0),
            ("dhgen_run_duration_seconds", {}, round(now - self.start, 3) if self.start else 0.0),
        ]
        out += [("dhgen_jobs", {"status": s}, jobs.get(s, 0)) for s in STATUSES]
        out += [
            ("dhgen_frames_rendered_total", {}, self.frames),
            ("dhgen_retries_total", {}, self.retries),
            ("dhgen_worker_crashes_total", {}, self.worker_deaths),
            ("dhgen_job_process_crashes_total", {}, self.incidents["JobProcessCrashed"]),
            ("dhgen_stalls_total", {}, self.incidents["Stalled"]),
        ]
        out += [("dhgen_incidents_total", {"type": t}, n) for t, n in sorted(self.incidents.items())]
        return out

    def text(self) -> str:
        lines, seen = [], set()
        for name, labels, value in self.samples():
            if name not in seen:
                seen.add(name)
                kind, help_text = METRICS[name]
                lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
            lines.append(f"{name}{format_labels({**self.labels, **labels})} {format_value(value)}")
        return "\n".join(lines) + "\n"

    def write(self) -> None:
        """Replace the file atomically; a metrics file that cannot be written is logged, never fatal."""
        if self.path is None:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            replace_atomically(self.path, self.text().encode())
        except OSError as exc:
            log.warning("cannot write the metrics file %s: %s", self.path, exc)


def format_labels(labels: dict[str, str]) -> str:
    if not labels:
        return ""
    escaped = (str(v).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") for v in labels.values())
    return "{" + ",".join(f'{k}="{v}"' for k, v in zip(labels, escaped, strict=True)) + "}"


def format_value(value: float) -> str:
    return str(int(value)) if float(value).is_integer() and abs(value) < 2**53 else repr(float(value))


def read_last_success(path: Path) -> float | None:
    """The last-success timestamp of a previous metrics file at `path` (None if there is none)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    match = re.search(rf"^{LAST_SUCCESS}(?:{{[^}}]*}})? (\S+)$", text, re.MULTILINE)
    try:
        value = float(match.group(1)) if match else 0.0
    except ValueError:
        return None
    return value or None
