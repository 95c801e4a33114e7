"""Manifests: read a CSV or JSON Lines file of jobs into validated `Job`s with safe output paths (and write one).

A manifest may come from someone else, so every output must land inside the output folder: `../`, absolute
paths and symlinks that lead out are refused. Input files are not opened here (a missing one fails its own job
later, so the rest of the batch still renders); only the manifest's own shape and its per-job settings are
checked, each error with file:line and a hint for that error.
"""

from __future__ import annotations

import csv
import difflib
import functools
import hashlib
import io
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from dhgen.encoders import CRF_RANGE, X264_PRESETS
from dhgen.errors import ManifestError, reason
from dhgen.files import replace_atomically
from dhgen.options import FACE_CHOICE_HINT, LOOP_MODES, JobSettings, face_choice

KNOWN_KEYS = ("id", "audio", "avatar", "output")
SETTING_KEYS = ("loop", "fps", "crf", "preset", "pads", "face")  # a job's own settings, over the command line's
ALL_KEYS = KNOWN_KEYS + SETTING_KEYS
USER_PREFIX = "x_"  # columns of the user's own (a customer id, say): kept in the record, never interpreted
JSONL_SUFFIXES = (".jsonl", ".ndjson", ".json")
_ID_CHARS = re.compile(r"[^\w.-]+")  # ids become file names: letters (any script), digits, . _ -

UNKNOWN_COLUMN_HINT = "a column of your own must start with x_ (x_customer, say): it is kept in the record"
ID_HINT = "ids name the output files: letters, digits, '.', '_' and '-' (spaces become '_'), not first or last '.'/'_'"
QUOTE_HINT = 'put a value that contains a comma in double quotes: "my, file.wav"'
DELIMITER_HINT = "dhgen reads comma-separated CSV: save the sheet as CSV with ',' as the delimiter, or use JSON Lines"
JSONL_IN_CSV_HINT = "name the file .jsonl (a .csv file is read as CSV), or write CSV with the header id,audio,avatar"
JSON_LINE_HINT = 'each line is one JSON object, like {"id": "a", "audio": "a.wav", "avatar": "face.mp4"}'
MAGIC = {  # the first bytes of files people pass by mistake instead of a manifest
    b"PK\x03\x04": "a zip archive (an .xlsx or .ods workbook?)",
    b"RIFF": "a RIFF file (WAV audio or AVI video?)",
    b"ID3": "an MP3 file",
    b"\x89PNG": "a PNG image",
    b"\xff\xd8\xff": "a JPEG image",
    b"\x1aE\xdf\xa3": "a Matroska/WebM video",
    b"OggS": "an Ogg file",
    b"fLaC": "a FLAC file",
}


@dataclass(frozen=True)
class Job:
    id: str
    audio: Path
    avatar: Path
    output: Path
    settings: JobSettings = JobSettings()  # the row's own loop/fps/crf/preset/pads/face
    meta: tuple[tuple[str, object], ...] = field(default=(), hash=False)  # the row's x_ columns, in order


@dataclass(frozen=True)
class _Row:
    line: int
    fields: dict


class _BadValue(Exception):
    def __init__(self, problem: str, hint: str) -> None:
        super().__init__(problem)
        self.problem, self.hint = problem, hint


def read_manifest(path: str | Path, out_dir: str | Path) -> list[Job]:
    """Jobs of a CSV (`id,audio,avatar[,output]`) or JSONL manifest; ManifestError names file:line."""
    path = Path(path)
    text = _read_text(path)
    rows = _jsonl_rows(path, text) if _looks_like_jsonl(path, text) else _csv_rows(path, text)
    if not rows:
        raise ManifestError("manifest lists no jobs", path=path, hint="add one line per job below the header")
    return _jobs_from_rows(path, rows, Path(out_dir))


def single_job(audio: str | Path, avatar: str | Path, output: str | Path) -> Job:
    """The one-job form (`--audio A --avatar V -o OUT.mp4`): the caller chose the output path itself."""
    output = Path(output)
    return Job(id=_slug(output.stem), audio=Path(audio), avatar=Path(avatar), output=output)


def jobs_from_dicts(items: list[dict], out_dir: str | Path, source: str = "jobs") -> list[Job]:
    """Jobs from dicts with a manifest's keys (the Python API), checked by the same rules as a manifest's rows.

    Relative paths are relative to the current folder; errors name the item as `source:N` (N from 1)."""
    path = Path(source)
    rows = [_object_row(path, number, item) for number, item in enumerate(items, start=1)]
    return _jobs_from_rows(path, rows, Path(out_dir)) if rows else []


# --- the file: text, format --------------------------------------------------------------------------------------


def _read_text(path: Path) -> str:
    """The manifest's text; a file that is not UTF-8 text says what it looks like instead."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        hint = "check the manifest's path"
        raise ManifestError(f"cannot read manifest: {reason(exc)}", path=path, hint=hint) from exc
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise ManifestError(
            f"{path}:1: is UTF-16 text", path=path, hint="save it as UTF-8 (in a spreadsheet: 'CSV UTF-8')"
        )
    kind = next((name for magic, name in MAGIC.items() if data.startswith(magic)), None)
    if kind or b"\x00" in data:
        line = data.count(b"\n", 0, max(data.find(b"\x00"), 0)) + 1 if not kind else 1
        raise ManifestError(
            f"{path}:{line}: is binary data ({kind or 'NUL bytes'}), not a CSV or JSON Lines manifest",
            path=path,
            hint="pass the manifest (a text file with one audio,avatar pair per line), not a media file or workbook",
        )
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise ManifestError(
            f"{path}:{line}: is not UTF-8 text (byte 0x{data[exc.start]:02x})",
            path=path,
            hint="save the manifest as UTF-8 (in a spreadsheet: 'CSV UTF-8')",
        ) from None


def _looks_like_jsonl(path: Path, text: str) -> bool:
    if path.suffix.lower() in JSONL_SUFFIXES:
        return True
    if path.suffix.lower() == ".csv":
        return False
    return text.lstrip().startswith("{")


def _content_lines(text: str):
    """(line number, line) of the lines that are neither blank nor comments."""
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip() and not line.lstrip().startswith("#"):
            yield number, line


# --- CSV ---------------------------------------------------------------------------------------------------------


def _csv_rows(path: Path, text: str) -> list[_Row]:
    first = next(_content_lines(text), None)
    if first is None:
        raise ManifestError("manifest is empty", path=path, hint="the first line names the columns: id,audio,avatar")
    header_line, raw_header = first
    if raw_header.lstrip().startswith("{"):
        raise ManifestError(f"{path}:{header_line}: this is JSON Lines, not CSV", path=path, hint=JSONL_IN_CSV_HINT)
    lines = text.splitlines()
    reader = csv.reader(lines[header_line - 1 :])
    header = _csv_header(path, header_line, next(reader), raw_header)
    rows = []
    for values in reader:
        line = header_line - 1 + reader.line_num
        if not any(v.strip() for v in values) or values[0].lstrip().startswith("#"):
            continue
        if len(values) != len(header):
            raise ManifestError(
                f"{path}:{line}: expected {len(header)} columns ({','.join(header)}), found {len(values)}",
                path=path,
                hint=QUOTE_HINT,
            )
        rows.append(_Row(line, {k: v.strip() for k, v in zip(header, values, strict=True)}))
    return rows


def _csv_header(path: Path, line: int, names: list[str], raw: str) -> list[str]:
    delimiter = next((d for d in (";", "\t", "|") if d in raw), None)
    if len(names) == 1 and delimiter:
        shown = {";": "semicolons (;)", "\t": "tabs", "|": "bars (|)"}[delimiter]
        raise ManifestError(
            f"{path}:{line}: the header {raw.strip()!r} is a single column: this file separates columns with {shown}",
            path=path,
            hint=DELIMITER_HINT,
        )
    header = [_column_name(name) for name in names]
    _check_keys(path, line, header)
    twice = next((k for k in header if header.count(k) > 1), None)
    if twice:
        raise ManifestError(f"{path}:{line}: column {twice!r} appears twice", path=path, hint="keep one of them")
    missing = [k for k in ("audio", "avatar") if k not in header]
    if missing:
        raise ManifestError(
            f"{path}:{line}: header lacks the {missing[0]!r} column",
            path=path,
            hint="the first line names the columns: id,audio,avatar[,output]; audio and avatar are required",
        )
    return header


def _column_name(name: str) -> str:
    """Known columns in any case; a user's own x_ column keeps its spelling."""
    name = name.strip()
    return name if is_user_column(name) else name.lower()


def is_user_column(name: str) -> bool:
    """`x_...` (any case): the user's own column, copied into the record as given."""
    return name[:2].lower() == USER_PREFIX


# --- JSON Lines --------------------------------------------------------------------------------------------------


def _jsonl_rows(path: Path, text: str) -> list[_Row]:
    rows = []
    for line, raw in _content_lines(text):
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError as exc:
            hint = "this line looks like CSV: name a CSV file .csv" if "," in raw and "{" not in raw else JSON_LINE_HINT
            raise ManifestError(f"{path}:{line}: not valid JSON ({exc.msg})", path=path, hint=hint) from None
        if not isinstance(obj, dict):
            raise ManifestError(f"{path}:{line}: each line must be a JSON object", path=path, hint=JSON_LINE_HINT)
        rows.append(_object_row(path, line, obj))
    return rows


def _object_row(path: Path, line: int, obj: dict) -> _Row:
    """A JSON Lines object (or a dict given to the Python API) as a row: known keys checked, paths as strings."""
    _check_keys(path, line, list(obj))
    bad = [k for k in KNOWN_KEYS if obj.get(k) is not None and not isinstance(obj[k], str)]
    if bad:
        raise ManifestError(
            f"{path}:{line}: {bad[0]!r} must be a string", path=path, hint=f'write it in quotes: "{bad[0]}": "..."'
        )
    return _Row(line, {k: (v or "").strip() if k in KNOWN_KEYS else v for k, v in obj.items()})


def _check_keys(path: Path, line: int, keys: list[str]) -> None:
    unknown = [k for k in keys if k not in ALL_KEYS and not is_user_column(k)]
    if unknown:
        close = difflib.get_close_matches(unknown[0].lower(), ALL_KEYS, n=1, cutoff=0.6)
        guess = f" (did you mean {close[0]!r}?)" if close else ""
        raise ManifestError(
            f"{path}:{line}: unknown column {unknown[0]!r}{guess}; the known columns are {', '.join(ALL_KEYS)}",
            path=path,
            hint=UNKNOWN_COLUMN_HINT,
        )


# --- rows into jobs ----------------------------------------------------------------------------------------------


def _jobs_from_rows(path: Path, rows: list[_Row], out_dir: Path) -> list[Job]:
    base = path.parent.absolute()  # records and failed manifests then name inputs wherever they are read
    ids = _unique_ids(path, rows)
    root = out_dir.resolve()  # once, not per row: 10k rows read in a third of the time
    jobs, outputs = [], {}
    for row, job_id in zip(rows, ids, strict=True):
        audio, avatar = _required(path, row, "audio"), _required(path, row, "avatar")
        output = _safe_output(path, row, out_dir, root, row.fields.get("output") or f"{job_id}.mp4")
        if output in outputs:
            raise ManifestError(
                f"{path}:{row.line}: output {output} is also written by line {outputs[output]}",
                path=path,
                hint="give the two jobs different outputs (or ids)",
            )
        outputs[output] = row.line
        meta = tuple((k, v) for k, v in row.fields.items() if is_user_column(k))
        settings = _job_settings(path, row)
        jobs.append(Job(job_id, base / audio, base / avatar, output, settings, meta))
    return jobs


def _required(path: Path, row: _Row, key: str) -> str:
    value = row.fields.get(key, "")
    if not value:
        raise ManifestError(
            f"{path}:{row.line}: {key!r} is missing or empty", path=path, hint="every job needs an audio and an avatar"
        )
    return value


def _unique_ids(path: Path, rows: list[_Row]) -> list[str]:
    """Given ids must be unique (whitespace in them becomes '_'); missing ones come from the audio stem,
    suffixed -2, -3, ... if taken."""
    given: dict[str, int] = {}
    safe_ids = {}
    for row in rows:
        raw = row.fields.get("id", "")
        if not raw:
            continue
        job_id = _safe_id(path, row, raw)
        if job_id in given:
            shown = repr(raw) if raw == job_id else f"{raw!r} (as {job_id!r})"
            raise ManifestError(
                f"{path}:{row.line}: id {shown} already used on line {given[job_id]}",
                path=path,
                hint="give each job its own id, or leave id empty to derive one from the audio file's name",
            )
        given[job_id] = row.line
        safe_ids[row.line] = job_id
    taken, ids = set(given), []
    for row in rows:
        job_id = safe_ids.get(row.line) or _derive_id(row, taken)
        taken.add(job_id)
        ids.append(job_id)
    return ids


def _safe_id(path: Path, row: _Row, raw: str) -> str:
    """A given id, whitespace turned into '_'; any other character a file name should not have is refused."""
    job_id = re.sub(r"\s+", "_", raw)
    if _slug(job_id) == job_id:
        return job_id
    bad = _ID_CHARS.search(job_id)
    problem = f"may not use {bad.group(0)[0]!r}" if bad else "may not start or end with '.' or '_'"
    suggestion = _slug(job_id)
    hint = ID_HINT + (f"; for example {suggestion!r}" if suggestion else "")
    raise ManifestError(f"{path}:{row.line}: id {raw!r} {problem}", path=path, hint=hint)


def _derive_id(row: _Row, taken: set[str]) -> str:
    stem = _slug(Path(row.fields.get("audio", "")).stem) or "job"
    candidate, n = stem, 1
    while candidate in taken:
        n += 1
        candidate = f"{stem}-{n}"
    return candidate


def _slug(text: str) -> str:
    return _ID_CHARS.sub("_", text).strip("._") if text not in (".", "..") else ""


def _safe_output(path: Path, row: _Row, out_dir: Path, root: Path, output: str) -> Path:
    """`out_dir/output` (`root`: out_dir resolved), refused when it would land outside out_dir (after resolving
    symlinks)."""
    candidate = Path(output)
    target = (root / candidate).resolve()
    if candidate.is_absolute() or not target.is_relative_to(root) or target == root:
        raise ManifestError(
            f"{path}:{row.line}: output {output!r} would be written outside {out_dir}",
            path=path,
            hint="give outputs as plain file names inside the output folder",
        )
    if target.suffix.lower() != ".mp4":
        raise ManifestError(
            f"{path}:{row.line}: output {output!r} must end in .mp4", path=path, hint="name it like clip.mp4"
        )
    return target


# --- a job's own settings ----------------------------------------------------------------------------------------


def _job_settings(path: Path, row: _Row) -> JobSettings:
    """The row's loop/fps/crf/preset/pads/face, each checked; an empty cell (or null) leaves the command line's."""
    values = {}
    for key in SETTING_KEYS:
        raw = row.fields.get(key)
        if raw is None or (isinstance(raw, str) and not raw.strip()):
            continue
        try:
            values[key] = PARSERS[key](raw)
        except _BadValue as exc:
            raise ManifestError(f"{path}:{row.line}: {key} {raw!r} {exc.problem}", path=path, hint=exc.hint) from None
    return JobSettings(**values)


def _parse_loop(raw) -> str:
    value = raw.strip().lower() if isinstance(raw, str) else None
    if value not in LOOP_MODES:
        raise _BadValue("is not pingpong or loop", "loop is pingpong (forward, backward, ...) or loop (from the start)")
    return value


def _parse_fps(raw) -> float:
    hint = "fps is the frame rate of a still-image avatar's output: a number of at least 1, like 25 or 29.97"
    try:
        value = float(raw) if not isinstance(raw, bool) else math.nan
    except (TypeError, ValueError):
        raise _BadValue("is not a number", hint) from None
    if not math.isfinite(value) or value < 1:
        raise _BadValue("is not a frame rate of at least 1", hint)
    return value


def _parse_crf(raw) -> int:
    low, high = CRF_RANGE
    hint = f"crf is libx264's quality, a whole number {low}..{high} (lower is better; 18-28 is usual)"
    value = _whole(raw, hint)
    if not low <= value <= high:
        raise _BadValue(f"is not in {low}..{high}", hint)
    return value


def _parse_preset(raw) -> str:
    value = raw.strip().lower() if isinstance(raw, str) else None
    if value not in X264_PRESETS:
        raise _BadValue("is not a libx264 preset", f"preset is one of {', '.join(X264_PRESETS)}")
    return value


def _parse_pads(raw) -> tuple[int, int, int, int]:
    hint = "pads are four whole numbers, top bottom left right, like '0 10 0 0'"
    parts = raw if isinstance(raw, list) else re.split(r"[\s,]+", raw.strip()) if isinstance(raw, str) else []
    if len(parts) != 4:
        raise _BadValue("is not four whole numbers (top bottom left right)", hint)
    top, bottom, left, right = (_whole(p, hint) for p in parts)
    return top, bottom, left, right


def _whole(raw, hint: str) -> int:
    if isinstance(raw, int) and not isinstance(raw, bool):
        return raw
    if isinstance(raw, float) and raw.is_integer():
        return int(raw)
    if isinstance(raw, str) and re.fullmatch(r"[+-]?\d+", raw.strip()):
        return int(raw)
    raise _BadValue("is not a whole number", hint)


def _parse_face(raw) -> str:
    try:
        return face_choice(raw)
    except ValueError as exc:
        raise _BadValue(str(exc), FACE_CHOICE_HINT + '; in CSV, quote a pixel: "120,80"') from None


PARSERS = {
    "loop": _parse_loop,
    "fps": _parse_fps,
    "crf": _parse_crf,
    "preset": _parse_preset,
    "pads": _parse_pads,
    "face": _parse_face,
}


# --- writing a manifest ------------------------------------------------------------------------------------------


def write_manifest(path: str | Path, jobs: list[Job], out_dir: str | Path) -> None:
    """A manifest that renders `jobs` again into `out_dir`: CSV, or JSON Lines for .jsonl/.ndjson/.json. Ids,
    each job's own settings and x_ columns are kept; inputs are given relative to the new manifest's folder
    (absolute when they share no folder but `/`), outputs relative to `out_dir` (left out when `<id>.mp4`)."""
    path = Path(path)
    base = path.parent.absolute()
    as_jsonl = path.suffix.lower() in JSONL_SUFFIXES
    rows = [_row_of(job, base, Path(out_dir), as_jsonl) for job in jobs]
    path.parent.mkdir(parents=True, exist_ok=True)
    replace_atomically(path, (_jsonl_text(rows) if as_jsonl else _csv_text(rows)).encode())


def _row_of(job: Job, base: Path, out_dir: Path, as_jsonl: bool) -> dict:
    row = {"id": job.id, "audio": _portable(job.audio, base), "avatar": _portable(job.avatar, base)}
    output = _output_column(job, out_dir)
    if output:
        row["output"] = output
    for key, value in job.settings.given().items():
        row[key] = value if as_jsonl or key != "pads" else " ".join(map(str, value))
    row.update(job.meta)
    return row


def _portable(path: Path, base: Path) -> str:
    path = Path(path).absolute()
    if os.path.commonpath([path, base]) == path.anchor:
        return str(path)
    return os.path.relpath(path, base)


def _output_column(job: Job, out_dir: Path) -> str:
    root, target = out_dir.resolve(), Path(job.output).absolute()
    if target == root / f"{job.id}.mp4" or not target.is_relative_to(root):
        return ""
    return str(target.relative_to(root))


def _jsonl_text(rows: list[dict]) -> str:
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


def _csv_text(rows: list[dict]) -> str:
    columns = list(dict.fromkeys(["id", "audio", "avatar", *(k for row in rows for k in row)]))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, restval="", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


# --- fingerprints ------------------------------------------------------------------------------------------------


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
