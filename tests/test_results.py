"""The result log: whole, durable lines; what `--resume` reads back; a torn last line costs only itself."""

import dataclasses
import json

from dhgen.results import JobRecord, ResultLog, last_records, utc_now

# Every field DESIGN.md promises in a result record, the per-job settings of issue 9 and the face of issue 18
# (README's field list).
DESIGN_FIELDS = {
    "model",
    "face",
    "face_coverage",
    "settings",
    "overrides",
    "meta",
    "job_id",
    "status",
    "audio",
    "avatar",
    "output",
    "attempts",
    "errors",
    "error",
    "frames",
    "fps",
    "width",
    "height",
    "duration_s",
    "elapsed_s",
    "encoder",
    "started_at",
    "finished_at",
    "input_fingerprint",
    "frames_digest",
}


def record(job_id: str, status: str = "succeeded", fingerprint: str = "f1") -> JobRecord:
    return JobRecord(
        job_id=job_id,
        status=status,
        audio="a.wav",
        avatar="v.mp4",
        output=f"{job_id}.mp4",
        input_fingerprint=fingerprint,
    )


def test_a_record_serialises_every_design_field_as_one_json_line():
    line = record("x").to_json()
    assert "\n" not in line
    assert set(json.loads(line)) == DESIGN_FIELDS


def test_non_ascii_survives_the_log(tmp_path):
    log = ResultLog(tmp_path / "sub" / "results.jsonl")  # the folder is created on first append
    rec = dataclasses.replace(record("x"), audio="dir ñ é/voix d'été.wav")
    log.append(rec)
    assert last_records(log.path)["x"]["audio"] == "dir ñ é/voix d'été.wav"


def test_last_record_of_each_job_wins(tmp_path):
    log = ResultLog(tmp_path / "results.jsonl")
    log.append(record("a", "failed"))
    log.append(record("b"))
    log.append(record("a", "succeeded", "f2"))
    got = last_records(log.path)
    assert set(got) == {"a", "b"}
    assert (got["a"]["status"], got["a"]["input_fingerprint"]) == ("succeeded", "f2")


def test_missing_log_reads_as_empty(tmp_path):
    assert last_records(tmp_path / "nope.jsonl") == {}


def test_torn_last_line_is_skipped(tmp_path):
    path = tmp_path / "results.jsonl"
    ResultLog(path).append(record("a"))
    with open(path, "a", encoding="utf-8") as f:
        f.write(record("b").to_json()[:40])  # a power cut in the middle of a write
    assert set(last_records(path)) == {"a"}


def test_append_after_a_torn_line_starts_a_new_line(tmp_path):
    """A record written after a torn line must not be glued onto it (that would lose it too)."""
    path = tmp_path / "results.jsonl"
    log = ResultLog(path)
    log.append(record("a"))
    with open(path, "a", encoding="utf-8") as f:
        f.write('{"job_id": "b", "sta')
    log.append(record("c"))
    assert set(last_records(path)) == {"a", "c"}


def test_utc_now_is_iso_utc():
    stamp = utc_now()
    assert stamp.endswith("Z") and "T" in stamp
