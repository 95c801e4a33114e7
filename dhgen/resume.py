"""What `--resume` knows, in one place: a job's input fingerprint, the last record of each job, and whether a job
is already done. The runner (`--resume`, every record's `input_fingerprint`) and the service (`dhgen.service`:
idempotent submits, a job's last record) both ask here.

- `render_settings(options)`: the options that shape an output, as the fingerprint covers them (the model by
  `model_identity`: its family, where that comes from, and the checkpoint's content).
- `input_fingerprint(job, settings)`: both inputs' content and those settings, hashed.
- `Fingerprints(options)`: the fingerprint of each job rendered with `options` (its own manifest settings on top).
- `History`: the last record of each job id over result logs, and `done(job, fingerprint)`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

from dhgen.encoders import requested_codec
from dhgen.manifest import Job, file_digest
from dhgen.models import registry
from dhgen.options import ModelOptions, RenderOptions, RunOptions, job_options
from dhgen.results import last_records_of, result_logs


def render_settings(options: RenderOptions) -> dict:
    """The options that shape an output (what the input fingerprint covers); caches and devices excluded.

    A checkpoint counts by its content, so new weights under the same file name are not skipped by --resume.
    The encoder counts as asked for (`auto`, the codec), not as resolved on this machine, so a run resumed on a box
    without NVENC does not render again what NVENC rendered.
    """
    settings = dataclasses.asdict(options)
    for where in ("encoder_reason", "resolved_from", "gpu"):  # how and where it was resolved, not what was asked
        settings["encode"].pop(where, None)
    settings["encode"]["codec"] = requested_codec(options.encode)  # --codec h264 is what no --codec means
    settings["face"].pop("cache_dir", None)
    settings["model"].pop("device", None)
    settings["model"].pop("batch_size", None)
    identity = model_identity(options.model)
    settings["model"].update(family=identity["family"], source=identity["source"])
    settings["model"]["checkpoint"] = identity["checkpoint_sha256"] or options.model.checkpoint
    return settings


def model_identity(model: ModelOptions) -> dict:
    """What a record says drew its mouth, and what the input fingerprint covers of it: the family's name and
    dotted name, where it comes from (built-in or `package==version`), its backend for this checkpoint, and the
    checkpoint's content (`checkpoint_digest`)."""
    entry = registry.entry(model.name)
    family = entry.family
    checkpoint = model.checkpoint
    return {
        "name": model.name,
        "family": entry.target,
        "source": entry.source,
        "backend": family.backend_for(checkpoint) if family is not None else None,
        "checkpoint_sha256": checkpoint_digest(family, checkpoint) if family and checkpoint else None,
    }


def checkpoint_digest(family, checkpoint: Path) -> str | None:
    """sha256 of a one-file checkpoint; of a folder, sha256 over the files its family reads (path and content of
    each). None when it cannot be read (the job fails with ModelLoadError anyway)."""
    try:
        files = family.checkpoint_files(Path(checkpoint))
        if files == [Path(checkpoint)]:
            return file_digest(Path(checkpoint))
        lines = [f"{p.relative_to(checkpoint).as_posix()} {file_digest(p)}\n" for p in files]
    except (OSError, ValueError):
        return None
    return hashlib.sha256("".join(lines).encode()).hexdigest()


def input_fingerprint(job: Job, settings: dict) -> str | None:
    """Hash of both inputs' content and the settings shaping the output (the job's own included, as
    `render_settings(job_options(...))` gives them); None if an input is unreadable."""
    h = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode())
    try:
        for p in (job.audio, job.avatar):
            h.update(file_digest(p).encode())
    except OSError:
        return None
    return h.hexdigest()[:32]


class Fingerprints:
    """Input fingerprints of jobs rendered with `options`; `render_settings` is worked out once per distinct set of
    a job's own settings (a manifest has few)."""

    def __init__(self, options: RenderOptions) -> None:
        self.options = options
        self._settings: dict = {}

    def of(self, job: Job) -> str | None:
        if job.settings not in self._settings:
            self._settings[job.settings] = render_settings(job_options(self.options, job))
        return input_fingerprint(job, self._settings[job.settings])

    def of_all(self, jobs: list[Job]) -> dict[str, str | None]:
        return {job.id: self.of(job) for job in jobs}


def already_done(previous: dict | None, output: Path, fingerprint: str | None) -> bool:
    """A job whose last record succeeded with the same inputs, and whose output still exists, is done."""
    return (
        previous is not None
        and previous.get("status") in ("succeeded", "skipped")
        and fingerprint is not None
        and previous.get("input_fingerprint") == fingerprint
        and Path(output).is_file()
    )


class History:
    """The last record of each job id (a result-log object); `done` says whether a job need not render again."""

    def __init__(self, records: dict[str, dict] | None = None) -> None:
        self.records = records or {}

    @classmethod
    def of_run(cls, run: RunOptions) -> History:
        """`--resume` reads this run's own log and every other result log in the output folder (other shards, an
        earlier unsharded run or another shard count), so a job done under any of them is not rendered again."""
        return cls(last_records_of([run.results_path, *result_logs(run.out_dir)]))

    def last(self, job_id: str) -> dict | None:
        return self.records.get(job_id)

    def done(self, job: Job, fingerprint: str | None) -> bool:
        return already_done(self.records.get(job.id), job.output, fingerprint)
