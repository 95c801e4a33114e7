"""The Python API: `dhgen.render(jobs, ...)`, the same run as `dhgen render`, for scripts and notebooks.

    dhgen.render("jobs.csv", out_dir="renders")                                   # a manifest
    dhgen.render([{"audio": "a.wav", "avatar": "face.mp4"}], out_dir="renders")   # dicts with a manifest's keys
    dhgen.render([Job("a", Path("a.wav"), Path("face.mp4"), Path("renders/a.mp4"))])  # Jobs

A script that calls it needs the `if __name__ == "__main__":` guard: job processes are started with spawn, which
runs the main script's top level again in each of them (a script without it fails once, saying so).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from dhgen.manifest import KNOWN_KEYS, Job, jobs_from_dicts, read_manifest
from dhgen.options import RenderOptions, RunOptions

if TYPE_CHECKING:
    from dhgen.runner import RunSummary

ACCEPTED = (
    "a manifest path (str or os.PathLike), a list of dhgen.Job, or a list of dicts with 'audio' and 'avatar' "
    "(and optionally 'id' and 'output')"
)


def render(
    jobs: str | os.PathLike | Iterable[Job] | Iterable[Mapping],
    options: RenderOptions | None = None,
    run: RunOptions | None = None,
    on_event: Callable[[dict], None] | None = None,
    executor=None,
    *,
    out_dir: str | os.PathLike | None = None,
    progress: bool = False,
) -> RunSummary:
    """Render `jobs` (see the module docstring) and return the run's records (`RunSummary`).

    `out_dir` is where outputs and the result log go (default `run.out_dir`, `./renders`); `on_event` receives
    every event as a dict; `progress=True` shows a tqdm bar. Raises TypeError for `jobs` of another type and
    UsageError for bad options or job lists, both before anything starts; RunLocked, Interrupted as the CLI's
    exit codes 75 and 130/143 do.
    """
    from dhgen.runner import render as render_jobs

    run = run or RunOptions()
    if out_dir is not None:
        run = dataclasses.replace(run, out_dir=Path(out_dir))
    job_list = as_jobs(jobs, run.out_dir)
    if not progress:
        return render_jobs(job_list, options, run, on_event=on_event, executor=executor)
    from dhgen.progress import Tee, TqdmProgress

    with Tee(TqdmProgress(), on_event) as display:
        return render_jobs(job_list, options, run, on_event=display, executor=executor)


def as_jobs(jobs, out_dir: Path) -> list[Job]:
    """The `Job`s `jobs` stands for; TypeError naming what is accepted for anything else."""
    if isinstance(jobs, (str, os.PathLike)):
        return read_manifest(jobs, out_dir)
    if isinstance(jobs, Mapping):
        raise TypeError(f"dhgen.render() takes {ACCEPTED}; got one dict (put it in a list: [{{...}}])")
    if isinstance(jobs, (bytes, Job)) or not isinstance(jobs, Iterable):
        raise TypeError(f"dhgen.render() takes {ACCEPTED}; got {type(jobs).__name__}")
    items = list(jobs)
    if all(isinstance(item, Job) for item in items):
        return items
    if all(isinstance(item, Mapping) for item in items):
        return jobs_from_dicts([_text_fields(n, item) for n, item in enumerate(items)], out_dir)
    kinds = sorted({type(item).__name__ for item in items})
    raise TypeError(f"dhgen.render() takes {ACCEPTED}; got a list of {', '.join(kinds)}")


def _text_fields(index: int, item: Mapping) -> dict:
    """The dict with its paths as strings; per-job settings (fps, crf, ...) pass on to the manifest's checks."""
    fields = {}
    for key, value in item.items():
        if key not in KNOWN_KEYS:
            fields[str(key)] = value
        elif value is not None and not isinstance(value, (str, os.PathLike)):
            raise TypeError(f"jobs[{index}][{key!r}] must be a str or os.PathLike, got {type(value).__name__}")
        else:
            fields[str(key)] = os.fspath(value) if value is not None else ""
    return fields
