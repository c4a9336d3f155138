"""HTTP handlers for push subscriptions, the VAPID key and muting.

Routes (all need ``Authorization: Bearer``):

    GET    /api/v1/push/vapid-public-key          -> 200 {"public_key": "<base64url>"}
    GET    /api/v1/push/subscriptions             -> 200 {"subscriptions": [...]} (the caller's)
    POST   /api/v1/push/subscriptions             -> 201 {"id": "..."}
           {"kind": "webpush", "subscription": {"endpoint", "keys": {"p256dh", "auth"}}}
           {"kind": "webhook", "url": "https://ntfy.example/topic?tpl=1&..."}
    DELETE /api/v1/push/subscriptions/{id}        -> 204; 404 if it is not the caller's
    PUT    /api/v1/conversations/{conv}/mute      {"muted": true} -> 200 {"conv", "muted"}

Subscribing again with an endpoint (or webhook URL) the caller already has replaces the old
subscription (browsers re-send theirs on every page load), so the answer is always a fresh id.

The providers and the dispatcher are built and started by :mod:`chatd.app` (under
``PUSH_PROVIDERS`` and ``PUSH``); :func:`add_routes` adds the routes above and the push
counters of ``/metrics``.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from typing import Any

from aiohttp import web

from chatd.errors import BadRequest, Conflict, NotFound
from chatd.models import PushSubscription
from chatd.push import PushProviders
from chatd.push.dispatcher import PushDispatcher
from chatd.push.http import check_endpoint_url, literal_host_refused
from chatd.transport.auth import authenticate
from chatd.transport.http import json_response, read_json
from chatd.transport.keys import CHAT, METRICS, PUSH, PUSH_PROVIDERS, STORE

MAX_SUBSCRIPTIONS_PER_USER = 20
COUNTERS = ("sent", "failed", "pruned", "dropped", "retried", "coalesced")


def add_routes(app: web.Application) -> None:
    """The push routes, and ``chatd_push_<counter>_total`` in ``/metrics`` when the app has a
    dispatcher and metrics."""
    app.router.add_get("/api/v1/push/vapid-public-key", vapid_public_key)
    app.router.add_get("/api/v1/push/subscriptions", list_subscriptions)
    app.router.add_post("/api/v1/push/subscriptions", create_subscription)
    app.router.add_delete("/api/v1/push/subscriptions/{sub_id}", delete_subscription)
    app.router.add_put("/api/v1/conversations/{conv}/mute", mute_conversation)
    dispatcher = app.get(PUSH)
    if dispatcher is not None and METRICS in app:
        for name in COUNTERS:
            app[METRICS].counters[f"chatd_push_{name}_total"] = _reader(dispatcher, name)


def _reader(dispatcher: PushDispatcher, name: str) -> Callable[[], float]:
    return lambda: int(getattr(dispatcher, name))


def _providers(request: web.Request) -> PushProviders:
    providers = request.app.get(PUSH_PROVIDERS)
    if providers is None:
        raise NotFound("push notifications are not enabled on this server")
    return providers


async def vapid_public_key(request: web.Request) -> web.Response:
    await authenticate(request)
    providers = _providers(request)
    if providers.vapid is None or not providers.accepts("webpush"):
        raise NotFound("web push is not enabled on this server")
    return json_response({"public_key": providers.vapid.public_key_b64})


def _describe(sub: PushSubscription) -> dict[str, Any]:
    target = sub.data.get("endpoint") if sub.kind == "webpush" else sub.data.get("url")
    return {"id": sub.id, "kind": sub.kind, "target": target, "created_at": sub.created_at}


async def list_subscriptions(request: web.Request) -> web.Response:
    session = await authenticate(request)
    subs = await request.app[STORE].push_subscriptions([session.user])
    return json_response({"subscriptions": [_describe(s) for s in subs]})


def _validated(body: dict[str, Any], providers: PushProviders) -> tuple[str, dict[str, Any]]:
    """``(kind, data)`` from a POST body, or ``BadRequest`` saying what is wrong."""
    kind = body.get("kind")
    if kind not in ("webpush", "webhook"):
        raise BadRequest("'kind' must be 'webpush' or 'webhook'")
    if not providers.accepts(kind):
        raise BadRequest(f"{kind} push is not enabled on this server")
    try:
        if kind == "webpush":
            from chatd.push.webpush import check_subscription

            data = check_subscription(body.get("subscription"))
            target = data["endpoint"]
        else:
            url = body.get("url")
            try:
                data = {"url": check_endpoint_url(url)}
            except ValueError as exc:
                raise ValueError(f"url {exc}") from None
            target = data["url"]
    except ValueError as exc:
        raise BadRequest(str(exc)) from None
    if literal_host_refused(target, providers.allow_private_hosts):
        raise BadRequest("the push endpoint must not be a local or private address")
    return kind, data


def _target(sub: PushSubscription) -> object:
    return sub.data.get("endpoint") if sub.kind == "webpush" else sub.data.get("url")


async def create_subscription(request: web.Request) -> web.Response:
    session = await authenticate(request)
    providers = _providers(request)
    kind, data = _validated(await read_json(request), providers)
    store = request.app[STORE]
    existing = await store.push_subscriptions([session.user])
    target = data.get("endpoint") if kind == "webpush" else data.get("url")
    replaced = [old for old in existing if old.kind == kind and _target(old) == target]
    if len(existing) - len(replaced) >= MAX_SUBSCRIPTIONS_PER_USER:
        raise Conflict(
            f"at most {MAX_SUBSCRIPTIONS_PER_USER} push subscriptions per user; delete one first"
        )
    for old in replaced:
        await store.delete_push_subscription(session.user, old.id)
    sub = PushSubscription(
        id=secrets.token_urlsafe(12),
        user=session.user,
        kind=kind,  # type: ignore[arg-type]
        data=data,
        created_at=int(time.time() * 1000),
    )
    await store.add_push_subscription(sub)
    return json_response({"id": sub.id}, 201)


async def delete_subscription(request: web.Request) -> web.Response:
    session = await authenticate(request)
    if not await request.app[STORE].delete_push_subscription(
        session.user, request.match_info["sub_id"]
    ):
        raise NotFound("no such push subscription")
    return web.Response(status=204)


async def mute_conversation(request: web.Request) -> web.Response:
    session = await authenticate(request)
    body = await read_json(request)
    muted = body.get("muted")
    if not isinstance(muted, bool):
        raise BadRequest("'muted' must be true or false")
    conv = request.match_info["conv"]
    await request.app[CHAT].set_muted(session.user, conv, muted)
    return json_response({"conv": conv, "muted": muted})
