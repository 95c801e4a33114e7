"""Counting the GPUs CUDA will see, from the driver (a stand-in NVML describes a GPU box), without torch."""

from __future__ import annotations

import pytest

from dhgen.executors.local import Supervisor
from dhgen.gpus import cuda_index, cuda_visible, least_busy_gpu, visible_gpus
from dhgen.options import ModelOptions, RenderOptions, RunOptions

UUIDS = ["GPU-8f6c0001", "GPU-8f6c0002", "GPU-1234abcd"]


@pytest.mark.parametrize(
    ("spec", "visible"),
    [
        (None, [0, 1, 2]),
        ("", []),
        ("2,0", [2, 0]),  # CUDA's order is the variable's
        ("1,7,0", [1]),  # the first entry that names no GPU ends the list
        ("0,0", []),  # a GPU named twice hides them all
        ("-1", []),
        ("GPU-1234", [2]),  # a UUID prefix
        ("GPU-8f6c", []),  # ambiguous: it names no GPU
        ("GPU-8f6c0002, 0", [1, 0]),
        ("MIG-5c4e", ["MIG-5c4e"]),
    ],
)
def test_cuda_visible_devices_narrows_the_drivers_gpus_as_cuda_does(spec, visible):
    assert cuda_visible(spec, UUIDS) == visible


def test_the_count_comes_from_the_driver_and_cuda_visible_devices(monkeypatch, fake_gpus):
    fake_gpus(UUIDS, driver="550.54.14", cuda=12040)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    found = visible_gpus()
    assert (found.count, found.installed, found.driver, found.cuda, found.hidden) == (3, 3, "550.54.14", "12.4", False)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-1234abcd")
    assert (visible_gpus().count, visible_gpus().hidden) == (1, True)


def test_no_driver_means_no_gpu_whatever_cuda_visible_devices_says(monkeypatch, fake_gpus):
    fake_gpus(None)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")  # a container may set it without passing GPUs through
    found = visible_gpus()
    assert found.count == 0 and "no NVIDIA driver answers" in found.problem


def _worker_devices(device: str, workers: int | None = None) -> list[str]:
    options = RenderOptions(model=ModelOptions(name="wav2lip", checkpoint=None, device=device))
    return Supervisor(options, RunOptions(workers=workers))._worker_devices()


def test_one_inference_worker_per_gpu_that_cuda_will_see(monkeypatch, fake_gpus):
    fake_gpus(UUIDS)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert _worker_devices("auto") == ["auto:0", "auto:1", "auto:2"]
    assert _worker_devices("cuda", workers=4) == ["cuda:0", "cuda:1", "cuda:2", "cuda:0"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,1")
    assert _worker_devices("auto") == ["auto:0", "auto:1"]
    fake_gpus(None)  # no NVIDIA driver: one CPU worker
    assert _worker_devices("auto") == ["cpu"]


@pytest.mark.parametrize(
    ("ray_ids", "visible", "index"),
    [
        (("1",), None, 1),  # the raylet saw every GPU: Ray's id is CUDA's index
        (("3",), "2,3", 1),  # the raylet was started with CUDA_VISIBLE_DEVICES=2,3
        (("3",), "", None),  # hidden from this process
        ((), None, None),  # a CPU actor
    ],
)
def test_the_actors_gpu_as_a_job_on_its_node_numbers_it(ray_ids, visible, index):
    assert cuda_index(ray_ids, visible) == index


def test_nvenc_sessions_go_to_the_least_busy_gpu():
    assert least_busy_gpu(1, [0, 0]) is None  # one GPU: NVENC's default
    assert least_busy_gpu(3, []) == 0
    assert least_busy_gpu(3, [0, 0, 1, None]) == 2
    assert least_busy_gpu(2, [0, 1, 1]) == 0
