"""The driver's view of the cluster: its nodes, the inference actors on them, and where the next job goes.

A node that can run jobs (at least one CPU) gets its actors when the driver first sees it: one per GPU
(`num_gpus=1`) for --device auto/cuda, else one CPU actor. A job goes to the node with the fewest jobs running
(at most --jobs per node, and no more than its CPUs), onto its least busy actor; the job's task is pinned to that
node (NodeAffinitySchedulingStrategy), so its crops never cross the network.

Each actor is watched through its `watch()` stream: first who it is (model loaded), then its counters. A stream
that fails means the actor's process died: Ray restarts it (max_restarts=-1) and the driver watches the new one.
An actor that keeps dying before it serves anything, or cannot load the model, is given up (killed for good).
Each node table the head watch read (`cluster.HeadWatch`, every NODE_CHECK_S) is looked at once: a node that died is
lost (NodeLost for the jobs it held), a new one gets actors.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from dataclasses import dataclass, field

from ray.exceptions import ActorDiedError
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from dhgen import events
from dhgen.errors import OutOfMemory, Stalled
from dhgen.events import EventFn
from dhgen.executors.raycluster.actor import REPORT_EVERY_S, InferenceActor
from dhgen.executors.raycluster.cluster import NodeInfo
from dhgen.executors.raycluster.failures import actor_died, node_lost
from dhgen.executors.shares import job_threads, worker_threads
from dhgen.liveness import PROGRESS_EVERY_S, Limits
from dhgen.models import get_family
from dhgen.models.serving import broken_context_words
from dhgen.options import RenderOptions, RunOptions

log = logging.getLogger(__name__)

SILENT_AFTER_S = 4 * REPORT_EVERY_S  # an actor that has not reported for this long may be holding work
REWATCH_PAUSE_S = 0.2  # between watch() calls to an actor whose restart is under way
MAX_FRUITLESS_RESTARTS = 3  # deaths of an actor in a row before it served a batch, before it is given up
FORWARDED_ENV = ("DHGEN_TEST_FAULT",)  # the driver's test hook reaches the actors (their own processes)


@dataclass(eq=False)
class Actor:
    index: int  # the `worker` of its events
    node: NodeInfo
    gpu: bool
    handle: object
    watch: object = None  # its watch() stream (ObjectRefGenerator) while it is watched
    ready: bool = False  # the current process has loaded the model
    pid: int | None = None
    device: str = "?"
    dtype: str | None = None
    gpu_ids: tuple = ()  # the node's GPU(s) Ray gave it (its jobs encode with NVENC there)
    broken: dict | None = None  # the CUDA error its process reported before ending itself
    served: int = 0  # forward passes of the current process
    pending: int = 0  # requests it holds, as last reported
    progress_at: float = 0.0  # when `served` last moved (or work became pending)
    busy_at: float = 0.0  # when it last held work or was still loading: a job waiting on it is not judged before
    reported_at: float = 0.0  # when its watch stream last said anything
    rewatch_at: float = 0.0  # while unwatched (restarting): when to call watch() again
    last_event: float = 0.0  # when worker_progress was last emitted
    fruitless: int = 0  # deaths in a row before serving anything
    stalled: bool = False  # the driver killed it for making no progress
    death_noted: bool = False  # a death of it was reported since it was last ready
    failed: dict | None = None  # given up: why (its jobs end with this record)
    jobs: set = field(default_factory=set)  # jobs whose running attempt uses it

    @property
    def usable(self) -> bool:
        return self.failed is None

    def silent(self, now: float) -> bool:
        """Its reports stopped (a stopped or hung process): what it holds is unknown."""
        return now - self.reported_at > SILENT_AFTER_S

    def holds_work(self, now: float) -> bool:
        """It is loading, holds requests, or cannot tell: jobs waiting on it wait for it (it is judged, not they)."""
        return not self.ready or self.pending > 0 or self.silent(now)


@dataclass(eq=False)
class Node:
    info: NodeInfo
    capacity: int  # jobs at once
    actors: list[Actor] = field(default_factory=list)
    lost: bool = False

    @property
    def running(self) -> int:
        return sum(len(a.jobs) for a in self.actors)


class Pool:
    def __init__(self, ray, options: RenderOptions, run: RunOptions, emit: EventFn, on_oom, tables) -> None:
        """`on_oom(actor, record)`: an out-of-memory incident hit the jobs using `actor` (their records get it);
        `tables()`: the node table read since the last call, or None (`HeadWatch.take`)."""
        self.ray, self.options, self.run, self._emit, self._on_oom = ray, options, run, emit, on_oom
        self._tables = tables
        self._limits = Limits.of(run)
        self._actor_class = ray.remote(InferenceActor)
        self.nodes: dict[str, Node] = {}  # node id -> Node, for nodes that can run jobs
        self._ignored: set[str] = set()  # nodes seen that cannot (no CPU, or no GPU for --device cuda)
        self._watches: dict[int, tuple[object, Actor]] = {}  # id(stream) -> (stream, actor)
        self._next_index = 0
        self.last_loss: dict | None = None  # the record of the last node or actor given up

    # --- nodes ---------------------------------------------------------------------------------------------

    def refresh(self, now: float) -> list[Node]:
        """Watch again the actors whose restart is under way; look at the latest node table, if a new one was read,
        and start actors on new nodes. Returns the nodes found dead."""
        for actor in self.actors():
            if actor.usable and actor.watch is None and now >= actor.rewatch_at:
                self._watch(actor)
        table = self._tables()
        if table is None:
            return []
        died = []
        for info in table:
            node = self.nodes.get(info.node_id)
            if node is None and info.alive and info.node_id not in self._ignored:
                self._add_node(info)
            elif node is not None and not info.alive and not node.lost:
                died.append(node)
        return died

    def lose(self, node: Node, job_ids: list[str]) -> dict:
        """`node` died or stopped answering: its actors are given up; returns the NodeLost record."""
        node.lost = True
        record = node_lost(node.info, job_ids)
        for actor in node.actors:
            self._give_up(actor, record)
        self.last_loss = record
        self._emit(events.incident(record, action="its jobs are re-run on the remaining nodes", node=node.info.ip))
        return record

    def node_of(self, node_id: str) -> Node | None:
        return self.nodes.get(node_id)

    def _add_node(self, info: NodeInfo) -> None:
        on_gpu = self.options.model.device != "cpu" and get_family(self.options.model.name).uses_gpu(
            self.options.model.checkpoint
        )
        gpus = int(info.gpus) if on_gpu else 0  # a numpy model needs no GPU: one CPU actor per node
        capacity = min(self.run.jobs, int(info.cpus))
        if capacity < 1 or (on_gpu and self.options.model.device.startswith("cuda") and not gpus):
            log.info("node %s runs no jobs (%g CPUs, %g GPUs)", info.label, info.cpus, info.gpus)
            self._ignored.add(info.node_id)
            return
        node = self.nodes[info.node_id] = Node(info, capacity)
        for _ in range(gpus or 1):
            node.actors.append(self._start_actor(node, gpu=bool(gpus)))

    # --- actors --------------------------------------------------------------------------------------------

    def _start_actor(self, node: Node, gpu: bool) -> Actor:
        device = ("cuda" if self.options.model.device.startswith("cuda") else "auto") if gpu else "cpu"
        model = dataclasses.replace(self.options.model, device=device)
        threads = worker_threads(int(node.info.cpus), node.capacity, device, model)
        env = {k: os.environ[k] for k in FORWARDED_ENV if k in os.environ}
        handle = self._actor_class.options(
            num_cpus=0,
            num_gpus=1 if gpu else 0,
            max_restarts=-1,
            max_task_retries=0,
            scheduling_strategy=NodeAffinitySchedulingStrategy(node.info.node_id, soft=False),
            runtime_env={"env_vars": env} if env else None,
        ).remote(model, threads)
        actor = Actor(self._next_index, node.info, gpu, handle, progress_at=time.monotonic())
        self._next_index += 1
        self._watch(actor)
        return actor

    def _watch(self, actor: Actor) -> None:
        actor.watch = actor.handle.watch.options(num_returns="streaming").remote()
        self._watches[id(actor.watch)] = (actor.watch, actor)

    def streams(self) -> list:
        return [stream for stream, _ in self._watches.values()]

    def owns(self, stream) -> bool:
        return id(stream) in self._watches

    def on_ready(self, stream, now: float) -> None:
        """The next item of an actor's watch stream is there (or the stream failed)."""
        _, actor = self._watches[id(stream)]
        actor.reported_at = now
        try:
            item = self.ray.get(next(stream))
        except StopIteration:
            item, error = None, None
        except Exception as exc:  # noqa: BLE001 - a Ray error: the actor's process died (or is unreachable)
            item, error = None, exc
        if item is None:
            del self._watches[id(stream)]
            actor.watch = None
            if not actor.usable or self.nodes[actor.node.node_id].lost:
                return
            if isinstance(error, ActorDiedError):  # for good: Ray will not restart it
                self._give_up(actor, actor_died(actor.index, actor.node, actor.pid, error, "died for good"))
                self._emit(
                    events.incident(
                        self.last_loss, worker=actor.index, node=actor.node.ip, action=events.NO_MORE_INFERENCE
                    )
                )
            elif actor.ready or actor.stalled:
                self._actor_died(actor, error, now)
            else:  # its restart (or first start) is still under way: watch again in a moment
                actor.rewatch_at = now + REWATCH_PAUSE_S
        elif "pid" in item:
            self._actor_ready(actor, item, now)
        else:
            self._actor_report(actor, item, now)

    def _actor_ready(self, actor: Actor, item: dict, now: float) -> None:
        if item.get("fatal") is not None:
            self._give_up(actor, {**item["fatal"], "node": actor.node.ip, "node_id": actor.node.node_id})
            self._emit(
                events.incident(self.last_loss, worker=actor.index, node=actor.node.ip, action=events.NO_MORE_INFERENCE)
            )
            return
        if item.get("restarted") and not actor.death_noted:  # it died before the driver heard it was ready
            self._actor_died(actor, None, now)
            if not actor.usable:
                return
        actor.ready, actor.pid, actor.device, actor.served, actor.pending = True, item["pid"], item["device"], 0, 0
        actor.dtype, actor.gpu_ids, actor.broken = item.get("dtype"), tuple(item.get("gpu_ids", ())), None
        actor.progress_at = actor.busy_at = now
        actor.death_noted = False
        self._emit(
            events.worker_started(actor.index, actor.pid, actor.device, node=actor.node.ip, node_id=actor.node.node_id)
        )

    def _actor_report(self, actor: Actor, item: dict, now: float) -> None:
        if item["served"] != actor.served:
            actor.served, actor.progress_at, actor.fruitless = item["served"], now, 0
            if now - actor.last_event >= PROGRESS_EVERY_S:
                actor.last_event = now
                self._emit(events.worker_progress(actor.index, actor.pid, actor.served, node=actor.node.ip))
        if item["pending"] and not actor.pending:
            actor.progress_at = max(actor.progress_at, now)  # the stall clock starts when work is pending
        actor.pending = item["pending"]
        actor.broken = item.get("broken") or actor.broken
        if actor.pending:
            actor.busy_at = now
        for oom in item.get("ooms", []):
            self._out_of_memory(actor, oom)

    def _out_of_memory(self, actor: Actor, oom: dict) -> None:
        record = OutOfMemory(
            f"out of memory on {actor.device} (actor {actor.index}, node {actor.node.label}): {oom['message']}; "
            f"batch size halved to {oom['batch_size']}"
        ).to_record()
        self._emit(
            events.incident(
                record, job_ids=sorted(actor.jobs), worker=actor.index, node=actor.node.ip, batch_size=oom["batch_size"]
            )
        )
        self._on_oom(actor, {**record, "worker": actor.index, "batch_size": oom["batch_size"]})

    def _actor_died(self, actor: Actor, error: BaseException | None, now: float) -> None:
        """The process of the actor died (or was killed as stalled): Ray restarts it, unless it keeps dying."""
        what = f"made no progress for {self.run.stall_timeout:g}s and was killed" if actor.stalled else "died"
        if actor.broken:
            what = f"ended itself {broken_context_words(actor.broken)}"
        record = actor_died(actor.index, actor.node, actor.pid, error, what)
        if actor.broken:
            record["crash_tail"], actor.broken = actor.broken["crash_tail"], None
        if actor.stalled:
            record["type"], record["hint"] = Stalled.__name__, Stalled.default_hint
        actor.fruitless = actor.fruitless + 1 if actor.served == 0 else 1
        actor.ready, actor.stalled, actor.served, actor.pending = False, False, 0, 0
        actor.progress_at = actor.busy_at = now
        actor.death_noted = True
        if actor.fruitless > MAX_FRUITLESS_RESTARTS:
            record["message"] += (
                f"; it died {actor.fruitless} times in a row before serving a batch, so dhgen stopped restarting it"
            )
            self._give_up(actor, record)
            self._emit(events.incident(record, worker=actor.index, node=actor.node.ip, action=events.NO_MORE_INFERENCE))
            return
        self._emit(
            events.incident(
                record, worker=actor.index, node=actor.node.ip, action="Ray restarts it; its jobs replay their batches"
            )
        )
        actor.rewatch_at = now + REWATCH_PAUSE_S  # the new watch answers once the restarted process is ready

    def replayed_by_job(self, actor: Actor, replacement_pid: int | None, now: float) -> None:
        """A job found `actor`'s process dead and replayed its batches on the replacement. If the driver has heard
        neither of this death nor of the replacement yet (a short job can finish first), the death is noted now."""
        if actor.usable and not actor.death_noted and replacement_pid != actor.pid:
            self._actor_died(actor, None, now)

    def _give_up(self, actor: Actor, record: dict) -> None:
        actor.failed = record
        self.last_loss = record
        try:
            self.ray.kill(actor.handle, no_restart=True)
        except Exception as exc:  # noqa: BLE001 - gone already
            log.debug("killing actor %d: %s", actor.index, exc)

    def check_stalls(self, now: float, waited_on: set[int]) -> None:
        """Kill (Ray restarts it) an actor that holds work, or has not loaded its model, and has not served
        within the allowance. It holds work when it says so, or when jobs wait on it (`waited_on`) and it has
        gone silent (a job that was stopped while waiting would otherwise make a healthy actor look stalled)."""
        for node in self.nodes.values():
            for actor in node.actors:
                if not actor.usable or actor.stalled:
                    continue
                waiting = actor.pending > 0 or (actor.index in waited_on and actor.silent(now))
                if self._limits.worker_stalled(now, actor.progress_at, actor.ready, waiting):
                    actor.stalled = True
                    self.ray.kill(actor.handle, no_restart=False)

    # --- placement -----------------------------------------------------------------------------------------

    def place(self) -> Actor | None:
        """The actor the next job should use (on the node with the most room), or None when all are full."""
        candidates = [n for n in self.nodes.values() if not n.lost and n.running < n.capacity]
        for node in sorted(candidates, key=lambda n: (n.running / n.capacity, n.running)):
            usable = [a for a in node.actors if a.usable]
            if usable:
                return min(usable, key=lambda a: len(a.jobs))
        return None

    def job_threads(self, actor: Actor) -> int:
        node = self.nodes[actor.node.node_id]
        return job_threads(int(node.info.cpus), node.capacity)

    def usable(self) -> bool:
        """Whether any job can still be placed somewhere."""
        return any(a.usable for n in self.nodes.values() if not n.lost for a in n.actors)

    def actors(self) -> list[Actor]:
        return [a for n in self.nodes.values() for a in n.actors]

    def shutdown(self) -> None:
        """Kill every actor of the run for good (a run never leaves actors behind)."""
        for actor in self.actors():
            try:
                self.ray.kill(actor.handle, no_restart=True)
            except Exception as exc:  # noqa: BLE001 - already dead
                log.debug("killing actor %d: %s", actor.index, exc)
        self._watches.clear()
