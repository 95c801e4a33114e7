"""/v1/events: Server-Sent Events, one `data:` line per event, the same JSON objects as `--progress json`."""

from __future__ import annotations

import asyncio
import json

from fastapi import APIRouter, Depends, Request
from fastapi.responses import StreamingResponse

from dhgen.service.auth import require_token
from dhgen.service.hub import END

KEEPALIVE_S = 15.0  # a comment line this often, so proxies keep an idle stream open

router = APIRouter(tags=["events"], dependencies=[Depends(require_token)])


@router.get(
    "/v1/events",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}}},
    summary="Every event from now on (job_started, job_progress, incident, job_finished, worker_*), as SSE",
)
async def stream(request: Request) -> StreamingResponse:
    hub = request.app.state.service.engine.hub
    queue = hub.subscribe()

    async def body():
        try:
            yield ": connected\n\n"
            while True:
                try:
                    event = await asyncio.wait_for(queue.get(), KEEPALIVE_S)
                except TimeoutError:
                    yield ": keep-alive\n\n"
                    continue
                if event is END:
                    return
                yield f"data: {json.dumps(event, ensure_ascii=False, default=str)}\n\n"
        finally:
            hub.unsubscribe(queue)

    return StreamingResponse(
        body(), media_type="text/event-stream", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    )
