"""`dhgen report`: a batch's outcome, read from every result log in its output folder (every shard's included).

    results.jsonl, results.shard-K-of-N.jsonl ──► last record of each job ──► BatchReport ──► JSON / plain / Rich
    manifest (optional) ──► the jobs there should be: a job without a record is missing

A shard's log says the shard ran, even when empty (a shard with no jobs): the report lists each shard with the
jobs its log holds.

`build_report` does the reading (logs, manifest); everything after it is pure. `verify_against` (`--verify
OTHER`) compares each done job's `frames_digest` with another batch's (last night's folder, the same batch
rendered by another executor or build: `dhgen.verify`). `jobs_to_render_again` feeds `--failed-manifest`, which
exists only while there is work to redo (`write_failed_manifest` removes an earlier one when nothing is left).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from rich.console import RenderableType
from rich.table import Table
from rich.text import Text

from dhgen.errors import OutputError, UsageError
from dhgen.manifest import SETTING_KEYS, Job, read_manifest, write_manifest
from dhgen.options import JobSettings
from dhgen.progress import STATUS_STYLE, format_duration
from dhgen.results import last_records, last_records_of, latest, result_logs
from dhgen.shards import shard_in_name, shard_of
from dhgen.verify import Verification, compare_records

SLOWEST = 5  # jobs listed as the slowest
SHOWN = 20  # ids listed in plain text and tables before "... and N more" (--json lists all)
DONE = ("succeeded", "skipped")


@dataclass
class BatchReport:
    out_dir: Path
    logs: list[Path]
    records: dict[str, dict]  # the last record of each job (only the manifest's jobs, when one is given)
    jobs: list[Job] | None = None  # the manifest's jobs, when checked against one
    manifest: Path | None = None
    ignored: int = 0  # jobs that have records but are not in the manifest
    order: list[str] = field(default_factory=list)  # job ids in the order they are listed
    verification: Verification | None = None  # --verify OTHER: frames digests against another batch's
    shard_jobs: dict[str, int] = field(default_factory=dict)  # "1/4" -> jobs in that shard's log (0: ran, no jobs)

    def __post_init__(self) -> None:
        self.order = [job.id for job in self.jobs] if self.jobs is not None else sorted(self.records)

    @property
    def missing(self) -> list[str]:
        return [job_id for job_id in self.order if job_id not in self.records]

    @property
    def failed(self) -> list[dict]:
        return [self.records[i] for i in self.order if i in self.records and self.records[i]["status"] not in DONE]

    @property
    def counts(self) -> dict[str, int]:
        statuses = [r.get("status") for r in self.records.values()]
        counts = {s: statuses.count(s) for s in DONE}
        counts["failed"] = len(statuses) - sum(counts.values())
        counts["missing"] = len(self.missing)
        return counts

    @property
    def exit_code(self) -> int:
        unverified = self.verification is not None and not self.verification.ok
        return 1 if self.failed or self.missing or not self.records or unverified else 0

    @property
    def missing_shards(self) -> list[str] | None:
        """The shards (`2/4`) the missing jobs belong to, when the logs are of one shard count."""
        counts = {s.count for s in map(shard_in_name, self.logs) if s is not None}
        if len(counts) != 1 or not self.missing:
            return None
        (count,) = counts
        return [f"{k}/{count}" for k in sorted({shard_of(job_id, count) for job_id in self.missing})]

    def slowest(self, n: int = SLOWEST) -> list[dict]:
        timed = [r for r in self.records.values() if r.get("status") != "skipped" and r.get("elapsed_s")]
        return sorted(timed, key=lambda r: -float(r["elapsed_s"]))[:n]

    @property
    def frames(self) -> int:
        return sum(int(r.get("frames") or 0) for r in self.records.values() if r.get("status") in DONE)

    @property
    def render_seconds(self) -> float:
        return round(sum(float(r.get("elapsed_s") or 0) for r in self.records.values()), 3)

    @property
    def wall_seconds(self) -> float | None:
        """From the first start to the last finish of the jobs rendered (skipped ones did not render)."""
        rendered = [r for r in self.records.values() if r.get("status") != "skipped"]
        starts = [t for r in rendered if (t := _time(r.get("started_at")))]
        ends = [t for r in rendered if (t := _time(r.get("finished_at")))]
        return round((max(ends) - min(starts)).total_seconds(), 3) if starts and ends else None

    def to_dict(self) -> dict:
        return {
            "out_dir": str(self.out_dir),
            "logs": [str(p) for p in self.logs],
            "manifest": str(self.manifest) if self.manifest else None,
            "jobs": len(self.order),
            "counts": self.counts,
            "ok": self.exit_code == 0,
            "failed": [_failure(r) for r in self.failed],
            "missing": self.missing,
            "missing_shards": self.missing_shards,
            "shards": self.shard_jobs,
            "slowest": [_timing(r) for r in self.slowest()],
            "frames": self.frames,
            "render_seconds": self.render_seconds,
            "wall_seconds": self.wall_seconds,
            "ignored_records": self.ignored,
            "verify": _verification(self.verification),
        }


def build_report(out_dir: str | Path, manifest: str | Path | None = None) -> BatchReport:
    """Read every result log in `out_dir` (and the manifest, when given). UsageError for a folder that is not
    there or holds no result log (without a manifest), ManifestError for a bad manifest."""
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        raise UsageError(f"{out_dir} is not a folder", hint="give the --out folder of a render")
    logs = result_logs(out_dir)
    if not logs and manifest is None:
        raise UsageError(
            f"no result log (results.jsonl, results.shard-K-of-N.jsonl) in {out_dir}",
            hint="give the --out folder of a render, or --manifest to list its jobs as missing",
        )
    per_log = {path: last_records(path) for path in logs}
    records, shards = latest(per_log.values()), _shard_jobs(per_log)
    if manifest is None:
        return BatchReport(out_dir, logs, records, shard_jobs=shards)
    jobs = read_manifest(manifest, out_dir)
    wanted = {job.id for job in jobs}
    kept = {job_id: r for job_id, r in records.items() if job_id in wanted}
    ignored = len(records) - len(kept)
    return BatchReport(out_dir, logs, kept, jobs, Path(manifest), ignored=ignored, shard_jobs=shards)


def _shard_jobs(per_log: dict[Path, dict]) -> dict[str, int]:
    """The jobs recorded in each shard's log, by shard (`1/4`), in shard order."""
    by_shard = {shard: len(records) for path, records in per_log.items() if (shard := shard_in_name(path))}
    return {str(shard): n for shard, n in sorted(by_shard.items(), key=lambda item: (item[0].count, item[0].index))}


def verify_against(report: BatchReport, other: str | Path) -> BatchReport:
    """`report` with its done jobs' frames digests checked against `other`: an output folder (every result log in
    it) or one result log. UsageError when `other` holds no result log."""
    other = Path(other)
    logs = result_logs(other) if other.is_dir() else [other] if other.is_file() else []
    if not logs:
        raise UsageError(f"--verify {other}: no result log there", hint="give another batch's --out folder or log")
    done = {job_id: r for job_id, r in report.records.items() if r.get("status") in DONE}
    theirs = last_records_of(logs)
    reference = {job_id: theirs.get(job_id) for job_id in done}  # expected: the other batch's; actual: this one's
    report.verification = compare_records(reference, done)
    return report


# --- rendering again ---------------------------------------------------------------------------------------------


def jobs_to_render_again(report: BatchReport) -> list[Job]:
    """The failed and missing jobs: from the manifest when there is one (settings and x_ columns as it has them),
    else from their records."""
    again = {r["job_id"] for r in report.failed} | set(report.missing)
    if report.jobs is not None:
        return [job for job in report.jobs if job.id in again]
    return [job_from_record(report.records[job_id]) for job_id in report.order if job_id in again]


def job_from_record(record: dict) -> Job:
    """The job a record was rendered from (its row's own settings and x_ columns included)."""
    overrides = record.get("overrides") or {}
    settings = {k: tuple(v) if k == "pads" else v for k, v in overrides.items() if k in SETTING_KEYS}
    meta = tuple((record.get("meta") or {}).items())
    paths = (Path(record[k]) for k in ("audio", "avatar", "output"))
    return Job(record["job_id"], *paths, settings=JobSettings(**settings), meta=meta)


@dataclass(frozen=True)
class FailedManifest:
    path: Path
    jobs: int  # jobs written to it (0: nothing to render again, nothing written)
    removed: bool = False  # nothing to render again, and an earlier file at `path` was removed


def write_failed_manifest(report: BatchReport, path: str | Path) -> FailedManifest:
    """Write the failed and missing jobs as a manifest at `path`, ready for `dhgen render PATH --out OUT_DIR`.
    With nothing to render again, a file already at `path` (an earlier batch's) is removed, so that the file
    exists only while there is work to redo. OSError when it cannot be written; OutputError when it cannot be
    removed."""
    path, jobs = Path(path), jobs_to_render_again(report)
    if jobs:
        write_manifest(path, jobs, report.out_dir)
        return FailedManifest(path, len(jobs))
    try:
        path.unlink()
    except FileNotFoundError:
        return FailedManifest(path, 0)
    except OSError as exc:
        raise OutputError(
            f"nothing to render again, but the earlier failed manifest cannot be removed: {exc.strerror or exc}",
            path=path,
            hint="remove it by hand, or give --failed-manifest a path of a file",
        ) from exc
    return FailedManifest(path, 0, removed=True)


# --- showing it --------------------------------------------------------------------------------------------------


def report_lines(report: BatchReport) -> list[str]:
    """The report as plain text lines (logs, cron mail, a pipe)."""
    lines = [_heading(report), *_shards_ran(report), *(f"  {status:<10} {n:>6}" for status, n in report.counts.items())]
    if report.failed:
        lines.append("failed jobs:")
        for record in report.failed[:SHOWN]:
            error = record.get("error") or {}
            tried = f"{record.get('attempts', 0)} attempt(s)"
            lines.append(f"  {record['job_id']}  {error.get('type', '?')} ({tried}): {error.get('message', '')}")
            lines.append(f"      hint: {error.get('hint', '')}")
        lines += _more(report.failed)
    if report.missing:
        lines.append(f"missing jobs (no record{_in_shards(report)}): {_ids(report.missing)}")
    if report.slowest():
        lines.append("slowest jobs:")
        lines += [f"  {line}" for line in _aligned(_slowest_rows(report))]
    if report.verification is not None:
        lines += report.verification.lines()
    lines += [_totals(report), f"verdict: {_verdict(report)}"]
    return lines


def report_renderables(report: BatchReport) -> list[RenderableType]:
    """The report as Rich tables, for a terminal."""
    out: list[RenderableType] = [Text(_heading(report), style="bold"), *map(Text, _shards_ran(report))]
    counts = Table(show_header=True, header_style="bold", box=None, padding=(0, 2))
    counts.add_column("status")
    counts.add_column("jobs", justify="right")
    for status, n in report.counts.items():
        counts.add_row(Text(status, style=STATUS_STYLE.get(status, "yellow" if n else "")), str(n))
    out.append(counts)
    if report.failed:
        failed = Table(title="failed jobs", title_justify="left", header_style="bold", expand=False)
        for name in ("job", "error", "attempts", "message", "hint"):
            failed.add_column(name, overflow="fold")
        for record in report.failed[:SHOWN]:
            error = record.get("error") or {}
            cells = (error.get("type", "?"), str(record.get("attempts", 0)), error.get("message", ""))
            failed.add_row(record["job_id"], *cells, error.get("hint", ""))
        out += [failed, *map(Text, _more(report.failed))]
    if report.missing:
        out.append(Text(f"missing jobs (no record{_in_shards(report)}): {_ids(report.missing)}", style="yellow"))
    if report.slowest():
        slow = Table(title="slowest jobs", title_justify="left", header_style="bold", box=None, padding=(0, 2))
        for name in ("job", "time", "frames", "fps"):
            slow.add_column(name, justify="left" if name == "job" else "right")
        for row in _slowest_rows(report):
            slow.add_row(*row)
        out.append(slow)
    if report.verification is not None:
        out += [Text(line, style="" if report.verification.ok else "red") for line in report.verification.lines()]
    style = "bold green" if report.exit_code == 0 else "bold red"
    out += [Text(_totals(report)), Text(f"verdict: {_verdict(report)}", style=style)]
    return out


def _heading(report: BatchReport) -> str:
    logs = f"{len(report.logs)} result log(s)"
    against = f", checked against {report.manifest} ({len(report.jobs or [])} jobs)" if report.manifest else ""
    ignored = f"; {report.ignored} recorded job(s) not in the manifest left out" if report.ignored else ""
    return f"batch in {report.out_dir}: {logs}{against}{ignored}"


def _shard_key(shard: str) -> tuple[int, int]:
    index, count = shard.split("/")
    return int(count), int(index)


def _shards_ran(report: BatchReport) -> list[str]:
    """`shards ran: 0/4 (0 jobs), 1/4 (2 jobs), ...`: a shard with no jobs ran too (it left its log)."""
    shards = [f"{shard} ({n} job{'' if n == 1 else 's'})" for shard, n in report.shard_jobs.items()]
    return [f"shards ran: {_ids(shards)}"] if shards else []


def _in_shards(report: BatchReport) -> str:
    shards = report.missing_shards
    return f"; in shard {', '.join(shards)}" if shards else ""


def _ids(ids: list[str]) -> str:
    shown = ", ".join(ids[:SHOWN])
    return shown + (f", ... and {len(ids) - SHOWN} more (--json lists all)" if len(ids) > SHOWN else "")


def _more(items: list) -> list[str]:
    return [f"  ... and {len(items) - SHOWN} more (--json lists all)"] if len(items) > SHOWN else []


def _slowest_rows(report: BatchReport) -> list[tuple[str, str, str, str]]:
    rows = []
    for record in report.slowest():
        t = _timing(record)
        fps = f"{t['fps']:.1f} fps" if t["fps"] else "-"
        rows.append((record["job_id"], format_duration(t["elapsed_s"]), f"{t['frames'] or 0} frames", fps))
    return rows


def _aligned(rows: list[tuple[str, ...]]) -> list[str]:
    """Plain-text columns: the first left-aligned, the numbers right-aligned."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    cells = ([row[0].ljust(widths[0]), *(c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True))] for row in rows)
    return ["  ".join(line) for line in cells]


def _totals(report: BatchReport) -> str:
    wall = report.wall_seconds
    span = f", {format_duration(wall)} from the first start to the last finish" if wall is not None else ""
    return f"total: {report.frames} frames in outputs, {format_duration(report.render_seconds)} of job time{span}"


def _verdict(report: BatchReport) -> str:
    if not report.records and not report.missing:
        return "no job recorded"
    counts = report.counts
    if report.exit_code == 0:
        return f"all {len(report.records)} job(s) done" + (", frames as verified" if report.verification else "")
    if not report.failed and not report.missing:
        return f"all {len(report.records)} job(s) done, but their frames differ from the other batch's"
    return f"{counts['failed']} failed, {counts['missing']} missing of {len(report.order)}"


def _verification(verification: Verification | None) -> dict | None:
    if verification is None:
        return None
    counts = {o: len(verification.of(o)) for o in ("match", "mismatch", "missing")}
    unmatched = [dataclasses.asdict(c) for c in verification.checks if c.outcome != "match"]
    return {"ok": verification.ok, **counts, "unmatched": unmatched}


def _failure(record: dict) -> dict:
    error = record.get("error") or {}
    keep = ("type", "message", "hint", "retryable")
    return {"job_id": record["job_id"], "attempts": record.get("attempts"), "error": {k: error.get(k) for k in keep}}


def _timing(record: dict) -> dict:
    elapsed, frames = float(record.get("elapsed_s") or 0), record.get("frames")
    fps = round(frames / elapsed, 2) if frames and elapsed else None
    return {"job_id": record["job_id"], "elapsed_s": elapsed, "frames": frames, "fps": fps}


def _time(stamp: str | None) -> datetime | None:
    try:
        return datetime.fromisoformat(stamp.replace("Z", "+00:00")) if stamp else None
    except ValueError:
        return None
