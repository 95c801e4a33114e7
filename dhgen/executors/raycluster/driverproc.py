"""The Ray driver process: the one process of a run that talks to Ray. The dhgen process starts it (spawn) and
supervises it (`supervisor.RayExecutor`); the dhgen process alone holds the lock, the result log and the events.

    dhgen process ──spawn──► driver process: ray.init, the head watch, RayDriver's loop (executor.py)
        ◄── ("connected", gcs_address)
        ◄── ("head", silence)       after each read of the node table: None, or why the head did not answer
        ◄── ("event", event)  ("record", JobRecord)  ("log", log record)
        ◄── ("end",)  ("stopped",)  ("raised", exception, traceback)      the last message
        ──► ("stop", signum)        the dhgen process got SIGINT/SIGTERM: stop the run (cancel, clean up)
        ──► ("feed", method, args)  the dhgen process's job feed, passed on: submit / cancel / hold / close / stop

It is a process of its own because Ray may end it from inside (its core worker exits once the head has been gone
for Ray's `gcs_rpc_server_reconnect_timeout_s`) and a call to a head that is gone may never return. Here that
timeout is raised above --ray-head-timeout (unless RAY_gcs_rpc_server_reconnect_timeout_s is set), so giving up on
the head is the dhgen process's decision. The process dies with the dhgen process (PR_SET_PDEATHSIG; Ray then ends
its tasks and actors, whose owner it is) and ignores SIGINT/SIGTERM: a terminal's Ctrl-C reaches the whole process
group, and the dhgen process decides. Its stdout is its stderr: the dhgen process's stdout may carry the JSON
events.
"""

from __future__ import annotations

import faulthandler
import logging
import math
import os
import signal
import sys
import threading
import traceback
from logging.handlers import QueueHandler
from multiprocessing.connection import Connection

from dhgen.errors import Interrupted
from dhgen.executors.feed import JobFeed, Submission
from dhgen.executors.local.children import die_with_parent

RECONNECT_SETTING = "RAY_gcs_rpc_server_reconnect_timeout_s"  # read by Ray's core worker when it starts
RECONNECT_MARGIN_S = 30  # Ray's own timeout in this process: --ray-head-timeout plus this


def driver_main(
    conn: Connection, parent_pid: int, log_level: int, options, run, submissions: list[Submission], closed: bool
) -> None:
    """The process's target (see the module docstring): the jobs so far, and whether more may come (`closed`)."""
    die_with_parent(parent_pid, signal.SIGKILL)
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.SIG_IGN)
    os.dup2(2, 1)  # what Ray prints goes to stderr: the dhgen process's stdout may be the JSON event stream
    sys.stdout = sys.stderr
    faulthandler.enable(all_threads=True)  # a crash in Ray's C++ leaves a traceback on stderr
    os.environ.setdefault(RECONNECT_SETTING, str(math.ceil(run.ray_head_timeout) + RECONNECT_MARGIN_S))
    out = _Sender(conn)
    _forward_logs(out, log_level)
    feed = JobFeed(submissions, closed=closed)
    stop = _FromParent(conn, feed)
    from dhgen.executors.raycluster.executor import RayDriver  # imports ray: after the setting above

    driver = RayDriver(options, run, lambda address: out.send(("connected", address)), lambda s: out.send(("head", s)))
    try:
        for record in driver.serve(feed, lambda event: out.send(("event", event)), stop):
            out.send(("record", record))
    except Interrupted:
        out.send(("stopped",))
    except BaseException as exc:  # noqa: BLE001 - everything goes to the dhgen process, which raises it
        out.send_exception(exc)
    else:
        out.send(("end",))


class _Sender:
    """Sends to the dhgen process from the loop and from the head watch's thread."""

    def __init__(self, conn: Connection) -> None:
        self._conn, self._lock = conn, threading.Lock()

    def send(self, message: tuple) -> None:
        with self._lock:
            self._conn.send(message)

    def send_exception(self, exc: BaseException) -> None:
        text = "".join(traceback.format_exception(exc))
        try:
            self.send(("raised", exc, text))
        except Exception:  # noqa: BLE001 - it does not pickle: its type and words do
            self.send(("raised", RuntimeError(f"{type(exc).__name__}: {exc}"), text))


class _FromParent:
    """What the dhgen process sends, read by a thread: its job feed's changes go to this process's feed; the stop
    it asks for makes `check()` raise Interrupted."""

    def __init__(self, conn: Connection, feed: JobFeed) -> None:
        self.signum: int | None = None
        self._conn, self._feed = conn, feed
        threading.Thread(target=self._read, name="parent-reader", daemon=True).start()

    def check(self) -> None:
        if self.signum is not None:
            raise Interrupted(self.signum)

    def _read(self) -> None:
        while True:
            try:
                message = self._conn.recv()
            except (EOFError, OSError):  # the dhgen process is gone: PR_SET_PDEATHSIG ends this one
                return
            if message[0] == "stop":
                self.signum = message[1]
            elif message[0] == "feed":
                _, method, args = message
                getattr(self._feed, method)(*args)


class _ToParent:
    """The queue of a QueueHandler: dhgen's log records go to the dhgen process, which logs them there."""

    def __init__(self, out: _Sender) -> None:
        self._out = out

    def put_nowait(self, record: logging.LogRecord) -> None:
        self._out.send(("log", record.__dict__))


def _forward_logs(out: _Sender, level: int) -> None:
    logger = logging.getLogger("dhgen")
    logger.setLevel(level)
    logger.addHandler(QueueHandler(_ToParent(out)))
    logger.propagate = False
