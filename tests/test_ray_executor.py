"""The Ray executor on a real multi-node Ray cluster on this machine (`ray_cluster`: 127.0.0.1 only), with real
processes killed and stopped by real signals, a node's raylet killed, and SIGTERM to a real driver process; dhgen's
own Ray driver process killed; and at the end, on clusters of their own, the head lost: its GCS killed (and, with
GCS fault tolerance, started again) and the whole head node removed."""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import wave
from pathlib import Path

import pytest
from conftest import FIXTURES, RAY_NODE, EventWatcher, alive, bounded_tests, frame_digests, write_clip

from dhgen.manifest import Job
from dhgen.options import EncodeOptions, ModelOptions, RenderOptions, RunOptions
from dhgen.runner import render

AUDIO = FIXTURES / "speech.wav"  # 4.4 s: long enough to hit a job mid-render
SHORT_AUDIO = FIXTURES / "speech.m4a"  # 2 s
AVATAR = FIXTURES / "avatar.mp4"
DHGEN = [sys.executable, "-m", "dhgen.cli"]
OPTIONS = RenderOptions(encode=EncodeOptions(threads=2))  # the same x264 threads under both executors
TEST_BOUND_S = 150  # a hung test ends the session with every thread's traceback
WORK_ROOT = Path(tempfile.gettempdir()) / "dhgen-ray"


_bounded = bounded_tests(TEST_BOUND_S)


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("clips")
    return {"short": SHORT_AUDIO, "long": AUDIO, "part": write_clip(folder / "part.wav", 1.6, start=2.0)}


@pytest.fixture(scope="module")
def local_records(clips, tmp_path_factory) -> dict:
    """Each clip rendered by the local supervisor: the records (and outputs) the Ray executor must reproduce."""
    out = tmp_path_factory.mktemp("local")
    jobs = [Job(name, audio, AVATAR, out / f"{name}.mp4") for name, audio in clips.items()]
    summary = render(jobs, OPTIONS, RunOptions(out_dir=out, jobs=2))
    assert [r.status for r in summary.records] == ["succeeded"] * len(jobs)
    return {r.job_id: r for r in summary.records}


@pytest.fixture(scope="module")
def local_digests(local_records) -> dict[str, list[str]]:
    """The decoded frames of each local output, one md5 per frame."""
    return {job_id: frame_digests(Path(r.output)) for job_id, r in local_records.items()}


def _jobs(tmp_path: Path, n: int, audio: Path = SHORT_AUDIO) -> list[Job]:
    return [Job(f"j{i}", audio, AVATAR, tmp_path / f"j{i}.mp4") for i in range(n)]


def _ray_run(cluster, tmp_path: Path, jobs: list[Job], watcher, **run_kw):
    run = RunOptions(
        out_dir=tmp_path, executor="ray", ray_address=cluster.address, jobs=1, backoff_s=0.1, job_timeout=90, **run_kw
    )
    return render(jobs, OPTIONS, run, on_event=watcher)


def _started(job_id: str | None = None):
    return lambda e: e["event"] == "job_started" and (job_id is None or e["job_id"] == job_id)


def _progress_of(job_id: str, at_least: int = 1):
    return lambda e: e["event"] == "job_progress" and e["job_id"] == job_id and e.get("decoded", 0) >= at_least


def _live_actors() -> list[dict]:
    from ray._private import state

    return [a for a in state.actors().values() if a["ActorClassName"] == "InferenceActor" and a["State"] != "DEAD"]


def _wait_until(predicate, timeout: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def _no_partials(folder: Path) -> bool:
    return not list(folder.glob("**/.*partial*"))


def test_a_batch_renders_across_the_nodes_frame_for_frame_like_the_local_executor(
    ray_cluster, tmp_path, clips, local_digests, local_records
):
    work_before = set(WORK_ROOT.glob("*")) if WORK_ROOT.exists() else set()
    jobs = [Job(name, audio, AVATAR, tmp_path / f"{name}.mp4") for name, audio in clips.items()]
    watcher = EventWatcher()
    inside = {}

    def look_into_a_job_process():
        pid = watcher.wait_for(_started())["pid"]
        watcher.wait_for(lambda e: e["event"] == "job_progress" and e.get("decoded"))
        inside["maps"] = Path(f"/proc/{pid}/maps").read_text()

    watcher.act(look_into_a_job_process)
    summary = _ray_run(ray_cluster, tmp_path, jobs, watcher)

    assert sorted((r.job_id, r.status, r.attempts, r.errors) for r in summary.records) == sorted(
        (name, "succeeded", 1, []) for name in clips
    )
    for record in summary.records:
        assert frame_digests(Path(record.output)) == local_digests[record.job_id], record.job_id
        assert record.frames == len(local_digests[record.job_id]) and record.encoder["name"] == "libx264"
        assert record.frames_digest == local_records[record.job_id].frames_digest  # the frames handed to x264
    started = [e for e in watcher.events if e["event"] == "job_started"]
    assert all(e["node"] == "127.0.0.1" and e["pid"] for e in started)
    assert len({e["node_id"] for e in started}) == 2  # both worker nodes rendered
    workers = [e for e in watcher.events if e["event"] == "worker_started"]
    assert len(workers) == 2 and {e["device"] for e in workers} == {"cpu"}
    assert {e["node_id"] for e in workers} == {e["node_id"] for e in started}  # jobs ran beside their actor
    assert all("node" in e for e in watcher.events if e["event"] == "job_progress")
    assert "libav" in inside["maps"] and "libtorch" not in inside["maps"]  # a job task never loads torch
    _wait_until(lambda: not _live_actors(), 10, "the run's actors to go")
    assert _no_partials(tmp_path)
    assert (set(WORK_ROOT.glob("*")) if WORK_ROOT.exists() else set()) == work_before  # node temp folders removed


def test_sigkill_of_the_ray_worker_running_a_job_costs_that_job_an_attempt(ray_cluster, tmp_path):
    watcher = EventWatcher()
    killed = {}

    def kill_job():
        killed["pid"] = pid = watcher.wait_for(_started("j0"))["pid"]
        watcher.wait_for(_progress_of("j0"))
        os.kill(pid, signal.SIGKILL)

    watcher.act(kill_job)
    summary = _ray_run(ray_cluster, tmp_path, _jobs(tmp_path, 2, AUDIO), watcher)

    by_id = {r.job_id: r for r in summary.records}
    assert by_id["j0"].status == "succeeded" and by_id["j0"].attempts == 2
    (crash,) = by_id["j0"].errors
    assert crash["type"] == "JobProcessCrashed" and crash["retryable"] and crash["hint"]
    assert crash["pid"] == killed["pid"] and str(killed["pid"]) in crash["message"]
    assert crash["node"] == "127.0.0.1" and crash["node_id"][:8] in crash["message"]
    assert by_id["j1"].status == "succeeded" and by_id["j1"].attempts == 1 and by_id["j1"].errors == []
    assert _no_partials(tmp_path)


def test_sigkill_of_an_inference_actor_is_absorbed_by_replaying_its_batches(ray_cluster, tmp_path, local_digests):
    watcher = EventWatcher()
    killed = {}

    def kill_actor_mid_batch():
        killed["pid"] = pid = watcher.wait_for(lambda e: e["event"] == "worker_started")["pid"]
        os.kill(pid, signal.SIGSTOP)  # it takes its jobs' first batches and holds them: the kill lands mid-batch
        time.sleep(1.5)
        os.kill(pid, signal.SIGKILL)

    watcher.act(kill_actor_mid_batch)
    summary = _ray_run(ray_cluster, tmp_path, _jobs(tmp_path, 2), watcher)

    assert [r.status for r in summary.records] == ["succeeded", "succeeded"]
    assert all(r.attempts == 1 for r in summary.records)
    crashes = [e for r in summary.records for e in r.errors if e["type"] == "WorkerCrashed"]
    assert crashes and all(e["replayed"] >= 1 and e["retryable"] and e["node"] == "127.0.0.1" for e in crashes)
    assert all(e["replacement_pid"] != killed["pid"] for e in crashes)  # answered by the restarted actor
    deaths = [e for e in watcher.events if e["event"] == "incident" and "worker" in e]
    assert len(deaths) == 1 and deaths[0]["error"]["type"] == "WorkerCrashed"
    assert deaths[0]["error"]["pid"] == killed["pid"] and f"pid {killed['pid']}" in deaths[0]["error"]["message"]
    for r in summary.records:  # replayed batches make the same frames
        assert frame_digests(Path(r.output)) == local_digests["short"]


def test_a_node_that_dies_mid_batch_costs_its_jobs_an_attempt_on_the_remaining_node(ray_cluster, tmp_path):
    watcher = EventWatcher()
    removed = {}

    def kill_a_node():
        node_id = watcher.wait_for(_started())["node_id"]
        job_id = next(e["job_id"] for e in watcher.events if e["event"] == "job_started")
        watcher.wait_for(_progress_of(job_id))
        (node,) = [n for n in ray_cluster.worker_nodes if n.node_id == node_id]
        removed["node_id"] = node_id
        ray_cluster.remove_node(node, allow_graceful=False)  # its raylet and every process of it: killed

    work_before = set(WORK_ROOT.glob("*"))
    try:
        watcher.act(kill_a_node)
        summary = _ray_run(ray_cluster, tmp_path, _jobs(tmp_path, 3), watcher)
    finally:
        _restore_two_worker_nodes(ray_cluster)
        for left in set(WORK_ROOT.glob("*")) - work_before:  # the dead node's temp folder (this machine's /tmp)
            shutil.rmtree(left, ignore_errors=True)

    assert [r.status for r in summary.records] == ["succeeded"] * 3
    lost = [(r, e) for r in summary.records for e in r.errors if e["type"] == "NodeLost"]
    assert lost, [r.errors for r in summary.records]
    for record, error in lost:
        assert error["retryable"] and error["node_id"] == removed["node_id"] and record.attempts == 2
        assert (
            "127.0.0.1" in error["message"]
            and removed["node_id"] in error["message"]
            and record.job_id in error["message"]
        )
    reruns = [e for e in watcher.events if e["event"] == "job_started" and e["attempt"] == 2]
    assert reruns and all(e["node_id"] != removed["node_id"] for e in reruns)


def _restore_two_worker_nodes(cluster) -> None:
    while len(cluster.worker_nodes) < 2:
        cluster.add_node(num_cpus=1, **RAY_NODE)
    cluster.wait_for_nodes()


def test_a_stopped_remote_job_is_stalled_cancelled_and_retried(ray_cluster, tmp_path):
    watcher = EventWatcher()
    stopped = {}

    def stop_job():
        pid = watcher.wait_for(_started("j0"))["pid"]
        watcher.wait_for(_progress_of("j0"))
        os.kill(pid, signal.SIGSTOP)
        stopped.update(pid=pid, t=time.monotonic())

    watcher.act(stop_job)
    try:
        summary = _ray_run(ray_cluster, tmp_path, _jobs(tmp_path, 1, AUDIO), watcher, stall_timeout=2.0)
    finally:
        if stopped and alive(stopped["pid"]):
            os.kill(stopped["pid"], signal.SIGCONT)

    (record,) = summary.records
    assert record.status == "succeeded" and record.attempts == 2
    (stall,) = record.errors
    assert stall["type"] == "Stalled" and "no progress for 2s" in stall["message"] and stall["node"] == "127.0.0.1"
    assert not alive(stopped["pid"])  # the forced cancel ended the stopped process


def test_a_stopped_actor_is_stalled_killed_and_restarted_and_its_jobs_go_on(ray_cluster, tmp_path, local_digests):
    watcher = EventWatcher()
    stopped = {}

    def stop_actor():
        stopped["pid"] = pid = watcher.wait_for(lambda e: e["event"] == "worker_started")["pid"]
        os.kill(pid, signal.SIGSTOP)  # its jobs' batches wait on it; it reports nothing any more

    watcher.act(stop_actor)
    summary = _ray_run(ray_cluster, tmp_path, _jobs(tmp_path, 2), watcher, stall_timeout=2.0)

    assert [(r.status, r.attempts) for r in summary.records] == [("succeeded", 1), ("succeeded", 1)]
    (stall,) = [e for e in watcher.events if e["event"] == "incident" and "worker" in e]
    assert stall["error"]["type"] == "Stalled" and "made no progress for 2s" in stall["error"]["message"]
    assert stall["error"]["pid"] == stopped["pid"] and not alive(stopped["pid"])
    assert any(e["type"] == "WorkerCrashed" and e["replayed"] >= 1 for r in summary.records for e in r.errors)
    for r in summary.records:
        assert frame_digests(Path(r.output)) == local_digests["short"]


def test_bad_inputs_fail_their_own_jobs_with_their_usual_types(ray_cluster, tmp_path):
    (tmp_path / "plain").write_text("a file where the output's folder should be")
    jobs = [
        Job("garbage", FIXTURES / "garbage.wav", AVATAR, tmp_path / "garbage.mp4"),
        Job("missing", tmp_path / "nowhere.wav", AVATAR, tmp_path / "missing.mp4"),
        Job("blocked", SHORT_AUDIO, AVATAR, tmp_path / "plain" / "blocked.mp4"),
        Job("good", SHORT_AUDIO, AVATAR, tmp_path / "good.mp4"),
    ]
    summary = _ray_run(ray_cluster, tmp_path, jobs, EventWatcher())

    by_id = {r.job_id: r for r in summary.records}
    assert by_id["good"].status == "succeeded"
    garbage, missing = by_id["garbage"], by_id["missing"]
    assert garbage.status == "failed" and garbage.attempts == 1 and garbage.error["type"] == "AudioDecodeError"
    assert str(FIXTURES / "garbage.wav") in garbage.error["message"] and "dhgen-ray" not in garbage.error["message"]
    assert missing.status == "failed" and missing.error["type"] == "MissingInputError" and missing.error["hint"]
    assert str(tmp_path / "nowhere.wav") in missing.error["message"]
    blocked = by_id["blocked"]
    assert blocked.status == "failed" and blocked.attempts == 1 and blocked.error["type"] == "OutputError"
    assert str(tmp_path / "plain") in blocked.error["message"]
    assert not Path(garbage.output).exists() and not Path(missing.output).exists()


def test_with_a_shared_filesystem_nodes_read_and_write_the_paths_themselves(
    ray_cluster, tmp_path, clips, local_digests
):
    jobs = [
        Job("part", clips["part"], AVATAR, tmp_path / "sub" / "part.mp4"),
        Job("noface", SHORT_AUDIO, FIXTURES / "noface.mp4", tmp_path / "noface.mp4"),
    ]
    summary = _ray_run(ray_cluster, tmp_path, jobs, EventWatcher(), ray_shared_fs=True)

    by_id = {r.job_id: r for r in summary.records}
    assert by_id["part"].status == "succeeded"
    assert frame_digests(tmp_path / "sub" / "part.mp4") == local_digests["part"]
    noface = by_id["noface"]
    assert noface.status == "failed" and noface.error["type"] == "NoFaceError"
    assert str(FIXTURES / "noface.mp4") in noface.error["message"]
    assert _no_partials(tmp_path)


def test_an_actor_whose_cuda_context_breaks_ends_itself_and_is_replaced(
    ray_cluster, tmp_path, local_digests, monkeypatch
):
    marker = tmp_path / "cuda-broken-once"
    monkeypatch.setenv("DHGEN_TEST_FAULT", f"broken_cuda_once:{marker}")  # the driver hands it to its actors
    watcher = EventWatcher()
    summary = _ray_run(ray_cluster, tmp_path, _jobs(tmp_path, 2), watcher)

    assert marker.exists()  # the fault did fire in one actor
    assert [(r.status, r.attempts) for r in summary.records] == [("succeeded", 1), ("succeeded", 1)]
    crashes = [e for r in summary.records for e in r.errors if e["type"] == "WorkerCrashed"]
    assert crashes and all(e["replayed"] >= 1 for e in crashes)
    (death,) = [e for e in watcher.events if e["event"] == "incident" and "worker" in e]
    assert death["error"]["type"] == "WorkerCrashed" and all(
        e["replacement_pid"] != death["error"]["pid"] for e in crashes
    )
    cuda_error = "because its CUDA context broke: AcceleratorError: CUDA error: an illegal memory access"
    for said in [death["error"], next(e for e in crashes if cuda_error in e["message"])]:  # the driver, the job
        assert cuda_error in said["message"] and "in predict" in said["crash_tail"]
        assert said["crash_tail"].endswith("an illegal memory access was encountered (injected: DHGEN_TEST_FAULT)")
    for r in summary.records:
        assert frame_digests(Path(r.output)) == local_digests["short"]


def test_a_model_that_cannot_be_loaded_fails_every_job_with_model_load_error(ray_cluster, tmp_path):
    import torch  # the test process only: a real checkpoint, of another architecture (passes the up-front check)

    checkpoint = tmp_path / "other.pth"
    torch.save({"state_dict": {"module.face_encoder_blocks.0.0.submodule.weight": torch.zeros(2, 2)}}, checkpoint)
    options = RenderOptions(model=ModelOptions(name="wav2lip", checkpoint=checkpoint))
    run = RunOptions(out_dir=tmp_path, executor="ray", ray_address=ray_cluster.address, jobs=1, job_timeout=90)
    summary = render(_jobs(tmp_path, 3), options, run)

    assert [(r.status, r.error["type"]) for r in summary.records] == [("failed", "ModelLoadError")] * 3
    assert all(str(checkpoint) in r.error["message"] and r.error["hint"] for r in summary.records)
    assert all(r.attempts <= 1 for r in summary.records)  # not retried: the same weights fail everywhere
    assert not list(tmp_path.glob("*.mp4"))
    _wait_until(lambda: not _live_actors(), 10, "the run's actors to go")


def _write_manifest(tmp_path: Path, n: int) -> Path:
    return _manifest(tmp_path, *[SHORT_AUDIO] * n)


def _manifest(tmp_path: Path, *audios: Path) -> Path:
    """A manifest of jobs j0, j1, ... on these audio files, in order."""
    manifest = tmp_path / "jobs.csv"
    manifest.write_text("id,audio,avatar\n" + "".join(f"j{i},{a},{AVATAR}\n" for i, a in enumerate(audios)))
    return manifest


def _records(out: Path) -> list[dict]:
    log = out / "results.jsonl"
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def test_sigterm_to_the_driver_stops_the_run_on_the_cluster_and_resume_finishes_it(ray_cluster, tmp_path):
    out = tmp_path / "out"
    manifest = _write_manifest(tmp_path, 6)
    ray_args = ["--executor", "ray", "--ray-address", ray_cluster.address, "--jobs", "1"]
    driver = subprocess.Popen(
        [*DHGEN, "render", str(manifest), "--out", str(out), *ray_args, "--progress", "json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _wait_until(lambda: len(_records(out)) >= 1 or driver.poll() is not None, 90, "a first job to finish")
        assert driver.poll() is None, driver.stderr.read()[-3000:]
        started = time.monotonic()
        driver.send_signal(signal.SIGTERM)
        stdout, stderr = driver.communicate(timeout=15)
    finally:
        driver.kill()
    assert driver.returncode == 143, stderr[-3000:]
    assert time.monotonic() - started < 10
    events = [json.loads(line) for line in stdout.splitlines()]
    pids = {e["pid"] for e in events if e["event"] in ("job_started", "worker_started")}
    _wait_until(lambda: not any(alive(pid) for pid in pids), 10, "the run's processes to end")
    _wait_until(lambda: not _live_actors(), 10, "the run's actors to go")
    done = {r["job_id"] for r in _records(out)}
    assert 1 <= len(done) < 6
    assert sorted(p.name for p in out.glob("*.mp4")) == sorted(f"{j}.mp4" for j in done)
    assert _no_partials(out)

    resumed = subprocess.run(
        [*DHGEN, "render", str(manifest), "--out", str(out), *ray_args, "--resume", "--progress", "none"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    last = {r["job_id"]: r["status"] for r in _records(out)[len(done) :]}
    assert last == {f"j{i}": "skipped" if f"j{i}" in done else "succeeded" for i in range(6)}


def test_a_killed_driver_process_ends_the_run_with_cluster_lost_and_ray_ends_its_tasks(ray_cluster, tmp_path):
    watcher = EventWatcher()
    killed = {}

    def kill_the_driver_process():
        killed["job_pid"] = watcher.wait_for(_started("j0"))["pid"]
        watcher.wait_for(_progress_of("j0"))
        (driver,) = [p for p in multiprocessing.active_children() if p.name == "dhgen-ray-driver"]
        killed["pid"] = driver.pid
        os.kill(driver.pid, signal.SIGKILL)  # as the OOM killer would

    watcher.act(kill_the_driver_process)
    summary = _ray_run(ray_cluster, tmp_path, _jobs(tmp_path, 2, AUDIO), watcher)

    assert summary.exit_code == 1 and [r.status for r in summary.records] == ["failed", "failed"]
    for record in summary.records:
        error = record.error
        assert error["type"] == "ClusterLost" and error["retryable"] and error["unreachable_s"] is None
        assert f"Ray driver process (pid {killed['pid']}) was killed by SIGKILL" in error["message"]
        assert "takes connections" in error["message"] and ray_cluster.address in error["message"]
    assert summary.records[0].error["node"] == "127.0.0.1" and summary.records[0].attempts == 1
    (lost,) = [e for e in watcher.events if e["event"] == "incident" and e["error"]["type"] == "ClusterLost"]
    assert lost["job_ids"] == ["j0", "j1"] and watcher.events[-1]["event"] == "run_finished"
    assert not list(tmp_path.glob("*.mp4")) and _no_partials(tmp_path)
    _wait_until(lambda: not alive(killed["job_pid"]), 30, "Ray to end the dead driver's task")
    _wait_until(lambda: not _live_actors(), 30, "Ray to end the dead driver's actors")


def test_the_driver_and_the_job_tasks_do_not_import_torch():
    modules = "dhgen.executors.raycluster.executor, dhgen.executors.raycluster.jobtask, dhgen.pipeline"
    code = f"import sys, {modules}; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert result.stdout.strip() == "False"


def _listening(names: tuple[str, ...]) -> dict[int, set[str]]:
    """pid -> local addresses it listens on, for processes with one of `names` (from `ss`)."""
    out = subprocess.run(["ss", "-Htlnp"], capture_output=True, text=True, timeout=10).stdout
    found: dict[int, set[str]] = {}
    for line in out.splitlines():
        for name, pid in re.findall(r'\(\("([^"]+)",pid=(\d+)', line):
            if name in names:
                found.setdefault(int(pid), set()).add(line.split()[3].rsplit(":", 1)[0])
    return found


def _descends_from(pid: int, ancestor: int) -> bool:
    """`pid` is `ancestor`'s child, grandchild, ... (other runs on this machine start Ray processes too)."""
    while pid > 1:
        try:
            pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            return False
        if pid == ancestor:
            return True
    return False


def test_without_an_address_a_private_ray_on_127_0_0_1_runs_the_batch_and_is_gone_after(tmp_path):
    ours = ("gcs_server", "raylet")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    cmd = [*DHGEN, "render", "--audio", str(SHORT_AUDIO), "--avatar", str(AVATAR), "-o", str(tmp_path / "o.mp4")]
    driver = subprocess.Popen(
        [*cmd, "--executor", "ray", "--progress", "none"], env=env, stderr=subprocess.PIPE, text=True
    )
    seen: dict[int, set[str]] = {}
    try:
        while driver.poll() is None:
            for pid, addresses in _listening(ours).items():
                if _descends_from(pid, driver.pid):  # started by dhgen's driver process
                    seen.setdefault(pid, set()).update(addresses)
            time.sleep(0.5)
        stderr = driver.communicate(timeout=120)[1]
    finally:
        driver.kill()
    assert driver.returncode == 0, stderr[-3000:]
    assert frame_digests(tmp_path / "o.mp4")
    assert seen and all(a in ("127.0.0.1", "[::ffff:127.0.0.1]") for addresses in seen.values() for a in addresses)
    _wait_until(lambda: not any(alive(pid) for pid in seen), 15, "the private Ray to stop")


def test_the_ray_executor_serves_jobs_as_they_arrive_and_cancels_one(ray_cluster, tmp_path):
    """`serve` (what `dhgen serve --executor ray` runs): a job submitted while the actors wait renders; a running
    job cancelled ends `cancelled`, its task gone; a closed feed ends the executor."""
    import threading

    from dhgen.executors.feed import JobFeed
    from dhgen.executors.raycluster import RayExecutor
    from dhgen.results import new_record

    run = RunOptions(out_dir=tmp_path, executor="ray", ray_address=ray_cluster.address, jobs=1, job_timeout=90)
    feed, watcher, records = JobFeed(), EventWatcher(), []
    long_audio = write_clip(tmp_path / "long.wav", 4.4)
    serving = threading.Thread(target=lambda: records.extend(RayExecutor(OPTIONS, run).serve(feed, watcher)))
    serving.start()
    try:
        watcher.wait_for(lambda e: e["event"] == "worker_started", timeout=60)
        first = Job("first", SHORT_AUDIO, AVATAR, tmp_path / "first.mp4")
        feed.submit(first, new_record(first, None))
        deadline = time.monotonic() + 60
        while not records and time.monotonic() < deadline:
            time.sleep(0.05)
        assert [r.status for r in records] == ["succeeded"] and Path(records[0].output).is_file()
        doomed = Job("doomed", long_audio, AVATAR, tmp_path / "doomed.mp4")
        feed.submit(doomed, new_record(doomed, None))
        watcher.wait_for(_progress_of("doomed"), timeout=60)
        pid = watcher.wait_for(_started("doomed"))["pid"]
        feed.cancel("doomed")
        feed.close()
        serving.join(60)
        assert not serving.is_alive()
    finally:
        feed.stop()
        serving.join(30)
    cancelled = records[-1]
    assert (cancelled.job_id, cancelled.status, cancelled.error["type"]) == ("doomed", "cancelled", "Cancelled")
    assert not (tmp_path / "doomed.mp4").exists()
    deadline = time.monotonic() + 10
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(pid)  # the task's worker process was stopped


# --- the encoder of a job is decided on its node ----------------------------------------------------------------


def _spec(encode: EncodeOptions, gpu_ids: tuple = ()):
    from dhgen.executors.raycluster.jobtask import TaskSpec

    job = Job("j", SHORT_AUDIO, AVATAR, Path("j.mp4"))
    return TaskSpec(job, RenderOptions(encode=encode), "run", 1, 1, False, 10.0, gpu_ids=gpu_ids)


def test_a_job_encodes_with_what_opens_on_its_node_not_on_the_driver():
    """The driver (a GPU box) took NVENC for `auto`; this node, without NVENC, takes x264, and says why."""
    from dhgen.encoders import ResolvedEncoder, probe, with_encoder
    from dhgen.executors.raycluster.jobtask import _node_options

    if probe("h264_nvenc") is None:
        pytest.skip("NVENC opens on this machine")
    on_driver = with_encoder(EncodeOptions(), ResolvedEncoder("h264_nvenc", "h264", "auto: h264_nvenc opens here"))
    encode = _node_options(_spec(on_driver, gpu_ids=("0",))).encode
    assert encode.encoder == "libx264" and encode.gpu is None
    assert encode.encoder_reason.startswith("auto: h264_nvenc does not open here (")


def test_a_job_task_on_a_gpu_node_is_not_hidden_the_nodes_gpus(ray_cluster):
    """A task that asks for no GPU gets CUDA_VISIBLE_DEVICES="" from Ray (before Ray 2.4x, or with the override
    below): NVENC could not open. Job tasks on GPU nodes run with SEES_GPUS, and keep the node's GPUs."""
    import ray

    from dhgen.executors.raycluster.cluster import SEES_GPUS

    def cuda_visible_devices():  # defined here: Ray ships it by value (tests are not importable on the nodes)
        return os.environ.get("CUDA_VISIBLE_DEVICES")

    old_ray = {"RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "1"}
    task = ray.remote(cuda_visible_devices)
    hidden = task.options(num_cpus=0, runtime_env={"env_vars": old_ray}).remote()
    seen = task.options(num_cpus=0, runtime_env={"env_vars": {**old_ray, **SEES_GPUS["env_vars"]}}).remote()
    assert ray.get(hidden, timeout=60) == "" and ray.get(seen, timeout=60) != ""


# --- the head lost (on clusters of their own) --------------------------------------------------------------------

HEAD_TIMEOUT_S = 3.0  # --ray-head-timeout of the tests that lose the head for good


@pytest.fixture(scope="module")
def long_audio(tmp_path_factory) -> Path:
    """22 s of speech (the fixture five times): a job that takes a while (1.5 s on an idle 2-core box, many times
    that on a loaded one); the tests that need it to outlast the bound stop its process (SIGSTOP)."""
    return _repeated(tmp_path_factory.mktemp("long") / "long.wav", 5)


@pytest.fixture(scope="module")
def endless_audio(tmp_path_factory) -> Path:
    """7 minutes of speech (the fixture 100 times, 14 MB): a job that cannot finish within HEAD_TIMEOUT_S on any
    machine, for a test whose job process cannot be reached to stop it (it is never rendered to the end)."""
    return _repeated(tmp_path_factory.mktemp("endless") / "endless.wav", 100)


def _repeated(target: Path, times: int) -> Path:
    with wave.open(str(AUDIO)) as src:
        params, data = src.getparams(), src.readframes(src.getnframes())
    with wave.open(str(target), "wb") as dst:
        dst.setparams(params)
        dst.writeframes(data * times)
    return target


@contextlib.contextmanager
def _own_cluster(worker_node: bool = False, **head_args):
    """A cluster of one node that runs the jobs: the head, or `worker_node` (the head then has no CPU, as the
    README's head node)."""
    from ray.cluster_utils import Cluster

    args = {"num_cpus": 0 if worker_node else 1, "include_dashboard": False, **RAY_NODE, **head_args}
    cluster = Cluster(initialize_head=True, head_node_args=args)
    try:
        if worker_node:
            cluster.add_node(num_cpus=1, **RAY_NODE)
        yield cluster
    finally:
        cluster.shutdown()


@pytest.fixture(scope="module")
def restartable_head(tmp_path_factory):
    """A one-node cluster whose head keeps its state on disk (GCS fault tolerance with Ray's embedded RocksDB;
    external Redis in production, README), so a GCS started again takes the cluster back. Its two tests run in
    file order: the first restarts the GCS, the second (last on it) kills it for good."""
    storage = {"gcs_storage": "rocksdb", "gcs_storage_path": str(tmp_path_factory.mktemp("gcs"))}
    with _own_cluster(_system_config=storage) as cluster:
        yield cluster


class _Driver:
    """`dhgen render --executor ray` in a process of its own. With --progress json its events arrive as they come
    (every stdout line must be one); otherwise stderr has what a person sees."""

    def __init__(self, manifest: Path, out: Path, address: str, *args: str, progress: str = "json") -> None:
        cmd = [*DHGEN, "render", str(manifest), "--out", str(out), "--executor", "ray", "--ray-address", address]
        self.process = subprocess.Popen(
            [*cmd, "--jobs", "1", "--progress", progress, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.events = EventWatcher()
        self.stderr: list[str] = []
        self._readers = [
            threading.Thread(target=self._read_events, daemon=True),
            threading.Thread(target=lambda: self.stderr.extend(self.process.stderr), daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    def _read_events(self) -> None:
        for line in self.process.stdout:
            self.events(json.loads(line))

    def wait(self, timeout: float) -> int:
        """Its exit code; it must end by itself within `timeout` seconds."""
        try:
            code = self.process.wait(timeout)
        finally:
            self.process.kill()
        for reader in self._readers:
            reader.join(10)
        return code


def _kill_gcs(cluster) -> None:
    """SIGKILL the head's GCS server process, as the OOM killer or a crash would."""
    gcs = cluster.head_node.all_processes["gcs_server"][0].process
    os.kill(gcs.pid, signal.SIGKILL)
    gcs.wait(10)
    cluster.head_node.kill_gcs_server(check_alive=False)  # Ray's bookkeeping of it


def _resume_on(cluster, manifest: Path, out: Path) -> dict[str, str]:
    """`--resume` on another cluster: each job's status in the records it added."""
    before = len(_records(out))
    cmd = [*DHGEN, "render", str(manifest), "--out", str(out), "--executor", "ray", "--ray-address", cluster.address]
    resumed = subprocess.run([*cmd, "--resume", "--progress", "none"], capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    return {r["job_id"]: r["status"] for r in _records(out)[before:]}


def _assert_cluster_lost(record: dict, address: str) -> dict:
    error = record["error"]
    assert record["status"] == "failed" and error["type"] == "ClusterLost" and error["retryable"]
    assert address in error["message"] and record["job_id"] in error["message"] and error["address"] == address
    assert "--resume" in error["hint"] and record["errors"][-1] == error
    return error


def test_a_head_that_comes_back_within_the_bound_costs_nothing(restartable_head, long_audio, tmp_path):
    out, manifest = tmp_path / "out", _manifest(tmp_path, long_audio, SHORT_AUDIO)
    driver = _Driver(manifest, out, restartable_head.address)  # the default --ray-head-timeout, 30 s
    driver.events.wait_for(_started("j0"))
    killed = time.monotonic()
    _kill_gcs(restartable_head)
    driver.events.wait_for(lambda e: e["event"] == "ray_head" and not e["answering"] and e["_t"] > killed)
    restartable_head.head_node.start_gcs_server()
    code = driver.wait(timeout=90)

    assert code == 0, "".join(driver.stderr)[-3000:]
    records = _records(out)
    assert [(r["status"], r["attempts"], r["errors"]) for r in records] == [("succeeded", 1, [])] * 2
    assert all(frame_digests(Path(r["output"])) for r in records)
    back = driver.events.wait_for(lambda e: e["event"] == "ray_head" and e["answering"] and e["_t"] > killed, 0)
    assert back["silent_s"] > 0 and driver.events.events[-1]["event"] == "run_finished"


def test_sigkill_of_the_head_gcs_ends_the_run_with_cluster_lost_and_resume_on_another_cluster_finishes_it(
    restartable_head, long_audio, ray_cluster, tmp_path
):
    out, address = tmp_path / "out", restartable_head.address
    manifest = _manifest(tmp_path, SHORT_AUDIO, long_audio, SHORT_AUDIO)
    driver, running = _Driver(manifest, out, address, "--ray-head-timeout", str(HEAD_TIMEOUT_S)), {}
    try:
        driver.events.wait_for(lambda e: e["event"] == "job_finished")  # j0 (one job at a time on one CPU)
        assert "_raylet" not in Path(f"/proc/{driver.process.pid}/maps").read_text()  # no Ray in dhgen's process
        running = driver.events.wait_for(_started("j1"))
        driver.events.wait_for(_progress_of("j1"))
        os.kill(running["pid"], signal.SIGSTOP)  # j1 cannot finish within the bound, however fast this machine is
        _kill_gcs(restartable_head)  # for good
        code = driver.wait(timeout=HEAD_TIMEOUT_S + 60)
    finally:
        if running:
            with contextlib.suppress(ProcessLookupError):
                os.kill(running["pid"], signal.SIGCONT)
        restartable_head.shutdown()  # the last test on it; j1's task would render on until then

    assert code == 1, "".join(driver.stderr)[-3000:]
    records = {r["job_id"]: r for r in _records(out)}
    assert records["j0"]["status"] == "succeeded" and Path(records["j0"]["output"]).exists()
    for job_id in ("j1", "j2"):
        error = _assert_cluster_lost(records[job_id], address)
        assert error["unreachable_s"] >= HEAD_TIMEOUT_S and f"{HEAD_TIMEOUT_S:.0f}" in error["message"]
    lost = records["j1"]["error"]
    assert lost["node_id"] == running["node_id"] and running["node_id"][:8] in lost["message"]
    assert records["j1"]["attempts"] == 1 and records["j2"]["attempts"] == 0 and "not started" in str(records["j2"])
    kinds = [e["event"] for e in driver.events.events]
    assert kinds[-1] == "run_finished" and kinds.count("job_finished") == 3
    assert driver.events.events[-1]["failed"] == 2 and driver.events.events[-1]["succeeded"] == 1
    quiet = driver.events.wait_for(lambda e: e["event"] == "ray_head", timeout=0)
    assert not quiet["answering"] and quiet["address"] == address and quiet["timeout_s"] == HEAD_TIMEOUT_S
    assert sorted(p.name for p in out.glob("*.mp4")) == ["j0.mp4"] and _no_partials(out)

    assert _resume_on(ray_cluster, manifest, out) == {"j0": "skipped", "j1": "succeeded", "j2": "succeeded"}


def test_a_removed_head_node_ends_the_run_with_cluster_lost(endless_audio, tmp_path):
    """Every Ray process of the head killed (GCS, raylet, workers). Which node's raylet the driver uses is Ray's
    choice among nodes of one IP: with the head's, the driver process dies; with the worker node's, it goes on
    without a head until the bound. Either way the run ends by itself with every job recorded (and --resume goes
    on from there as after the GCS's death above)."""
    out, manifest = tmp_path / "out", _manifest(tmp_path, SHORT_AUDIO, endless_audio, SHORT_AUDIO)
    work_before = set(WORK_ROOT.glob("*"))
    try:
        with _own_cluster(worker_node=True) as cluster:
            address = cluster.address
            driver = _Driver(manifest, out, address, "--ray-head-timeout", str(HEAD_TIMEOUT_S), progress="plain")
            _wait_until(lambda: _records(out) or driver.process.poll() is not None, 90, "a first job to finish")
            cluster.remove_node(cluster.head_node, allow_graceful=False)
            code = driver.wait(timeout=HEAD_TIMEOUT_S + 60)
    finally:
        for left in set(WORK_ROOT.glob("*")) - work_before:  # the dead node's temp folder (this machine's /tmp)
            shutil.rmtree(left, ignore_errors=True)

    assert code == 1, "".join(driver.stderr)[-3000:]
    records = {r["job_id"]: r for r in _records(out)}
    assert [records[j]["status"] for j in ("j0", "j1", "j2")] == ["succeeded", "failed", "failed"]
    for job_id in ("j1", "j2"):
        _assert_cluster_lost(records[job_id], address)
    assert sorted(p.name for p in out.glob("*.mp4")) == ["j0.mp4"] and _no_partials(out)
    summary = "".join(driver.stderr)
    assert "run finished: 1 succeeded, 2 failed, 0 skipped" in summary
    rows = [rf"Z\s+{j}\s+failed\s+\d\s+\S+\s+ClusterLost: lost the Ray cluster: .*{address}" for j in ("j1", "j2")]
    assert all(re.search(row, summary) for row in rows), summary[-3000:]
