"""Progress output: the Rich live table (synthetic events, fake clock), plain lines and JSON events of real runs,
the tqdm bar of the Python API."""

from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
import sys
import time
import wave
from pathlib import Path

from rich.console import Console

import dhgen
from dhgen.progress import JsonProgress, PlainProgress, RichProgress, RunView, TqdmProgress
from dhgen.results import JobRecord, utc_now

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07")
DHGEN = [sys.executable, "-c", "from dhgen.cli import main; main()"]
FIXTURES = Path(__file__).parent / "fixtures"
README = Path(__file__).parent.parent / "README.md"


class FakeClock:
    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def record(job_id: str, status: str = "succeeded", **fields) -> dict:
    base = {"job_id": job_id, "status": status, "output": f"renders/{job_id}.mp4", "attempts": 1, "elapsed_s": 12.5}
    return {**base, "error": None, "frames": 250, **fields}


OOM = {
    "event": "incident",
    "job_ids": ["welcome"],
    "error": {
        "type": "OutOfMemory",
        "message": "out of memory on cuda:0: CUDA out of memory; batch size halved to 64",
        "retryable": True,
        "hint": "lower --batch-size or run fewer --jobs at once",
    },
    "worker": 0,
    "batch_size": 64,
}
WORKER_KILLED = {
    "event": "incident",
    "job_ids": ["welcome"],
    "error": {
        "type": "WorkerCrashed",
        "message": "inference worker (pid 100) was killed by SIGKILL (killed, often the kernel OOM killer)",
        "retryable": True,
        "hint": "an inference worker died; it was replaced",
        "signal": "SIGKILL",
        "crash_tail": "Fatal Python error: Aborted\n  File worker.py, line 7",
    },
    "worker": 0,
    "action": "worker replaced, 2 batches replayed",
}
STALL_RETRY = {
    "event": "incident",
    "job_id": "news",
    "error": {"type": "Stalled", "message": "job news: encoding made no progress for 60s", "hint": "see the log"},
    "action": "retrying in 1.4s (attempt 2)",
}

WELCOME_COUNTERS = {"total": 250, "decoded": 120, "inferred": 110, "encoded": 100}


def run_events() -> list[dict]:
    return [
        {"event": "run_started", "jobs": 3},
        {"event": "job_started", "job_id": "welcome", "attempt": 1, "pid": 101},
        {"event": "job_started", "job_id": "news", "attempt": 1, "pid": 102},
        {"event": "worker_started", "worker": 0, "pid": 100, "device": "cuda:0"},
        {"event": "job_progress", "job_id": "welcome", "attempt": 1, "fps": 48.5, **WELCOME_COUNTERS},
        {"event": "worker_progress", "worker": 0, "pid": 100, "served": 7},
        OOM,
        WORKER_KILLED,
        STALL_RETRY,
    ]


def plain_text(console: Console) -> str:
    return ANSI.sub("", console.file.getvalue())


# --- Rich --------------------------------------------------------------------------------------------------------


def test_rich_table_shows_running_jobs_workers_and_incidents():
    console = Console(file=io.StringIO(), force_terminal=True, width=100)
    clock = FakeClock()
    with RichProgress(console, clock, auto_refresh=False) as display:
        for event in run_events():
            clock.advance(1.0)
            display(event)
        shown = plain_text(console)
        last_frame = shown[shown.rindex("done") - 10 :]

    assert "0/3 done" in last_frame and "2 running" in last_frame and "48.5 fps" in last_frame
    welcome = next(line for line in last_frame.splitlines() if "welcome" in line)
    assert "rendering" in welcome and "100/250" in welcome and "48.5" in welcome
    news = next(line for line in last_frame.splitlines() if " news " in line)
    assert "waiting to retry" in news and "Stalled" in news
    worker = next(line for line in last_frame.splitlines() if "cuda:0" in line)
    assert worker.split()[:5] == ["0", "100", "cuda:0", "7", "1"]  # index, pid, device, batches, restarts
    # incidents are printed above the table, in words, with what dhgen did about them
    assert "OutOfMemory: out of memory on cuda:0" in shown and "batch size halved to 64" in shown
    assert "was killed by SIGKILL" in shown and "worker replaced, 2 batches replayed" in shown
    assert "| Fatal Python error: Aborted" in shown
    assert "[news] Stalled" in shown and "retrying in 1.4s (attempt 2)" in shown
    assert "hint: lower --batch-size" in shown


def test_rich_overall_line_and_summary_table():
    console = Console(file=io.StringIO(), force_terminal=True, width=100)
    clock = FakeClock()
    with RichProgress(console, clock, auto_refresh=False) as display:
        for event in run_events():
            display(event)
        clock.advance(10.0)
        display({"event": "job_finished", "record": record("welcome")})
        assert "1/3 done" in plain_text(console) and "ETA 20.0s" in plain_text(console)  # 10 s per job, 2 left
        failed = {"type": "NoFaceError", "message": "portrait.png: no face in any frame", "hint": "use a frontal face"}
        display({"event": "job_finished", "record": record("news", "failed", attempts=3, elapsed_s=80.2, error=failed)})
        display({"event": "job_finished", "record": record("intro", "skipped", elapsed_s=0.0)})
        display({"event": "run_finished", "succeeded": 1, "failed": 1, "skipped": 1})
    shown = plain_text(console)
    summary = shown[shown.rindex("dhgen: 1 succeeded, 1 failed, 1 skipped") :]
    assert re.search(r"welcome\s*│\s*succeeded\s*│\s*1\s*│\s*12.5s\s*│\s*renders/welcome.mp4", summary)
    assert re.search(r"news\s*│\s*failed\s*│\s*3\s*│\s*1m20s\s*│\s*NoFaceError: portrait.png: no face", summary)
    assert "hint: use a frontal face" in summary
    assert "skipped" in summary


def test_a_cluster_run_shows_each_jobs_node_and_each_workers_node_and_device():
    node_a, node_b = {"node": "10.0.0.5", "node_id": "abcdef1234"}, {"node": "10.0.0.6", "node_id": "98765432ff"}
    events = [
        {"event": "run_started", "jobs": 2},
        {"event": "job_started", "job_id": "welcome", "attempt": 1, "pid": 101, **node_a},
        {"event": "job_started", "job_id": "news", "attempt": 1, "pid": 102, **node_b},
        {"event": "worker_started", "worker": 0, "pid": 100, "device": "cuda:0", **node_a},
        {"event": "job_progress", "job_id": "welcome", "attempt": 1, "fps": 48.5, **WELCOME_COUNTERS, **node_a},
    ]
    console = Console(file=io.StringIO(), force_terminal=True, width=120)
    with RichProgress(console, FakeClock(), auto_refresh=False) as display:
        for event in events:
            display(event)
        shown = plain_text(console)
    last_frame = shown[shown.rindex("done") :]
    assert "10.0.0.5 (abcdef12)" in next(line for line in last_frame.splitlines() if "welcome" in line)
    assert "10.0.0.6 (98765432)" in next(line for line in last_frame.splitlines() if " news " in line)
    worker = next(line for line in last_frame.splitlines() if "cuda:0" in line)
    assert worker.split()[:6] == ["0", "10.0.0.5", "(abcdef12)", "100", "cuda:0", "0"]

    out = io.StringIO()
    plain = PlainProgress(out, FakeClock(), heartbeat_s=1.0, heartbeat_thread=False)
    for event in events:
        plain(event)
    plain.view.clock.advance(2.0)
    plain.tick()
    text = out.getvalue()
    assert "job welcome: started (attempt 1, pid 101, node 10.0.0.5 (abcdef12))" in text
    assert "worker 0: ready on cuda:0 (pid 100, node 10.0.0.5 (abcdef12))" in text
    assert "job news: still running, node 10.0.0.6 (98765432), starting, 2.0s in attempt 1" in text


def test_a_local_run_has_no_node_column():
    console = Console(file=io.StringIO(), force_terminal=True, width=100)
    with RichProgress(console, FakeClock(), auto_refresh=False) as display:
        for event in run_events():
            display(event)
        shown = plain_text(console)
    assert "node" not in shown[shown.rindex("done") :].split("welcome")[0]


# --- plain -------------------------------------------------------------------------------------------------------


def test_plain_heartbeat_every_interval_per_running_job():
    out, clock = io.StringIO(), FakeClock()
    display = PlainProgress(out, clock, heartbeat_s=30.0, heartbeat_thread=False)
    with display:
        display({"event": "run_started", "jobs": 2})
        display({"event": "job_started", "job_id": "a", "attempt": 1, "pid": 1})
        counters = {"total": 100, "decoded": 50, "encoded": 40}
        display({"event": "job_progress", "job_id": "a", "attempt": 1, "fps": 20.0, **counters})
        beats = []
        for _ in range(9):  # 90 s in 10 s steps
            clock.advance(10.0)
            display.tick()
            beats.append(out.getvalue().count("still running"))
        display({"event": "job_finished", "record": record("a", elapsed_s=90.0)})
        clock.advance(60.0)
        display.tick()
    assert beats == [0, 0, 1, 1, 1, 2, 2, 2, 3]
    assert out.getvalue().count("still running") == 3  # none once the job finished
    assert "job a: still running, rendering, 40/100 frames, 20.0 fps, 1m30s in attempt 1" in out.getvalue()


def test_plain_lines_for_retry_failure_and_stopped_run():
    out, clock = io.StringIO(), FakeClock()
    with PlainProgress(out, clock, heartbeat_thread=False) as display:
        for event in run_events():
            display(event)
        error = {"type": "Stalled", "message": "job news: encoding made no progress for 60s", "hint": "see the log"}
        display({"event": "job_finished", "record": record("news", "failed", attempts=3, error=error)})
    text = out.getvalue()
    assert re.search(r"^\S+Z incident \[news\] Stalled: .* -> retrying in 1.4s \(attempt 2\)$", text, re.MULTILINE)
    assert "incident [welcome] WorkerCrashed: inference worker (pid 100) was killed by SIGKILL" in text
    assert "job news: FAILED after 3 attempt(s): Stalled: job news: encoding made no progress" in text
    assert "run stopped before the end: 0 succeeded, 1 failed" in text  # no run_finished: the summary still comes
    assert "\x1b" not in text and "\r" not in text


# --- a run stopped by a signal: every job in the summary ---------------------------------------------------------

STOPPED = {
    "event": "run_stopped",
    "signal": "SIGTERM",
    "succeeded": 1,
    "failed": 0,
    "skipped": 0,
    "interrupted": ["welcome", "news"],
    "not_started": ["intro"],
}


def stopped_run(display, clock: FakeClock) -> None:
    display({"event": "run_started", "jobs": 4})
    display({"event": "job_started", "job_id": "done", "attempt": 1, "pid": 100})
    clock.advance(5.0)
    display({"event": "job_finished", "record": record("done", elapsed_s=5.0)})
    for event in run_events()[1:]:  # welcome rendering 100/250, news waiting to retry
        display(event)
    clock.advance(3.0)
    display(STOPPED)


def test_plain_summary_of_a_stopped_run_lists_every_job():
    out, clock = io.StringIO(), FakeClock()
    with PlainProgress(out, clock, heartbeat_thread=False) as display:
        stopped_run(display, clock)
    text = out.getvalue()
    assert "run stopped by SIGTERM: 1 succeeded, 0 failed, 0 skipped, 2 interrupted, 1 not started in 8.0s" in text
    summary = text[text.index("run stopped by SIGTERM") :]
    assert re.search(r"done\s+succeeded\s+1\s+5.0s\s+renders/done.mp4", summary)
    assert re.search(r"welcome\s+interrupted\s+1\s+\S+\s+stopped at 100/250 frames", summary)
    assert re.search(r"news\s+interrupted\s+1\s+\S+\s+stopped while waiting to retry", summary)
    assert re.search(r"intro\s+not started\s+0\s+-\s+-", summary)
    assert "run stopped before the end" not in text  # said once, by the run_stopped event


def test_rich_summary_of_a_stopped_run_lists_every_job():
    console = Console(file=io.StringIO(), force_terminal=True, width=120)
    clock = FakeClock()
    with RichProgress(console, clock, auto_refresh=False) as display:
        stopped_run(display, clock)
    shown = plain_text(console)
    summary = shown[shown.rindex("dhgen: run stopped by SIGTERM: 1 succeeded") :]
    assert "2 interrupted, 1 not started in 8.0s" in " ".join(summary.split())  # the title may wrap
    for job, status in (("done", "succeeded"), ("welcome", "interrupted"), ("news", "interrupted")):
        assert re.search(rf"{job}\s*│\s*{status}", summary), job
    assert re.search(r"intro\s*│\s*not started", summary) and "stopped at 100/250 frames" in summary


def test_tqdm_bar_of_a_stopped_run_is_followed_by_every_job():
    out, clock = io.StringIO(), FakeClock()
    with TqdmProgress(clock, file=out) as display:
        stopped_run(display, clock)
    text = out.getvalue()
    summary = text[text.index("dhgen: run stopped by SIGTERM") :]
    assert "2 interrupted, 1 not started" in summary.splitlines()[0]
    assert [line.split()[:2] for line in summary.splitlines()[2:6]] == [
        ["done", "succeeded"],
        ["welcome", "interrupted"],
        ["news", "interrupted"],
        ["intro", "not"],
    ]


def start_batch(tmp_path: Path, n: int, *args: str) -> tuple[subprocess.Popen, Path]:
    """A real batch of n jobs, one at a time, in the background: a short first job, then long ones (30 s of
    speech), so that a signal sent soon after the first job finished always finds the second under way."""
    long_speech = repeated_wav(FIXTURES / "speech.wav", tmp_path / "long.wav", times=7)
    audio = [FIXTURES / "speech.wav", *[long_speech] * (n - 1)]
    rows = "".join(f"j{i},{audio[i]},{FIXTURES / 'avatar.mp4'}\n" for i in range(n))
    (tmp_path / "jobs.csv").write_text("id,audio,avatar\n" + rows)
    out = tmp_path / "out"
    cmd = [*DHGEN, "render", str(tmp_path / "jobs.csv"), "--out", str(out), "--jobs", "1", *args]
    env = {k: v for k, v in os.environ.items() if k not in ("FORCE_COLOR", "TERM")}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path)
    return proc, out


def repeated_wav(source: Path, target: Path, times: int) -> Path:
    with wave.open(str(source)) as src:
        params, data = src.getparams(), src.readframes(src.getnframes())
    with wave.open(str(target), "wb") as dst:
        dst.setparams(params)
        dst.writeframes(data * times)
    return target


def stop_after_first_job(proc: subprocess.Popen, out: Path, signum: int) -> tuple[str, str]:
    deadline = time.monotonic() + 90
    while not (out / "results.jsonl").exists() or not (out / "results.jsonl").read_text().strip():
        assert time.monotonic() < deadline and proc.poll() is None, "the first job never finished"
        time.sleep(0.05)
    time.sleep(0.5)  # the second job is under way
    proc.send_signal(signum)
    stdout, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 128 + signum, stderr
    return stdout, stderr


def test_sigterm_ends_the_json_events_with_run_stopped(tmp_path):
    proc, out = start_batch(tmp_path, 3, "--progress", "json")
    stdout, _ = stop_after_first_job(proc, out, signal.SIGTERM)
    events = [json.loads(line) for line in stdout.splitlines()]
    assert [schema_problems(e) for e in events] == [[] for _ in events]
    last = events[-1]
    assert last["event"] == "run_stopped" and last["signal"] == "SIGTERM"
    assert (last["succeeded"], last["interrupted"], last["not_started"]) == (1, ["j1"], ["j2"])
    assert "run_finished" not in [e["event"] for e in events]


def test_sigint_summary_in_plain_lines_lists_every_job(tmp_path):
    proc, out = start_batch(tmp_path, 3, "--progress", "plain")
    _, stderr = stop_after_first_job(proc, out, signal.SIGINT)
    summary = stderr[stderr.index("run stopped by SIGINT: 1 succeeded, 0 failed, 0 skipped, 1 interrupted, 1 not") :]
    assert re.search(r"j0\s+succeeded\s+1\s+\S+\s+\S*j0.mp4", summary)
    assert re.search(r"j1\s+interrupted\s+1\s+\S+\s+stopped (at \d+/\d+ frames|while \w+)", summary)
    assert re.search(r"j2\s+not started\s+0\s+-\s+-", summary)
    assert summary.strip().endswith("stopped by SIGINT: finished jobs are in the result log; --resume renders the rest")


def run_cli(tmp_path: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    cmd = [*DHGEN, "render", "--audio", str(FIXTURES / "speech.wav"), "--avatar", str(FIXTURES / "avatar.mp4")]
    cmd += ["-o", str(tmp_path / "out" / "talk.mp4"), "--jobs", "1", *args]
    full_env = {k: v for k, v in os.environ.items() if k not in ("FORCE_COLOR", "TERM")} | (env or {})
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=full_env, cwd=tmp_path)


def test_plain_output_of_a_real_run_with_an_incident(tmp_path):
    # the worker pretends to run out of memory above 8 crops: it halves its batch and the job still succeeds
    metrics = tmp_path / "metrics" / "dhgen.prom"
    args = ["--progress", "plain", "--heartbeat", "0.5", "--metrics-file", str(metrics)]
    done = run_cli(tmp_path, *args, env={"DHGEN_TEST_FAULT": "oom_above:8"})
    text = done.stderr
    assert done.returncode == 0, text
    assert "\x1b" not in text + done.stdout and "\r" not in text
    stamped = [line for line in text.splitlines() if re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ ", line)]
    assert len(stamped) == len(text.splitlines())  # every line is timestamped
    assert "job talk: started (attempt 1, pid " in text
    assert re.search(r"incident \[talk\] OutOfMemory: .*batch size halved to 8", text)
    assert "job talk: still running" in text  # heartbeats
    assert re.search(r"job talk: succeeded in [\d.]+s, 111 frames -> .*talk.mp4", text)
    assert "run finished: 1 succeeded, 0 failed, 0 skipped" in text
    assert re.search(r"talk\s+succeeded\s+1\s+[\d.]+s\s+.*talk.mp4$", text, re.MULTILINE)  # the summary table
    prom = metrics.read_text()
    assert 'dhgen_incidents_total{out_dir="' in prom and 'type="OutOfMemory"} 1' in prom
    assert re.search(r'^dhgen_jobs\{out_dir="[^"]+",status="succeeded"\} 1$', prom, re.MULTILINE)


# --- JSON --------------------------------------------------------------------------------------------------------

# The documented schema (README, "Progress output"): required fields and their types; others are optional.
SCHEMA = {
    "run_started": {"jobs": int},
    "worker_started": {"worker": int, "pid": int, "device": str},
    "worker_progress": {"worker": int, "pid": int, "served": int},
    "job_started": {"job_id": str, "attempt": int, "pid": int},
    "job_progress": {"job_id": str, "attempt": int, "total": int, "fps": (int, float)},
    "incident": {"error": dict},
    "job_finished": {"record": dict},
    "run_finished": {"succeeded": int, "failed": int, "skipped": int},
    "run_stopped": {"signal": str, "succeeded": int, "failed": int, "skipped": int, "interrupted": list},
    "run_error": {"error": dict, "exit_code": int},
}
OPTIONAL = {
    "job_progress": {"decoded": int, "inferred": int, "encoded": int},
    "incident": {"job_id": str, "job_ids": list, "action": str, "worker": int, "batch_size": int},
    "run_stopped": {"not_started": list},
}
ISO_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def schema_problems(event: dict) -> list[str]:
    kind = event.get("event")
    if kind not in SCHEMA:
        return [f"unknown event {kind!r}"]
    problems = [] if ISO_UTC.match(str(event.get("time"))) else [f"{kind}: bad time {event.get('time')!r}"]
    for name, kind_type in SCHEMA[kind].items():
        if not isinstance(event.get(name), kind_type) or isinstance(event.get(name), bool):
            problems.append(f"{kind}.{name} = {event.get(name)!r}")
    for name, kind_type in OPTIONAL.get(kind, {}).items():
        if name in event and not isinstance(event[name], kind_type):
            problems.append(f"{kind}.{name} = {event[name]!r}")
    if kind in ("incident", "run_error"):
        error = event["error"]
        problems += [f"incident.error.{k} missing" for k in ("type", "message", "retryable", "hint") if k not in error]
    if kind == "job_finished":
        fields = set(JobRecord.__dataclass_fields__)
        problems += [f"record.{k} missing" for k in fields if k not in event["record"]]
    return problems


def test_json_events_of_a_real_run_parse_and_follow_the_schema(tmp_path):
    done = run_cli(tmp_path, "--progress", "json", "--log-level", "INFO", env={"DHGEN_TEST_FAULT": "oom_above:8"})
    assert done.returncode == 0, done.stderr
    events = [json.loads(line) for line in done.stdout.splitlines()]  # every line is one JSON object
    assert [schema_problems(e) for e in events] == [[] for _ in events]
    kinds = [e["event"] for e in events]
    assert kinds[0] == "run_started" and kinds[-2:] == ["job_finished", "run_finished"]
    assert {"job_started", "job_progress", "incident", "worker_started"} <= set(kinds)
    assert events[-2]["record"]["status"] == "succeeded" and events[-1]["succeeded"] == 1
    finals = [e for e in events if e["event"] == "job_progress" and e.get("encoded") == e["total"]]
    assert finals, "the last progress event reports every frame encoded"
    assert not [line for line in done.stderr.splitlines() if line.startswith('{"event"')]  # events: stdout only


def test_readme_documents_every_event():
    text = README.read_text()
    section = text[text.index("## Progress output") :]
    for kind in SCHEMA:
        assert f"`{kind}`" in section, kind


def test_json_progress_adds_time_and_survives_a_closed_reader():
    class Closed(io.StringIO):
        def write(self, s):
            raise BrokenPipeError

    out = io.StringIO()
    JsonProgress(out, FakeClock(1_800_000_000.5))({"event": "job_progress", "job_id": "a", "total": 3, "fps": 1.0})
    assert json.loads(out.getvalue())["time"] == "2027-01-15T08:00:00.500Z"
    display = JsonProgress(Closed())
    display({"event": "run_started", "jobs": 1, "time": utc_now()})
    display({"event": "run_finished", "time": utc_now()})  # no exception: the run goes on


# --- the run view and the Python API ------------------------------------------------------------------------------


def test_stage_follows_the_counters():
    view = RunView(FakeClock())
    view.apply({"event": "job_started", "job_id": "a", "attempt": 1, "pid": 1})
    stages = [view.jobs["a"].stage]
    for counters in ({"total": 10}, {"decoded": 4}, {"encoded": 10}):
        view.apply({"event": "job_progress", "job_id": "a", "attempt": 1, "fps": 1.0, **counters})
        stages.append(view.jobs["a"].stage)
    assert stages == ["starting", "preparing", "rendering", "finishing"]


class ScriptedExecutor:
    """An executor (the runner's documented protocol) that reports progress and succeeds, without rendering."""

    def run(self, jobs, fingerprints, emit):
        for job in jobs:
            emit({"event": "job_started", "job_id": job.id, "attempt": 1, "pid": os.getpid(), "time": utc_now()})
            emit({"event": "job_progress", "job_id": job.id, "attempt": 1, "total": 10, "encoded": 5, "fps": 5.0})
            yield JobRecord(job.id, "succeeded", str(job.audio), str(job.avatar), str(job.output), attempts=1)


def test_python_api_shows_a_tqdm_bar(tmp_path, capsys):
    from dhgen.manifest import single_job
    from dhgen.options import RunOptions

    jobs = [single_job(FIXTURES / "speech.wav", FIXTURES / "avatar.mp4", tmp_path / f"{n}.mp4") for n in "ab"]
    seen = []
    run = RunOptions(out_dir=tmp_path)
    summary = dhgen.render(jobs, run=run, on_event=seen.append, executor=ScriptedExecutor(), progress=True)
    bar = capsys.readouterr().err
    assert summary.exit_code == 0 and [e["event"] for e in seen][-1] == "run_finished"  # the caller's handler too
    assert "dhgen:" in bar and "2/2" in bar and "0.5/2" in bar  # half of the first job's frames, then both jobs


def test_import_dhgen_stays_light():
    code = "import sys, dhgen; print(sorted(m for m in ('rich', 'tqdm', 'torch', 'av', 'cv2') if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
