"""A job on a Ray node: the remote task that renders one attempt of one job there, streaming to the driver.

    driver ──run_job(spec, audio bytes, avatar bytes, actor)──► this task, a Ray worker process on the actor's node
        ◄── ("started", {pid, node_id})
        ◄── ("progress", counters, waiting)          coalesced: at most one item per FLUSH_S, at once on a new stage
        ◄── ("incident", record)                     the actor died; its batches were replayed on the restarted one
        ◄── ("done", JobOutcome, mp4 bytes | None)   or ("failed", record): the last item

`pipeline.render_job` runs in a thread; this generator relays what it reports. Without a shared filesystem the
inputs arrive as bytes (Ray fetched them from the driver through the object store) and are written to a folder
of this node's temp space, the output is rendered there and its bytes are the last item; with `shared_fs` the
job's own paths are read and written directly. Only crops go to the node's inference actor and only patches come
back (`ActorInference`); full frames never leave this process. The job never imports torch.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import queue
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import ray
import ray.exceptions as rex

from dhgen.encoders import on_gpu, resolve_here
from dhgen.errors import WorkerCrashed, error_from_record, failure_record
from dhgen.executors.shares import limit_threads
from dhgen.gpus import cuda_index
from dhgen.manifest import Job
from dhgen.models import CropBatch, PatchBatch
from dhgen.models.serving import broken_context_words
from dhgen.options import RenderOptions, default_cache_dir
from dhgen.results import utc_now
from dhgen.writer import output_error

FLUSH_S = 0.25  # progress is sent at most this often (and at once when a stage starts)
REPLAY_PAUSE_S = 0.25  # between attempts to reach an actor that Ray is restarting
WORK_ROOT = "dhgen-ray"  # under the node's temp folder: <run id>/<job id>-<attempt>/
STALE_AFTER_S = 24 * 3600  # a run's folder untouched this long was left by a node that died: removed


@dataclass(frozen=True)
class TaskSpec:
    job: Job  # with the driver's paths
    options: RenderOptions  # the job's options (`job_options`)
    run_id: str
    attempt: int
    threads: int  # this job's share of the node's cores
    shared_fs: bool
    actor_patience_s: float  # how long to wait for a restarted actor before the attempt fails
    gpu_ids: tuple = ()  # the node's GPU(s) of the job's inference actor (Ray's ids): NVENC encodes there


def run_job(spec: TaskSpec, audio: bytes | None, avatar: bytes | None, actor) -> Iterator[tuple]:
    """The task (the driver wraps it with `ray.remote(num_returns="streaming", max_retries=0)`)."""
    yield ("started", {"pid": os.getpid(), "node_id": ray.get_runtime_context().get_node_id()})
    limit_threads(spec.threads)
    workdir = None if spec.shared_fs else work_folder(spec.run_id) / f"{spec.job.id}-{spec.attempt}"
    if workdir is not None:
        _sweep_stale_runs(workdir.parent.parent)
    try:
        local = _Local(spec.job) if workdir is None else _localise(spec.job, workdir, audio, avatar)
        messages: queue.SimpleQueue = queue.SimpleQueue()
        inference = ActorInference(actor, messages.put, spec)
        args = (local.job, _node_options(spec), inference, messages)
        threading.Thread(target=_render, args=args, name="render", daemon=True).start()
        for item in relay(messages):
            yield local.for_driver(item)
    finally:
        if workdir is not None:
            shutil.rmtree(workdir, ignore_errors=True)
            with contextlib.suppress(OSError):  # the run's folder, when no other job of the run is on this node
                workdir.parent.rmdir()


def work_folder(run_id: str) -> Path:
    """This node's folder for a run's inputs and outputs (removed at the end of the run)."""
    return Path(tempfile.gettempdir()) / WORK_ROOT / run_id


def remove_work_folder(run_id: str) -> None:
    """Run on each node at the end of a run: what attempts killed by force left behind."""
    shutil.rmtree(work_folder(run_id), ignore_errors=True)


def relay(messages: queue.SimpleQueue) -> Iterator[tuple]:
    """The render thread's messages as stream items: progress coalesced, everything else at once, in order."""
    counters: dict = {}
    waiting, dirty, urgent, last = False, False, False, 0.0
    while True:
        try:
            message = messages.get(timeout=FLUSH_S)
        except queue.Empty:
            message = ("tick",)
        kind = message[0]
        if kind == "progress":
            urgent = urgent or message[1] not in counters
            counters[message[1]] = message[2]
            dirty = True
        elif kind == "waiting":
            dirty = dirty or waiting != message[1]
            waiting = message[1]
        elif kind != "tick":
            if dirty:
                yield ("progress", dict(counters), waiting)
                dirty = False
            yield message
            if kind in ("done", "failed"):
                return
            continue
        if dirty and (urgent or time.monotonic() - last >= FLUSH_S):
            yield ("progress", dict(counters), waiting)
            dirty, urgent, last = False, False, time.monotonic()


class ActorInference:
    """`Inference` through the node's actor: submit sends a batch, collect waits for its patches.

    When the actor's process dies Ray restarts it; every batch still out is then sent again to the restarted
    actor (replayed, in order), and the job reports WorkerCrashed once per replacement (an answer from another
    pid). An actor whose CUDA context broke answers {"broken": record} until it ends itself: the same replay, and
    the incident names the CUDA error. If the actor does not come back within `actor_patience_s`, or the driver
    gave up on it, the attempt fails with WorkerCrashed (retryable: the driver re-runs the job where an actor
    works).
    """

    def __init__(self, actor, report, spec: TaskSpec) -> None:
        self._actor, self._report, self._spec = actor, report, spec
        self._out: dict[int, tuple[CropBatch, ray.ObjectRef]] = {}  # ticket -> (batch, its call), in order
        self._next = 0
        self._pid: int | None = None  # the actor process that answered last
        self._replayed = 0  # batches sent again since the last answer
        self._broken: dict | None = None  # why the actor process that answered last is ending, if it said

    def submit(self, batch: CropBatch) -> int:
        self._next += 1
        self._out[self._next] = (batch, self._actor.infer.remote(batch))
        return self._next

    def collect(self, ticket: int) -> PatchBatch:
        self._report(("waiting", True))
        deadline = None
        while True:
            try:
                answer = ray.get(self._out[ticket][1])
            except (rex.ActorDiedError, rex.ActorUnschedulableError) as exc:  # for good: given up on, or no node
                raise WorkerCrashed(
                    f"the inference actor of job {self._spec.job.id} is gone: {_first_line(exc)}"
                ) from None
            except rex.RayActorError:  # its process died (Ray restarts it) or it is unreachable for now
                deadline = deadline or time.monotonic() + self._spec.actor_patience_s
                self._replay(deadline)
                continue
            if "broken" not in answer:
                break
            self._pid, self._broken = answer["pid"], answer["broken"]  # it is ending; Ray restarts it
            deadline = deadline or time.monotonic() + self._spec.actor_patience_s
            self._replay(deadline)
        del self._out[ticket]
        self._report(("waiting", False))
        self._note(answer["pid"])
        if "error" in answer:
            raise error_from_record(answer["error"])
        return answer["patches"]

    def _replay(self, deadline: float) -> None:
        if time.monotonic() > deadline:
            raise WorkerCrashed(
                f"the inference actor of job {self._spec.job.id} did not come back within "
                f"{self._spec.actor_patience_s:g}s"
            )
        time.sleep(REPLAY_PAUSE_S)
        for ticket, (batch, _) in list(self._out.items()):
            self._out[ticket] = (batch, self._actor.infer.remote(batch))
        self._replayed = len(self._out)

    def _note(self, pid: int) -> None:
        if self._replayed and pid != self._pid:
            why = f" {broken_context_words(self._broken)}" if self._broken else ""
            error = WorkerCrashed(
                f"the inference actor (pid {self._pid or '?'}) serving job {self._spec.job.id} died{why}; "
                f"its replacement (pid {pid}) got the job's {self._replayed} outstanding batch(es) again"
            )
            record = {**error.to_record(), "pid": self._pid, "replacement_pid": pid, "replayed": self._replayed}
            if self._broken:
                record["crash_tail"] = self._broken["crash_tail"]
            self._report(("incident", {**record, "time": utc_now()}))
        self._pid, self._replayed, self._broken = pid, 0, None


def _render(job: Job, options: RenderOptions, inference: ActorInference, messages: queue.SimpleQueue) -> None:
    from dhgen.pipeline import render_job

    try:
        outcome = render_job(job, options, inference, progress=lambda c, v: messages.put(("progress", c, v)))
    except BaseException as exc:  # noqa: BLE001 - every failure is reported, typed; the relay waits for it
        messages.put(("failed", failure_record(exc)))
        return
    messages.put(("done", outcome))


def _node_options(spec: TaskSpec) -> RenderOptions:
    """The job's options on this node: its share of threads, this node's face cache, and the encoder `auto` takes
    here (NVENC where it opens on this node, on its actor's GPU)."""
    options = spec.options
    gpu = cuda_index(spec.gpu_ids, os.environ.get("CUDA_VISIBLE_DEVICES"))
    encode = on_gpu(resolve_here(options.encode), gpu)
    if encode.threads == 0:
        encode = dataclasses.replace(encode, threads=spec.threads)
    face = dataclasses.replace(options.face, cache_dir=default_cache_dir())
    return dataclasses.replace(options, encode=encode, face=face)


@dataclass(frozen=True)
class _Local:
    """The job as this node renders it, and the original path of each local one (names the user's files)."""

    job: Job
    originals: dict = dataclasses.field(default_factory=dict)  # local path -> the driver's path

    def for_driver(self, item: tuple) -> tuple:
        """A stream item as the driver should see it: the user's paths in error records; with the outcome, the
        output's bytes when it was rendered into this node's temp space."""
        kind = item[0]
        if kind in ("failed", "incident"):
            return (kind, self._rename_paths(item[1]))
        if kind == "done":
            return ("done", item[1], self._output_bytes() if self.originals else None)
        return item

    def _rename_paths(self, record: dict) -> dict:
        record = dict(record)
        for local, original in self.originals.items():
            for key in ("message", "path"):
                if isinstance(record.get(key), str):
                    record[key] = record[key].replace(local, original)
        return record

    def _output_bytes(self) -> bytes:
        try:
            return self.job.output.read_bytes()
        except OSError as exc:
            raise output_error(exc, self.job.output, "read the rendered output on the node") from exc


def _localise(job: Job, workdir: Path, audio: bytes, avatar: bytes) -> _Local:
    """The job with its inputs written under `workdir` (file names kept) and its output rendered there too."""
    local = Job(
        job.id,
        workdir / "audio" / job.audio.name,
        workdir / "avatar" / job.avatar.name,
        workdir / "out" / job.output.name,
    )
    try:
        _make_folder(workdir)
        for path, data in ((local.audio, audio), (local.avatar, avatar)):
            path.parent.mkdir(exist_ok=True)
            path.write_bytes(data)
    except OSError as exc:
        raise output_error(exc, workdir, "write the job's inputs into the node's temp folder") from exc
    originals = {
        str(local.audio): str(job.audio),
        str(local.avatar): str(job.avatar),
        str(local.output): str(job.output),
    }
    return _Local(local, originals)


def _sweep_stale_runs(root: Path) -> None:
    """Remove run folders nobody touched for STALE_AFTER_S: what a node that died mid-run (so the driver could not
    clean it) left behind."""
    try:
        folders = list(root.iterdir())
    except OSError:
        return
    for folder in folders:
        with contextlib.suppress(OSError):
            if time.time() - folder.stat().st_mtime > STALE_AFTER_S:
                shutil.rmtree(folder, ignore_errors=True)


def _make_folder(workdir: Path) -> None:
    """Create `workdir`; the run's folder above it may vanish in between (a job that ended removes it when
    empty), so try again then."""
    for _ in range(3):
        try:
            workdir.mkdir(parents=True, exist_ok=True)
            return
        except FileNotFoundError:
            continue
    workdir.mkdir(parents=True, exist_ok=True)


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__
