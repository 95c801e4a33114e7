"""The job store: one SQLite database in the state folder (stdlib `sqlite3`, WAL, one connection, one writer at a
time), so a job is on disk before its submit is answered and survives any stop of the server.

A row holds what the job is (its manifest fields, the inputs as absolute paths), its input fingerprint, its
status (queued, running, succeeded, failed, cancelled), its attempts and incidents so far, and its record (the
result-log object) once it finished. Rows are kept until deleted; `seq` orders them (submission order).
"""

from __future__ import annotations

import json
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path

from dhgen.results import utc_now

STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")
ACTIVE = ("queued", "running")
SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    status TEXT NOT NULL,
    fields TEXT NOT NULL,
    fingerprint TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    errors TEXT NOT NULL DEFAULT '[]',
    record TEXT,
    uploads TEXT,
    submitted_at TEXT NOT NULL,
    started_at TEXT,
    finished_at TEXT
);
CREATE INDEX IF NOT EXISTS jobs_by_status ON jobs (status, seq);
"""


@dataclass(frozen=True)
class JobRow:
    seq: int
    id: str
    status: str
    fields: dict  # the job as manifest fields (id, audio, avatar, per-job settings, x_ columns)
    fingerprint: str | None
    attempts: int
    errors: list  # incidents so far (the record's errors[] once finished)
    record: dict | None  # the result-log object, once finished
    uploads: str | None  # the folder of its uploaded inputs, removed with the job
    submitted_at: str
    started_at: str | None
    finished_at: str | None

    @property
    def active(self) -> bool:
        return self.status in ACTIVE


class Store:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._lock = threading.Lock()
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")  # a commit is on disk when it returns
            self._db.executescript(SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # --- reading -----------------------------------------------------------------------------------------------

    def get(self, job_id: str) -> JobRow | None:
        rows = self._select("WHERE id = ?", (job_id,))
        return rows[0] if rows else None

    def page(self, status: str | None, after: int, limit: int) -> list[JobRow]:
        """Jobs after `seq` `after`, oldest first, with `status` (any when None)."""
        if status is None:
            return self._select("WHERE seq > ? ORDER BY seq LIMIT ?", (after, limit))
        return self._select("WHERE status = ? AND seq > ? ORDER BY seq LIMIT ?", (status, after, limit))

    def with_status(self, status: str) -> list[JobRow]:
        return self._select("WHERE status = ? ORDER BY seq", (status,))

    def counts(self) -> dict[str, int]:
        with self._lock:
            rows = self._db.execute("SELECT status, COUNT(*) FROM jobs GROUP BY status").fetchall()
        return {**dict.fromkeys(STATUSES, 0), **{status: n for status, n in rows}}

    def _select(self, where: str, args: tuple) -> list[JobRow]:
        with self._lock:
            rows = self._db.execute(f"SELECT * FROM jobs {where}", args).fetchall()
        return [_row(r) for r in rows]

    # --- writing -----------------------------------------------------------------------------------------------

    def insert(self, fields: dict, fingerprint: str | None, uploads: str | None) -> JobRow:
        """A new queued job (sqlite3.IntegrityError when its id is taken)."""
        self._write(
            "INSERT INTO jobs (id, status, fields, fingerprint, uploads, submitted_at) "
            "VALUES (?, 'queued', ?, ?, ?, ?)",
            (fields["id"], _json(fields), fingerprint, uploads, utc_now()),
        )
        return self.get(fields["id"])

    def started(self, job_id: str, attempt: int) -> None:
        self._write(
            "UPDATE jobs SET status = 'running', attempts = ?, started_at = COALESCE(started_at, ?) "
            "WHERE id = ? AND status IN ('queued', 'running')",
            (attempt, utc_now(), job_id),
        )

    def add_incident(self, job_id: str, error: dict) -> None:
        with self._lock:
            row = self._db.execute("SELECT errors FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is not None:
                errors = [*json.loads(row["errors"]), error]
                self._db.execute("UPDATE jobs SET errors = ? WHERE id = ?", (_json(errors), job_id))

    def requeue(self, job_id: str, attempts: int, errors: list) -> None:
        self._write(
            "UPDATE jobs SET status = 'queued', attempts = ?, errors = ? WHERE id = ?",
            (attempts, _json(errors), job_id),
        )

    def finish(self, job_id: str, status: str, record: dict) -> None:
        self._write(
            "UPDATE jobs SET status = ?, attempts = ?, errors = ?, record = ?, finished_at = ? WHERE id = ?",
            (status, record["attempts"], _json(record["errors"]), _json(record), record["finished_at"], job_id),
        )

    def delete(self, job_id: str) -> None:
        self._write("DELETE FROM jobs WHERE id = ?", (job_id,))

    def _write(self, sql: str, args: tuple) -> None:
        with self._lock:
            self._db.execute(sql, args)


def _json(value) -> str:
    return json.dumps(value, ensure_ascii=False, default=str)


def _row(r: sqlite3.Row) -> JobRow:
    return JobRow(
        seq=r["seq"],
        id=r["id"],
        status=r["status"],
        fields=json.loads(r["fields"]),
        fingerprint=r["fingerprint"],
        attempts=r["attempts"],
        errors=json.loads(r["errors"]),
        record=json.loads(r["record"]) if r["record"] else None,
        uploads=r["uploads"],
        submitted_at=r["submitted_at"],
        started_at=r["started_at"],
        finished_at=r["finished_at"],
    )
