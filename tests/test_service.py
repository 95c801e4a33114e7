"""`dhgen serve`: a real server (uvicorn in a subprocess, 127.0.0.1, a free port), a real HTTP client (urllib),
real renders with the embedded model, real signals.

Most tests share one server (module scope); the kill/restart and drain tests start their own on their own state.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
import wave
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import av
import pytest
from conftest import FIXTURES, EventWatcher, alive, children_of

TOKEN = "test-token-0123456789abcdef"
DHGEN = [sys.executable, "-m", "dhgen.cli", "serve"]
START_S = 90.0  # a server up, its worker loaded (a loaded 2-core box)
JOB_S = 90.0  # a short job finished


# --- a server in a subprocess, and a client ----------------------------------------------------------------------


class Server:
    def __init__(self, state: Path, input_root: Path, *extra: str, token: str | None = TOKEN) -> None:
        self.state, self.token = state, token
        self.log = state.parent / f"{state.name}-{uuid.uuid4().hex[:6]}.log"
        args = [*DHGEN, "--state", str(state), "--port", "0", "--input-root", str(input_root), *extra]
        env = (
            {**os.environ, "DHGEN_TOKEN": token}
            if token
            else {k: v for k, v in os.environ.items() if k != "DHGEN_TOKEN"}
        )
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
        self.url = self._wait_for_address()
        self.wait_ready()

    def _wait_for_address(self) -> str:
        deadline = time.monotonic() + START_S
        while time.monotonic() < deadline:
            found = re.search(r"listening on (http://127\.0\.0\.1:\d+)", self.log.read_text())
            if found:
                return found.group(1)
            if self.proc.poll() is not None:
                raise AssertionError(f"the server exited {self.proc.returncode}:\n{self.log.read_text()}")
            time.sleep(0.1)
        raise TimeoutError(f"the server did not listen:\n{self.log.read_text()}")

    def wait_ready(self) -> dict:
        deadline = time.monotonic() + START_S
        while time.monotonic() < deadline:
            status, body = self.call("GET", "/readyz")
            if status == 200:
                return body
            time.sleep(0.1)
        raise TimeoutError(f"never ready: {body}")

    def call(self, method: str, path: str, body=None, headers: dict | None = None, token: str | None = "default"):
        """(status, parsed JSON or raw bytes); never raises for an HTTP error status."""
        headers = dict(headers or {})
        token = self.token if token == "default" else token
        if token:
            headers["Authorization"] = f"Bearer {token}"
        data = body
        if isinstance(body, dict):
            data, headers["Content-Type"] = json.dumps(body).encode(), "application/json"
        request = urllib.request.Request(self.url + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return response.status, _parsed(response.read(), response.headers)
        except urllib.error.HTTPError as exc:
            return exc.code, _parsed(exc.read(), exc.headers)

    def submit(self, **fields) -> dict:
        status, body = self.call("POST", "/v1/jobs", fields)
        assert status == 201, body
        return body

    def wait_for(self, job_id: str, predicate, timeout: float = JOB_S) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status, job = self.call("GET", f"/v1/jobs/{job_id}")
            assert status == 200, job
            if predicate(job):
                return job
            time.sleep(0.05)
        raise TimeoutError(f"job {job_id} never got there: {job}")

    def wait_finished(self, job_id: str, timeout: float = JOB_S) -> dict:
        return self.wait_for(job_id, lambda j: j["status"] in ("succeeded", "failed", "cancelled"), timeout)

    def descendants(self) -> list[int]:
        found, frontier = [], [self.proc.pid]
        while frontier:
            kids = children_of(frontier.pop())
            found += kids
            frontier += kids
        return found

    def stop(self, signum=signal.SIGTERM, timeout: float = 60.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signum)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(10)


def _parsed(data: bytes, headers):
    if headers.get("content-type", "").startswith("application/json"):
        return json.loads(data)
    return data


class EventStream:
    """GET /v1/events read by a thread: each `data:` line's JSON goes to an EventWatcher."""

    def __init__(self, server: Server) -> None:
        self.watcher = EventWatcher()
        headers = {"Authorization": f"Bearer {server.token}"} if server.token else {}
        self._response = urllib.request.urlopen(urllib.request.Request(server.url + "/v1/events", headers=headers))
        self._connected = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()
        assert self._connected.wait(10)

    def _read(self) -> None:
        try:
            for raw in self._response:
                line = raw.decode().strip()
                if line.startswith(":"):
                    self._connected.set()
                elif line.startswith("data: "):
                    self.watcher(json.loads(line[6:]))
        except Exception:  # noqa: BLE001 - closed by close(): the stream ends
            pass

    def close(self) -> None:
        self._response.close()


def clip(root: Path, name: str, seconds: float) -> str:
    """A WAV of `seconds` under `root`, the fixture speech looped: its name relative to root."""
    with wave.open(str(FIXTURES / "speech.wav")) as src:
        params, frames = src.getparams(), src.readframes(src.getnframes())
    need = int(seconds * params.framerate) * params.sampwidth * params.nchannels
    with wave.open(str(root / name), "wb") as dst:
        dst.setparams(params)
        dst.writeframes((frames * (need // len(frames) + 1))[:need])
    return name


def multipart(fields: dict[str, str], files: dict[str, Path]) -> tuple[bytes, dict]:
    boundary = uuid.uuid4().hex
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode() for k, v in fields.items()
    ]
    for name, path in files.items():
        head = f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{path.name}"\r\n'
        parts.append(head.encode() + b"Content-Type: application/octet-stream\r\n\r\n" + path.read_bytes() + b"\r\n")
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    return body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}


def assert_valid_mp4(path: Path, seconds: float) -> None:
    with av.open(str(path)) as container:
        assert [s.type for s in container.streams] == ["video", "audio"]
        frames = sum(1 for _ in container.decode(video=0))
    assert abs(frames - round(seconds * 25)) <= 2


# --- the shared server -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("media")
    for name in ("avatar.mp4", "garbage.wav", "speech.wav"):
        shutil.copy(FIXTURES / name, root / name)
    clip(root, "one.wav", 1.0)
    clip(root, "long.wav", 30.0)  # cancelled early
    clip(root, "mid.wav", 12.0)
    (root / "in").mkdir()
    clip(root / "in", "two.wav", 2.0)
    outside = tmp_path_factory.mktemp("outside")
    (outside / "secret.wav").write_bytes((root / "one.wav").read_bytes())
    (root / "link.wav").symlink_to(outside / "secret.wav")
    return root


@pytest.fixture(scope="module")
def server(tmp_path_factory, media):
    state = tmp_path_factory.mktemp("serve") / "state"
    server = Server(state, media, "--jobs", "2", "--max-queue", "20", "--max-upload", "1M", "--retries", "1")
    yield server
    server.stop()


def test_submit_poll_download(server, media):
    events = EventStream(server)
    job = server.submit(id="first", audio="in/two.wav", avatar="avatar.mp4", crf=23, face="left", x_customer="acme")
    assert job["status"] in ("queued", "running") and job["settings"] == {"crf": 23, "face": "left"}
    done = server.wait_finished("first")
    assert done["status"] == "succeeded" and done["progress"] == 100, done
    record = done["record"]
    assert record["status"] == "succeeded" and record["meta"] == {"x_customer": "acme"}
    assert record["settings"]["crf"] == 23 and record["encoder"]["crf"] == 23 and record["input_fingerprint"]
    assert record["face"]["choice"] == "left" and record["model"]["name"] == "mouthwarp"
    status, data = server.call("GET", "/v1/jobs/first/output")
    assert status == 200
    out = server.state.parent / "first.mp4"
    out.write_bytes(data)
    assert_valid_mp4(out, 2.0)
    status, part = server.call("GET", "/v1/jobs/first/output", headers={"Range": "bytes=0-99"})
    assert status == 206 and part == data[:100]
    seen = events.watcher.wait_for(lambda e: e["event"] == "job_finished" and e["record"]["job_id"] == "first")
    assert seen["record"]["frames_digest"] == record["frames_digest"]
    kinds = {e["event"] for e in events.watcher.events if e.get("job_id") == "first"}
    assert {"job_started", "job_progress"} <= kinds
    events.close()


def test_the_same_id_with_the_same_inputs_is_the_same_job_and_other_inputs_conflict(server, media):
    first = server.submit(id="twice", audio="one.wav", avatar="avatar.mp4")
    status, again = server.call("POST", "/v1/jobs", {"id": "twice", "audio": "one.wav", "avatar": "avatar.mp4"})
    assert status == 200 and again["id"] == "twice" and again["submitted_at"] == first["submitted_at"]
    status, body = server.call("POST", "/v1/jobs", {"id": "twice", "audio": "in/two.wav", "avatar": "avatar.mp4"})
    assert status == 409 and body["error"]["type"] == "Conflict" and body["error"]["hint"]
    status, body = server.call(
        "POST", "/v1/jobs", {"id": "twice", "audio": "one.wav", "avatar": "avatar.mp4", "crf": 30}
    )
    assert status == 409  # the settings are part of the inputs
    status, page = server.call("GET", "/v1/jobs?limit=100")
    assert [j["id"] for j in page["jobs"]].count("twice") == 1
    assert server.wait_finished("twice")["status"] == "succeeded"


def test_cancel_stops_the_running_job_and_delete_removes_a_finished_one(server, media):
    server.submit(id="cancel-me", audio="long.wav", avatar="avatar.mp4")
    running = server.wait_for("cancel-me", lambda j: j["status"] == "running" and j.get("decoded"))
    pid = running["pid"]
    assert alive(pid) and running["last_progress_at"]
    status, job = server.call("DELETE", "/v1/jobs/cancel-me")
    assert status == 200 and job["status"] == "cancelled", job
    assert job["record"]["status"] == "cancelled" and job["error"]["type"] == "Cancelled" and job["error"]["message"]
    deadline = time.monotonic() + 10
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(pid)
    assert not (server.state / "outputs" / "cancel-me.mp4").exists()
    assert server.call("DELETE", "/v1/jobs/cancel-me")[0] == 204
    assert server.call("GET", "/v1/jobs/cancel-me")[0] == 404
    # the server goes on: another job still renders (a fresh job process replaced the killed one)
    server.submit(id="after-cancel", audio="one.wav", avatar="avatar.mp4")
    assert server.wait_finished("after-cancel")["status"] == "succeeded"


def test_a_killed_inference_worker_costs_the_job_nothing(server, media):
    worker = server.wait_ready()["workers"][0]["pid"]
    server.submit(id="worker-dies", audio="mid.wav", avatar="avatar.mp4")
    server.wait_for("worker-dies", lambda j: (j.get("inferred") or 0) > 0)
    os.kill(worker, signal.SIGSTOP)  # the job's next batches wait at the worker ...
    time.sleep(0.5)
    os.kill(worker, signal.SIGKILL)  # ... which dies holding them
    done = server.wait_finished("worker-dies")
    assert done["status"] == "succeeded", done
    crashes = [e for e in done["record"]["errors"] if e["type"] == "WorkerCrashed"]
    assert crashes and crashes[0]["signal"] == "SIGKILL" and crashes[0]["pid"] == worker
    assert server.wait_ready()["workers"][0]["pid"] != worker


def test_bad_media_fails_its_job_with_its_type(server, media):
    server.submit(id="garbage", audio="garbage.wav", avatar="avatar.mp4")
    done = server.wait_finished("garbage")
    assert done["status"] == "failed" and done["error"]["type"] == "AudioDecodeError"
    assert done["error"]["message"] and done["error"]["hint"] and done["attempts"] == 1  # not retried
    status, body = server.call("GET", "/v1/jobs/garbage/output")
    assert status == 409 and body["error"]["message"]


@pytest.mark.parametrize(
    "fields, status, kind",
    [
        ({"audio": "../outside/secret.wav", "avatar": "avatar.mp4"}, 403, "Refused"),
        ({"audio": "/etc/passwd", "avatar": "avatar.mp4"}, 403, "Refused"),
        ({"audio": "link.wav", "avatar": "avatar.mp4"}, 403, "Refused"),  # a symlink out of the root
        ({"audio": "http://example.com/a.wav", "avatar": "avatar.mp4"}, 403, "Refused"),
        ({"audio": "nope.wav", "avatar": "avatar.mp4"}, 422, "MissingInputError"),
        ({"audio": "one.wav"}, 422, "Invalid"),
        ({"id": "../x", "audio": "one.wav", "avatar": "avatar.mp4"}, 422, "Invalid"),
        ({"audio": "one.wav", "avatar": "avatar.mp4", "crf": 99}, 422, "Invalid"),
        ({"audio": "one.wav", "avatar": "avatar.mp4", "face": "middle"}, 422, "Invalid"),
        ({"audio": "one.wav", "avatar": "avatar.mp4", "colour": "red"}, 422, "Invalid"),
        ({"audio": "one.wav", "avatar": "avatar.mp4", "output": "../x.mp4"}, 422, "Invalid"),
    ],
)
def test_refused_submits(server, media, fields, status, kind):
    got, body = server.call("POST", "/v1/jobs", fields)
    assert (got, body["error"]["type"]) == (status, kind), body
    assert body["error"]["message"] and body["error"]["hint"]


def test_uploads_are_rendered_and_an_oversize_one_is_refused(server, media):
    body, headers = multipart(
        {"id": "uploaded", "crf": "21"}, {"audio": media / "one.wav", "avatar": media / "avatar.mp4"}
    )
    status, job = server.call("POST", "/v1/jobs", body, headers)
    assert status == 201, job
    done = server.wait_finished("uploaded")
    assert done["status"] == "succeeded" and done["record"]["settings"]["crf"] == 21
    uploads = list((server.state / "uploads").iterdir())
    big = media / "big.wav"
    clip(media, "big.wav", 40.0)  # 1.3 MB: over --max-upload 1M
    body, headers = multipart({"id": "too-big"}, {"audio": big, "avatar": media / "avatar.mp4"})
    status, refused = server.call("POST", "/v1/jobs", body, headers)
    assert status == 413 and refused["error"]["type"] == "TooLarge"
    assert list((server.state / "uploads").iterdir()) == uploads  # nothing of it kept
    assert server.call("GET", "/v1/jobs/too-big")[0] == 404
    assert server.call("DELETE", "/v1/jobs/uploaded")[0] == 204
    assert not any(p in uploads for p in (server.state / "uploads").iterdir())


def test_fifty_concurrent_submits_are_accepted_or_told_to_retry(server, media):
    def submit(i: int):
        return server.call("POST", "/v1/jobs", {"id": f"burst-{i}", "audio": "one.wav", "avatar": "avatar.mp4"})

    with ThreadPoolExecutor(50) as pool:
        answers = list(pool.map(submit, range(50)))
    accepted = [body["id"] for status, body in answers if status == 201]
    refused = [body for status, body in answers if status != 201]
    assert accepted and all(b["error"]["type"] == "QueueFull" for b in refused)
    assert len(accepted) <= 20 and len(accepted) + len(refused) == 50
    for job_id in accepted:
        assert server.wait_finished(job_id)["status"] == "succeeded"


def test_a_heygem_client_works_unchanged(server, media):
    def post(path, payload):
        request = urllib.request.Request(
            server.url + path,
            data=json.dumps(payload).encode(),
            headers={"Content-Type": "application/json", "Authorization": f"Bearer {TOKEN}"},
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())

    def get(path):
        request = urllib.request.Request(server.url + path, headers={"Authorization": f"Bearer {TOKEN}"})
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())

    payload = {
        "audio_url": "in/two.wav",
        "video_url": "avatar.mp4",
        "code": "hg-1",
        "chaofen": 0,
        "watermark_switch": 0,
    }
    submitted = post("/easy/submit", {**payload, "pn": 1})
    assert submitted["code"] == 10000 and submitted["success"] is True
    progress, deadline = [], time.monotonic() + JOB_S
    while time.monotonic() < deadline:
        result = get("/easy/query?code=hg-1")
        assert result["code"] == 10000
        progress.append(result["data"]["progress"])
        if result["data"]["status"] == 2 and result["data"]["progress"] == 100:
            break
        assert result["data"]["status"] == 1
        time.sleep(0.1)
    assert_valid_mp4(Path(result["data"]["result"]), 2.0)
    assert progress == sorted(progress)
    assert get("/easy/query?code=hg-1")["data"]["status"] == 2  # still there after it was read
    assert get("/easy/query?code=nope")["code"] == 10004
    assert post("/easy/submit", {"video_url": "avatar.mp4", "code": "hg-2"})["code"] == 10002
    bad = post("/easy/submit", {"audio_url": "garbage.wav", "video_url": "avatar.mp4", "code": "hg-3"})
    assert bad["code"] == 10000
    deadline = time.monotonic() + JOB_S
    while (failed := get("/easy/query?code=hg-3"))["data"]["status"] == 1 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert failed["data"]["status"] == 3 and failed["data"]["msg"].startswith("AudioDecodeError: ")


def test_tokens_probes_metrics_and_schema(server, media):
    assert server.call("GET", "/healthz", token=None) == (200, {"status": "ok"})
    for token in (None, "wrong-token-0123456789"):
        status, body = server.call("GET", "/v1/jobs", token=token)
        assert status == 401 and body["error"]["type"] == "Unauthorized" and body["error"]["hint"]
    assert server.call("POST", "/easy/submit", {"code": "x"}, token=None)[0] == 401
    ready = server.wait_ready()
    assert ready["ready"] and ready["workers"][0]["device"] == "cpu"
    status, text = server.call("GET", "/metrics")
    assert status == 200 and b'dhgen_jobs{out_dir="' in text and b"dhgen_frames_rendered_total" in text
    status, schema = server.call("GET", "/openapi.json")
    request = schema["components"]["schemas"]["JobRequest"]
    assert {"audio", "avatar", "id", "crf", "fps", "loop", "preset", "pads", "face"} <= set(request["properties"])
    assert {"/v1/jobs", "/v1/jobs/{job_id}", "/v1/jobs/{job_id}/output", "/v1/events", "/easy/submit"} <= set(
        schema["paths"]
    )
    status, page = server.call("GET", "/v1/jobs?status=succeeded&limit=2")
    assert status == 200 and len(page["jobs"]) == 2 and page["next"]
    assert all(j["status"] == "succeeded" for j in page["jobs"])
    status, rest = server.call("GET", f"/v1/jobs?status=succeeded&limit=100&after={page['next']}")
    assert not {j["id"] for j in page["jobs"]} & {j["id"] for j in rest["jobs"]}


# --- servers of their own ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args, says",
    [(["--state", "s", "--host", "0.0.0.0"], "--token"), (["--state", "file"], "is a file, not a folder")],
    ids=["off-loopback-without-token", "state-is-a-file"],
)
def test_a_server_refuses_to_start_with_unusable_options(tmp_path, args, says):
    (tmp_path / "file").write_text("not a folder")
    env = {k: v for k, v in os.environ.items() if k != "DHGEN_TOKEN"}
    done = subprocess.run([*DHGEN, *args], capture_output=True, text=True, timeout=60, env=env, cwd=tmp_path)
    assert done.returncode == 2 and says in done.stderr and "hint:" in done.stderr
    assert not (tmp_path / "s").exists()  # nothing started, nothing written


def test_a_killed_server_loses_nothing_and_leaves_nothing_behind(tmp_path, media):
    state = tmp_path / "state"
    first = Server(state, media, "--jobs", "2", token=None)
    ids = [f"k{i}" for i in range(4)]
    for job_id in ids:
        first.submit(id=job_id, audio="speech.wav", avatar="avatar.mp4")
    first.wait_for("k0", lambda j: (j.get("encoded") or 0) > 0)
    children = first.descendants()
    assert len(children) >= 2  # the inference worker and the job processes
    first.proc.send_signal(signal.SIGKILL)
    first.proc.wait(10)
    deadline = time.monotonic() + 15
    while any(alive(pid) for pid in children) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not [pid for pid in children if alive(pid)], "a child of the killed server outlived it"

    second = Server(state, media, "--jobs", "2", token=None)
    try:
        finished = [second.wait_finished(job_id) for job_id in ids]
        assert [j["status"] for j in finished] == ["succeeded"] * 4, finished
        status, page = second.call("GET", "/v1/jobs")
        assert sorted(j["id"] for j in page["jobs"]) == ids  # nothing lost, nothing twice
        interrupted = [j for j in finished if any(e["type"] == "ServiceInterrupted" for e in j["record"]["errors"])]
        assert interrupted and all(j["attempts"] >= 2 for j in interrupted)
        for job in finished:
            assert_valid_mp4(Path(job["output"]), 4.4)
    finally:
        assert second.stop() == 0


def test_sigterm_drains_the_running_job_refuses_new_ones_and_exits_0(tmp_path, media):
    state = tmp_path / "state"
    server = Server(state, media, "--jobs", "1", "--drain-timeout", "60", token=None)
    server.submit(id="drained", audio="mid.wav", avatar="avatar.mp4")
    server.submit(id="waits", audio="one.wav", avatar="avatar.mp4")
    server.wait_for("drained", lambda j: (j.get("encoded") or 0) > 0)
    server.proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 10
    while (answer := server.call("POST", "/v1/jobs", {"audio": "one.wav", "avatar": "avatar.mp4"}))[0] != 503:
        assert time.monotonic() < deadline, answer
        time.sleep(0.05)
    assert answer[1]["error"]["type"] == "Unavailable"
    assert server.call("GET", "/readyz")[0] == 503
    assert server.proc.wait(JOB_S) == 0
    with sqlite3.connect(state / "jobs.sqlite3") as db:
        rows = dict(db.execute("SELECT id, status FROM jobs"))
    assert rows == {"drained": "succeeded", "waits": "queued"}  # the waiting job runs at the next start


# --- the engine without HTTP -------------------------------------------------------------------------------------


class LosesItsCluster:
    """An executor whose cluster is gone: it gives every job it is handed back with ClusterLost (retried in a later
    run, `dhgen.retry`), then ends, as the Ray driver does when its head stops answering."""

    def serve(self, feed, emit):
        from dhgen.results import utc_now

        while not feed.stopped:
            submissions, _ = feed.take()
            for submission in submissions:
                record = submission.record
                record.attempts += 1
                emit({"event": "job_started", "job_id": record.job_id, "attempt": record.attempts, "time": utc_now()})
                error = {"type": "ClusterLost", "message": "the Ray head stopped answering", "retryable": True}
                record.errors.append({**error, "hint": "it runs again"})
                record.error = record.errors[-1]
                yield record
            if submissions:
                return
            feed.wait(0.1)


def test_a_job_given_back_for_a_later_run_is_queued_again_and_runs_on_the_next_executor(tmp_path):
    from dhgen.executors.inprocess import InProcessExecutor
    from dhgen.options import RenderOptions, RunOptions
    from dhgen.service.engine import Engine
    from dhgen.service.store import Store

    options, made = RenderOptions(), []

    def executor():
        made.append(LosesItsCluster() if not made else InProcessExecutor(options))
        return made[-1]

    store = Store(tmp_path / "jobs.sqlite3")
    engine = Engine(store, options, RunOptions(out_dir=tmp_path / "out"), 10, executor)
    engine.start()
    try:
        fields = {"id": "a", "audio": str(FIXTURES / "speech.m4a"), "avatar": str(FIXTURES / "avatar.mp4")}
        engine.submit(fields)
        deadline = time.monotonic() + JOB_S
        while (row := store.get("a")).status != "succeeded" and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        engine.stop()
        store.close()
    assert row.status == "succeeded" and len(made) == 2
    assert [e["type"] for e in row.record["errors"]] == ["ClusterLost"] and row.record["attempts"] == 2
    assert Path(row.record["output"]).is_file()
