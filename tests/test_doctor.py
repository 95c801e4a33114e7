"""`dhgen doctor`: this machine is ready; a machine without an encoder, the cascade or torch is not (exit 1)."""

from __future__ import annotations

import dataclasses
import json

import cv2
from typer.testing import CliRunner

import dhgen
from dhgen.cli import app
from dhgen.doctor import EXIT_NOT_READY, EXIT_READY, Probes, run_doctor
from dhgen.errors import UsageError


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


def test_cli_json_report(tmp_path):
    result = CliRunner().invoke(app, ["doctor", "--json", "--out", str(tmp_path)])
    report = json.loads(result.output)
    assert result.exit_code == 0 and report["ready"] is True
    assert {c["name"] for c in report["checks"]} >= {"torch", "libx264 encoder", "haar cascade", "cuda devices"}


def test_warnings_do_not_fail_but_missing_torch_and_an_unwritable_folder_do(tmp_path):
    base = Probes(torch=lambda: {"version": "2.5.0", "cuda": "12.4", "devices": []})
    report = run_doctor(tmp_path, dataclasses.replace(base, output=lambda folder: (1024**3, True)))
    assert report.exit_code == EXIT_READY
    assert status_of(report, "cuda devices") == "warn" and status_of(report, "output folder") == "warn"
    assert "check `nvidia-smi`" in "\n".join(report.lines())  # a CUDA build that sees no GPU
    assert report.verdict() == "verdict: ready to render (2 warnings)"

    def no_torch():
        raise ImportError("No module named 'torch'")

    report = run_doctor(tmp_path, dataclasses.replace(base, torch=no_torch, output=lambda folder: (10**12, False)))
    assert report.exit_code == EXIT_NOT_READY
    assert report.verdict() == "verdict: NOT READY, missing: torch, output folder"


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
