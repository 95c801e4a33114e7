"""The `serve` section of `make bench` (issue 16): the same short jobs through `dhgen render --jobs N` and through a
running `dhgen serve --jobs N` (submitted at once, over HTTP), alternated.

- wall ratio serve / render (goal <= 1.1). render's wall is the process's, start-up and model loading included, as
  a batch pays them; serve's runs from the first submit to the last job's end on a server that was ready (what a
  backend submitting to a long-lived service sees). The server's own start-up is reported beside.
- submit latency: each POST /v1/jobs as the client timed it (p50, p99, max).
- start latency with a free slot: one job submitted to an idle server, until its `job_started` event (it holds a
  slot and a job process) and until its first frame is decoded, as read from GET /v1/events (goal < 1 s).

CPU seconds of the server's process tree are read from /proc (its own, its live children's, and those it reaped).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from common import DHGEN_MAIN, child_env, dhgen_cmd, make_speech, median, run_timed, spread, table, write_manifest

TARGET_RATIO = 1.1
TARGET_START_S = 1.0
START_SAMPLES = 8


class Server:
    """`dhgen serve` in a subprocess, with the few client calls the benchmark needs."""

    def __init__(self, state: Path, input_root: Path, jobs: int, env: dict) -> None:
        cmd = [sys.executable, "-c", DHGEN_MAIN, "serve", "--state", str(state), "--port", "0"]
        cmd += ["--input-root", str(input_root), "--jobs", str(jobs), "--max-queue", "10000"]
        t0 = time.perf_counter()
        self.proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, env=env, text=True)
        for line in self.proc.stderr:
            found = re.search(r"listening on (http://\S+)", line)
            if found:
                self.url = found.group(1)
                break
        else:
            raise RuntimeError(f"dhgen serve exited {self.proc.wait()}")
        threading.Thread(target=lambda: [None for _ in self.proc.stderr], daemon=True).start()  # keep it drained
        while self.get("/readyz", ok_only=False).get("ready") is not True:
            time.sleep(0.05)
        self.startup_s = time.perf_counter() - t0

    def get(self, path: str, ok_only: bool = True) -> dict:
        try:
            with urllib.request.urlopen(self.url + path, timeout=60) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            if ok_only:
                raise
            return json.loads(exc.read())

    def submit(self, fields: dict) -> float:
        """POST a job; the seconds the answer took."""
        request = urllib.request.Request(
            self.url + "/v1/jobs", data=json.dumps(fields).encode(), headers={"Content-Type": "application/json"}
        )
        t0 = time.perf_counter()
        with urllib.request.urlopen(request, timeout=60) as response:
            assert response.status == 201, response.read()
        return time.perf_counter() - t0

    def wait_all(self, ids: list[str]) -> list[dict]:
        while True:
            jobs = [self.get(f"/v1/jobs/{job_id}") for job_id in ids]
            if all(j["status"] not in ("queued", "running") for j in jobs):
                failed = [j["error"] for j in jobs if j["status"] != "succeeded"]
                if failed:
                    raise RuntimeError(f"serve jobs failed: {failed}")
                return jobs
            time.sleep(0.05)

    def cpu_s(self) -> float:
        return _tree_cpu(self.proc.pid)

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(120)


class Events:
    """GET /v1/events, each event stamped with the client's clock when it arrived."""

    def __init__(self, url: str) -> None:
        self.seen: list[tuple[float, dict]] = []
        self._response = urllib.request.urlopen(url + "/v1/events")
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        try:
            for raw in self._response:
                if raw.startswith(b"data: "):
                    self.seen.append((time.perf_counter(), json.loads(raw[6:])))
        except Exception:  # noqa: BLE001 - closed
            pass

    def first(self, predicate, timeout: float = 120.0) -> float:
        deadline = time.perf_counter() + timeout
        while time.perf_counter() < deadline:
            for at, event in list(self.seen):
                if predicate(event):
                    return at
            time.sleep(0.002)
        raise TimeoutError("event not seen")

    def close(self) -> None:
        self._response.close()


def _tree_cpu(root: int) -> float:
    """user + system seconds of `root`, its live descendants, and the children it reaped."""
    tick = os.sysconf("SC_CLK_TCK")
    total, frontier = 0.0, [root]
    while frontier:
        pid = frontier.pop()
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12]) + (int(fields[13]) + int(fields[14]) if pid == root else 0)) / tick
        frontier += _children(pid)
    return total


def _children(pid: int) -> list[int]:
    """Children of every thread of `pid` (the server's executor thread starts the job processes)."""
    kids = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            kids += [int(p) for p in (task / "children").read_text().split()]
        except OSError:
            pass
    return kids


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def bench_serve(inp, args) -> str:
    n, count, seconds = args.concurrent, args.serve_jobs, args.serve_seconds
    speech = make_speech(inp.tmp / f"speech-{seconds:g}s.wav", seconds)
    xdg = inp.tmp / "xdg-warm"
    env = child_env(XDG_CACHE_HOME=str(xdg))
    server = Server(inp.tmp / "serve-state", inp.tmp, n, env)
    rounds = {"render": [], "serve": []}
    latencies: list[float] = []
    try:

        def render_round(rep: int):
            out = inp.tmp / f"render-{rep}"
            manifest = write_manifest(out.with_suffix(".csv"), [(f"r{i}", speech, inp.avatar) for i in range(count)])
            run = run_timed(dhgen_cmd(str(manifest), "--out", str(out), "--jobs", str(n)), env).check()
            rounds["render"].append((run.wall_s, run.cpu_s))

        def serve_round(rep: int):
            ids = [f"s{rep}-{i}" for i in range(count)]
            fields = [{"id": i, "audio": speech.name, "avatar": inp.avatar.name} for i in ids]
            cpu0, t0 = server.cpu_s(), time.perf_counter()
            with ThreadPoolExecutor(count) as pool:
                latencies.extend(pool.map(server.submit, fields))
            server.wait_all(ids)
            rounds["serve"].append((time.perf_counter() - t0, server.cpu_s() - cpu0))

        for rep in range(args.reps):
            for step in (render_round, serve_round) if rep % 2 == 0 else (serve_round, render_round):
                step(rep)
        starts = start_latencies(server, speech, inp.avatar)
    finally:
        server.stop()
    return report(rounds, latencies, starts, server.startup_s, n, count, seconds, args.reps)


def start_latencies(server: Server, speech: Path, avatar: Path) -> list[tuple[float, float]]:
    """(to job_started, to the first decoded frame) for jobs submitted one at a time to an idle server."""
    events = Events(server.url)
    samples = []
    try:
        time.sleep(0.5)
        for i in range(START_SAMPLES):
            job_id = f"start-{i}"
            t0 = time.perf_counter()
            server.submit({"id": job_id, "audio": speech.name, "avatar": avatar.name})
            started = events.first(lambda e, j=job_id: e["event"] == "job_started" and e["job_id"] == j)
            decoded = events.first(lambda e, j=job_id: e.get("job_id") == j and e.get("decoded", 0) > 0)
            server.wait_all([job_id])
            samples.append((started - t0, decoded - t0))
            time.sleep(0.3)
    finally:
        events.close()
    return samples


def report(rounds, latencies, starts, startup_s, n, count, seconds, reps) -> str:
    render_wall = [w for w, _ in rounds["render"]]
    serve_wall = [w for w, _ in rounds["serve"]]
    ratio = median(serve_wall) / median(render_wall)
    rows = [
        [f"dhgen render --jobs {n}", spread(render_wall), f"{median([c for _, c in rounds['render']]):.1f}", "1.00"],
        [
            f"dhgen serve --jobs {n}",
            spread(serve_wall),
            f"{median([c for _, c in rounds['serve']]):.1f}",
            f"{ratio:.2f}",
        ],
    ]
    title = f"6. serve: {count} jobs x {seconds:g} s, {n} at once, warm cache, {reps} alternated reps"
    text = table(title, ["variant", "wall s median (min-max)", "CPU s", "wall ratio"], rows)
    ms = lambda v: f"{v * 1000:.0f} ms"  # noqa: E731
    text += (
        f"\nserve / render wall: {ratio:.2f} (goal <= {TARGET_RATIO}); the server started and loaded the model "
        f"in {startup_s:.2f} s (not in its wall)\n"
        f"submit latency over {len(latencies)} submits ({count} at once): p50 {ms(percentile(latencies, 0.5))}, "
        f"p99 {ms(percentile(latencies, 0.99))}, max {ms(max(latencies))}\n"
        f"start latency, one job on an idle server, {len(starts)} samples: to job_started p50 "
        f"{ms(percentile([s for s, _ in starts], 0.5))} (max {ms(max(s for s, _ in starts))}), to the first decoded "
        f"frame p50 {ms(percentile([d for _, d in starts], 0.5))} (max {ms(max(d for _, d in starts))}); "
        f"goal < {TARGET_START_S:g} s\n"
    )
    return text
