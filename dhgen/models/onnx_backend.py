"""The onnxruntime plumbing every ONNX family shares: devices, the process's thread share, sessions, CUDA errors.

`resolve_device` turns --device into a place onnxruntime can run: the CUDA execution provider where the installed
onnxruntime has it (the `onnxruntime-gpu` package) and a GPU is visible, the CPU otherwise, chosen like torch's
(`dhgen.models.torch_backend`). `set_num_threads` is this process's share of the cores (the counterpart of
`torch.set_num_threads`; `serving.load_for_serving` sets it); `open_session` creates an `InferenceSession` with it
and turns a graph that cannot load into `ModelLoadError` naming the file. Nothing here imports torch: an ONNX
worker never loads it.
"""

from __future__ import annotations

import ctypes
import logging
from pathlib import Path

from dhgen.errors import ModelLoadError, OutOfMemory, UsageError, first_line

log = logging.getLogger(__name__)

CUDA_EP, CPU_EP = "CUDAExecutionProvider", "CPUExecutionProvider"
INSTALL_HINT = "pip install 'dhgen[onnx]' (onnxruntime; for a GPU, onnxruntime-gpu instead)"
GPU_HINT = "install onnxruntime-gpu in place of onnxruntime (pip uninstall onnxruntime; pip install onnxruntime-gpu)"

_threads: int | None = None  # intra-op threads of every session this process opens (None: onnxruntime's default)


def set_num_threads(threads: int) -> None:
    """The number of threads each session opened from now on computes with (this process's share of the cores)."""
    global _threads  # one setting per process, like torch.set_num_threads
    _threads = max(1, int(threads))


def import_onnxruntime():
    """The onnxruntime module, or `ModelLoadError` saying how to install it."""
    try:
        import onnxruntime
    except ImportError as exc:
        raise ModelLoadError(f"onnxruntime is not installed ({first_line(exc)})", hint=INSTALL_HINT) from exc
    return onnxruntime


def has_cuda() -> bool:
    """The installed onnxruntime has the CUDA execution provider and a GPU is visible (decided without torch)."""
    if CUDA_EP not in import_onnxruntime().get_available_providers():
        return False
    from dhgen.executors.local.supervisor import visible_gpu_count  # the driver's count, as `checks` reads it

    return visible_gpu_count() > 0


def resolve_device(name: str) -> str:
    """`auto` -> `cuda` with the CUDA provider and a GPU, else `cpu`; `auto:N` -> `cuda:N` likewise (a GPU box with
    the CPU-only onnxruntime still renders, on the CPU); `cpu` as is; `cuda`, `cuda:N` need the CUDA provider."""
    name = name.strip().lower()
    if name == "cpu":
        return name
    kind, _, index = name.partition(":")
    if kind == "auto":
        if has_cuda():
            return f"cuda:{index}" if index else "cuda"
        if index:
            log.warning("a GPU is visible but this onnxruntime has no CUDA provider: the model runs on the CPU")
        return "cpu"
    if kind != "cuda" or (index and not index.isdigit()):
        raise UsageError(f"unknown device {name!r}", hint="choose one of: auto, cpu, cuda, cuda:N")
    if CUDA_EP not in import_onnxruntime().get_available_providers():
        raise UsageError(f"device {name!r} requested but onnxruntime has no CUDA execution provider", hint=GPU_HINT)
    return name


def providers(device: str) -> list:
    """The execution providers for `device` ("cpu", "cuda", "cuda:N"), the CPU's last as onnxruntime's fallback."""
    if not device.startswith("cuda"):
        return [CPU_EP]
    index = device.partition(":")[2] or "0"
    return [(CUDA_EP, {"device_id": int(index)}), CPU_EP]


def open_session(path: Path, device: str, hint: str):
    """An `InferenceSession` for the graph at `path` on `device`, with this process's threads; `ModelLoadError`
    naming the file (and `hint`, what the family wants) when onnxruntime cannot load it."""
    ort = import_onnxruntime()
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.inter_op_num_threads = 1
    if _threads is not None:
        options.intra_op_num_threads = _threads
    # A worker waits between batches while job processes encode: its threads sleep instead of spinning.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        session = ort.InferenceSession(str(path), options, providers=providers(device))
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own classes for every kind of bad file
        if device.startswith("cuda") and is_oom(exc):
            raise OutOfMemory(f"CUDA out of memory loading {path} on {device}") from exc
        raise ModelLoadError(f"onnxruntime cannot load the graph: {first_line(exc)}", path=path, hint=hint) from exc
    if device.startswith("cuda") and session.get_providers()[0] != CUDA_EP:
        log.warning("onnxruntime could not use %s for %s: the model runs on the CPU", device, path)
    _release_freed_memory()
    return session


def _release_freed_memory() -> None:
    """Hand what loading freed (the parsed graph: about the file's size) back to the OS. glibc keeps it in the
    heap otherwise, and the worker's RSS stays that much higher for its whole life (Wav2Lip: ~190 MB)."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to do
        pass


def session_device(session, device: str) -> str:
    """Where `session` really runs: `device` when its first provider is CUDA's, else "cpu"."""
    return device if session.get_providers()[0] == CUDA_EP else "cpu"


def is_oom(exc: BaseException) -> bool:
    """True for onnxruntime's out-of-memory failures (its CUDA allocator's, or a CUDA call's). onnxruntime has no
    class for them, so this reads the text, the one place an ONNX error's words are read to give it a type."""
    text = str(exc)
    return "Failed to allocate memory" in text or "out of memory" in text.lower()
