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

Liveness comes from process sentinels, never from a receive that timed out. A child that died is named (exit
code, signal, the tail of its crash file). A dead worker is replaced and the batches it held are replayed, so
jobs go on; a dead job process costs its job one attempt. Stalls are judged from progress counters. Retries
are decided by the error's type. Pipes of a dead child are closed, never reused.
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
from dhgen.errors import Interrupted, JobProcessCrashed, JobTimeout, OutOfMemory, Stalled, WorkerCrashed
from dhgen.events import EventFn
from dhgen.executors.local.channel import EOF_MESSAGE, Channel, Inbox
from dhgen.executors.local.children import crash_tail, describe_exit
from dhgen.executors.local.jobproc import job_main
from dhgen.executors.local.workerproc import worker_main
from dhgen.manifest import Job
from dhgen.models import get_spec
from dhgen.options import RenderOptions, RunOptions, job_options
from dhgen.results import JobRecord, fill_outcome, new_record, utc_now
from dhgen.retry import RetryPolicy

log = logging.getLogger(__name__)

TICK_S = 0.25  # how often timers are checked when nothing happens
PROGRESS_EVERY_S = 1.0  # job_progress events per job at most this often
WORKER_DISPATCH_DEPTH = 2  # batches queued on a worker at once, so it never waits for the next
MAX_FRUITLESS_RESTARTS = 3  # workers that die before serving anything, in a row, before giving up
STOP_GRACE_S = 3.0  # after SIGTERM to children, before SIGKILL


@dataclass
class _Item:
    """One job's batch of crops waiting for, or held by, a worker."""

    job_id: str
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
    slot: _Slot | None = None  # the job it is rendering; None while idle


@dataclass
class _Attempt:
    process: _JobProcess
    started: float
    last_activity: float
    rendering: bool = False  # frames have started to flow (before that the startup allowance applies)
    outstanding: set = field(default_factory=set)
    last_event: float = 0.0
    ended_as: dict | None = None  # set when the supervisor killed it (stall, timeout)

    @property
    def proc(self) -> mp.process.BaseProcess:
        return self.process.proc

    @property
    def channel(self) -> Channel:
        return self.process.channel


@dataclass
class _Slot:
    job: Job
    record: JobRecord
    attempt_no: int = 0
    running: _Attempt | None = None
    not_before: float = 0.0
    finished: bool = False
    counters: dict = field(default_factory=dict)
    t0: float = 0.0


@dataclass
class _Worker:
    index: int
    device: str
    proc: mp.process.BaseProcess
    channel: Channel
    crash_path: Path
    started: float
    ready: bool = False
    last_reply: float = 0.0
    in_flight: dict = field(default_factory=dict)  # dispatch id -> [_Item]
    served: int = 0
    stalled: bool = False
    last_event: float = 0.0  # when worker_progress was last emitted


class Supervisor:
    """Executor that runs each job in a supervised process (see module docstring)."""

    def __init__(self, options: RenderOptions, run: RunOptions) -> None:
        self.options, self.run_options = options, run
        self._ctx = mp.get_context("spawn")
        self._retry = RetryPolicy(run.retries, run.backoff_s)
        self._cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1

    # --- the loop ---------------------------------------------------------------------------------------------

    def run(self, jobs: list[Job], fingerprints: dict, emit: EventFn) -> Iterator[JobRecord]:
        if not jobs:
            return
        self._emit = emit
        self._slots = {job.id: _Slot(job, new_record(job, fingerprints[job.id])) for job in jobs}
        self._queue: deque[_Item] = deque()
        self._workers: dict[int, _Worker] = {}
        self._job_procs: dict[tuple, _JobProcess] = {}
        self._spawned = 0
        self._done: deque[JobRecord] = deque()
        self._inbox = Inbox()
        self._tmp = Path(tempfile.mkdtemp(prefix="dhgen-run-"))
        self._dispatch_seq, self._fruitless, self._fatal = 0, 0, None
        self._signal = None
        previous = self._install_signal_handlers()
        try:
            for index, device in enumerate(self._worker_devices()):
                self._start_worker(index, device)
            yield from self._loop()
        finally:
            self._stop_everything()
            self._restore_signal_handlers(previous)
            self._inbox.close()
            shutil.rmtree(self._tmp, ignore_errors=True)

    def _loop(self) -> Iterator[JobRecord]:
        while not all(slot.finished for slot in self._slots.values()):
            if self._signal is not None:
                raise Interrupted(self._signal)
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

    # --- starting children -------------------------------------------------------------------------------------

    def _worker_devices(self) -> list[str]:
        count = self.run_options.workers
        device = self.options.model.device
        if get_spec(self.options.model.name).backend == "numpy":
            return ["cpu"] * (count or 1)  # it needs no GPU: one CPU worker, however many GPUs there are
        if device == "auto" or device == "cuda":
            gpus = visible_gpu_count()
            if gpus:  # "auto:N": GPU N if this torch build can use it, else the CPU (decided in the worker)
                prefix = "auto:" if device == "auto" else "cuda:"
                return [f"{prefix}{i % gpus}" for i in range(count or gpus)]
            device = "cpu" if device == "auto" else device
        return [device] * (count or 1)

    def _threads(self, device: str | None = None) -> int:
        """A share of the cores per process, so N processes with 'all cores' defaults do not oversubscribe.

        Job processes (device None) split the cores, at least 2 threads each: an x264 writer with one thread
        leaves a core idle while it waits (4 jobs x 10 s, --jobs 2 on 2 cores: 8.4 s wall with 1 thread per job,
        7.9 s with 2, 9.1 s with 3). A GPU worker only feeds its GPU; a CPU worker gets half the cores, or all of
        them for a model that is slower than the encoders (wav2lip), or one for a numpy model (mouthwarp: ~0.3 ms
        a crop on one core, 3,000 crops/s, more than 16 cores of x264 encode).
        """
        jobs = max(1, min(self.run_options.jobs, len(self._slots)))
        if device is None:
            return max(2, self._cores // jobs)
        if get_spec(self.options.model.name).backend == "numpy":
            return 1
        if device.startswith(("cuda", "auto")):  # "auto:N" only when a GPU is visible
            return max(1, self._cores // (jobs + 1))
        return self._cores if get_spec(self.options.model.name).cpu_bound else max(1, self._cores // 2)

    def _spawn(self, kind: str, index: int, target, args: tuple, threads: int):
        """Start a child; its messages arrive in the inbox under a key no other child ever had."""
        self._spawned += 1
        key = (kind, index, self._spawned)
        crash_path = self._tmp / f"{kind}{index}-{self._spawned}.crash"
        parent_end, child_end = self._ctx.Pipe(duplex=True)
        proc = self._ctx.Process(
            target=target, args=(child_end, *args, os.getpid(), crash_path, threads), name=str(key), daemon=True
        )
        proc.start()
        child_end.close()
        return proc, Channel(key, parent_end, self._inbox), crash_path

    def _start_worker(self, index: int, device: str) -> None:
        options = dataclasses.replace(self.options.model, device=device)
        proc, channel, crash_path = self._spawn("worker", index, worker_main, (options,), self._threads(device))
        now = time.monotonic()
        self._workers[index] = _Worker(index, device, proc, channel, crash_path, started=now, last_reply=now)

    def _start_due_jobs(self) -> None:
        running = sum(1 for s in self._slots.values() if s.running)
        now = time.monotonic()
        for slot in self._slots.values():
            if running >= self.run_options.jobs:
                return
            if slot.finished or slot.running or slot.not_before > now:
                continue
            self._start_attempt(slot)
            running += 1

    def _start_attempt(self, slot: _Slot) -> None:
        slot.attempt_no += 1
        slot.record.attempts = slot.attempt_no
        slot.counters = {}
        if slot.attempt_no == 1:
            slot.t0 = time.monotonic()
            slot.record.started_at = utc_now()
        process = self._idle_job_process() or self._spawn_job_process()
        process.slot = slot
        process.channel.send(("job", slot.job, job_options(self.options, slot.job)))
        now = time.monotonic()
        slot.running = _Attempt(process, started=now, last_activity=now)
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

    def _on_job_message(self, slot: _Slot, message) -> None:
        kind = message[0]
        attempt = slot.running
        attempt.last_activity = time.monotonic()
        if kind == "infer":
            _, ticket, batch = message
            if self._fatal is not None:
                attempt.channel.send(("infer_failed", ticket, self._fatal))
                return
            attempt.outstanding.add(ticket)
            self._queue.append(_Item(slot.job.id, slot.attempt_no, ticket, batch))
        elif kind == "progress":
            _, counter, value = message
            new_stage = counter not in slot.counters
            slot.counters[counter] = value
            attempt.rendering = attempt.rendering or counter == "decoded"
            self._emit_progress(slot, force=new_stage)
        elif kind == "done":
            fill_outcome(slot.record, message[1], job_options(self.options, slot.job))
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
            worker.device = message[1]["device"]  # what "auto:N" turned out to be
            self._emit(events.worker_started(worker.index, message[1]["pid"], message[1]["device"]))
        elif kind == "result":
            _, dispatch_id, results = message
            worker.served += 1
            self._fruitless = 0
            if worker.last_reply - worker.last_event >= PROGRESS_EVERY_S:
                worker.last_event = worker.last_reply
                self._emit(events.worker_progress(worker.index, worker.proc.pid, worker.served))
            for item, patches in zip(worker.in_flight.pop(dispatch_id, []), results, strict=True):
                self._deliver(item, ("patches", item.ticket, patches))
        elif kind == "error":
            _, dispatch_id, record = message
            for item in worker.in_flight.pop(dispatch_id, []):
                self._deliver(item, ("infer_failed", item.ticket, record))
        elif kind == "oom":
            incident = OutOfMemory(
                f"out of memory on {worker.device}: {message[1]['message']}; batch size halved "
                f"to {message[1]['batch_size']}"
            ).to_record()
            self._incident(incident, self._jobs_of(worker), worker=worker.index, batch_size=message[1]["batch_size"])
        elif kind == "fatal":
            self._model_failed(message[1])

    def _deliver(self, item: _Item, message) -> None:
        slot = self._slots[item.job_id]
        if slot.running is None or slot.attempt_no != item.attempt:
            return  # the attempt that asked is gone
        slot.running.outstanding.discard(item.ticket)
        slot.running.last_activity = time.monotonic()
        slot.running.channel.send(message)

    def _emit_progress(self, slot: _Slot, force: bool) -> None:
        """A job_progress event when a stage starts or ends, else at most every PROGRESS_EVERY_S."""
        now = time.monotonic()
        attempt = slot.running
        done = slot.counters.get("encoded") == slot.counters.get("total")
        if not (force or done) and now - attempt.last_event < PROGRESS_EVERY_S:
            return
        attempt.last_event = now
        elapsed = max(1e-6, now - attempt.started)
        fps = slot.counters.get("encoded", 0) / elapsed
        self._emit(events.job_progress(slot.job.id, slot.attempt_no, slot.counters, fps))

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
            slot = self._slots[item.job_id]
            if slot.running is None or slot.attempt_no != item.attempt:
                self._queue.popleft()  # its attempt is gone
                continue
            if items and size + len(item) > limit:
                break
            items.append(self._queue.popleft())
            size += len(item)
        return items

    def _jobs_of(self, worker: _Worker) -> list[str]:
        return sorted({item.job_id for items in worker.in_flight.values() for item in items})

    # --- deaths, stalls, timeouts ------------------------------------------------------------------------------

    def _reap_dead(self) -> None:
        for worker in list(self._workers.values()):
            if worker.proc.exitcode is not None:
                self._worker_died(worker)
        for process in list(self._job_procs.values()):
            if process.proc.exitcode is not None:
                self._job_process_died(process)

    def _worker_died(self, worker: _Worker) -> None:
        worker.channel.wait_eof(1.0)
        for key, message in self._inbox.drain():  # what it said before dying still counts
            self._on_message(key, message)
        worker.channel.close()
        del self._workers[worker.index]
        if self._fatal is not None:
            return
        incident = self._death_record(
            WorkerCrashed, "inference worker", worker.proc, worker.crash_path, stalled=worker.stalled
        )
        jobs = self._jobs_of(worker)
        replay = [item for items in worker.in_flight.values() for item in items]
        self._queue.extendleft(reversed(replay))
        self._fruitless = self._fruitless + 1 if worker.served == 0 else 1
        if self._fruitless > MAX_FRUITLESS_RESTARTS:
            self._model_failed(
                {
                    **incident,
                    "message": incident["message"] + f"; it died {self._fruitless} times "
                    "in a row before serving a batch, so dhgen stopped restarting it",
                }
            )
            return
        self._incident(incident, jobs, worker=worker.index, action=f"worker replaced, {len(replay)} batches replayed")
        self._start_worker(worker.index, worker.device)

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

    def _death_record(self, cls, what: str, proc, crash_path: Path, stalled: bool = False) -> dict:
        words, signame = describe_exit(proc.exitcode)
        if stalled:
            cls, words = Stalled, f"made no progress for {self.run_options.stall_timeout:g}s and was killed"
        record = cls(f"{what} (pid {proc.pid}) {words}").to_record()
        record.update({"pid": proc.pid, "exitcode": proc.exitcode, "signal": signame, "time": utc_now()})
        tail = crash_tail(crash_path)
        if tail:
            record["crash_tail"] = tail
        return record

    def _check_timers(self) -> None:
        now = time.monotonic()
        run = self.run_options
        for worker in self._workers.values():
            allowance = run.stall_timeout if worker.ready else max(run.stall_timeout, run.startup_timeout)
            waiting = worker.in_flight or not worker.ready
            if waiting and not worker.stalled and now - worker.last_reply > allowance:
                worker.stalled = True
                worker.proc.kill()
        for slot in self._slots.values():
            attempt = slot.running
            if attempt is None or attempt.ended_as is not None:
                continue
            if run.job_timeout and now - attempt.started > run.job_timeout:
                self._kill_attempt(slot, JobTimeout(f"job {slot.job.id} took longer than {run.job_timeout:g}s"))
                continue
            allowance = run.stall_timeout if attempt.rendering else max(run.stall_timeout, run.startup_timeout)
            if not attempt.outstanding and now - attempt.last_activity > allowance:
                stage = _stalled_stage(slot.counters)
                self._kill_attempt(
                    slot,
                    Stalled(
                        f"job {slot.job.id}: {stage} made no progress for "
                        f"{run.stall_timeout:g}s (pid {attempt.proc.pid}); killed"
                    ),
                )

    def _kill_attempt(self, slot: _Slot, error) -> None:
        attempt = slot.running
        attempt.ended_as = {**error.to_record(), "pid": attempt.proc.pid, "time": utc_now()}
        attempt.proc.kill()

    # --- endings -----------------------------------------------------------------------------------------------

    def _end_attempt(self, slot: _Slot) -> None:
        """The job process reported the end of its job: it is idle again, ready for the next."""
        attempt, slot.running = slot.running, None
        attempt.process.slot = None

    def _attempt_failed(self, slot: _Slot, error: dict) -> None:
        slot.record.errors.append(error)
        if self._signal is None and self._retry.should_retry(error, slot.attempt_no, slot.record.errors):
            delay = self._retry.delay(slot.attempt_no)
            slot.not_before = time.monotonic() + delay
            action = f"retrying in {delay:.1f}s (attempt {slot.attempt_no + 1})"
            self._emit(events.incident(error, job_id=slot.job.id, action=action))
            return
        slot.record.error = error
        self._finish(slot)

    def _finish(self, slot: _Slot) -> None:
        slot.finished = True
        slot.record.finished_at = utc_now()
        slot.record.elapsed_s = round(time.monotonic() - slot.t0, 3)
        self._done.append(slot.record)

    def _incident(self, record: dict, job_ids: list[str], **details) -> None:
        for job_id in job_ids:
            self._slots[job_id].record.errors.append({**record, **details})
        self._emit(events.incident(record, job_ids=job_ids, **details))

    def _model_failed(self, record: dict) -> None:
        """The model cannot run (bad checkpoint, workers that keep dying): every waiting batch fails with it."""
        self._fatal = record
        self._emit(events.incident(record, action="no more inference"))
        pending = list(self._queue) + [
            i for w in self._workers.values() for items in w.in_flight.values() for i in items
        ]
        self._queue.clear()
        for item in pending:
            self._deliver(item, ("infer_failed", item.ticket, record))

    # --- stopping ----------------------------------------------------------------------------------------------

    def _install_signal_handlers(self):
        if mp.current_process().name != "MainProcess" or not _in_main_thread():
            return None
        previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}

        def on_signal(signum, frame):
            if self._signal is not None and signum == signal.SIGINT:
                self._kill_children_now()
                os._exit(130)
            self._signal = signum

        for s in previous:
            signal.signal(s, on_signal)
        return previous

    def _restore_signal_handlers(self, previous) -> None:
        for s, handler in (previous or {}).items():
            signal.signal(s, handler)

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


def _stalled_stage(counters: dict) -> str:
    if "decoded" not in counters:
        return "preparation (audio, avatar, face tracking)"
    return "encoding" if counters.get("inferred", 0) > counters.get("encoded", 0) else "decoding"


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


def _in_main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def visible_gpu_count() -> int:
    """NVIDIA GPUs this process may use, without importing torch (CUDA_VISIBLE_DEVICES is honoured)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return len([d for d in visible.split(",") if d.strip() and d.strip() != "-1"])
    try:
        return len([d for d in os.listdir("/proc/driver/nvidia/gpus")])
    except OSError:
        return 0
