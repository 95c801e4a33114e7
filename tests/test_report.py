"""`dhgen report`: every result log of a folder, the last record per job, exit codes, and a failed manifest that
renders the rest of the batch."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from conftest import FIXTURES, write_clip
from rich.console import Console
from typer.testing import CliRunner

from dhgen.cli import app
from dhgen.errors import NoFaceError
from dhgen.executors.inprocess import InProcessExecutor
from dhgen.manifest import read_manifest
from dhgen.options import FaceOptions, ModelOptions, RenderOptions, RunOptions
from dhgen.report import build_report, jobs_to_render_again, report_lines, report_renderables
from dhgen.results import JobRecord, ResultLog
from dhgen.runner import render
from dhgen.shards import Shard, shard_of


def record(job_id: str, status: str = "succeeded", finished: str = "2026-12-01T10:00:05.000Z", **fields) -> JobRecord:
    base = dict(audio=f"/in/{job_id}.wav", avatar="/in/v.mp4", output=f"/out/{job_id}.mp4", attempts=1)
    base.update(started_at="2026-12-01T10:00:00.000Z", finished_at=finished, frames=100, elapsed_s=4.0)
    if status == "failed":
        error = NoFaceError("no face in any frame", path="/in/v.mp4").to_record()
        base.update(error=error, errors=[error], frames=None)
    return JobRecord(job_id=job_id, status=status, **{**base, **fields})


def write_log(path: Path, *records: JobRecord) -> None:
    for r in records:
        ResultLog(path).append(r)


def report_cli(*args) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, ["report", *map(str, args)])
    return result.exit_code, result.stdout, result.stderr


def manifest_of(path: Path, ids: list[str]) -> Path:
    path.write_text("id,audio,avatar\n" + "".join(f"{i},in/{i}.wav,in/v.mp4\n" for i in ids))
    return path


def test_all_done_across_shard_logs_exits_0(tmp_path):
    write_log(tmp_path / "results.shard-0-of-2.jsonl", record("a"), record("b", "skipped", elapsed_s=0.0))
    write_log(tmp_path / "results.shard-1-of-2.jsonl", record("c", elapsed_s=9.5, frames=200))
    code, out, _ = report_cli(tmp_path, "--json")
    assert code == 0
    summary = json.loads(out)
    assert summary["counts"] == {"succeeded": 2, "skipped": 1, "failed": 0, "missing": 0}
    assert summary["ok"] is True and summary["frames"] == 400 and summary["render_seconds"] == 13.5
    assert [s["job_id"] for s in summary["slowest"]] == ["c", "a"]  # a skipped job did not render
    assert summary["slowest"][0]["fps"] == round(200 / 9.5, 2)


def test_the_last_record_of_a_job_wins_across_logs(tmp_path):
    write_log(tmp_path / "results.shard-0-of-2.jsonl", record("a", "failed", finished="2026-12-01T10:00:05.000Z"))
    write_log(tmp_path / "results.jsonl", record("a", finished="2026-12-01T11:00:00.000Z"))  # a later rerun
    assert build_report(tmp_path).counts["succeeded"] == 1 and build_report(tmp_path).exit_code == 0
    write_log(tmp_path / "results.shard-1-of-2.jsonl", record("a", "failed", finished="2026-12-01T12:00:00.000Z"))
    assert build_report(tmp_path).exit_code == 1  # and a still later failure counts again


def test_failed_jobs_exit_1_with_type_message_and_hint(tmp_path):
    write_log(tmp_path / "results.jsonl", record("good"), record("bad", "failed", attempts=3))
    code, out, _ = report_cli(tmp_path)  # not a terminal: plain text
    assert code == 1
    assert "failed          1" in out and "succeeded       1" in out
    assert "bad  NoFaceError (3 attempt(s)): /in/v.mp4: no face in any frame" in out
    assert "hint: use an avatar with a clearly visible, frontal face" in out
    assert "verdict: 1 failed, 0 missing of 2" in out
    summary = json.loads(report_cli(tmp_path, "--json")[1])
    [failed] = summary["failed"]
    assert failed["job_id"] == "bad" and failed["attempts"] == 3 and failed["error"]["type"] == "NoFaceError"
    assert failed["error"]["hint"] and failed["error"]["message"]


def test_missing_jobs_of_the_manifest_exit_1_and_name_their_shard(tmp_path):
    ids = [f"job{i}" for i in range(12)]
    out = tmp_path / "out"
    for k in (0, 1, 3):  # shard 2 of 4 never ran
        write_log(out / f"results.shard-{k}-of-4.jsonl", *(record(i) for i in ids if shard_of(i, 4) == k))
    lost = [i for i in ids if shard_of(i, 4) == 2]
    assert lost
    write_log(out / "results.shard-0-of-4.jsonl", record("not-in-the-manifest"))
    manifest = manifest_of(tmp_path / "jobs.csv", ids)
    code, text, _ = report_cli(out, "--manifest", manifest)
    assert code == 1
    assert f"missing jobs (no record; in shard 2/4): {', '.join(lost)}" in text
    assert "1 recorded job(s) not in the manifest left out" in text
    summary = json.loads(report_cli(out, "--manifest", manifest, "--json")[1])
    assert summary["missing"] == lost and summary["missing_shards"] == ["2/4"]
    assert summary["counts"]["missing"] == len(lost) and summary["jobs"] == 12 and summary["ignored_records"] == 1
    assert report_cli(out, "--json")[0] == 0  # without the manifest, nothing says shard 2 should exist


def test_a_terminal_gets_rich_tables(tmp_path):
    write_log(tmp_path / "results.jsonl", record("good"), record("bad", "failed"))
    console = Console(file=io.StringIO(), force_terminal=True, width=140)
    console.print(*report_renderables(build_report(tmp_path)))
    text = console.file.getvalue()
    assert "\x1b[" in text  # styled
    for words in ("failed jobs", "NoFaceError", "frontal face", "slowest jobs", "verdict: 1 failed"):
        assert words in text
    plain = "\n".join(report_lines(build_report(tmp_path)))
    assert "\x1b[" not in plain and "NoFaceError" in plain


@pytest.mark.parametrize("make", ["nothing", "file", "empty folder"])
def test_a_folder_that_is_not_a_batch_is_a_usage_error(tmp_path, make):
    target = tmp_path / "renders"
    if make == "file":
        target.write_text("x")
    elif make == "empty folder":
        target.mkdir()
    code, _, err = report_cli(target)
    assert code == 2 and str(target) in err and "hint:" in err


def test_a_bad_manifest_for_the_report_exits_2(tmp_path):
    write_log(tmp_path / "results.jsonl", record("a"))
    (tmp_path / "m.csv").write_text("id,audio,avtar\na,a.wav,v.mp4\n")
    code, _, err = report_cli(tmp_path, "--manifest", tmp_path / "m.csv")
    assert code == 2 and f"{tmp_path / 'm.csv'}:1:" in err


# --- the failed manifest -------------------------------------------------------------------------------------------


@pytest.fixture
def options(tmp_path) -> RenderOptions:
    return RenderOptions(face=FaceOptions(cache_dir=tmp_path / "cache"), model=ModelOptions(device="cpu"))


def render_shard(manifest: Path, out: Path, options: RenderOptions, shard: Shard | None):
    run = RunOptions(out_dir=out, resume=True, shard=shard)
    return render(read_manifest(manifest, out), options, run, executor=InProcessExecutor(options))


def test_a_shard_without_jobs_leaves_its_log_and_the_report_says_it_ran(tmp_path, options):
    audio = write_clip(tmp_path / "in" / "a.wav", 0.4)
    ids = [next(i for i in (f"clip{n}" for n in range(40)) if shard_of(i, 4) == 1)]  # shards 0, 2, 3: no job
    manifest = tmp_path / "in" / "jobs.csv"
    manifest.write_text("id,audio,avatar\n" + "".join(f"{i},{audio},{FIXTURES / 'portrait.png'}\n" for i in ids))
    out = tmp_path / "out"
    for k in (0, 1, 2):  # shard 3/4 never runs
        assert render_shard(manifest, out, options, Shard(k, 4)).exit_code == 0
    assert (out / "results.shard-0-of-4.jsonl").read_text() == ""  # it ran, with nothing to do
    code, text, _ = report_cli(out, "--manifest", manifest)
    assert code == 0 and "shards ran: 0/4 (0 jobs), 1/4 (1 job), 2/4 (0 jobs)" in text, text
    assert json.loads(report_cli(out, "--json")[1])["shards"] == {"0/4": 0, "1/4": 1, "2/4": 0}


def test_the_failed_manifest_renders_again_and_completes_the_batch(tmp_path, options):
    batch = tmp_path / "batch"
    write_clip(batch / "audio" / "ok.wav", 0.4)
    (batch / "faces").mkdir()
    (batch / "faces" / "p.png").symlink_to(FIXTURES / "portrait.png")
    candidates = [f"clip{i}" for i in range(20)]
    ids = [i for i in candidates if shard_of(i, 2) == 0][:2] + [i for i in candidates if shard_of(i, 2) == 1][:2]
    in_zero = ids[:2]
    broken = in_zero[0]  # its audio is not there yet: it fails
    rows = [f"{i},audio/{'late' if i == broken else 'ok'}.wav,faces/p.png,{20 + n},cust-{n}" for n, i in enumerate(ids)]
    manifest = batch / "jobs.csv"
    manifest.write_text("id,audio,avatar,crf,x_customer\n" + "\n".join(rows) + "\n")
    out = tmp_path / "out"
    assert render_shard(manifest, out, options, Shard(0, 2)).exit_code == 1  # shard 1 never runs

    failed_manifest = tmp_path / "retry" / "failed.csv"
    code, _, err = report_cli(out, "--manifest", manifest, "--failed-manifest", failed_manifest)
    assert code == 1 and str(failed_manifest) in err
    again = read_manifest(failed_manifest, out)
    assert sorted(j.id for j in again) == sorted([broken, *(i for i in ids if shard_of(i, 2) == 1)])
    originals = {j.id: j for j in read_manifest(manifest, out)}
    for job in again:  # the same job: its id, inputs, output, own settings and x_ columns
        original = originals[job.id]
        assert (job.audio.resolve(), job.avatar.resolve(), job.output) == (
            original.audio.resolve(),
            original.avatar.resolve(),
            original.output,
        )
        assert (job.settings, job.meta) == (original.settings, original.meta)

    write_clip(batch / "audio" / "late.wav", 0.4)  # the user fixes the input
    assert render_shard(failed_manifest, out, options, None).exit_code == 0
    code, text, _ = report_cli(out, "--manifest", manifest)
    assert code == 0, text
    assert "all 4 job(s) done" in text
    assert report_cli(out, "--manifest", manifest, "--failed-manifest", tmp_path / "none.csv")[0] == 0
    assert not (tmp_path / "none.csv").exists()  # nothing to render again: nothing written
    code, _, err = report_cli(out, "--manifest", manifest, "--failed-manifest", failed_manifest)
    assert code == 0 and not failed_manifest.exists()  # the earlier night's list is gone: nothing left to redo
    assert f"nothing to render again; removed the earlier {failed_manifest}" in err


def test_a_stale_failed_manifest_is_removed_and_json_says_so(tmp_path):
    write_log(tmp_path / "results.jsonl", record("a"))
    stale = tmp_path / "failed.csv"
    stale.write_text("id,audio,avatar\nold,/in/old.wav,/in/v.mp4\n")
    code, out, _ = report_cli(tmp_path, "--failed-manifest", stale, "--json")
    assert code == 0 and not stale.exists()
    assert json.loads(out)["failed_manifest"] == {"path": str(stale), "jobs": 0, "written": False, "removed": True}
    code, out, _ = report_cli(tmp_path, "--failed-manifest", stale, "--json")
    assert json.loads(out)["failed_manifest"]["removed"] is False  # nothing was there to remove


def test_a_stale_failed_manifest_that_cannot_be_removed_is_an_output_error(tmp_path):
    write_log(tmp_path / "results.jsonl", record("a"))
    (tmp_path / "failed.csv").mkdir()  # a folder where the file should be
    code, _, err = report_cli(tmp_path, "--failed-manifest", tmp_path / "failed.csv")
    assert code == 1 and "cannot be removed" in err and str(tmp_path / "failed.csv") in err and "hint:" in err
    assert (tmp_path / "failed.csv").is_dir()


def test_without_a_manifest_the_failed_jobs_come_from_their_records(tmp_path):
    overrides = {"crf": 30, "pads": [0, 5, 0, 5]}
    write_log(
        tmp_path / "results.jsonl",
        record("ok"),
        record(
            "bad", "failed", output=str(tmp_path.resolve() / "sub" / "bad.mp4"), overrides=overrides, meta={"x_c": "7"}
        ),
    )
    [job] = jobs_to_render_again(build_report(tmp_path))
    assert (job.id, job.audio, job.output) == ("bad", Path("/in/bad.wav"), tmp_path.resolve() / "sub" / "bad.mp4")
    assert job.settings.crf == 30 and job.settings.pads == (0, 5, 0, 5) and dict(job.meta) == {"x_c": "7"}
    code, _, _ = report_cli(tmp_path, "--failed-manifest", tmp_path / "again.jsonl")
    assert code == 1
    [row] = map(json.loads, (tmp_path / "again.jsonl").read_text().splitlines())
    assert row == {
        "id": "bad",
        "audio": "/in/bad.wav",
        "avatar": "/in/v.mp4",
        "output": "sub/bad.mp4",
        **overrides,
        "x_c": "7",
    }


def test_a_failed_manifest_that_cannot_be_written_is_an_output_error(tmp_path):
    write_log(tmp_path / "results.jsonl", record("bad", "failed"))
    (tmp_path / "blocker").write_text("a file where a folder should be")
    code, _, err = report_cli(tmp_path, "--failed-manifest", tmp_path / "blocker" / "failed.csv")
    assert code == 1 and "blocker" in err and "hint:" in err
    assert (tmp_path / "blocker").read_text() == "a file where a folder should be"


def test_verify_compares_frames_digests_with_another_batch(tmp_path, options):
    """Two real renders of the same jobs (in-process here, under the supervisor there) make the same frames; a
    batch whose log says otherwise fails the check, naming the job."""
    write_clip(tmp_path / "in" / "a.wav", 0.4)
    write_clip(tmp_path / "in" / "b.wav", 0.4, start=1.0)
    (tmp_path / "in" / "p.png").symlink_to(FIXTURES / "portrait.png")
    manifest = tmp_path / "in" / "jobs.csv"
    manifest.write_text("id,audio,avatar\na,a.wav,p.png\nb,b.wav,p.png\n")
    first, second = tmp_path / "first", tmp_path / "second"
    render(read_manifest(manifest, first), options, RunOptions(out_dir=first), executor=InProcessExecutor(options))
    render(read_manifest(manifest, second), options, RunOptions(out_dir=second, jobs=2))

    code, out, _ = report_cli(second, "--verify", first)
    assert code == 0, out
    assert "frames_digest: 2 match, 0 mismatch, 0 missing" in out and "frames as verified" in out

    log = first / "results.jsonl"
    records = [json.loads(line) for line in log.read_text().splitlines()]
    records[1]["frames_digest"] = "0" * 64  # as if another build had made other frames for b
    log.write_text("".join(json.dumps(r) + "\n" for r in records))
    code, out, _ = report_cli(second, "--verify", log, "--json")
    verify = json.loads(out)["verify"]
    assert code == 1 and not verify["ok"] and (verify["match"], verify["mismatch"]) == (1, 1)
    assert [(c["job_id"], c["outcome"], c["expected"]) for c in verify["unmatched"]] == [("b", "mismatch", "0" * 64)]


def test_verify_against_a_folder_without_a_log_exits_2(tmp_path):
    write_log(tmp_path / "out" / "results.jsonl", record("a"))
    (tmp_path / "empty").mkdir()
    code, _, err = report_cli(tmp_path / "out", "--verify", tmp_path / "empty")
    assert code == 2 and "--verify" in err and "no result log" in err and "hint:" in err
