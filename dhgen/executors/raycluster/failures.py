"""Ray's failures as dhgen's typed errors: a record in the result log never carries a raw Ray traceback.

| Ray raises (for a job's task)                                   | record type        |
|-----------------------------------------------------------------|--------------------|
| RayTaskError (our code raised; its `.cause` is the exception)   | the cause's own    |
| WorkerCrashedError (the worker process running the task died)   | JobProcessCrashed  |
| OutOfMemoryError (Ray's memory monitor killed the task)         | OutOfMemory        |
| NodeDiedError, LocalRayletDiedError, TaskUnschedulableError     | NodeLost           |
| any other RayError                                              | JobProcessCrashed  |

An inference actor's death (RayActorError: ActorDiedError / ActorUnavailableError) is WorkerCrashed, built by the
driver (`actor_died`) and by the job that replays its batches. Decisions are made on these types, never on text.
"""

from __future__ import annotations

import ray.exceptions as rex

from dhgen.errors import JobProcessCrashed, NodeLost, OutOfMemory, WorkerCrashed, failure_record
from dhgen.executors.raycluster.cluster import NodeInfo
from dhgen.results import utc_now

NODE_GONE = (rex.NodeDiedError, rex.LocalRayletDiedError, rex.TaskUnschedulableError)


def job_failure(exc: BaseException, job_id: str, node: NodeInfo | None, pid: int | None) -> dict:
    """The record of a job attempt whose task ended with `exc` (raised by Ray when reading its stream)."""
    if isinstance(exc, rex.RayTaskError):
        return _our_error(exc)
    if isinstance(exc, NODE_GONE) and node is not None:
        return node_lost(node, [job_id])
    where = f"on node {node.label}" if node else "before it reached a node"
    process = f"the Ray worker process (pid {pid})" if pid else "the Ray worker process"
    if isinstance(exc, rex.OutOfMemoryError):
        error = OutOfMemory(f"Ray's memory monitor killed {process} running job {job_id} {where}")
    elif isinstance(exc, rex.WorkerCrashedError):
        error = JobProcessCrashed(
            f"{process} running job {job_id} {where} died unexpectedly; Ray reports no exit code or signal "
            "(a kill, a crash, or the kernel OOM killer)"
        )
    elif isinstance(exc, rex.RayError):
        error = JobProcessCrashed(f"{process} running job {job_id} {where} failed in Ray: {type(exc).__name__}")
    else:
        return failure_record(exc)
    return _placed(error.to_record(), node, pid)


def node_lost(node: NodeInfo, job_ids: list[str]) -> dict:
    jobs = ", ".join(job_ids) or "no job"
    error = NodeLost(f"node {node.ip} (Ray node id {node.node_id}) died or stopped answering while it held {jobs}")
    return _placed(error.to_record(), node, None)


def actor_died(index: int, node: NodeInfo, pid: int | None, exc: BaseException | None, what: str) -> dict:
    """The record of inference actor `index` dying (`what`: how, in words)."""
    ray_says = f" (Ray: {type(exc).__name__})" if exc is not None else ""
    error = WorkerCrashed(f"inference actor {index} on node {node.label} (pid {pid or '?'}) {what}{ray_says}")
    return _placed(error.to_record(), node, pid)


def _our_error(exc: rex.RayTaskError) -> dict:
    cause = exc.cause if exc.cause is not None else exc
    record = failure_record(cause)
    if "traceback" in record and getattr(exc, "traceback_str", None):
        record["traceback"] = exc.traceback_str.strip()  # the remote traceback, not the local re-raise
    return record


def _placed(record: dict, node: NodeInfo | None, pid: int | None) -> dict:
    record.update({"pid": pid, "exitcode": None, "signal": None, "time": utc_now()})
    if node is not None:
        record.update({"node": node.ip, "node_id": node.node_id})
    return record
