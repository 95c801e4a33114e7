"""Supervision with real processes and real signals: kills, stops, crashes, interrupts, locks."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import av
import pytest
from conftest import FIXTURES, EventWatcher, alive, children_of, frame_digests

from dhgen.encoders import probe
from dhgen.executors.inprocess import InProcessExecutor
from dhgen.executors.local import Supervisor
from dhgen.manifest import Job
from dhgen.options import EncodeOptions, ModelOptions, RenderOptions, RunOptions
from dhgen.runner import render

AUDIO = FIXTURES / "speech.wav"  # 4.4 s: long enough to hit a job mid-render
SHORT_AUDIO = FIXTURES / "speech.m4a"  # 2 s
AVATAR = FIXTURES / "avatar.mp4"
DHGEN = [sys.executable, "-m", "dhgen.cli"]


def _jobs(tmp_path: Path, n: int, audio: Path = AUDIO) -> list[Job]:
    return [Job(f"j{i}", audio, AVATAR, tmp_path / f"j{i}.mp4") for i in range(n)]


def _run(tmp_path, job_list, watcher, options: RenderOptions | None = None, **run_kw):
    run = RunOptions(out_dir=tmp_path, jobs=run_kw.pop("jobs", 2), backoff_s=0.1, **run_kw)
    return render(job_list, options or RenderOptions(), run, on_event=watcher)


def _progress_of(job_id: str, at_least: int = 1):
    return lambda e: e["event"] == "job_progress" and e["job_id"] == job_id and e.get("decoded", 0) >= at_least


def test_killed_worker_is_replaced_and_every_job_succeeds(tmp_path):
    watcher = EventWatcher()

    def kill_worker_mid_batch():
        pid = watcher.wait_for(lambda e: e["event"] == "worker_started")["pid"]
        os.kill(pid, signal.SIGSTOP)  # it takes the jobs' first batches and holds them: the kill lands mid-batch
        for job_id in ("j0", "j1"):  # (the worker starts in milliseconds: wait until both jobs have sent some)
            watcher.wait_for(_progress_of(job_id))
        time.sleep(0.5)
        os.kill(pid, signal.SIGKILL)

    watcher.act(kill_worker_mid_batch)
    summary = _run(tmp_path, _jobs(tmp_path, 2), watcher)

    assert [r.status for r in summary.records] == ["succeeded", "succeeded"]
    crashes = [e for r in summary.records for e in r.errors if e["type"] == "WorkerCrashed"]
    assert crashes and all(e["signal"] == "SIGKILL" and "SIGKILL" in e["message"] for e in crashes)
    assert all(r.attempts == 1 for r in summary.records)
    assert sum(e["event"] == "worker_started" for e in watcher.events) == 2
    # Replayed batches make the same video as an undisturbed run (same encoder threads as a job process here).
    reference = tmp_path / "reference.mp4"
    options = RenderOptions(encode=EncodeOptions(threads=1))
    render(
        [Job("ref", AUDIO, AVATAR, reference)],
        options,
        RunOptions(out_dir=tmp_path / "ref"),
        executor=InProcessExecutor(options),
    )
    for r in summary.records:
        assert frame_digests(Path(r.output)) == frame_digests(reference)
    # The records say so too: the frames handed to the encoder hash the same in every process, replay or not.
    reference_digest = json.loads((tmp_path / "ref" / "results.jsonl").read_text())["frames_digest"]
    assert [r.frames_digest for r in summary.records] == [reference_digest] * 2


def test_killed_job_process_costs_only_that_job_an_attempt(tmp_path):
    watcher = EventWatcher()

    def kill_job():
        pid = watcher.wait_for(lambda e: e["event"] == "job_started" and e["job_id"] == "j0")["pid"]
        watcher.wait_for(_progress_of("j0"))
        os.kill(pid, signal.SIGKILL)

    watcher.act(kill_job)
    summary = _run(tmp_path, _jobs(tmp_path, 2), watcher)

    by_id = {r.job_id: r for r in summary.records}
    assert by_id["j0"].status == "succeeded" and by_id["j0"].attempts == 2
    (crash,) = by_id["j0"].errors
    assert crash["type"] == "JobProcessCrashed" and crash["signal"] == "SIGKILL" and crash["retryable"]
    assert "OOM" in crash["message"] and crash["hint"]
    assert by_id["j1"].status == "succeeded" and by_id["j1"].attempts == 1 and by_id["j1"].errors == []
    assert not list(tmp_path.glob(".*.partial.mp4"))


@pytest.mark.parametrize("target", ["job", "worker"])
def test_stopped_child_is_stalled_killed_and_recovered(tmp_path, target):
    watcher = EventWatcher()
    stopped_at = {}

    def stop_child():
        if target == "job":  # mid-render
            pid = watcher.wait_for(lambda e: e["event"] == "job_started")["pid"]
            watcher.wait_for(_progress_of("j0"))
        else:  # once the job has work for it (the worker starts in milliseconds, long before the job's batches)
            pid = watcher.wait_for(lambda e: e["event"] == "worker_started")["pid"]
            watcher.wait_for(_progress_of("j0"))
        os.kill(pid, signal.SIGSTOP)
        stopped_at["t"] = time.monotonic()

    watcher.act(stop_child)
    summary = _run(tmp_path, _jobs(tmp_path, 1), watcher, stall_timeout=2.0)

    (record,) = summary.records
    assert record.status == "succeeded"
    stalls = [e for e in record.errors if e["type"] == "Stalled"]
    assert stalls and "no progress" in stalls[0]["message"]
    incident = watcher.wait_for(lambda e: e["event"] == "incident" and e["error"]["type"] == "Stalled", timeout=1)
    assert incident["_t"] - stopped_at["t"] < 2.0 + 3.0


def test_exception_in_worker_reaches_the_record_with_its_traceback(tmp_path, monkeypatch):
    monkeypatch.setenv("DHGEN_TEST_FAULT", "raise")
    summary = _run(tmp_path, _jobs(tmp_path, 1, SHORT_AUDIO), EventWatcher())

    (record,) = summary.records
    assert record.status == "failed" and record.attempts == 1
    assert record.error["type"] == "ModelError" and "injected fault" in record.error["message"]
    assert "model mouthwarp raised RuntimeError" in record.error["message"]
    assert "Traceback" in record.error["traceback"] and "predict" in record.error["traceback"]
    assert not Path(record.output).exists()


def test_out_of_memory_halves_the_batch_and_the_job_succeeds(tmp_path, monkeypatch):
    monkeypatch.setenv("DHGEN_TEST_FAULT", "oom_above:8")
    summary = _run(tmp_path, _jobs(tmp_path, 1, SHORT_AUDIO), EventWatcher())

    (record,) = summary.records
    assert record.status == "succeeded"
    (oom,) = [e for e in record.errors if e["type"] == "OutOfMemory"]
    assert oom["batch_size"] == 8 and "halved" in oom["message"]


def _write_manifest(tmp_path: Path, n: int) -> Path:
    manifest = tmp_path / "jobs.csv"
    manifest.write_text("id,audio,avatar\n" + "".join(f"j{i},{AUDIO},{AVATAR}\n" for i in range(n)))
    return manifest


def _start_cli(manifest: Path, out: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [*DHGEN, "render", str(manifest), "--out", str(out), "--jobs", "1", *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_until(predicate, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def _records(out: Path) -> list[str]:
    log = out / "results.jsonl"
    return log.read_text().splitlines() if log.exists() else []


def test_sigterm_stops_cleanly_and_resume_finishes_the_rest(tmp_path):
    out = tmp_path / "out"
    manifest = _write_manifest(tmp_path, 3)
    cli = _start_cli(manifest, out)
    _wait_until(lambda: len(_records(out)) == 1)  # j0 done, j1 under way
    _wait_until(lambda: len(children_of(cli.pid)) >= 2)
    children = children_of(cli.pid)
    started = time.monotonic()
    cli.send_signal(signal.SIGTERM)
    assert cli.wait(timeout=15) == 143
    assert time.monotonic() - started < 10
    _wait_until(lambda: not any(alive(pid) for pid in children), timeout=5)
    assert (out / "j0.mp4").exists() and not (out / "j1.mp4").exists()
    assert not list(out.glob(".*partial*"))
    assert len(_records(out)) == 1

    resumed = subprocess.run(
        [*DHGEN, "render", str(manifest), "--out", str(out), "--resume"], capture_output=True, text=True, timeout=120
    )
    assert resumed.returncode == 0, resumed.stderr
    last = [json.loads(line) for line in _records(out)[1:]]
    assert {r["job_id"]: r["status"] for r in last} == {"j0": "skipped", "j1": "succeeded", "j2": "succeeded"}


def test_sigkill_of_the_supervisor_leaves_no_child(tmp_path):
    out = tmp_path / "out"
    cli = _start_cli(_write_manifest(tmp_path, 2), out)
    _wait_until(lambda: len(children_of(cli.pid)) >= 2)
    _wait_until(lambda: any(out.glob(".*partial*")))  # rendering under way
    children = children_of(cli.pid)
    cli.kill()
    cli.wait()
    _wait_until(lambda: not any(alive(pid) for pid in children), timeout=5)


def test_a_second_run_on_the_same_folder_exits_75(tmp_path):
    out = tmp_path / "out"
    manifest = _write_manifest(tmp_path, 1)
    first = _start_cli(manifest, out)
    try:
        _wait_until(lambda: (out / ".dhgen.lock").exists() and len(children_of(first.pid)) >= 1)
        second = subprocess.run(
            [*DHGEN, "render", str(manifest), "--out", str(out)], capture_output=True, text=True, timeout=30
        )
        assert second.returncode == 75
        assert f"pid {first.pid}" in second.stderr
    finally:
        first.kill()
        first.wait()


def test_supervisor_and_job_processes_do_not_import_torch():
    modules = "dhgen.cli, dhgen.runner, dhgen.executors.local, dhgen.executors.local.jobproc, dhgen.pipeline"
    code = f"import sys, {modules}; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


def test_job_timeout_kills_the_attempt_and_is_retried_once(tmp_path):
    watcher = EventWatcher()
    summary = _run(tmp_path, _jobs(tmp_path, 1), watcher, job_timeout=0.3, retries=3)

    (record,) = summary.records
    assert record.status == "failed" and record.attempts == 2  # JobTimeout retries once, whatever --retries says
    assert [e["type"] for e in record.errors] == ["JobTimeout", "JobTimeout"]
    assert record.error["type"] == "JobTimeout" and "0.3s" in record.error["message"]
    assert not Path(record.output).exists() and not list(tmp_path.glob(".*partial*"))


def test_a_job_process_renders_job_after_job(tmp_path):
    watcher = EventWatcher()
    summary = _run(tmp_path, _jobs(tmp_path, 3, SHORT_AUDIO), watcher, jobs=1)

    assert [r.status for r in summary.records] == ["succeeded"] * 3
    pids = {e["pid"] for e in watcher.events if e["event"] == "job_started"}
    assert len(pids) == 1  # spawned once, not once per job


def test_a_failed_job_leaves_its_process_fit_for_the_next(tmp_path):
    jobs = [Job("bad", FIXTURES / "garbage.wav", AVATAR, tmp_path / "bad.mp4"), *_jobs(tmp_path, 1, SHORT_AUDIO)]
    watcher = EventWatcher()
    summary = _run(tmp_path, jobs, watcher, jobs=1)

    assert [(r.job_id, r.status) for r in summary.records] == [("bad", "failed"), ("j0", "succeeded")]
    assert len({e["pid"] for e in watcher.events if e["event"] == "job_started"}) == 1


needs_no_nvenc = pytest.mark.skipif(probe("h264_nvenc") is None, reason="NVENC opens on this machine")


@needs_no_nvenc
def test_a_hardware_encoder_that_fails_in_a_job_is_retried_once_on_the_cpu_encoder(tmp_path):
    # The real h264_nvenc, as if the run's probe had seen it open and its sessions ran out since: it fails to open.
    options = RenderOptions(encode=EncodeOptions(encoder="h264_nvenc", codec="h264", encoder_reason="auto: opened"))
    supervisor = Supervisor(options, RunOptions(out_dir=tmp_path, backoff_s=0.1, retries=2))
    watcher = EventWatcher()
    jobs = _jobs(tmp_path, 1, SHORT_AUDIO)
    (record,) = list(supervisor.run(jobs, {"j0": "f"}, watcher))

    assert record.status == "succeeded" and record.attempts == 2
    (failure,) = record.errors
    assert failure["type"] == "HardwareEncodeError" and failure["retryable"] and "h264_nvenc" in failure["message"]
    assert record.encoder["name"] == "libx264" and record.encoder["reason"].startswith("fallback: ")
    with av.open(str(record.output)) as out:
        assert out.streams.video[0].codec_context.name == "h264"
        assert sum(1 for _ in out.decode(video=0)) == record.frames
    incident = watcher.wait_for(lambda e: e["event"] == "incident", timeout=1)
    assert incident["error"]["type"] == "HardwareEncodeError" and "attempt 2" in incident["action"]


def test_an_encoder_failing_mid_job_fails_only_that_job_at_once(tmp_path, monkeypatch):
    # The job processes inherit the hook: the encoder is flushed before frame 80, which only the 4.4 s job reaches.
    monkeypatch.setenv("DHGEN_TEST_FAULT", "encoder_eof_at:80")
    jobs = [
        Job("long", AUDIO, AVATAR, tmp_path / "long.mp4"),
        Job("short", SHORT_AUDIO, AVATAR, tmp_path / "short.mp4"),
    ]
    summary = _run(tmp_path, jobs, EventWatcher(), job_timeout=60)

    by_id = {r.job_id: r for r in summary.records}
    assert by_id["short"].status == "succeeded"
    long = by_id["long"]
    assert long.status == "failed" and long.attempts == 1  # a CPU encoder's failure is not retried
    assert long.error["type"] == "EncodeError" and "libx264 failed encoding frame 80" in long.error["message"]
    assert not Path(long.output).exists() and not list(tmp_path.glob(".*partial*"))


# --- what the first GPU box would hit, simulated here ------------------------------------------------------------

OLD_TORCH = FIXTURES / "old_torch"  # on PYTHONPATH: torch without AcceleratorError (torch < 2.8) in every child


def _with_old_torch(monkeypatch) -> None:
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(OLD_TORCH), os.environ.get("PYTHONPATH", "")]))


def _tiny_wav2lip(tmp_path: Path) -> RenderOptions:
    """--model wav2lip with a TorchScript generator that returns the masked crop: a torch model, loaded in ms."""
    import torch  # the test process only

    class Masked(torch.nn.Module):
        def forward(self, mel: torch.Tensor, face: torch.Tensor) -> torch.Tensor:
            return face[:, :3]

    path = tmp_path / "tiny.pt"
    torch.jit.script(Masked()).save(str(path))
    return RenderOptions(model=ModelOptions(name="wav2lip", checkpoint=path))


@pytest.mark.parametrize("torch_version", ["2.8 and later", "before 2.8"])
def test_a_worker_whose_cuda_context_breaks_says_why_and_is_replaced(tmp_path, monkeypatch, torch_version):
    if torch_version == "before 2.8":
        _with_old_torch(monkeypatch)
    monkeypatch.setenv("DHGEN_TEST_FAULT", f"broken_cuda_once:{tmp_path / 'broken-once'}")
    watcher = EventWatcher()
    summary = _run(tmp_path, _jobs(tmp_path, 1, SHORT_AUDIO), watcher)

    (record,) = summary.records
    assert record.status == "succeeded" and record.attempts == 1  # its batches were replayed on the new worker
    (crash,) = [e for e in record.errors if e["type"] == "WorkerCrashed"]
    error_type = "AcceleratorError" if torch_version == "2.8 and later" else "RuntimeError"
    assert "exited with code 70 because its CUDA context broke" in crash["message"]
    assert f"{error_type}: CUDA error: an illegal memory access was encountered" in crash["message"]
    tail = crash["crash_tail"]  # the traceback's last lines: where it failed, and the error
    assert "in predict" in tail and tail.endswith(
        "an illegal memory access was encountered (injected: DHGEN_TEST_FAULT)"
    )
    incident = watcher.wait_for(lambda e: e["event"] == "incident" and e["error"]["type"] == "WorkerCrashed", 1)
    assert "illegal memory access" in incident["error"]["message"]


def test_with_torch_before_2_8_a_raising_model_fails_its_job_and_no_worker_dies(tmp_path, monkeypatch):
    _with_old_torch(monkeypatch)
    monkeypatch.setenv("DHGEN_TEST_FAULT", "raise")
    watcher = EventWatcher()
    summary = _run(tmp_path, _jobs(tmp_path, 1, SHORT_AUDIO), watcher, options=_tiny_wav2lip(tmp_path))

    (record,) = summary.records
    assert record.status == "failed" and record.attempts == 1
    assert record.error["type"] == "ModelError" and "model wav2lip raised RuntimeError" in record.error["message"]
    assert "injected fault" in record.error["message"]
    assert [e["type"] for e in record.errors] == ["ModelError"]  # no WorkerCrashed: the worker lived
    assert sum(e["event"] == "worker_started" for e in watcher.events) == 1


def test_one_worker_that_cannot_load_the_model_loses_its_gpu_not_the_run(tmp_path, monkeypatch):
    monkeypatch.setenv("DHGEN_TEST_FAULT", f"load_fails_once:{tmp_path / 'load-fails-once'}")
    watcher = EventWatcher()
    summary = _run(tmp_path, _jobs(tmp_path, 3, SHORT_AUDIO), watcher, workers=2)

    assert [(r.status, r.attempts, r.errors) for r in summary.records] == [("succeeded", 1, [])] * 3
    lost = watcher.wait_for(lambda e: e["event"] == "incident" and "given up" in e.get("action", ""), 1)
    assert lost["error"]["type"] == "ModelLoadError" and "busy or unavailable" in lost["error"]["message"]
    assert "nvidia-smi" in lost["error"]["hint"]
    assert sum(e["event"] == "worker_started" for e in watcher.events) == 1  # the other one; none replaces it
    assert not [e for e in watcher.events if e.get("action") == "no more inference"]


def test_a_checkpoint_no_worker_can_load_still_fails_every_job(tmp_path):
    import torch

    checkpoint = tmp_path / "other.pth"
    torch.save({"state_dict": {"module.face_encoder_blocks.0.0.submodule.weight": torch.zeros(2, 2)}}, checkpoint)
    options = RenderOptions(model=ModelOptions(name="wav2lip", checkpoint=checkpoint, device="cpu"))
    watcher = EventWatcher()
    summary = _run(tmp_path, _jobs(tmp_path, 2, SHORT_AUDIO), watcher, options=options, workers=2)

    assert [(r.status, r.error["type"]) for r in summary.records] == [("failed", "ModelLoadError")] * 2
    assert all(str(checkpoint) in r.error["message"] for r in summary.records)
    assert not [e for e in watcher.events if "given up" in e.get("action", "")]  # no worker ever served
