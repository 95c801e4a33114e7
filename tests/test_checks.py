"""Checks before a run: real checkpoint files of every format torch writes (and files that only look like one),
devices against the GPUs the driver shows, folders that are files. Each refusal is a UsageError with a hint."""

from __future__ import annotations

import dataclasses
import pickle
import sys
import warnings
import zipfile
from pathlib import Path

import pytest
import torch

from dhgen.checks import check_device, check_model, check_options, folder_problem
from dhgen.errors import UsageError
from dhgen.gpus import Gpus
from dhgen.options import AvatarOptions, EncodeOptions, FaceOptions, ModelOptions, RenderOptions, RunOptions


def check_checkpoint(path: Path) -> None:
    """What `render --model wav2lip --checkpoint PATH` judges before anything starts."""
    check_model(ModelOptions(name="wav2lip", checkpoint=path, device="cpu"))


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    """One small file per format torch writes, and the look-alikes dhgen must refuse."""
    root = tmp_path_factory.mktemp("ckpt")
    conv = torch.nn.Conv2d(1, 2, 3)
    files = {name: root / name for name in ("zip.pth", "legacy.pth", "script.pt", "module.pth", "text.txt")}
    torch.save({"state_dict": conv.state_dict(), "global_step": 7}, files["zip.pth"])
    torch.save(conv.state_dict(), files["legacy.pth"], _use_new_zipfile_serialization=False)
    with warnings.catch_warnings():  # torch.jit is deprecated, but TorchScript files are still what people have
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(torch.jit.script(conv), files["script.pt"])
    torch.save(conv, files["module.pth"])  # a whole pickled module, not weights
    files["text.txt"].write_text("these are not weights\n")
    files["plain.zip"] = root / "plain.zip"
    with zipfile.ZipFile(files["plain.zip"], "w") as archive:
        archive.writestr("notes.txt", "a zip, but not torch's")
    files["pickle.pkl"] = root / "pickle.pkl"
    files["pickle.pkl"].write_bytes(pickle.dumps({"weights": [1, 2, 3]}))
    files["truncated.pth"] = root / "truncated.pth"
    files["truncated.pth"].write_bytes(files["zip.pth"].read_bytes()[:300])
    return files


@pytest.mark.parametrize("name", ["zip.pth", "legacy.pth", "script.pt"])
def test_every_pytorch_format_is_recognised(checkpoints, name):
    check_checkpoint(checkpoints[name])  # no exception


@pytest.mark.parametrize("name", ["text.txt", "plain.zip", "pickle.pkl", "truncated.pth"])
def test_a_file_that_is_not_a_checkpoint_says_so_in_our_words(checkpoints, name):
    with pytest.raises(UsageError) as info:
        check_checkpoint(checkpoints[name])
    assert info.value.message == f"{checkpoints[name]} is not a PyTorch checkpoint"
    assert "torch.save" in info.value.hint and "weights_only" not in info.value.message + info.value.hint


def test_a_pickled_model_is_refused_naming_its_class(checkpoints):
    with pytest.raises(UsageError) as info:
        check_checkpoint(checkpoints["module.pth"])
    assert "torch.nn.modules.conv.Conv2d" in info.value.message and "pickled Python objects" in info.value.message
    assert "state_dict()" in info.value.hint and "weights_only" not in info.value.message + info.value.hint


def test_checking_a_checkpoint_imports_no_torch(checkpoints):
    import subprocess

    code = (
        "import sys; from pathlib import Path; from dhgen.checks import check_model; from dhgen.options import "
        f"ModelOptions; check_model(ModelOptions('wav2lip', Path({str(checkpoints['zip.pth'])!r}), 'cpu')); "
        "print('torch' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout.strip() == "False"


@pytest.mark.parametrize(
    ("device", "gpus", "words"),
    [
        ("cuda", 0, "no usable CUDA device"),
        ("cuda:0", 0, "no usable CUDA device"),
        ("cuda:2", 2, "only 2 CUDA device(s) are visible (cuda:0 .. cuda:1)"),
    ],
)
def test_cuda_without_that_gpu_is_refused(device, gpus, words):
    with pytest.raises(UsageError) as info:
        check_device(device, Gpus(gpus, gpus))
    assert words in info.value.message and "--device cpu" in info.value.hint


def test_cuda_with_the_gpu_and_cpu_anywhere_pass():
    check_device("cuda:1", Gpus(2, 2))
    check_device("cuda", Gpus(1, 4))
    check_device("cpu", Gpus(0, 0))
    check_device("auto", Gpus(0, 0))


def test_the_gpus_cuda_will_see_decide_without_torch(monkeypatch, fake_gpus):
    fake_gpus(["GPU-0a", "GPU-1b", "GPU-2c", "GPU-3d"])  # the driver has four
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    with pytest.raises(UsageError, match=r"no usable CUDA device \(CUDA_VISIBLE_DEVICES='' hides all 4 GPU"):
        check_options(RenderOptions(model=ModelOptions(device="cuda")), RunOptions())
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")  # one GPU visible, whatever its number
    check_options(RenderOptions(model=ModelOptions(device="cuda:0")), RunOptions())
    with pytest.raises(UsageError, match="only 1 CUDA device"):
        check_options(RenderOptions(model=ModelOptions(device="cuda:1")), RunOptions())
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    check_options(RenderOptions(model=ModelOptions(device="cuda:3")), RunOptions())


def test_without_an_nvidia_driver_cuda_is_refused_saying_so(monkeypatch, fake_gpus):
    fake_gpus(None)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")  # names GPUs, but there is no driver to have them
    with pytest.raises(UsageError, match="no usable CUDA device .no NVIDIA driver answers"):
        check_options(RenderOptions(model=ModelOptions(device="cuda:0")), RunOptions())


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"model": ModelOptions(name="nope")}, "unknown model 'nope'"),
        ({"model": ModelOptions(name="wav2lip")}, "--model wav2lip needs --checkpoint"),
        ({"model": ModelOptions(checkpoint=Path("w.pth"))}, "--model mouthwarp takes no checkpoint"),
        ({"model": ModelOptions(device="gpu")}, "--device 'gpu' is not a device"),
        ({"model": ModelOptions(batch_size=0)}, "--batch-size 0 must be at least 1"),
        ({"encode": EncodeOptions(preset="quick")}, "--preset 'quick' is not a preset of libx264"),
        ({"encode": EncodeOptions(crf=60)}, "--crf 60 is not in 0..51"),
        ({"avatar": AvatarOptions(loop="bounce")}, "--loop 'bounce' is not a loop mode"),
        ({"avatar": AvatarOptions(still_fps=0)}, "--fps 0 must be above 0"),
        ({"face": FaceOptions(choice="middle")}, "--face 'middle' is not a face choice"),
        ({"face": FaceOptions(choice="12,x")}, "--face '12,x' is not a pixel x,y"),
        ({"face": FaceOptions(min_coverage=1.5)}, "--min-face-coverage 1.5 is not a share of the frames"),
    ],
)
def test_options_that_cannot_work_are_named(change, words):
    with pytest.raises(UsageError) as info:
        check_options(dataclasses.replace(RenderOptions(), **change), RunOptions())
    assert words in info.value.message and info.value.hint


def test_preset_hint_lists_the_presets():
    with pytest.raises(UsageError) as info:
        check_options(RenderOptions(encode=EncodeOptions(preset="quick")), RunOptions())
    assert "ultrafast" in info.value.hint and "veryslow" in info.value.hint


@pytest.mark.parametrize(
    ("run_fields", "words"),
    [
        ({"jobs": 0}, "--jobs 0 must be at least 1"),
        ({"retries": -1}, "--retries -1 must be at least 0"),
        ({"stall_timeout": 0}, "--stall-timeout 0 must be above 0 seconds"),
        ({"job_timeout": -5.0}, "--job-timeout -5.0 must be above 0 seconds"),
    ],
)
def test_run_counts_out_of_range_are_named(tmp_path, run_fields, words):
    with pytest.raises(UsageError, match=words.replace("(", r"\(").replace(")", r"\)")):
        check_options(RenderOptions(), RunOptions(out_dir=tmp_path, **run_fields))


def test_folders_that_are_files_are_named(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert folder_problem(blocker) == f"{blocker} is a file, not a folder"
    assert folder_problem(blocker / "a" / "b") == f"{blocker / 'a' / 'b'}: {blocker} is a file, not a folder"
    assert folder_problem(tmp_path / "new" / "deep") is None  # dhgen creates it
    with pytest.raises(UsageError, match="output folder .* is a file, not a folder"):
        check_options(RenderOptions(), RunOptions(out_dir=blocker))
    with pytest.raises(UsageError, match="result log .* is a folder, not a file"):
        check_options(RenderOptions(), RunOptions(out_dir=tmp_path, log_path=tmp_path))
    assert blocker.read_text() == "x" and not (tmp_path / "new").exists()
