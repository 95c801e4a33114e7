"""HeyGem's task API (`POST /easy/submit`, `GET /easy/query?code=`), so a client written for HeyGem's face2face
service works unchanged. Its envelope: `{code, success, msg, data}` with code 10000 ok, 10001 busy (here: the queue
is full), 10002 bad parameter, 10004 not found, 9999 system error; `data.status` 1 queued or running, 2 done
(`result`: the output's path on the server), 3 failed or cancelled (`msg`: the typed error and its hint). Unlike
HeyGem's: submits are queued (never "busy" below --max-queue), a finished task stays queryable, a failure says why.
"""

from __future__ import annotations

import logging

from fastapi import APIRouter, Depends, Query, Request
from starlette.concurrency import run_in_threadpool

from dhgen.errors import DhgenError
from dhgen.service.auth import require_token
from dhgen.service.errors import QueueFull, Unavailable
from dhgen.service.routes.jobs import percent
from dhgen.service.schemas import HeyGemReply, HeyGemSubmit

OK, BUSY, BAD_PARAMETER, NOT_FOUND, SYSTEM_ERROR = 10000, 10001, 10002, 10004, 9999
RUNNING, DONE, FAILED = 1, 2, 3

log = logging.getLogger(__name__)
router = APIRouter(prefix="/easy", tags=["HeyGem"], dependencies=[Depends(require_token)])


def reply(code: int, msg: str = "", data: dict | None = None) -> HeyGemReply:
    return HeyGemReply(
        code=code, success=code == OK, msg=msg or ("success" if code == OK else "error"), data=data or {}
    )


@router.post("/submit", response_model=HeyGemReply, summary="HeyGem: submit a task (audio_url, video_url, code)")
async def submit(request: Request, body: HeyGemSubmit) -> HeyGemReply:
    service = request.app.state.service
    code = str(body.code) if isinstance(body.code, int) and not isinstance(body.code, bool) else body.code
    fields = {"id": code, "audio": body.audio_url, "avatar": body.video_url}
    try:
        row, _ = await run_in_threadpool(service.submit, fields, {})
    except QueueFull as exc:
        return reply(BUSY, f"{exc.message}; retry in {exc.headers['Retry-After']}s")
    except Unavailable as exc:
        return reply(SYSTEM_ERROR, exc.message)
    except DhgenError as exc:
        return reply(BAD_PARAMETER, f"{exc.type_name}: {exc.message} (hint: {exc.hint})")
    return reply(OK, data={"code": row.id})


@router.get("/query", response_model=HeyGemReply, summary="HeyGem: a task's status, progress and result")
def query(request: Request, code: str | None = Query(None, description="the task's code (its job id)")) -> HeyGemReply:
    service = request.app.state.service
    if not code:
        return reply(BAD_PARAMETER, "code is missing")
    row = service.store.get(code)
    if row is None:
        return reply(NOT_FOUND, f"no task {code}")
    live = (service.engine.live(row.id) or {}) if row.status == "running" else {}
    data = {"code": row.id, "status": RUNNING, "progress": percent(row.status, live), "result": "", "msg": ""}
    if row.status == "succeeded":
        data.update(status=DONE, result=row.record["output"])
    elif row.status in ("failed", "cancelled"):
        error = row.record["error"] or {}
        data.update(status=FAILED, msg=f"{error.get('type')}: {error.get('message')} (hint: {error.get('hint')})")
    return reply(OK, data=data)
