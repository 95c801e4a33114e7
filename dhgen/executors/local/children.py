"""What every child process does first, and how the supervisor describes one that died.

Children (job processes and inference workers) are started with the `spawn` context. On start each one:
dies with its parent (PR_SET_PDEATHSIG, then a getppid() re-check for the race), ignores SIGINT (a terminal's
Ctrl-C reaches the whole process group; the supervisor decides), turns SIGTERM into SystemExit so `finally`
blocks remove temp files, and writes fatal tracebacks (segfaults included) to its own crash file.

A script that calls `dhgen.render` without an `if __name__ == "__main__":` guard is run again, top to bottom, by
every spawned child while it starts (spawn re-imports the parent's main module). The child's own call of
`render` then ends the child at once with NO_MAIN_GUARD_EXIT, before any run of its own; the supervisor sees a
child that died with that code before creating its crash file and fails the run once, saying why.
"""

from __future__ import annotations

import ctypes
import faulthandler
import multiprocessing as mp
import os
import signal
import sys
from pathlib import Path

from dhgen.errors import UsageError
from dhgen.executors.shares import limit_threads

PR_SET_PDEATHSIG = 1
CRASH_TAIL_LINES = 20
CHILD_NAME_PREFIX = "dhgen-"  # the names the supervisor gives its children (seen by a child while it starts)
NO_MAIN_GUARD_EXIT = 86  # a child that started to run the parent's script again (no `__main__` guard)
NO_MAIN_GUARD = (
    "dhgen.render() was called again while a job process was starting: the script that calls it has no "
    '`if __name__ == "__main__":` guard. Job processes are started with spawn, which runs the main script\'s top '
    "level again in every child"
)
NO_MAIN_GUARD_HINT = 'put the call under `if __name__ == "__main__":` at the end of the script (README, Python API)'


def refuse_during_bootstrap() -> None:
    """Called by `render()`: inside a child that is still importing the parent's main module, end the child
    (one of ours) or raise (someone else's spawn), instead of starting a run from within the child."""
    process = mp.current_process()
    if not getattr(process, "_inheriting", False):
        return
    if process.name.startswith(CHILD_NAME_PREFIX):
        os._exit(NO_MAIN_GUARD_EXIT)  # quietly: the supervisor reports it, once
    raise UsageError(NO_MAIN_GUARD, hint=NO_MAIN_GUARD_HINT)


def died_rerunning_main(exitcode: int | None, crash_path: Path) -> bool:
    """A child ended by `refuse_during_bootstrap` (before it made its crash file)."""
    return exitcode == NO_MAIN_GUARD_EXIT and not Path(crash_path).exists()


def _exit_on_sigterm(signum, frame):
    raise SystemExit(128 + signum)


def die_with_parent(parent_pid: int, signum: int) -> None:
    """Get `signum` when the parent dies (PR_SET_PDEATHSIG); exit now if it already did."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signum, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: pipe EOF still ends the child
        pass
    if os.getppid() != parent_pid:
        os._exit(1)


def init_child(parent_pid: int, crash_path: Path, threads: int) -> None:
    """Make this process a well-behaved child of `parent_pid`."""
    die_with_parent(parent_pid, signal.SIGTERM)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    crash_file = open(crash_path, "w")  # noqa: SIM115 - kept open for the life of the process
    faulthandler.enable(crash_file, all_threads=True)
    sys.stderr = crash_file  # uncaught Python errors and warnings land there too
    limit_threads(threads)


def describe_exit(exitcode: int | None) -> tuple[str, str | None]:
    """Words for how a process ended, and the signal's name if a signal ended it."""
    if exitcode is None:
        return "is still running", None
    if exitcode >= 0:
        return f"exited with code {exitcode}", None
    try:
        name = signal.Signals(-exitcode).name
    except ValueError:
        name = f"signal {-exitcode}"
    words = f"was killed by {name}"
    if name == "SIGKILL":
        words += " (killed, often the kernel OOM killer)"
    elif name == "SIGSEGV":
        words += " (segmentation fault)"
    return words, name


def crash_tail(crash_path: Path, lines: int = CRASH_TAIL_LINES) -> str:
    """The last lines of a child's crash file ('' when it wrote nothing)."""
    try:
        text = Path(crash_path).read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.strip().splitlines()[-lines:])
