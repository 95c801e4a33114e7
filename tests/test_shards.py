"""Shards: stable membership by job id, scheduler variables mapped to shards, and shards of one batch rendering
at once into one folder (real `dhgen render --shard` processes), each with its own lock and result log."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from conftest import FIXTURES, write_clip
from typer.testing import CliRunner

from dhgen.cli import app
from dhgen.errors import UsageError
from dhgen.shards import Shard, parse_shard, resolve_shard, select, shard_from_env, shard_in_name, shard_of, shard_path

DHGEN = [sys.executable, "-m", "dhgen.cli"]


class _Job:
    def __init__(self, job_id: str) -> None:
        self.id = job_id


def ids_in(shards: list[Shard], ids: list[str]) -> list[list[str]]:
    return [[j.id for j in select(map(_Job, ids), shard)] for shard in shards]


# --- membership --------------------------------------------------------------------------------------------------


def test_every_job_is_in_exactly_one_shard_and_shards_are_even():
    ids = [f"clip-{i:04d}" for i in range(2000)]
    shards = [Shard(k, 4) for k in range(4)]
    parts = ids_in(shards, ids)
    assert sorted(sum(parts, [])) == sorted(ids)  # all covered, none twice
    assert all(400 < len(part) < 600 for part in parts), [len(p) for p in parts]  # a hash, not all in one


def test_membership_follows_the_id_not_the_row_order_or_other_rows():
    ids = [f"job{i}" for i in range(300)]
    shards = [Shard(k, 3) for k in range(3)]
    before = {job_id: k for k, part in enumerate(ids_in(shards, ids)) for job_id in part}
    shuffled = list(reversed(ids))[::2] + list(reversed(ids))[1::2]
    grown = shuffled[:100] + [f"new{i}" for i in range(50)] + shuffled[100:]
    after = {job_id: k for k, part in enumerate(ids_in(shards, grown)) for job_id in part}
    assert all(after[job_id] == before[job_id] for job_id in ids)  # no old job moved
    assert Counter(after.values()).total() == 350


def test_the_shard_of_an_id_is_sha256_of_it_the_same_in_every_process():
    ids = ("welcome", "news", "été-1", "a")
    expected = [int(hashlib.sha256(i.encode()).hexdigest()[:16], 16) % 7 for i in ids]  # never Python's hash()
    assert [shard_of(i, 7) for i in ids] == expected
    code = f"from dhgen.shards import shard_of; print([shard_of(i, 7) for i in {ids!r}])"
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
        assert other.stdout.strip() == str(expected)


def test_shard_names_in_files():
    shard = Shard(1, 4)
    assert (str(shard), shard.name) == ("1/4", "shard-1-of-4")
    assert shard_path(Path("out/results.jsonl"), shard) == Path("out/results.shard-1-of-4.jsonl")
    assert shard_path(Path("/m/dhgen.prom"), shard) == Path("/m/dhgen.shard-1-of-4.prom")
    assert shard_in_name(Path("out/results.shard-1-of-4.jsonl")) == shard
    assert shard_in_name(Path("out/results.jsonl")) is None
    assert shard_in_name(Path("out/results.shard-4-of-4.jsonl")) is None  # no such shard


@pytest.mark.parametrize(("text", "shard"), [("0/4", Shard(0, 4)), (" 3 / 4 ", Shard(3, 4)), ("0/1", Shard(0, 1))])
def test_parse_k_of_n(text, shard):
    assert parse_shard(text) == shard


@pytest.mark.parametrize("text", ["4/4", "1/0", "x", "1-4", "-1/4", "1/4/2", ""])
def test_bad_k_of_n_is_a_usage_error(text):
    with pytest.raises(UsageError) as info:
        parse_shard(text)
    assert info.value.message and info.value.hint


# --- scheduler variables -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "shard"),
    [
        ({"SLURM_ARRAY_TASK_ID": "2", "SLURM_ARRAY_TASK_COUNT": "4"}, Shard(2, 4)),
        ({"SLURM_ARRAY_TASK_ID": "0", "SLURM_ARRAY_TASK_MIN": "0", "SLURM_ARRAY_TASK_MAX": "3"}, Shard(0, 4)),
        (  # --array=1-4: Slurm's task ids start at 1
            {"SLURM_ARRAY_TASK_ID": "4", "SLURM_ARRAY_TASK_MIN": "1", "SLURM_ARRAY_TASK_MAX": "4"},
            Shard(3, 4),
        ),
        (  # --array=1-7:2 (tasks 1, 3, 5, 7), as Slurm sets them all
            {
                "SLURM_ARRAY_TASK_ID": "5",
                "SLURM_ARRAY_TASK_COUNT": "4",
                "SLURM_ARRAY_TASK_MIN": "1",
                "SLURM_ARRAY_TASK_MAX": "7",
                "SLURM_ARRAY_TASK_STEP": "2",
            },
            Shard(2, 4),
        ),
        ({"JOB_COMPLETION_INDEX": "3", "DHGEN_SHARD_COUNT": "4"}, Shard(3, 4)),
    ],
)
def test_scheduler_variables_map_to_shards(env, shard):
    assert shard_from_env(env) == shard
    assert resolve_shard("auto", None, env) == shard


def test_kubernetes_count_from_the_command_line():
    assert resolve_shard("auto", 8, {"JOB_COMPLETION_INDEX": "5"}) == Shard(5, 8)
    assert resolve_shard("auto", 8, {"JOB_COMPLETION_INDEX": "5", "DHGEN_SHARD_COUNT": "4"}) == Shard(5, 8)


@pytest.mark.parametrize(
    ("env", "count", "named"),
    [
        ({}, None, "SLURM_ARRAY_TASK_ID"),
        ({"SLURM_ARRAY_TASK_ID": "1"}, None, "SLURM_ARRAY_TASK_COUNT"),
        ({"SLURM_ARRAY_TASK_ID": "x1", "SLURM_ARRAY_TASK_COUNT": "4"}, None, "SLURM_ARRAY_TASK_ID='x1'"),
        ({"SLURM_ARRAY_TASK_ID": "4", "SLURM_ARRAY_TASK_COUNT": "4"}, None, "SLURM_ARRAY_TASK_ID=4"),
        (  # --array=0,1,5: not a range, so the task id does not say which shard
            {"SLURM_ARRAY_TASK_ID": "5", "SLURM_ARRAY_TASK_COUNT": "3", "SLURM_ARRAY_TASK_MAX": "5"},
            None,
            "SLURM_ARRAY_TASK_COUNT=3",
        ),
        ({"SLURM_ARRAY_TASK_ID": "1", "SLURM_ARRAY_TASK_COUNT": "4"}, 8, "SLURM_ARRAY_TASK_COUNT"),
        ({"JOB_COMPLETION_INDEX": "1"}, None, "DHGEN_SHARD_COUNT"),
        ({"JOB_COMPLETION_INDEX": "4", "DHGEN_SHARD_COUNT": "4"}, None, "JOB_COMPLETION_INDEX=4"),
        ({"JOB_COMPLETION_INDEX": "1", "DHGEN_SHARD_COUNT": "zero"}, None, "DHGEN_SHARD_COUNT='zero'"),
        ({"JOB_COMPLETION_INDEX": "1", "DHGEN_SHARD_COUNT": "0"}, None, "DHGEN_SHARD_COUNT=0"),
    ],
)
def test_missing_or_inconsistent_variables_are_usage_errors_naming_them(env, count, named):
    with pytest.raises(UsageError) as info:
        resolve_shard("auto", count, env)
    assert named in info.value.message and info.value.hint


def test_shard_count_must_agree_with_k_of_n_and_needs_a_shard():
    assert resolve_shard(None, None, {}) is None
    assert resolve_shard("1/4", 4, {}) == Shard(1, 4)
    for spec, count in (("1/4", 8), (None, 4)):
        with pytest.raises(UsageError, match="--shard"):
            resolve_shard(spec, count, {})


@pytest.mark.parametrize(
    ("args", "env", "named"),
    [
        (["--shard", "auto"], {}, "JOB_COMPLETION_INDEX"),
        (["--shard", "auto"], {"JOB_COMPLETION_INDEX": "2"}, "DHGEN_SHARD_COUNT"),
        (["--shard", "auto"], {"SLURM_ARRAY_TASK_ID": "7", "SLURM_ARRAY_TASK_COUNT": "4"}, "SLURM_ARRAY_TASK_ID=7"),
        (["--shard", "5/4"], {}, "5/4"),
        (["--shard", "1/4", "--shard-count", "3"], {}, "--shard-count"),
    ],
)
def test_cli_shard_usage_errors_exit_2_naming_the_variable(tmp_path, monkeypatch, args, env, named):
    for name in ("SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT", "JOB_COMPLETION_INDEX", "DHGEN_SHARD_COUNT"):
        monkeypatch.delenv(name, raising=False)
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"audio,avatar\n{FIXTURES / 'silence.wav'},{FIXTURES / 'portrait.png'}\n")
    result = CliRunner().invoke(app, ["render", str(manifest), "--out", str(tmp_path / "out"), *args], env=env)
    assert result.exit_code == 2, result.output
    assert named in result.stderr and "hint:" in result.stderr
    assert not (tmp_path / "out").exists()  # refused before anything was locked or written


def test_single_job_form_refuses_shard(tmp_path):
    args = ["--audio", FIXTURES / "silence.wav", "--avatar", FIXTURES / "portrait.png", "-o", tmp_path / "a.mp4"]
    result = CliRunner().invoke(app, ["render", *map(str, args), "--shard", "0/2"])
    assert result.exit_code == 2 and "--shard" in result.stderr
    assert not (tmp_path / "a.mp4").exists()


# --- shards of one batch at once, through the real command ------------------------------------------------------


def _ids_for_two_shards(per_shard: int) -> tuple[list[str], list[str]]:
    candidates = [f"clip{i}" for i in range(40)]
    zero = [i for i in candidates if shard_of(i, 2) == 0][:per_shard]
    one = [i for i in candidates if shard_of(i, 2) == 1][:per_shard]
    return zero, one


def _render(manifest: Path, out: Path, *args: str) -> subprocess.Popen:
    cmd = [*DHGEN, "render", str(manifest), "--out", str(out), "--progress", "none", "--jobs", "1", *args]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_until(predicate, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not reached")
        time.sleep(0.05)


def _log(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_two_shards_render_at_once_into_one_folder_and_a_shard_runs_once(tmp_path):
    zero, one = _ids_for_two_shards(1)
    short = write_clip(tmp_path / "short.wav", 0.4)
    rows = [f"{i},{FIXTURES / 'speech.m4a'},{FIXTURES / 'avatar.mp4'}" for i in zero]  # 2 s: long enough to catch
    rows += [f"{i},{short},{FIXTURES / 'portrait.png'}" for i in one]
    manifest = tmp_path / "jobs.csv"
    manifest.write_text("id,audio,avatar\n" + "\n".join(rows) + "\n")
    out = tmp_path / "out"

    first = _render(manifest, out, "--shard", "0/2")
    try:
        _wait_until(lambda: any(out.glob(".*partial*")))  # shard 0 holds its lock and is rendering
        os.kill(first.pid, signal.SIGSTOP)  # and keeps holding it, however fast this machine is
        try:
            again = subprocess.run(
                [*DHGEN, "render", str(manifest), "--out", str(out), "--shard", "0/2"],
                capture_output=True,
                text=True,
                timeout=60,
            )
            whole = subprocess.run(
                [*DHGEN, "render", str(manifest), "--out", str(out)], capture_output=True, text=True, timeout=60
            )
            other = _render(manifest, out, "--shard", "1/2")
            _, other_err = other.communicate(timeout=120)
        finally:
            os.kill(first.pid, signal.SIGCONT)
        _, first_err = first.communicate(timeout=120)
    finally:
        first.kill()
        first.wait()

    assert again.returncode == 75, again.stderr
    assert "shard 0/2" in again.stderr and f"pid {first.pid}" in again.stderr
    assert whole.returncode == 75 and "shard 0/2" in whole.stderr  # an unsharded run waits for the shards
    assert (other.returncode, first.returncode) == (0, 0), (other_err, first_err)
    logs = {p.name for p in out.glob("results*.jsonl")}
    assert logs == {"results.shard-0-of-2.jsonl", "results.shard-1-of-2.jsonl"}
    log0, log1 = _log(out / "results.shard-0-of-2.jsonl"), _log(out / "results.shard-1-of-2.jsonl")
    assert sorted(r["job_id"] for r in log0) == sorted(zero) and sorted(r["job_id"] for r in log1) == sorted(one)
    assert max(r["finished_at"] for r in log1) < max(r["finished_at"] for r in log0)  # 1 ran while 0 held its lock
    assert all((out / f"{i}.mp4").is_file() for i in zero + one)

    report = subprocess.run(
        [*DHGEN, "report", str(out), "--manifest", str(manifest), "--json"], capture_output=True, text=True, timeout=60
    )
    assert report.returncode == 0, report.stdout + report.stderr
    summary = json.loads(report.stdout)
    assert summary["counts"] == {"succeeded": 2, "skipped": 0, "failed": 0, "missing": 0}
    assert summary["jobs"] == 2 and len(summary["logs"]) == 2


def test_resume_of_a_shard_skips_its_own_done_jobs_and_leaves_the_others(tmp_path):
    zero, one = _ids_for_two_shards(1)
    short = write_clip(tmp_path / "short.wav", 0.4)
    manifest = tmp_path / "jobs.csv"
    manifest.write_text(
        "".join(["id,audio,avatar\n", *(f"{i},{short},{FIXTURES / 'portrait.png'}\n" for i in zero + one)])
    )
    out = tmp_path / "out"
    for _ in range(2):
        proc = _render(manifest, out, "--shard", "0/2", "--resume")
        assert proc.wait(timeout=120) == 0, proc.stderr.read()
    statuses = [r["status"] for r in _log(out / "results.shard-0-of-2.jsonl")]
    assert statuses == ["succeeded", "skipped"]
    assert not (out / f"{one[0]}.mp4").exists() and not (out / "results.jsonl").exists()
