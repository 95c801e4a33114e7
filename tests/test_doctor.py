"""`dhgen doctor`: this machine is ready; a machine without an encoder, the cascade or torch is not (exit 1)."""

from __future__ import annotations

import dataclasses
import json

import cv2
from typer.testing import CliRunner

import dhgen
from dhgen.cli import app
from dhgen.doctor import EXIT_NOT_READY, EXIT_READY, OutputFolder, Probes, run_doctor
from dhgen.encoders import EncoderInfo
from dhgen.errors import UsageError
from dhgen.gpus import Gpus


def status_of(report, name: str) -> str:
    return next(c.status for c in report.checks if c.name == name)


def test_this_machine_is_ready(tmp_path):
    report = run_doctor(tmp_path / "renders")
    text = "\n".join(report.lines())
    assert report.exit_code == EXIT_READY, text
    for name in ("python", "torch", "pyav", "libx264 encoder", "aac encoder", "haar cascade", "output folder"):
        assert status_of(report, name) == "ok", name
    assert "haarcascade_frontalface_default.xml" in text and "GiB free" in text and "FFmpeg" in text
    assert status_of(report, "face cache") == "info" and status_of(report, "cpus") == "info"
    assert report.lines()[-1].startswith("verdict: ready to render")


def test_a_missing_encoder_is_reported_with_a_fix(tmp_path):
    probes = Probes(encoder=lambda name: name != "libx264")
    report = run_doctor(tmp_path, probes)
    lines = report.lines()
    assert report.exit_code == EXIT_NOT_READY
    failing = next(line for line in lines if "libx264 encoder" in line)
    assert failing.startswith("FAIL") and "missing" in failing
    assert "hint: install the PyPI wheel of av" in lines[lines.index(failing) + 1]
    assert status_of(report, "aac encoder") == "ok"
    assert lines[-1] == "verdict: NOT READY, missing: libx264 encoder"


def test_missing_cascade_fails_the_cli(tmp_path, monkeypatch):
    # an OpenCV without its data files (like the 5.x wheels): the cascade dhgen loads is simply not there
    monkeypatch.setattr(cv2.data, "haarcascades", str(tmp_path / "no-cascades") + "/")
    result = CliRunner().invoke(app, ["doctor", "--out", str(tmp_path)])
    assert result.exit_code == EXIT_NOT_READY, result.output
    assert "FAIL  haar cascade" in result.output and "opencv-python-headless<5" in result.output
    assert "verdict: NOT READY, missing: haar cascade" in result.output


def test_cli_json_report_gives_numbers_as_numbers(tmp_path):
    result = CliRunner().invoke(app, ["doctor", "--json", "--out", str(tmp_path)])
    report = json.loads(result.output)
    assert result.exit_code == 0 and report["ready"] is True
    checks = {c["name"]: c for c in report["checks"]}
    assert set(checks) >= {"torch", "libx264 encoder", "haar cascade", "cuda devices"}
    assert report["verdict"].startswith("ready to render")  # no "verdict: " prefix in JSON
    folder, cpus = checks["output folder"], checks["cpus"]
    assert isinstance(folder["free_bytes"], int) and folder["free_bytes"] > 0 and folder["exists"] is True
    assert isinstance(cpus["count"], int) and cpus["count"] >= 1
    assert isinstance(checks["cuda devices"]["count"], int) and isinstance(checks["face cache"]["bytes"], int)
    assert checks["libx264 encoder"]["available"] is True


def test_a_folder_that_does_not_exist_is_said_to_be_missing(tmp_path):
    missing = tmp_path / "not" / "there"
    result = CliRunner().invoke(app, ["doctor", "--out", str(missing)])
    line = next(line for line in result.output.splitlines() if "output folder" in line)
    assert result.exit_code == 0, result.output
    assert f"{missing} does not exist yet (dhgen creates it in {tmp_path})" in line and "GiB free" in line
    report = json.loads(CliRunner().invoke(app, ["doctor", "--json", "--out", str(missing)]).output)
    assert next(c for c in report["checks"] if c["name"] == "output folder")["exists"] is False
    assert not missing.exists() and not (tmp_path / "not").exists()  # doctor creates nothing


def test_a_file_given_as_the_folder_fails(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    result = CliRunner().invoke(app, ["doctor", "--out", str(blocker / "sub")])
    assert result.exit_code == EXIT_NOT_READY
    assert f"{blocker / 'sub'}: {blocker} is a file, not a folder" in result.output
    assert result.output.splitlines()[-1] == "verdict: NOT READY, missing: output folder"


def test_warnings_do_not_fail_but_missing_torch_and_an_unwritable_folder_do(tmp_path):
    base = Probes(torch=lambda: {"version": "2.5.0", "cuda": "12.4", "devices": []})
    report = run_doctor(tmp_path, dataclasses.replace(base, output=lambda folder: OutputFolder(1024**3, True, folder)))
    assert report.exit_code == EXIT_READY
    assert status_of(report, "cuda devices") == "warn" and status_of(report, "output folder") == "warn"
    assert "check `nvidia-smi`" in "\n".join(report.lines())  # a CUDA build that sees no GPU
    assert report.verdict() == "verdict: ready to render (2 warnings)"

    def no_torch():
        raise ImportError("No module named 'torch'")

    unwritable = dataclasses.replace(base, torch=no_torch, output=lambda folder: OutputFolder(10**12, False, folder))
    report = run_doctor(tmp_path, unwritable)
    assert report.exit_code == EXIT_NOT_READY
    assert report.verdict() == "verdict: NOT READY, missing: torch, output folder"


def test_the_encoders_that_open_here_are_listed_and_in_the_json(tmp_path):
    report = run_doctor(tmp_path)
    h264 = next(c for c in report.checks if c.name == "h264 encoders")
    hevc = next(c for c in report.checks if c.name == "hevc encoders")
    assert h264.status == "ok" and h264.detail.startswith("open here: libx264")
    assert hevc.status == "ok" and hevc.detail.startswith("open here: libx265")
    assert "h264_nvenc" in "\n".join(report.lines())  # opening or not, NVENC is accounted for
    by_name = {e["name"]: e for e in report.to_dict()["encoders"]}
    assert by_name["libx264"] == {"name": "libx264", "codec": "h264", "hardware": False, "failure": None, "opens": True}
    assert by_name["h264_nvenc"]["hardware"] and by_name["h264_nvenc"]["opens"] == (
        by_name["h264_nvenc"]["failure"] is None
    )
    result = CliRunner().invoke(app, ["doctor", "--json", "--out", str(tmp_path)])
    assert {e["name"] for e in json.loads(result.output)["encoders"]} >= {"libx264", "libx265", "h264_nvenc"}


def test_a_box_where_nvenc_opens_says_auto_uses_it(tmp_path):
    encoders = [
        EncoderInfo("libx264", "h264", False, None),
        EncoderInfo("h264_nvenc", "h264", True, None),
        EncoderInfo("libx265", "hevc", False, None),
        EncoderInfo("hevc_nvenc", "hevc", True, None),
    ]
    report = run_doctor(tmp_path, Probes(encoders=lambda: encoders))
    assert "(--encoder auto uses h264_nvenc)" in next(c.detail for c in report.checks if c.name == "h264 encoders")
    assert status_of(report, "nvenc") == "ok"


def test_a_box_without_hevc_warns_and_one_without_h264_is_not_ready(tmp_path):
    h264_only = [EncoderInfo("libx264", "h264", False, None), EncoderInfo("h264_nvenc", "h264", True, "No NVENC")]
    report = run_doctor(tmp_path, Probes(encoders=lambda: h264_only))
    assert status_of(report, "hevc encoders") == "warn" and report.exit_code == EXIT_READY
    assert "h264_nvenc: No NVENC" in next(c.detail for c in report.checks if c.name == "nvenc")
    broken = [EncoderInfo("libx264", "h264", False, "Invalid argument")]
    report = run_doctor(tmp_path, Probes(encoders=lambda: broken))
    assert status_of(report, "h264 encoders") == "fail" and report.exit_code == EXIT_NOT_READY


def _detail(report, name: str) -> str:
    return next(c.detail for c in report.checks if c.name == name)


def test_a_driver_too_old_for_torchs_cuda_build_and_for_nvenc_is_named(tmp_path):
    """Why `auto` used the CPU and libx264 on a GPU box whose driver predates what is installed."""
    old = Gpus(2, 2, driver="470.82.01", cuda="11.4")
    encoders = [
        EncoderInfo("libx264", "h264", False, None),
        EncoderInfo("h264_nvenc", "h264", True, "Function not implemented"),
    ]
    probes = Probes(
        torch=lambda: {"version": "2.8.0", "cuda": "12.8", "devices": []}, gpus=lambda: old, encoders=lambda: encoders
    )
    report = run_doctor(tmp_path, probes)
    assert _detail(report, "nvidia driver") == "470.82.01 (runs CUDA up to 11.4); 2 GPU(s) visible"
    assert _detail(report, "torch") == "2.8.0 (CUDA 12.8 build, needs NVIDIA driver >= 525.60.13)"
    devices = next(c for c in report.checks if c.name == "cuda devices")
    assert devices.status == "warn" and "needs NVIDIA driver >= 525.60.13, this one is 470.82.01" in devices.detail
    assert "up to 11.4" in devices.hint
    assert "NVENC in this FFmpeg needs NVIDIA driver >= 570, this one is 470.82.01" in _detail(report, "nvenc")
    assert report.to_dict()["checks"][1]["driver"] == "470.82.01"


def test_a_recent_driver_whose_gpus_do_not_open_nvenc_says_they_may_have_none(tmp_path):
    encoders = [EncoderInfo("libx264", "h264", False, None), EncoderInfo("h264_nvenc", "h264", True, "No device")]
    recent = Gpus(1, 1, driver="575.51.03", cuda="12.9")
    report = run_doctor(tmp_path, Probes(gpus=lambda: recent, encoders=lambda: encoders))
    assert "driver 575.51.03 is recent enough: these GPUs may have no NVENC engine" in _detail(report, "nvenc")


def test_the_driver_is_read_through_nvml(tmp_path, monkeypatch, fake_gpus):
    fake_gpus(["GPU-aaaa", "GPU-bbbb"], driver="570.86.15", cuda=12080)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    report = run_doctor(tmp_path)
    assert _detail(report, "nvidia driver") == (
        "570.86.15 (runs CUDA up to 12.8); 1 GPU(s) visible (CUDA_VISIBLE_DEVICES hides 1)"
    )
    fake_gpus(None)
    assert status_of(run_doctor(tmp_path), "nvidia driver") == "info"


def test_a_ray_cluster_is_checked_node_by_node(ray_cluster, tmp_path):
    report = run_doctor(tmp_path, ray_address=ray_cluster.address)
    cluster = next(c for c in report.checks if c.name == "ray cluster")
    nodes = [c for c in report.checks if c.name.startswith("node 127.0.0.1 (")]
    assert cluster.status == "ok" and "3 node(s) alive, 2 CPUs, 0 GPUs" in cluster.detail
    assert sorted(c.status for c in nodes) == ["info", "ok", "ok"]  # the head has no CPU: no jobs run there
    assert all(f"dhgen {dhgen.__version__}" in c.detail and "torch" in c.detail for c in nodes)

    result = CliRunner().invoke(app, ["doctor", "--json", "--out", str(tmp_path), "--ray-address", ray_cluster.address])
    assert result.exit_code == EXIT_READY, result.output
    assert sum(c["name"].startswith("node ") for c in json.loads(result.output)["checks"]) == 3


def test_a_ray_cluster_that_cannot_be_reached_fails_the_report_with_a_hint(tmp_path):
    def unreachable(address):
        raise UsageError(f"cannot reach the Ray cluster at {address}: Connection refused", hint="check the address")

    report = run_doctor(tmp_path, Probes(ray=unreachable), ray_address="10.9.9.9:6379")
    assert report.exit_code == EXIT_NOT_READY and status_of(report, "ray cluster") == "fail"
    assert "hint: check the address" in "\n".join(report.lines())
    assert report.verdict() == "verdict: NOT READY, missing: ray cluster"
