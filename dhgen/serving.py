"""Serving one model to many jobs: what an inference worker (local) or actor (Ray) wraps around a predictor.

`load_model` builds a model's predictor: a numpy model (mouthwarp) directly, without importing torch, a torch
model (wav2lip) through `dhgen.inference`. `load_for_serving` does that with the process's share of threads;
`AdaptivePredictor` runs merged batches in slices of the current batch size and halves it on an out-of-memory
error.

Test hook: DHGEN_TEST_FAULT=raise makes every forward raise; DHGEN_TEST_FAULT=oom_above:N raises OutOfMemory
for forward passes larger than N crops; DHGEN_TEST_FAULT=broken_cuda_once:PATH raises a CUDA error that breaks
the context (`torch.AcceleratorError`) in the first forward of the first process to get there (it creates PATH;
later processes find it and run normally). Tests use it for faults that real signals cannot produce.

A process whose CUDA context is broken (`context_broken`) ends itself, so that it is replaced instead of failing
every batch from now on.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys

from dhgen.errors import OutOfMemory
from dhgen.models import CropBatch, PatchBatch, concat_patches, get_spec
from dhgen.options import ModelOptions

log = logging.getLogger(__name__)


class AdaptivePredictor:
    """Runs a batch in slices of `limit` crops; halves `limit` and retries on OutOfMemory."""

    def __init__(self, predictor, limit: int, on_oom) -> None:
        self.predictor, self.limit, self.on_oom = predictor, limit, on_oom

    def predict(self, batch: CropBatch) -> PatchBatch:
        while True:
            try:
                parts = [self.predictor.predict(self._slice(batch, i)) for i in range(0, len(batch), self.limit)]
                return concat_patches(parts)
            except OutOfMemory as exc:
                if self.limit <= 1:
                    raise
                self.limit = max(1, self.limit // 2)
                self.on_oom(self.limit, exc.message)

    def _slice(self, batch: CropBatch, start: int) -> CropBatch:
        end = start + self.limit
        return CropBatch(batch.crops[start:end], batch.refs[start:end], batch.cond[start:end])


class FaultInjector:
    """The DHGEN_TEST_FAULT hook (see module docstring)."""

    def __init__(self, predictor, fault: str) -> None:
        self.predictor, self.fault = predictor, fault

    def predict(self, batch: CropBatch) -> PatchBatch:
        if self.fault == "raise":
            raise RuntimeError("injected fault: the model raised (DHGEN_TEST_FAULT=raise)")
        if self.fault.startswith("oom_above:") and len(batch) > int(self.fault.split(":")[1]):
            raise OutOfMemory(f"injected CUDA out of memory for a batch of {len(batch)} (DHGEN_TEST_FAULT)")
        if self.fault.startswith("broken_cuda_once:") and _first_to_create(self.fault.partition(":")[2]):
            import torch

            raise torch.AcceleratorError("injected CUDA error: an illegal memory access was encountered")
        return self.predictor.predict(batch)


def _first_to_create(path: str) -> bool:
    try:
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return False
    return True


def context_broken(exc: BaseException) -> bool:
    """The model's process must end after `exc` (its CUDA context is broken); see `inference.is_cuda_context_broken`.
    A process that never imported torch (a numpy model) has no CUDA context to break."""
    if "torch" not in sys.modules:
        return False
    from dhgen.inference import is_cuda_context_broken

    return is_cuda_context_broken(exc)


def load_model(options: ModelOptions):
    """The predictor (`predict(CropBatch) -> PatchBatch`) for `options.name`.

    A numpy model runs on the CPU whatever `options.device` says (it needs no GPU, and one implementation
    serves every box); torch is imported only for a torch model.
    """
    spec = get_spec(options.name)
    if spec.backend == "numpy":
        if options.device.startswith("cuda"):
            log.info("%s runs on the CPU (it needs no GPU); --device %s is for torch models", spec.name, options.device)
        return importlib.import_module(f"dhgen.models.{spec.name}").build_predictor(options)
    from dhgen.inference import load_predictor

    return load_predictor(options)


def load_for_serving(options: ModelOptions, threads: int):
    """The predictor for `options` with `threads` CPU threads, wrapped in the test hook when it is set."""
    if get_spec(options.name).backend == "torch":
        import torch

        torch.set_num_threads(threads)
    predictor = load_model(options)
    fault = os.environ.get("DHGEN_TEST_FAULT", "")
    return FaultInjector(predictor, fault) if fault else predictor
