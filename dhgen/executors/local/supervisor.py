"""The supervisor: runs jobs in job processes, the model in inference workers, and watches them all.

    jobs (waiting) ──► supervisor loop: wait(every child's sentinel + the inbox's wake-up pipe, tick)
                         │  schedules, routes batches, judges liveness and stalls, retries, emits events
        ┌────────────────┴─────────────────────────────┐
        job process × --jobs                           inference worker × --workers (one per GPU, or CPU)
        decode, crop, composite, encode                model forward over batches merged across jobs
          ("infer", ticket, crops) ──► queue ──► dispatch ──► ("batch", id, [crops...])
          ◄── ("patches", ticket, ...) ◄─────────────────── ("result", id, [patches...])
                         │
        records (result log) and events (progress display), through the runner

Jobs come from a feed (`dhgen.executors.feed`): the runner's is closed from the start (its list), the service's
stays open, so one supervisor, its workers with the model loaded and its idle job processes serve jobs as they
arrive; the feed's wake-up is one more thing `wait()` watches. A cancelled job's process is killed like a stalled
one, and its record ends `cancelled`.

Liveness comes from process sentinels, never from a receive that timed out. A child that died is named (exit
code, signal, the tail of its crash file, and the CUDA error of a worker whose CUDA context broke). A dead worker
is replaced and the batches it held are replayed, so jobs go on; a dead job process costs its job one attempt.
A worker that cannot load the model, or keeps dying before it serves, is given up (its GPU is lost, not the run)
while another serves; when none is left, the model has failed and every waiting batch fails with its error.
Stalls are judged from progress counters. Retries are decided by the error's type. Pipes of a dead child are
closed, never reused.
"""

from __future__ import annotations

import dataclasses
import logging
import multiprocessing as mp
import os
import shutil
import signal
import tempfile
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from multiprocessing.connection import wait
from pathlib import Path

from dhgen import events
from dhgen.encoders import family, on_gpu
from dhgen.errors import (
    Cancelled,
    JobProcessCrashed,
    OutOfMemory,
    Stalled,
    UsageError,
    WorkerCrashed,
)
from dhgen.events import EventFn
from dhgen.executors.feed import JobFeed
from dhgen.executors.local.channel import EOF_MESSAGE, Channel, Inbox
from dhgen.executors.local.children import (
    CHILD_NAME_PREFIX,
    NO_MAIN_GUARD,
    NO_MAIN_GUARD_HINT,
    crash_tail,
    describe_exit,
    died_rerunning_main,
)
from dhgen.executors.local.jobproc import job_main
from dhgen.executors.local.workerproc import worker_main
from dhgen.executors.shares import job_threads, worker_threads
from dhgen.executors.slots import JobSlot, retrying, take_from
from dhgen.executors.stopping import StopSignals
from dhgen.gpus import least_busy_gpu, visible_gpu_count
from dhgen.liveness import PROGRESS_EVERY_S, AttemptProgress, Limits
from dhgen.manifest import Job
from dhgen.models import get_family
from dhgen.models.serving import broken_context_words
from dhgen.options import RenderOptions, RunOptions, job_options
from dhgen.results import JobRecord, fill_outcome, note_served, utc_now
from dhgen.retry import RetryPolicy

log = logging.getLogger(__name__)

TICK_S = 0.25  # how often timers are checked when nothing happens
WORKER_DISPATCH_DEPTH = 2  # batches queued on a worker at once, so it never waits for the next
MAX_FRUITLESS_RESTARTS = 3  # workers that die before serving anything, in a row, before giving up
STOP_GRACE_S = 3.0  # after SIGTERM to children, before SIGKILL


@dataclass
class _Item:
    """One job's batch of crops waiting for, or held by, a worker."""

    slot: JobSlot
    attempt: int
    ticket: int
    batch: object

    def __len__(self) -> int:
        return len(self.batch)


@dataclass
class _JobProcess:
    """A job process: it renders one job at a time and, after a job that ended cleanly, takes the next."""

    key: tuple
    proc: mp.process.BaseProcess
    channel: Channel
    crash_path: Path
    slot: JobSlot | None = None  # the job it is rendering; None while idle


@dataclass
class _Attempt:
    process: _JobProcess
    progress: AttemptProgress
    outstanding: set = field(default_factory=set)
    ended_as: dict | None = None  # set when the supervisor killed it (stall, timeout)
    gpu: int | None = None  # the GPU its NVENC session is on

    @property
    def proc(self) -> mp.process.BaseProcess:
        return self.process.proc

    @property
    def channel(self) -> Channel:
        return self.process.channel


@dataclass
class _Worker:
    index: int
    device: str
    proc: mp.process.BaseProcess
    channel: Channel
    crash_path: Path
    started: float
    dtype: str | None = None  # what the loaded model computes in (from its "ready")
    ready: bool = False
    last_reply: float = 0.0
    in_flight: dict = field(default_factory=dict)  # dispatch id -> [_Item]
    served: int = 0
    stalled: bool = False
    last_event: float = 0.0  # when worker_progress was last emitted
    broken: dict | None = None  # the CUDA error that broke its context (from its "broken", before it exits)


class Supervisor:
    """Executor that runs each job in a supervised process (see module docstring)."""

    def __init__(self, options: RenderOptions, run: RunOptions) -> None:
        self.options, self.run_options = options, run
        self._ctx = mp.get_context("spawn")
        self._retry = RetryPolicy(run.retries, run.backoff_s)
        self._limits = Limits.of(run)
        self._cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1

    # --- the loop ---------------------------------------------------------------------------------------------

    def run(self, jobs: list[Job], fingerprints: dict, emit: EventFn) -> Iterator[JobRecord]:
        if not jobs:
            return
        yield from self.serve(JobFeed.of(jobs, fingerprints), emit)

    def serve(self, feed: JobFeed, emit: EventFn) -> Iterator[JobRecord]:
        """Render the jobs of `feed` as they arrive, until it is closed and they have finished, or it is stopped."""
        self._emit, self._feed = emit, feed
        self._slots: dict[str, JobSlot] = {}  # unfinished jobs, in the order they arrived
        self._done: deque[JobRecord] = deque()
        self._take_feed()
        jobs = self.run_options.jobs
        self._concurrency = jobs if not feed.closed else max(1, min(jobs, len(self._slots)))
        self._queue: deque[_Item] = deque()
        self._workers: dict[int, _Worker] = {}
        self._job_procs: dict[tuple, _JobProcess] = {}
        self._spawned = 0
        self._inbox = Inbox()
        self._tmp = Path(tempfile.mkdtemp(prefix="dhgen-run-"))
        self._dispatch_seq, self._fatal = 0, None
        self._fruitless: dict[int, int] = {}  # worker index -> its deaths in a row before serving anything
        self._lost: dict[int, dict] = {}  # worker index -> why it was given up (not replaced)
        self._lost_told: set[int] = set()  # given-up workers whose incident was emitted
        self._devices: dict[int, str] = {}  # worker index -> its device
        self._nvenc_gpus = visible_gpu_count() if family(self.options.encode.encoder) == "nvenc" else 0
        self._stop = StopSignals(self._kill_children_now)
        self._stop.__enter__()
        feed.wake_with(self._inbox.wake)
        try:
            for index, device in enumerate(self._worker_devices()):
                self._start_worker(index, device)
            yield from self._loop()
        finally:
            feed.wake_with(None)
            self._stop_everything()
            self._stop.__exit__()
            self._inbox.close()
            shutil.rmtree(self._tmp, ignore_errors=True)

    def _loop(self) -> Iterator[JobRecord]:
        while not self._feed.stopped and (self._slots or not self._feed.closed):
            self._stop.check()
            self._take_feed()
            self._warm_job_processes()
            self._start_due_jobs()
            self._dispatch()
            wait([self._inbox.wake_r, *self._sentinels()], timeout=TICK_S)
            for key, message in self._inbox.drain():
                self._on_message(key, message)
            self._reap_dead()
            self._check_timers()
            while self._done:
                yield self._done.popleft()

    def _sentinels(self) -> list:
        return [p.sentinel for p in self._children()]

    def _take_feed(self) -> None:
        _, cancels = take_from(self._feed, self._slots)
        for job_id in cancels:
            self._cancel(job_id)

    def _cancel(self, job_id: str) -> None:
        slot = self._slots.get(job_id)
        if slot is None:
            return  # finished already
        if slot.running is None:
            slot.cancel(time.monotonic())
            self._job_done(slot)
        elif slot.running.ended_as is None:
            pid = slot.running.proc.pid
            self._kill_attempt(
                slot, Cancelled(f"job {job_id} was cancelled while running; its process (pid {pid}) was stopped")
            )

    # --- starting children -------------------------------------------------------------------------------------

    def _worker_devices(self) -> list[str]:
        count = self.run_options.workers
        device = self.options.model.device
        if not get_family(self.options.model.name).uses_gpu(self.options.model.checkpoint):
            return ["cpu"] * (count or 1)  # it needs no GPU: one CPU worker, however many GPUs there are
        if device == "auto" or device == "cuda":
            gpus = visible_gpu_count()
            if gpus:  # "auto:N": GPU N if this torch build can use it, else the CPU (decided in the worker)
                prefix = "auto:" if device == "auto" else "cuda:"
                return [f"{prefix}{i % gpus}" for i in range(count or gpus)]
            device = "cpu" if device == "auto" else device
        return [device] * (count or 1)

    def _threads(self, device: str | None = None) -> int:
        """This machine's cores shared between the job processes (device None) and the workers (`shares`)."""
        jobs = self._concurrency
        if device is None:
            return job_threads(self._cores, jobs)
        return worker_threads(self._cores, jobs, device, self.options.model)

    def _spawn(self, kind: str, index: int, target, args: tuple, threads: int):
        """Start a child; its messages arrive in the inbox under a key no other child ever had."""
        self._spawned += 1
        key = (kind, index, self._spawned)
        crash_path = self._tmp / f"{kind}{index}-{self._spawned}.crash"
        parent_end, child_end = self._ctx.Pipe(duplex=True)
        name = CHILD_NAME_PREFIX + "-".join(map(str, key))
        proc = self._ctx.Process(
            target=target, args=(child_end, *args, os.getpid(), crash_path, threads), name=name, daemon=True
        )
        proc.start()
        child_end.close()
        return proc, Channel(key, parent_end, self._inbox), crash_path

    def _start_worker(self, index: int, device: str) -> None:
        self._devices[index] = device
        options = dataclasses.replace(self.options.model, device=device)
        proc, channel, crash_path = self._spawn("worker", index, worker_main, (options,), self._threads(device))
        now = time.monotonic()
        self._workers[index] = _Worker(index, device, proc, channel, crash_path, started=now, last_reply=now)

    def _warm_job_processes(self) -> None:
        """An open feed keeps a job process per slot started and idle, so a job that arrives starts at once."""
        if self._feed.closed or self._feed.holding:
            return
        for _ in range(self._concurrency - len(self._job_procs)):
            self._spawn_job_process()

    def _start_due_jobs(self) -> None:
        if self._feed.holding:
            return
        running = sum(1 for s in self._slots.values() if s.running)
        now = time.monotonic()
        for slot in self._slots.values():
            if running >= self.run_options.jobs:
                return
            if slot.finished or slot.running or slot.not_before > now:
                continue
            self._start_attempt(slot)
            running += 1

    def _start_attempt(self, slot: JobSlot) -> None:
        slot.begin_attempt(time.monotonic())
        process = self._idle_job_process() or self._spawn_job_process()
        process.slot = slot
        options = job_options(self.options, slot.job, slot.record.errors)
        gpu = least_busy_gpu(self._nvenc_gpus, (s.running.gpu for s in self._slots.values() if s.running))
        options = dataclasses.replace(options, encode=on_gpu(options.encode, gpu))  # spread NVENC sessions
        process.channel.send(("job", slot.job, options))
        now = time.monotonic()
        slot.running = _Attempt(process, AttemptProgress(started=now, last_activity=now), gpu=options.encode.gpu)
        self._emit(events.job_started(slot.job.id, slot.attempt_no, process.proc.pid))

    def _idle_job_process(self) -> _JobProcess | None:
        return next((p for p in self._job_procs.values() if p.slot is None and p.proc.exitcode is None), None)

    def _spawn_job_process(self) -> _JobProcess:
        index = len(self._job_procs)
        proc, channel, crash_path = self._spawn("job", index, job_main, (), self._threads())
        process = _JobProcess(channel.key, proc, channel, crash_path)
        self._job_procs[process.key] = process
        return process

    # --- messages ----------------------------------------------------------------------------------------------

    def _on_message(self, key, message) -> None:
        if message == EOF_MESSAGE:
            return  # the sentinel tells us the rest
        if key[0] == "worker":
            worker = self._workers.get(key[1])
            if worker is not None and worker.channel.key == key:
                self._on_worker_message(worker, message)
            return
        process = self._job_procs.get(key)
        slot = process.slot if process is not None else None
        if slot is not None and slot.running is not None and slot.running.process is process:
            self._on_job_message(slot, message)

    def _on_job_message(self, slot: JobSlot, message) -> None:
        kind = message[0]
        attempt = slot.running
        attempt.progress.last_activity = time.monotonic()
        if kind == "infer":
            _, ticket, batch = message
            if self._fatal is not None:
                attempt.channel.send(("infer_failed", ticket, self._fatal))
                return
            attempt.outstanding.add(ticket)
            self._queue.append(_Item(slot, slot.attempt_no, ticket, batch))
        elif kind == "progress":
            _, counter, value = message
            self._emit_progress(slot, force=attempt.progress.count(counter, value, time.monotonic()))
        elif kind == "done":
            fill_outcome(slot.record, message[1])
            self._end_attempt(slot)
            self._finish(slot)
        elif kind == "failed":
            self._end_attempt(slot)
            self._attempt_failed(slot, message[1])

    def _on_worker_message(self, worker: _Worker, message) -> None:
        kind = message[0]
        worker.last_reply = time.monotonic()
        if kind == "ready":
            worker.ready = True
            worker.device, worker.dtype = message[1]["device"], message[1]["dtype"]  # what "auto:N" turned out to be
            self._emit(events.worker_started(worker.index, message[1]["pid"], message[1]["device"]))
            self._settle_lost_workers()
        elif kind == "result":
            _, dispatch_id, results = message
            worker.served += 1
            if worker.last_reply - worker.last_event >= PROGRESS_EVERY_S:
                worker.last_event = worker.last_reply
                self._emit(events.worker_progress(worker.index, worker.proc.pid, worker.served))
            for item, answer in zip(worker.in_flight.pop(dispatch_id, []), results, strict=True):
                note_served(item.slot.record, worker.device, worker.dtype)
                self._deliver(item, ("patches", item.ticket, answer))
        elif kind == "error":
            _, dispatch_id, record = message
            for item in worker.in_flight.pop(dispatch_id, []):
                self._deliver(item, ("infer_failed", item.ticket, record))
        elif kind == "oom":
            incident = OutOfMemory(
                f"out of memory on {worker.device}: {message[1]['message']}; batch size halved "
                f"to {message[1]['batch_size']}"
            ).to_record()
            self._incident(incident, self._slots_of(worker), worker=worker.index, batch_size=message[1]["batch_size"])
        elif kind == "broken":
            worker.broken = message[1]
        elif kind == "fatal":
            self._lost[worker.index] = message[1]
            self._settle_lost_workers()

    def _deliver(self, item: _Item, message) -> None:
        slot = item.slot
        if slot.running is None or slot.attempt_no != item.attempt:
            return  # the attempt that asked is gone
        slot.running.outstanding.discard(item.ticket)
        slot.running.progress.last_activity = time.monotonic()
        slot.running.channel.send(message)

    def _emit_progress(self, slot: JobSlot, force: bool) -> None:
        now = time.monotonic()
        progress = slot.running.progress
        if progress.event_due(now, force):
            self._emit(events.job_progress(slot.job.id, slot.attempt_no, progress.counters, progress.fps(now)))

    # --- batches -----------------------------------------------------------------------------------------------

    def _dispatch(self) -> None:
        for worker in self._workers.values():
            while worker.ready and self._queue and len(worker.in_flight) < WORKER_DISPATCH_DEPTH:
                items = self._take_batch(self.options.model.batch_for(worker.device))
                if not items:
                    break
                self._dispatch_seq += 1
                if not worker.in_flight:
                    worker.last_reply = time.monotonic()  # the stall clock starts when work is pending
                worker.in_flight[self._dispatch_seq] = items
                worker.channel.send(("batch", self._dispatch_seq, [item.batch for item in items]))

    def _take_batch(self, limit: int) -> list[_Item]:
        items, size = [], 0
        while self._queue:
            item = self._queue[0]
            slot = item.slot
            if slot.running is None or slot.attempt_no != item.attempt:
                self._queue.popleft()  # its attempt is gone
                continue
            if items and size + len(item) > limit:
                break
            items.append(self._queue.popleft())
            size += len(item)
        return items

    def _slots_of(self, worker: _Worker) -> list[JobSlot]:
        """The jobs whose batches `worker` holds, by id."""
        slots = {id(item.slot): item.slot for items in worker.in_flight.values() for item in items}
        return sorted(slots.values(), key=lambda slot: slot.job.id)

    # --- deaths, stalls, timeouts ------------------------------------------------------------------------------

    def _reap_dead(self) -> None:
        for worker in list(self._workers.values()):
            if worker.proc.exitcode is not None:
                _refuse_rerun_main(worker)
                self._worker_died(worker)
        for process in list(self._job_procs.values()):
            if process.proc.exitcode is not None:
                _refuse_rerun_main(process)
                self._job_process_died(process)

    def _worker_died(self, worker: _Worker) -> None:
        worker.channel.wait_eof(1.0)
        for key, message in self._inbox.drain():  # what it said before dying still counts
            self._on_message(key, message)
        worker.channel.close()
        del self._workers[worker.index]
        if self._fatal is not None or worker.index in self._lost:
            return
        incident = self._death_record(
            WorkerCrashed, "inference worker", worker.proc, worker.crash_path, stalled=worker.stalled, why=worker.broken
        )
        jobs = self._slots_of(worker)
        replay = [item for items in worker.in_flight.values() for item in items]
        self._queue.extendleft(reversed(replay))
        fruitless = self._fruitless.get(worker.index, 0) + 1 if worker.served == 0 else 1
        self._fruitless[worker.index] = fruitless
        if fruitless > MAX_FRUITLESS_RESTARTS:
            self._incident(incident, jobs, worker=worker.index, action=f"{len(replay)} batches replayed")
            self._lost[worker.index] = {
                **incident,
                "message": incident["message"] + f"; it died {fruitless} times in a row before serving a batch, "
                "so dhgen stopped restarting it",
            }
            self._settle_lost_workers()
            return
        self._incident(incident, jobs, worker=worker.index, action=f"worker replaced, {len(replay)} batches replayed")
        self._start_worker(worker.index, worker.device)

    def _settle_lost_workers(self) -> None:
        """Workers given up (`_lost`) cost only their GPU while another worker serves: each is told once, as an
        incident, when one does. When every worker is given up, the model has failed (the first one's error)."""
        if self._fatal is not None or not self._lost:
            return
        if any(w.ready and w.index not in self._lost for w in self._workers.values()):
            for index, record in self._lost.items():
                if index not in self._lost_told:
                    self._lost_told.add(index)
                    others = sum(1 for w in self._workers.values() if w.index not in self._lost)
                    action = f"worker given up; {others} other worker(s) serve the run"
                    self._emit(events.incident(record, worker=index, device=self._devices[index], action=action))
        elif all(w.index in self._lost for w in self._workers.values()):
            self._model_failed(next(iter(self._lost.values())))

    def _job_process_died(self, process: _JobProcess) -> None:
        process.channel.wait_eof(1.0)
        for key, message in self._inbox.drain():  # a final "done"/"failed" may be waiting
            self._on_message(key, message)
        del self._job_procs[process.key]
        process.channel.close()
        slot = process.slot
        if slot is None or slot.running is None or slot.running.process is not process:
            if process.proc.exitcode:
                log.warning("idle job process %d %s", process.proc.pid, describe_exit(process.proc.exitcode)[0])
            return  # it held no job
        attempt, slot.running = slot.running, None
        record = attempt.ended_as or self._death_record(
            JobProcessCrashed, "job process", process.proc, process.crash_path
        )
        _remove_partial(slot.job.output, process.proc.pid)
        self._attempt_failed(slot, record)

    def _death_record(self, cls, what: str, proc, crash_path: Path, stalled: bool = False, why=None) -> dict:
        """The record of a child that died; `why`: the error record it sent before it ended itself, if any."""
        words, signame = describe_exit(proc.exitcode)
        if stalled:
            cls, words = Stalled, f"made no progress for {self.run_options.stall_timeout:g}s and was killed"
        if why is not None:
            words += " " + broken_context_words(why)
        record = cls(f"{what} (pid {proc.pid}) {words}").to_record()
        record.update({"pid": proc.pid, "exitcode": proc.exitcode, "signal": signame, "time": utc_now()})
        tail = crash_tail(crash_path)
        if tail:
            record["crash_tail"] = tail
        return record

    def _check_timers(self) -> None:
        now = time.monotonic()
        for worker in self._workers.values():
            stalled = self._limits.worker_stalled(now, worker.last_reply, worker.ready, bool(worker.in_flight))
            if stalled and not worker.stalled:
                worker.stalled = True
                worker.proc.kill()
        for slot in self._slots.values():
            attempt = slot.running
            if attempt is None or attempt.ended_as is not None:
                continue
            where = f"pid {attempt.proc.pid}"
            verdict = self._limits.attempt_verdict(slot.job.id, attempt.progress, now, bool(attempt.outstanding), where)
            if verdict is not None:
                self._kill_attempt(slot, verdict)

    def _kill_attempt(self, slot: JobSlot, error) -> None:
        attempt = slot.running
        attempt.ended_as = {**error.to_record(), "pid": attempt.proc.pid, "time": utc_now()}
        attempt.proc.kill()

    # --- endings -----------------------------------------------------------------------------------------------

    def _end_attempt(self, slot: JobSlot) -> None:
        """The job process reported the end of its job: it is idle again, ready for the next."""
        attempt, slot.running = slot.running, None
        attempt.process.slot = None

    def _attempt_failed(self, slot: JobSlot, error: dict) -> None:
        delay = slot.attempt_failed(error, self._retry, self._stop.signum is not None, time.monotonic())
        if delay is None:
            self._job_done(slot)
        else:
            self._emit(events.incident(error, job_id=slot.job.id, action=retrying(delay, slot.attempt_no)))

    def _finish(self, slot: JobSlot) -> None:
        slot.finish(time.monotonic())
        self._job_done(slot)

    def _job_done(self, slot: JobSlot) -> None:
        """The job's record is final: it is yielded at the end of this turn, and the job is forgotten."""
        self._done.append(slot.record)
        if self._slots.get(slot.job.id) is slot:
            del self._slots[slot.job.id]

    def _incident(self, record: dict, slots: list[JobSlot], **details) -> None:
        for slot in slots:
            slot.record.errors.append({**record, **details})
        self._emit(events.incident(record, job_ids=[slot.job.id for slot in slots], **details))

    def _model_failed(self, record: dict) -> None:
        """The model cannot run (bad checkpoint, workers that keep dying): every waiting batch fails with it."""
        self._fatal = record
        self._emit(events.incident(record, action=events.NO_MORE_INFERENCE))
        pending = list(self._queue) + [
            i for w in self._workers.values() for items in w.in_flight.values() for i in items
        ]
        self._queue.clear()
        for item in pending:
            self._deliver(item, ("infer_failed", item.ticket, record))

    # --- stopping ----------------------------------------------------------------------------------------------

    def _stop_everything(self) -> None:
        """Stop children: idle ones politely, busy ones with SIGTERM, stragglers with SIGKILL; remove partials."""
        busy = [p for p in self._job_procs.values() if p.slot is not None]
        for child in [*self._workers.values(), *self._job_procs.values()]:
            if child in busy:
                _signal_quietly(child.proc, signal.SIGTERM)  # it unwinds and deletes its temp file
            else:
                child.channel.send(("stop",))
        deadline = time.monotonic() + STOP_GRACE_S
        for proc in self._children():
            proc.join(max(0.0, deadline - time.monotonic()))
        self._kill_children_now()
        for process in busy:
            process.proc.join(1.0)
            _remove_partial(process.slot.job.output, process.proc.pid)
            process.slot.running = None
        for child in [*self._workers.values(), *self._job_procs.values()]:
            child.channel.close()
        self._workers.clear()
        self._job_procs.clear()

    def _children(self) -> list[mp.process.BaseProcess]:
        return [w.proc for w in self._workers.values()] + [p.proc for p in self._job_procs.values()]

    def _kill_children_now(self) -> None:
        for proc in self._children():
            if proc.exitcode is None:
                _signal_quietly(proc, signal.SIGKILL)


def _refuse_rerun_main(child) -> None:
    """A child that died re-running the caller's script (no `__main__` guard): every child would, so the run
    ends here, once, saying why (not as crashes retried job by job)."""
    if died_rerunning_main(child.proc.exitcode, child.crash_path):
        raise UsageError(NO_MAIN_GUARD, hint=NO_MAIN_GUARD_HINT)


def _signal_quietly(proc, signum) -> None:
    try:
        if proc.pid and proc.exitcode is None:
            os.kill(proc.pid, signum)
    except ProcessLookupError:
        pass


def _remove_partial(output: Path, pid: int | None) -> None:
    """Remove what a killed job process left at its temp path (never the output itself)."""
    from dhgen.writer import temp_path_for  # here: the supervisor process has no other use for PyAV or OpenCV

    if pid is not None:
        try:
            temp_path_for(Path(output), pid).unlink(missing_ok=True)
        except OSError:  # e.g. the output's folder is a file: the job never got to write anything
            pass
