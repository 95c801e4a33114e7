"""The Ray executor: the same jobs, records, events and typed errors as on one box, across a Ray cluster.

    driver: the dhgen process (lock, manifest, result log, metrics, progress: the runner) + executor.py's loop:
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

executor.py  the driver loop (RayExecutor) and the inputs it ships
pool.py      nodes, inference actors, placement of jobs, actor liveness
jobtask.py   the remote job task and its `Inference` through the actor
actor.py     the inference actor
failures.py  Ray's exceptions as dhgen's typed error records
cluster.py   connecting (ray.init), node listing, the doctor's probe

`RayExecutor` imports `ray` (the extra `dhgen[ray]`), so it is imported on first use, after `cluster.import_ray`
has prepared Ray for the address (`dhgen.executors.make_executor` does both, only for `--executor ray`).
"""

__all__ = ["RayExecutor"]


def __getattr__(name: str):
    if name == "RayExecutor":
        from dhgen.executors.raycluster.supervisor import RayExecutor

        return RayExecutor
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
