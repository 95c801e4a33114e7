"""The Ray executor: the same jobs, records, events and typed errors as on one box, across a Ray cluster.

    dhgen process: the runner (lock, manifest, result log, metrics, progress) + RayExecutor (supervisor.py)
        │  never connects to Ray; relays the driver's events and records; when the head has not answered for
        │  --ray-head-timeout, or the driver process died: ClusterLost for every unfinished job, and the run ends
    driver process (driverproc.py): ray.init + the head watch (node table each second) + executor.py's loop:
        ray.wait(every attempt's stream + every actor's watch stream, tick)
        │  places jobs, reads progress, judges stalls/timeouts, retries by type, watches nodes, writes outputs
        ├───────────────────── node A ───────────────────┐  ├── node B, ... (the same)
        │  job task × ≤ --jobs   (jobtask.py: a streaming│
        │  task pinned to the node: decode, crop,        │
        │  composite, encode)                            │
        │      infer(crops) ──► inference actor × GPUs   │  (actor.py: one per GPU, or one CPU actor;
        │      ◄── patches      (batches merged)         │   Ray restarts it, jobs replay their batches)
        └────────────────────────────────────────────────┘
    inputs: driver ──object store──► node temp folder; output bytes: node ──object store──► driver, which writes
    them (temp file + fsync + rename). With --ray-shared-fs nodes read inputs and write outputs at their paths.

supervisor.py  RayExecutor: the driver process started, relayed and watched; ClusterLost
driverproc.py  what the driver process does (its pipe to the dhgen process, Ray's timeout, logs)
executor.py    the driver loop (RayDriver) and the inputs it ships
pool.py        nodes, inference actors, placement of jobs, actor liveness
jobtask.py     the remote job task and its `Inference` through the actor
actor.py       the inference actor
failures.py    Ray's exceptions as dhgen's typed error records
cluster.py     connecting (ray.init), the head watch, node listing, the doctor's probe

Only the driver process imports `ray` (the extra `dhgen[ray]`); `dhgen.executors.make_executor` checks that it is
installed and builds a `RayExecutor`, which is imported on first use.
"""

__all__ = ["RayExecutor"]


def __getattr__(name: str):
    if name == "RayExecutor":
        from dhgen.executors.raycluster.supervisor import RayExecutor

        return RayExecutor
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
