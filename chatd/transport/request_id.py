"""A request id for every HTTP request (WebSocket upgrades included): in each log line written
while the request is served, and in the response's ``X-Request-Id``.

A client's or proxy's own ``X-Request-Id`` is kept when it looks like an id, so that a line of
the proxy's log and chatd's can be matched; anything else (too long, spaces, newlines, quotes,
non-ASCII) is replaced by a fresh random id rather than written into the logs.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Awaitable, Callable

from aiohttp import web

from chatd import logs

HEADER = "X-Request-Id"
MAX_LENGTH = 64  # a UUID (36) or nginx's $request_id (32) fits
# No spaces, quotes, brackets or '=': nothing that could pass for another field of a text log
# line.
_SAFE = re.compile(rf"[A-Za-z0-9._:-]{{1,{MAX_LENGTH}}}")
REQUEST_ID: web.RequestKey[str] = web.RequestKey("request_id", str)


def new_request_id() -> str:
    return secrets.token_hex(6)


def accept_request_id(supplied: str | None) -> str:
    """``supplied`` if it is a safe id, else a new one."""
    if supplied is not None and _SAFE.fullmatch(supplied):
        return supplied
    return new_request_id()


@web.middleware
async def request_id_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    request_id = accept_request_id(request.headers.get(HEADER))
    request[REQUEST_ID] = request_id
    with logs.bind(request_id=request_id):
        return await handler(request)


async def echo_request_id(request: web.Request, response: web.StreamResponse) -> None:
    """``on_response_prepare``: also reaches responses the handler sends itself (the
    WebSocket's 101, streamed downloads) and errors raised past every middleware."""
    request_id = request.get(REQUEST_ID)
    if request_id is not None:
        response.headers[HEADER] = request_id
