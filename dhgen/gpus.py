"""The NVIDIA GPUs this process may use, as CUDA will see them, without importing torch.

The count comes from the driver (NVML, through the `nvidia-ml-py` package: what `nvidia-smi` reads), narrowed by
CUDA_VISIBLE_DEVICES the way CUDA narrows it: entries in order, each a device index or a (prefix of a) GPU UUID;
the first entry that names no GPU ends the list, a GPU named twice hides them all, an empty value hides every GPU.
NVML is there wherever the driver is (WSL2 and containers included, where /proc/driver/nvidia is not, or shows
the host's GPUs). The supervisor (one worker per GPU), the up-front `--device` check and `dhgen doctor` read it.

A GPU counted here can still be unusable by torch (a CPU build of torch, a driver older than torch's CUDA build
needs): the inference worker finds that out, and `dhgen doctor` says which driver the installed build needs.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Gpus:
    count: int  # GPUs CUDA will see in this process (after CUDA_VISIBLE_DEVICES)
    installed: int  # GPUs the driver has
    driver: str | None = None  # the NVIDIA driver's version ("570.86.15"); None without one
    cuda: str | None = None  # the newest CUDA version that driver runs ("12.8")
    problem: str | None = None  # why no GPU was found, in words (no driver, NVML failed)
    hidden: bool = False  # CUDA_VISIBLE_DEVICES hides GPUs the driver has


def visible_gpus(environ: dict | None = None) -> Gpus:
    """What the driver has and what CUDA_VISIBLE_DEVICES (from `environ`, default this process's) leaves of it."""
    environ = os.environ if environ is None else environ
    try:
        import pynvml
    except ImportError as exc:
        return Gpus(0, 0, problem=f"cannot ask the NVIDIA driver: {exc} (pip install nvidia-ml-py)")
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        return Gpus(0, 0, problem=f"no NVIDIA driver answers (NVML: {exc})")
    try:
        uuids = [_text(pynvml.nvmlDeviceGetUUID(pynvml.nvmlDeviceGetHandleByIndex(i))) for i in _count(pynvml)]
        driver = _text(pynvml.nvmlSystemGetDriverVersion())
        cuda = _cuda_version(pynvml.nvmlSystemGetCudaDriverVersion())
    except pynvml.NVMLError as exc:
        return Gpus(0, 0, problem=f"the NVIDIA driver did not list its GPUs (NVML: {exc})")
    finally:
        pynvml.nvmlShutdown()
    visible = cuda_visible(environ.get("CUDA_VISIBLE_DEVICES"), uuids)
    return Gpus(len(visible), len(uuids), driver, cuda, hidden=len(visible) < len(uuids))


def visible_gpu_count() -> int:
    """How many GPUs CUDA will see in this process (0 without a driver)."""
    return visible_gpus().count


def cuda_visible(spec: str | None, uuids: list[str]) -> list[int | str]:
    """The devices CUDA_VISIBLE_DEVICES=`spec` leaves visible, in CUDA's order (see the module docstring): the
    driver's index of each GPU, or the name of a MIG instance ("MIG-...", one device each). `uuids` are the
    driver's GPUs ("GPU-8f6c..."); `spec` None: every GPU."""
    if spec is None:
        return list(range(len(uuids)))
    chosen: list[int | str] = []
    for entry in (e.strip() for e in spec.split(",")):
        index = _named(entry, uuids)
        if index is None:
            break
        if index in chosen:
            return []
        chosen.append(index)
    return chosen


def least_busy_gpu(gpus: int, in_use: Iterable[int | None]) -> int | None:
    """Of `gpus` GPUs, the one the fewest running encoders use (`in_use`: each one's GPU, None for the default):
    where the next NVENC session opens. None with fewer than two GPUs (the default is the only one)."""
    if gpus < 2:
        return None
    busy = [0] * gpus
    for gpu in in_use:
        if gpu is not None and gpu < gpus:
            busy[gpu] += 1
    return busy.index(min(busy))


def cuda_index(ray_gpu_ids: tuple | list, visible: str | None) -> int | None:
    """The CUDA device index, in a process whose CUDA_VISIBLE_DEVICES is `visible`, of the first GPU Ray gave an
    actor (`ray.get_gpu_ids()`: the node's own ids, as listed in its raylet's CUDA_VISIBLE_DEVICES, else 0..N-1);
    None when there is none or it is not visible there."""
    if not ray_gpu_ids:
        return None
    gpu = str(ray_gpu_ids[0])
    if visible is None:
        return int(gpu) if gpu.isdigit() else None
    entries = [e.strip() for e in visible.split(",")]
    return entries.index(gpu) if gpu in entries else None


def _named(entry: str, uuids: list[str]) -> int | str | None:
    if entry.isdigit():
        return int(entry) if int(entry) < len(uuids) else None
    if entry.startswith("MIG-"):
        return entry
    matches = [i for i, uuid in enumerate(uuids) if entry.startswith("GPU-") and uuid.startswith(entry)]
    return matches[0] if len(matches) == 1 else None


def _count(pynvml) -> range:
    return range(pynvml.nvmlDeviceGetCount())


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _cuda_version(number: int) -> str:
    """NVML's CUDA version number (12080) as "12.8"."""
    return f"{number // 1000}.{number % 1000 // 10}"
