"""Assemble one chatd process: backends by URL, the service, routing, presence, transport.

``build_app`` wires objects and registers one ``cleanup_ctx`` for the whole lifecycle: it
starts every backend before the first request and stops them in reverse order after the last.
``serve`` runs the app until SIGTERM or SIGINT, then closes sockets with 1001, finishes
in-flight writes and returns.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable

from aiohttp import web

from chatd import ids
from chatd.config import Settings
from chatd.errors import ConfigError
from chatd.media import open_media
from chatd.media.service import MediaService
from chatd.metrics import Metrics
from chatd.presence import PresenceTracker
from chatd.push import open_push
from chatd.push.dispatcher import PushDispatcher
from chatd.routing import open_bus
from chatd.routing.redis import RedisBus
from chatd.routing.router import Router
from chatd.service.accounts import AccountService
from chatd.service.chat import ChatService
from chatd.store import open_store
from chatd.store.timed import TimedStore
from chatd.transport import http, media_http, push_http, request_id, revocations, static
from chatd.transport.events import FrameEvents
from chatd.transport.heartbeat import HEARTBEAT, Heartbeat, run_heartbeat
from chatd.transport.keys import (
    ACCOUNTS,
    BLOBS,
    BUS,
    CHAT,
    COALESCER,
    CONNECTIONS,
    MEDIA_SERVICE,
    METRICS,
    PRESENCE,
    PUSH,
    PUSH_PROVIDERS,
    READY_CHECKS,
    ROUTER,
    SERVER_ID,
    SETTINGS,
    STORE,
    ReadyCheck,
)
from chatd.transport.ws import (
    CLOSE_GOING_AWAY,
    Connection,
    WriteCoalescer,
    recheck_sessions,
    websocket_handler,
)

log = logging.getLogger("chatd")
SLOW_CLIENT_TIMEOUT = 30.0
# gen0, gen1, gen2: see _tune_gc (Python's defaults are 700, 10, 10).
GC_THRESHOLDS = (700, 10, 100)


def now_ms() -> int:
    return int(time.time() * 1000)


def build_app(settings: Settings) -> web.Application:
    """Build the application; nothing is connected until the app starts."""
    app = web.Application(
        # The request id first: lines the other middlewares log carry it too.
        middlewares=[
            request_id.request_id_middleware,
            http.error_middleware,
            static.security_headers,
        ],
        client_max_size=1024**2,
        handler_args={"max_field_size": 16384},
    )
    server_id = settings.server_id or ids.new_server_id()
    metrics = Metrics()
    # Every backend is timed the same way, as its callers see it (chatd_store_seconds).
    store = TimedStore(open_store(settings.store_url), metrics.store_seconds, metrics.store_errors)
    bus = open_bus(settings.bus, server_id)
    blobs = open_media(settings.media_url)
    providers = open_push(
        settings.push,
        data_dir=settings.data_dir,
        vapid_subject=settings.vapid_subject,
        allow_private_hosts=settings.push_allow_private_hosts,
    )
    router = Router(
        bus,
        publish_seconds=metrics.bus_publish_seconds,
        locate_seconds=metrics.bus_locate_seconds,
    )
    events = FrameEvents(router)
    push = PushDispatcher(
        store,
        providers.senders,
        is_online=bus.online,
        previews=settings.push_previews,
        coalesce_window_s=settings.push_coalesce_seconds,
    )
    snowflake = ids.Snowflake(ids.worker_number(server_id))
    chat = ChatService(
        store,
        events,
        now_ms,
        snowflake.next,
        ids.new_conv_id,
        online=bus,
        push=push,
        connected_here=router.connected_here,
        max_group_members=settings.max_group_members,
        messages_per_second=settings.messages_per_second,
        message_burst=settings.message_burst,
    )
    accounts = AccountService(
        store,
        now_ms,
        registration_open=settings.registration == "open",
        session_ttl_days=settings.session_ttl_days,
        login_attempts_per_minute=settings.login_attempts_per_minute,
        login_slowdown_seconds=settings.login_slowdown_seconds,
        registrations_per_hour=settings.registrations_per_hour,
        events=events,
    )
    media = MediaService(
        store,
        blobs,
        max_upload_bytes=settings.max_upload_bytes,
        uploads_per_hour=settings.uploads_per_hour,
        clock=now_ms,
        new_id=ids.new_media_id,
    )
    presence = PresenceTracker(bus, now_ms, chat.announce_presence, settings.presence_grace)
    router.on_servers_died = presence.servers_died
    if hasattr(bus, "on_online"):  # the Redis bus re-registers users after an outage
        bus.on_online = presence.registered_again
    metrics.gauges["chatd_connections"] = router.connection_count
    metrics.counters["chatd_messages_total"] = lambda: events.messages
    metrics.counters["chatd_deliveries_requested_total"] = lambda: events.deliveries_requested
    metrics.counters["chatd_bus_publishes_total"] = lambda: router.publishes
    metrics.counters["chatd_bus_dropped_total"] = lambda: router.dropped
    if isinstance(bus, RedisBus):  # what Redis itself failed to take, a publish at a time
        metrics.counters["chatd_bus_redis_lost_total"] = lambda: bus.dropped

    app[SETTINGS] = settings
    app[SERVER_ID] = server_id
    app[STORE] = store
    app[BUS] = bus
    app[ROUTER] = router
    app[CHAT] = chat
    app[ACCOUNTS] = accounts
    app[PRESENCE] = presence
    app[METRICS] = metrics
    app[CONNECTIONS] = weakref.WeakSet[Connection]()
    app[COALESCER] = WriteCoalescer()
    app[HEARTBEAT] = Heartbeat(settings.heartbeat)
    app[BLOBS] = blobs
    app[MEDIA_SERVICE] = media
    app[PUSH_PROVIDERS] = providers
    app[PUSH] = push
    ready_checks: dict[str, ReadyCheck] = {"media": blobs.ping}
    app[READY_CHECKS] = ready_checks
    app.on_response_prepare.append(request_id.echo_request_id)

    http.add_routes(app)
    media_http.add_routes(app)
    push_http.add_routes(app)
    static.add_routes(app)
    app.router.add_get("/ws", websocket_handler)
    app.cleanup_ctx.append(_backends)
    # After the backends: it starts once the store is up and stops before the store closes.
    app.cleanup_ctx.append(revocations.poll_revocations)
    app.on_shutdown.append(_close_sockets)
    app.cleanup_ctx.append(run_heartbeat)
    return app


async def _backends(app: web.Application) -> AsyncIterator[None]:
    store, blobs, router, push = app[STORE], app[BLOBS], app[ROUTER], app[PUSH]
    await store.start()
    started: list[Callable[[], Awaitable[None]]] = [store.close]
    try:
        steps: tuple[tuple[Callable[[], Awaitable[None]], Callable[[], Awaitable[None]]], ...] = (
            (blobs.start, blobs.close),
            (router.start, router.close),
            (push.start, push.close),
        )
        for start, stop in steps:
            await start()
            started.append(stop)
    except BaseException:
        for stop in reversed(started):
            await stop()
        raise
    log.info(
        "server %s ready: store %s, bus %s",
        app[SERVER_ID],
        _safe_url(app[SETTINGS].store_url),
        _safe_url(app[SETTINGS].bus),
    )
    sweeper = asyncio.get_running_loop().create_task(recheck_sessions(app))
    yield
    sweeper.cancel()
    await asyncio.gather(sweeper, return_exceptions=True)
    await app[PRESENCE].close()
    for stop in reversed(started):
        await stop()


async def _close_sockets(app: web.Application) -> None:
    """Shutdown: tell every client we are going away (1001) so it reconnects elsewhere."""
    connections: weakref.WeakSet[Connection] = app[CONNECTIONS]
    sockets = list(connections)
    closing = [
        conn.ws.close(code=CLOSE_GOING_AWAY, message=b"server shutting down") for conn in sockets
    ]
    if closing:
        await asyncio.wait_for(asyncio.gather(*closing, return_exceptions=True), 10)


def _safe_url(url: str) -> str:
    """A URL without its password, for logs."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        return urlunsplit(parts._replace(netloc=netloc))
    return url


def _tune_gc() -> None:
    """Keep the cyclic garbage collector's full pauses off the message path.

    Measured with gc.callbacks under the 1:1 benchmark: full (gen2) collections ran several
    times a second, each a 40-66 ms pause of the whole process, because every message
    allocates containers that live until their commit and get promoted. What exists once the
    server is up lives as long as the process, so it is frozen out of every later collection,
    and a full collection waits for 100 middle ones instead of 10. The young generations keep
    their default size: a larger one (tried: 20,000) makes each of their collections long
    enough to show in another user's p99 while someone floods the server.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


async def serve(settings: Settings, *, ready: asyncio.Event | None = None) -> None:
    """Run until SIGTERM/SIGINT. ``ConfigError`` (an unreachable backend, a taken port)
    propagates before anything listens."""
    app = build_app(settings)
    # keepalive_timeout also bounds how long a connection may take to send its first request:
    # headers that trickle in (slowloris) are cut off after it.
    runner = web.AppRunner(
        app,
        handle_signals=False,
        access_log=None,
        shutdown_timeout=10,
        keepalive_timeout=SLOW_CLIENT_TIMEOUT,
    )
    await runner.setup()
    try:
        site = web.TCPSite(runner, settings.host, settings.port, backlog=4096, reuse_address=True)
        try:
            await site.start()
        except OSError as exc:
            raise ConfigError(
                f"cannot listen on {settings.host}:{settings.port}: {exc.strerror or exc}"
            ) from None
        log.info("chatd listening on http://%s:%d", settings.host, settings.port)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        _tune_gc()
        if ready is not None:
            ready.set()
        await stop.wait()
        log.info("shutting down")
    finally:
        await runner.cleanup()
