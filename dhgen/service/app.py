"""The service as a whole (`Service`: the state folder's lock, the store, the engine) and the FastAPI app over it
(`create_app`): routers per resource (`routes/`), auth as a dependency, errors as `{error: {type, message, hint}}`.
The web layer only translates: jobs are the runner's jobs, records its records, events its events."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import re
import shutil
import uuid
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from dhgen import __version__
from dhgen.checks import folder_problem
from dhgen.errors import BUG_HINT, DhgenError, ManifestError, UsageError
from dhgen.executors import make_executor
from dhgen.hosts import is_loopback_host
from dhgen.locks import RunLock
from dhgen.options import RenderOptions, RunOptions
from dhgen.runner import checked_options
from dhgen.service.engine import Engine, field_error, job_of
from dhgen.service.errors import Invalid, ServiceError
from dhgen.service.inputs import UPLOAD_FIELDS, input_path
from dhgen.service.options import ServiceOptions
from dhgen.service.schemas import JobRequest
from dhgen.service.store import JobRow, Store

log = logging.getLogger(__name__)

MAX_ID = 128  # characters of a job id (it names files)
TOKEN_HINT = "pass --token TOKEN (or set DHGEN_TOKEN): clients then send `Authorization: Bearer TOKEN`"


class Service:
    """What a server runs on; a context manager (the lock is held and the executor runs while inside)."""

    def __init__(self, options: ServiceOptions, render: RenderOptions, run: RunOptions) -> None:
        self.options = options
        self.render_options = render
        self.run = dataclasses.replace(run, out_dir=options.out_dir, log_path=None, resume=False)
        self.store: Store | None = None
        self.engine: Engine | None = None
        self._lock = RunLock(options.state)

    def __enter__(self) -> Service:
        check_service_options(self.options)
        resolved = checked_options(self.render_options, self.run)
        for folder in (self.options.out_dir, self.options.uploads_dir):
            folder.mkdir(parents=True, exist_ok=True)
        self._lock.__enter__()
        try:
            self.store = Store(self.options.store_path)
            self.engine = Engine(
                self.store,
                self.render_options,
                self.run,
                self.options.max_queue,
                lambda: make_executor(resolved, self.run),
            )
            self.engine.start()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc_info) -> None:
        if self.engine is not None:
            self.engine.stop()
        if self.store is not None:
            self.store.close()
        self._lock.__exit__(*exc_info)

    def submit(self, given: dict, uploaded: dict[str, Path], uploads: Path | None = None) -> tuple[JobRow, bool]:
        """Take a job: `given` its fields (manifest keys; `audio`/`avatar` paths unless `uploaded`); `uploads` the
        folder of its uploaded files, removed unless the job is created. The row, and whether it is new."""
        created = False
        try:
            row, created = self.engine.submit(self._fields(given, uploaded), str(uploads) if uploads else None)
        except ManifestError as exc:
            raise Invalid(field_error(exc), hint=exc.hint) from None
        finally:
            if uploads is not None and not created:
                shutil.rmtree(uploads, ignore_errors=True)
        return row, created

    def _fields(self, given: dict, uploaded: dict[str, Path]) -> dict:
        fields = {k: v for k, v in given.items() if v is not None and v != ""}
        if "output" in fields:
            raise Invalid(
                "'output' is not a field of a service job: its output is STATE/outputs/<id>.mp4",
                hint="leave output out, and download the MP4 from GET /v1/jobs/<id>/output",
            )
        fields["id"] = self._job_id(fields.get("id"))
        for role in UPLOAD_FIELDS:
            path = uploaded.get(role) or input_path(fields.get(role), self.options.input_root, role)
            fields[role] = str(path)
        return fields

    def _job_id(self, given) -> str:
        """A given id, checked as a manifest checks it and kept as given (or refused), else a new one."""
        if given is None:
            return uuid.uuid4().hex
        if not isinstance(given, str) or len(given) > MAX_ID:
            raise Invalid(f"id must be a string of at most {MAX_ID} characters")
        try:
            job = job_of({"id": given, "audio": "a", "avatar": "v"}, self.run.out_dir)
        except ManifestError as exc:
            raise Invalid(field_error(exc), hint=exc.hint) from None
        if job.id != given:
            raise Invalid(f"id {given!r} would be {job.id!r}", hint=f"submit it as {job.id!r}")
        return given


def check_service_options(options: ServiceOptions) -> None:
    """UsageError for options a server must not start with."""
    if not is_loopback_host(options.host) and not options.token:
        raise UsageError(f"--host {options.host} is not a loopback address, and no --token was given", hint=TOKEN_HINT)
    if options.token is not None and not re.fullmatch(r"[\x21-\x7e]{16,}", options.token):
        raise UsageError(
            "--token must be at least 16 printable characters without spaces", hint="e.g. `openssl rand -hex 32`"
        )
    problem = folder_problem(options.state)
    if problem:
        raise UsageError(f"--state {problem}", hint="give a folder this user can write (it is created if missing)")
    root = options.input_root
    if root is not None and not root.is_dir():
        raise UsageError(f"--input-root {root} is not a folder", hint="give the folder that holds the inputs")
    if options.max_queue < 1 or options.max_upload < 1 or options.drain_timeout < 0:
        raise UsageError("--max-queue and --max-upload must be at least 1, --drain-timeout at least 0")


def create_app(service: Service) -> FastAPI:
    """The FastAPI app over an entered `Service`."""
    from dhgen.service.routes import events, health, heygem, jobs

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        service.engine.hub.bind(asyncio.get_running_loop())
        yield
        await asyncio.to_thread(service.engine.stop)

    app = FastAPI(
        title="dhgen",
        version=__version__,
        summary="Lip-synced talking-head videos, rendered by dhgen's supervised renderer",
        lifespan=lifespan,
    )
    app.state.service = service
    for router in (jobs.router, events.router, health.router, heygem.router):
        app.include_router(router)
    app.add_exception_handler(DhgenError, _dhgen_error)
    app.add_exception_handler(RequestValidationError, _invalid_request)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)
    app.openapi = _with_job_request(app.openapi)
    return app


def _with_job_request(openapi):
    """POST /v1/jobs reads its body itself (JSON or multipart), so its JSON schema is added to the components."""

    def schema() -> dict:
        document = openapi()
        components = document.setdefault("components", {}).setdefault("schemas", {})
        components.setdefault("JobRequest", JobRequest.model_json_schema(ref_template="#/components/schemas/{model}"))
        return document

    return schema


def error_response(status: int, type_name: str, message: str, hint: str, headers=None) -> JSONResponse:
    body = {"error": {"type": type_name, "message": message, "hint": hint}}
    return JSONResponse(body, status_code=status, headers=headers)


async def _dhgen_error(request: Request, exc: DhgenError) -> JSONResponse:
    status = exc.status if isinstance(exc, ServiceError) else 422
    headers = exc.headers if isinstance(exc, ServiceError) else None
    return error_response(status, exc.type_name, exc.message, exc.hint, headers)


async def _invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
    first = exc.errors()[0] if exc.errors() else {}
    where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
    message = f"{where}: {first.get('msg', 'invalid request')}" if where else first.get("msg", "invalid request")
    return error_response(422, "Invalid", message, "see /docs for the request's shape")


async def _http_error(request: Request, exc: HTTPException) -> JSONResponse:
    names = {404: "NotFound", 405: "MethodNotAllowed"}
    message = str(exc.detail) if exc.detail else f"HTTP {exc.status_code}"
    hint = "see /docs for the endpoints" if exc.status_code in names else "see the message"
    return error_response(exc.status_code, names.get(exc.status_code, "HTTPError"), message, hint, exc.headers)


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unexpected error in %s %s", request.method, request.url.path)
    return error_response(500, type(exc).__name__, str(exc) or repr(exc), BUG_HINT)
