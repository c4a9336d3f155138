"""Assemble one chatd process: backends by URL, the service, routing, presence, transport.

``build_app`` wires objects and registers one ``cleanup_ctx`` for the whole lifecycle: it
starts every backend before the first request and stops them in reverse order after the last.
``serve`` runs the app until SIGTERM or SIGINT, then closes sockets with 1001, finishes
in-flight writes and returns.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
import weakref
from collections.abc import AsyncIterator

from aiohttp import web

from chatd import ids
from chatd.config import Settings
from chatd.errors import ConfigError
from chatd.metrics import Metrics
from chatd.presence import PresenceTracker
from chatd.routing import open_bus
from chatd.routing.router import Router
from chatd.service.accounts import AccountService
from chatd.service.chat import ChatService
from chatd.store import open_store
from chatd.transport import http
from chatd.transport.events import FrameEvents
from chatd.transport.keys import (
    ACCOUNTS,
    BUS,
    CHAT,
    CONNECTIONS,
    METRICS,
    PRESENCE,
    READY_CHECKS,
    ROUTER,
    SERVER_ID,
    SETTINGS,
    STORE,
)
from chatd.transport.ws import CLOSE_GOING_AWAY, websocket_handler

log = logging.getLogger("chatd")


def now_ms() -> int:
    return int(time.time() * 1000)


def build_app(settings: Settings) -> web.Application:
    """Build the application; nothing is connected until the app starts."""
    app = web.Application(
        middlewares=[http.error_middleware],
        client_max_size=1024**2,
        handler_args={"max_field_size": 16384},
    )
    server_id = settings.server_id or ids.new_server_id()
    store = open_store(settings.store_url)
    bus = open_bus(settings.bus, server_id)
    router = Router(bus)
    events = FrameEvents(router)
    snowflake = ids.Snowflake(ids.worker_number(server_id))
    chat = ChatService(
        store,
        events,
        now_ms,
        snowflake.next,
        ids.new_conv_id,
        online=bus,
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
        events=events,
    )
    presence = PresenceTracker(bus, now_ms, chat.announce_presence, settings.presence_grace)
    router.on_servers_died = presence.servers_died
    metrics = Metrics()
    metrics.gauges["chatd_connections"] = router.connection_count
    metrics.counters["chatd_messages_total"] = lambda: events.messages
    metrics.counters["chatd_deliveries_requested_total"] = lambda: events.deliveries_requested
    metrics.counters["chatd_bus_publishes_total"] = lambda: router.publishes
    metrics.counters["chatd_bus_dropped_total"] = lambda: router.dropped

    app[SETTINGS] = settings
    app[SERVER_ID] = server_id
    app[STORE] = store
    app[BUS] = bus
    app[ROUTER] = router
    app[CHAT] = chat
    app[ACCOUNTS] = accounts
    app[PRESENCE] = presence
    app[METRICS] = metrics
    app[CONNECTIONS] = weakref.WeakSet()
    app[READY_CHECKS] = {}

    http.add_routes(app)
    app.router.add_get("/ws", websocket_handler)
    app.cleanup_ctx.append(_backends)
    app.on_shutdown.append(_close_sockets)
    return app


async def _backends(app: web.Application) -> AsyncIterator[None]:
    store = app[STORE]
    await store.start()
    try:
        await app[ROUTER].start()
    except BaseException:
        await store.close()
        raise
    log.info(
        "server %s ready: store %s, bus %s",
        app[SERVER_ID],
        _safe_url(app[SETTINGS].store_url),
        _safe_url(app[SETTINGS].bus),
    )
    yield
    await app[PRESENCE].close()
    await app[ROUTER].close()
    await store.close()


async def _close_sockets(app: web.Application) -> None:
    """Shutdown: tell every client we are going away (1001) so it reconnects elsewhere."""
    sockets = list(app[CONNECTIONS])
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


async def serve(settings: Settings, *, ready: asyncio.Event | None = None) -> None:
    """Run until SIGTERM/SIGINT. ``ConfigError`` (an unreachable backend, a taken port)
    propagates before anything listens."""
    app = build_app(settings)
    runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=10)
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
        if ready is not None:
            ready.set()
        await stop.wait()
        log.info("shutting down")
    finally:
        await runner.cleanup()
