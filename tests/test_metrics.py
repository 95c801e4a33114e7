"""The Prometheus textfile: parses as exposition text, counts what happened, is replaced atomically."""

from __future__ import annotations

import re
import threading
from itertools import pairwise
from pathlib import Path

from dhgen.metrics import MetricsFile

HELP = re.compile(r"^# HELP ([a-zA-Z_:][a-zA-Z0-9_:]*) \S.*$")
TYPE = re.compile(r"^# TYPE ([a-zA-Z_:][a-zA-Z0-9_:]*) (counter|gauge|histogram|summary|untyped)$")
SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(?:[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\.)*",?)*\})? (\S+)$')
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\.)*)"')


def parse_prometheus(text: str) -> dict[tuple[str, frozenset], float]:
    """A strict little parser of the text exposition format: {(name, labels): value}; raises on anything else."""
    assert text.endswith("\n"), "the file ends with a newline"
    typed, samples = set(), {}
    for line in text.splitlines():
        if m := TYPE.match(line):
            assert m.group(1) not in typed, f"TYPE twice for {m.group(1)}"
            typed.add(m.group(1))
        elif HELP.match(line):
            continue
        else:
            m = SAMPLE.match(line)
            assert m, f"not a sample line: {line!r}"
            name, labels, value = m.group(1), frozenset(LABEL.findall(m.group(2) or "")), float(m.group(3))
            assert name in typed, f"{name} has no TYPE line before it"
            assert (name, labels) not in samples, f"duplicate series {line!r}"
            samples[(name, labels)] = value
    return samples


def value(samples: dict, name: str, **labels) -> float:
    return samples[(name, frozenset({"out_dir": "/srv/renders", **labels}.items()))]


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def record(job_id: str, status: str, frames: int | None = None, error: dict | None = None) -> dict:
    return {"job_id": job_id, "status": status, "frames": frames, "error": error}


def crashed(kind: str, **fields) -> dict:
    return {"event": "incident", "error": {"type": kind, "message": "m", "retryable": True, "hint": "h"}, **fields}


def test_a_run_is_counted(tmp_path):
    path, clock = tmp_path / "dhgen.prom", FakeClock()
    metrics = MetricsFile(path, labels={"out_dir": "/srv/renders"}, clock=clock)
    with metrics:
        metrics({"event": "run_started", "jobs": 4})
        first = parse_prometheus(path.read_text())
        metrics({"event": "job_started", "job_id": "a", "attempt": 1})
        metrics({"event": "job_started", "job_id": "b", "attempt": 1})
        metrics(crashed("WorkerCrashed", job_ids=["a", "b"], worker=0, action="worker replaced"))
        metrics(crashed("WorkerCrashed", job_id="a", action="2 batch(es) replayed"))  # Ray: a job's note of it
        metrics(crashed("Stalled", job_id="b", action="retrying in 1.0s (attempt 2)"))
        metrics({"event": "job_started", "job_id": "b", "attempt": 2})
        middle = parse_prometheus(path.read_text())
        metrics({"event": "job_finished", "record": record("a", "succeeded", frames=111)})
        stalled = {"type": "Stalled", "message": "m", "hint": "h"}
        metrics({"event": "job_finished", "record": record("b", "failed", error=stalled)})
        metrics({"event": "job_finished", "record": record("c", "skipped", frames=50)})
        metrics({"event": "job_finished", "record": record("d", "succeeded", frames=89)})
        clock.now += 125.5
        metrics({"event": "run_finished", "succeeded": 2, "failed": 1, "skipped": 1})
    last = parse_prometheus(path.read_text())

    assert value(first, "dhgen_run_in_progress") == 1 and value(first, "dhgen_jobs", status="pending") == 4
    assert value(first, "dhgen_run_start_timestamp_seconds") == clock.now - 125.5
    assert value(middle, "dhgen_jobs", status="running") == 2 and value(middle, "dhgen_jobs", status="pending") == 2
    assert value(last, "dhgen_run_in_progress") == 0 and value(last, "dhgen_run_success") == 0
    assert value(last, "dhgen_run_end_timestamp_seconds") == clock.now
    assert value(last, "dhgen_run_duration_seconds") == 125.5
    statuses = {
        s: value(last, "dhgen_jobs", status=s) for s in ("succeeded", "failed", "skipped", "running", "pending")
    }
    assert statuses == {"succeeded": 2, "failed": 1, "skipped": 1, "running": 0, "pending": 0}
    assert value(last, "dhgen_frames_rendered_total") == 200  # outputs written by this run, not skipped ones
    assert value(last, "dhgen_retries_total") == 1
    assert value(last, "dhgen_worker_crashes_total") == 1  # one death, whatever the jobs it hit say
    assert value(last, "dhgen_incidents_total", type="WorkerCrashed") == 2
    assert value(last, "dhgen_stalls_total") == 2  # the retried stall and the final one
    assert value(last, "dhgen_incidents_total", type="Stalled") == 2
    assert value(last, "dhgen_last_success_timestamp_seconds") == 0  # never succeeded yet


def test_last_success_survives_a_failed_run(tmp_path):
    path, clock = tmp_path / "dhgen.prom", FakeClock()
    good = MetricsFile(path, labels={"out_dir": "/srv/renders"}, clock=clock)
    good({"event": "run_started", "jobs": 1})
    good({"event": "job_finished", "record": record("a", "succeeded", frames=10)})
    good({"event": "run_finished", "succeeded": 1, "failed": 0, "skipped": 0})
    success_at = clock.now
    clock.now += 86400
    bad = MetricsFile(path, labels={"out_dir": "/srv/renders"}, clock=clock)
    bad({"event": "run_started", "jobs": 1})
    bad({"event": "job_finished", "record": record("a", "failed", error={"type": "NoFaceError"})})
    bad({"event": "run_finished", "succeeded": 0, "failed": 1, "skipped": 0})
    samples = parse_prometheus(path.read_text())
    assert value(samples, "dhgen_run_success") == 0
    assert value(samples, "dhgen_last_success_timestamp_seconds") == success_at


def test_a_stopped_run_is_marked_ended(tmp_path):
    path, clock = tmp_path / "dhgen.prom", FakeClock()
    try:
        with MetricsFile(path, labels={"out_dir": "/srv/renders"}, clock=clock) as metrics:
            metrics({"event": "run_started", "jobs": 2})
            clock.now += 5
            raise KeyboardInterrupt
    except KeyboardInterrupt:
        pass
    samples = parse_prometheus(path.read_text())
    assert value(samples, "dhgen_run_in_progress") == 0 and value(samples, "dhgen_run_success") == 0
    assert value(samples, "dhgen_run_end_timestamp_seconds") == clock.now


def test_label_values_are_escaped(tmp_path):
    path = tmp_path / "dhgen.prom"
    metrics = MetricsFile(path, labels={"out_dir": 'C:\\renders "nightly"\nx'})
    metrics({"event": "run_started", "jobs": 1})
    samples = parse_prometheus(path.read_text())
    assert ("dhgen_run_in_progress", frozenset({("out_dir", 'C:\\\\renders \\"nightly\\"\\nx')})) in samples


def test_the_file_is_replaced_atomically(tmp_path):
    path = tmp_path / "textfile" / "dhgen.prom"
    metrics = MetricsFile(path, labels={"out_dir": "/srv/renders"})
    metrics({"event": "run_started", "jobs": 300})
    inodes, seen, stop = [path.stat().st_ino], [], threading.Event()

    def reader():
        while not stop.is_set():
            seen.append(path.read_text())

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for n in range(100):
            metrics({"event": "job_started", "job_id": f"j{n}", "attempt": 1})
            inodes.append(path.stat().st_ino)
    finally:
        stop.set()
        thread.join()
    assert all(a != b for a, b in pairwise(inodes)), "each write is a new file renamed over the old one"
    assert seen and all(parse_prometheus(text) for text in seen)  # every read saw a whole file
    assert all("\ndhgen_stalls_total{" in text for text in seen)  # the last series: never a truncated file
    assert sorted(p.name for p in path.parent.iterdir()) == ["dhgen.prom"]  # no temp files left behind
    assert value(parse_prometheus(path.read_text()), "dhgen_jobs", status="running") == 100


def test_an_unwritable_metrics_file_does_not_stop_the_run(tmp_path, caplog):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    metrics = MetricsFile(blocker / "dhgen.prom")
    metrics({"event": "run_started", "jobs": 1})  # no exception
    assert "cannot write the metrics file" in caplog.text and str(blocker) in caplog.text
    assert Path(blocker).read_text() == ""


def test_each_shard_keeps_its_own_metrics_file_with_a_shard_label(tmp_path):
    """Array tasks on one machine would overwrite one file: each shard's file has the shard in name and labels."""
    from dhgen.cli import _event_handlers
    from dhgen.events import job_finished, run_finished, run_started
    from dhgen.options import RunOptions
    from dhgen.progress import NullProgress
    from dhgen.results import JobRecord
    from dhgen.shards import Shard

    given = tmp_path / "dhgen_nightly.prom"
    for k in range(2):
        run = RunOptions(out_dir=Path("/srv/renders"), shard=Shard(k, 2))
        with _event_handlers(NullProgress(), run, given, None) as on_event:
            on_event(run_started(1))
            on_event(job_finished(JobRecord(f"j{k}", "succeeded", "a.wav", "v.mp4", "o.mp4", frames=10 + k)))
            on_event(run_finished({"succeeded": 1, "failed": 0, "skipped": 0}))
    assert not given.exists()
    for k in range(2):
        samples = parse_prometheus((tmp_path / f"dhgen_nightly.shard-{k}-of-2.prom").read_text())
        assert value(samples, "dhgen_frames_rendered_total", shard=f"{k}/2") == 10 + k
        assert value(samples, "dhgen_run_success", shard=f"{k}/2") == 1
