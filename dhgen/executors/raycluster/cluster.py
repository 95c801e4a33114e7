"""Connecting to a Ray cluster and reading its nodes: what the Ray driver and `dhgen doctor --ray-address` share.

An address is what `ray.init(address=...)` takes: `auto`, `HOST:PORT`, `ray://HOST:10001`. None means RAY_ADDRESS
when that is set, else a private Ray instance on this machine, started for the run and stopped after it.

Loopback: Ray rewrites 127.0.0.1/localhost in an address to this machine's outward address (ray-project/ray
#59110), so a cluster whose nodes run with `--node-ip-address 127.0.0.1` (a cluster on one machine, as in the
tests) cannot be reached as 127.0.0.1:PORT. For a loopback address, and for the private instance, dhgen sets
Ray's single-machine switch (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0) first: Ray then takes 127.0.0.1 as this
machine's address, so the driver connects there and the private instance binds nothing to another address.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import socket
import sys
import threading
from dataclasses import dataclass

from dhgen.errors import UsageError
from dhgen.hosts import is_loopback_host

log = logging.getLogger(__name__)

LOOPBACK_SWITCH = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"  # read by ray._private.ray_constants at import
REACH_TIMEOUT_S = 5.0  # for the TCP check of a HOST:PORT address before Ray connects
NODE_CHECK_S = 1.0  # how often the driver reads the node table (new nodes, dead nodes, and whether the head answers)
HEAD_TIMEOUT_S = 2.0  # a read of the node table that takes longer: the head did not answer
PROBE_TIMEOUT_S = 60.0  # a node that has not answered the doctor's probe by then is reported as not answering
RAY_HINT = "install the extra on the driver and on every node: pip install 'dhgen[ray]'"
# For a task that asks for no GPU but uses the node's (a job's NVENC, the doctor's probe): Ray must not hide them
# (older Ray sets CUDA_VISIBLE_DEVICES="" for a task without GPUs).
SEES_GPUS = {"env_vars": {"RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES": "1"}}


@dataclass(frozen=True)
class NodeInfo:
    node_id: str  # Ray's node id, hex
    ip: str
    cpus: float
    gpus: float
    alive: bool

    @property
    def label(self) -> str:
        """How a person is shown the node: its IP and the start of its id (several nodes may share an IP)."""
        return f"{self.ip} ({self.node_id[:8]})"


def is_loopback(address: str | None) -> bool:
    """Whether `address` (HOST:PORT, maybe with a scheme) names this machine's loopback interface."""
    if not address or address == "auto":
        return False
    return is_loopback_host(address.split("://", 1)[-1].rsplit(":", 1)[0])


def resolve_address(address: str | None) -> str | None:
    """The address to join: `address`, else RAY_ADDRESS; None means a private local instance."""
    return address if address is not None else os.environ.get("RAY_ADDRESS") or None


def import_ray(address: str | None):
    """`ray`, prepared for joining `address` (see the module docstring on loopback); UsageError when the extra
    is not installed."""
    address = resolve_address(address)
    if address is None or is_loopback(address):
        _use_loopback()
    try:
        import ray
    except ImportError as exc:
        raise UsageError(f"--executor ray needs Ray, which is not installed ({exc})", hint=RAY_HINT) from exc
    return ray


def require_ray() -> None:
    """UsageError when the extra is not installed. Ray is not imported: the dhgen process never runs it itself
    (the driver process does, `driverproc`)."""
    if importlib.util.find_spec("ray") is None:
        raise UsageError("--executor ray needs Ray, which is not installed", hint=RAY_HINT)


def _use_loopback() -> None:
    os.environ[LOOPBACK_SWITCH] = "0"
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # a private instance reports nowhere
    constants = sys.modules.get("ray._private.ray_constants")
    if constants is not None:  # ray was imported before (the Python API): the switch is read at call time too
        constants.ENABLE_RAY_CLUSTER = False


class Connection:
    """The driver's connection to Ray, as a context manager: joins `address` (or starts the private instance) and
    disconnects at the end. A process already connected (the Python API after its own `ray.init`) keeps its
    connection, if `address` is None, `auto` or that cluster's."""

    def __init__(self, address: str | None) -> None:
        self.address = resolve_address(address)
        self.private = self.address is None
        self._connected_here = False
        self.ray = None
        self.gcs_address: str | None = None  # the head's, once connected

    def __enter__(self) -> Connection:
        self.ray = ray = import_ray(self.address)
        if ray.is_initialized():
            self._check_same_cluster(ray)
            return self
        _check_reachable(self.address)
        try:
            if self.private:
                ray.init(address="local", include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False)
            else:
                ray.init(address=self.address, logging_level=logging.WARNING, log_to_driver=False)
        except (ConnectionError, ValueError, RuntimeError) as exc:
            raise UsageError(
                f"cannot connect to the Ray cluster at {self.address}: {exc}",
                hint="start it with `ray start --head` (and `ray start --address HEAD:6379` on each node), "
                "or leave out --ray-address to try a private local Ray",
            ) from exc
        self._connected_here = True
        self.gcs_address = ray.get_runtime_context().gcs_address
        return self

    def _check_same_cluster(self, ray) -> None:
        current = ray.get_runtime_context().gcs_address
        if self.address not in (None, "auto", current):
            raise UsageError(
                f"this process is connected to the Ray cluster at {current}, not {self.address}",
                hint="call ray.shutdown() first, or leave out the address to use the connected cluster",
            )
        self.address = self.gcs_address = current

    def __exit__(self, *exc_info) -> None:
        if self._connected_here:
            self.ray.shutdown()
            self._connected_here = False


def _check_reachable(address: str | None) -> None:
    """A HOST:PORT that nothing answers at fails here, at once: Ray's own connect retries for minutes."""
    if address is None or address == "auto" or "://" in address:
        return
    host, _, port = address.rpartition(":")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=REACH_TIMEOUT_S).close()
    except (OSError, ValueError) as exc:
        raise UsageError(
            f"cannot reach the Ray cluster at {address}: {getattr(exc, 'strerror', None) or exc}",
            hint="check the address (the head node's IP and GCS port, 6379 by default) and that `ray start --head` "
            "runs there",
        ) from exc


def nodes(ray) -> list[NodeInfo]:
    """Every node the cluster knows of, alive or not."""
    found = []
    for node in ray.nodes():
        resources = node.get("Resources", {})
        found.append(
            NodeInfo(
                node_id=node["NodeID"],
                ip=node.get("NodeManagerAddress", "?"),
                cpus=float(resources.get("CPU", 0)),
                gpus=float(resources.get("GPU", 0)),
                alive=bool(node.get("Alive")),
            )
        )
    return found


class HeadWatch:
    """The driver's view of the head: a thread that reads the node table every NODE_CHECK_S with a timeout, so the
    driver's loop takes the latest table (`take`) without ever waiting on a head that is gone. After each read
    `report(silence)` hears how it went: None when the head answered, else what went wrong (Ray's words)."""

    def __init__(self, ray, report) -> None:
        self._ray, self._report = ray, report
        self._table: list[NodeInfo] | None = None
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="head-watch", daemon=True)

    def __enter__(self) -> HeadWatch:
        self._read()  # the first table before the loop starts
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stopped.set()
        self._thread.join(HEAD_TIMEOUT_S + 1)  # a read under way ends before Ray is shut down

    def take(self) -> list[NodeInfo] | None:
        """The table read since the last take, or None (none read since; or the head did not answer)."""
        table, self._table = self._table, None
        return table

    def _watch(self) -> None:
        while not self._stopped.wait(NODE_CHECK_S):
            self._read()

    def _read(self) -> None:
        try:
            table = gcs_client(self._ray).get_all_node_info(timeout=HEAD_TIMEOUT_S)
        except Exception as exc:  # noqa: BLE001 - Ray's RpcError: timed out, unavailable, another cluster
            self._report(_first_line(exc))
            return
        self._table = _node_infos(table)
        self._report(None)


def _node_infos(table: dict) -> list[NodeInfo]:
    alive = _alive_state()
    return [
        NodeInfo(
            node_id=node.node_id.hex(),
            ip=node.node_manager_address or "?",
            cpus=float(node.resources_total.get("CPU", 0)),
            gpus=float(node.resources_total.get("GPU", 0)),
            alive=node.state == alive,
        )
        for node in table.values()
    ]


def gcs_client(ray):
    """This driver's client of the head's GCS, whose calls take a timeout (Ray's public calls such as
    `ray.nodes()` take none and wait while the head is gone). Not a public Ray API: the one place dhgen uses it."""
    return ray._private.worker.global_worker.gcs_client


def _alive_state() -> int:
    from ray.core.generated.gcs_pb2 import GcsNodeInfo

    return GcsNodeInfo.ALIVE


def node_report() -> dict:
    """Run on a node (doctor): what it has that dhgen needs. Importing this function there imports dhgen."""
    import platform

    import dhgen
    from dhgen.gpus import visible_gpus

    gpus = visible_gpus()
    report = {"dhgen": dhgen.__version__, "python": platform.python_version(), "driver": gpus.driver}
    report["gpus"] = gpus.count
    try:
        import torch

        report["torch"] = torch.__version__
        report["cuda"] = torch.cuda.device_count() if torch.cuda.is_available() else 0
    except Exception as exc:  # noqa: BLE001 - a node without a working torch is the finding
        report["torch_error"] = f"{type(exc).__name__}: {exc}"
    return report


def probe_nodes(address: str | None) -> dict:
    """For `dhgen doctor --ray-address`: the cluster's alive nodes, each with what `node_report` found there (or
    why it could not run). Raises UsageError when the cluster cannot be reached or Ray is not installed."""
    with Connection(address) as connection:
        ray = connection.ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        alive = [n for n in nodes(ray) if n.alive]
        # max_calls=1: the worker that imported torch for the report exits, so no job task later reuses it.
        remote = ray.remote(num_cpus=0, max_retries=0, max_calls=1, runtime_env=SEES_GPUS)(node_report)
        refs = [
            remote.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n.node_id, soft=False)).remote()
            for n in alive
        ]
        reports = []
        for node, ref in zip(alive, refs, strict=True):
            try:
                found = ray.get(ref, timeout=PROBE_TIMEOUT_S)
            except ray.exceptions.GetTimeoutError:
                ray.cancel(ref, force=True)
                found = {"error": f"did not answer within {PROBE_TIMEOUT_S:g}s"}
            except Exception as exc:  # noqa: BLE001 - e.g. dhgen is not importable there
                found = {"error": _first_line(exc)}
            reports.append({"node": node, **found})
        return {"address": connection.address or "private local Ray", "nodes": reports}


def _first_line(exc: BaseException) -> str:
    cause = getattr(exc, "cause", None) or exc
    text = str(cause).strip().splitlines()
    return f"{type(cause).__name__}: {text[-1] if text else ''}".strip()
