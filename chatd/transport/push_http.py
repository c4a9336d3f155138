"""HTTP handlers for push subscriptions and muting, and the push part's place in the app.

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

Wiring, in ``chatd.app.build_app``::

    providers, dispatcher = build_push(settings, store, bus.online)
    chat = ChatService(..., push=dispatcher)
    ...
    app.cleanup_ctx.append(_backends)
    install(app, providers, dispatcher)   # after _backends: starts after the store, stops before
"""

from __future__ import annotations

import secrets
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from aiohttp import web

from chatd.errors import BadRequest, Conflict, NotFound
from chatd.models import PushSubscription
from chatd.push import PushProviders, open_push
from chatd.push.dispatcher import IsOnline, PushDispatcher
from chatd.push.http import check_endpoint_url, literal_host_refused
from chatd.transport.auth import authenticate
from chatd.transport.http import json_response, read_json
from chatd.transport.keys import CHAT, METRICS, STORE

if TYPE_CHECKING:
    from chatd.config import Settings
    from chatd.store.base import Store

PUSH: web.AppKey[PushProviders] = web.AppKey("push")
PUSH_DISPATCHER: web.AppKey[PushDispatcher] = web.AppKey("push_dispatcher")

MAX_SUBSCRIPTIONS_PER_USER = 20


def build_push(
    settings: Settings,
    store: Store,
    is_online: IsOnline,
    *,
    allow_private_hosts: bool = False,
    **dispatcher_options: Any,
) -> tuple[PushProviders, PushDispatcher]:
    """The providers named by ``settings.push`` and a dispatcher over them (not started).

    ``dispatcher_options`` go to :class:`PushDispatcher` (``coalesce_window_s``,
    ``request_timeout_s``, ``max_retries``...). Raises ``ConfigError`` like ``open_push``.
    """
    providers = open_push(
        settings.push,
        data_dir=settings.data_dir,
        vapid_subject=settings.vapid_subject,
        allow_private_hosts=allow_private_hosts,
    )
    dispatcher = PushDispatcher(
        store,
        providers.senders,
        is_online=is_online,
        previews=settings.push_previews,
        **dispatcher_options,
    )
    return providers, dispatcher


def install(app: web.Application, providers: PushProviders, dispatcher: PushDispatcher) -> None:
    """Register the push objects, routes, lifecycle and metrics on ``app``.

    Call it after the store's ``cleanup_ctx`` is appended, so that the dispatcher starts
    after the store and is closed (its tasks cancelled and awaited) before the store closes.
    """
    app[PUSH] = providers
    app[PUSH_DISPATCHER] = dispatcher
    add_routes(app)
    app.cleanup_ctx.append(_dispatcher_lifecycle)
    if METRICS in app:
        counters = app[METRICS].counters
        for name in ("sent", "failed", "pruned", "dropped", "retried", "coalesced"):
            counters[f"chatd_push_{name}_total"] = _reader(dispatcher, name)


def _reader(dispatcher: PushDispatcher, name: str) -> Any:
    return lambda: getattr(dispatcher, name)


async def _dispatcher_lifecycle(app: web.Application) -> AsyncIterator[None]:
    dispatcher = app[PUSH_DISPATCHER]
    await dispatcher.start()
    yield
    await dispatcher.close()


def add_routes(app: web.Application) -> None:
    app.router.add_get("/api/v1/push/vapid-public-key", vapid_public_key)
    app.router.add_get("/api/v1/push/subscriptions", list_subscriptions)
    app.router.add_post("/api/v1/push/subscriptions", create_subscription)
    app.router.add_delete("/api/v1/push/subscriptions/{sub_id}", delete_subscription)
    app.router.add_put("/api/v1/conversations/{conv}/mute", mute_conversation)


def _providers(request: web.Request) -> PushProviders:
    providers = request.app.get(PUSH)
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
    for old in existing:
        if old.kind == kind and _target(old) == target:
            await store.delete_push_subscription(session.user, old.id)
    if len([s for s in existing if _target(s) != target]) >= MAX_SUBSCRIPTIONS_PER_USER:
        raise Conflict(
            f"at most {MAX_SUBSCRIPTIONS_PER_USER} push subscriptions per user; delete one first"
        )
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
