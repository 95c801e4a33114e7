"""Serving a model: device and precision per backend, a numpy family without torch, and a model held to the
protocol (its own exceptions and wrong shapes become ModelError naming it; our errors pass through)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dhgen.errors import ModelError, ModelLoadError, OutOfMemory, UsageError
from dhgen.models import CropBatch, PatchBatch
from dhgen.models.mouthwarp.warp import MouthWarp
from dhgen.models.serving import AdaptivePredictor, CheckedPredictor, load_model, resolve_dtype
from dhgen.options import ModelOptions


@pytest.mark.parametrize("device", ["auto", "cpu", "cuda", "cuda:3"])
def test_mouthwarp_runs_on_the_cpu_whatever_the_device(device):
    """No GPU here: a --device cuda run of the built-in model still renders (it needs none), on the CPU."""
    predictor = load_model(ModelOptions(name="mouthwarp", device=device))
    assert isinstance(predictor, MouthWarp) and predictor.device == "cpu" and predictor.dtype == "float32"
    crops = np.full((3, 128, 128, 3), 140, np.uint8)
    out = predictor.predict(CropBatch(crops, crops[:1], np.float32([0.0, 0.5, 1.0])))
    assert out.patches.shape == (3, 128, 128, 3) and out.alphas.shape == (1, 128, 128)


def test_an_unknown_model_is_a_usage_error():
    with pytest.raises(UsageError, match="unknown model"):
        load_model(ModelOptions(name="wav3lip"))


@pytest.mark.parametrize(
    ("precision", "device", "dtype"),
    [
        ("auto", "cuda:0", "float16"),
        ("auto", "cpu", "float32"),
        ("fp32", "cuda", "float32"),
        ("fp16", "cpu", "float16"),
    ],
)
def test_precision_resolves_per_device(precision, device, dtype):
    assert resolve_dtype(precision, device) == dtype


def test_serving_mouthwarp_never_imports_torch():
    """What an inference worker does for the default model: load it with its share of threads, then predict."""
    code = (
        "import sys, numpy as np; from dhgen.models.serving import load_for_serving;"
        "from dhgen.models import CropBatch;"
        "from dhgen.options import ModelOptions; p = load_for_serving(ModelOptions(device='auto'), 1);"
        "c = np.full((2, 128, 128, 3), 120, np.uint8); p.predict(CropBatch(c, c[:1], np.float32([0.2, 0.9])));"
        "print('torch' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert result.stdout.strip() == "False"


class _Answers:
    """A stand-in predictor that answers what it is told to."""

    device, dtype = "cpu", "float32"

    def __init__(self, answer) -> None:
        self.answer = answer

    def predict(self, batch):
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer(batch)

    def audio_features(self, samples):
        return self.predict(None)


def _batch(n: int = 2, size: int = 8) -> CropBatch:
    crops = np.zeros((n, size, size, 3), np.uint8)
    return CropBatch(crops, crops[:1], np.zeros(n, np.float32))


def _patches(n, size=8, alpha_n=1):
    return PatchBatch(np.zeros((n, size, size, 3), np.uint8), np.zeros((alpha_n, size, size), np.uint8))


def test_a_model_that_raises_is_a_model_error_naming_it_with_the_cause():
    checked = CheckedPredictor(_Answers(KeyError("layer4")), "tiny", 8)
    with pytest.raises(ModelError) as info:
        checked.predict(_batch())
    assert info.value.message == "model tiny raised KeyError in predict: 'layer4'"
    assert isinstance(info.value.__cause__, KeyError) and not info.value.retryable and info.value.hint


@pytest.mark.parametrize(
    ("answer", "found"),
    [
        (lambda b: _patches(3), "patches uint8[3, 8, 8, 3], expected uint8[2, 8, 8, 3]"),
        (lambda b: _patches(2, size=16), "patches uint8[2, 16, 16, 3]"),
        (lambda b: _patches(2, alpha_n=3), "alphas uint8[3, 8, 8]"),
        (lambda b: PatchBatch(np.zeros((2, 8, 8, 3), np.float32), np.zeros((1, 8, 8), np.uint8)), "patches float32"),
        (lambda b: "patches", "a str, not a PatchBatch"),
    ],
)
def test_an_answer_of_the_wrong_shape_is_a_model_error_saying_what_came(answer, found):
    with pytest.raises(ModelError) as info:
        CheckedPredictor(_Answers(answer), "tiny", 8).predict(_batch())
    assert info.value.message.startswith("model tiny answered a batch of 2 crops with ") and found in info.value.message


def test_our_own_errors_pass_through_unchanged():
    oom = OutOfMemory("out of memory on cuda:0")
    with pytest.raises(OutOfMemory) as info:
        CheckedPredictor(_Answers(oom), "tiny", 8).predict(_batch())
    assert info.value is oom


def test_a_right_answer_passes_and_audio_features_must_be_an_array():
    checked = CheckedPredictor(_Answers(lambda b: _patches(2, alpha_n=2)), "tiny", 8)
    assert checked.predict(_batch()).patches.shape == (2, 8, 8, 3)
    with pytest.raises(ModelError, match="audio_features answered PatchBatch"):
        checked.audio_features(np.zeros(16000, np.float32))


@pytest.mark.parametrize("torch_version", ["2.8 and later", "before 2.8"])
def test_a_gpu_that_refuses_the_model_is_a_model_load_error_naming_the_device(monkeypatch, torch_version):
    import torch

    from dhgen.models.torch_backend import cuda_error
    from dhgen.models.wav2lip import family

    if torch_version == "before 2.8":
        monkeypatch.delattr(torch, "AcceleratorError")

    def load(checkpoint, device, dtype):  # what loading onto a GPU held in EXCLUSIVE_PROCESS mode raises
        raise cuda_error("CUDA-capable device(s) is/are busy or unavailable")

    monkeypatch.setattr(family, "load", load)
    with pytest.raises(ModelLoadError) as info:
        load_model(ModelOptions(name="wav2lip", checkpoint=Path("w.pth"), device="cpu"))
    assert (
        info.value.message
        == "cannot load wav2lip on cpu: CUDA error: CUDA-capable device(s) is/are busy or unavailable"
    )
    assert "nvidia-smi" in info.value.hint and "CUDA_VISIBLE_DEVICES" in info.value.hint


def test_a_cublas_allocation_failure_while_loading_is_out_of_memory(monkeypatch):
    from dhgen.models.wav2lip import family

    def load(checkpoint, device, dtype):
        raise RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`")

    monkeypatch.setattr(family, "load", load)
    with pytest.raises(OutOfMemory, match="loading wav2lip on cpu"):
        load_model(ModelOptions(name="wav2lip", checkpoint=Path("w.pth"), device="cpu"))


class _Shapes(_Answers):
    """A stand-in predictor on `device` that answers each crop with its own value and notes the batch sizes."""

    def __init__(self, device: str, fixed_shapes: bool = False) -> None:
        super().__init__(lambda b: PatchBatch(b.crops.copy(), np.zeros((1, 8, 8), np.uint8)))
        self.device, self.sizes, self.fixed_shapes = device, [], fixed_shapes

    def predict(self, batch):
        self.sizes.append(len(batch))
        return super().predict(batch)


@pytest.mark.parametrize(
    ("device", "fixed_shapes", "sizes"),
    [("cuda:0", False, [4, 4, 4]), ("cpu", False, [4, 4, 2]), ("cuda:0", True, [4, 4, 2])],
)
def test_on_a_gpu_every_forward_has_the_same_shape_whatever_was_merged(device, fixed_shapes, sizes):
    """...unless the predictor runs fixed-size slices of its own (musetalk): padding it would be wasted work."""
    model = _Shapes(device, fixed_shapes)
    crops = np.broadcast_to(np.arange(10, dtype=np.uint8)[:, None, None, None], (10, 8, 8, 3)).copy()
    batch = CropBatch(crops, crops.copy(), np.zeros(10, np.float32))  # as merged: one reference per crop
    answer = AdaptivePredictor(model, 4, None).predict(batch)
    assert model.sizes == sizes  # the GPU's last slice was padded to 4 crops
    np.testing.assert_array_equal(answer.patches, batch.crops)  # each crop's own answer, no padding in it
    assert answer.alphas.shape == (1, 8, 8)
