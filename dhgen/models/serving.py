"""Serving one model to many jobs: what an inference worker (local) or actor (Ray) wraps around a predictor.

`load_model` resolves the device and precision for the family's backend and calls its `load`: a numpy family
never imports torch, a torch family resolves its device through `dhgen.models.torch_backend`, an onnxruntime one
through `dhgen.models.onnx_backend` (no torch either). `load_for_serving` does that with the process's share of
threads (torch's, or onnxruntime's sessions') and holds the predictor to the protocol (`CheckedPredictor`: an
exception of the model's own or an answer of the wrong shape is a `ModelError` naming the model).
`AdaptivePredictor` runs merged batches in slices of the current batch size and halves it on out-of-memory.

Test hook: DHGEN_TEST_FAULT=raise makes every forward raise; DHGEN_TEST_FAULT=oom_above:N raises OutOfMemory
for forward passes larger than N crops; DHGEN_TEST_FAULT=broken_cuda_once:PATH raises a CUDA error that breaks
the context (what this torch raises for one: `torch.AcceleratorError`, or a plain RuntimeError before torch 2.8)
in the first forward of the first process to get there (it creates PATH; later processes find it and run
normally); DHGEN_TEST_FAULT=load_fails_once:PATH makes the first process to get there fail to load the model as
on a GPU that another process holds (the ModelLoadError that CUDA error becomes). Tests use it for faults that
real signals cannot produce.

A process whose CUDA context is broken (`context_broken`) ends itself, so that it is replaced instead of failing
every batch from now on.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys

import numpy as np

from dhgen.errors import DhgenError, ModelError, ModelLoadError, OutOfMemory, first_line
from dhgen.models.batches import CropBatch, PatchBatch, concat_patches
from dhgen.models.protocol import Predictor
from dhgen.models.registry import get_family
from dhgen.options import ModelOptions

log = logging.getLogger(__name__)

BACKEND_DEVICES = {"torch": "dhgen.models.torch_backend", "onnxruntime": "dhgen.models.onnx_backend"}


class AdaptivePredictor:
    """Runs a batch in slices of `limit` crops; halves `limit` and retries on OutOfMemory.

    On a GPU every slice is padded to `limit` crops (copies of its last one; their answers are dropped): libraries
    such as cuDNN choose their algorithm by the input's shape, so a crop's patch could change by one level with
    the number of crops that happened to be merged with it (which depends on timing). One shape per run keeps the
    frames, and their digest, the same from run to run (README, "Reproducible digests on a GPU"). A predictor with
    `fixed_shapes` runs slices of its own size and is not padded."""

    def __init__(self, predictor, limit: int, on_oom) -> None:
        self.predictor, self.limit, self.on_oom = predictor, limit, on_oom
        on_gpu = str(getattr(predictor, "device", "cpu")).startswith("cuda")
        self.pad = on_gpu and not getattr(predictor, "fixed_shapes", False)

    def predict(self, batch: CropBatch) -> PatchBatch:
        while True:
            try:
                parts = [self._predict(self._slice(batch, i)) for i in range(0, len(batch), self.limit)]
                return concat_patches(parts)
            except OutOfMemory as exc:
                if self.limit <= 1:
                    raise
                self.limit = max(1, self.limit // 2)
                self.on_oom(self.limit, exc.message)

    def audio_features(self, samples: np.ndarray) -> np.ndarray:
        return self.predictor.audio_features(samples)

    def _slice(self, batch: CropBatch, start: int) -> CropBatch:
        end = start + self.limit
        return CropBatch(batch.crops[start:end], batch.refs[start:end], batch.cond[start:end])

    def _predict(self, batch: CropBatch) -> PatchBatch:
        n = len(batch)
        if not self.pad or n == self.limit or n == 0:
            return self.predictor.predict(batch)
        more = self.limit - n
        padded = CropBatch(*(_pad(np.asarray(a), more) for a in (batch.crops, batch.refs, batch.cond)))
        answer = self.predictor.predict(padded)
        alphas = answer.alphas if len(answer.alphas) == 1 else answer.alphas[:n]
        return PatchBatch(answer.patches[:n], alphas)


def _pad(rows: np.ndarray, more: int) -> np.ndarray:
    """`rows` with `more` copies of its last row after them."""
    return np.concatenate([rows, np.repeat(rows[-1:], more, axis=0)])


class CheckedPredictor:
    """A family's predictor held to the protocol. Our own errors (OutOfMemory, ...) and a broken CUDA context
    pass through; any other exception, and an answer of the wrong shape, become `ModelError` naming the model."""

    def __init__(self, predictor: Predictor, name: str, crop_size: int) -> None:
        self.predictor, self.name, self.crop_size = predictor, name, crop_size
        self.device = str(getattr(predictor, "device", "cpu"))
        self.dtype = str(getattr(predictor, "dtype", "float32"))
        self.fixed_shapes = bool(getattr(predictor, "fixed_shapes", False))

    def predict(self, batch: CropBatch) -> PatchBatch:
        try:
            result = self.predictor.predict(batch)
        except Exception as exc:  # noqa: BLE001 - typed below
            raise self._typed(exc, "predict") from exc
        problem = _patch_problem(result, len(batch), self.crop_size)
        if problem:
            raise ModelError(f"model {self.name} answered a batch of {len(batch)} crops with {problem}")
        return result

    def audio_features(self, samples: np.ndarray) -> np.ndarray:
        try:
            features = self.predictor.audio_features(samples)
        except Exception as exc:  # noqa: BLE001 - typed below
            raise self._typed(exc, "audio_features") from exc
        if not isinstance(features, np.ndarray) or features.ndim == 0:
            raise ModelError(f"model {self.name}'s audio_features answered {type(features).__name__}, not an array")
        return features

    def _typed(self, exc: Exception, call: str) -> Exception:
        if isinstance(exc, DhgenError) or context_broken(exc):
            return exc
        if _is_cuda_oom(exc):
            return OutOfMemory(f"CUDA out of memory in model {self.name} on {self.device}: {first_line(exc)}")
        return ModelError(f"model {self.name} raised {type(exc).__name__} in {call}: {first_line(exc)}")


def _patch_problem(result, n: int, size: int) -> str | None:
    """What is wrong with a predictor's answer for `n` crops of side `size` (None: nothing)."""
    if not isinstance(result, PatchBatch):
        return f"a {type(result).__name__}, not a PatchBatch"
    patches, alphas = np.asarray(result.patches), np.asarray(result.alphas)
    if patches.dtype != np.uint8 or patches.shape != (n, size, size, 3):
        return f"patches {patches.dtype}{list(patches.shape)}, expected uint8{[n, size, size, 3]}"
    if alphas.dtype != np.uint8 or alphas.shape[1:] != (size, size) or len(alphas) not in (1, n):
        return f"alphas {alphas.dtype}{list(alphas.shape)}, expected uint8{[n, size, size]} or uint8{[1, size, size]}"
    return None


class FaultInjector:
    """The DHGEN_TEST_FAULT hook (see module docstring)."""

    def __init__(self, predictor, fault: str) -> None:
        self.predictor, self.fault = predictor, fault
        self.device, self.dtype = predictor.device, predictor.dtype
        self.fixed_shapes = getattr(predictor, "fixed_shapes", False)

    def predict(self, batch: CropBatch) -> PatchBatch:
        if self.fault == "raise":
            raise RuntimeError("injected fault: the model raised (DHGEN_TEST_FAULT=raise)")
        if self.fault.startswith("oom_above:") and len(batch) > int(self.fault.split(":")[1]):
            raise OutOfMemory(f"injected CUDA out of memory for a batch of {len(batch)} (DHGEN_TEST_FAULT)")
        if self.fault.startswith("broken_cuda_once:") and _first_to_create(self.fault.partition(":")[2]):
            from dhgen.models.torch_backend import cuda_error

            raise cuda_error("an illegal memory access was encountered (injected: DHGEN_TEST_FAULT)")
        return self.predictor.predict(batch)

    def audio_features(self, samples: np.ndarray) -> np.ndarray:
        return self.predictor.audio_features(samples)


def _first_to_create(path: str) -> bool:
    try:
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return False
    return True


def context_broken(exc: BaseException) -> bool:
    """The model's process must end after `exc` (its CUDA context is broken); see
    `torch_backend.is_cuda_context_broken`. A process that never imported torch has no CUDA context to break."""
    if "torch" not in sys.modules:
        return False
    from dhgen.models.torch_backend import is_cuda_context_broken

    return is_cuda_context_broken(exc)


def broken_context_words(record: dict) -> str:
    """How the death of a process that ended itself for a broken CUDA context is explained, from the error record
    it left (`failure_record` of the CUDA error): "because its CUDA context broke: AcceleratorError: CUDA error:
    ..."."""
    lines = str(record.get("message", "")).strip().splitlines() or ["(no message)"]
    return f"because its CUDA context broke: {record.get('type', 'error')}: {lines[0]}"


def _is_cuda_oom(exc: BaseException) -> bool:
    if "torch" not in sys.modules:
        return False
    from dhgen.models.torch_backend import is_cuda_oom

    return is_cuda_oom(exc)


def resolve_device(options: ModelOptions) -> str:
    """Where `options`' model runs: the CPU for a family that uses no GPU (whatever --device says), else what its
    backend makes of --device ("auto" -> "cuda" where it can use one, "auto:N" -> "cuda:N" or the CPU)."""
    family = get_family(options.name)
    if not family.uses_gpu(options.checkpoint):
        if options.device.startswith("cuda"):
            log.info("%s runs on the CPU (it needs no GPU); --device %s is for GPU models", family.name, options.device)
        return "cpu"
    backend = family.backend_for(options.checkpoint)
    return importlib.import_module(BACKEND_DEVICES[backend]).resolve_device(options.device)


def resolve_dtype(precision: str, device: str) -> str:
    """--precision: fp16 / fp32 as asked; auto is fp16 on a GPU and fp32 on the CPU."""
    if precision == "auto":
        return "float16" if device.startswith("cuda") else "float32"
    return {"fp16": "float16", "fp32": "float32"}[precision]


def load_model(options: ModelOptions) -> Predictor:
    """The predictor for `options.name` on its resolved device and precision (see `resolve_device`)."""
    family = get_family(options.name)
    device = resolve_device(options)
    _inject_load_fault(family.name, device)
    try:
        predictor = family.load(options.checkpoint, device, resolve_dtype(options.precision, device))
    except Exception as exc:
        if _is_cuda_oom(exc):
            raise OutOfMemory(f"CUDA out of memory loading {family.name} on {device}: {first_line(exc)}") from exc
        if context_broken(exc):
            raise ModelLoadError(
                f"cannot load {family.name} on {device}: {first_line(exc)}", hint=DEVICE_LOAD_HINT
            ) from exc
        raise
    log.info("loaded model %s on %s", family.name, device)
    return predictor


DEVICE_LOAD_HINT = (
    "the GPU refused the model, not the checkpoint: check `nvidia-smi` for another process holding it, its compute "
    "mode (EXCLUSIVE_PROCESS admits one process) and ECC errors; or leave that GPU out with CUDA_VISIBLE_DEVICES"
)


def _inject_load_fault(name: str, device: str) -> None:
    fault = os.environ.get("DHGEN_TEST_FAULT", "")
    if fault.startswith("load_fails_once:") and _first_to_create(fault.partition(":")[2]):
        raise ModelLoadError(
            f"cannot load {name} on {device}: CUDA error: CUDA-capable device(s) is/are busy or unavailable "
            "(injected: DHGEN_TEST_FAULT)",
            hint=DEVICE_LOAD_HINT,
        )


def load_for_serving(options: ModelOptions, threads: int | None = None) -> CheckedPredictor:
    """The predictor for `options` (with `threads` CPU threads, when given), held to the protocol, wrapped in the
    test hook when it is set. Every executor serves its model through this, so every one types errors alike."""
    family = get_family(options.name)
    if threads is not None:
        _share_threads(family.backend_for(options.checkpoint), threads)
    predictor = load_model(options)
    fault = os.environ.get("DHGEN_TEST_FAULT", "")
    if fault:
        predictor = FaultInjector(predictor, fault)
    return CheckedPredictor(predictor, family.name, family.crop_size)


def _share_threads(backend: str, threads: int) -> None:
    """This process's share of the cores for the backend's own thread pool (a numpy model runs in one thread)."""
    if backend == "torch":
        import torch

        torch.set_num_threads(threads)
    elif backend == "onnxruntime":
        from dhgen.models.onnx_backend import set_num_threads

        set_num_threads(threads)
