"""What `--resume` knows (dhgen.resume): fingerprints follow content and settings, a job is done only when its last
record succeeded with the same fingerprint and its output exists, the last record across result logs wins."""

from pathlib import Path

from dhgen.manifest import Job
from dhgen.options import EncodeOptions, JobSettings, RenderOptions, RunOptions
from dhgen.results import JobRecord, ResultLog
from dhgen.resume import Fingerprints, History, already_done, input_fingerprint


def test_input_fingerprint_follows_content_and_settings(tmp_path):
    a, v = tmp_path / "a.wav", tmp_path / "v.mp4"
    a.write_bytes(b"one")
    v.write_bytes(b"face")
    job = Job("x", a, v, tmp_path / "x.mp4")
    first = input_fingerprint(job, {"crf": 20})
    assert first == input_fingerprint(Job("y", a, v, tmp_path / "y.mp4"), {"crf": 20})  # content, not names
    assert first != input_fingerprint(job, {"crf": 21})
    a.write_bytes(b"two")
    assert first != input_fingerprint(job, {"crf": 20})
    a.unlink()
    assert input_fingerprint(job, {"crf": 20}) is None


def succeeded(job_id: str, fingerprint: str | None, finished_at: str = "2026-12-01T00:00:00.000Z") -> dict:
    return {"job_id": job_id, "status": "succeeded", "input_fingerprint": fingerprint, "finished_at": finished_at}


def test_already_done_needs_success_same_fingerprint_and_the_output(tmp_path):
    out = tmp_path / "x.mp4"
    out.write_bytes(b"video")
    ok = succeeded("x", "f1")
    assert already_done(ok, out, "f1")
    assert already_done({**ok, "status": "skipped"}, out, "f1")  # a skip keeps the job done
    assert not already_done(None, out, "f1")
    assert not already_done({**ok, "status": "failed"}, out, "f1")
    assert not already_done(ok, out, "f2")  # the inputs or settings changed
    assert not already_done(ok, out, None)  # an input is unreadable now
    assert not already_done(ok, tmp_path / "deleted.mp4", "f1")


def test_fingerprints_cover_a_jobs_own_settings(tmp_path):
    a, v = tmp_path / "a.wav", tmp_path / "v.mp4"
    a.write_bytes(b"one")
    v.write_bytes(b"face")
    fingerprints = Fingerprints(RenderOptions(encode=EncodeOptions(crf=20)))
    plain = Job("x", a, v, tmp_path / "x.mp4")
    own = Job("y", a, v, tmp_path / "y.mp4", JobSettings(crf=20))  # the run's value, given by the row
    other = Job("z", a, v, tmp_path / "z.mp4", JobSettings(crf=30))
    got = fingerprints.of_all([plain, own, other])
    assert got["x"] == got["y"] != got["z"]


def test_history_of_a_run_reads_every_result_log_of_the_folder(tmp_path):
    out = tmp_path / "x.mp4"
    out.write_bytes(b"video")
    job = Job("x", Path("a.wav"), Path("v.mp4"), out)
    record = JobRecord("x", "succeeded", "a.wav", "v.mp4", str(out), input_fingerprint="f1", finished_at="2026-12-02")
    ResultLog(tmp_path / "results.shard-0-of-2.jsonl").append(record)
    history = History.of_run(RunOptions(out_dir=tmp_path))
    assert history.last("x")["input_fingerprint"] == "f1" and history.last("y") is None
    assert history.done(job, "f1") and not history.done(job, "f2")
    assert not History().done(job, "f1")
