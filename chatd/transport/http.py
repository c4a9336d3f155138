"""HTTP handlers of ``/api/v1``, health, readiness and metrics."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web

from chatd.errors import BadRequest, ChatError, TooLarge
from chatd.transport import frames
from chatd.transport.auth import authenticate
from chatd.transport.keys import (
    ACCOUNTS,
    BUS,
    CHAT,
    METRICS,
    READY_CHECKS,
    SETTINGS,
    STORE,
    ReadyCheck,
)

log = logging.getLogger(__name__)
MAX_JSON_BODY = 64 * 1024
READY_TIMEOUT = 3.0


def json_response(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


def error_response(status: int, code: str, message: str, **extra: Any) -> web.Response:
    response = json_response({"error": {"code": code, "message": message, **extra}}, status)
    if "retry_after" in extra:
        response.headers["Retry-After"] = str(max(1, round(float(extra["retry_after"]))))
    return response


@web.middleware
async def error_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Every failure becomes the protocol's JSON error body; nothing leaks a traceback."""
    try:
        return await handler(request)
    except ChatError as exc:
        request.app[METRICS].count_error(exc.code)
        return error_response(exc.http_status, exc.code, exc.message, **exc.extra)
    except web.HTTPException as exc:
        if exc.status < 400 or exc.content_type == "application/json":
            raise
        code = {
            400: "bad_request",
            401: "unauthorized",
            403: "forbidden",
            404: "not_found",
            405: "bad_request",
            409: "conflict",
            413: "too_large",
            429: "rate_limited",
        }.get(exc.status, "internal")
        return error_response(exc.status, code, exc.reason)
    except Exception:
        log.exception("unhandled error in %s %s", request.method, request.path)
        request.app[METRICS].count_error("internal")
        return error_response(500, "internal", "internal error")


async def read_json(request: web.Request) -> dict[str, Any]:
    if request.content_length is not None and request.content_length > MAX_JSON_BODY:
        raise TooLarge("request body too large")
    # read(n) gives what has arrived, up to n: a body in several TCP segments (or chunks)
    # takes several reads.
    chunks: list[bytes] = []
    size = 0
    while chunk := await request.content.read(MAX_JSON_BODY + 1 - size):
        chunks.append(chunk)
        size += len(chunk)
        if size > MAX_JSON_BODY:
            raise TooLarge("request body too large")
    raw = b"".join(chunks)
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise BadRequest("the body must be a JSON object") from None
    if not isinstance(data, dict):
        raise BadRequest("the body must be a JSON object")
    return data


def _client_address(request: web.Request) -> str:
    return request.remote or ""


async def create_user(request: web.Request) -> web.Response:
    body = await read_json(request)
    user = await request.app[ACCOUNTS].register(
        body.get("username"), body.get("password"), address=_client_address(request)
    )
    return json_response({"user": user.username, "created_at": user.created_at}, 201)


async def create_session(request: web.Request) -> web.Response:
    body = await read_json(request)
    issued = await request.app[ACCOUNTS].login(
        body.get("username"), body.get("password"), body.get("device"), _client_address(request)
    )
    return json_response(
        {
            "token": issued.token,
            "user": issued.session.user,
            "expires_at": issued.session.expires_at,
        },
        201,
    )


async def delete_current_session(request: web.Request) -> web.Response:
    session = await authenticate(request)
    await request.app[ACCOUNTS].logout(session)
    return web.Response(status=204)


async def me(request: web.Request) -> web.Response:
    session = await authenticate(request)
    user = await request.app[STORE].get_user(session.user)
    if user is None:
        raise web.HTTPUnauthorized()
    return json_response(
        {"user": user.username, "created_at": user.created_at, "device": session.device}
    )


def _int_param(request: web.Request, name: str) -> int | None:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return None
    try:
        value = int(raw)
    except ValueError:
        raise BadRequest(f"'{name}' must be an integer") from None
    if value < 0:
        raise BadRequest(f"'{name}' must not be negative")
    return value


async def conversation_messages(request: web.Request) -> web.Response:
    session = await authenticate(request)
    limit = _int_param(request, "limit")
    messages, more = await request.app[CHAT].history(
        session.user,
        request.match_info["conv"],
        before=_int_param(request, "before"),
        after=_int_param(request, "after"),
        limit=50 if limit is None else limit,
    )
    return json_response({"messages": [frames.message_object(m) for m in messages], "more": more})


async def conversations(request: web.Request) -> web.Response:
    session = await authenticate(request)
    summaries = await request.app[CHAT].conversations(session.user)
    return json_response(
        {"conversations": [frames.conversation_object(s, session.user) for s in summaries]}
    )


async def healthz(request: web.Request) -> web.Response:
    return json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    extra: dict[str, ReadyCheck] = request.app[READY_CHECKS]
    checks: dict[str, ReadyCheck] = {
        "store": request.app[STORE].ping,
        "bus": request.app[BUS].ping,
        **extra,
    }

    async def run(check: Callable[[], Awaitable[None]]) -> str:
        try:
            await asyncio.wait_for(check(), READY_TIMEOUT)
        except (ChatError, TimeoutError, OSError) as exc:
            return f"failed: {exc}" if str(exc) else "failed"
        except Exception as exc:  # a probe must report, not crash the endpoint
            return f"failed: {type(exc).__name__}"
        return "ok"

    names = list(checks)
    results = await asyncio.gather(*(run(checks[n]) for n in names))
    report = dict(zip(names, results, strict=True))
    failed = [n for n, r in report.items() if r != "ok"]
    if failed:
        return json_response({"status": "unavailable", "failed": failed, "checks": report}, 503)
    return json_response({"status": "ok", "checks": report})


async def metrics(request: web.Request) -> web.Response:
    return web.Response(
        text=request.app[METRICS].render(),
        content_type="text/plain",
        charset="utf-8",
        headers={"Cache-Control": "no-store"},
    )


def add_routes(app: web.Application) -> None:
    app.router.add_post("/api/v1/users", create_user)
    app.router.add_post("/api/v1/sessions", create_session)
    app.router.add_delete("/api/v1/sessions/current", delete_current_session)
    app.router.add_get("/api/v1/me", me)
    app.router.add_get("/api/v1/conversations", conversations)
    app.router.add_get("/api/v1/conversations/{conv}/messages", conversation_messages)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)


__all__ = ["SETTINGS", "add_routes", "error_middleware", "json_response"]
