"""The command line contract: exit codes, messages naming file:line, and one supervised batch of bad inputs.

Usage errors and the lock run in-process (`CliRunner`, nothing renders). Two runs go through the real command
(`.venv/bin/dhgen` in a subprocess, supervised child processes): a manifest of broken inputs mixed with good
ones (exit 1, each failure typed, the good jobs unharmed) and a small demo-like batch (exit 0).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest
from conftest import FIXTURES, write_clip
from typer.testing import CliRunner

from dhgen.cli import app
from dhgen.runner import RunLock

DHGEN = Path(sys.executable).with_name("dhgen")


def invoke(*args: str):
    return CliRunner().invoke(app, ["render", *map(str, args)])


def run_dhgen(*args, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    cmd = [str(DHGEN), "render", *map(str, args), "--progress", "none", "--jobs", "2"]
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)


def records(log: Path) -> dict[str, dict]:
    return {r["job_id"]: r for r in map(json.loads, log.read_text(encoding="utf-8").splitlines())}


def decode(path: Path) -> tuple[list[str], np.ndarray]:
    with av.open(str(path)) as container:
        codecs = [s.codec_context.name for s in container.streams]
        frames = np.stack([f.to_ndarray(format="bgr24") for f in container.decode(video=0)])
    return codecs, frames


# --- usage errors: exit 2 ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        [],  # neither a manifest nor a job
        ["m.csv", "--audio", "a.wav"],  # both
        ["--audio", "a.wav", "--avatar", "v.mp4"],  # no -o
        ["--audio", "a.wav", "--avatar", "v.mp4", "-o", "out.mov"],  # not .mp4
        ["--audio", "a.wav", "--avatar", "v.mp4", "-o", "o.mp4", "--model", "nope"],
        ["--audio", "a.wav", "--avatar", "v.mp4", "-o", "o.mp4", "--model", "wav2lip"],  # needs --checkpoint
        ["--audio", "a.wav", "--avatar", "v.mp4", "-o", "o.mp4", "--jobs", "0"],
        ["--audio", "a.wav", "--avatar", "v.mp4", "-o", "o.mp4", "--no-such-option"],
        ["--audio", "a.wav", "--avatar", "v.mp4", "-o", "o.mp4", "--ray-address", "auto"],  # needs --executor ray
        ["--audio", "a.wav", "--avatar", "v.mp4", "-o", "o.mp4", "--executor", "slurm"],
        ["does-not-exist.csv"],
        ["--audio", "a.wav", "--avatar", "v.mp4", "-o", "o.mp4", "--encoder", "libvpx-vp9"],  # not H.264/HEVC
        ["--audio", "a.wav", "--avatar", "v.mp4", "-o", "o.mp4", "--encoder", "libx264", "--codec", "hevc"],
        ["--audio", "a.wav", "--avatar", "v.mp4", "-o", "o.mp4", "--codec", "vp9"],
        ["--audio", "a.wav", "--avatar", "v.mp4", "-o", "o.mp4", "--preset", "p9"],  # no such x264 preset
        ["--audio", "a.wav", "--avatar", "v.mp4", "-o", "o.mp4", "--verify"],  # needs --resume
    ],
)
def test_usage_errors_exit_2(tmp_path, monkeypatch, args):
    monkeypatch.chdir(tmp_path)
    result = invoke(*args)
    assert result.exit_code == 2, result.output
    assert result.output.strip()
    assert not (tmp_path / "renders").exists() and not (tmp_path / "o.mp4").exists()


@pytest.mark.parametrize(
    ("name", "text", "line"),
    [
        ("m.jsonl", '{"audio": "a.wav", "avatar": "v.mp4"}\n{"audio": oops}\n', 2),
        ("m.csv", "id,audio,avatar\na,a.wav,v.mp4,extra\n", 2),
        ("m.csv", "id,audio,avatar,mood\na,a.wav,v.mp4,happy\n", 1),
        ("m.csv", "id,audio,avatar\nx,a.wav,v.mp4\ny,b.wav,v.mp4\nx,c.wav,v.mp4\n", 4),
        ("m.csv", "id,audio,avatar,output\na,a.wav,v.mp4,../../etc/x.mp4\n", 2),
        ("m.csv", "id,audio,avatar,output\na,a.wav,v.mp4,/tmp/x.mp4\n", 2),
        ("m.csv", "id,audio,avatar,output\na,a.wav,v.mp4,link/x.mp4\n", 2),
    ],
)
def test_malformed_manifest_exits_2_naming_file_and_line(tmp_path, name, text, line):
    manifest = tmp_path / name
    manifest.write_text(text, encoding="utf-8")
    out = tmp_path / "out"
    out.mkdir()
    (out / "link").symlink_to(tmp_path)  # a folder inside --out that leads out of it
    result = invoke(manifest, "--out", out)
    assert result.exit_code == 2, result.output
    assert f"{manifest}:{line}:" in result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["link"]  # nothing rendered, no log


# --- the lock and the output folder --------------------------------------------------------------------------------


def test_locked_output_folder_exits_75(tmp_path):
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"audio,avatar\n{FIXTURES / 'silence.wav'},{FIXTURES / 'portrait.png'}\n")
    out = tmp_path / "out"
    with RunLock(out):
        result = invoke(manifest, "--out", out)
        single = invoke("--audio", FIXTURES / "silence.wav", "--avatar", FIXTURES / "portrait.png", "-o", out / "a.mp4")
    assert (result.exit_code, single.exit_code) == (75, 75), result.output
    assert "another dhgen run" in result.stderr and str(out) in result.stderr
    assert not (out / "silence.mp4").exists() and not (out / "results.jsonl").exists()


# --- usage errors caught up front: exit 2, one error/hint pair, nothing started or written ---------------------------


def refused(*args, cwd: Path, env: dict | None = None) -> str:
    """Run the real command, expect it refused before anything starts (the callers check that no lock, log or
    output was made: the lock comes before any child process); returns stderr, the error and hint lines."""
    cmd = [str(DHGEN), "render", *map(str, args)]
    full_env = {k: v for k, v in os.environ.items() if k not in ("FORCE_COLOR", "TERM")} | (env or {})
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=60, env=full_env)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.splitlines()
    assert [line.split(":")[0] for line in lines] == ["error", "  hint"], proc.stderr  # one pair, nothing else
    assert "╭" not in proc.stderr and "\x1b" not in proc.stderr and not proc.stdout
    return proc.stderr


def nothing_written(*folders: Path) -> bool:
    return not any(f.exists() and any(f.iterdir()) for f in folders)


@pytest.fixture
def one_job(tmp_path):
    """Arguments of a valid one-job render into tmp_path/out/t.mp4."""
    return [
        "--audio",
        FIXTURES / "silence.wav",
        "--avatar",
        FIXTURES / "portrait.png",
        "-o",
        tmp_path / "out" / "t.mp4",
    ]


@pytest.mark.parametrize(
    ("extra", "env", "words"),
    [
        (["--device", "cuda"], {"CUDA_VISIBLE_DEVICES": ""}, "--device cuda: this machine has no usable CUDA device"),
        (["--device", "cuda:1"], {"CUDA_VISIBLE_DEVICES": "0"}, "--device cuda:1: only 1 CUDA device(s) are visible"),
        (["--preset", "quick"], None, "--preset 'quick' is not a preset of libx264"),
        (["--checkpoint", FIXTURES / "silence.wav"], None, "--model mouthwarp takes no checkpoint"),
        (["--model", "wav2lip", "--checkpoint", "nope.pth"], None, "checkpoint nope.pth does not exist"),
        (["--face", "middle"], None, "--face 'middle' is not a face choice"),
        (["--min-face-coverage", "1.5"], None, "--min-face-coverage': Input should be less than or equal to 1"),
    ],
)
def test_options_that_cannot_work_are_refused_before_anything_starts(tmp_path, one_job, extra, env, words, fake_gpus):
    fake_gpus(["GPU-0a", "GPU-1b"])  # the command sees a driver with two GPUs (a stand-in NVML)
    error = refused(*one_job, *extra, cwd=tmp_path, env=env)
    assert words in error
    assert nothing_written(tmp_path / "out") and sorted(p.name for p in tmp_path.iterdir()) == []


def test_a_text_file_as_checkpoint_is_refused_in_our_words(tmp_path, one_job):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "ckpt.txt").write_text("not weights")
    error = refused(*one_job, "--model", "wav2lip", "--checkpoint", "in/ckpt.txt", cwd=tmp_path)
    assert error.startswith("error: in/ckpt.txt is not a PyTorch checkpoint\n")
    assert "weights_only" not in error and "torch.save" in error
    assert nothing_written(tmp_path / "out")


def test_out_naming_a_file_is_not_a_folder(tmp_path):
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"audio,avatar\n{FIXTURES / 'silence.wav'},{FIXTURES / 'portrait.png'}\n")
    (tmp_path / "renders").write_text("a file")
    error = refused(manifest, "--out", "renders", cwd=tmp_path)
    assert error.startswith("error: output folder renders is a file, not a folder\n")
    assert (tmp_path / "renders").read_text() == "a file"
    blocker = tmp_path / "renders"
    error = refused(
        "--audio",
        FIXTURES / "silence.wav",
        "--avatar",
        FIXTURES / "portrait.png",
        "-o",
        blocker / "a.mp4",
        cwd=tmp_path,
    )
    assert f"{blocker} is a file, not a folder" in error and blocker.read_text() == "a file"


def test_a_parser_error_has_the_same_shape(tmp_path, one_job):
    error = refused(*one_job, "--no-such-option", cwd=tmp_path)
    assert error == "error: No such option: --no-such-option\n  hint: run `dhgen render -h` for the options\n"
    error = refused(*one_job, "--jobs", "0", cwd=tmp_path)
    assert error.startswith("error: Invalid value for '--jobs'")
    assert nothing_written(tmp_path / "out")


def test_a_refused_run_ends_its_json_events_with_run_error(tmp_path):
    manifest = tmp_path / "m.csv"
    manifest.write_text("id,audio,avatar,mood\na,a.wav,v.mp4,happy\n")
    proc = subprocess.run(
        [str(DHGEN), "render", str(manifest), "--out", "out", "--progress", "json", "--log-file", "logs/run.log"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    [event] = [json.loads(line) for line in proc.stdout.splitlines()]  # the only event
    assert event["event"] == "run_error" and event["exit_code"] == 2
    assert event["error"]["type"] == "ManifestError" and f"{manifest}:1:" in event["error"]["message"]
    assert event["error"]["hint"] and proc.stderr.count("error: ") == 1
    assert "ManifestError" in (tmp_path / "logs" / "run.log").read_text()  # the log file has it too
    assert not (tmp_path / "out").exists()


# --- help ------------------------------------------------------------------------------------------------------------


def test_render_help_groups_options_shows_choices_examples_and_exit_codes():
    result = CliRunner().invoke(app, ["render", "-h"], terminal_width=100)
    text = result.output
    assert result.exit_code == 0
    for panel in ("One job (no manifest)", "Manifest batch", "Model", "Avatar and encoding", "Execution", "Progress"):
        assert panel in text, panel
    assert "<auto|cpu|cuda|cuda:N>" in text and "<pingpong|loop>" in text
    assert "ultrafast, superfast, veryfast" in text and "DEBUG, INFO, WARNING or ERROR" in text
    assert "rich, plain, json" in text
    assert "<bool>" not in text and "--no-resume" not in text  # flags take no value
    examples = text[text.index("Examples") :]
    assert "dhgen render jobs.csv --out renders/batch1 --resume" in examples
    assert "dhgen render --audio hello.wav --avatar face.mp4 -o hello.mp4" in examples
    table = text[text.index("Exit codes") :]
    for code in ("0 ", "1 ", "2 ", "75 ", "130/143 "):
        assert f"  {code}" in table, code


def test_short_help_and_version():
    from dhgen import __version__

    assert CliRunner().invoke(app, ["-h"]).exit_code == 0
    doctor = CliRunner().invoke(app, ["doctor", "-h"])
    assert doctor.exit_code == 0 and "--json" in doctor.output and "<bool>" not in doctor.output
    version = subprocess.run([str(DHGEN), "--version"], capture_output=True, text=True, timeout=30)
    assert (version.returncode, version.stdout) == (0, f"dhgen {__version__}\n")


# --- one job --------------------------------------------------------------------------------------------------------


def test_one_job_form_refuses_out_and_missing_inputs(tmp_path, one_job):
    error = refused(*one_job, "--out", "elsewhere", cwd=tmp_path)
    assert "--out elsewhere is for manifest runs" in error
    error = refused("--audio", "nope.wav", "--avatar", FIXTURES / "portrait.png", "-o", "o.mp4", cwd=tmp_path)
    assert error.startswith("error: --audio nope.wav does not exist\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_an_existing_output_is_replaced_only_with_overwrite(tmp_path, one_job):
    target = tmp_path / "out" / "t.mp4"
    target.parent.mkdir()
    target.write_bytes(b"someone's video")
    error = refused(*one_job, cwd=tmp_path)
    assert error.startswith(f"error: {target} already exists\n") and "--overwrite" in error
    assert target.read_bytes() == b"someone's video" and sorted(p.name for p in target.parent.iterdir()) == ["t.mp4"]
    proc = run_dhgen(*one_job, "--overwrite", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert len(decode(target)[1]) == 50


# --- supervised runs through the real command ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def bad_batch(tmp_path_factory):
    """One manifest, default supervised executor: broken inputs next to good jobs, odd path names."""
    root = tmp_path_factory.mktemp("cli")
    odd = root / "dir ñ é"
    write_clip(odd / "voix d'été.wav", 1.0)
    shutil.copy(FIXTURES / "avatar.mp4", odd / "visage été.mp4")
    short = write_clip(root / "short.wav", 0.6)
    out = root / "sortie ñ"
    f = FIXTURES
    rows = [
        ("", "dir ñ é/voix d'été.wav", "dir ñ é/visage été.mp4", ""),  # id derived, relative to the manifest
        ("missing", "nope.wav", f / "avatar.mp4", ""),
        ("garbage", f / "garbage.wav", f / "avatar.mp4", ""),
        ("truncated", short, f / "truncated.mp4", ""),
        ("noface", short, f / "noface.mp4", ""),
        ("silence", f / "silence.wav", f / "portrait.png", ""),
    ]
    manifest = root / "jobs.csv"
    lines = ["id,audio,avatar,output", *(",".join(f'"{v}"' for v in row) for row in rows)]
    manifest.write_text("\n".join(lines) + "\n", encoding="utf-8")
    proc = run_dhgen(manifest, "--out", out, cwd=root)
    return proc, out, records(out / "results.jsonl")


EXPECTED_ERRORS = {  # job id: (error type, what the message must name)
    "missing": ("MissingInputError", "nope.wav"),
    "garbage": ("AudioDecodeError", "garbage.wav"),
    "truncated": ("AvatarDecodeError", "truncated.mp4"),
    "noface": ("NoFaceError", "noface.mp4"),
}


def test_bad_inputs_fail_alone_with_typed_errors(bad_batch):
    proc, out, recs = bad_batch
    assert proc.returncode == 1, proc.stderr
    assert len(recs) == 6, sorted(recs)
    for job_id, (error_type, names) in EXPECTED_ERRORS.items():
        rec = recs[job_id]
        assert rec["status"] == "failed", rec
        err = rec["error"]
        assert err["type"] == error_type
        assert err["message"].strip() and names in err["message"]
        assert err["hint"].strip() and err["retryable"] is False
        assert rec["attempts"] == 1  # not retried: the type says it would fail again
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [".dhgen.lock", "results.jsonl", "silence.mp4", "voix_d_été.mp4"]
    )


def test_good_jobs_in_the_bad_batch_succeed(bad_batch):
    _, out, recs = bad_batch
    good = [r for job_id, r in recs.items() if job_id not in EXPECTED_ERRORS]
    assert len(good) == 2 and all(r["status"] == "succeeded" for r in good), good
    odd_name = next(r for r in good if r["job_id"] != "silence")
    assert "voix d'été.wav" in odd_name["audio"] and Path(odd_name["output"]).parent == out.resolve()
    for rec in good:
        codecs, frames = decode(Path(rec["output"]))
        assert codecs == ["h264", "aac"] and len(frames) == rec["frames"]
    _, silent = decode(out / "silence.mp4")
    assert len(silent) == 50
    motion = np.abs(np.diff(silent.astype(np.int16), axis=0)).mean(axis=(1, 2, 3))
    assert motion.max() < 0.1  # still portrait + silence: nothing moves (beyond x264's rounding)


def test_job_whose_output_folder_cannot_be_made_fails_alone(tmp_path):
    short = write_clip(tmp_path / "short.wav", 0.4)
    out = tmp_path / "out"
    out.mkdir()
    (out / "blocker").write_text("a file where a folder should be")
    manifest = tmp_path / "m.csv"
    portrait = FIXTURES / "portrait.png"
    manifest.write_text(f"id,audio,avatar,output\nbad,{short},{portrait},blocker/x.mp4\nok,{short},{portrait},\n")
    proc = run_dhgen(manifest, "--out", out, cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr
    recs = records(out / "results.jsonl")
    assert recs["ok"]["status"] == "succeeded"
    err = recs["bad"]["error"]
    assert (err["type"], err["retryable"]) == ("OutputError", False)
    assert "blocker" in err["message"] and err["hint"]
    assert (out / "blocker").read_text() == "a file where a folder should be"


def test_demo_like_batch_exits_0(tmp_path):
    write_clip(tmp_path / "hello.wav", 0.8)
    write_clip(tmp_path / "news.wav", 0.6)
    shutil.copy(FIXTURES / "avatar.webm", tmp_path / "presenter.webm")
    shutil.copy(FIXTURES / "portrait.png", tmp_path / "portrait.png")
    (tmp_path / "manifest.csv").write_text(
        "id,audio,avatar\nwelcome,hello.wav,presenter.webm\n,news.wav,portrait.png\n"
    )
    proc = run_dhgen("manifest.csv", "--out", "renders/demo", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / "renders" / "demo"
    recs = records(out / "results.jsonl")
    assert {k: r["status"] for k, r in recs.items()} == {"welcome": "succeeded", "news": "succeeded"}
    assert [len(decode(out / f"{name}.mp4")[1]) for name in ("welcome", "news")] == [20, 15]
    again = run_dhgen("manifest.csv", "--out", "renders/demo", "--resume", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert [r["status"] for r in map(json.loads, (out / "results.jsonl").read_text().splitlines())][2:] == [
        "skipped",
        "skipped",
    ]


def test_one_job_form_writes_the_named_file(tmp_path):
    audio = write_clip(tmp_path / "in put" / "voix.wav", 0.6)
    target = tmp_path / "single" / "mon clip.mp4"
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    log_file = tmp_path / "logs" / "deep" / "run.log"  # its folder does not exist yet
    args = ["--avatar", FIXTURES / "portrait.png", "-o", target, "--log-file", log_file, "--log-level", "info"]
    proc = run_dhgen("--audio", audio, *args, cwd=cwd)
    assert proc.returncode == 0, proc.stderr
    codecs, frames = decode(target)
    assert codecs == ["h264", "aac"] and frames.shape == (15, 288, 288, 3)
    [rec] = records(target.parent / "results.jsonl").values()  # the log goes beside the output
    assert rec["status"] == "succeeded" and rec["output"] == str(target)
    assert (target.parent / ".dhgen.lock").exists() and sorted(cwd.iterdir()) == []  # nothing in the current folder
    assert "job mon_clip succeeded" in log_file.read_text()


def test_an_encoder_that_does_not_open_here_exits_2_naming_it_and_what_opens(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    audio = write_clip(tmp_path / "a.wav", 0.4)
    # libx264rgb is in the build but takes RGB only, so it opens nowhere for dhgen's yuv420p (as NVENC does not here)
    result = invoke("--audio", audio, "--avatar", FIXTURES / "portrait.png", "-o", "o.mp4", "--encoder", "libx264rgb")
    assert result.exit_code == 2, result.output
    assert result.output.count("error:") == 1 and result.output.count("hint:") == 1
    assert "--encoder libx264rgb does not open here" in result.output and "yuv420p" in result.output
    assert "encoders that open here: libx264, libx265" in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.wav"]  # no lock, no log, no output


def test_hevc_output_is_tagged_hvc1_and_verifies_on_resume(tmp_path):
    audio = write_clip(tmp_path / "a.wav", 0.6)
    target = tmp_path / "out" / "clip.mp4"
    args = ("--audio", audio, "--avatar", FIXTURES / "portrait.png", "-o", target, "--codec", "hevc")
    proc = run_dhgen(*args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "x265 [info]" not in proc.stderr  # x265's banner stays out of the user's terminal
    with av.open(str(target)) as container:
        video = container.streams.video[0]
        assert (video.codec_context.name, video.codec_tag, video.frames) == ("hevc", "hvc1", 15)
    [rec] = records(target.parent / "results.jsonl").values()
    assert rec["encoder"]["codec"] == "hevc" and rec["encoder"]["name"] in ("libx265", "hevc_nvenc")
    again = run_dhgen(*args, "--resume", "--verify", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    first, second = map(json.loads, (target.parent / "results.jsonl").read_text().splitlines())
    assert second["status"] == "succeeded" and second["frames_digest"] == first["frames_digest"]


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["--ray-head-timeout", "10"], "--ray-head-timeout need --executor ray"),
        (["--executor", "ray", "--ray-head-timeout", "0"], "--ray-head-timeout"),
    ],
)
def test_a_ray_head_timeout_needs_the_ray_executor_and_a_positive_value(tmp_path, args, said):
    result = invoke(
        "--audio", FIXTURES / "speech.m4a", "--avatar", FIXTURES / "avatar.mp4", "-o", tmp_path / "o.mp4", *args
    )
    assert result.exit_code == 2 and said in result.output, result.output
    assert not (tmp_path / "o.mp4").exists()


def test_a_ray_cluster_that_cannot_be_reached_exits_2_at_once(tmp_path):
    audio, avatar = FIXTURES / "speech.m4a", FIXTURES / "avatar.mp4"
    cmd = [str(DHGEN), "render", "--audio", audio, "--avatar", avatar, "-o", tmp_path / "o.mp4"]
    result = subprocess.run(
        [*map(str, cmd), "--executor", "ray", "--ray-address", "127.0.0.1:1"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2, result.stderr
    assert "cannot reach the Ray cluster at 127.0.0.1:1" in result.stderr and "hint: " in result.stderr
    assert not (tmp_path / "o.mp4").exists()
