"""/v1/jobs: submit (JSON with paths, or multipart with uploads), look up, list, cancel or delete, download."""

from __future__ import annotations

import json
import shutil

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import FileResponse
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from dhgen.service.auth import require_token
from dhgen.service.errors import Conflict, Invalid, NotFound
from dhgen.service.inputs import new_upload_folder, receive_form
from dhgen.service.schemas import UPLOAD_SCHEMA, ErrorResponse, Job, JobPage, JobRequest
from dhgen.service.store import STATUSES, JobRow

CANCEL_WAIT_S = 10.0  # DELETE waits this long for a running job's process to be stopped
PAGE = 100  # jobs per page, at most
ERRORS = {code: {"model": ErrorResponse} for code in (401, 403, 404, 409, 413, 422, 429, 503)}
SETTING_NAMES = ("id", "audio", "avatar")

router = APIRouter(prefix="/v1/jobs", tags=["jobs"], dependencies=[Depends(require_token)], responses=ERRORS)


@router.post(
    "",
    status_code=201,
    response_model=Job,
    summary="Submit a job (201), or get the job already submitted under its id with the same inputs (200)",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": {"$ref": "#/components/schemas/JobRequest"}},
                "multipart/form-data": {"schema": UPLOAD_SCHEMA},
            },
        }
    },
)
async def submit(request: Request, response: Response) -> Job:
    service = request.app.state.service
    if request.headers.get("content-type", "").startswith("multipart/form-data"):
        folder = new_upload_folder(service.options.uploads_dir)
        try:
            fields, files = await receive_form(request, folder, service.options.max_upload)
        except BaseException:
            await run_in_threadpool(shutil.rmtree, folder, True)
            raise
        row, created = await run_in_threadpool(service.submit, fields, files, folder)
    else:
        row, created = await run_in_threadpool(service.submit, await _json_fields(request), {})
    response.status_code = 201 if created else 200
    return view(service, row)


@router.get("", response_model=JobPage, summary="Jobs in submission order, a page at a time")
def list_jobs(
    request: Request,
    status: str | None = Query(None, description="only jobs with this status"),
    after: str | None = Query(None, description="the `next` of the previous page"),
    limit: int = Query(PAGE, ge=1, le=PAGE),
) -> JobPage:
    if status is not None and status not in STATUSES:
        raise Invalid(f"status {status!r} is not one of {', '.join(STATUSES)}")
    if after is not None and not after.isdigit():
        raise Invalid(f"after {after!r} is not a page cursor", hint="pass the `next` of the previous page")
    service = request.app.state.service
    rows = service.store.page(status, int(after or 0), limit)
    more = len(rows) == limit and bool(service.store.page(status, rows[-1].seq, 1))
    return JobPage(jobs=[view(service, row) for row in rows], next=str(rows[-1].seq) if more else None)


@router.get("/{job_id}", response_model=Job, summary="A job: status, live counters, incidents, record")
def get_job(request: Request, job_id: str) -> Job:
    service = request.app.state.service
    return view(service, _row(service, job_id))


@router.delete(
    "/{job_id}",
    response_model=Job,
    responses={202: {"model": Job, "description": "cancelling: its process is being stopped"}, 204: {}},
    summary="Cancel a queued or running job (200: now cancelled); delete a finished one and its output (204)",
)
def delete_job(request: Request, response: Response, job_id: str):
    service = request.app.state.service
    row = service.engine.cancel(job_id, CANCEL_WAIT_S)
    if row is None:
        return Response(status_code=204)
    response.status_code = 202 if row.active else 200
    return view(service, row)


@router.get(
    "/{job_id}/output",
    response_class=FileResponse,
    responses={200: {"content": {"video/mp4": {}}}, 206: {"content": {"video/mp4": {}}}},
    summary="The job's MP4 (Range requests welcome)",
)
def output(request: Request, job_id: str) -> FileResponse:
    service = request.app.state.service
    row = _row(service, job_id)
    if row.status != "succeeded":
        raise Conflict(f"job {job_id} is {row.status}: it has no output", hint="wait for status succeeded")
    path = row.record["output"]
    return FileResponse(path, media_type="video/mp4", filename=f"{job_id}.mp4", content_disposition_type="inline")


def view(service, row: JobRow) -> Job:
    """The API's job: the stored row, with its live counters while it runs."""
    fields, record = row.fields, row.record or {}
    live = (service.engine.live(row.id) or {}) if row.status == "running" else _counters(record)
    settings = {k: v for k, v in fields.items() if k not in SETTING_NAMES and not k.lower().startswith("x_")}
    return Job(
        id=row.id,
        status=row.status,
        submitted_at=row.submitted_at,
        started_at=row.started_at,
        finished_at=row.finished_at,
        attempts=row.attempts,
        audio=fields["audio"],
        avatar=fields["avatar"],
        output=record.get("output") or str(service.run.out_dir / f"{row.id}.mp4"),
        output_url=f"/v1/jobs/{row.id}/output" if row.status == "succeeded" else None,
        settings=settings,
        meta={k: v for k, v in fields.items() if k.lower().startswith("x_")},
        progress=percent(row.status, live),
        **{k: live.get(k) for k in ("total", "decoded", "inferred", "encoded", "fps", "last_progress_at", "pid")},
        node=live.get("node"),
        incidents=row.errors,
        error=record.get("error"),
        record=row.record,
    )


def _counters(record: dict) -> dict:
    """A finished job's frames, as the counters of a job that rendered them all."""
    frames = record.get("frames")
    return dict.fromkeys(("total", "decoded", "inferred", "encoded"), frames) if frames is not None else {}


def percent(status: str, live: dict) -> int:
    """0-100 from the frames encoded (100 once succeeded; 99 at most before)."""
    if status == "succeeded":
        return 100
    total, encoded = live.get("total") or 0, live.get("encoded") or 0
    return min(99, encoded * 100 // total) if total else 0


def _row(service, job_id: str) -> JobRow:
    row = service.store.get(job_id)
    if row is None:
        raise NotFound(f"no job {job_id}")
    return row


async def _json_fields(request: Request) -> dict:
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise Invalid("the body is not JSON", hint="send a JSON object, or multipart/form-data with uploads") from None
    try:
        return JobRequest.model_validate(body).model_dump(exclude_none=True)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise Invalid(f"{where}: {first['msg']}" if where else first["msg"]) from None
