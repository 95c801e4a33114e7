"""`dhgen doctor`: what this machine has that dhgen needs, each check with a status, and a verdict.

Every fact comes from a probe (a plain function); `Probes` bundles them so tests can simulate a machine that
lacks an encoder or the Haar cascade. Required checks that fail make the verdict "not ready" and the exit code
1; warnings (no GPU, little free space) do not.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from dhgen.options import default_cache_dir

MIN_PYTHON = (3, 10)
LOW_SPACE_BYTES = 2 * 1024**3  # below this at the output folder: a warning (a 1080p minute is ~10-30 MB)
REQUIRED_ENCODERS = ("libx264", "aac")
EXIT_READY, EXIT_NOT_READY = 0, 1


@dataclass(frozen=True)
class Check:
    name: str
    status: str  # ok | warn | fail | info
    detail: str
    hint: str = ""


# --- probes: each returns a fact or raises --------------------------------------------------------------------


def probe_python() -> tuple[int, int, int]:
    return tuple(sys.version_info[:3])


def probe_torch() -> dict:
    """torch version, its CUDA build, and the CUDA devices it sees (raises ImportError without torch)."""
    import torch

    devices = []
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            devices.append(f"cuda:{i} {props.name} ({props.total_memory / 1024**3:.0f} GiB)")
    return {"version": torch.__version__, "cuda": torch.version.cuda, "devices": devices}


def probe_pyav() -> dict:
    import av

    codec = ".".join(map(str, av.library_versions.get("libavcodec", ())))
    return {"version": av.__version__, "ffmpeg": str(getattr(av, "ffmpeg_version_info", "?")), "libavcodec": codec}


def probe_encoder(name: str) -> bool:
    import av.codec

    try:
        av.codec.Codec(name, "w")
    except ValueError:  # av.codec.codec.UnknownCodecError
        return False
    return True


def probe_cascade() -> Path | None:
    """The frontal-face Haar cascade dhgen uses, if present and loadable."""
    import cv2

    from dhgen.face import CASCADE

    path = Path(getattr(getattr(cv2, "data", None), "haarcascades", "") or ".") / CASCADE
    if not path.is_file() or cv2.CascadeClassifier(str(path)).empty():
        return None
    return path


def probe_cache() -> tuple[Path, int]:
    """The face-cache folder and the bytes in it."""
    folder = default_cache_dir()
    size = sum(p.stat().st_size for p in folder.glob("**/*") if p.is_file()) if folder.is_dir() else 0
    return folder, size


def probe_output(folder: Path) -> tuple[int, bool]:
    """Free bytes where `folder` is (or would be created), and whether dhgen may write there."""
    folder = Path(folder).absolute()
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return shutil.disk_usage(folder).free, os.access(folder, os.W_OK | os.X_OK)


def probe_cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def probe_ray(address: str) -> dict:
    """A Ray cluster's alive nodes, each with what it has (`raycluster.cluster.probe_nodes`). Raises when the
    cluster cannot be reached or Ray is not installed."""
    from dhgen.executors.raycluster.cluster import probe_nodes

    return probe_nodes(address)


@dataclass(frozen=True)
class Probes:
    python: Callable[[], tuple] = probe_python
    torch: Callable[[], dict] = probe_torch
    pyav: Callable[[], dict] = probe_pyav
    encoder: Callable[[str], bool] = probe_encoder
    cascade: Callable[[], Path | None] = probe_cascade
    cache: Callable[[], tuple[Path, int]] = probe_cache
    output: Callable[[Path], tuple[int, bool]] = probe_output
    cpus: Callable[[], int] = probe_cpus
    ray: Callable[[str], dict] = probe_ray


# --- checks ---------------------------------------------------------------------------------------------------


def check_python(probes: Probes) -> list[Check]:
    version = probes.python()
    text = ".".join(map(str, version))
    if tuple(version[:2]) < MIN_PYTHON:
        return [Check("python", "fail", f"{text} (needs >= 3.10)", "use Python 3.10 or newer")]
    return [Check("python", "ok", text)]


def check_torch(probes: Probes) -> list[Check]:
    try:
        info = probes.torch()
    except Exception as exc:  # noqa: BLE001 - any failure to import torch is the finding
        return [Check("torch", "fail", f"cannot import torch: {exc}", "run `make install` (installs torch)")]
    build = f"CUDA {info['cuda']} build" if info.get("cuda") else "CPU-only build"
    checks = [Check("torch", "ok", f"{info['version']} ({build})")]
    if info.get("devices"):
        return [*checks, Check("cuda devices", "ok", "; ".join(info["devices"]))]
    if info.get("cuda"):
        hint = "check `nvidia-smi` and CUDA_VISIBLE_DEVICES"
    else:
        hint = "on a GPU box install the CUDA build of torch (`make install` does where nvidia-smi exists)"
    words = "none: the model runs on the CPU (fine for mouthwarp, slow for wav2lip)"
    return [*checks, Check("cuda devices", "warn", words, hint)]


def check_media(probes: Probes) -> list[Check]:
    try:
        info = probes.pyav()
    except Exception as exc:  # noqa: BLE001
        return [Check("pyav", "fail", f"cannot import av (PyAV): {exc}", "run `make install` (installs av)")]
    checks = [Check("pyav", "ok", f"{info['version']} (FFmpeg {info['ffmpeg']}, libavcodec {info['libavcodec']})")]
    for name in REQUIRED_ENCODERS:
        if probes.encoder(name):
            checks.append(Check(f"{name} encoder", "ok", "available"))
        else:
            checks.append(
                Check(
                    f"{name} encoder",
                    "fail",
                    "missing from this FFmpeg build",
                    "install the PyPI wheel of av (it bundles FFmpeg with libx264 and aac): pip install --force av",
                )
            )
    return checks


def check_cascade(probes: Probes) -> list[Check]:
    try:
        path = probes.cascade()
    except Exception as exc:  # noqa: BLE001 - an OpenCV that does not import is the same finding
        path, why = None, f"cannot import OpenCV: {exc}"
    else:
        why = "haarcascade_frontalface_default.xml not found or not loadable"
    if path is None:
        return [Check("haar cascade", "fail", why, "install opencv-python-headless<5 (5.x wheels ship no cascades)")]
    return [Check("haar cascade", "ok", str(path))]


def check_disk(probes: Probes, out_dir: Path) -> list[Check]:
    folder, size = probes.cache()
    checks = [Check("face cache", "info", f"{folder} ({size / 1024**2:.1f} MiB)")]
    try:
        free, writable = probes.output(out_dir)
    except OSError as exc:
        writable, exc_words = False, f": {exc}"
    else:
        exc_words = ""
    if not writable:
        words = f"{out_dir}: cannot be written{exc_words}"
        return [*checks, Check("output folder", "fail", words, "pass an --out folder you can write")]
    words = f"{out_dir}: {free / 1024**3:.1f} GiB free"
    if free < LOW_SPACE_BYTES:
        return [*checks, Check("output folder", "warn", words, "free some space: outputs fail with OutputError")]
    return [*checks, Check("output folder", "ok", words)]


def check_cpus(probes: Probes) -> list[Check]:
    cpus = probes.cpus()
    return [Check("cpus", "info", f"{cpus} (x264 encoding runs here: --jobs about cpus/2 to cpus)")]


RAY_NODE_HINT = "install this dhgen with its extra on every node: pip install 'dhgen[ray]'"


def check_ray(probes: Probes, address: str) -> list[Check]:
    """The cluster at `address`: one line for it, one per alive node (CPUs, GPUs, its dhgen, torch)."""
    try:
        found = probes.ray(address)
    except Exception as exc:  # noqa: BLE001 - an unreachable cluster (or no Ray here) is the finding
        hint = getattr(exc, "hint", None) or RAY_NODE_HINT
        return [Check("ray cluster", "fail", f"{address}: {getattr(exc, 'message', None) or exc}", hint)]
    nodes = found["nodes"]
    cpus, gpus = sum(n["node"].cpus for n in nodes), sum(n["node"].gpus for n in nodes)
    words = f"{found['address']}: {len(nodes)} node(s) alive, {cpus:g} CPUs, {gpus:g} GPUs"
    checks = [Check("ray cluster", "ok" if nodes else "fail", words, "" if nodes else "start the cluster's nodes")]
    return checks + [_check_ray_node(n) for n in nodes]


def _check_ray_node(found: dict) -> Check:
    from dhgen import __version__

    node = found["node"]
    name = f"node {node.label}"
    words = f"{node.cpus:g} CPUs, {node.gpus:g} GPUs"
    if "error" in found:
        return Check(name, "fail", f"{words}; cannot run dhgen there: {found['error']}", RAY_NODE_HINT)
    if found["dhgen"] != __version__:
        return Check(name, "fail", f"{words}; dhgen {found['dhgen']} there, {__version__} here", RAY_NODE_HINT)
    words += f"; dhgen {found['dhgen']}, Python {found['python']}"
    if "torch_error" in found:
        return Check(name, "fail", f"{words}; torch: {found['torch_error']}", RAY_NODE_HINT)
    words += f", torch {found['torch']} ({found['cuda']} CUDA device(s))"
    if node.cpus < 1:
        return Check(name, "info", f"{words}; no CPUs, so no jobs run there")
    return Check(name, "ok", words)


@dataclass
class Report:
    checks: list[Check] = field(default_factory=list)

    @property
    def failed(self) -> list[Check]:
        return [c for c in self.checks if c.status == "fail"]

    @property
    def warnings(self) -> list[Check]:
        return [c for c in self.checks if c.status == "warn"]

    @property
    def exit_code(self) -> int:
        return EXIT_NOT_READY if self.failed else EXIT_READY

    def verdict(self) -> str:
        if self.failed:
            return "verdict: NOT READY, missing: " + ", ".join(c.name for c in self.failed)
        warned = f" ({len(self.warnings)} warning{'s' * (len(self.warnings) != 1)})" if self.warnings else ""
        return f"verdict: ready to render{warned}"

    def lines(self) -> list[str]:
        width = max((len(c.name) for c in self.checks), default=0)
        out = []
        for c in self.checks:
            out.append(f"{c.status.upper():<4}  {c.name:<{width}}  {c.detail}")
            if c.hint and c.status in ("fail", "warn"):
                out.append(f"{'':<4}  {'':<{width}}  hint: {c.hint}")
        return [*out, self.verdict()]

    def to_dict(self) -> dict:
        return {"ready": not self.failed, "checks": [asdict(c) for c in self.checks], "verdict": self.verdict()}


def run_doctor(out_dir: Path = Path("renders"), probes: Probes | None = None, ray_address: str | None = None) -> Report:
    """Every check, in the order a person reads them; with `ray_address`, the Ray cluster's too."""
    probes = probes or Probes()
    report = Report()
    for check in (check_python, check_torch, check_media, check_cascade):
        report.checks += check(probes)
    report.checks += check_disk(probes, Path(out_dir))
    report.checks += check_cpus(probes)
    if ray_address is not None:
        report.checks += check_ray(probes, ray_address)
    return report
