"""Bearer-token authentication for HTTP handlers."""

from __future__ import annotations

from aiohttp import web

from chatd import logs
from chatd.errors import Unauthorized
from chatd.models import Session
from chatd.transport.keys import ACCOUNTS

SESSION_KEY: web.RequestKey[Session] = web.RequestKey("session", Session)


def bearer_token(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


async def authenticate(request: web.Request) -> Session:
    """The caller's live session; ``Unauthorized`` (401) otherwise. Cached per request."""
    cached: Session | None = request.get(SESSION_KEY)
    if cached is not None:
        return cached
    token = bearer_token(request)
    if token is None:
        raise Unauthorized("missing bearer token")
    session = await request.app[ACCOUNTS].authenticate(token)
    request[SESSION_KEY] = session
    logs.name_user(session.user)
    return session
