"""Shards: one manifest split across the tasks of a batch scheduler (Slurm job arrays, Kubernetes Indexed Jobs).

A job's shard is a stable function of its id alone (the first 8 bytes of sha256(id), mod N), never of the row
order, so adding or reordering rows never moves the other jobs, and every job lies in exactly one shard.
`--shard auto` reads the scheduler's own variables; a missing or inconsistent one is a UsageError naming it.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from dhgen.errors import UsageError

T = TypeVar("T")

SLURM_HINT = "submit the array as a range (sbatch --array=0-3), or give --shard K/N yourself"
KUBERNETES_HINT = "set DHGEN_SHARD_COUNT (or --shard-count) to the Indexed Job's spec.completions"
_SHARD_NAME = re.compile(r"\.shard-(\d+)-of-(\d+)$")


@dataclass(frozen=True)
class Shard:
    index: int  # 0-based
    count: int

    def __post_init__(self) -> None:
        if not 0 <= self.index < self.count:
            raise UsageError(
                f"shard {self.index}/{self.count} does not exist: shards are numbered 0..{self.count - 1}",
                hint="give --shard K/N with 0 <= K < N",
            )

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    @property
    def name(self) -> str:
        """In file names: `shard-1-of-4`."""
        return f"shard-{self.index}-of-{self.count}"

    def holds(self, job_id: str) -> bool:
        return shard_of(job_id, self.count) == self.index


def shard_of(job_id: str, count: int) -> int:
    """The shard (0..count-1) of a job id: the same on every machine, in every Python, for every row order."""
    digest = hashlib.sha256(job_id.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % count


def select(jobs: Iterable[T], shard: Shard | None) -> list[T]:
    """The jobs (anything with an `id`) of `shard`, in their order; all of them without a shard."""
    return [job for job in jobs if shard is None or shard.holds(job.id)]


def shard_path(path: Path, shard: Shard) -> Path:
    """`results.jsonl` -> `results.shard-1-of-4.jsonl`: one file per shard."""
    return path.with_name(f"{path.stem}.{shard.name}{path.suffix}")


def shard_in_name(path: Path) -> Shard | None:
    """The shard a file belongs to by its name (`results.shard-1-of-4.jsonl`), None for an unsharded one."""
    match = _SHARD_NAME.search(Path(path).stem)
    if not match or int(match.group(2)) < 1 or int(match.group(1)) >= int(match.group(2)):
        return None
    return Shard(int(match.group(1)), int(match.group(2)))


def resolve_shard(spec: str | None, count: int | None, env: Mapping[str, str]) -> Shard | None:
    """The shard of `--shard K/N` or `--shard auto` (with `--shard-count`), None when not sharded."""
    if spec is None:
        if count is not None:
            raise UsageError("--shard-count is only used with --shard auto", hint="add --shard auto")
        return None
    if spec.strip().lower() == "auto":
        return shard_from_env(env, count)
    shard = parse_shard(spec)
    if count is not None and count != shard.count:
        raise UsageError(f"--shard {spec} has {shard.count} shards but --shard-count says {count}")
    return shard


def parse_shard(text: str) -> Shard:
    """`K/N` (0-based K), e.g. `0/4`."""
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if not match or int(match.group(2)) < 1:
        raise UsageError(f"--shard {text!r} is not K/N or auto", hint="for example --shard 0/4 (shards 0..3 of 4)")
    return Shard(int(match.group(1)), int(match.group(2)))


def shard_from_env(env: Mapping[str, str], count: int | None = None) -> Shard:
    """`--shard auto`: a Slurm array task (SLURM_ARRAY_TASK_ID) or a Kubernetes Indexed Job pod
    (JOB_COMPLETION_INDEX, with the count from --shard-count or DHGEN_SHARD_COUNT)."""
    if "SLURM_ARRAY_TASK_ID" in env:
        return _slurm_shard(env, count)
    if "JOB_COMPLETION_INDEX" in env:
        return _kubernetes_shard(env, count)
    raise UsageError(
        "--shard auto: neither SLURM_ARRAY_TASK_ID (a Slurm job array) nor JOB_COMPLETION_INDEX "
        "(a Kubernetes Indexed Job) is set",
        hint="run it as a task of a Slurm array or an Indexed Job, or give --shard K/N",
    )


def _slurm_shard(env: Mapping[str, str], count: int | None) -> Shard:
    """Task ids may start anywhere and have a step (`--array=1-7:2`): the shard is the task's place in the range."""
    task = _env_int(env, "SLURM_ARRAY_TASK_ID", SLURM_HINT)
    low = _env_int(env, "SLURM_ARRAY_TASK_MIN", SLURM_HINT, default=0)
    step = _env_int(env, "SLURM_ARRAY_TASK_STEP", SLURM_HINT, default=1, least=1)
    tasks = _env_int(env, "SLURM_ARRAY_TASK_COUNT", SLURM_HINT, default=None, least=1)
    high = _env_int(env, "SLURM_ARRAY_TASK_MAX", SLURM_HINT, default=None)
    in_range = None if high is None else (high - low) // step + 1
    if tasks is None and in_range is None:
        raise UsageError(
            "--shard auto: SLURM_ARRAY_TASK_ID is set but neither SLURM_ARRAY_TASK_COUNT nor SLURM_ARRAY_TASK_MAX",
            hint=SLURM_HINT,
        )
    if tasks is not None and in_range is not None and tasks != in_range:
        raise UsageError(
            f"--shard auto: SLURM_ARRAY_TASK_COUNT={tasks} but SLURM_ARRAY_TASK_MIN..SLURM_ARRAY_TASK_MAX "
            f"({low}..{high}, step {step}) holds {in_range} tasks: the array is not a range",
            hint=SLURM_HINT,
        )
    tasks = tasks or in_range
    if (task - low) % step or not 0 <= (task - low) // step < tasks:
        raise UsageError(
            f"--shard auto: SLURM_ARRAY_TASK_ID={task} is not one of the {tasks} tasks from {low} in steps of {step}",
            hint=SLURM_HINT,
        )
    if count is not None and count != tasks:
        raise UsageError(f"--shard-count {count} but the Slurm array has {tasks} tasks (SLURM_ARRAY_TASK_COUNT)")
    return Shard((task - low) // step, tasks)


def _kubernetes_shard(env: Mapping[str, str], count: int | None) -> Shard:
    index = _env_int(env, "JOB_COMPLETION_INDEX", KUBERNETES_HINT)
    if count is None:
        if "DHGEN_SHARD_COUNT" not in env:
            raise UsageError(
                "--shard auto: JOB_COMPLETION_INDEX is set but not the number of shards "
                "(DHGEN_SHARD_COUNT or --shard-count)",
                hint=KUBERNETES_HINT,
            )
        count = _env_int(env, "DHGEN_SHARD_COUNT", KUBERNETES_HINT, least=1)
    if index >= count:
        raise UsageError(
            f"--shard auto: JOB_COMPLETION_INDEX={index} is not below the shard count {count} (DHGEN_SHARD_COUNT)",
            hint=KUBERNETES_HINT,
        )
    return Shard(index, count)


_REQUIRED = object()


def _env_int(env: Mapping[str, str], name: str, hint: str, default=_REQUIRED, least: int = 0):
    raw = env.get(name)
    if raw is None or (raw.strip() == "" and default is not _REQUIRED):
        if default is _REQUIRED:
            raise UsageError(f"--shard auto: {name} is not set", hint=hint)
        return default
    try:
        value = int(raw.strip())
    except ValueError:
        raise UsageError(f"--shard auto: {name}={raw!r} is not a whole number", hint=hint) from None
    if value < least:
        raise UsageError(f"--shard auto: {name}={value} is below {least}", hint=hint)
    return value
