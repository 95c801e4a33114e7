import faulthandler
import hashlib
import importlib.util
import logging
import os
import threading
import time
import wave
from pathlib import Path

import av
import pytest

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture
def fixtures() -> Path:
    return FIXTURES


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory, monkeypatch):
    """Each test gets its own face cache, so cache hits are the test's own doing."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("xdg-cache")))


def fixture_script(name: str):
    """A fixture-making script of tests/fixtures as a module (for the geometry it drew the fixtures with)."""
    spec = importlib.util.spec_from_file_location(name, FIXTURES / f"{name}.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    return script


def write_clip(target: Path, seconds: float, source: Path = FIXTURES / "speech.wav", start: float = 0.0) -> Path:
    """A piece of a fixture WAV (from `start`, `seconds` long) written to `target`: short, distinct audio."""
    with wave.open(str(source)) as src:
        params = src.getparams()
        src.setpos(int(start * params.framerate))
        data = src.readframes(int(round(seconds * params.framerate)))
    target.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(target), "wb") as dst:
        dst.setparams(params)
        dst.writeframes(data)
    return target


class EventWatcher:
    """Collects events from a run; a background thread can wait for one and act (kill, stop)."""

    def __init__(self) -> None:
        self.events: list[dict] = []
        self._cond = threading.Condition()

    def __call__(self, event: dict) -> None:
        with self._cond:
            self.events.append({**event, "_t": time.monotonic()})
            self._cond.notify_all()

    def wait_for(self, predicate, timeout: float = 60.0) -> dict:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for event in self.events:
                    if predicate(event):
                        return event
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError("event not seen")
                self._cond.wait(left)

    def act(self, action) -> threading.Thread:
        thread = threading.Thread(target=action, daemon=True)
        thread.start()
        return thread


def alive(pid: int) -> bool:
    """The process exists and is not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def children_of(pid: int) -> list[int]:
    """The pids whose parent is `pid` (from /proc)."""
    kids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                kids.append(int(entry))
    return kids


def frame_digests(path: Path) -> list[str]:
    """md5 of every decoded video frame of an output (which must have a video and an audio stream)."""
    with av.open(str(path)) as container:
        assert [s.type for s in container.streams] == ["video", "audio"]
        return [hashlib.md5(f.to_ndarray(format="rgb24").tobytes()).hexdigest() for f in container.decode(video=0)]


RAY_NODE = {"node_ip_address": "127.0.0.1", "object_store_memory": 80 * 1024**2}


@pytest.fixture(scope="session")
def ray_cluster():
    """A real Ray cluster on this machine, started once per session: a head node without CPUs (the driver's; no
    job runs there) and two worker nodes of one CPU each, every one bound to 127.0.0.1, no dashboard, 80 MB
    object stores. This process is connected to it as a driver. Tests that remove a node add one back."""
    from dhgen.executors.raycluster.cluster import import_ray

    ray = import_ray("127.0.0.1:6379")  # loopback: Ray must take 127.0.0.1 as this machine's address
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False, **RAY_NODE})
    for _ in range(2):
        cluster.add_node(num_cpus=1, **RAY_NODE)
    ray.init(address=cluster.address, logging_level=logging.WARNING, log_to_driver=False)
    try:
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()


FAKE_NVML = FIXTURES / "fake_nvml"  # a stand-in pynvml: the NVIDIA driver's answers from FAKE_NVML_* variables


@pytest.fixture
def fake_gpus(monkeypatch):
    """`fake_gpus(["GPU-a", "GPU-b"], driver="550.54.14")` makes this process, and the processes it starts, see
    those GPUs through the driver (NVML); `fake_gpus(None)`: no driver. Returns the environment to start them with."""
    import os
    import sys

    def simulate(uuids: list[str] | None, driver: str = "570.86.15", cuda: int = 12080) -> dict:
        monkeypatch.syspath_prepend(str(FAKE_NVML))
        monkeypatch.delitem(sys.modules, "pynvml", raising=False)
        monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(FAKE_NVML), os.environ.get("PYTHONPATH", "")]))
        if uuids is None:
            monkeypatch.delenv("FAKE_NVML_GPUS", raising=False)
        else:
            monkeypatch.setenv("FAKE_NVML_GPUS", ",".join(uuids))
        monkeypatch.setenv("FAKE_NVML_DRIVER", driver)
        monkeypatch.setenv("FAKE_NVML_CUDA", str(cuda))
        return dict(os.environ)

    return simulate


def bounded_tests(seconds: float):
    """An autouse fixture for a module: a test that hangs longer than `seconds` ends the session with every
    thread's traceback (instead of hanging CI)."""

    @pytest.fixture(autouse=True)
    def _bounded():
        faulthandler.dump_traceback_later(seconds, exit=True)
        yield
        faulthandler.cancel_dump_traceback_later()

    return _bounded


class RecordingInference:
    """An `Inference` that runs the real model and keeps what it returned (to know every paste's alpha)."""

    def __init__(self, inner) -> None:
        self.inner, self.results = inner, {}

    def submit(self, request):
        return self.inner.submit(request)

    def collect(self, ticket):
        self.results[ticket] = result = self.inner.collect(ticket)
        return result


class KeptFrames(list):
    write = list.append  # stands in for the VideoWriter: keeps the composited frames instead of encoding them
