"""The Slurm recipe (examples/slurm/) on a real one-node Slurm (tests/slurm_cluster.py), run unedited as a user
would on a GPU-less cluster: `GPUS=0 CPUS=1 MEM=2G DEVICE=cpu JOBS=1 examples/slurm/submit.sh`. Every shard runs
(one with no jobs too), the report job runs after the array with the batch's verdict, a bad input lands in
failed.csv, the night after skips what is done and removes the stale failed.csv, and a task requeued mid-render
resumes its shard. Skipped, with the reason, where Slurm cannot run (not root); CI runs it."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import wave
from pathlib import Path

import av
import pytest
from conftest import FIXTURES, write_clip
from slurm_cluster import SlurmCluster, unavailable

from dhgen.manifest import read_manifest
from dhgen.results import utc_now
from dhgen.shards import shard_of

SUBMIT = Path(__file__).parent.parent / "examples" / "slurm" / "submit.sh"
DHGEN = Path(sys.executable).with_name("dhgen")  # this checkout's, in every Slurm job
RECIPE = {"GPUS": "0", "CPUS": "1", "MEM": "2G", "DEVICE": "cpu", "JOBS": "1"}


@pytest.fixture(scope="module")
def slurm():
    why = unavailable()
    if why and os.environ.get("CI") and os.geteuid() == 0:
        pytest.fail(f"CI must run the Slurm tests, but {why}")
    if why:
        pytest.skip(why)
    cluster = SlurmCluster()
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


def ids_in_shards(per_shard: dict[int, int], count: int = 4) -> dict[int, list[str]]:
    """`per_shard[k]` job ids that fall in shard k of `count`."""
    candidates = [f"clip{n}" for n in range(200)]
    return {k: [i for i in candidates if shard_of(i, count) == k][:n] for k, n in per_shard.items()}


def submit(slurm: SlurmCluster, cwd: Path, manifest: Path, out: Path, *sbatch_args: str) -> tuple[str, str]:
    """Run examples/slurm/submit.sh unedited; the array's and the report's job ids."""
    env = {**slurm.env, **RECIPE, "DHGEN": str(DHGEN), "MANIFEST": str(manifest), "OUT": str(out)}
    done = subprocess.run(["bash", SUBMIT, *sbatch_args], env=env, cwd=cwd, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    array, report = re.search(r"array job (\d+); report job (\d+) after it", done.stdout).groups()
    return array, report


def ended(slurm: SlurmCluster, array: str, report: str) -> tuple[dict[int, dict], dict]:
    """Once both have ended: the array's tasks by task id, and the report job."""
    slurm.wait_ended(array, report)
    tasks = {int(t["ArrayTaskId"]): t for t in slurm.jobs(array)}
    [report_job] = slurm.jobs(report)
    return tasks, report_job


def records(log: Path) -> list[tuple[str, str]]:
    return [(r["job_id"], r["status"]) for r in map(json.loads, log.read_text().splitlines())]


def assert_valid_video(path: Path, seconds: float) -> None:
    with av.open(str(path)) as container:
        assert sorted(s.type for s in container.streams) == ["audio", "video"]
        video = container.streams.video[0]
        frames = sum(1 for _ in container.decode(video))
    assert frames == pytest.approx(seconds * float(video.average_rate), abs=2)


def test_a_night_on_slurm_and_the_night_after(slurm, tmp_path):
    shards = ids_in_shards({1: 2, 3: 2})  # shards 0 and 2: no jobs
    good = [*shards[1], shards[3][0]]
    bad = shards[3][1]
    clip = write_clip(tmp_path / "in" / "a.wav", 0.4)
    late = tmp_path / "in" / "late.wav"
    late.write_bytes((FIXTURES / "garbage.wav").read_bytes())  # not audio yet: its job fails
    rows = [f"{i},{clip},{FIXTURES / 'portrait.png'}" for i in good] + [f"{bad},{late},{FIXTURES / 'portrait.png'}"]
    manifest = tmp_path / "in" / "nightly.csv"
    manifest.write_text("id,audio,avatar\n" + "\n".join(rows) + "\n")
    out = tmp_path / "renders"

    array, report = submit(slurm, tmp_path, manifest, out, "--comment=nightly")  # arguments reach the array
    tasks, report_job = ended(slurm, array, report)
    assert {k: t["ExitCode"] for k, t in tasks.items()} == {0: "0:0", 1: "0:0", 2: "0:0", 3: "1:0"}
    for task in tasks.values():
        assert task["Comment"] == "nightly" and task["TRES"].startswith("cpu=1,mem=2G,")
    assert (report_job["JobState"], report_job["ExitCode"]) == ("FAILED", "1:0")
    assert report_job["StartTime"] >= max(t["EndTime"] for t in tasks.values())
    assert report_job["TRES"].startswith("cpu=1,mem=1G,") and "Comment" not in report_job

    logs = {k: out / f"results.shard-{k}-of-4.jsonl" for k in range(4)}
    assert logs[0].read_text() == logs[2].read_text() == ""  # ran, with nothing to do
    assert records(logs[3]) == [(shards[3][0], "succeeded"), (bad, "failed")]
    for job_id in good:
        assert_valid_video(out / f"{job_id}.mp4", 0.4)
    assert [job.id for job in read_manifest(out / "failed.csv", out)] == [bad]
    slurm_files = sorted(p.name for p in (out / "slurm").iterdir())
    assert slurm_files == [*(f"dhgen-{array}_{k}.out" for k in range(4)), f"dhgen-report-{report}.out"]
    said = (out / "slurm" / f"dhgen-report-{report}.out").read_text()
    assert "shards ran: 0/4 (0 jobs), 1/4 (2 jobs), 2/4 (0 jobs), 3/4 (2 jobs)" in said
    assert "verdict: 1 failed, 0 missing of 4" in said and "1 job(s) to render again" in said

    write_clip(late, 0.4)  # the input is fixed; the night after renders it and skips the rest
    array, report = submit(slurm, tmp_path, manifest, out)
    tasks, report_job = ended(slurm, array, report)
    assert {t["ExitCode"] for t in tasks.values()} == {"0:0"}
    assert (report_job["JobState"], report_job["ExitCode"]) == ("COMPLETED", "0:0")
    assert records(logs[3])[2:] == [(shards[3][0], "skipped"), (bad, "succeeded")]
    assert_valid_video(out / f"{bad}.mp4", 0.4)
    assert not (out / "failed.csv").exists()
    said = (out / "slurm" / f"dhgen-report-{report}.out").read_text()
    assert "verdict: all 4 job(s) done" in said and f"removed the earlier {out / 'failed.csv'}" in said


def write_long_clip(target: Path, seconds: float) -> Path:
    """The speech fixture over and over, `seconds` long: a job that renders for a few seconds."""
    with wave.open(str(FIXTURES / "speech.wav")) as src:
        params, data = src.getparams(), src.readframes(src.getnframes())
    size = int(seconds * params.framerate) * params.sampwidth * params.nchannels
    target.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(target), "wb") as dst:
        dst.setparams(params)
        dst.writeframes((data * (size // len(data) + 1))[:size])
    return target


def test_a_task_requeued_mid_render_resumes_its_shard(slurm, tmp_path):
    [first, long] = ids_in_shards({2: 2})[2]
    clips = {first: write_clip(tmp_path / "in" / "a.wav", 0.4), long: write_long_clip(tmp_path / "in" / "b.wav", 30)}
    manifest = tmp_path / "in" / "jobs.csv"
    manifest.write_text(
        "id,audio,avatar\n" + "".join(f"{i},{a},{FIXTURES / 'portrait.png'}\n" for i, a in clips.items())
    )
    out = tmp_path / "renders"
    log = out / "results.shard-2-of-4.jsonl"

    array, report = submit(slurm, tmp_path, manifest, out)
    wait_for(lambda: log.is_file() and first in log.read_text(), "the shard's first job to finish")
    requeued_at = utc_now()
    task = f"{array}_2"
    slurm.run("scontrol", "requeue", task)  # as preemption or a node failure would
    wait_for(lambda: slurm.jobs(task)[0]["JobState"] == "PENDING", "the requeued task to be pending")
    slurm.run("scontrol", "update", f"JobId={task}", "StartTime=now")  # not the ~2 minutes Slurm waits

    tasks, report_job = ended(slurm, array, report)
    assert (tasks[2]["Restarts"], tasks[2]["ExitCode"]) == ("1", "0:0")
    assert report_job["ExitCode"] == "0:0"
    assert records(log) == [(first, "succeeded"), (first, "skipped"), (long, "succeeded")]  # long: once, whole
    [long_record] = [r for r in map(json.loads, log.read_text().splitlines()) if r["job_id"] == long]
    assert long_record["started_at"] > requeued_at  # the second attempt rendered it
    assert_valid_video(out / f"{long}.mp4", 30)
    said = (out / "slurm" / f"dhgen-{array}_2.out").read_text()  # both attempts, appended
    assert said.count("run started: 2 job(s)") == 2 and "DUE TO JOB REQUEUE" in said


def wait_for(predicate, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.1)
