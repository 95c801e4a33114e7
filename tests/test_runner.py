"""A run: result log records, `--resume`, the lock on the output folder, output errors, events.

Jobs run with `InProcessExecutor` on short clips (the supervised executor has its own tests, and test_cli.py runs
one manifest through it).
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
from datetime import datetime
from pathlib import Path

import av
import pytest
from conftest import FIXTURES, write_clip
from test_results import DESIGN_FIELDS

from dhgen.encoders import probe
from dhgen.errors import Interrupted, OutputError, RunLocked, UsageError
from dhgen.executors.inprocess import InProcessExecutor
from dhgen.manifest import Job, read_manifest
from dhgen.options import EncodeOptions, FaceOptions, JobSettings, ModelOptions, RenderOptions, RunOptions, job_options
from dhgen.results import last_records
from dhgen.resume import render_settings
from dhgen.retry import RetryPolicy
from dhgen.runner import RunLock, render
from dhgen.shards import Shard


@pytest.fixture
def options(tmp_path) -> RenderOptions:
    return RenderOptions(face=FaceOptions(cache_dir=tmp_path / "cache"), model=ModelOptions(device="cpu"))


def run_jobs(jobs, options, out: Path, events: list | None = None, **run_fields):
    run = RunOptions(out_dir=out, **run_fields)
    on_event = events.append if events is not None else None
    return render(jobs, options, run, on_event=on_event, executor=InProcessExecutor(options))


def log_lines(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "results.jsonl").read_text(encoding="utf-8").splitlines()]


def test_records_carry_every_field_and_events_frame_the_run(tmp_path, options):
    audio = write_clip(tmp_path / "in" / "a.wav", 0.6)
    out = tmp_path / "out"
    events: list[dict] = []
    summary = run_jobs([Job("a", audio, FIXTURES / "portrait.png", out / "a.mp4")], options, out, events)
    assert summary.exit_code == 0
    [line] = log_lines(out)
    assert set(line) == DESIGN_FIELDS
    assert line["status"] == "succeeded" and line["attempts"] == 1
    assert (line["errors"], line["error"]) == ([], None)
    assert (line["frames"], line["fps"], line["width"], line["height"]) == (15, 25.0, 288, 288)
    assert line["duration_s"] == pytest.approx(0.6)
    encoder = line["encoder"]
    assert (encoder["codec"], encoder["preset"], encoder["crf"]) == ("h264", "veryfast", 20)
    if encoder["name"] == "libx264":  # auto, on a machine without NVENC: says why not
        assert encoder["settings"] == {"preset": "veryfast", "crf": "20"}
        assert encoder["reason"].startswith("auto: h264_nvenc does not open here (") and encoder["reason"][-1] == ")"
    else:
        assert (encoder["name"], encoder["reason"]) == ("h264_nvenc", "auto: h264_nvenc opens here")
    assert len(line["frames_digest"]) == 64 and int(line["frames_digest"], 16) >= 0
    assert line["output"] == str(out / "a.mp4") and line["audio"] == str(audio)
    started, finished = (datetime.fromisoformat(line[k].replace("Z", "+00:00")) for k in ("started_at", "finished_at"))
    assert started <= finished and line["elapsed_s"] >= 0
    assert isinstance(line["input_fingerprint"], str) and line["input_fingerprint"]
    assert line["model"] == {
        "name": "mouthwarp",
        "family": "dhgen.models.mouthwarp:family",
        "source": "built-in",
        "backend": "numpy",
        "checkpoint_sha256": None,
        "device": "cpu",
        "dtype": "float32",
    }
    assert line["face"]["choice"] == "auto" and line["face"]["frame"] == 0 and line["face_coverage"] == 1.0
    assert line["face"]["faces_found"] == [line["face"]["box_at_first_frame"]]  # the astronaut, alone
    assert [e["event"] for e in events] == ["run_started", "job_started", "job_finished", "run_finished"]
    assert events[-1]["succeeded"] == 1 and events[-1]["failed"] == 0
    assert events[2]["record"] == line


def test_resume_skips_done_jobs_and_reruns_changed_or_deleted_ones(tmp_path, options):
    audio_a = write_clip(tmp_path / "in" / "a.wav", 0.4)
    audio_b = write_clip(tmp_path / "in" / "b.wav", 0.4, start=1.0)
    out = tmp_path / "out"
    jobs = [Job(n, p, FIXTURES / "portrait.png", out / f"{n}.mp4") for n, p in (("a", audio_a), ("b", audio_b))]

    def statuses(**run_fields) -> dict[str, str]:
        summary = run_jobs(jobs, options, out, resume=True, **run_fields)
        assert summary.exit_code == 0
        return {r.job_id: r.status for r in summary.records}

    assert statuses() == {"a": "succeeded", "b": "succeeded"}  # nothing to resume from yet
    mtime = (out / "a.mp4").stat().st_mtime_ns
    assert statuses() == {"a": "skipped", "b": "skipped"}
    assert (out / "a.mp4").stat().st_mtime_ns == mtime  # not rewritten
    skipped = log_lines(out)[-1]
    assert skipped["attempts"] == 0 and skipped["frames"] == 10 and skipped["input_fingerprint"]

    with open(out / "results.jsonl", "a", encoding="utf-8") as f:
        f.write('{"job_id": "a", "status": "fail')  # a torn last line: ignored
    assert statuses() == {"a": "skipped", "b": "skipped"}

    write_clip(audio_a, 0.4, start=2.0)  # new audio content under the same name
    (out / "b.mp4").unlink()
    assert statuses() == {"a": "succeeded", "b": "succeeded"}
    assert statuses() == {"a": "skipped", "b": "skipped"}  # the reruns' records were read back

    changed = dataclasses.replace(options, encode=EncodeOptions(crf=30))  # a setting that shapes the output
    summary = run_jobs(jobs, changed, out, resume=True)
    assert {r.status for r in summary.records} == {"succeeded"}
    summary = run_jobs(jobs, options, out)  # no --resume: everything runs
    assert {r.status for r in summary.records} == {"succeeded"}


def test_device_and_batch_size_do_not_change_the_fingerprint(options):
    moved = dataclasses.replace(options, model=ModelOptions(device="cuda", batch_size=128))
    assert render_settings(moved) == render_settings(options)
    assert render_settings(dataclasses.replace(options, encode=EncodeOptions(crf=30))) != render_settings(options)


def test_output_folder_under_a_file_is_refused_before_the_lock(tmp_path, options):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    out = blocker / "renders"  # tests run as root: a path under a regular file is what cannot be created
    audio = write_clip(tmp_path / "a.wav", 0.4)
    with pytest.raises(UsageError) as info:
        run_jobs([Job("a", audio, FIXTURES / "portrait.png", out / "a.mp4")], options, out)
    assert f"{blocker} is a file, not a folder" in info.value.message and info.value.hint
    assert not out.exists() and blocker.read_text() == "not a folder"
    with pytest.raises(OutputError) as info, RunLock(out):  # the lock itself still says what went wrong
        pass
    assert str(blocker) in info.value.message


def test_job_writing_into_an_uncreatable_subfolder_fails_alone(tmp_path, options):
    write_clip(tmp_path / "in" / "a.wav", 0.4)
    out = tmp_path / "out"
    out.mkdir()
    (out / "blocker").write_text("a file where a folder should be")
    manifest = tmp_path / "in" / "m.csv"
    manifest.write_text("id,audio,avatar,output\nbad,a.wav,p.png,blocker/x.mp4\nsub,a.wav,p.png,new/deep/y.mp4\n")
    os.symlink(FIXTURES / "portrait.png", tmp_path / "in" / "p.png")
    summary = run_jobs(read_manifest(manifest, out), options, out)
    bad, sub = summary.records
    assert summary.exit_code == 1
    assert bad.status == "failed" and bad.error["type"] == "OutputError"
    assert "blocker" in bad.error["message"] and bad.error["hint"] and bad.error["retryable"] is False
    assert sub.status == "succeeded" and (out / "new" / "deep" / "y.mp4").is_file()  # subfolders are made
    assert sorted(p.name for p in out.iterdir()) == [".dhgen.lock", "blocker", "new", "results.jsonl"]  # no temp


def test_failed_job_record_is_typed_and_the_run_goes_on(tmp_path, options):
    audio = write_clip(tmp_path / "a.wav", 0.4)
    out = tmp_path / "out"
    jobs = [
        Job("gone", tmp_path / "missing.wav", FIXTURES / "portrait.png", out / "gone.mp4"),
        Job("ok", audio, FIXTURES / "portrait.png", out / "ok.mp4"),
    ]
    summary = run_jobs(jobs, options, out)
    gone, ok = summary.records
    assert summary.exit_code == 1 and [r.job_id for r in summary.failed] == ["gone"]
    assert gone.error["type"] == "MissingInputError" and "missing.wav" in gone.error["message"]
    assert gone.errors == [gone.error] and gone.input_fingerprint is None
    assert ok.status == "succeeded"
    assert last_records(out / "results.jsonl")["gone"]["error"]["type"] == "MissingInputError"
    assert not (out / "gone.mp4").exists()


def test_run_lock_is_exclusive_and_names_the_holder(tmp_path, options):
    out = tmp_path / "out"
    with RunLock(out):
        with pytest.raises(RunLocked, match=f"pid {os.getpid()}"), RunLock(out):
            pass
        with pytest.raises(RunLocked):
            run_jobs([], options, out)
    with RunLock(out):  # released on exit
        pass
    assert run_jobs([], options, out).exit_code == 0


def test_new_weights_under_the_same_checkpoint_name_change_the_fingerprint(tmp_path):
    checkpoint = tmp_path / "w.pth"
    checkpoint.write_bytes(b"old weights")
    options = RenderOptions(model=ModelOptions(name="wav2lip", checkpoint=checkpoint))
    before = render_settings(options)
    checkpoint.write_bytes(b"new weights")
    assert render_settings(options) != before


class StoppedExecutor:
    """Finishes the first job, starts the second, then a signal arrives (as the supervisor raises it)."""

    def run(self, jobs, fingerprints, emit):
        from dhgen.results import JobRecord

        emit({"event": "job_started", "job_id": jobs[0].id, "attempt": 1})
        yield JobRecord(jobs[0].id, "succeeded", str(jobs[0].audio), str(jobs[0].avatar), str(jobs[0].output))
        emit({"event": "job_started", "job_id": jobs[1].id, "attempt": 1})
        raise Interrupted(signal.SIGTERM)


def test_a_stopped_run_names_its_interrupted_and_unstarted_jobs(tmp_path, options):
    out = tmp_path / "out"
    jobs = [Job(n, FIXTURES / "silence.wav", FIXTURES / "portrait.png", out / f"{n}.mp4") for n in ("a", "b", "c")]
    seen: list[dict] = []
    with pytest.raises(Interrupted):
        render(jobs, options, RunOptions(out_dir=out), on_event=seen.append, executor=StoppedExecutor())
    last = seen[-1]
    assert last["event"] == "run_stopped" and last["signal"] == "SIGTERM"
    assert (last["succeeded"], last["failed"], last["interrupted"], last["not_started"]) == (1, 0, ["b"], ["c"])
    assert [r["job_id"] for r in log_lines(out)] == ["a"]  # finished jobs only are recorded


def test_overwrite_false_refuses_an_existing_output_unless_resume_skips_it(tmp_path, options):
    audio = write_clip(tmp_path / "a.wav", 0.4)
    out = tmp_path / "out"
    job = Job("a", audio, FIXTURES / "portrait.png", out / "a.mp4")
    assert run_jobs([job], options, out, overwrite=False).exit_code == 0  # nothing there yet
    before = (out / "a.mp4").read_bytes()
    with pytest.raises(UsageError, match="a.mp4 already exists") as info:
        run_jobs([job], options, out, overwrite=False)
    assert "--overwrite" in info.value.hint and len(log_lines(out)) == 1  # no record for the refused run
    summary = run_jobs([job], options, out, overwrite=False, resume=True)  # same inputs: skipped, kept
    assert [r.status for r in summary.records] == ["skipped"] and (out / "a.mp4").read_bytes() == before
    changed = dataclasses.replace(options, encode=EncodeOptions(crf=30))
    with pytest.raises(UsageError, match="already exists"):  # --resume would render it again: refused
        run_jobs([job], changed, out, overwrite=False, resume=True)
    assert (out / "a.mp4").read_bytes() == before


# --- encoders and digests --------------------------------------------------------------------------------------


def test_two_runs_of_the_same_job_record_the_same_frames_digest(tmp_path, options):
    audio = write_clip(tmp_path / "in" / "a.wav", 0.4)
    digests = []
    for run_no, encode in enumerate([EncodeOptions(), EncodeOptions(codec="hevc", threads=1)]):
        out = tmp_path / f"out{run_no}"
        opts = dataclasses.replace(options, encode=encode)
        summary = run_jobs([Job("a", audio, FIXTURES / "portrait.png", out / "a.mp4")], opts, out)
        digests.append(summary.records[0].frames_digest)
    assert digests[0] == digests[1] and len(digests[0]) == 64  # H.264 then HEVC: the frames were the same


def test_an_encoder_named_that_does_not_open_refuses_the_run_before_the_lock(tmp_path, options):
    out = tmp_path / "out"
    audio = write_clip(tmp_path / "a.wav", 0.4)
    broken = dataclasses.replace(options, encode=EncodeOptions(encoder="libx264rgb"))  # RGB input only: never opens
    with pytest.raises(UsageError) as info:
        render([Job("a", audio, FIXTURES / "portrait.png", out / "a.mp4")], broken, RunOptions(out_dir=out))
    assert "--encoder libx264rgb does not open here" in info.value.message and "libx264" in info.value.hint
    assert not out.exists()  # no lock, no log, no output


def test_the_fingerprint_covers_the_encoder_as_asked_not_as_resolved(options):
    settings = render_settings(options)
    assert settings["encode"]["encoder"] == "auto" and "encoder_reason" not in settings["encode"]
    assert set(settings["encode"]) == {"encoder", "codec", "preset", "crf", "threads", "audio_bitrate"}
    where = dataclasses.replace(options, encode=EncodeOptions(gpu=1, resolved_from="auto"))  # how it ran, not what
    assert render_settings(where) == settings
    hevc = dataclasses.replace(options, encode=EncodeOptions(codec="hevc"))
    assert render_settings(hevc) != settings
    same = [EncodeOptions(codec="hevc"), EncodeOptions(encoder="auto", codec="hevc")]
    assert len({json.dumps(render_settings(dataclasses.replace(options, encode=e))) for e in same}) == 1
    h264 = dataclasses.replace(options, encode=EncodeOptions(codec="h264"))
    assert render_settings(h264) == settings  # --codec h264 is the default spelt out


@pytest.mark.skipif(probe("h264_nvenc") is None, reason="NVENC opens on this machine")
def test_the_in_process_executor_falls_back_to_the_cpu_encoder_too(tmp_path, options):
    audio = write_clip(tmp_path / "a.wav", 0.4)
    nvenc = dataclasses.replace(options, encode=EncodeOptions(encoder="h264_nvenc", codec="h264"))
    events: list[dict] = []
    executor = InProcessExecutor(nvenc, RetryPolicy(backoff_s=0.01))
    (record,) = executor.run(
        [Job("a", audio, FIXTURES / "portrait.png", tmp_path / "a.mp4")], {"a": "f"}, events.append
    )
    assert record.status == "succeeded" and record.attempts == 2
    assert [e["type"] for e in record.errors] == ["HardwareEncodeError"]
    assert record.encoder["name"] == "libx264" and "h264_nvenc failed to open" in record.encoder["reason"]
    assert [e["event"] for e in events] == ["job_started", "incident", "job_started"]


def test_resume_verify_renders_again_and_reports_changed_frames(tmp_path, options):
    audio = write_clip(tmp_path / "in" / "a.wav", 0.4)
    out = tmp_path / "out"
    jobs = [Job("a", audio, FIXTURES / "portrait.png", out / "a.mp4")]
    first = run_jobs(jobs, options, out).records[0]

    summary = run_jobs(jobs, options, out, resume=True, verify=True)
    (again,) = summary.records
    assert again.status == "succeeded" and again.frames_digest == first.frames_digest  # rendered, and the same
    assert summary.exit_code == 0 and summary.mismatches == [] and again.errors == []

    lines = (out / "results.jsonl").read_text().splitlines()
    tampered = {**json.loads(lines[-1]), "frames_digest": "0" * 64}  # as if an older build had made other frames
    (out / "results.jsonl").write_text("\n".join([*lines, json.dumps(tampered)]) + "\n")
    events: list[dict] = []
    summary = run_jobs(jobs, options, out, events, resume=True, verify=True)
    assert summary.exit_code == 1 and [m.job_id for m in summary.mismatches] == ["a"]
    (record,) = summary.records
    assert record.status == "succeeded" and [e["type"] for e in record.errors] == ["DigestMismatch"]
    assert "0" * 64 in record.errors[0]["message"] and record.errors[0]["hint"]
    assert any(e["event"] == "incident" and e["error"]["type"] == "DigestMismatch" for e in events)
    assert log_lines(out)[-1]["errors"][0]["type"] == "DigestMismatch"


# --- per-job settings ----------------------------------------------------------------------------------------------


def video_facts(path: Path) -> tuple[float, int]:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        return float(stream.average_rate), sum(1 for _ in container.decode(video=0))


def test_per_job_settings_reach_the_outputs_under_the_supervisor(tmp_path):
    """The default executor (job processes, an inference worker): a job's own fps/crf/preset reach its file."""
    write_clip(tmp_path / "in" / "a.wav", 0.6)
    (tmp_path / "in" / "p.png").symlink_to(FIXTURES / "portrait.png")
    manifest = tmp_path / "in" / "jobs.csv"
    manifest.write_text(
        "id,audio,avatar,fps,crf,preset,face,x_customer\n"
        "thirty,a.wav,p.png,30,51,ultrafast,0,acme\nplain,a.wav,p.png,,10,,,\n"
    )
    out = tmp_path / "out"
    run = RunOptions(out_dir=out, jobs=2)
    summary = render(read_manifest(manifest, out), RenderOptions(), run)
    assert summary.exit_code == 0, [r.error for r in summary.records]
    assert video_facts(out / "thirty.mp4") == (30.0, 18)  # 0.6 s at the job's own 30 fps
    assert video_facts(out / "plain.mp4") == (25.0, 15)  # the command line's 25
    assert (out / "thirty.mp4").stat().st_size < (out / "plain.mp4").stat().st_size / 2  # crf 51 vs crf 10
    records = {r["job_id"]: r for r in log_lines(out)}
    thirty, plain = records["thirty"], records["plain"]
    assert thirty["settings"] == {
        "loop": "pingpong",
        "fps": 30.0,
        "crf": 51,
        "preset": "ultrafast",
        "pads": [0, 10, 0, 0],
        "face": "0",
    }
    assert thirty["overrides"] == {"fps": 30.0, "crf": 51, "preset": "ultrafast", "face": "0"}
    assert thirty["face"]["choice"] == "0" and thirty["face_coverage"] == 1.0  # through the job process's pipe
    assert plain["face"]["choice"] == plain["settings"]["face"] == "auto"
    assert thirty["encoder"]["name"] == "libx264" and thirty["encoder"]["preset"] == "ultrafast"
    assert thirty["encoder"]["crf"] == 51
    assert thirty["meta"] == {"x_customer": "acme"} and thirty["fps"] == 30.0
    assert plain["settings"]["fps"] == 25.0 and plain["overrides"] == {"crf": 10} and plain["encoder"]["crf"] == 10


def test_resume_renders_again_a_job_whose_own_settings_changed(tmp_path, options):
    write_clip(tmp_path / "in" / "a.wav", 0.4)
    (tmp_path / "in" / "p.png").symlink_to(FIXTURES / "portrait.png")
    manifest = tmp_path / "in" / "jobs.csv"
    out = tmp_path / "out"

    def statuses(crf_of_b: str, **run_fields) -> dict[str, str]:
        manifest.write_text(f"id,audio,avatar,crf,x_note\na,a.wav,p.png,,x\nb,a.wav,p.png,{crf_of_b},y\n")
        summary = run_jobs(read_manifest(manifest, out), options, out, resume=True)
        return {r.job_id: r.status for r in summary.records}

    assert statuses("30") == {"a": "succeeded", "b": "succeeded"}
    assert statuses("30") == {"a": "skipped", "b": "skipped"}
    assert statuses("31") == {"a": "skipped", "b": "succeeded"}  # only b's own setting changed
    manifest.write_text("id,audio,avatar,crf,x_note\na,a.wav,p.png,,changed\nb,a.wav,p.png,31,y\n")
    summary = run_jobs(read_manifest(manifest, out), options, out, resume=True)
    assert {r.status for r in summary.records} == {"skipped"}  # x_ columns are the user's, not render settings
    assert log_lines(out)[-2]["meta"] == {"x_note": "changed"}


def test_each_job_animates_the_face_its_row_chooses_and_resume_follows_the_choice(tmp_path, options):
    write_clip(tmp_path / "in" / "a.wav", 0.4)
    (tmp_path / "in" / "two.jpg").symlink_to(FIXTURES / "two_faces.jpg")
    manifest = tmp_path / "in" / "jobs.csv"
    out = tmp_path / "out"

    def run(face_of_b: str) -> dict:
        manifest.write_text(f'id,audio,avatar,face\na,a.wav,two.jpg,left\nb,a.wav,two.jpg,"{face_of_b}"\n')
        summary = run_jobs(read_manifest(manifest, out), options, out, resume=True)
        assert summary.exit_code == 0, [r.error for r in summary.records]
        return {r.job_id: r for r in summary.records}

    first = run("400,100")
    left, right = first["a"].face["faces_found"]
    assert first["a"].face["box_at_first_frame"] == left and first["b"].face["box_at_first_frame"] == right
    assert first["b"].face["choice"] == "400,100" and first["b"].face_coverage == 1.0
    assert first["a"].input_fingerprint != first["b"].input_fingerprint  # the same inputs, another face
    assert {k: r.status for k, r in run("400,100").items()} == {"a": "skipped", "b": "skipped"}
    again = run("left")
    assert {k: r.status for k, r in again.items()} == {"a": "skipped", "b": "succeeded"}  # b's choice changed
    assert again["a"].face == first["a"].face  # a skipped record still says which face


def test_a_job_under_min_face_coverage_fails_with_no_face_error_and_the_others_finish(tmp_path, options):
    """turning.mp4 shows a face in 30 of its 50 frames; the portrait in all of them."""
    audio = write_clip(tmp_path / "in" / "a.wav", 2.0)
    out = tmp_path / "out"
    jobs = [
        Job("turning", audio, FIXTURES / "turning.mp4", out / "turning.mp4"),
        Job("portrait", audio, FIXTURES / "portrait.png", out / "portrait.mp4"),
    ]
    strict = dataclasses.replace(options, face=dataclasses.replace(options.face, min_coverage=0.9))
    summary = run_jobs(jobs, strict, out)
    records = {r.job_id: r for r in summary.records}
    assert summary.exit_code == 1 and records["portrait"].status == "succeeded"
    error = records["turning"].error
    assert error["type"] == "NoFaceError" and not error["retryable"] and records["turning"].attempts == 1
    assert "30 of 50 frames (60%)" in error["message"] and "--min-face-coverage 0.9" in error["message"]
    assert "turning.mp4" in error["message"] and "--min-face-coverage" in error["hint"]
    assert not (out / "turning.mp4").exists()  # failed before anything was encoded
    lenient = run_jobs(jobs[:1], options, out)
    assert lenient.exit_code == 0 and lenient.records[0].face_coverage == 0.6


def test_job_options_put_a_jobs_own_settings_over_the_run(options):
    job = Job(
        "a", Path("a.wav"), Path("v.mp4"), Path("a.mp4"), JobSettings(loop="loop", fps=30, crf=40, pads=(1, 2, 3, 4))
    )
    mine = job_options(options, job)
    assert (mine.avatar.loop, mine.avatar.still_fps, mine.encode.crf, mine.model.pads) == ("loop", 30, 40, (1, 2, 3, 4))
    assert mine.encode.preset == options.encode.preset and mine.face == options.face  # the rest as the run has it
    assert job_options(options, Job("b", Path("a.wav"), Path("v.mp4"), Path("b.mp4"))) is options
    assert render_settings(mine) != render_settings(options)


# --- shards ----------------------------------------------------------------------------------------------------------


def test_a_shard_renders_its_jobs_only_into_its_own_log(tmp_path, options):
    audio = write_clip(tmp_path / "a.wav", 0.4)
    out = tmp_path / "out"
    jobs = [Job(f"j{i}", audio, FIXTURES / "portrait.png", out / f"j{i}.mp4") for i in range(6)]
    mine = [j.id for j in jobs if Shard(1, 3).holds(j.id)]
    assert mine and len(mine) < 6
    events: list[dict] = []
    summary = run_jobs(jobs, options, out, events, shard=Shard(1, 3))
    assert [r.job_id for r in summary.records] == mine
    assert events[0]["jobs"] == len(mine) and events[0]["shard"] == "1/3"
    assert sorted(p.name for p in out.glob("results*")) == ["results.shard-1-of-3.jsonl"]
    assert sorted(p.stem for p in out.glob("*.mp4")) == sorted(mine)


def test_resume_of_a_shard_counts_jobs_done_by_an_earlier_unsharded_run(tmp_path, options):
    audio = write_clip(tmp_path / "a.wav", 0.4)
    out = tmp_path / "out"
    jobs = [Job(f"j{i}", audio, FIXTURES / "portrait.png", out / f"j{i}.mp4") for i in range(4)]
    run_jobs(jobs[:2], options, out)  # unsharded: results.jsonl
    summary = run_jobs(jobs, options, out, resume=True, shard=Shard(0, 1))  # one shard of all: its own log
    assert {r.job_id: r.status for r in summary.records} == {
        "j0": "skipped",
        "j1": "skipped",
        "j2": "succeeded",
        "j3": "succeeded",
    }
