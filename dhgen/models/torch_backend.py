"""The torch plumbing every torch family shares: devices, CUDA errors, and a batched forward.

`resolve_device` turns --device into a torch device. `TorchPredictor` wraps a family's `torch.nn.Module` whose
`forward(crops, refs, cond) -> (patches, alphas)` takes uint8 (B, S, S, 3) BGR crops and refs and the float32
conditioning as tensors on the device, and returns uint8 (B, S, S, 3) BGR patches and uint8 (B or 1, S, S)
alphas (see `dhgen.models.CropBatch` / `PatchBatch`). It owns everything around the forward: host/device copies,
`torch.inference_mode`, fp16 autocast on CUDA (for eager modules), and turning a CUDA out-of-memory error into
`OutOfMemory`; `is_cuda_oom` / `is_cuda_context_broken` give CUDA errors their type.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Mapping

import numpy as np
import torch

from dhgen.errors import OutOfMemory, UsageError
from dhgen.models.batches import CropBatch, PatchBatch

log = logging.getLogger(__name__)

DEVICE_HINT = "use --device cpu, or --device auto to pick a GPU when there is one"


def resolve_device(name: str) -> str:
    """`auto` -> `cuda` when CUDA is available, else `cpu`; `auto:N` -> `cuda:N` when that GPU is usable, else
    `cpu` (a GPU box whose torch is a CPU build still renders); `cpu`, `cuda`, `cuda:N` are checked and returned.
    A process that will use CUDA is made deterministic first (`deterministic_cuda`)."""
    device = _resolve(name)
    if device.startswith("cuda"):
        deterministic_cuda()
    return device


def deterministic_cuda() -> None:
    """The same inputs give the same patches on this GPU, run after run: cuDNN picks its algorithms by a fixed rule
    rather than by timing them (`benchmark` off) and only deterministic ones, as does every torch op that has a
    choice. cuBLAS needs its workspace fixed for that, before its first call in the process (the variable)."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
    torch.use_deterministic_algorithms(True, warn_only=True)


def _resolve(name: str) -> str:
    name = name.strip().lower()
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("auto:"):
        index = name.partition(":")[2]
        if torch.cuda.is_available() and index.isdigit() and int(index) < torch.cuda.device_count():
            return f"cuda:{index}"
        log.warning("a GPU is visible but this torch build cannot use it: the model runs on the CPU")
        return "cpu"
    if name == "cpu":
        return name
    kind, _, index = name.partition(":")
    if kind != "cuda" or (index and not index.isdigit()):
        raise UsageError(f"unknown device {name!r}", hint="choose one of: auto, cpu, cuda, cuda:N")
    if not torch.cuda.is_available():
        raise UsageError(f"device {name!r} requested but CUDA is not available", hint=DEVICE_HINT)
    count = torch.cuda.device_count()
    if index and int(index) >= count:
        raise UsageError(
            f"device {name!r} requested but only {count} CUDA device(s) exist (cuda:0 .. cuda:{count - 1})",
            hint=DEVICE_HINT,
        )
    return name


# What CUDA libraries say in the text of the plain RuntimeError torch raises for them (no type of their own):
# cuBLAS "CUDA error: CUBLAS_STATUS_... when calling `...`", cuDNN "cuDNN error: CUDNN_STATUS_...", CUDA runtime and
# driver errors before torch 2.8 (no `torch.AcceleratorError` yet) and from extensions (STD_CUDA_CHECK)
# "CUDA error: ..." / "CUDA driver error: ...".
CUDA_OOM_WORDS = ("CUBLAS_STATUS_ALLOC_FAILED", "CUDNN_STATUS_ALLOC_FAILED")
CUDA_FAILURE_WORDS = ("CUDA error", "CUDA driver error", "CUDNN_STATUS_EXECUTION_FAILED")


def is_cuda_oom(exc: BaseException) -> bool:
    """True for torch's CUDA out-of-memory errors: the typed one, or the plain RuntimeError that CUDA library
    calls (cuBLAS/cuDNN workspaces and handles: `*_STATUS_ALLOC_FAILED`, `CUDA error: out of memory`) still raise.
    This (with `is_cuda_context_broken`) is the one place dhgen reads an error's text, to give it a type;
    everything downstream decides by type."""
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return True
    if not isinstance(exc, RuntimeError):
        return False
    text = str(exc)
    return ("out of memory" in text and "CUDA" in text.upper()) or any(w in text for w in CUDA_OOM_WORDS)


def is_cuda_context_broken(exc: BaseException) -> bool:
    """True for a CUDA error after which this process's CUDA context cannot be trusted (an illegal memory access,
    a launch failure, a failed cuBLAS/cuDNN execution), out-of-memory excepted. torch 2.8 and later raise most of
    them as `torch.AcceleratorError`; older torch, cuBLAS, cuDNN and extensions raise a plain RuntimeError whose
    text names the CUDA error. The process must end so that a fresh one replaces it; retrying in the same process
    fails forever (an error that a fresh process repeats ends the model after a few restarts, with its text)."""
    if not isinstance(exc, RuntimeError) or is_cuda_oom(exc):
        return False
    accelerator_error = getattr(torch, "AcceleratorError", None)  # torch >= 2.8
    if accelerator_error is not None and isinstance(exc, accelerator_error):
        return True
    text = str(exc)
    return any(w in text for w in CUDA_FAILURE_WORDS)


def cuda_error(message: str) -> RuntimeError:
    """The exception this torch raises for a CUDA runtime error with `message` (for the test hook): an
    `AcceleratorError` where torch has it (2.8+), else the plain RuntimeError older torch raises."""
    cls = getattr(torch, "AcceleratorError", RuntimeError)
    return cls(f"CUDA error: {message}")


class TorchPredictor:
    """A family's module on one device: `predict(CropBatch) -> PatchBatch`, numpy in, numpy out. `dtype` float16
    runs it under fp16 autocast on CUDA, unless `autocast` is False (a module whose weights are already in the
    precision it runs in, such as a TorchScript graph: PyTorch does not support autocast for those)."""

    def __init__(
        self,
        name: str,
        crop_size: int,
        model: torch.nn.Module,
        device: str,
        dtype: str = "float32",
        autocast: bool = True,
    ) -> None:
        self.name, self.crop_size = name, crop_size
        self.model = model
        self._device = torch.device(device)
        self.dtype = dtype if self._device.type == "cuda" else "float32"  # fp16 on CUDA only
        self._autocast_fp16 = autocast and self.dtype == "float16"

    @property
    def device(self) -> str:
        return str(self._device)

    def predict(self, batch: CropBatch) -> PatchBatch:
        """Run one batch. Raises `OutOfMemory` (retryable with a smaller batch) on a CUDA OOM."""
        if len(batch) == 0:
            size = self.crop_size
            return PatchBatch(np.zeros((0, size, size, 3), np.uint8), np.zeros((0, size, size), np.uint8))
        try:
            with torch.inference_mode(), self._autocast():
                patches, alphas = self.model(*self._to_device(batch))
                return PatchBatch(_to_numpy(patches), _to_numpy(alphas))
        except (torch.cuda.OutOfMemoryError, RuntimeError) as exc:
            if not is_cuda_oom(exc):
                raise
            self._release_cache()
            raise OutOfMemory(
                f"CUDA out of memory running {self.name} on a batch of {len(batch)} on {self.device}",
            ) from exc

    def _to_device(self, batch: CropBatch):
        size = self.crop_size
        crops, refs = np.asarray(batch.crops), np.asarray(batch.refs)
        if crops.shape[1:] != (size, size, 3) or refs.shape != crops.shape:
            raise ValueError(
                f"{self.name} expects crops and refs of shape (B, {size}, {size}, 3), "
                f"got {crops.shape} and {refs.shape}"
            )
        cond = np.asarray(batch.cond, dtype=np.float32)
        tensors = (torch.from_numpy(np.ascontiguousarray(a)) for a in (crops, refs, cond))
        non_blocking = self._device.type == "cuda"
        return [t.to(self._device, non_blocking=non_blocking) for t in tensors]

    def _autocast(self):
        if self._autocast_fp16:
            return torch.autocast("cuda", dtype=torch.float16)
        return contextlib.nullcontext()

    def _release_cache(self) -> None:
        if self._device.type == "cuda":
            with contextlib.suppress(Exception):
                torch.cuda.empty_cache()


def _to_numpy(t: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(t.detach().to("cpu", torch.uint8).numpy())


def state_dict_mismatches(
    state: Mapping[str, object], expected: Mapping[str, torch.Tensor], shown: int = 5
) -> list[str]:
    """Human-readable lists of a checkpoint's missing keys, unexpected keys and shape mismatches against a module's
    `state_dict()`, `shown` of each named (empty when all fit)."""
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [
        f"{k}: checkpoint {_shape(state[k])} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and _shape(state[k]) != tuple(v.shape)
    ]
    problems = []
    for label, items in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", wrong)):
        if items:
            more = f", ... ({len(items) - shown} more)" if len(items) > shown else ""
            problems.append(f"{len(items)} {label}: {', '.join(items[:shown])}{more}")
    return problems


def _shape(value: object):
    return tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
