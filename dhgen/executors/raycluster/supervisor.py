"""The Ray executor as the dhgen process runs it: the Ray driver in a process of its own, supervised, so that the run
outlives its cluster. This process never connects to Ray itself.

    dhgen process: runner or service (lock, result log, events) ── RayExecutor (this module)
        │  wait(the driver's pipe + its sentinel + the feed's wake-up, TICK_S); relays events and records; passes
        │  the job feed on (new jobs, cancels, hold, close); keeps, from the events, each job's attempts, last node
        │  and incidents
        └── driver process (driverproc.py): ray.init, the head watch, RayDriver's loop (executor.py)

The driver process reports after each read of the node table (every second) whether the head answered. The
cluster is lost when the head has not answered for --ray-head-timeout seconds (or the driver stopped reporting
that long), or when the driver process died. The driver process is then killed, and every job without a record
gets one: failed, `ClusterLost` (retryable, in a later run), naming the head's address, how long it had not
answered and the node the job last ran on; the run then ends as any other (run_finished, summary, lock released,
exit 1). Jobs that finished keep their records. The driver is the one that writes outputs, so once it is gone no
output is written; the temp files it (or, with --ray-shared-fs, a job on a node) left are removed. A head that
answers again within the bound (GCS fault tolerance) costs nothing: the driver goes on.

SIGINT/SIGTERM are passed on as a stop (the driver cancels the run's tasks and kills its actors, as it did in this
process before); a second SIGINT kills the driver process at once (Ray then ends its tasks and actors: their owner
is gone).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import logging
import multiprocessing as mp
import os
import signal
import socket
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from multiprocessing.connection import wait
from pathlib import Path

from dhgen import events
from dhgen.errors import ClusterLost, Interrupted, UsageError
from dhgen.events import EventFn
from dhgen.executors.feed import JobFeed, Submission
from dhgen.executors.local.channel import Channel, Inbox
from dhgen.executors.local.children import (
    CHILD_NAME_PREFIX,
    NO_MAIN_GUARD,
    NO_MAIN_GUARD_EXIT,
    NO_MAIN_GUARD_HINT,
    describe_exit,
)
from dhgen.executors.raycluster.cluster import resolve_address
from dhgen.executors.raycluster.driverproc import driver_main
from dhgen.executors.stopping import StopSignals
from dhgen.manifest import Job
from dhgen.options import RenderOptions, RunOptions
from dhgen.results import JobRecord, utc_now
from dhgen.writer import temp_path_for

log = logging.getLogger(__name__)

TICK_S = 0.5  # how often the head's deadline is checked when nothing arrives
STOP_WAIT_S = 15.0  # after a stop was passed on: how long the driver may take to clean up before it is killed
EXIT_WAIT_S = 30.0  # after its last message: how long the driver may take to disconnect (a private Ray: stop it)
LAST_WORDS_S = 2.0  # after the driver process died: for what it sent just before to arrive
REACH_TIMEOUT_S = 1.0  # after the driver process died: the TCP check of the head's address


@dataclass
class _Track:
    """What this process knows of a job from the driver's events, enough for its record if the cluster is lost."""

    job: Job
    record: JobRecord  # as it arrived: new, or carried over from an earlier server run
    attempts: int = 0
    node: str | None = None  # where its last attempt ran: IP
    node_id: str | None = None
    pid: int | None = None  # the Ray worker process of its last attempt
    started: float = 0.0  # monotonic, first attempt
    started_at: str | None = None
    errors: list[dict] = field(default_factory=list)  # its incidents so far (the driver's record has the same)
    finished: bool = False


@dataclass
class _Head:
    """What the driver process said about the head."""

    address: str | None = None  # its GCS address, once connected
    answered: float = 0.0  # monotonic: when it last answered (connecting counts)
    silence: str | None = None  # Ray's words for the last read that got no answer, since it last answered


class RayExecutor:
    """Executor that runs jobs on a Ray cluster (see the package docstring). After `run`, `lost` is the
    ClusterLost that ended it, or None: a long-lived caller (a service) takes it as the sign to connect anew and
    queue the jobs whose records carry it again."""

    def __init__(self, options: RenderOptions, run: RunOptions) -> None:
        self.options, self.run_options = options, run
        self.lost: ClusterLost | None = None

    def run(self, jobs: list[Job], fingerprints: dict, emit: EventFn) -> Iterator[JobRecord]:
        return self.serve(JobFeed.of(jobs, fingerprints), emit)

    def serve(self, feed: JobFeed, emit: EventFn) -> Iterator[JobRecord]:
        """The jobs of `feed` as they arrive (`dhgen.executors.feed`), passed on to the driver process."""
        state = _state(feed)
        submissions, cancels = feed.take()
        if feed.stopped or (feed.closed and not submissions):
            return
        self.lost, self._emit, self._feed, self._passed = None, emit, feed, state
        self._tracks: dict[str, _Track] = {}
        self._track(submissions)
        self._head, self._stop_sent, self._said_last = _Head(), 0.0, False
        with StopSignals(self._kill_now) as self._stop:
            self._start(submissions, state[1])
            feed.wake_with(self._inbox.wake)
            try:
                self._pass_on(True if state[0] else None, cancels)
                yield from self._relay()
            finally:
                feed.wake_with(None)
                self._end_driver()

    # --- the driver process --------------------------------------------------------------------------------

    def _start(self, submissions: list[Submission], closed: bool) -> None:
        run = dataclasses.replace(self.run_options, ray_address=_address_of_this_process(self.run_options.ray_address))
        self._inbox = Inbox()
        parent_end, child_end = mp.Pipe()
        level = logging.getLogger("dhgen").getEffectiveLevel()
        self._process = mp.get_context("spawn").Process(
            target=driver_main,
            args=(child_end, os.getpid(), level, self.options, run, submissions, closed),
            name=f"{CHILD_NAME_PREFIX}ray-driver",
            daemon=True,
        )
        self._process.start()
        child_end.close()
        self._channel = Channel("driver", parent_end, self._inbox)

    def _end_driver(self) -> None:
        """After its last message the driver ends by itself; in any other case (the cluster lost, an error here,
        the caller stopped reading records) it is killed."""
        if self._said_last:
            self._process.join(EXIT_WAIT_S)
        if self._process.is_alive():
            self._process.kill()
        self._process.join(EXIT_WAIT_S)
        self._channel.close()
        self._inbox.close()

    def _kill_now(self) -> None:
        """A second SIGINT: the driver process is killed; Ray ends the tasks and actors it owned."""
        self._process.kill()

    # --- the loop ------------------------------------------------------------------------------------------

    def _track(self, submissions: list[Submission]) -> None:
        for s in submissions:
            self._tracks[s.job.id] = _Track(s.job, s.record, attempts=s.record.attempts)

    def _pass_feed_on(self) -> None:
        """What arrived on the feed since the last turn goes to the driver process's feed. Its state is read
        before its jobs: a job submitted before the feed closed is passed on before the close."""
        state = _state(self._feed)
        submissions, cancels = self._feed.take()
        self._track(submissions)
        for s in submissions:
            self._channel.send(("feed", "submit", (s.job, s.record)))
        holding = state[0] if state[0] != self._passed[0] else None
        self._pass_on(holding, cancels)
        if state[2] and not self._passed[2]:
            self._channel.send(("feed", "stop", ()))
        elif state[1] and not self._passed[1]:
            self._channel.send(("feed", "close", ()))
        self._passed = state

    def _pass_on(self, holding: bool | None, cancels: list[str]) -> None:
        for job_id in cancels:
            self._channel.send(("feed", "cancel", (job_id,)))
        if holding is not None:
            self._channel.send(("feed", "hold", (holding,)))

    def _relay(self) -> Iterator[JobRecord]:
        while True:
            self._pass_stop_on()
            self._pass_feed_on()
            wait([self._inbox.wake_r, self._process.sentinel], timeout=TICK_S)
            if not self._process.is_alive():
                self._channel.wait_eof(LAST_WORDS_S)
            for _key, message in self._inbox.drain():
                if message[0] == "record":
                    self._tracks[message[1].job_id].finished = True
                    yield message[1]
                elif self._on_message(message):
                    return
            reason = self._loss(time.monotonic())
            if reason is not None:
                yield from self._cluster_lost(reason)
                return

    def _on_message(self, message: tuple) -> bool:
        """Act on one message of the driver; True when it was the last of a run that ended."""
        kind = message[0]
        self._said_last = kind in ("end", "stopped", "raised")
        if kind == "event":
            self._on_event(message[1])
        elif kind == "head":
            self._on_head(message[1])
        elif kind == "connected":
            self._head.address, self._head.answered = message[1], time.monotonic()
        elif kind == "log":
            record = logging.makeLogRecord(message[1])
            logging.getLogger(record.name).handle(record)
        elif kind == "raised":
            log.debug("the Ray driver process raised:\n%s", message[2])
            raise message[1]
        elif kind == "stopped":
            raise Interrupted(self._stop.signum or signal.SIGTERM)
        return kind == "end"  # EOF alone is not an end: the process's sentinel says how it ended

    def _on_event(self, event: dict) -> None:
        self._emit(event)
        kind = event["event"]
        if kind == "job_started":
            track = self._tracks[event["job_id"]]
            track.attempts, track.pid = event["attempt"], event.get("pid")
            track.node, track.node_id = event.get("node"), event.get("node_id")
            if not track.started:
                track.started, track.started_at = time.monotonic(), event["time"]
        elif kind == "incident":
            ids = [event["job_id"]] if "job_id" in event else event.get("job_ids", [])
            for job_id in ids:
                self._tracks[job_id].errors.append(event["error"])

    def _on_head(self, silence: str | None) -> None:
        """A read of the node table: the head answered (`silence` None) or not. The first read without an answer,
        and the first answer after it, are `ray_head` events and warnings."""
        head, now = self._head, time.monotonic()
        quiet = now - head.answered
        if silence is not None and head.silence is None:
            bound = self.run_options.ray_head_timeout
            log.warning("the Ray head at %s does not answer (%s); waiting up to %gs", head.address, silence, bound)
            self._emit(events.ray_head(False, head.address, quiet, timeout_s=bound))
        elif silence is None and head.silence is not None:
            log.warning("the Ray head at %s answers again after %.1fs; the run goes on", head.address, quiet)
            self._emit(events.ray_head(True, head.address, quiet))
        if silence is None:
            head.answered = now
        head.silence = silence

    def _pass_stop_on(self) -> None:
        """SIGINT/SIGTERM here: the driver is asked to stop, and killed if it has not within STOP_WAIT_S."""
        if self._stop.signum is None:
            return
        now = time.monotonic()
        if not self._stop_sent:
            self._stop_sent = now
            self._channel.send(("stop", self._stop.signum))
        elif now - self._stop_sent > STOP_WAIT_S:
            self._process.kill()
            raise Interrupted(self._stop.signum)

    # --- losing the cluster --------------------------------------------------------------------------------

    def _loss(self, now: float) -> str | None:
        """Why the cluster is lost, in words, or None while it is not (or while the run is stopping: a stop has
        its own bound, STOP_WAIT_S)."""
        if not self._process.is_alive():
            return self._died(now)
        head = self._head
        stopping = self._stop.signum is not None
        if stopping or head.address is None or now - head.answered < self.run_options.ray_head_timeout:
            return None
        if head.silence is None:
            return f"the Ray driver process (pid {self._process.pid}) stopped reporting; {self._head_state(now)}"
        return self._head_state(now)

    def _died(self, now: float) -> str:
        """The driver process ended without its last message: why the cluster is lost, in words."""
        if self._process.exitcode == NO_MAIN_GUARD_EXIT and self._head.address is None:
            raise UsageError(NO_MAIN_GUARD, hint=NO_MAIN_GUARD_HINT)
        if self._stop.signum is not None:
            raise Interrupted(self._stop.signum)
        words, _ = describe_exit(self._process.exitcode)
        head = self._head_state(now)
        if self._head.address is not None:
            head += f"; its address now {_reach(self._head.address)}"
        return f"the Ray driver process (pid {self._process.pid}) {words}; {head}"

    def _head_state(self, now: float) -> str:
        head = self._head
        if head.address is None:
            return "it had not connected to the cluster yet"
        quiet = now - head.answered
        if head.silence is None:
            return f"the Ray head at {head.address} last answered {quiet:.1f}s before"
        return f"the Ray head at {head.address} has not answered for {quiet:.1f}s ({head.silence})"

    def _cluster_lost(self, reason: str) -> Iterator[JobRecord]:
        """Kill the driver; every job without a record gets ClusterLost, and the run ends."""
        self._process.kill()
        self._process.join(5.0)
        now = time.monotonic()
        unreachable = round(now - self._head.answered, 1) if self._head.silence is not None else None
        self.lost = ClusterLost(f"lost the Ray cluster: {reason}")
        left = [t for t in self._tracks.values() if not t.finished]
        action = f"{len(left)} unfinished job(s) recorded as ClusterLost; the run ends (--resume finishes it)"
        self._emit(events.incident(self.lost.to_record(), job_ids=[t.job.id for t in left], action=action))
        for track in left:
            self._remove_partials(track)
            yield self._lost_record(track, reason, unreachable, now)

    def _lost_record(self, track: _Track, reason: str, unreachable: float | None, now: float) -> JobRecord:
        if track.node is None:
            where = "had not started on any node"
        else:
            where = f"was on node {track.node} ({(track.node_id or '?')[:8]}), attempt {track.attempts}"
        error = ClusterLost(f"lost the Ray cluster: {reason}; job {track.job.id} {where}").to_record()
        error.update(address=self._head.address, unreachable_s=unreachable, time=utc_now())
        if track.node is not None:
            error.update(node=track.node, node_id=track.node_id)
        record = copy.copy(track.record)
        record.attempts, record.errors, record.error = track.attempts, [*record.errors, *track.errors, error], error
        record.started_at = track.started_at or record.started_at
        record.finished_at = utc_now()
        record.elapsed_s = round(now - track.started, 3) if track.started else 0.0
        return record

    def _remove_partials(self, track: _Track) -> None:
        """What the driver (writing the job's output) or, on a shared filesystem, the job's task left beside it."""
        output = Path(os.path.abspath(track.job.output))
        for pid in (self._process.pid, track.pid):
            if pid is not None:
                with contextlib.suppress(OSError):
                    temp_path_for(output, pid).unlink(missing_ok=True)


def _state(feed: JobFeed) -> tuple[bool, bool, bool]:
    """(holding, closed, stopped): what the driver process's feed must follow."""
    return feed.holding, feed.closed, feed.stopped


def _reach(address: str) -> str:
    """Whether `address` (HOST:PORT) takes a TCP connection now, in words."""
    host, _, port = address.rpartition(":")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=REACH_TIMEOUT_S).close()
    except (OSError, ValueError) as exc:
        return f"takes no connection ({getattr(exc, 'strerror', None) or exc})"
    return "takes connections"


def _address_of_this_process(address: str | None) -> str | None:
    """The address the driver joins: a process already connected to Ray (the Python API after its own
    `ray.init`) has its cluster used when no address, or `auto`, is given."""
    ray = sys.modules.get("ray")
    if address in (None, "auto") and ray is not None and ray.is_initialized():
        return ray.get_runtime_context().gcs_address
    return resolve_address(address)
