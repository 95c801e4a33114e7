"""The API's shapes as pydantic models: OpenAPI (/docs, /openapi.json) is generated from them.

A submit's per-job fields are the manifest's columns (`dhgen.manifest.SETTING_KEYS` and `x_...`), checked by the
manifest's own code, so a column added there is a field here too (typed as "any" until described below).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model

from dhgen.manifest import SETTING_KEYS

Status = Literal["queued", "running", "succeeded", "failed", "cancelled"]

# The JSON schema of the manifest's per-job columns (values are checked by the manifest's parsers, not pydantic).
SETTING_SCHEMAS = {
    "loop": {"type": "string", "enum": ["pingpong", "loop"], "description": "how a short avatar is extended"},
    "fps": {"type": "number", "minimum": 1, "description": "frame rate of a still-image avatar's output"},
    "crf": {"type": "integer", "minimum": 0, "maximum": 51, "description": "quality on x264's CRF scale"},
    "preset": {"type": "string", "description": "a libx264 preset: ultrafast ... veryslow, placebo"},
    "pads": {
        "anyOf": [{"type": "array", "items": {"type": "integer"}}, {"type": "string"}],
        "description": "wav2lip face padding, top bottom left right: [0, 10, 0, 0] or '0 10 0 0'",
    },
    "face": {
        "type": "string",
        "description": "which face speaks: auto, largest, center, left, right, N (the Nth from the left) or x,y",
    },
}
OTHER_SETTING = {"description": "a per-job setting, as the manifest column of this name"}


class ErrorDetail(BaseModel):
    type: str = Field(description="dhgen's error type (README 'Errors'), or the refusal's")
    message: str = Field(description="what went wrong; never empty")
    hint: str = Field(description="what to do about it")


class ErrorResponse(BaseModel):
    error: ErrorDetail


JobRequest = create_model(
    "JobRequest",
    __config__=ConfigDict(
        extra="allow",
        json_schema_extra={
            "description": "A job: its inputs and, optionally, the manifest's per-job columns and x_..."
        },
    ),
    id=(str | None, Field(None, description="the job's id, like a manifest id (default: generated)", max_length=128)),
    audio=(str, Field(description="audio file: a path under the server's --input-root")),
    avatar=(str, Field(description="avatar video or image: a path under the server's --input-root")),
    **{key: (Any, Field(None, json_schema_extra=SETTING_SCHEMAS.get(key, OTHER_SETTING))) for key in SETTING_KEYS},
)

UPLOAD_SCHEMA = {
    "type": "object",
    "required": ["audio", "avatar"],
    "properties": {
        "audio": {"type": "string", "format": "binary", "description": "the audio file (or a path, as text)"},
        "avatar": {"type": "string", "format": "binary", "description": "the avatar file (or a path, as text)"},
        "id": {"type": "string"},
        **{key: {"type": "string", **SETTING_SCHEMAS.get(key, OTHER_SETTING)} for key in SETTING_KEYS},
    },
    "additionalProperties": {"type": "string", "description": "x_... fields"},
}


class Job(BaseModel):
    """A job as the service knows it: its status, its live counters while it runs, its record once finished."""

    model_config = ConfigDict(extra="forbid")

    id: str
    status: Status
    submitted_at: str
    started_at: str | None = Field(description="when its first attempt started")
    finished_at: str | None
    attempts: int = Field(description="attempts so far (an attempt a stopped server interrupted counts)")
    audio: str
    avatar: str
    output: str = Field(description="where the output is (or will be) on the server")
    output_url: str | None = Field(description="GET it for the MP4, once succeeded")
    settings: dict = Field(description="the job's own per-job settings, as given")
    meta: dict = Field(description="its x_ fields")
    progress: int = Field(description="0-100, from frames encoded (100 once succeeded)")
    total: int | None = Field(None, description="frames the output will have (running jobs)")
    decoded: int | None = None
    inferred: int | None = None
    encoded: int | None = None
    fps: float | None = Field(None, description="frames encoded per second in this attempt")
    last_progress_at: str | None = Field(None, description="when a counter last moved (or the attempt started)")
    pid: int | None = Field(None, description="the job process running it")
    node: str | None = Field(None, description="the Ray node running it")
    incidents: list[dict] = Field(description="every incident so far: error records (type, message, hint, ...)")
    error: dict | None = Field(description="the final error record (type, message, retryable, hint), once failed")
    record: dict | None = Field(description="the job's result-log object (README 'Result log'), once finished")


class JobPage(BaseModel):
    jobs: list[Job]
    next: str | None = Field(description="pass as ?after= for the next page; null on the last")


class Ready(BaseModel):
    ready: bool
    draining: bool
    workers: list[dict] = Field(description="inference workers (Ray: actors) with the model loaded")
    jobs: dict[str, int] = Field(description="jobs by status")
    error: dict | None = Field(description="why the model cannot run, when it cannot")


class HeyGemSubmit(BaseModel):
    """HeyGem's /easy/submit body. `chaofen`, `watermark_switch` and `pn` are accepted and ignored."""

    model_config = ConfigDict(extra="allow")

    audio_url: Any = Field(None, description="audio: a path under --input-root (no URL is fetched)")
    video_url: Any = Field(None, description="avatar: a path under --input-root (no URL is fetched)")
    code: Any = Field(None, description="the task's id (default: generated)")


class HeyGemReply(BaseModel):
    code: int = Field(description="10000 ok, 10001 queue full, 10002 bad parameter, 10004 not found, 9999 error")
    success: bool
    msg: str
    data: dict = Field(description="submit: {code}; query: {code, status, progress, result, msg}")
