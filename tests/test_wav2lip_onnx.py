"""Wav2Lip as an ONNX graph with FaceFusion's I/O: the same frames as the torch checkpoint it was exported from,
graphs that do not fit refused before anything starts, and no torch anywhere on the ONNX path.

dhgen's own torch generator (random weights and BatchNorm statistics, the published key layout) is saved as a
`.pth` and exported with torch.onnx under FaceFusion's names (`source`, `target` -> `output`), once with a fixed
batch of 1 (as FaceFusion's files are) and once with a dynamic batch. Graphs that do not fit are tiny modules
exported the same way, so each failure is one real file.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import av
import numpy as np
import onnx
import pytest
import torch
from conftest import FIXTURES, write_clip
from torch import nn

from dhgen.checks import check_model
from dhgen.errors import ModelLoadError, UsageError
from dhgen.manifest import Job
from dhgen.models import CropBatch, onnx_backend
from dhgen.models.serving import load_for_serving, load_model
from dhgen.models.torch_backend import TorchPredictor
from dhgen.models.wav2lip.network import Wav2Lip, Wav2LipModel
from dhgen.options import ModelOptions, RenderOptions, RunOptions
from dhgen.runner import render

S = 96
DHGEN = Path(sys.executable).with_name("dhgen")
AVATAR = FIXTURES / "portrait.png"
MIN_PSNR = 45.0  # dB, every frame of an ONNX render against the torch render of the same weights


def _export(model: nn.Module, path: Path, inputs, names=("source", "target"), dynamic: bool = False) -> Path:
    axes = {name: {0: "batch"} for name in (*names, "output")} if dynamic else None
    with warnings.catch_warnings():  # the TorchScript-based exporter is deprecated, and still what makes these
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model, inputs, str(path), input_names=list(names), output_names=["output"], dynamic_axes=axes, dynamo=False
        )
    return path


def _zero_inputs(n: int = 1):
    return torch.zeros(n, 1, 80, 16), torch.zeros(n, 6, S, S)


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> dict[str, Path]:
    """The same random generator as a training-format .pth and as two ONNX graphs (batch 1, dynamic batch)."""
    folder = tmp_path_factory.mktemp("weights")
    torch.manual_seed(0)
    generator = Wav2Lip()
    for module in generator.modules():  # non-trivial BatchNorm statistics, so the export must carry them
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.normal_(0.0, 0.1)
            module.running_var.uniform_(0.5, 2.0)
    generator.eval()
    pth = folder / "wav2lip.pth"
    torch.save({"state_dict": {"module." + k: v for k, v in generator.state_dict().items()}}, pth)
    return {
        "pth": pth,
        "batch1": _export(generator, folder / "wav2lip_96.onnx", _zero_inputs()),
        "dynamic": _export(generator, folder / "wav2lip_dynamic.onnx", _zero_inputs(), dynamic=True),
    }


@pytest.fixture(scope="module")
def fixed_batch_4(weights, tmp_path_factory) -> Path:
    """The dynamic graph with its batch axis pinned to 4: a fixed batch other than FaceFusion's 1."""
    model = onnx.load(str(weights["dynamic"]))
    for value in (*model.graph.input, *model.graph.output):
        value.type.tensor_type.shape.dim[0].dim_value = 4
    path = tmp_path_factory.mktemp("fixed4") / "wav2lip_b4.onnx"
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def crops() -> CropBatch:
    rng = np.random.default_rng(1)
    return CropBatch(
        crops=rng.integers(0, 256, (5, S, S, 3), dtype=np.uint8),
        refs=rng.integers(0, 256, (5, S, S, 3), dtype=np.uint8),
        cond=rng.uniform(-4, 4, (5, 80, 16)).astype(np.float32),
    )


@pytest.fixture(scope="module")
def torch_patches(weights, crops):
    """What the .pth answers for `crops`, through the torch predictor."""
    return load_model(_options(weights["pth"])).predict(crops)


def _options(checkpoint: Path, **fields) -> ModelOptions:
    return ModelOptions(name="wav2lip", checkpoint=checkpoint, device="cpu", **fields)


# --- the predictor ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("graph", ["batch1", "dynamic", "fixed4"])
def test_a_graph_answers_what_its_torch_checkpoint_answers(graph, weights, fixed_batch_4, crops, torch_patches):
    """Five crops through a graph fed one at a time, whole, or in fours (the last four padded): the torch
    predictor's patches give or take one level, and the same alpha."""
    path = fixed_batch_4 if graph == "fixed4" else weights[graph]
    predictor = load_model(_options(path))
    fixed = {"batch1": 1, "fixed4": 4}.get(graph)  # None: dynamic
    assert (predictor.device, predictor.dtype, predictor.batch) == ("cpu", "float32", fixed)
    result = predictor.predict(crops)
    assert result.patches.shape == (5, S, S, 3) and result.patches.dtype == np.uint8
    assert np.abs(result.patches.astype(int) - torch_patches.patches).max() <= 1
    assert np.array_equal(result.alphas, torch_patches.alphas)


def test_the_graph_sees_the_masked_crop_then_the_reference(tmp_path, crops):
    """A graph that returns the first or last three of its target channels shows what the predictor built."""

    class Channels(nn.Module):
        def __init__(self, first: int) -> None:
            super().__init__()
            self.first = first

        def forward(self, source, target):
            return target[:, self.first : self.first + 3] + 0.0 * source.mean()

    for first, what in ((0, "masked crop"), (3, "reference")):
        path = _export(Channels(first), tmp_path / f"channels{first}.onnx", _zero_inputs(), dynamic=True)
        onnx_patches = load_model(_options(path)).predict(crops).patches
        torch_patches = TorchPredictor("wav2lip", S, Wav2LipModel(Channels(first)), "cpu").predict(crops).patches
        assert np.array_equal(onnx_patches, torch_patches), what
    assert np.array_equal(onnx_patches, crops.refs)  # channels 3-5: the reference crop, exactly


def test_the_worker_share_of_threads_reaches_the_session(weights, monkeypatch):
    monkeypatch.setattr(onnx_backend, "_threads", None)  # this process's setting, as it was, after the test
    predictor = load_for_serving(_options(weights["dynamic"]), threads=1)
    assert predictor.predictor.session.get_session_options().intra_op_num_threads == 1


def test_an_onnx_worker_and_the_up_front_check_never_import_torch(weights):
    """What an inference worker does with a .onnx checkpoint (load with its share of threads, predict), and what
    the CLI does before a run (check the model): in one process that never imports torch."""
    code = (
        "import sys, numpy as np; from pathlib import Path; import dhgen.executors.local.workerproc;"
        "from dhgen.checks import check_model; from dhgen.models import CropBatch;"
        "from dhgen.models.serving import load_for_serving; from dhgen.options import ModelOptions;"
        f"o = ModelOptions('wav2lip', Path({str(weights['batch1'])!r}), 'auto'); check_model(o);"
        "p = load_for_serving(o, 1); c = np.zeros((2, 96, 96, 3), np.uint8);"
        "out = p.predict(CropBatch(c, c, np.zeros((2, 80, 16), np.float32)));"
        "print(out.patches.shape, p.device, 'torch' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert done.stdout.split("\n")[0] == "(2, 96, 96, 3) cpu False"


# --- devices ------------------------------------------------------------------------------------------------------


def test_devices_follow_the_installed_onnxruntime():
    """This box's onnxruntime has no CUDA provider: auto runs on the CPU, cuda is refused naming the package."""
    import onnxruntime

    if onnx_backend.CUDA_EP in onnxruntime.get_available_providers():
        pytest.skip("onnxruntime here has the CUDA execution provider")
    assert onnx_backend.resolve_device("auto") == "cpu" and onnx_backend.resolve_device("auto:0") == "cpu"
    assert onnx_backend.resolve_device("cpu") == "cpu"
    for device in ("cuda", "cuda:1"):
        with pytest.raises(UsageError, match="no CUDA execution provider") as info:
            onnx_backend.resolve_device(device)
        assert "onnxruntime-gpu" in info.value.hint
    with pytest.raises(UsageError, match="unknown device"):
        onnx_backend.resolve_device("tpu")


# --- graphs that do not fit ---------------------------------------------------------------------------------------


class _Tiny(nn.Module):
    """A graph with chosen inputs: its output is the first input's first three channels, scaled by the rest."""

    def __init__(self, out_size: int = S) -> None:
        super().__init__()
        self.out_size = out_size

    def forward(self, *inputs):
        scale = sum(x.mean() for x in inputs[1:])
        out = inputs[0][:, :3] if inputs[0].dim() == 4 else inputs[0][:, None].expand(-1, 3, -1, -1)
        return torch.sigmoid(nn.functional.interpolate(out, size=(self.out_size, self.out_size)) * scale)


MISFITS = {  # name: (inputs, their names, output side, what the refusal must say)
    "other names": (
        (torch.zeros(1, 6, S, S), torch.zeros(1, 1, 80, 16)),
        ("face", "mel"),
        S,
        "has no input 'source' (its inputs: 'face' float32 (1, 6, 96, 96), 'mel' float32 (1, 1, 80, 16))",
    ),
    "three-channel target": (
        (torch.zeros(1, 3, S, S), torch.zeros(1, 1, 80, 16)),
        ("target", "source"),
        S,
        "input 'target' float32 (1, 3, 96, 96), expected float32 (N, 6, 96, 96)",
    ),
    "mel without its channel": (
        (torch.zeros(1, 6, S, S), torch.zeros(1, 80, 16)),
        ("target", "source"),
        S,
        "input 'source' float32 (1, 80, 16), expected float32 (N, 1, 80, 16)",
    ),
    "an input it is not fed": (
        (torch.zeros(1, 6, S, S), torch.zeros(1, 1, 80, 16), torch.zeros(1)),
        ("target", "source", "weight"),
        S,
        "an input dhgen does not feed: 'weight' float32 (1,)",
    ),
    "a 48-pixel face": (
        (torch.zeros(1, 6, S, S), torch.zeros(1, 1, 80, 16)),
        ("target", "source"),
        48,
        "output 'output' float32 (1, 3, 48, 48), expected float32 (N, 3, 96, 96)",
    ),
    "batches that disagree": (
        (torch.zeros(2, 6, S, S), torch.zeros(1, 1, 80, 16)),
        ("target", "source"),
        S,
        "disagree on the batch: 'target' float32 (2, 6, 96, 96), 'source' float32 (1, 1, 80, 16)",
    ),
}


@pytest.fixture(scope="module")
def misfits(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("misfits")
    paths = {}
    for case, (inputs, names, out_size, _) in MISFITS.items():
        paths[case] = _export(_Tiny(out_size), folder / f"{case.replace(' ', '_')}.onnx", inputs, names)
    return paths


@pytest.mark.parametrize("case", list(MISFITS))
def test_a_graph_with_other_inputs_is_refused_naming_the_input_and_its_shape(case, misfits):
    with pytest.raises(UsageError) as info:
        check_model(_options(misfits[case]))
    assert MISFITS[case][3] in info.value.message and str(misfits[case]) in info.value.message
    assert "FaceFusion" in info.value.hint and "(N, 6, 96, 96)" in info.value.hint


def test_weights_listed_as_inputs_are_not_inputs(tmp_path):
    """Older exporters list every initializer among the graph's inputs: nobody feeds those, so they pass."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path = tmp_path / "old_style.onnx"
        conv = nn.Sequential(nn.Conv2d(6, 3, 1), nn.Sigmoid())
        model = _Adapter(conv)
        torch.onnx.export(
            model,
            _zero_inputs(),
            str(path),
            input_names=["source", "target"],
            output_names=["output"],
            keep_initializers_as_inputs=True,
            dynamo=False,
        )
    assert len(onnx.load(str(path)).graph.input) == 4  # source, target, the conv's weight and bias
    check_model(_options(path))
    assert load_model(_options(path)).batch == 1


class _Adapter(nn.Module):
    def __init__(self, face_net: nn.Module) -> None:
        super().__init__()
        self.face_net = face_net

    def forward(self, source, target):
        return self.face_net(target) * (1.0 + 0.0 * source.mean())


@pytest.mark.parametrize("case", ["a .pth renamed", "random bytes", "empty", "truncated graph", "text"])
def test_a_file_that_is_not_an_onnx_graph_is_refused(case, weights, tmp_path):
    path = tmp_path / "model.onnx"
    if case == "a .pth renamed":
        path.write_bytes(weights["pth"].read_bytes())
    elif case == "random bytes":
        path.write_bytes(np.random.default_rng(3).bytes(4096))
    elif case == "empty":
        path.write_bytes(b"")
    elif case == "truncated graph":
        with open(weights["batch1"], "rb") as f:
            path.write_bytes(f.read(1 << 16))
    else:
        path.write_text("wav2lip_96.onnx\n")
    with pytest.raises(UsageError) as info:
        check_model(_options(path))
    assert info.value.message.startswith(f"{path} is not an ONNX graph (") and "FaceFusion" in info.value.hint


def test_a_graph_onnxruntime_cannot_load_fails_the_load_naming_the_file(tmp_path):
    """Right inputs and output, an operator no runtime has: passes the byte check, fails to load, typed."""
    tiny = _export(_Adapter(nn.Sequential(nn.Conv2d(6, 3, 1), nn.Sigmoid())), tmp_path / "tiny.onnx", _zero_inputs())
    model = onnx.load(str(tiny))
    model.graph.node[0].op_type = "NoSuchOperator"
    path = tmp_path / "unknown_op.onnx"
    onnx.save(model, str(path))
    check_model(_options(path))
    with pytest.raises(ModelLoadError) as info:
        load_model(_options(path))
    assert str(path) in info.value.message and "NoSuchOperator" in info.value.message
    assert "FaceFusion" in info.value.hint


# --- rendering: the CLI, the local executor's worker processes ----------------------------------------------------


def _dhgen(*args: str, cwd: Path, timeout: float = 240) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("FORCE_COLOR", "TERM")}
    cmd = [str(DHGEN), "render", *args, "--progress", "none"]
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)


def _frames(path: Path) -> np.ndarray:
    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="bgr24") for f in container.decode(video=0)]).astype(np.float64)


def _psnr(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """dB per frame (inf where equal)."""
    mse = ((a - b) ** 2).mean(axis=(1, 2, 3))
    with np.errstate(divide="ignore"):
        return 10 * np.log10(255.0**2 / mse)


def test_the_pth_and_both_graphs_render_the_same_frames(weights, tmp_path):
    """One job through `dhgen render` (supervised worker processes) with the .pth, the batch-1 graph and the
    dynamic graph: every ONNX frame within 45 dB of the torch frame, records naming the backend."""
    audio = write_clip(tmp_path / "speech.wav", 0.6)
    renders, records = {}, {}
    for name in ("pth", "batch1", "dynamic"):
        out = tmp_path / f"{name}.mp4"
        args = ["--audio", str(audio), "--avatar", str(AVATAR), "-o", str(out), "--model", "wav2lip"]
        done = _dhgen(*args, "--checkpoint", str(weights[name]), "--device", "cpu", "--batch-size", "4", cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        [records[name]] = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()][-1:]
        renders[name] = _frames(out)
    still = np.broadcast_to(_frames_of_still(), renders["pth"].shape)
    assert _psnr(renders["pth"], still).max() < 35  # in every frame, the random generator's mouth to compare
    for name in ("batch1", "dynamic"):
        assert renders[name].shape == renders["pth"].shape == (15, 288, 288, 3)
        assert _psnr(renders[name], renders["pth"]).min() >= MIN_PSNR, name
    for name, record in records.items():
        assert record["status"] == "succeeded" and len(record["frames_digest"]) == 64
        model = record["model"]
        assert model["backend"] == ("torch" if name == "pth" else "onnxruntime")
        assert (model["device"], model["dtype"]) == ("cpu", "float32")
    assert len({r["model"]["checkpoint_sha256"] for r in records.values()}) == 3


def _frames_of_still() -> np.ndarray:
    import cv2

    return cv2.imread(str(AVATAR)).astype(np.float64)[None]


def test_a_misfit_graph_is_refused_by_the_command_before_anything_starts(misfits, tmp_path):
    out = tmp_path / "out"
    args = ["--audio", str(FIXTURES / "silence.wav"), "--avatar", str(AVATAR), "-o", str(out / "t.mp4")]
    done = _dhgen(*args, "--model", "wav2lip", "--checkpoint", str(misfits["three-channel target"]), cwd=tmp_path)
    assert done.returncode == 2
    assert "input 'target' float32 (1, 3, 96, 96), expected float32 (N, 6, 96, 96)" in done.stderr
    assert not out.exists()


def test_the_same_frames_in_process_locally_and_on_ray(weights, ray_cluster, tmp_path):
    audio = write_clip(tmp_path / "a.wav", 0.6)
    options = RenderOptions(model=_options(weights["dynamic"], batch_size=4))
    digests = {}
    for executor in ("inprocess", "local", "ray"):
        out = tmp_path / executor
        extra = {"ray_address": ray_cluster.address} if executor == "ray" else {}
        run = RunOptions(
            out_dir=out, jobs=1, job_timeout=120, executor="ray" if executor == "ray" else "local", **extra
        )
        kwargs = {}
        if executor == "inprocess":
            from dhgen.executors.inprocess import InProcessExecutor

            kwargs["executor"] = InProcessExecutor(options)
        [record] = render([Job("a", audio, AVATAR, out / "a.mp4")], options, run, **kwargs).records
        assert record.status == "succeeded", record.error
        assert record.model["backend"] == "onnxruntime"
        digests[executor] = record.frames_digest
    assert len(set(digests.values())) == 1, digests
