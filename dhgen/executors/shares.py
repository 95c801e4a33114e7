"""Thread shares: how many threads each process of a machine (or a cluster node) gets, so that N processes with
'all cores' defaults do not oversubscribe it. Used by the local supervisor for this machine and by the Ray driver
for each node (its CPUs as Ray counts them).
"""

from __future__ import annotations

import os

from dhgen.models import get_family
from dhgen.options import ModelOptions


def job_threads(cores: int, jobs: int) -> int:
    """Threads of a job process (decode, x264) when `jobs` run at once on `cores`: at least 2. An x264 writer with
    one thread leaves a core idle while it waits (4 jobs x 10 s, --jobs 2 on 2 cores: 8.4 s wall with 1 thread per
    job, 7.9 s with 2, 9.1 s with 3)."""
    return max(2, cores // max(1, jobs))


def worker_threads(cores: int, jobs: int, device: str, model: ModelOptions) -> int:
    """Threads of an inference worker serving `model`. A model that uses no GPU (numpy) gets one (mouthwarp: ~0.3 ms
    a crop on one core, 3,000 crops/s, more than 16 cores of x264 encode). A GPU worker only feeds its GPU; a CPU
    worker gets half the cores, or all of them for a model slower than the encoders (`cpu_bound`, e.g. wav2lip)."""
    family = get_family(model.name)
    if not family.uses_gpu(model.checkpoint):
        return 1
    if device.startswith(("cuda", "auto")):  # "auto:N" only when a GPU is visible
        return max(1, cores // (max(1, jobs) + 1))
    return cores if family.cpu_bound else max(1, cores // 2)


def limit_threads(threads: int) -> None:
    """Make this process's OpenMP/BLAS pools and OpenCV use `threads` threads."""
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(threads)
    import cv2

    cv2.setNumThreads(threads)
