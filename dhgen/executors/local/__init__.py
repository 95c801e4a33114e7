"""The local executor: supervised job processes and inference workers on this machine (see `supervisor`).

supervisor.py  the loop in the main process: scheduling, liveness, stalls, retries, events
jobproc.py     a job process: renders jobs one at a time, the model reached through its pipe
workerproc.py  an inference worker: the model, batches merged across jobs
channel.py     a child's pipe, read and written by threads so the supervisor never blocks
children.py    what every child does first, and how a dead one is described
"""

from dhgen.executors.local.supervisor import Supervisor

__all__ = ["Supervisor"]
