"""/healthz (the process answers; no token needed), /readyz (workers up with the model loaded, taking jobs) and
/metrics (Prometheus text: the metrics file's names, counted since the server started)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, PlainTextResponse

from dhgen.service.auth import require_token
from dhgen.service.schemas import Ready

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="The server answers")
def healthz() -> dict:
    return {"status": "ok"}


@router.get(
    "/readyz",
    response_model=Ready,
    responses={503: {"model": Ready}},
    dependencies=[Depends(require_token)],
    summary="Ready (200): workers up, model loaded, taking jobs; else 503",
)
def readyz(request: Request):
    engine = request.app.state.service.engine
    ready = Ready(
        ready=engine.ready,
        draining=engine.draining,
        workers=engine.workers(),
        jobs=request.app.state.service.store.counts(),
        error=engine.fatal,
    )
    return JSONResponse(ready.model_dump(), status_code=200 if ready.ready else 503)


@router.get(
    "/metrics",
    response_class=PlainTextResponse,
    dependencies=[Depends(require_token)],
    summary="Prometheus text exposition",
)
def metrics(request: Request) -> PlainTextResponse:
    text = request.app.state.service.engine.metrics_text()
    return PlainTextResponse(text, media_type="text/plain; version=0.0.4")
