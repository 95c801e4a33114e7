"""Where a job's inputs come from: a path under `--input-root`, or a file uploaded with the submit (multipart,
streamed to disk, at most `--max-upload` bytes in all). No URL is ever fetched.

A path is taken relative to the input root unless absolute; either way, once `..` and symlinks are resolved it
must lie inside the root. The job then reads the resolved path. Error messages repeat the path as given, never
the resolved one (it would tell a client about the server's folders).
"""

from __future__ import annotations

import re
import uuid
from pathlib import Path

import anyio
from python_multipart.multipart import MultipartParser, parse_options_header

from dhgen.errors import MissingInputError
from dhgen.service.errors import Invalid, Refused, TooLarge

UPLOAD_FIELDS = ("audio", "avatar")  # the file parts a submit may carry
MAX_FIELD_BYTES = 64 * 1024  # a form field that is not a file
HEADER_SLACK = 1 << 20  # multipart boundaries and part headers on top of --max-upload
URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
SUFFIX = re.compile(r"\.[A-Za-z0-9]{1,8}$")


def input_path(given, root: Path | None, role: str) -> Path:
    """The file `given` names under `root` (resolved). Invalid, Refused or MissingInputError."""
    if not isinstance(given, str) or not given.strip() or "\x00" in given:
        raise Invalid(
            f"{role} is missing or empty", hint="every job needs an audio and an avatar (a path or an upload)"
        )
    if URL.match(given):
        raise Refused(f"{role} {given!r} is a URL; dhgen serve fetches no URL")
    if root is None:
        raise Refused(
            f"{role} {given!r} is a path, but this server has no --input-root: it takes uploads only",
            hint="upload the file (multipart/form-data), or start the server with --input-root DIR",
        )
    real_root = root.resolve()
    target = (real_root / given).resolve()  # an absolute `given` replaces the root
    if not target.is_relative_to(real_root):
        raise Refused(f"{role} {given!r} lies outside the server's --input-root")
    if not target.is_file():
        raise MissingInputError(
            f"{role} {given!r} is not a file under the server's --input-root",
            hint="give the path relative to --input-root (or absolute, inside it)",
        )
    return target


def new_upload_folder(uploads: Path) -> Path:
    folder = uploads / uuid.uuid4().hex
    folder.mkdir(parents=True)
    return folder


async def receive_form(request, folder: Path, max_bytes: int) -> tuple[dict[str, str], dict[str, Path]]:
    """The fields and uploaded files (`audio`, `avatar`) of a multipart/form-data request, the files streamed into
    `folder`. TooLarge beyond `max_bytes` (by Content-Length before reading, else while reading); Invalid for a
    body that is not such a form."""
    _, params = parse_options_header(request.headers.get("content-type"))
    boundary = params.get(b"boundary")
    if not boundary:
        raise Invalid("a multipart/form-data body needs a boundary in its Content-Type")
    length = request.headers.get("content-length")
    if length and length.isdigit() and int(length) > max_bytes + HEADER_SLACK:
        raise TooLarge(f"the upload is {int(length)} bytes; this server takes at most {max_bytes}")
    form = _Form(folder, max_bytes)
    parser = MultipartParser(boundary, form.callbacks())
    try:
        async for chunk in request.stream():
            await anyio.to_thread.run_sync(parser.write, chunk)
        parser.finalize()
    except (TooLarge, Invalid):
        raise
    except Exception as exc:  # noqa: BLE001 - python-multipart's parse errors: the body is no form
        raise Invalid(f"the multipart body cannot be read: {exc}") from None
    finally:
        form.close()
    return form.fields, form.files


class _Form:
    """python-multipart's callbacks: file parts go to files in `folder`, other parts into `fields`."""

    def __init__(self, folder: Path, max_bytes: int) -> None:
        self.folder, self.max_bytes = folder, max_bytes
        self.fields: dict[str, str] = {}
        self.files: dict[str, Path] = {}
        self._received = 0
        self._headers: dict[str, str] = {}
        self._header = [b"", b""]
        self._name: str | None = None
        self._file = None
        self._buffer = bytearray()

    def callbacks(self) -> dict:
        return {
            "on_part_begin": self._begin,
            "on_header_field": lambda data, start, end: self._add_header(0, data[start:end]),
            "on_header_value": lambda data, start, end: self._add_header(1, data[start:end]),
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": self._data,
            "on_part_end": self._end,
        }

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def _begin(self) -> None:
        self._headers, self._name, self._buffer = {}, None, bytearray()

    def _add_header(self, index: int, data: bytes) -> None:
        self._header[index] += data

    def _header_end(self) -> None:
        name, value = (part.decode("latin-1") for part in self._header)
        self._headers[name.strip().lower()] = value.strip()
        self._header = [b"", b""]

    def _headers_finished(self) -> None:
        _, params = parse_options_header(self._headers.get("content-disposition", ""))
        self._name = params.get(b"name", b"").decode("utf-8", "replace")
        filename = params.get(b"filename")
        if filename is None:
            return
        if self._name not in UPLOAD_FIELDS or self._name in self.files:
            raise Invalid(f"unexpected file part {self._name!r}", hint="upload at most one 'audio' and one 'avatar'")
        suffix = SUFFIX.search(filename.decode("utf-8", "replace"))
        path = self.folder / (self._name + (suffix.group(0).lower() if suffix else ""))
        self.files[self._name] = path
        self._file = open(path, "wb")  # noqa: SIM115 - closed at the part's end (or by close())

    def _data(self, data: bytes, start: int, end: int) -> None:
        self._received += end - start
        if self._received > self.max_bytes:
            raise TooLarge(f"the upload is larger than this server takes ({self.max_bytes} bytes)")
        if self._file is not None:
            self._file.write(data[start:end])
            return
        self._buffer += data[start:end]
        if len(self._buffer) > MAX_FIELD_BYTES:
            raise Invalid(f"form field {self._name!r} is longer than {MAX_FIELD_BYTES} bytes")

    def _end(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        elif self._name:
            self.fields[self._name] = self._buffer.decode("utf-8", "replace")
