"""The Ray driver loop: jobs become remote tasks on the nodes of the cluster, watched like local job processes.
It runs in the driver process (`driverproc`), which the dhgen process supervises (`supervisor.RayExecutor`).

Each attempt of a job is one streaming task (`jobtask.run_job`) pinned to the node of the actor it uses. The loop
waits on every attempt's stream and every actor's watch stream at once (`ray.wait`, TICK_S), and from what
arrives it emits events, judges stalls and timeouts (`dhgen.liveness`), retries by type (`dhgen.retry`) and
fills records (`dhgen.results`); Ray's own retries are off. Without a shared filesystem it ships each input file
to the object store once (`Inputs`) and writes each finished MP4 it receives (temp file + fsync + rename).
The node table comes from the head watch (`cluster.HeadWatch`), so the loop never waits on the head. A stop asked
for by the dhgen process (its SIGINT/SIGTERM), or any end: every task of the run is cancelled (force), every actor
killed, partial files and the nodes' temp folders removed. Jobs come from a feed (`dhgen.executors.feed`), looked
at every turn: the runner's is closed from the start, the service's stays open while the actors keep the model
loaded; a cancelled job's task is cancelled like a stalled one, and its record ends `cancelled`.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections import Counter, deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from dhgen import events
from dhgen.errors import Cancelled, DhgenError, JobProcessCrashed, MissingInputError, UsageError, reason
from dhgen.events import EventFn
from dhgen.executors.feed import JobFeed
from dhgen.executors.raycluster.cluster import SEES_GPUS, Connection, HeadWatch
from dhgen.executors.raycluster.failures import job_failure, node_lost
from dhgen.executors.raycluster.jobtask import TaskSpec, remove_work_folder, run_job
from dhgen.executors.raycluster.pool import Actor, Node, Pool
from dhgen.executors.slots import JobSlot, retrying, take_from
from dhgen.liveness import AttemptProgress, Limits
from dhgen.manifest import Job
from dhgen.options import RenderOptions, RunOptions, job_options
from dhgen.pipeline import make_output_folder
from dhgen.results import JobRecord, fill_outcome, note_served, utc_now
from dhgen.retry import RetryPolicy
from dhgen.writer import temp_path_for, write_file_atomically

log = logging.getLogger(__name__)

TICK_S = 0.25  # how often timers are checked when nothing arrives
CANCEL_GRACE_S = 10.0  # after a forced cancel, how long an attempt's stream may take to end before it is dropped
STOP_GRACE_S = 3.0  # at the end of a run: for cancelled tasks to end, then for the nodes' clean-up
TASK_OPTIONS = {"num_returns": "streaming", "max_retries": 0, "num_cpus": 1}  # Ray never re-runs a job itself


@dataclass(eq=False)
class _Attempt:
    stream: object  # the task's ObjectRefGenerator
    actor: Actor
    progress: AttemptProgress
    pid: int | None = None  # the worker process running it, once it started
    waiting: bool = False  # it has batches out at its actor
    ended_as: dict | None = None  # set when the driver cancelled it (stall, timeout, its actor given up)
    cancelled_at: float = 0.0


class RayDriver:
    """The loop of the driver process (see the package docstring)."""

    def __init__(self, options: RenderOptions, run: RunOptions, on_connected, on_head) -> None:
        """`on_connected(gcs_address)`: connected to the cluster; `on_head(silence)`: after each read of the node
        table, None when the head answered, else what went wrong (`HeadWatch`)."""
        self.options, self.run_options = options, run
        self._on_connected, self._on_head = on_connected, on_head
        self._retry = RetryPolicy(run.retries, run.backoff_s)
        self._limits = Limits.of(run)

    def serve(self, feed: JobFeed, emit: EventFn, stop) -> Iterator[JobRecord]:
        """Run the jobs of `feed` as they arrive, until it is closed and they have finished, or it is stopped.
        `stop`: `.check()` raises Interrupted once a stop was asked for, `.signum` says whether one was."""
        with Connection(self.run_options.ray_address) as connection:
            self._on_connected(connection.gcs_address)
            with HeadWatch(connection.ray, self._on_head) as watch:
                self._prepare(connection.ray, feed, emit, watch)
                self._stop = stop
                try:
                    self._start_pool()
                    yield from self._loop()
                finally:
                    self._stop_everything()

    # --- the loop ------------------------------------------------------------------------------------------

    def _prepare(self, ray, feed: JobFeed, emit: EventFn, watch: HeadWatch) -> None:
        self.ray, self._emit, self._feed = ray, emit, feed
        self._run_id = uuid.uuid4().hex[:12]
        self._slots: dict[str, JobSlot] = {}  # unfinished jobs, in the order they arrived
        self._by_stream: dict[int, JobSlot] = {}
        self._unclean: set[str] = set()  # nodes where an attempt ended without cleaning up after itself
        self._done: deque[JobRecord] = deque()
        self._inputs = None if self.run_options.ray_shared_fs else Inputs(ray)
        self._task = ray.remote(run_job)
        self._pool = Pool(ray, self.options, self.run_options, emit, self._out_of_memory, watch.take)

    def _start_pool(self) -> None:
        self._pool.refresh(time.monotonic())
        if not self._pool.nodes:
            needs = "a GPU and a CPU" if self.options.model.device.startswith("cuda") else "a CPU"
            raise UsageError(
                f"no node of the Ray cluster can run jobs (each needs {needs})",
                hint="check `dhgen doctor --ray-address ...`; `ray start --num-cpus N` on the nodes",
            )

    def _loop(self) -> Iterator[JobRecord]:
        self._take_feed()
        while not self._feed.stopped and (self._slots or not self._feed.closed):
            self._stop.check()
            self._take_feed()
            for node in self._pool.refresh(time.monotonic()):
                self._node_lost(node)
            self._finish_if_nowhere_to_run()
            self._start_due_jobs()
            for stream in self._wait():
                self._on_stream(stream)
            now = time.monotonic()
            self._pool.check_stalls(now, self._waited_on())
            self._check_attempts(now)
            while self._done:
                yield self._done.popleft()

    def _take_feed(self) -> None:
        new, cancels = take_from(self._feed, self._slots)
        for slot in new:
            if self._inputs is not None:
                self._inputs.add(slot.job)
        for job_id in cancels:
            slot = self._slots.get(job_id)
            if slot is None:
                continue  # finished already
            if slot.running is None:
                slot.cancel(time.monotonic())
                self._job_done(slot)
            elif slot.running.ended_as is None:
                record = Cancelled(f"job {job_id} was cancelled while running; its task was cancelled").to_record()
                self._cancel(slot, {**record, "node": slot.running.actor.node.ip, "time": utc_now()})

    def _wait(self) -> list:
        streams = self._pool.streams() + [s.running.stream for s in self._slots.values() if s.running]
        if not streams:
            self._feed.wait(TICK_S)
            return []
        ready, _ = self.ray.wait(streams, num_returns=1, timeout=TICK_S)
        if not ready:
            return []
        ready, _ = self.ray.wait(streams, num_returns=len(streams), timeout=0)
        return ready

    def _on_stream(self, stream) -> None:
        now = time.monotonic()
        if self._pool.owns(stream):
            self._pool.on_ready(stream, now)
            return
        slot = self._by_stream.get(id(stream))
        if slot is None:
            return
        try:
            item = self.ray.get(next(stream))
        except StopIteration:
            self._stream_ended(slot, None)
            return
        except Exception as exc:  # noqa: BLE001 - a Ray error: mapped to a typed record by type
            self._stream_ended(slot, exc)
            return
        slot.running.progress.last_activity = now
        if slot.running.ended_as is None:
            getattr(self, "_on_" + item[0])(slot, *item[1:])

    # --- what an attempt reports -------------------------------------------------------------------------

    def _on_started(self, slot: JobSlot, info: dict) -> None:
        attempt = slot.running
        attempt.pid = info["pid"]
        node = attempt.actor.node
        self._emit(events.job_started(slot.job.id, slot.attempt_no, attempt.pid, node=node.ip, node_id=node.node_id))

    def _on_progress(self, slot: JobSlot, counters: dict, waiting: bool) -> None:
        attempt, now = slot.running, time.monotonic()
        new_stages = [attempt.progress.count(k, v, now) for k, v in counters.items()]
        attempt.waiting = waiting
        if attempt.progress.event_due(now, any(new_stages)):
            progress = attempt.progress
            self._emit(
                events.job_progress(
                    slot.job.id, slot.attempt_no, progress.counters, progress.fps(now), node=attempt.actor.node.ip
                )
            )

    def _on_incident(self, slot: JobSlot, record: dict) -> None:
        actor = slot.running.actor
        record = {**record, "worker": actor.index, "node": actor.node.ip, "node_id": actor.node.node_id}
        slot.record.errors.append(record)
        action = f"{record.get('replayed', 0)} batch(es) replayed on the restarted actor"
        self._emit(events.incident(record, job_id=slot.job.id, node=actor.node.ip, action=action))
        self._pool.replayed_by_job(actor, record.get("replacement_pid"), time.monotonic())

    def _on_done(self, slot: JobSlot, outcome, data: bytes | None) -> None:
        if data is not None:
            try:
                make_output_folder(slot.job.output)
                write_file_atomically(slot.job.output, data)
            except DhgenError as exc:
                self._attempt_failed(slot, {**exc.to_record(), "time": utc_now()})
                return
        fill_outcome(slot.record, outcome)
        note_served(slot.record, slot.running.actor.device, slot.running.actor.dtype)
        self._end_attempt(slot)
        self._finish(slot)

    def _on_failed(self, slot: JobSlot, record: dict) -> None:
        self._attempt_failed(slot, record)

    def _stream_ended(self, slot: JobSlot, exc: BaseException | None) -> None:
        """The task ended without its last item: Ray says why (`exc`), or the driver cancelled it."""
        attempt = slot.running
        node = attempt.actor.node
        self._unclean.add(node.node_id)
        if attempt.ended_as is not None:
            record = attempt.ended_as
        elif exc is None:
            record = JobProcessCrashed(f"the task of job {slot.job.id} on node {node.label} ended without a result")
            record = {**record.to_record(), "node": node.ip, "node_id": node.node_id, "time": utc_now()}
        else:
            record = job_failure(exc, slot.job.id, node, attempt.pid)
        self._attempt_failed(slot, record)
        lost = self._pool.node_of(node.node_id)
        if record.get("type") == "NodeLost" and lost is not None and not lost.lost:
            self._node_lost(lost)

    # --- starting attempts ---------------------------------------------------------------------------------

    def _start_due_jobs(self) -> None:
        if self._feed.holding:
            return
        now = time.monotonic()
        for slot in list(self._slots.values()):  # a slot may finish on the way
            if slot.finished or slot.running or slot.not_before > now:
                continue
            actor = self._pool.place()
            if actor is None:
                return
            self._start_attempt(slot, actor, now)

    def _start_attempt(self, slot: JobSlot, actor: Actor, now: float) -> None:
        slot.begin_attempt(now)
        try:
            audio, avatar = self._inputs.refs(slot.job) if self._inputs else (None, None)
            if self._inputs is not None:
                make_output_folder(slot.job.output)  # the driver writes it: a folder it cannot make fails now
        except DhgenError as exc:
            self._attempt_failed(slot, {**exc.to_record(), "time": utc_now()})
            return
        spec = TaskSpec(
            job=slot.job,
            options=job_options(self.options, slot.job, slot.record.errors),  # each attempt: after failures
            run_id=self._run_id,
            attempt=slot.attempt_no,
            threads=self._pool.job_threads(actor),
            shared_fs=self.run_options.ray_shared_fs,
            actor_patience_s=self._limits.allowance(False),
            gpu_ids=actor.gpu_ids,
        )
        strategy = NodeAffinitySchedulingStrategy(actor.node.node_id, soft=False)
        gpu_node = {"runtime_env": SEES_GPUS} if actor.gpu else {}  # its NVENC runs on the actor's GPU
        stream = self._task.options(**TASK_OPTIONS, **gpu_node, scheduling_strategy=strategy).remote(
            spec, audio, avatar, actor.handle
        )
        slot.running = _Attempt(stream, actor, AttemptProgress(started=now, last_activity=now))
        actor.jobs.add(slot.job.id)
        self._by_stream[id(stream)] = slot

    # --- stalls, timeouts, lost nodes and actors -----------------------------------------------------------

    def _check_attempts(self, now: float) -> None:
        for slot in list(self._slots.values()):  # a slot may finish on the way
            attempt = slot.running
            if attempt is None:
                continue
            if attempt.ended_as is not None:
                if now - attempt.cancelled_at > CANCEL_GRACE_S:  # Ray never confirmed the cancel: go on without
                    self._attempt_failed(slot, attempt.ended_as)
                continue
            if attempt.actor.failed is not None:
                self._cancel(slot, {**attempt.actor.failed, "time": utc_now()})
                continue
            where = f"pid {attempt.pid or '?'} on node {attempt.actor.node.label}"
            waiting = self._waiting(attempt, now)
            verdict = self._limits.attempt_verdict(slot.job.id, attempt.progress, now, waiting, where)
            if verdict is not None:
                record = {**verdict.to_record(), "pid": attempt.pid, "node": attempt.actor.node.ip, "time": utc_now()}
                self._cancel(slot, record)

    def _cancel(self, slot: JobSlot, record: dict) -> None:
        """End an attempt by force; it fails with `record` once Ray confirms (its stream ends)."""
        attempt = slot.running
        attempt.ended_as, attempt.cancelled_at = record, time.monotonic()
        self._cancel_quietly(attempt.stream)

    def _node_lost(self, node: Node) -> None:
        """Every attempt on `node` fails with NodeLost now (the node cannot confirm anything any more)."""
        on_node = [s for s in self._slots.values() if s.running and s.running.actor.node.node_id == node.info.node_id]
        self._pool.lose(node, [s.job.id for s in on_node])
        for slot in on_node:
            self._cancel_quietly(slot.running.stream)
            self._attempt_failed(slot, node_lost(node.info, [slot.job.id]))

    def _finish_if_nowhere_to_run(self) -> None:
        """No node or actor is left that could run a job: the jobs still waiting fail with the last loss."""
        if self._pool.usable():
            return
        for slot in list(self._slots.values()):  # a slot may finish on the way
            if not slot.finished and slot.running is None:
                slot.record.error = self._pool.last_loss
                if not slot.record.errors or slot.record.errors[-1] is not slot.record.error:
                    slot.record.errors.append(slot.record.error)
                self._finish(slot)

    @staticmethod
    def _waiting(attempt: _Attempt, now: float) -> bool:
        """Whether the attempt waits on its actor. It says so itself, but a stopped job cannot take it back: once
        its actor holds no work, its answers are delivered, and the job's stall clock runs from then."""
        if not attempt.waiting:
            return False
        actor = attempt.actor
        if actor.holds_work(now):
            return True
        attempt.progress.last_activity = max(attempt.progress.last_activity, actor.busy_at)
        return False

    def _waited_on(self) -> set[int]:
        return {s.running.actor.index for s in self._slots.values() if s.running and s.running.waiting}

    def _out_of_memory(self, actor: Actor, record: dict) -> None:
        for job_id in actor.jobs:
            if job_id in self._slots:
                self._slots[job_id].record.errors.append({**record, "time": utc_now()})

    # --- endings -------------------------------------------------------------------------------------------

    def _end_attempt(self, slot: JobSlot) -> None:
        attempt, slot.running = slot.running, None
        if attempt is None:
            return
        self._by_stream.pop(id(attempt.stream), None)
        attempt.actor.jobs.discard(slot.job.id)
        if self.run_options.ray_shared_fs and attempt.pid is not None:
            _remove_partial(slot.job.output, attempt.pid)

    def _attempt_failed(self, slot: JobSlot, error: dict) -> None:
        self._end_attempt(slot)
        delay = slot.attempt_failed(error, self._retry, self._stop.signum is not None, time.monotonic())
        if delay is None:
            self._job_done(slot)
        else:
            action = retrying(delay, slot.attempt_no)
            self._emit(events.incident(error, job_id=slot.job.id, action=action, **_where(error)))

    def _finish(self, slot: JobSlot) -> None:
        slot.finish(time.monotonic())
        self._job_done(slot)

    def _job_done(self, slot: JobSlot) -> None:
        """The job's record is final: it is yielded at the end of this turn, and the job is forgotten."""
        if self._inputs is not None:
            self._inputs.release(slot.job)
        self._done.append(slot.record)
        if self._slots.get(slot.job.id) is slot:
            del self._slots[slot.job.id]

    # --- stopping ------------------------------------------------------------------------------------------

    def _stop_everything(self) -> None:
        """Cancel every task of the run, kill every actor, remove partial outputs and the nodes' temp folders."""
        running = [s for s in self._slots.values() if s.running]
        for slot in running:
            self._cancel_quietly(slot.running.stream)
            self._unclean.add(slot.running.actor.node.node_id)
        self._pool.shutdown()
        deadline = time.monotonic() + STOP_GRACE_S
        self._drain([s.running.stream for s in running], deadline)
        for slot in running:
            self._end_attempt(slot)
        if not self.run_options.ray_shared_fs:
            self._clean_nodes(deadline + STOP_GRACE_S)
        if self._inputs is not None:
            self._inputs.clear()

    def _drain(self, streams: list, deadline: float) -> None:
        """Read cancelled streams until each has ended, or the deadline."""
        open_streams = list(streams)
        while open_streams and time.monotonic() < deadline:
            ready, _ = self.ray.wait(open_streams, num_returns=1, timeout=max(0.0, deadline - time.monotonic()))
            for stream in ready:
                try:
                    self.ray.get(next(stream))
                except Exception:  # noqa: BLE001 - StopIteration or the cancellation: ended either way
                    open_streams.remove(stream)

    def _clean_nodes(self, deadline: float) -> None:
        """Remove the run's temp folder on each node where an attempt was killed (the others cleaned up)."""
        cleaner = self.ray.remote(remove_work_folder)
        refs = [
            cleaner.options(
                num_cpus=0,
                max_retries=0,
                scheduling_strategy=NodeAffinitySchedulingStrategy(n.info.node_id, soft=False),
            ).remote(self._run_id)
            for n in self._pool.nodes.values()
            if n.info.node_id in self._unclean and not n.lost
        ]
        if refs:
            self.ray.wait(refs, num_returns=len(refs), timeout=max(0.1, deadline - time.monotonic()))

    def _cancel_quietly(self, stream) -> None:
        try:
            self.ray.cancel(stream, force=True)
        except Exception as exc:  # noqa: BLE001 - finished already
            log.debug("cancel: %s", exc)


class Inputs:
    """Input files on their way to the nodes: each read and put into the object store once (a batch on one avatar
    sends it once), and dropped when no unfinished job needs it any more."""

    def __init__(self, ray) -> None:
        self._ray = ray
        self._needed: Counter[str] = Counter()
        self._refs: dict[str, object] = {}

    def add(self, job: Job) -> None:
        self._needed.update(str(p) for p in (job.audio, job.avatar))

    def refs(self, job: Job) -> tuple:
        """Object refs of the job's audio and avatar bytes; MissingInputError when one cannot be read here."""
        return self._ref(job.audio, "audio"), self._ref(job.avatar, "avatar")

    def release(self, job: Job) -> None:
        for path in (str(job.audio), str(job.avatar)):
            self._needed[path] -= 1
            if self._needed[path] <= 0:
                self._refs.pop(path, None)

    def clear(self) -> None:
        self._refs.clear()

    def _ref(self, path: Path, role: str):
        key = str(path)
        if key not in self._refs:
            try:
                data = Path(path).read_bytes()
            except OSError as exc:
                raise MissingInputError(
                    f"cannot read the {role} file to send it to the cluster: {reason(exc)}", path=path
                ) from exc
            self._refs[key] = self._ray.put(data)
        return self._refs[key]


def _where(record: dict) -> dict:
    return {"node": record["node"]} if record.get("node") else {}


def _remove_partial(output: Path, pid: int) -> None:
    """Remove what a killed job's writer left at its temp path on the shared filesystem (never the output)."""
    try:
        temp_path_for(Path(output).absolute(), pid).unlink(missing_ok=True)
    except OSError:
        pass
