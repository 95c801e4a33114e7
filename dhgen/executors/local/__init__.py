"""The local executor: supervised job processes and inference workers on this machine (see `supervisor`).

supervisor.py  the loop in the main process: scheduling, liveness, stalls, retries, events
jobproc.py     a job process: renders jobs one at a time, the model reached through its pipe
workerproc.py  an inference worker: the model, batches merged across jobs
channel.py     a child's pipe, read and written by threads so the supervisor never blocks
children.py    what every child does first, and how a dead one is described
"""

__all__ = ["Supervisor"]


def __getattr__(name: str):
    # Lazily: every child process imports this package (its entry points live here), and an inference worker
    # should not pay for the supervisor's imports (PyAV, the writer, the result log) that it never uses.
    if name == "Supervisor":
        from dhgen.executors.local.supervisor import Supervisor

        return Supervisor
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
