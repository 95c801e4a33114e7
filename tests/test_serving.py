"""Serving a model: a numpy model loads without torch on any device; a torch model goes through dhgen.inference."""

from __future__ import annotations

import subprocess
import sys
import types

import numpy as np
import pytest

from dhgen.errors import UsageError
from dhgen.models import CropBatch
from dhgen.models.mouthwarp import MouthWarp
from dhgen.options import ModelOptions
from dhgen.serving import load_model


@pytest.mark.parametrize("device", ["auto", "cpu", "cuda", "cuda:3"])
def test_mouthwarp_runs_on_the_cpu_whatever_the_device(device):
    """No GPU here: a --device cuda run of the built-in model still renders (it needs none), on the CPU."""
    predictor = load_model(ModelOptions(name="mouthwarp", device=device))
    assert isinstance(predictor, MouthWarp) and predictor.device == "cpu"
    crops = np.full((3, 128, 128, 3), 140, np.uint8)
    out = predictor.predict(CropBatch(crops, crops[:1], np.float32([0.0, 0.5, 1.0])))
    assert out.patches.shape == (3, 128, 128, 3) and out.alphas.shape == (1, 128, 128)


def test_a_torch_model_is_loaded_by_dhgen_inference(monkeypatch):
    fake = types.ModuleType("dhgen.models.wav2lip")
    fake.build_predictor = lambda options, device: ("built", options.checkpoint, device)
    monkeypatch.setitem(sys.modules, "dhgen.models.wav2lip", fake)
    assert load_model(ModelOptions(name="wav2lip", checkpoint="w.pth", device="cpu")) == ("built", "w.pth", "cpu")


def test_an_unknown_model_is_a_usage_error():
    with pytest.raises(UsageError, match="unknown model"):
        load_model(ModelOptions(name="wav3lip"))


def test_serving_mouthwarp_never_imports_torch():
    """What an inference worker does for the default model: load it with its share of threads, then predict."""
    code = (
        "import sys, numpy as np; from dhgen.serving import load_for_serving; from dhgen.models import CropBatch;"
        "from dhgen.options import ModelOptions; p = load_for_serving(ModelOptions(device='auto'), 1);"
        "c = np.full((2, 128, 128, 3), 120, np.uint8); p.predict(CropBatch(c, c[:1], np.float32([0.2, 0.9])));"
        "print('torch' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert result.stdout.strip() == "False"
