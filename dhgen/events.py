"""The events of a run (the schema is in README "Events"), built in one place so that every executor sends the same
fields. Each builder stamps `time`; `**extra` carries what only some executors know (a Ray job's `node`, say).
Consumers ignore fields they do not know.
"""

from __future__ import annotations

import dataclasses
import signal
from collections.abc import Callable

from dhgen.results import JobRecord, utc_now

EventFn = Callable[[dict], None]
NO_MORE_INFERENCE = "no more inference"  # the `action` of the incident after which the model cannot run at all


def run_started(jobs: int, **extra) -> dict:
    return {"event": "run_started", "jobs": jobs, **extra, "time": utc_now()}


def run_finished(counts: dict, **extra) -> dict:
    return {"event": "run_finished", "time": utc_now(), **counts, **extra}


def run_stopped(signum: int, counts: dict, interrupted: list[str], not_started: list[str], **extra) -> dict:
    """The last event of a run a signal stopped: finished jobs are counted, the others named."""
    return {
        "event": "run_stopped",
        "signal": signal.Signals(signum).name,
        **counts,
        "interrupted": interrupted,
        "not_started": not_started,
        **extra,
        "time": utc_now(),
    }


def run_error(error: dict, exit_code: int, **extra) -> dict:
    """The only event of a run refused before it started (usage error, unreadable manifest, locked folder)."""
    return {"event": "run_error", "error": error, "exit_code": exit_code, **extra, "time": utc_now()}


def job_started(job_id: str, attempt: int, pid: int | None = None, **extra) -> dict:
    event = {"event": "job_started", "job_id": job_id, "attempt": attempt}
    if pid is not None:
        event["pid"] = pid
    return {**event, **extra, "time": utc_now()}


def job_progress(job_id: str, attempt: int, counters: dict, fps: float, **extra) -> dict:
    return {
        "event": "job_progress",
        "job_id": job_id,
        "attempt": attempt,
        **counters,
        "fps": round(fps, 2),
        **extra,
        "time": utc_now(),
    }


def job_finished(record: JobRecord) -> dict:
    return {"event": "job_finished", "record": dataclasses.asdict(record)}


def incident(error: dict, *, job_id: str | None = None, job_ids: list[str] | None = None, **details) -> dict:
    """Something hit one job (`job_id`), several (`job_ids`), or the model as a whole (neither)."""
    event: dict = {"event": "incident"}
    if job_id is not None:
        event["job_id"] = job_id
    if job_ids is not None:
        event["job_ids"] = job_ids
    return {**event, "error": error, **details, "time": utc_now()}


def ray_head(answering: bool, address: str, silent_s: float, **extra) -> dict:
    """The Ray head stopped answering the driver (`answering` false), or answers again after `silent_s` seconds."""
    event = {"event": "ray_head", "answering": answering, "address": address, "silent_s": round(silent_s, 1)}
    return {**event, **extra, "time": utc_now()}


def worker_started(worker: int, pid: int | None, device: str, **extra) -> dict:
    return {"event": "worker_started", "worker": worker, "pid": pid, "device": device, **extra, "time": utc_now()}


def worker_progress(worker: int, pid: int | None, served: int, **extra) -> dict:
    return {"event": "worker_progress", "worker": worker, "pid": pid, "served": served, **extra, "time": utc_now()}
