"""Checking reproducibility by frames_digest: logs against each other, and a log against a fresh render."""

from __future__ import annotations

import dataclasses
import json

from conftest import FIXTURES, write_clip

from dhgen.executors.inprocess import InProcessExecutor
from dhgen.manifest import Job
from dhgen.options import FaceOptions, ModelOptions, RenderOptions, RunOptions
from dhgen.results import JobRecord, ResultLog
from dhgen.runner import render
from dhgen.verify import MATCH, MISMATCH, MISSING, compare_logs, compare_records, verify_by_rerender


def _record(job_id: str, digest: str | None, status: str = "succeeded") -> JobRecord:
    return JobRecord(job_id, status, "a.wav", "v.mp4", f"{job_id}.mp4", frames_digest=digest)


def _log(path, *records: JobRecord):
    log = ResultLog(path)
    for record in records:
        log.append(record)
    return path


def test_logs_compare_job_by_job_on_their_last_records(tmp_path):
    expected = _log(
        tmp_path / "a.jsonl",
        _record("same", "d1"),
        _record("changed", "d2"),
        _record("gone", "d3"),
        _record("new", None),
    )
    actual = _log(
        tmp_path / "b.jsonl",
        _record("same", "old"),
        _record("same", "d1"),  # the last record counts
        _record("changed", "zz"),
        _record("gone", None, status="failed"),
    )
    result = compare_logs(expected, actual)
    assert {c.job_id: c.outcome for c in result.checks} == {
        "same": MATCH,
        "changed": MISMATCH,
        "gone": MISSING,
        "new": MISSING,  # a record from before digests existed: nothing to vouch for
    }
    assert not result.ok
    lines = result.lines()
    assert "changed: mismatch (expected d2, got zz)" in lines
    assert lines[-1] == "frames_digest: 1 match, 1 mismatch, 2 missing"


def test_skipped_records_carry_their_digest():
    result = compare_records(
        {"a": {"status": "succeeded", "frames_digest": "d"}}, {"a": {"status": "skipped", "frames_digest": "d"}}
    )
    assert result.ok and result.of(MATCH)[0].actual == "d"


def test_a_log_checks_out_against_a_fresh_render_and_a_changed_one_does_not(tmp_path):
    options = RenderOptions(face=FaceOptions(cache_dir=tmp_path / "cache"), model=ModelOptions(device="cpu"))
    out = tmp_path / "out"
    jobs = [
        Job(n, write_clip(tmp_path / f"{n}.wav", 0.4, start=s), FIXTURES / "portrait.png", out / f"{n}.mp4")
        for n, s in (("a", 0.0), ("b", 1.0))
    ]
    render(jobs, options, RunOptions(out_dir=out), executor=InProcessExecutor(options))
    log = out / "results.jsonl"

    result = verify_by_rerender(log, jobs, options, executor=InProcessExecutor(options))
    assert result.ok and [c.job_id for c in result.of(MATCH)] == ["a", "b"]
    assert sorted(p.name for p in out.iterdir()) == [".dhgen.lock", "a.mp4", "b.mp4", "results.jsonl"]  # untouched

    lines = log.read_text().splitlines()
    last = json.loads(lines[-1])
    log.write_text("\n".join([*lines, json.dumps({**last, "frames_digest": "f" * 64})]) + "\n")
    unknown = dataclasses.replace(jobs[0], id="never-rendered")
    result = verify_by_rerender(log, [*jobs, unknown], options, executor=InProcessExecutor(options))
    assert {c.job_id: c.outcome for c in result.checks} == {
        "a": MATCH,
        last["job_id"]: MISMATCH,
        "never-rendered": MISSING,
    }
