"""The service's refusals, typed like every dhgen error (message never empty, a hint), each with its HTTP status.
Other dhgen errors met while taking a submit (a bad manifest field, a missing input) are 422."""

from __future__ import annotations

from dhgen.errors import DhgenError


class ServiceError(DhgenError):
    status = 400
    headers: dict[str, str] = {}


class Unauthorized(ServiceError):
    status = 401
    default_hint = "send the server's token as `Authorization: Bearer TOKEN` (--token or DHGEN_TOKEN of the server)"
    headers = {"WWW-Authenticate": "Bearer"}


class Refused(ServiceError):
    status = 403
    default_hint = "give input paths under the server's --input-root (relative ones are relative to it), or upload"


class NotFound(ServiceError):
    status = 404
    default_hint = "list the jobs with GET /v1/jobs"


class Conflict(ServiceError):
    status = 409
    default_hint = "use another id, or DELETE the existing job first (twice if it is still queued or running)"


class TooLarge(ServiceError):
    status = 413
    default_hint = "upload smaller files, or raise the server's --max-upload"


class Invalid(ServiceError):
    status = 422
    default_hint = "see README 'As a service' for the fields a job takes"


class QueueFull(ServiceError):
    status = 429
    default_hint = "retry after the number of seconds in Retry-After, or raise the server's --max-queue"

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.headers = {"Retry-After": str(retry_after)}


class Unavailable(ServiceError):
    status = 503
    default_hint = "the server is stopping; submit again once it is back"
