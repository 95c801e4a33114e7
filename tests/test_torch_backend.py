"""The torch plumbing (wav2lip's path): devices, shapes, and a CUDA OOM surfacing as a retryable error.

A small stand-in nn.Module keeps these tests fast and independent of wav2lip's weights; mouthwarp is numpy and
has its own tests (tests/test_mouthwarp.py).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from dhgen.errors import OutOfMemory, UsageError
from dhgen.models import CropBatch, torch_backend
from dhgen.models.torch_backend import TorchPredictor, is_cuda_context_broken, is_cuda_oom, resolve_device

no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the behaviour without CUDA")
gpu = pytest.mark.gpu
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


S = 96  # wav2lip's crop size


class Blend(nn.Module):
    """A stand-in model with the contract's shapes: patches = crops darkened by the conditioning's mean, one
    alpha for the batch (255 inside, 0 on the border)."""

    def forward(self, crops, refs, cond):
        level = cond.float().reshape(len(crops), -1).mean(dim=1).clamp(0, 1).reshape(-1, 1, 1, 1)
        patches = (crops.float() * (1 - 0.5 * level)).round().to(torch.uint8)
        alpha = torch.zeros(1, *crops.shape[1:3], dtype=torch.uint8, device=crops.device)
        alpha[:, 1:-1, 1:-1] = 255
        return patches, alpha


def crop_batch(n: int, size: int = S, seed: int = 0) -> CropBatch:
    rng = np.random.default_rng(seed)
    crops = rng.integers(90, 220, (n, size, size, 3), dtype=np.uint8)
    return CropBatch(crops=crops, refs=crops.copy(), cond=np.linspace(0, 1, n, dtype=np.float32))


@pytest.fixture
def predictor() -> TorchPredictor:
    return TorchPredictor("wav2lip", S, Blend().eval(), "cpu")


def test_predict_on_cpu_returns_uint8_patches_and_alphas(predictor):
    out = predictor.predict(crop_batch(5))
    assert out.patches.dtype == np.uint8 and out.patches.shape == (5, S, S, 3)
    assert out.alphas.dtype == np.uint8 and out.alphas.shape == (1, S, S)  # one for the batch
    assert out.patches.flags.c_contiguous and out.alphas.flags.c_contiguous
    assert out.alphas.max() == 255 and out.alphas[:, 0].max() == 0
    batch = crop_batch(5)
    expected = np.round(batch.crops * (1 - 0.5 * batch.cond[:, None, None, None])).astype(np.uint8)
    assert np.abs(out.patches.astype(int) - expected).max() <= 1  # the model's answer, crop by crop


def test_predict_is_deterministic_and_handles_an_empty_batch(predictor):
    batch = crop_batch(3, seed=1)
    np.testing.assert_array_equal(predictor.predict(batch).patches, predictor.predict(batch).patches)
    empty = predictor.predict(crop_batch(0))
    assert empty.patches.shape == (0, S, S, 3) and empty.alphas.shape == (0, S, S)


def test_predict_rejects_crops_of_the_wrong_size(predictor):
    with pytest.raises(ValueError, match="96"):
        predictor.predict(crop_batch(2, size=128))


def test_auto_device_is_cpu_without_cuda():
    if torch.cuda.is_available():
        assert resolve_device("auto") == "cuda"
    else:
        assert resolve_device("auto") == "cpu"
    assert resolve_device("cpu") == "cpu"


@no_cuda
@pytest.mark.parametrize("name", ["cuda", "cuda:7"])
def test_cuda_device_without_cuda_is_a_usage_error_with_a_hint(name):
    with pytest.raises(UsageError) as err:
        resolve_device(name)
    assert name in err.value.message and "CUDA is not available" in err.value.message
    assert "--device cpu" in err.value.hint


@pytest.mark.parametrize("name", ["tpu", "cuda:x", "gpu:0"])
def test_unknown_device_names_are_usage_errors(name):
    with pytest.raises(UsageError, match="unknown device"):
        resolve_device(name)


@pytest.mark.parametrize(
    "oom",
    [
        torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
        RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`"),  # cuBLAS's words
    ],
)
def test_cuda_oom_inside_the_model_surfaces_as_out_of_memory(predictor, monkeypatch, oom):
    def forward(self, crops, refs, cond):
        raise oom

    monkeypatch.setattr(Blend, "forward", forward)
    with pytest.raises(OutOfMemory) as err:
        predictor.predict(crop_batch(4))
    assert err.value.retryable and err.value.to_record()["type"] == "OutOfMemory"
    assert "batch of 4" in err.value.message and "--batch-size" in err.value.hint
    assert err.value.__cause__ is oom


def test_other_model_errors_pass_through_unchanged(predictor, monkeypatch):
    def forward(self, crops, refs, cond):
        raise RuntimeError("shape mismatch")

    monkeypatch.setattr(Blend, "forward", forward)
    with pytest.raises(RuntimeError, match="shape mismatch"):
        predictor.predict(crop_batch(2))


@gpu
@needs_cuda
def test_cuda_matches_cpu():
    batch = crop_batch(8, seed=2)
    cpu = TorchPredictor("wav2lip", S, Blend().eval(), "cpu").predict(batch)
    cuda = TorchPredictor("wav2lip", S, Blend().cuda().eval(), "cuda", "float16").predict(batch)
    np.testing.assert_array_equal(cuda.alphas, cpu.alphas)
    diff = np.abs(cuda.patches.astype(int) - cpu.patches)
    assert diff.max() <= 2 and diff.mean() < 0.05


@no_cuda
def test_auto_with_a_visible_gpu_falls_back_to_the_cpu_when_torch_cannot_use_it():
    # The supervisor asks for "auto:N" when it sees NVIDIA GPUs; a CPU build of torch must still render.
    assert resolve_device("auto:0") == "cpu"


@gpu
@needs_cuda
def test_auto_n_is_that_gpu_when_torch_can_use_it():
    assert resolve_device("auto:0") == "cuda:0"
    assert resolve_device(f"auto:{torch.cuda.device_count()}") == "cpu"  # one more than torch sees


def test_auto_n_follows_what_torch_can_use(monkeypatch):
    """The same decisions as on a box whose torch sees two GPUs (torch's answers simulated)."""
    monkeypatch.setattr(torch_backend, "deterministic_cuda", lambda: None)  # not this process's torch settings
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert [resolve_device(d) for d in ("auto", "auto:1", "auto:2", "cuda:1")] == ["cuda", "cuda:1", "cpu", "cuda:1"]
    with pytest.raises(UsageError, match=r"only 2 CUDA device\(s\) exist"):
        resolve_device("cuda:2")


# --- CUDA errors by what they are, whatever torch calls them ------------------------------------------------------

CUBLAS_CALL = "`cublasSgemm( handle, opa, opb, m, n, k, &alpha, a, lda, b, ldb, &beta, c, ldc)`"
CUDA_ERRORS = [  # (what torch raises, out of memory, context broken)
    (RuntimeError("CUDA error: an illegal memory access was encountered"), False, True),  # torch < 2.8
    (RuntimeError(f"CUDA error: CUBLAS_STATUS_EXECUTION_FAILED when calling {CUBLAS_CALL}"), False, True),
    (RuntimeError("cuDNN error: CUDNN_STATUS_EXECUTION_FAILED"), False, True),
    (RuntimeError("CUDA driver error: unspecified launch failure"), False, True),
    (RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`"), True, False),
    (RuntimeError("cuDNN error: CUDNN_STATUS_ALLOC_FAILED"), True, False),
    (RuntimeError("CUDA error: out of memory"), True, False),
    (torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), True, False),
    (RuntimeError("mat1 and mat2 shapes cannot be multiplied (4x3 and 5x6)"), False, False),
    (ValueError("CUDA error: not from CUDA at all"), False, False),
]


@pytest.mark.parametrize("torch_version", ["2.8 and later", "before 2.8"])
@pytest.mark.parametrize(
    ("exc", "oom", "broken"), CUDA_ERRORS, ids=lambda v: str(v)[:40] if isinstance(v, Exception) else None
)
def test_cuda_errors_are_typed_by_what_they_are(exc, oom, broken, torch_version, monkeypatch):
    if torch_version == "before 2.8":
        monkeypatch.delattr(torch, "AcceleratorError")
    assert (is_cuda_oom(exc), is_cuda_context_broken(exc)) == (oom, broken)


def test_an_accelerator_error_breaks_the_context_unless_it_is_out_of_memory():
    assert is_cuda_context_broken(torch.AcceleratorError("CUDA error: misaligned address"))
    assert not is_cuda_context_broken(torch.AcceleratorError("CUDA error: out of memory"))


@gpu
@needs_cuda
def test_a_crops_patch_on_cuda_does_not_depend_on_what_else_is_in_its_batch():
    """Batches merge crops of several jobs as they come (timing): the same crop must get the same patch, so that a
    job's frames digest the same from run to run (`--resume --verify`)."""
    from dhgen.models.serving import AdaptivePredictor
    from dhgen.models.wav2lip.network import Wav2Lip, Wav2LipModel

    torch.manual_seed(0)
    model = Wav2LipModel(Wav2Lip().eval()).cuda()
    predictor = AdaptivePredictor(TorchPredictor("wav2lip", S, model, resolve_device("cuda"), "float16"), 16, None)
    rng = np.random.default_rng(0)
    crops = rng.integers(0, 256, (12, S, S, 3), dtype=np.uint8)
    cond = rng.uniform(-4, 4, (12, 80, 16)).astype(np.float32)
    every = predictor.predict(CropBatch(crops, crops, cond)).patches
    for rows in ([0, 1, 2], [5, 0, 7, 1, 2], [0], list(range(12))[::-1]):
        alone = predictor.predict(CropBatch(crops[rows], crops[rows], cond[rows])).patches
        np.testing.assert_array_equal(alone, every[rows])
