"""Bearer-token auth, as a FastAPI dependency on every router but the liveness probe. The token is compared in
constant time (`hmac.compare_digest`); without a configured token (a loopback server) every request passes."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from dhgen.service.errors import Unauthorized

bearer = HTTPBearer(auto_error=False, description="the server's --token (or DHGEN_TOKEN)")


def require_token(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
) -> None:
    expected = request.app.state.service.options.token
    if expected is None:
        return
    if credentials is None:
        raise Unauthorized("this server needs a token: send `Authorization: Bearer TOKEN`")
    if not hmac.compare_digest(credentials.credentials.encode(), expected.encode()):
        raise Unauthorized("the token is not this server's")
