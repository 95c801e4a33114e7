"""`dhgen doctor`: what this machine has that dhgen needs, each check with a status, and a verdict.

Every fact comes from a probe (a plain function); `Probes` bundles them so tests can simulate a machine that
lacks an encoder or the Haar cascade, or one where NVENC opens. The H.264/HEVC encoders are listed by opening a
tiny encode with each (`dhgen.encoders.survey`), as `--encoder auto` decides. Required checks that fail make the
verdict "not ready" and the exit code 1; warnings (no GPU, little free space, no HEVC encoder) do not. `--json`
gives each check's numbers as numbers (`free_bytes`, `count`, ...) beside its words, and the verdict without its
"verdict: " prefix.

On a GPU box the report says why `auto` chose what it chose: the NVIDIA driver (from NVML, `dhgen.gpus`), the
driver the installed torch's CUDA build needs, and the driver NVENC in PyAV's bundled FFmpeg needs.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from dhgen.encoders import CODECS, CPU_ENCODERS, NVENC_ENCODERS, EncoderInfo, survey
from dhgen.gpus import Gpus, visible_gpus
from dhgen.models import registry
from dhgen.options import default_cache_dir

MIN_PYTHON = (3, 10)
LOW_SPACE_BYTES = 2 * 1024**3  # below this at the output folder: a warning (a 1080p minute is ~10-30 MB)
REQUIRED_ENCODERS = ("libx264", "aac")
EXIT_READY, EXIT_NOT_READY = 0, 1
# The oldest NVIDIA driver (Linux) that runs a CUDA build of each major version, through CUDA's minor-version
# compatibility (NVIDIA's CUDA Toolkit release notes). torch's wheels name their CUDA build (torch.version.cuda).
MIN_DRIVER_FOR_CUDA = {11: "450.80.02", 12: "525.60.13", 13: "580.65.06"}
# NVENC in the FFmpeg that PyAV's wheels bundle speaks NVENC API 13 (nv-codec-headers 13): driver 570 or newer.
NVENC_MIN_DRIVER = "570"


@dataclass(frozen=True)
class Check:
    name: str
    status: str  # ok | warn | fail | info
    detail: str
    hint: str = ""
    data: dict = field(default_factory=dict)  # the facts behind `detail`, as numbers/strings/bools (--json)

    def to_dict(self) -> dict:
        return {"name": self.name, "status": self.status, "detail": self.detail, "hint": self.hint, **self.data}


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
    """The frontal-face Haar cascade dhgen uses, if it and the profile cascade beside it are present and loadable."""
    import cv2

    from dhgen.face import CASCADE, PROFILE_CASCADE

    folder = Path(getattr(getattr(cv2, "data", None), "haarcascades", "") or ".")
    paths = [folder / CASCADE, folder / PROFILE_CASCADE]
    if any(not path.is_file() or cv2.CascadeClassifier(str(path)).empty() for path in paths):
        return None
    return paths[0]


def probe_cache() -> tuple[Path, int]:
    """The face-cache folder and the bytes in it."""
    folder = default_cache_dir()
    size = sum(p.stat().st_size for p in folder.glob("**/*") if p.is_file()) if folder.is_dir() else 0
    return folder, size


@dataclass(frozen=True)
class OutputFolder:
    free: int  # bytes free on the volume where the folder is (or would be created)
    writable: bool
    existing: Path  # the folder itself, or its nearest existing parent
    is_file: bool = False  # the path (or a part of it) is a file


def probe_output(folder: Path) -> OutputFolder:
    """Free bytes where `folder` is (or would be created), whether dhgen may write there, what exists of it."""
    existing = Path(folder).absolute()
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        return OutputFolder(shutil.disk_usage(existing.parent).free, False, existing, is_file=True)
    return OutputFolder(shutil.disk_usage(existing).free, os.access(existing, os.W_OK | os.X_OK), existing)


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
    output: Callable[[Path], OutputFolder] = probe_output
    cpus: Callable[[], int] = probe_cpus
    encoders: Callable[[], list[EncoderInfo]] = survey
    ray: Callable[[str], dict] = probe_ray
    models: Callable[[], list[registry.FamilyEntry]] = registry.entries
    gpus: Callable[[], Gpus] = visible_gpus


# --- checks ---------------------------------------------------------------------------------------------------


def check_python(probes: Probes) -> list[Check]:
    version = probes.python()
    text = ".".join(map(str, version))
    if tuple(version[:2]) < MIN_PYTHON:
        return [Check("python", "fail", f"{text} (needs >= 3.10)", "use Python 3.10 or newer", {"version": text})]
    return [Check("python", "ok", text, data={"version": text})]


def check_gpus(gpus: Gpus) -> list[Check]:
    """The NVIDIA driver and its GPUs, as CUDA will see them (CUDA_VISIBLE_DEVICES applied)."""
    if gpus.driver is None:
        return [Check("nvidia driver", "info", f"none: {gpus.problem}", data={"driver": None, "count": 0})]
    hidden = f" (CUDA_VISIBLE_DEVICES hides {gpus.installed - gpus.count})" if gpus.hidden else ""
    words = f"{gpus.driver} (runs CUDA up to {gpus.cuda}); {gpus.count} GPU(s) visible{hidden}"
    data = {"driver": gpus.driver, "cuda": gpus.cuda, "count": gpus.count, "installed": gpus.installed}
    return [Check("nvidia driver", "ok", words, data=data)]


def needed_driver(cuda: str | None) -> str | None:
    """The oldest driver that runs a CUDA `cuda` ("12.8") build; None for a CPU build or an unknown major."""
    major = cuda.split(".")[0] if cuda else ""
    return MIN_DRIVER_FOR_CUDA.get(int(major)) if major.isdigit() else None


def driver_older(driver: str | None, needed: str | None) -> bool:
    """Whether `driver` ("535.104.05") is older than `needed` ("570"); False when either is unknown."""
    if not driver or not needed:
        return False
    version = [int(p) for p in driver.split(".") if p.isdigit()]
    return version < [int(p) for p in needed.split(".") if p.isdigit()]


def check_torch(probes: Probes, gpus: Gpus | None = None) -> list[Check]:
    try:
        info = probes.torch()
    except Exception as exc:  # noqa: BLE001 - any failure to import torch is the finding
        return [Check("torch", "fail", f"cannot import torch: {exc}", "run `make install` (installs torch)")]
    needed = needed_driver(info.get("cuda"))
    build = f"CUDA {info['cuda']} build" if info.get("cuda") else "CPU-only build"
    if needed:
        build += f", needs NVIDIA driver >= {needed}"
    data = {"version": info["version"], "cuda": info.get("cuda"), "needs_driver": needed}
    checks = [Check("torch", "ok", f"{info['version']} ({build})", data=data)]
    devices = list(info.get("devices") or [])
    if devices:
        return [
            *checks,
            Check("cuda devices", "ok", "; ".join(devices), data={"count": len(devices), "devices": devices}),
        ]
    words, hint = _no_cuda_device_why(info, gpus or Gpus(0, 0), needed)
    return [*checks, Check("cuda devices", "warn", words, hint, {"count": 0, "devices": []})]


def _no_cuda_device_why(info: dict, gpus: Gpus, needed: str | None) -> tuple[str, str]:
    """Why torch sees no CUDA device, in words, and what to do."""
    words = "none: the model runs on the CPU (fine for mouthwarp, slow for wav2lip)"
    if driver_older(gpus.driver, needed):
        why = f"none: torch's CUDA {info['cuda']} build needs NVIDIA driver >= {needed}, this one is {gpus.driver}"
        hint = (
            "update the NVIDIA driver, or install a torch built for a CUDA this driver runs (up to "
            f"{gpus.cuda}; https://pytorch.org/get-started/locally/)"
        )
        return f"{why}: --device auto runs the model on the CPU", hint
    if info.get("cuda"):
        return words, "check `nvidia-smi` and CUDA_VISIBLE_DEVICES"
    if gpus.count:
        return f"{words}; this torch is a CPU build on a box with {gpus.count} GPU(s)", CUDA_TORCH_HINT
    return words, CUDA_TORCH_HINT


CUDA_TORCH_HINT = "on a GPU box install the CUDA build of torch (`make install` does where nvidia-smi exists)"


def check_media(probes: Probes) -> list[Check]:
    try:
        info = probes.pyav()
    except Exception as exc:  # noqa: BLE001
        return [Check("pyav", "fail", f"cannot import av (PyAV): {exc}", "run `make install` (installs av)")]
    words = f"{info['version']} (FFmpeg {info['ffmpeg']}, libavcodec {info['libavcodec']})"
    checks = [Check("pyav", "ok", words, data={k: info[k] for k in ("version", "ffmpeg", "libavcodec")})]
    for name in REQUIRED_ENCODERS:
        if probes.encoder(name):
            checks.append(Check(f"{name} encoder", "ok", "available", data={"available": True}))
        else:
            checks.append(
                Check(
                    f"{name} encoder",
                    "fail",
                    "missing from this FFmpeg build",
                    "install the PyPI wheel of av (it bundles FFmpeg with libx264 and aac): pip install --force av",
                    {"available": False},
                )
            )
    return checks


def check_encoders(encoders: list[EncoderInfo], gpus: Gpus | None = None) -> list[Check]:
    """Per codec, the encoders that open here (and what `auto` takes); then why NVENC is or is not used."""
    checks = []
    for codec in CODECS:
        mine = [e for e in encoders if e.codec == codec]
        opening = [e.name for e in mine if e.opens]
        others = [e.name for e in mine if not e.opens]
        rest = f"; in this build, not opening here: {', '.join(others)}" if others else ""
        if not opening:
            status = "fail" if codec == "h264" else "warn"
            hint = "install the PyPI wheel of av (it bundles libx264 and libx265): pip install --force av"
            checks.append(Check(f"{codec} encoders", status, f"none opens here{rest}", hint))
            continue
        auto = NVENC_ENCODERS[codec] if NVENC_ENCODERS[codec] in opening else CPU_ENCODERS[codec]
        words = f"open here: {', '.join(opening)} (--encoder auto uses {auto}){rest}"
        checks.append(Check(f"{codec} encoders", "ok", words))
    return [*checks, _nvenc_check(encoders, gpus or Gpus(0, 0))]


def _nvenc_check(encoders: list[EncoderInfo], gpus: Gpus) -> Check:
    nvenc = [e for e in encoders if e.name in NVENC_ENCODERS.values()]
    if not nvenc:
        return Check("nvenc", "info", "not in this PyAV build: encoding runs on the CPU")
    if all(e.opens for e in nvenc):
        return Check("nvenc", "ok", f"{', '.join(e.name for e in nvenc)} open here: --encoder auto uses them")
    failing = {}
    for e in nvenc:
        failing.setdefault(e.failure or "opens", []).append(e.name)
    words = "; ".join(f"{', '.join(names)}: {why}" for why, names in failing.items())
    return Check("nvenc", "info", f"{words} (auto uses the CPU encoder where NVENC does not open){_nvenc_why(gpus)}")


def _nvenc_why(gpus: Gpus) -> str:
    """What the driver says about NVENC not opening."""
    needs = f"NVENC in this FFmpeg needs NVIDIA driver >= {NVENC_MIN_DRIVER}"
    if gpus.driver is None:
        return f"; {needs}, and there is none here"
    if driver_older(gpus.driver, NVENC_MIN_DRIVER):
        return f"; {needs}, this one is {gpus.driver}"
    return f"; driver {gpus.driver} is recent enough: these GPUs may have no NVENC engine (A100, H100, H200)"


def check_cascade(probes: Probes) -> list[Check]:
    try:
        path = probes.cascade()
    except Exception as exc:  # noqa: BLE001 - an OpenCV that does not import is the same finding
        path, why = None, f"cannot import OpenCV: {exc}"
    else:
        why = "haarcascade_frontalface_default.xml or haarcascade_profileface.xml not found or not loadable"
    if path is None:
        hint = "install opencv-python-headless<5 (5.x wheels ship no cascades)"
        return [Check("haar cascade", "fail", why, hint, {"path": None})]
    return [Check("haar cascade", "ok", str(path), data={"path": str(path)})]


def check_disk(probes: Probes, out_dir: Path) -> list[Check]:
    folder, size = probes.cache()
    checks = [
        Check("face cache", "info", f"{folder} ({size / 1024**2:.1f} MiB)", data={"path": str(folder), "bytes": size})
    ]
    return [*checks, check_output_folder(probes, out_dir)]


def check_output_folder(probes: Probes, out_dir: Path) -> Check:
    """The output folder: a folder (or creatable), writable, its free space; says so when it does not exist."""
    name, hint = "output folder", "pass an --out folder you can write"
    try:
        found = probes.output(out_dir)
    except OSError as exc:
        return Check(
            name, "fail", f"{out_dir}: cannot be examined: {exc.strerror or exc}", hint, {"path": str(out_dir)}
        )
    exists = found.existing == Path(out_dir).absolute()
    data = {"path": str(out_dir), "exists": exists, "writable": found.writable, "free_bytes": found.free}
    if found.is_file:
        where = out_dir if exists else f"{out_dir}: {found.existing}"
        return Check(name, "fail", f"{where} is a file, not a folder", hint, {**data, "exists": False})
    where = f"{out_dir}" if exists else f"{out_dir} does not exist yet (dhgen creates it in {found.existing})"
    if not found.writable:
        return Check(name, "fail", f"{where}: cannot be written", hint, data)
    words = f"{where}: {found.free / 1024**3:.1f} GiB free"
    if found.free < LOW_SPACE_BYTES:
        return Check(name, "warn", words, "free some space: outputs fail with OutputError", data)
    return Check(name, "ok", words, data=data)


def check_cpus(probes: Probes) -> list[Check]:
    cpus = probes.cpus()
    return [
        Check("cpus", "info", f"{cpus} (x264 encoding runs here: --jobs about cpus/2 to cpus)", data={"count": cpus})
    ]


def check_models(probes: Probes) -> list[Check]:
    """The model families --model takes (built-in and plugins); a plugin that fails to import is a warning naming
    its error: it costs only its own users."""
    found = probes.models()
    usable = [f for f in found if f.family is not None]
    words = ", ".join(f.name if f.source == registry.BUILT_IN else f"{f.name} ({f.source})" for f in usable)
    checks = [Check("models", "ok", words or "none", data={"families": [registry.describe(f) for f in found]})]
    for broken in (f for f in found if f.family is None):
        checks.append(
            Check(
                f"model {broken.name}",
                "warn",
                f"{broken.target} from {broken.source} cannot be imported: {broken.error}",
                f"reinstall or fix {broken.source}; the other models are not affected",
            )
        )
    return checks


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
    if found.get("driver"):
        words += f"; NVIDIA driver {found['driver']}, {found['gpus']} GPU(s)"
    if node.cpus < 1:
        return Check(name, "info", f"{words}; no CPUs, so no jobs run there")
    return Check(name, "ok", words)


@dataclass
class Report:
    checks: list[Check] = field(default_factory=list)
    encoders: list[EncoderInfo] = field(default_factory=list)  # every H.264/HEVC encoder of the build, probed

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
        return f"verdict: {self.conclusion()}"

    def conclusion(self) -> str:
        """ "ready to render (1 warning)" or "NOT READY, missing: torch, haar cascade"."""
        if self.failed:
            return "NOT READY, missing: " + ", ".join(c.name for c in self.failed)
        warned = f" ({len(self.warnings)} warning{'s' * (len(self.warnings) != 1)})" if self.warnings else ""
        return f"ready to render{warned}"

    def lines(self) -> list[str]:
        width = max((len(c.name) for c in self.checks), default=0)
        out = []
        for c in self.checks:
            out.append(f"{c.status.upper():<4}  {c.name:<{width}}  {c.detail}")
            if c.hint and c.status in ("fail", "warn"):
                out.append(f"{'':<4}  {'':<{width}}  hint: {c.hint}")
        return [*out, self.verdict()]

    def to_dict(self) -> dict:
        return {
            "ready": not self.failed,
            "checks": [c.to_dict() for c in self.checks],
            "encoders": [{**asdict(e), "opens": e.opens} for e in self.encoders],
            "verdict": self.conclusion(),
        }


def run_doctor(out_dir: Path = Path("renders"), probes: Probes | None = None, ray_address: str | None = None) -> Report:
    """Every check, in the order a person reads them; with `ray_address`, the Ray cluster's too."""
    probes = probes or Probes()
    report = Report()
    gpus = probes.gpus()
    report.checks += check_python(probes)
    report.checks += check_gpus(gpus)
    report.checks += check_torch(probes, gpus)
    report.checks += check_media(probes)
    report.encoders = probes.encoders()
    report.checks += check_encoders(report.encoders, gpus)
    report.checks += check_cascade(probes)
    report.checks += check_disk(probes, Path(out_dir))
    report.checks += check_cpus(probes)
    report.checks += check_models(probes)
    if ray_address is not None:
        report.checks += check_ray(probes, ray_address)
    return report
