"""Progress for people, cron and CI: the supervisor's events shown as a Rich live table, plain lines or JSON.

    runner/supervisor ──events──► RunView (what is running, done, failed; pure, clock injected)
                                     ├─► RichProgress   live table on a terminal (columns: one class each)
                                     ├─► PlainProgress  timestamped lines, heartbeats, summary (cron, CI logs)
                                     ├─► JsonProgress   one event object per line (scripts)
                                     └─► TqdmProgress   a tqdm.auto bar for the Python API (`dhgen.render`)

Every display is an event handler (`display(event)`) and a context manager (entered before the run, left after
it, which draws the summary). Only the parent process draws; children send small events. The console, the
stream and the clock are injected, so tests render into a StringIO with a fake clock.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import IO, Any

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

log = logging.getLogger(__name__)

Clock = Callable[[], float]
HEARTBEAT_S = 30.0  # plain output: a line per running job this often, so a long job never looks dead in a log
CRASH_TAIL_SHOWN = 5  # lines of a child's crash file shown with an incident (the result log has 20)
STATUS_STYLE = {"succeeded": "green", "skipped": "cyan", "failed": "bold red", "interrupted": "yellow"}
STATUS_STYLE["not started"] = "dim"


def format_duration(seconds: float | None) -> str:
    """3.2s, 4m05s, 2h03m: short and unambiguous, for people."""
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def utc_stamp(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


# --- the run as the events tell it ------------------------------------------------------------------------------


@dataclass
class JobView:
    job_id: str
    attempt: int = 1
    pid: int | None = None
    started: float = 0.0  # clock time this attempt started
    counters: dict = field(default_factory=dict)  # total, decoded, inferred, encoded
    fps: float = 0.0
    incident: str | None = None  # the last incident, in a few words
    retry_note: str | None = None  # set while it waits for its next attempt
    last_beat: float = 0.0  # plain output: when its last heartbeat line was written
    node: str | None = None  # the cluster node it runs on (Ray executor)

    @property
    def stage(self) -> str:
        if self.retry_note:
            return "waiting to retry"
        c = self.counters
        if "total" not in c:
            return "starting"
        if not c.get("decoded"):
            return "preparing"
        return "finishing" if c.get("encoded", 0) >= c["total"] else "rendering"

    @property
    def frames(self) -> tuple[int, int | None]:
        return self.counters.get("encoded", 0), self.counters.get("total")


@dataclass
class WorkerView:
    index: int
    pid: int | None = None
    device: str = "?"
    served: int = 0  # batches served (by the current process)
    restarts: int = 0
    node: str | None = None  # the cluster node it runs on (Ray executor)


class RunView:
    """The state of a run rebuilt from its events; renderers only read it."""

    def __init__(self, clock: Clock = time.time) -> None:
        self.clock = clock
        self.total = 0
        self.started: float | None = None
        self.ended: float | None = None
        self.jobs: dict[str, JobView] = {}  # running, or waiting to retry
        self.workers: dict[int, WorkerView] = {}
        self.records: list[dict] = []  # job_finished records, in order
        self.stopped_by: str | None = None  # run_stopped: the signal's name
        self.interrupted: list[str] = []  # run_stopped: jobs under way when the signal came
        self.not_started: list[str] = []  # run_stopped: jobs that never started

    def apply(self, event: dict) -> None:
        handler = getattr(self, "_on_" + str(event.get("event")), None)
        if handler is not None:
            handler(event)

    def _on_run_started(self, event: dict) -> None:
        self.total, self.started = int(event.get("jobs", 0)), self.clock()

    def _on_run_finished(self, event: dict) -> None:
        self.ended = self.clock()

    def _on_run_stopped(self, event: dict) -> None:
        self.ended = self.clock()
        self.stopped_by = str(event.get("signal", "a signal"))
        self.interrupted = list(event.get("interrupted", []))
        self.not_started = list(event.get("not_started", []))

    def _on_job_started(self, event: dict) -> None:
        now = self.clock()
        self.jobs[event["job_id"]] = JobView(
            event["job_id"],
            event.get("attempt", 1),
            event.get("pid"),
            started=now,
            last_beat=now,
            node=node_label(event),
        )

    def _on_job_progress(self, event: dict) -> None:
        job = self.jobs.get(event["job_id"])
        if job is not None:
            job.counters.update({k: event[k] for k in ("total", "decoded", "inferred", "encoded") if k in event})
            job.fps = float(event.get("fps", 0.0))

    def _on_job_finished(self, event: dict) -> None:
        self.records.append(event["record"])
        self.jobs.pop(event["record"]["job_id"], None)

    def _on_worker_started(self, event: dict) -> None:
        worker = self.workers.setdefault(event["worker"], WorkerView(event["worker"]))
        worker.pid, worker.device, worker.served = event.get("pid"), str(event.get("device", "?")), 0
        worker.node = node_label(event)

    def _on_worker_progress(self, event: dict) -> None:
        worker = self.workers.setdefault(event["worker"], WorkerView(event["worker"]))
        worker.served = int(event.get("served", 0))

    def _on_incident(self, event: dict) -> None:
        if is_worker_death(event):
            self.workers.setdefault(event["worker"], WorkerView(event["worker"])).restarts += 1
        short = short_incident(event)
        for job_id in incident_jobs(event):
            job = self.jobs.get(job_id)
            if job is not None:
                job.incident = short
                if "job_id" in event and str(event.get("action", "")).startswith("retrying"):
                    job.retry_note = event["action"]

    # --- what the displays show --------------------------------------------------------------------------------

    def count(self, status: str) -> int:
        return sum(1 for r in self.records if r.get("status") == status)

    @property
    def done(self) -> int:
        return len(self.records)

    @property
    def fps(self) -> float:
        return sum(job.fps for job in self.jobs.values() if not job.retry_note)

    def elapsed(self) -> float:
        if self.started is None:
            return 0.0
        return (self.ended or self.clock()) - self.started

    def eta(self) -> float | None:
        """Seconds left: from the pace of finished jobs, or before any finished, from the running jobs' frames."""
        left = self.total - self.done
        if left <= 0:
            return 0.0
        if self.done:
            return self.elapsed() / self.done * left
        rates = [(j.frames[1] - j.frames[0]) / j.fps for j in self.jobs.values() if j.fps > 0 and j.frames[1]]
        if not rates or len(self.jobs) < left:
            return None  # jobs not started yet have no frame count: no honest estimate
        return max(rates)


def node_label(event: dict) -> str | None:
    """The node an event names, for people: its IP and the start of its Ray id (one machine may run several)."""
    if not event.get("node"):
        return None
    node_id = event.get("node_id")
    return f"{event['node']} ({node_id[:8]})" if node_id else str(event["node"])


def on_node(label: str | None) -> str:
    return f", node {label}" if label else ""


def incident_jobs(event: dict) -> list[str]:
    if "job_id" in event:
        return [event["job_id"]]
    return list(event.get("job_ids") or [])


def is_worker_death(event: dict) -> bool:
    """A worker died (or was killed as stalled) and was replaced: the incidents that carry a worker and no OOM."""
    return "worker" in event and event.get("error", {}).get("type") in ("WorkerCrashed", "Stalled")


def short_incident(event: dict) -> str:
    error = event.get("error", {})
    words = error.get("type", "incident")
    if error.get("signal"):
        words += f" ({error['signal']})"
    if "batch_size" in event:
        words += f", batch size now {event['batch_size']}"
    if event.get("action"):
        words += f": {event['action']}"
    return words


def describe_incident(event: dict) -> str:
    """An incident in one line a person understands: who, what happened (the error says why), what dhgen did."""
    error = event.get("error", {})
    jobs = incident_jobs(event)
    who = f"[{', '.join(jobs)}] " if jobs else ""
    if "worker" in event and not jobs:
        who = f"[worker {event['worker']}] "
    line = f"{who}{error.get('type', 'incident')}: {error.get('message', '(no message)')}"
    if event.get("action"):
        line += f" -> {event['action']}"
    return line


def crash_tail_lines(error: dict) -> list[str]:
    tail = error.get("crash_tail") or ""
    return tail.splitlines()[-CRASH_TAIL_SHOWN:]


def summary_rows(records: Iterable[dict]) -> list[tuple[str, str, str, str, str, str | None]]:
    """(job, status, attempts, time, output or error, hint) per finished job."""
    rows = []
    for r in records:
        what, hint = str(r.get("output")), None
        if r.get("status") == "failed":
            error = r.get("error") or {}
            what, hint = f"{error.get('type')}: {error.get('message')}", error.get("hint")
        took = format_duration(r.get("elapsed_s"))
        rows.append((r["job_id"], r["status"], str(r.get("attempts", 0)), took, what, hint))
    return rows


def stopped_rows(view: RunView) -> list[tuple[str, str, str, str, str, str | None]]:
    """After run_stopped: a row per interrupted job (how far it got) and per job that never started."""
    now, rows = view.clock(), []
    for job_id in view.interrupted:
        job = view.jobs.get(job_id)
        if job is None:
            rows.append((job_id, "interrupted", "-", "-", "stopped while running", None))
            continue
        done, total = job.frames
        where = f"stopped at {done}/{total} frames" if total else f"stopped while {job.stage}"
        rows.append((job_id, "interrupted", str(job.attempt), format_duration(now - job.started), where, None))
    rows += [(job_id, "not started", "0", "-", "-", None) for job_id in view.not_started]
    return rows


def every_row(view: RunView) -> list[tuple[str, str, str, str, str, str | None]]:
    """The summary's rows: finished jobs, then (after a signal) the interrupted and the never started."""
    return summary_rows(view.records) + stopped_rows(view)


def totals_line(view: RunView) -> str:
    stopped = ""
    if view.stopped_by is not None:
        stopped = f", {len(view.interrupted)} interrupted, {len(view.not_started)} not started"
    return (
        f"{view.count('succeeded')} succeeded, {view.count('failed')} failed, {view.count('skipped')} skipped"
        f"{stopped} in {format_duration(view.elapsed())}"
    )


def headline(view: RunView) -> str:
    """ "run finished: 2 succeeded, ..." or "run stopped by SIGTERM: ..., 1 interrupted, 3 not started ..."."""
    if view.stopped_by is not None:
        return f"run stopped by {view.stopped_by}: {totals_line(view)}"
    return f"run finished: {totals_line(view)}"


def summary_lines(view: RunView) -> list[str]:
    """The summary as aligned plain-text lines (plain progress, the tqdm bar after a stop)."""
    rows = every_row(view)
    if not rows:
        return []
    table = [("job", "status", "attempts", "time", "output / error")] + [row[:5] for row in rows]
    widths = [max(len(r[i]) for r in table) for i in range(4)]
    lines = []
    for row, full in zip(table, [None, *rows], strict=True):
        cells = [cell.ljust(widths[i]) if i != 2 else cell.rjust(widths[i]) for i, cell in enumerate(row[:4])]
        lines.append("  " + "  ".join(cells) + "  " + row[4])
        if full is not None and full[5]:
            lines.append("  " + " " * (sum(widths) + 8) + "  hint: " + full[5])
    return lines


# --- Rich: a live table on a terminal ---------------------------------------------------------------------------


class Column:
    """One column of a live table: a header, and one cell per row."""

    header = ""
    justify = "left"
    optional = False  # True: left out of a table whose rows all render it empty

    def render(self, row: Any, now: float) -> RenderableType:
        raise NotImplementedError


class JobIdColumn(Column):
    header = "job"

    def render(self, row: JobView, now: float) -> RenderableType:
        return Text(row.job_id, style="bold")


class StageColumn(Column):
    header = "stage"

    def render(self, row: JobView, now: float) -> RenderableType:
        return Text(row.stage, style="yellow" if row.retry_note else "")


class FramesColumn(Column):
    header = "frames"
    justify = "right"

    def render(self, row: JobView, now: float) -> RenderableType:
        done, total = row.frames
        return f"{done}/{total}" if total else "-"


class FpsColumn(Column):
    header = "fps"
    justify = "right"

    def render(self, row: JobView, now: float) -> RenderableType:
        return f"{row.fps:.1f}" if row.fps else "-"


class NodeColumn(Column):
    """The cluster node of a job or a worker; shown only when some row has one (the Ray executor)."""

    header = "node"
    optional = True

    def render(self, row: Any, now: float) -> RenderableType:
        return row.node or ""


class AttemptColumn(Column):
    header = "attempt"
    justify = "right"

    def render(self, row: JobView, now: float) -> RenderableType:
        return str(row.attempt)


class ElapsedColumn(Column):
    header = "time"
    justify = "right"

    def render(self, row: JobView, now: float) -> RenderableType:
        return format_duration(max(0.0, now - row.started))


class LastIncidentColumn(Column):
    header = "last incident"

    def render(self, row: JobView, now: float) -> RenderableType:
        return Text(row.incident or "", style="red", overflow="ellipsis", no_wrap=True)


class WorkerColumn(Column):
    header = "worker"

    def render(self, row: WorkerView, now: float) -> RenderableType:
        return Text(str(row.index), style="bold")


class PidColumn(Column):
    header = "pid"
    justify = "right"

    def render(self, row: WorkerView, now: float) -> RenderableType:
        return str(row.pid or "-")


class DeviceColumn(Column):
    header = "device"

    def render(self, row: WorkerView, now: float) -> RenderableType:
        return row.device


class ServedColumn(Column):
    header = "batches"
    justify = "right"

    def render(self, row: WorkerView, now: float) -> RenderableType:
        return str(row.served)


class RestartsColumn(Column):
    header = "restarts"
    justify = "right"

    def render(self, row: WorkerView, now: float) -> RenderableType:
        return Text(str(row.restarts), style="red" if row.restarts else "")


JOB_COLUMNS = (
    JobIdColumn(),
    NodeColumn(),
    StageColumn(),
    FramesColumn(),
    FpsColumn(),
    AttemptColumn(),
    ElapsedColumn(),
    LastIncidentColumn(),
)
WORKER_COLUMNS = (WorkerColumn(), NodeColumn(), PidColumn(), DeviceColumn(), ServedColumn(), RestartsColumn())


def column_table(columns: Iterable[Column], rows: Iterable[Any], now: float, title: str | None = None) -> Table:
    rows = list(rows)
    columns = [c for c in columns if not c.optional or any(c.render(row, now) for row in rows)]
    table = Table(title=title, title_justify="left", expand=False, box=None, header_style="bold dim")
    for column in columns:
        table.add_column(column.header, justify=column.justify)
    for row in rows:
        table.add_row(*(column.render(row, now) for column in columns))
    return table


class OverallLine:
    """done / failed / total, running jobs, aggregate fps and ETA."""

    def render(self, view: RunView) -> Text:
        eta = view.eta()
        return Text.assemble(
            (f"{view.done}/{view.total} done", "bold"),
            "  ",
            (f"{view.count('failed')} failed", "bold red" if view.count("failed") else ""),
            f"  {len(view.jobs)} running  {view.fps:.1f} fps  ",
            f"elapsed {format_duration(view.elapsed())}  ETA {format_duration(eta) if eta is not None else '?'}",
        )


class SummaryTable:
    """The end of a run: per job status, attempts, time, and output or error with its hint."""

    def render(self, view: RunView) -> Table:
        title = f"dhgen: {headline(view) if view.stopped_by else totals_line(view)}"
        table = Table(title=title, title_justify="left", header_style="bold")
        for header in ("job", "status", "attempts", "time", "output / error"):
            table.add_column(header, justify="right" if header in ("attempts", "time") else "left")
        for job, status, attempts, took, what, hint in every_row(view):
            cell = Text(what)
            if hint:
                cell.append(f"\nhint: {hint}", style="dim")
            table.add_row(job, Text(status, style=STATUS_STYLE.get(status, "")), attempts, took, cell)
        return table


class RichProgress:
    """A live table on a terminal; incidents and finished jobs are printed above it as they happen."""

    def __init__(self, console: Console | None = None, clock: Clock = time.time, auto_refresh: bool = True) -> None:
        self.console = console or Console(stderr=True)
        self.view = RunView(clock)
        self._lock = threading.Lock()
        self._live = Live(
            console=self.console,
            get_renderable=self._renderable,
            auto_refresh=auto_refresh,
            refresh_per_second=2,
            transient=True,
            redirect_stdout=False,
            redirect_stderr=False,
        )

    def __enter__(self) -> RichProgress:
        self._live.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._live.stop()
        if self.view.records or self.view.ended is not None:
            self.console.print(SummaryTable().render(self.view))

    def __call__(self, event: dict) -> None:
        with self._lock:
            self.view.apply(event)
        kind = event.get("event")
        if kind == "incident":
            self._print_incident(event)
        elif kind == "job_finished":
            self._print_finished(event["record"])
        self._live.refresh()

    def _print_incident(self, event: dict) -> None:
        error = event.get("error", {})
        text = Text.assemble(("! ", "bold red"), describe_incident(event))
        if error.get("hint"):
            text.append(f"\n  hint: {error['hint']}", style="dim")
        for line in crash_tail_lines(error):
            text.append(f"\n  | {line}", style="dim")
        self.console.print(text)

    def _print_finished(self, record: dict) -> None:
        status = record["status"]
        if status == "failed":
            error = record.get("error") or {}
            words = f"failed after {record.get('attempts')} attempt(s): {error.get('type')}: {error.get('message')}"
        else:
            words = f"{status} in {format_duration(record.get('elapsed_s'))} -> {record.get('output')}"
        self.console.print(Text.assemble((f"{record['job_id']} ", "bold"), (words, STATUS_STYLE.get(status, ""))))

    def _renderable(self) -> RenderableType:
        with self._lock:
            now = self.view.clock()
            jobs = column_table(JOB_COLUMNS, list(self.view.jobs.values()), now)
            parts: list[RenderableType] = [OverallLine().render(self.view), jobs]
            if self.view.workers:
                parts.append(column_table(WORKER_COLUMNS, list(self.view.workers.values()), now, title="workers"))
        return Group(*parts)


# --- plain: timestamped lines for cron mail and CI logs ---------------------------------------------------------


class Heartbeat:
    """Calls `tick()` every `period` seconds on a daemon thread until stopped."""

    def __init__(self, tick: Callable[[], None], period: float) -> None:
        self._tick, self._period = tick, period
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="dhgen-heartbeat", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self._period):
            self._tick()


class PlainProgress:
    """Timestamped lines, no escape codes: starts, finishes, every incident, heartbeats and a final summary."""

    def __init__(
        self,
        stream: IO[str] | None = None,
        clock: Clock = time.time,
        heartbeat_s: float = HEARTBEAT_S,
        heartbeat_thread: bool = True,
    ) -> None:
        self.stream = stream or sys.stderr
        self.view = RunView(clock)
        self.heartbeat_s = heartbeat_s
        self._lock = threading.Lock()
        self._heartbeat = Heartbeat(self.tick, min(1.0, heartbeat_s / 4)) if heartbeat_thread else None

    def __enter__(self) -> PlainProgress:
        if self._heartbeat is not None:
            self._heartbeat.start()
        return self

    def __exit__(self, *exc_info) -> None:
        if self._heartbeat is not None:
            self._heartbeat.stop()
        if self.view.ended is None and self.view.started is not None:
            self._write([f"run stopped before the end: {totals_line(self.view)}"] + summary_lines(self.view))

    def __call__(self, event: dict) -> None:
        with self._lock:
            self.view.apply(event)
            lines = self._lines(event)
            self._write(lines)

    def tick(self) -> None:
        """Write a heartbeat line for each running job whose last one is `heartbeat_s` old."""
        with self._lock:
            now = self.view.clock()
            lines = []
            for job in self.view.jobs.values():
                if now - job.last_beat >= self.heartbeat_s:
                    job.last_beat = now
                    lines.append(self._heartbeat_line(job, now))
            self._write(lines)

    def _heartbeat_line(self, job: JobView, now: float) -> str:
        done, total = job.frames
        frames = f", {done}/{total} frames" if total else ""
        fps = f", {job.fps:.1f} fps" if job.fps else ""
        return (
            f"job {job.job_id}: still running{on_node(job.node)}, {job.stage}{frames}{fps}, "
            f"{format_duration(now - job.started)} in attempt {job.attempt}"
        )

    def _lines(self, event: dict) -> list[str]:
        kind = event.get("event")
        if kind == "run_started":
            return [f"run started: {event.get('jobs')} job(s)"]
        if kind == "worker_started":
            where = on_node(node_label(event))
            return [f"worker {event.get('worker')}: ready on {event.get('device')} (pid {event.get('pid')}{where})"]
        if kind == "job_started":
            where = on_node(node_label(event))
            return [f"job {event['job_id']}: started (attempt {event.get('attempt')}, pid {event.get('pid')}{where})"]
        if kind == "incident":
            return self._incident_lines(event)
        if kind == "job_finished":
            return self._finished_lines(event["record"])
        if kind in ("run_finished", "run_stopped"):
            return [headline(self.view)] + summary_lines(self.view)
        return []

    def _incident_lines(self, event: dict) -> list[str]:
        error = event.get("error", {})
        lines = ["incident " + describe_incident(event)]
        if error.get("hint"):
            lines.append(f"  hint: {error['hint']}")
        return lines + [f"  | {line}" for line in crash_tail_lines(error)]

    def _finished_lines(self, record: dict) -> list[str]:
        job, status = record["job_id"], record["status"]
        if status != "failed":
            frames = f", {record.get('frames')} frames" if record.get("frames") else ""
            return [f"job {job}: {status} in {format_duration(record.get('elapsed_s'))}{frames} -> {record['output']}"]
        error = record.get("error") or {}
        return [
            f"job {job}: FAILED after {record.get('attempts')} attempt(s): {error.get('type')}: {error.get('message')}",
            f"  hint: {error.get('hint')}",
        ]

    def _write(self, lines: list[str]) -> None:
        if not lines:
            return
        stamp = utc_stamp(self.view.clock())
        try:
            self.stream.write("".join(f"{stamp} {line}\n" for line in lines))
            self.stream.flush()
        except (BrokenPipeError, ValueError):  # the reader went away: the run goes on, the result log has it
            pass


# --- JSON: one event per line, for scripts ------------------------------------------------------------------------


class JsonProgress:
    """Each event as one JSON object per line (stdout by default); every object has `event` and `time`."""

    def __init__(self, stream: IO[str] | None = None, clock: Clock = time.time) -> None:
        self.stream = stream or sys.stdout
        self.clock = clock
        self._broken = False

    def __enter__(self) -> JsonProgress:
        return self

    def __exit__(self, *exc_info) -> None:
        pass

    def __call__(self, event: dict) -> None:
        if self._broken:
            return
        if "time" not in event:
            event = {**event, "time": _iso_ms(self.clock())}
        try:
            self.stream.write(json.dumps(event, ensure_ascii=False, default=str) + "\n")
            self.stream.flush()
        except BrokenPipeError:
            self._broken = True
            log.warning("the reader of the JSON events went away; the run goes on (see the result log)")


def _iso_ms(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{int(seconds * 1000) % 1000:03d}Z"


class NullProgress:
    """--progress none: shows nothing (the exit code and the result log tell)."""

    def __enter__(self) -> NullProgress:
        return self

    def __exit__(self, *exc_info) -> None:
        pass

    def __call__(self, event: dict) -> None:
        pass


class EventLog:
    """The events as log records of `dhgen.events` (for --log-file): incidents are warnings, failures errors."""

    def __init__(self, logger: logging.Logger | None = None) -> None:
        self.log = logger or logging.getLogger("dhgen.events")

    def __enter__(self) -> EventLog:
        return self

    def __exit__(self, *exc_info) -> None:
        pass

    def __call__(self, event: dict) -> None:
        kind = event.get("event")
        if kind == "incident":
            self.log.warning("incident %s", describe_incident(event))
        elif kind == "job_finished":
            record = event["record"]
            error = record.get("error") or {}
            if record["status"] == "failed":
                self.log.error("job %s failed: %s: %s", record["job_id"], error.get("type"), error.get("message"))
            else:
                self.log.info("job %s %s -> %s", record["job_id"], record["status"], record.get("output"))
        elif kind == "run_stopped":
            self.log.warning("run stopped by %s: %s", event.get("signal"), json.dumps(_without_time(event)))
        elif kind == "run_error":
            error = event.get("error") or {}
            self.log.error(
                "run refused (exit %s): %s: %s", event.get("exit_code"), error.get("type"), error.get("message")
            )
        elif kind in ("run_started", "run_finished", "job_started", "worker_started"):
            self.log.info("%s", json.dumps(_without_time(event)))


def _without_time(event: dict) -> dict:
    return {k: v for k, v in event.items() if k != "time"}


# --- tqdm: the Python API's bar ---------------------------------------------------------------------------------


class TqdmProgress:
    """A `tqdm.auto` bar over jobs (fractional while frames flow); incidents are written above it, and after a
    signal the summary of every job below it."""

    def __init__(self, clock: Clock = time.time, **tqdm_kwargs) -> None:
        self.view = RunView(clock)
        self._kwargs = {"unit": "job", "desc": "dhgen", **tqdm_kwargs}
        self._bar = None

    def __enter__(self) -> TqdmProgress:
        return self

    def __exit__(self, *exc_info) -> None:
        if self._bar is not None:
            self._bar.close()

    def __call__(self, event: dict) -> None:
        self.view.apply(event)
        kind = event.get("event")
        if kind == "run_started":
            from tqdm.auto import tqdm

            self._bar = tqdm(total=self.view.total, **self._kwargs)
        if self._bar is None:
            return
        if kind == "run_stopped":
            self._show_summary()
            return
        if kind == "incident":
            self._bar.write("dhgen: " + describe_incident(event))
        view = self.view
        partial = sum(j.frames[0] / j.frames[1] for j in view.jobs.values() if j.frames[1] and not j.retry_note)
        self._bar.n = round(view.done + partial, 2)
        self._bar.set_postfix(failed=view.count("failed"), fps=f"{view.fps:.1f}", refresh=False)
        self._bar.refresh()

    def _show_summary(self) -> None:
        """After a signal: every job, finished, interrupted or not started, below the closed bar."""
        bar, self._bar = self._bar, None
        bar.close()
        for line in [f"dhgen: {headline(self.view)}", *summary_lines(self.view)]:
            bar.write(line, file=getattr(bar, "fp", None))


# --- choosing and combining -------------------------------------------------------------------------------------


class Tee:
    """Several handlers as one (a display and a metrics file, say); a context manager over all of them. A member
    may also be a plain callable (a user's `on_event`), which is only called."""

    def __init__(self, *handlers) -> None:
        self.handlers = [h for h in handlers if h is not None]

    def __enter__(self) -> Tee:
        for handler in self.handlers:
            if hasattr(handler, "__enter__"):
                handler.__enter__()
        return self

    def __exit__(self, *exc_info) -> None:
        for handler in reversed(self.handlers):
            if hasattr(handler, "__exit__"):
                handler.__exit__(*exc_info)

    def __call__(self, event: dict) -> None:
        for handler in self.handlers:
            handler(event)


def make_progress(
    mode: str,
    console: Console | None = None,
    stdout: IO[str] | None = None,
    clock: Clock = time.time,
    heartbeat_s: float = HEARTBEAT_S,
):
    """The display for `--progress MODE` (auto: rich when stderr is a terminal, else plain)."""
    if mode == "auto":
        console = console or Console(stderr=True)
        mode = "rich" if console.is_terminal and not console.is_dumb_terminal else "plain"
    if mode == "rich":
        return RichProgress(console or Console(stderr=True), clock)
    if mode == "plain":
        return PlainProgress(console.file if console else None, clock, heartbeat_s)
    if mode == "json":
        return JsonProgress(stdout, clock)
    if mode == "none":
        return NullProgress()
    raise ValueError(f"unknown progress mode {mode!r}: use auto, rich, plain, json or none")
