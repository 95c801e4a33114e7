"""Model loading and batched prediction: the only torch entry point besides the model implementations.

`load_predictor(options)` picks the device, then imports `dhgen.models.<options.name>` and asks it for the model
through one of two hooks (the first one the module defines):

    build_predictor(options: ModelOptions, device: str) -> Predictor
    build_model(options: ModelOptions, device: str) -> torch.nn.Module     # wrapped as Predictor(spec, m, device)

Either raises `dhgen.errors.ModelLoadError` for a missing or bad checkpoint. The module handed to `Predictor` is
on `device` in eval mode and its `forward(crops, refs, cond) -> (patches, alphas)` takes uint8 (B, S, S, 3) BGR
crops and refs and the float32 conditioning (`(B,)` openness or `(B, 80, 16)` mel windows) as tensors on
`device`, and returns uint8 (B, S, S, 3) BGR patches and uint8 (B, S, S) alphas (see `dhgen.models.CropBatch` /
`PatchBatch`). `Predictor` owns everything around the forward: host/device copies, `torch.inference_mode`, fp16
autocast on CUDA, and turning a CUDA out-of-memory error into `dhgen.errors.OutOfMemory`.
"""

from __future__ import annotations

import contextlib
import importlib
import logging

import numpy as np
import torch

from dhgen.errors import ModelLoadError, OutOfMemory, UsageError
from dhgen.models import CropBatch, ModelSpec, PatchBatch, get_spec
from dhgen.options import ModelOptions

log = logging.getLogger(__name__)

DEVICE_HINT = "use --device cpu, or --device auto to pick a GPU when there is one"


def resolve_device(name: str) -> str:
    """`auto` -> `cuda` when CUDA is available, else `cpu`; `auto:N` -> `cuda:N` when that GPU is usable, else
    `cpu` (a GPU box whose torch is a CPU build still renders); `cpu`, `cuda`, `cuda:N` are checked and returned."""
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


def is_cuda_oom(exc: BaseException) -> bool:
    """True for torch's CUDA out-of-memory errors: the typed one, or the plain RuntimeError that CUDA library
    calls (cuBLAS/cuDNN workspaces, `CUDA error: out of memory`) still raise. This is the one place dhgen reads
    an error's text, to give it a type; everything downstream decides by type."""
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and "out of memory" in text and ("CUDA" in text or "cuda" in text)


def is_cuda_context_broken(exc: BaseException) -> bool:
    """True for a CUDA error after which this process's CUDA context cannot be trusted (an illegal memory access,
    a launch failure: torch raises them as `torch.AcceleratorError`), out-of-memory excepted. The process must end
    so that a fresh one replaces it; retrying in the same process fails forever."""
    return isinstance(exc, torch.AcceleratorError) and not is_cuda_oom(exc)


class Predictor:
    """A loaded model on one device: `predict(CropBatch) -> PatchBatch`, numpy in, numpy out."""

    def __init__(self, spec: ModelSpec, model: torch.nn.Module, device: str) -> None:
        self.spec = spec
        self.model = model
        self.device = torch.device(device)

    def predict(self, batch: CropBatch) -> PatchBatch:
        """Run one batch. Raises `OutOfMemory` (retryable with a smaller batch) on a CUDA OOM."""
        if len(batch) == 0:
            size = self.spec.crop_size
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
                f"CUDA out of memory running {self.spec.name} on a batch of {len(batch)} on {self.device}",
            ) from exc

    def _to_device(self, batch: CropBatch):
        size = self.spec.crop_size
        crops, refs = np.asarray(batch.crops), np.asarray(batch.refs)
        if crops.shape[1:] != (size, size, 3) or refs.shape != crops.shape:
            raise ValueError(
                f"{self.spec.name} expects crops and refs of shape (B, {size}, {size}, 3), "
                f"got {crops.shape} and {refs.shape}"
            )
        cond = np.asarray(batch.cond, dtype=np.float32)
        tensors = (torch.from_numpy(np.ascontiguousarray(a)) for a in (crops, refs, cond))
        non_blocking = self.device.type == "cuda"
        return [t.to(self.device, non_blocking=non_blocking) for t in tensors]

    def _autocast(self):
        if self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.float16)
        return contextlib.nullcontext()

    def _release_cache(self) -> None:
        if self.device.type == "cuda":
            with contextlib.suppress(Exception):
                torch.cuda.empty_cache()


def _to_numpy(t: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(t.detach().to("cpu", torch.uint8).numpy())


def load_predictor(options: ModelOptions) -> Predictor:
    """Build the model named by `options.name` on `options.device` (see the module docstring for the hook)."""
    spec = get_spec(options.name)
    device = resolve_device(options.device)
    try:
        impl = importlib.import_module(f"dhgen.models.{spec.name}")
    except ModuleNotFoundError as exc:
        if exc.name != f"dhgen.models.{spec.name}":
            raise
        raise ModelLoadError(
            f"model {spec.name!r} is not available in this installation", hint="use --model mouthwarp"
        ) from exc
    try:
        if hasattr(impl, "build_predictor"):
            predictor = impl.build_predictor(options, device)
        else:
            predictor = Predictor(spec, impl.build_model(options, device), device)
    except torch.cuda.OutOfMemoryError as exc:
        raise OutOfMemory(f"CUDA out of memory loading {spec.name} on {device}") from exc
    log.info("loaded model %s on %s", spec.name, device)
    return predictor
