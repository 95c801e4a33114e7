"""Manifests: read a CSV or JSON Lines file of jobs into validated `Job`s with safe output paths.

A manifest may come from someone else, so every output must land inside the output folder: `../`, absolute
paths and symlinks that lead out are refused. Input files are not opened here (a missing one fails its own job
later, so the rest of the batch still renders); only the manifest's own shape is checked, with file:line.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from dhgen.errors import ManifestError

KNOWN_KEYS = ("id", "audio", "avatar", "output")
_ID_CHARS = re.compile(r"[^\w.-]+")  # ids become file names: letters (any script), digits, . _ -


@dataclass(frozen=True)
class Job:
    id: str
    audio: Path
    avatar: Path
    output: Path


@dataclass(frozen=True)
class _Row:
    line: int
    fields: dict


def read_manifest(path: str | Path, out_dir: str | Path) -> list[Job]:
    """Jobs of a CSV (`id,audio,avatar[,output]`) or JSONL manifest; ManifestError names file:line."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise ManifestError(f"cannot read manifest: {exc}", path=path) from exc
    rows = _jsonl_rows(path, text) if _looks_like_jsonl(path, text) else _csv_rows(path, text)
    if not rows:
        raise ManifestError("manifest lists no jobs", path=path)
    return _jobs_from_rows(path, rows, Path(out_dir))


def single_job(audio: str | Path, avatar: str | Path, output: str | Path) -> Job:
    """The one-job form (`--audio A --avatar V -o OUT.mp4`): the caller chose the output path itself."""
    output = Path(output)
    return Job(id=_slug(output.stem), audio=Path(audio), avatar=Path(avatar), output=output)


def jobs_from_dicts(items: list[dict[str, str]], out_dir: str | Path, source: str = "jobs") -> list[Job]:
    """Jobs from dicts with a manifest's keys (the Python API), checked by the same rules as a manifest's rows.

    Relative paths are relative to the current folder; errors name the item as `source:N` (N from 1)."""
    path = Path(source)
    rows = []
    for number, item in enumerate(items, start=1):
        _check_keys(path, number, list(item))
        rows.append(_Row(number, {k: (v or "").strip() for k, v in item.items()}))
    return _jobs_from_rows(path, rows, Path(out_dir)) if rows else []


def _looks_like_jsonl(path: Path, text: str) -> bool:
    if path.suffix.lower() in (".jsonl", ".ndjson", ".json"):
        return True
    if path.suffix.lower() == ".csv":
        return False
    return text.lstrip().startswith("{")


def _csv_rows(path: Path, text: str) -> list[_Row]:
    lines = text.splitlines()
    reader = csv.reader(lines)
    try:
        header = [h.strip().lower() for h in next(reader)]
    except StopIteration:
        raise ManifestError("manifest is empty", path=path) from None
    _check_keys(path, 1, header)
    missing = [k for k in ("audio", "avatar") if k not in header]
    if missing:
        raise ManifestError(f"{path}:1: header lacks the {missing[0]!r} column", path=path)
    rows = []
    for values in reader:
        line = reader.line_num
        if not any(v.strip() for v in values) or values[0].lstrip().startswith("#"):
            continue
        if len(values) != len(header):
            raise ManifestError(
                f"{path}:{line}: expected {len(header)} columns ({','.join(header)}), found {len(values)}",
                path=path,
            )
        rows.append(_Row(line, {k: v.strip() for k, v in zip(header, values, strict=True)}))
    return rows


def _jsonl_rows(path: Path, text: str) -> list[_Row]:
    rows = []
    for line, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip() or raw.lstrip().startswith("#"):
            continue
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ManifestError(f"{path}:{line}: not valid JSON ({exc.msg})", path=path) from None
        if not isinstance(obj, dict):
            raise ManifestError(f"{path}:{line}: each line must be a JSON object", path=path)
        _check_keys(path, line, list(obj))
        bad = [k for k, v in obj.items() if v is not None and not isinstance(v, str)]
        if bad:
            raise ManifestError(f"{path}:{line}: {bad[0]!r} must be a string", path=path)
        rows.append(_Row(line, {k: (v or "").strip() for k, v in obj.items()}))
    return rows


def _check_keys(path: Path, line: int, keys: list[str]) -> None:
    unknown = [k for k in keys if k not in KNOWN_KEYS]
    if unknown:
        raise ManifestError(
            f"{path}:{line}: unknown column {unknown[0]!r} (expected {', '.join(KNOWN_KEYS)})", path=path
        )


def _jobs_from_rows(path: Path, rows: list[_Row], out_dir: Path) -> list[Job]:
    base = path.parent
    ids = _unique_ids(path, rows)
    jobs, outputs = [], {}
    for row, job_id in zip(rows, ids, strict=True):
        audio, avatar = _required(path, row, "audio"), _required(path, row, "avatar")
        output = _safe_output(path, row, out_dir, row.fields.get("output") or f"{job_id}.mp4")
        if output in outputs:
            raise ManifestError(
                f"{path}:{row.line}: output {output} is also written by line {outputs[output]}", path=path
            )
        outputs[output] = row.line
        jobs.append(Job(id=job_id, audio=base / audio, avatar=base / avatar, output=output))
    return jobs


def _required(path: Path, row: _Row, key: str) -> str:
    value = row.fields.get(key, "")
    if not value:
        raise ManifestError(f"{path}:{row.line}: {key!r} is missing or empty", path=path)
    return value


def _unique_ids(path: Path, rows: list[_Row]) -> list[str]:
    """Given ids must be unique; missing ones come from the audio stem, suffixed -2, -3, ... if taken."""
    given = {}
    for row in rows:
        job_id = row.fields.get("id", "")
        if not job_id:
            continue
        if _slug(job_id) != job_id:
            raise ManifestError(
                f"{path}:{row.line}: id {job_id!r} may only use letters, digits, '.', '_', '-'", path=path
            )
        if job_id in given:
            raise ManifestError(f"{path}:{row.line}: id {job_id!r} already used on line {given[job_id]}", path=path)
        given[job_id] = row.line
    taken, ids = set(given), []
    for row in rows:
        job_id = row.fields.get("id") or _derive_id(row, taken)
        taken.add(job_id)
        ids.append(job_id)
    return ids


def _derive_id(row: _Row, taken: set[str]) -> str:
    stem = _slug(Path(row.fields.get("audio", "")).stem) or "job"
    candidate, n = stem, 1
    while candidate in taken:
        n += 1
        candidate = f"{stem}-{n}"
    return candidate


def _slug(text: str) -> str:
    return _ID_CHARS.sub("_", text).strip("._") if text not in (".", "..") else ""


def _safe_output(path: Path, row: _Row, out_dir: Path, output: str) -> Path:
    """`out_dir/output`, refused when it would land outside out_dir (after resolving symlinks)."""
    candidate = Path(output)
    root = out_dir.resolve()
    target = (root / candidate).resolve()
    if candidate.is_absolute() or not target.is_relative_to(root) or target == root:
        raise ManifestError(
            f"{path}:{row.line}: output {output!r} would be written outside {out_dir}",
            path=path,
            hint="give outputs as plain file names inside the output folder",
        )
    if target.suffix.lower() != ".mp4":
        raise ManifestError(f"{path}:{row.line}: output {output!r} must end in .mp4", path=path)
    return target


def file_digest(path: Path) -> str:
    """sha256 of a file's content, streamed. Remembered per (file, size, mtime): a batch of many jobs on one
    avatar hashes it once per process, not once per job for the fingerprint and again for the face cache."""
    stat = os.stat(path)
    return _digest(os.fspath(path), stat.st_ino, stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=256)
def _digest(path: str, inode: int, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def input_fingerprint(job: Job, settings: dict) -> str | None:
    """Hash of both inputs' content and the settings shaping the output; None if an input is unreadable."""
    h = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode())
    try:
        for p in (job.audio, job.avatar):
            h.update(file_digest(p).encode())
    except OSError:
        return None
    return h.hexdigest()[:32]
