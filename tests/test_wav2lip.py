"""Wav2Lip: published layout, checkpoint formats and their failures, and the predictor's input/output contract.

The generator here is randomly initialised (no published weights in the repo); checkpoints are written to
tmp_path in each supported format and must reproduce it exactly.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import FIXTURES
from torch import nn

from dhgen.errors import ModelLoadError, OutOfMemory
from dhgen.models import CropBatch
from dhgen.models.serving import load_model
from dhgen.models.torch_backend import TorchPredictor
from dhgen.models.wav2lip import family
from dhgen.models.wav2lip.network import Wav2Lip, Wav2LipModel, load_generator, load_predictor, strip_prefix
from dhgen.options import ModelOptions

S = 96
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")  # TorchScript is a format we read


@pytest.fixture(scope="module")
def generator() -> Wav2Lip:
    torch.manual_seed(0)
    model = Wav2Lip()
    for module in model.modules():  # non-trivial BatchNorm statistics, so loading the buffers matters
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.normal_(0.0, 0.1)
            module.running_var.uniform_(0.5, 2.0)
    return model.eval()


@pytest.fixture(scope="module")
def inputs():
    rng = np.random.default_rng(1)
    return CropBatch(
        crops=rng.integers(0, 256, (2, S, S, 3), dtype=np.uint8),
        refs=rng.integers(0, 256, (2, S, S, 3), dtype=np.uint8),
        cond=rng.uniform(-4, 4, (2, 80, 16)).astype(np.float32),
    )


@pytest.fixture(scope="module")
def expected(generator, inputs):
    """The original module's answer: the raw generator output and the predictor's patches."""
    mel, face = _tensors(inputs)
    with torch.inference_mode():
        raw = generator(mel, face)
    return raw, TorchPredictor("wav2lip", S, Wav2LipModel(generator), "cpu").predict(inputs)


@pytest.fixture(scope="module")
def checkpoints(generator, tmp_path_factory):
    """The generator saved in every supported format."""
    folder = tmp_path_factory.mktemp("checkpoints")
    state = generator.state_dict()
    paths = {"training": folder / "wav2lip.pth", "script": folder / "scripted.pt", "trace": folder / "traced.pt"}
    torch.save({"state_dict": {"module." + k: v for k, v in state.items()}, "global_step": 7}, paths["training"])
    torch.jit.script(generator).save(str(paths["script"]))
    torch.jit.trace(generator, _tensors(_zeros(1))).save(str(paths["trace"]))
    return paths


def _zeros(n: int) -> CropBatch:
    return CropBatch(np.zeros((n, S, S, 3), np.uint8), np.zeros((n, S, S, 3), np.uint8), np.zeros((n, 80, 16), "f4"))


def _tensors(batch: CropBatch):
    """The generator's inputs as Wav2Lip's inference builds them: mel (B,1,80,16), [masked crop, ref] / 255."""
    masked = batch.crops.copy()
    masked[:, S // 2 :] = 0
    face = np.concatenate([masked, batch.refs], axis=3).transpose(0, 3, 1, 2) / 255.0
    return torch.from_numpy(batch.cond[:, None]), torch.from_numpy(face.astype(np.float32))


def _options(path) -> ModelOptions:
    return ModelOptions(name="wav2lip", checkpoint=path, device="cpu")


# --- the published layout -----------------------------------------------------------------------------------------


def test_generator_has_the_published_layout(generator):
    assert round(sum(p.numel() for p in generator.parameters()) / 1e6, 1) == 36.3
    shapes = {k: tuple(v.shape) for k, v in generator.state_dict().items()}
    assert shapes["face_encoder_blocks.0.0.conv_block.0.weight"] == (16, 6, 7, 7)
    assert shapes["face_encoder_blocks.0.0.conv_block.1.running_mean"] == (16,)
    assert shapes["audio_encoder.3.conv_block.0.weight"] == (64, 32, 3, 3)
    assert shapes["face_decoder_blocks.1.0.conv_block.0.weight"] == (1024, 512, 3, 3)  # ConvTranspose2d: (in, out)
    assert isinstance(generator.face_decoder_blocks[1][0].conv_block[0], nn.ConvTranspose2d)
    assert shapes["output_block.0.conv_block.0.weight"] == (32, 80, 3, 3)
    assert shapes["output_block.1.weight"] == (3, 32, 1, 1)
    assert len(generator.face_encoder_blocks) == 7 and len(generator.face_decoder_blocks) == 7


# --- checkpoints that load ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["training", "script", "trace"])
def test_checkpoint_reproduces_the_generator(fmt, checkpoints, inputs, expected):
    raw, patches = expected
    loaded = load_generator(checkpoints[fmt], "cpu")
    assert not loaded.training
    with torch.inference_mode():
        torch.testing.assert_close(loaded(*_tensors(inputs)), raw, rtol=0, atol=1e-5)

    result = load_predictor(checkpoints[fmt], "cpu", "float32").predict(inputs)
    assert result.patches.shape == (2, S, S, 3) and result.patches.dtype == np.uint8
    assert result.alphas.shape == (1, S, S) and result.alphas.dtype == np.uint8  # one for the batch
    assert np.abs(result.patches.astype(int) - patches.patches).max() <= 1
    assert np.array_equal(result.alphas, patches.alphas)


def test_bare_state_dict_loads_through_the_family(generator, inputs, expected, tmp_path):
    path = tmp_path / "bare.pth"
    torch.save(generator.state_dict(), path)
    predictor = load_model(_options(path))  # the registry finds the family, the family loads its checkpoint
    assert predictor.name == "wav2lip" and predictor.device == "cpu" and predictor.dtype == "float32"
    assert np.array_equal(predictor.predict(inputs).patches, expected[1].patches)


def test_module_prefix_is_stripped_only_at_the_start():
    state = {"module.a.module.b": 1, "x.submodule.y": 2, "module.module.c": 3}
    assert strip_prefix(state) == {"a.module.b": 1, "x.submodule.y": 2, "module.c": 3}


def test_module_inside_a_key_is_not_mangled(tmp_path):
    path = tmp_path / "odd.pth"
    weight = torch.zeros(16, 6, 7, 7)
    torch.save({"state_dict": {"module.face_encoder_blocks.0.0.submodule.weight": weight}}, path)
    with pytest.raises(ModelLoadError) as info:
        load_generator(path, "cpu")
    assert "unexpected keys: face_encoder_blocks.0.0.submodule.weight" in info.value.message
    assert "subweight" not in info.value.message


# --- checkpoints that do not ---------------------------------------------------------------------------------------


def test_one_wrong_shape_is_named(generator, tmp_path):
    state = dict(generator.state_dict())
    state["output_block.1.weight"] = torch.zeros(3, 32, 3, 3)
    path = tmp_path / "wrong.pth"
    torch.save({"state_dict": state}, path)
    with pytest.raises(ModelLoadError) as info:
        load_generator(path, "cpu")
    message = info.value.message
    assert str(path) in message
    assert "1 shape mismatches: output_block.1.weight: checkpoint (3, 32, 3, 3) vs model (3, 32, 1, 1)" in message
    assert "missing" not in message and "unexpected" not in message
    assert "generator" in info.value.hint


def test_another_architecture_lists_keys(tmp_path):
    path = tmp_path / "syncnet.pth"
    other = nn.Sequential(nn.Conv2d(15, 32, 7), nn.BatchNorm2d(32))
    torch.save({"state_dict": other.state_dict()}, path)
    with pytest.raises(ModelLoadError) as info:
        load_generator(path, "cpu")
    assert "missing keys: face_encoder_blocks.0.0.conv_block.0.weight" in info.value.message
    assert "unexpected keys: 0.weight" in info.value.message


class _Identity(nn.Module):
    def forward(self, mel: torch.Tensor, face: torch.Tensor) -> torch.Tensor:
        return face


def test_torchscript_of_another_model_is_refused(tmp_path):
    path = tmp_path / "identity.pt"
    torch.jit.script(_Identity()).save(str(path))
    with pytest.raises(ModelLoadError, match=r"returns \(1, 6, 96, 96\)") as info:
        load_generator(path, "cpu")
    assert str(path) in info.value.message


@pytest.mark.parametrize("case", ["truncated .pth", "truncated .pt", "random bytes", "empty", "missing", "folder"])
def test_unreadable_checkpoint_names_the_file(case, checkpoints, tmp_path):
    path = tmp_path / "broken.pth"
    if case.startswith("truncated"):
        source = checkpoints["training" if case.endswith("pth") else "script"]
        with open(source, "rb") as fh:
            path.write_bytes(fh.read(1 << 20))
    elif case == "random bytes":
        path.write_bytes(np.random.default_rng(2).bytes(4096))
    elif case == "empty":
        path.write_bytes(b"")
    elif case == "folder":
        path.mkdir()
    with pytest.raises(ModelLoadError) as info:
        load_generator(path, "cpu")
    assert str(path) in info.value.message and info.value.hint


def test_no_checkpoint_given():
    with pytest.raises(ModelLoadError, match="needs a checkpoint"):
        family.load(None, "cpu", "float32")


# --- the predictor's contract, with stand-in generators ------------------------------------------------------------


class _Channels(nn.Module):
    """Returns three of the six face channels, so a test can see exactly what the generator was given."""

    def __init__(self, first: int) -> None:
        super().__init__()
        self.first = first

    def forward(self, mel: torch.Tensor, face: torch.Tensor) -> torch.Tensor:
        assert mel.shape == (len(face), 1, 80, 16) and face.shape == (len(face), 6, S, S)
        return face[:, self.first : self.first + 3]


def test_generator_sees_masked_crop_then_reference_in_bgr(inputs):
    masked = TorchPredictor("wav2lip", S, Wav2LipModel(_Channels(0)), "cpu").predict(inputs).patches
    assert np.array_equal(masked[:, : S // 2], inputs.crops[:, : S // 2])  # same channel order, exact round trip
    assert not masked[:, S // 2 :].any()  # lower half hidden from the generator
    refs = TorchPredictor("wav2lip", S, Wav2LipModel(_Channels(3)), "cpu").predict(inputs).patches
    assert np.array_equal(refs, inputs.refs)


def test_alpha_pastes_only_the_lower_half(expected):
    alphas = expected[1].alphas
    assert not alphas[:, : S // 2 + 1].any()  # top half (and the seam row) keep the frame
    assert not alphas[:, -1].any() and not alphas[:, :, 0].any() and not alphas[:, :, -1].any()  # border
    assert (alphas[:, 3 * S // 4, S // 2] == 255).all()  # the mouth and jaw take the patch
    assert (alphas == alphas[:1]).all()  # the same for every frame: no flicker


class _OutOfMemory(nn.Module):
    def forward(self, mel, face):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")


def test_cuda_out_of_memory_becomes_retryable(inputs):
    with pytest.raises(OutOfMemory) as info:
        TorchPredictor("wav2lip", S, Wav2LipModel(_OutOfMemory()), "cpu").predict(inputs)
    assert info.value.retryable


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_fp16_on_cuda_is_close_to_fp32(generator, inputs, expected, checkpoints):
    for path in (checkpoints["training"], checkpoints["trace"]):
        result = load_predictor(path, "cuda", "float16").predict(inputs)
        assert np.abs(result.patches.astype(int) - expected[1].patches).max() <= 3


def test_a_pickled_model_fails_in_our_words_not_torchs(tmp_path):
    path = tmp_path / "whole_model.pth"
    torch.save(torch.nn.Conv2d(6, 3, 1), path)  # a module object, which only weights_only=False would load
    with pytest.raises(ModelLoadError) as info:
        load_generator(path, "cpu")
    words = info.value.message + info.value.hint
    assert str(path) in info.value.message and "pickled Python objects" in info.value.message
    assert "weights_only" not in words and "state_dict()" in info.value.hint


# --- precision ------------------------------------------------------------------------------------------------


class _Conv(nn.Module):
    """A stand-in generator with weights: one 1x1 convolution from the six face channels to three."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(6, 3, 1)

    def forward(self, mel: torch.Tensor, face: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.conv(face))


def test_an_fp16_torchscript_export_runs_in_the_precision_asked_for(tmp_path, inputs):
    path = tmp_path / "half.pt"
    torch.jit.script(_Conv().half()).save(str(path))  # an fp16 export, as some users have
    for precision in ("fp32", "auto", "fp16"):  # on the CPU each runs fp32 (probe included)
        generator = load_generator(path, "cpu", "float16" if precision == "fp16" else "float32")
        assert {p.dtype for p in generator.parameters()} == {torch.float32}
    predictor = load_model(ModelOptions(name="wav2lip", checkpoint=path, device="cpu", precision="fp32"))
    assert predictor.dtype == "float32" and predictor.predict(inputs).patches.shape == (2, S, S, 3)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_torchscript_on_cuda_runs_in_the_precision_asked_for_without_autocast(checkpoints, inputs, expected):
    for dtype, tolerance in (("float16", 3), ("float32", 1)):
        predictor = load_predictor(checkpoints["script"], "cuda", dtype)
        assert {p.dtype for p in predictor.model.generator.parameters()} == {getattr(torch, dtype)}
        result = predictor.predict(inputs)
        assert predictor.dtype == dtype and np.abs(result.patches.astype(int) - expected[1].patches).max() <= tolerance


def test_precision_fp32_renders_through_the_cli(tmp_path):
    path = tmp_path / "conv.pt"
    torch.jit.script(_Conv()).save(str(path))
    out = tmp_path / "out.mp4"
    dhgen = Path(sys.executable).with_name("dhgen")
    args = ["--audio", FIXTURES / "speech.m4a", "--avatar", FIXTURES / "avatar.mp4", "-o", out, "--progress", "none"]
    model = ["--model", "wav2lip", "--checkpoint", path, "--precision", "fp32", "--device", "cpu"]
    done = subprocess.run([str(dhgen), "render", *map(str, args + model)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    (record,) = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert record["status"] == "succeeded" and record["model"]["dtype"] == "float32" and out.stat().st_size > 0
