"""Model families from other packages, found through the entry-point group `dhgen.models`.

The example plugin (examples/plugin, `dhgen-lipshade`) is pip-installed into this venv and renders through
`--model lipshade` in-process, under the local executor's worker processes and on Ray, frame for frame the same.
Misbehaving plugins (tests/fixtures/plugins/dhgen_fussy.py) are laid out as an installed package's dist-info on
PYTHONPATH: one that cannot be imported is listed with its error and refused up front; one that raises, answers
the wrong shape, or segfaults gets its typed error, and the other jobs finish.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
from conftest import FIXTURES, write_clip

from dhgen.avatar import probe_avatar
from dhgen.face import track_faces
from dhgen.manifest import Job
from dhgen.models import registry
from dhgen.options import AvatarOptions, EncodeOptions, FaceOptions, ModelOptions, RenderOptions, RunOptions
from dhgen.runner import render

PLUGIN = Path(__file__).parents[1] / "examples" / "plugin"
DHGEN = [sys.executable, "-m", "dhgen.cli"]
AVATAR = FIXTURES / "portrait.png"
LIPSHADE = RenderOptions(encode=EncodeOptions(threads=2), model=ModelOptions(name="lipshade", device="cpu"))


@pytest.fixture(scope="module")
def lipshade():
    """The example plugin, pip-installed into the venv running the tests (and removed again afterwards)."""
    pip = [sys.executable, "-m", "pip", "-q", "--disable-pip-version-check"]
    subprocess.run([*pip, "install", "--no-deps", "--no-build-isolation", str(PLUGIN)], check=True, timeout=300)
    registry.rescan()
    try:
        yield
    finally:
        subprocess.run([*pip, "uninstall", "-y", "dhgen-lipshade"], check=True, timeout=120)
        registry.rescan()
        shutil.rmtree(PLUGIN / "build", ignore_errors=True)
        shutil.rmtree(PLUGIN / "dhgen_lipshade.egg-info", ignore_errors=True)


@pytest.fixture
def fussy(tmp_path) -> dict:
    """The misbehaving families, installed the way pip lays out a package (module + dist-info) in a folder that
    PYTHONPATH names: the environment for a dhgen subprocess that sees them."""
    site = tmp_path / "site"
    dist = site / "dhgen_fussy-0.2.dist-info"
    dist.mkdir(parents=True)
    shutil.copy(FIXTURES / "plugins" / "dhgen_fussy.py", site)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: dhgen-fussy\nVersion: 0.2\n")
    (dist / "entry_points.txt").write_text(
        "[dhgen.models]\nfussy_raise = dhgen_fussy:raising\nfussy_shape = dhgen_fussy:wrong_shape\n"
        "fussy_segv = dhgen_fussy:segfaulting\nfussy_import = dhgen_fussy_gone:family\n"
    )
    marker = tmp_path / "segv-once"
    return {**os.environ, "PYTHONPATH": str(site), "DHGEN_FUSSY_MARKER": str(marker)}


def _dhgen(*args, env=None, timeout=120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*DHGEN, *args], capture_output=True, text=True, env=env, timeout=timeout, stdin=subprocess.DEVNULL
    )


def _records(folder: Path) -> dict[str, dict]:
    lines = (folder / "results.jsonl").read_text().splitlines()
    return {r["job_id"]: r for r in map(json.loads, lines)}


def _frames(path: Path) -> np.ndarray:
    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="bgr24") for f in container.decode(video=0)])


# --- the example plugin --------------------------------------------------------------------------------------------


def test_dhgen_models_lists_the_plugin_beside_the_built_ins(lipshade):
    listed = _dhgen("models")
    assert listed.returncode == 0, listed.stderr
    lines = {line.split()[0]: line for line in listed.stdout.splitlines()}
    assert list(lines)[:3] == ["mouthwarp", "musetalk", "wav2lip"]
    assert "dhgen-lipshade==0.1.0" in lines["lipshade"] and "numpy" in lines["lipshade"]
    described = {d["name"]: d for d in json.loads(_dhgen("models", "--json").stdout)}
    assert described["lipshade"] == {
        "name": "lipshade",
        "source": "dhgen-lipshade==0.1.0",
        "family": "dhgen_lipshade:family",
        "backends": ["numpy"],
        "checkpoint": False,
        "gpu": "none",
        "description": "example plugin: shades the mouth with the speech's loudness (numpy)",
        "error": None,
    }


def test_the_plugin_renders_in_worker_processes_and_shades_the_mouth_with_speech(lipshade, tmp_path):
    """`dhgen render --model lipshade` under the local supervisor: the mouth darkens when she speaks, the frame
    above the mouth stays as it was, and the record names the plugin's package."""
    audio = write_clip(tmp_path / "in" / "speech.wav", 2.0)
    done = _dhgen(
        "render",
        "--audio",
        str(audio),
        "--avatar",
        str(AVATAR),
        "-o",
        str(tmp_path / "o.mp4"),
        "--model",
        "lipshade",
        "--progress",
        "none",
    )
    assert done.returncode == 0, done.stderr
    record = _records(tmp_path)["o"]
    assert record["model"]["source"] == "dhgen-lipshade==0.1.0" and record["model"]["family"] == "dhgen_lipshade:family"
    assert record["model"]["device"] == "cpu" and record["frames"] == 50

    frames = _frames(tmp_path / "o.mp4").astype(np.float32)
    still = cv2.imread(str(AVATAR))[None].astype(np.float32)
    x, y, w, h = _face_box(tmp_path)
    mouth = frames[:, int(y + 0.78 * h) : int(y + 0.88 * h), int(x + 0.4 * w) : int(x + 0.6 * w)].mean(axis=(1, 2, 3))
    above = np.abs(frames[:, : int(y + 0.5 * h)] - still[:, : int(y + 0.5 * h)]).mean(axis=(1, 2, 3))
    assert mouth.max() - mouth.min() > 20  # shaded while she speaks, not in the pauses
    assert above.max() < 4.0 and np.ptp(above) < 0.5  # above the mouth: the still's pixels, give or take x264


def test_the_same_frames_in_process_locally_and_on_ray(lipshade, ray_cluster, tmp_path):
    audio = write_clip(tmp_path / "in" / "a.wav", 1.2)
    digests = {}
    for executor, extra in (("inprocess", {}), ("local", {}), ("ray", {"ray_address": ray_cluster.address})):
        out = tmp_path / executor
        run = RunOptions(out_dir=out, jobs=1, job_timeout=90, executor="local" if executor != "ray" else "ray", **extra)
        kwargs = {}
        if executor == "inprocess":
            from dhgen.executors.inprocess import InProcessExecutor

            kwargs["executor"] = InProcessExecutor(LIPSHADE)
        summary = render([Job("a", audio, AVATAR, out / "a.mp4")], LIPSHADE, run, **kwargs)
        [record] = summary.records
        assert record.status == "succeeded", record.error
        assert record.model["source"] == "dhgen-lipshade==0.1.0"
        digests[executor] = record.frames_digest
    assert len(set(digests.values())) == 1, digests


# --- plugins that misbehave ----------------------------------------------------------------------------------------


def test_a_plugin_that_cannot_be_imported_is_named_and_harms_no_other(fussy, tmp_path):
    listed = _dhgen("models", env=fussy)
    assert listed.returncode == 0
    lines = {line.split()[0]: line for line in listed.stdout.splitlines()}
    assert "BROKEN" in lines["fussy_import"] and "dhgen_fussy_gone" in lines["fussy_import"]
    assert "BROKEN" not in lines["fussy_raise"] and "BROKEN" not in lines["mouthwarp"]

    doctor = _dhgen("doctor", "--json", env=fussy)
    checks = {c["name"]: c for c in json.loads(doctor.stdout)["checks"]}
    assert (
        checks["model fussy_import"]["status"] == "warn"
        and "dhgen_fussy_gone" in checks["model fussy_import"]["detail"]
    )
    assert checks["models"]["status"] == "ok"

    audio = write_clip(tmp_path / "a.wav", 0.4)
    refused = _dhgen(
        "render",
        "--audio",
        str(audio),
        "--avatar",
        str(AVATAR),
        "-o",
        str(tmp_path / "o.mp4"),
        "--model",
        "fussy_import",
        env=fussy,
    )
    assert refused.returncode == 2
    assert "model 'fussy_import' (dhgen_fussy_gone:family, from dhgen-fussy==0.2) cannot be loaded" in refused.stderr
    assert "No module named 'dhgen_fussy_gone'" in refused.stderr and not (tmp_path / "results.jsonl").exists()


def _manifest(tmp_path: Path) -> Path:
    """Two jobs: one with silence (fussy_raise raises on it), one with speech."""
    silence = tmp_path / "in" / "silence.wav"
    silence.parent.mkdir()
    with av.open(str(silence), "w") as container:
        stream = container.add_stream("pcm_s16le", rate=16000, layout="mono")
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 8000), np.int16), format="s16", layout="mono")
        frame.sample_rate = 16000
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            container.mux(packet)
    write_clip(tmp_path / "in" / "speech.wav", 0.8, start=1.0)
    manifest = tmp_path / "jobs.csv"
    manifest.write_text(f"id,audio,avatar\nquiet,in/silence.wav,{AVATAR}\nloud,in/speech.wav,{AVATAR}\n")
    return manifest


@pytest.mark.parametrize(
    ("model", "message"),
    [
        ("fussy_raise", "model fussy_raise raised KeyError in predict: 'no speech in this batch'"),
        ("fussy_shape", "model fussy_shape answered a batch of "),
    ],
)
def test_a_model_that_raises_or_answers_the_wrong_shape_fails_with_model_error(fussy, tmp_path, model, message):
    out = tmp_path / "out"
    done = _dhgen(
        "render",
        str(_manifest(tmp_path)),
        "--out",
        str(out),
        "--model",
        model,
        "--jobs",
        "1",
        "--progress",
        "none",
        env=fussy,
    )
    assert done.returncode == 1, done.stderr
    records = _records(out)
    quiet = records["quiet"]
    assert quiet["status"] == "failed" and quiet["error"]["type"] == "ModelError" and quiet["attempts"] == 1
    assert quiet["error"]["message"].startswith(message) and quiet["error"]["hint"]
    assert not (out / "quiet.mp4").exists()
    if model == "fussy_raise":  # it raises only on silence: the job with speech renders
        assert records["loud"]["status"] == "succeeded" and (out / "loud.mp4").is_file()
        assert "KeyError" in quiet["error"]["traceback"]


def test_a_plugin_that_segfaults_costs_a_worker_not_the_job(fussy, tmp_path):
    audio = write_clip(tmp_path / "a.wav", 0.8)
    done = _dhgen(
        "render",
        "--audio",
        str(audio),
        "--avatar",
        str(AVATAR),
        "-o",
        str(tmp_path / "o.mp4"),
        "--model",
        "fussy_segv",
        "--progress",
        "none",
        env=fussy,
    )
    assert done.returncode == 0, done.stderr
    record = _records(tmp_path)["o"]
    assert record["status"] == "succeeded" and record["frames"] == 20
    [crash] = [e for e in record["errors"] if e["type"] == "WorkerCrashed"]
    assert crash["signal"] == "SIGSEGV" and "inference worker" in crash["message"]


def _face_box(tmp_path: Path) -> tuple[float, ...]:
    """Where the tracker finds the portrait's face (the same tracker every family's crop starts from)."""
    info = probe_avatar(AVATAR, AvatarOptions())
    return tuple(track_faces(info, 1, FaceOptions(cache_dir=tmp_path / "faces")).boxes[0])
