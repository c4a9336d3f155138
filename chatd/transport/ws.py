"""The WebSocket endpoint: authenticate, then a short loop around :mod:`frames` and the service.

Outgoing frames are written straight into the socket's transport, synchronously, so that a
fan-out never awaits per recipient; the transport's write buffer is the connection's bounded
send queue, and a socket whose buffer passes ``send_buffer_bytes`` is closed with 1013 (its
client catches up from history when it reconnects). Pings and the missed-pong close are
:mod:`heartbeat`'s: aiohttp's autoping is off so that the read loop sees every frame, each of
which counts as a sign of life.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
import weakref
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import WSMsgType, web

from chatd import ids, logs
from chatd.config import Settings
from chatd.errors import ChatError
from chatd.models import Session
from chatd.routing.router import text_frame
from chatd.service.limits import TokenBucket
from chatd.transport import frames
from chatd.transport.auth import bearer_token
from chatd.transport.heartbeat import HEARTBEAT
from chatd.transport.keys import (
    ACCOUNTS,
    COALESCER,
    CONNECTIONS,
    METRICS,
    PRESENCE,
    ROUTER,
    SERVER_ID,
    SETTINGS,
)
from chatd.transport.requests import HANDLERS

log = logging.getLogger(__name__)

CLOSE_GOING_AWAY = 1001
CLOSE_TRY_AGAIN_LATER = 1013
CLOSE_UNAUTHORIZED = 4401
CLOSE_HELLO_TIMEOUT = 4408
# No close code of protocol v1 is meant for a silent client; 4408 (408, Request Timeout) is
# the one for "nothing came in time", and a client does the same for both: reconnect.
CLOSE_HEARTBEAT_TIMEOUT = 4408
CLOSE_TOO_MANY = 4429
MAX_IN_FLIGHT = 64  # requests of one socket handled at once; past it the reader waits
ABORT_AFTER_CLOSE = 30.0  # seconds a closed socket may take to flush before it is cut


def close_frame(code: int, reason: str) -> bytes:
    payload = code.to_bytes(2, "big") + reason.encode()
    return bytes((0x88, len(payload))) + payload


def pong_frame(payload: bytes) -> bytes:
    return bytes((0x8A, len(payload))) + payload  # control frames carry at most 125 bytes


SLOW_CONSUMER_CLOSE = close_frame(CLOSE_TRY_AGAIN_LATER, "slow consumer")
HEARTBEAT_CLOSE = close_frame(CLOSE_HEARTBEAT_TIMEOUT, "heartbeat timeout")


def new_connection_id() -> str:
    return ids.new_token()[:16]


class Connection:
    """One authenticated socket. ``send_*`` never block and never raise."""

    __slots__ = (
        "__weakref__",
        "close_code",
        "closing",
        "coalescer",
        "gone",
        "heartbeat_slice",
        "id",
        "on_gone",
        "pending",
        "pending_bytes",
        "request",
        "session",
        "settings",
        "token_hash",
        "transport",
        "typing_bucket",
        "unanswered",
        "user",
        "ws",
    )

    def __init__(
        self,
        ws: web.WebSocketResponse,
        request: web.Request,
        settings: Settings,
        session: Session,
        coalescer: WriteCoalescer,
        conn_id: str | None = None,
    ) -> None:
        self.ws = ws
        self.coalescer = coalescer
        self.gone = False
        self.on_gone: Callable[[], None] | None = None
        self.pending: list[bytes] = []
        self.pending_bytes = 0
        self.request = request
        self.settings = settings
        self.session = session
        self.user = session.user
        self.token_hash = session.token_hash
        self.id = conn_id or new_connection_id()
        self.transport = request.transport
        self.closing = False
        # Set when chatd closes the socket itself; for the log line when it is gone (aiohttp
        # only knows the code when the close went through ws.close).
        self.close_code: int | None = None
        # Pings sent since the client's last frame (heartbeat.py); the reader sets it to 0.
        self.unanswered = 0
        self.heartbeat_slice = 0
        self.typing_bucket = TokenBucket(
            settings.typing_per_second, max(1.0, settings.typing_per_second * 2), 2.0, 0
        )

    def send_payload(self, payload: bytes) -> None:
        self.send_wire(text_frame(payload))

    def hold(self) -> None:
        """Queue what is sent from now on without writing it, until ``release``."""
        # A placeholder first frame: send_wire then sees a non-empty queue and does not ask
        # the coalescer for a flush.
        self.pending.append(b"")

    def release(self, first: bytes) -> None:
        """Write ``first``, then what was held."""
        if self.closing or not self.pending:
            return  # closed meanwhile (overflow drops the queue; close_soon flushed it)
        self.pending[0] = first
        self.pending_bytes += len(first)
        self.coalescer.add(self)

    def send_wire(self, wire: bytes) -> None:
        transport = self.transport
        if self.closing or transport is None or transport.is_closing():
            return
        pending = self.pending
        if not pending:
            self.coalescer.add(self)
        pending.append(wire)
        self.pending_bytes += len(wire)
        if self.pending_bytes + transport.get_write_buffer_size() > self.settings.send_buffer_bytes:
            self.overflow()

    def flush(self) -> None:
        """Write what this loop iteration queued in one go (one syscall, not one per frame)."""
        if not self.pending:
            return
        data = self.pending[0] if len(self.pending) == 1 else b"".join(self.pending)
        self.pending = []
        self.pending_bytes = 0
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.write(data)

    def overflow(self) -> None:
        """The client stopped reading: close with 1013 after what it already has."""
        if self.closing:
            return
        # Named explicitly: this runs in whichever task sent to the socket, not in its own.
        log.info("closing slow consumer %s of %s (1013)", self.id, self.user, extra=self._ids())
        self._close_now(SLOW_CONSUMER_CLOSE)

    def expire(self) -> None:
        """The client missed two pongs in a row: close with 4408."""
        if self.closing:
            return
        log.debug("closing silent socket %s of %s (4408)", self.id, self.user, extra=self._ids())
        self._close_now(HEARTBEAT_CLOSE)

    def _ids(self) -> dict[str, str]:
        """The log fields of this socket, for lines written outside its task."""
        return {"conn": self.id, "user": self.user}

    def _close_now(self, frame: bytes) -> None:
        """Write the close frame after what is already buffered and close, without waiting
        for the client's answer: it is not reading, or not there."""
        self.closing = True
        self.close_code = int.from_bytes(frame[2:4], "big")
        self.pending = []
        self.pending_bytes = 0
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.write(frame)
            transport.close()  # flushes what is buffered, then closes
            loop = asyncio.get_running_loop()
            loop.call_later(ABORT_AFTER_CLOSE, transport.abort)
            # For routing and presence the socket is gone now, not when its client wakes up.
            # Deferred: we may be inside the router's loop over this user's sockets.
            loop.call_soon(self.leave)

    def leave(self) -> None:
        """Stop routing to this socket and count it as disconnected, once."""
        if self.gone:
            return
        self.gone = True
        if self.on_gone is not None:
            self.on_gone()

    def revoke(self) -> None:
        self.close_soon(CLOSE_UNAUTHORIZED, "session ended")

    def close_soon(self, code: int, reason: str) -> None:
        if self.closing:
            return
        self.flush()  # frames already queued go before the close frame
        self.closing = True
        self.close_code = code
        task = asyncio.get_running_loop().create_task(
            self.ws.close(code=code, message=reason.encode())
        )
        task.add_done_callback(lambda t: t.exception() if not t.cancelled() else None)


class WriteCoalescer:
    """Collects the sockets written during one loop iteration and flushes each once, at the
    end of the iteration: a group commit that acknowledges 32 sends to one socket becomes one
    write, and the latency added is one trip through the ready queue."""

    __slots__ = ("_dirty", "_loop")

    def __init__(self) -> None:
        self._dirty: list[Connection] = []
        self._loop: asyncio.AbstractEventLoop | None = None

    def add(self, conn: Connection) -> None:
        if not self._dirty:
            loop = self._loop
            if loop is None:
                loop = self._loop = asyncio.get_running_loop()
            loop.call_soon(self._flush)
        self._dirty.append(conn)

    def _flush(self) -> None:
        dirty, self._dirty = self._dirty, []
        for conn in dirty:
            conn.flush()


def _origin_allowed(request: web.Request, settings: Settings) -> bool:
    origin = request.headers.get("Origin")
    if origin is None:
        return True  # not a browser: nothing to hijack
    if settings.allowed_origins:
        return origin in settings.origins
    # Default: the server's own origin, as the browser saw it (the Host it connected to).
    return origin in settings.origins or origin == f"{request.scheme}://{request.host}"


async def websocket_handler(request: web.Request) -> web.StreamResponse:
    app = request.app
    settings = app[SETTINGS]
    if not _origin_allowed(request, settings):
        raise web.HTTPForbidden(
            text='{"error": {"code": "forbidden", "message": "origin not allowed"}}',
            content_type="application/json",
        )
    header_token = bearer_token(request)
    ws = web.WebSocketResponse(
        # No aiohttp heartbeat (heartbeat.py pings every socket from one task) and no autoping:
        # the read loops answer pings and see pongs themselves.
        heartbeat=None,
        # aiohttp refuses a frame whose size *reaches* max_msg_size; the protocol accepts
        # exactly max_frame_bytes and refuses one byte more.
        max_msg_size=settings.max_frame_bytes + 1,
        compress=False,
        autoping=False,
        receive_timeout=None,
    )
    await ws.prepare(request)
    sock = request.transport.get_extra_info("socket") if request.transport else None
    if sock is not None:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass
    metrics = app[METRICS]
    metrics.ws_opened += 1
    conn_id = new_connection_id()
    try:
        # Everything logged for this socket, by this task and the request tasks it makes,
        # names it (and its user once known).
        with logs.bind(conn=conn_id):
            hello = await _hello(request, ws, settings, header_token)
            if hello is None:
                log.debug("socket closed before authentication (%s)", ws.close_code)
                return ws
            session, hello_id = hello
            with logs.bind(user=session.user):
                await _serve(request, ws, settings, session, hello_id, conn_id)
    finally:
        metrics.ws_closed += 1
    return ws


async def _close(ws: web.WebSocketResponse, code: int, reason: str) -> None:
    try:
        await asyncio.wait_for(ws.close(code=code, message=reason.encode()), 5)
    except (TimeoutError, ConnectionError):
        pass


async def _pong(ws: web.WebSocketResponse, payload: bytes) -> None:
    try:
        await ws.pong(payload)
    except ConnectionError:
        pass  # the socket is closing: its read loop ends on its own


async def _hello(
    request: web.Request, ws: web.WebSocketResponse, settings: Settings, header_token: str | None
) -> tuple[Session, str | None] | None:
    """Wait for ``hello`` and authenticate; ``(session, hello's id)`` or None if refused."""
    app = request.app
    loop = asyncio.get_running_loop()
    deadline = loop.time() + settings.hello_timeout
    while True:
        try:
            msg = await ws.receive(timeout=max(0.001, deadline - loop.time()))
        except TimeoutError:
            await _close(ws, CLOSE_HELLO_TIMEOUT, "no hello in time")
            return None
        if msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR):
            return None
        if msg.type == WSMsgType.PING:
            await _pong(ws, msg.data)  # does not restart the hello deadline
            continue
        if msg.type == WSMsgType.PONG:
            continue
        if msg.type != WSMsgType.TEXT:
            deadline = loop.time() + settings.hello_timeout
            await ws.send_str(frames.error(None, "bad_request", "frames must be text").decode())
            continue
        try:
            request_frame = frames.parse(msg.data, max_body_chars=settings.max_body_chars)
        except frames.ProtocolError as exc:
            await ws.send_str(
                frames.error(
                    exc.request_id, "unauthorized", "the first request must be hello"
                ).decode()
            )
            await _close(ws, CLOSE_UNAUTHORIZED, "hello first")
            return None
        if not isinstance(request_frame, frames.Hello):
            await ws.send_str(
                frames.error(
                    request_frame.id, "unauthorized", "the first request must be hello"
                ).decode()
            )
            await _close(ws, CLOSE_UNAUTHORIZED, "hello first")
            return None
        token = request_frame.token or header_token
        try:
            session = await app[ACCOUNTS].authenticate(token)
        except ChatError as exc:
            if exc.code == "unavailable":
                # The token may well be good: 1013 tells the client to keep it and retry.
                await ws.send_str(frames.error(request_frame.id, exc.code, exc.message).decode())
                await _close(ws, CLOSE_TRY_AGAIN_LATER, "store unavailable")
                return None
            await ws.send_str(frames.error(request_frame.id, "unauthorized", exc.message).decode())
            await _close(ws, CLOSE_UNAUTHORIZED, "unauthorized")
            return None
        router = app[ROUTER]
        if len(router.connections(session.user)) >= settings.max_connections_per_user:
            await ws.send_str(
                frames.error(
                    request_frame.id, "rate_limited", "too many connections for this user"
                ).decode()
            )
            await _close(ws, CLOSE_TOO_MANY, "too many connections")
            return None
        if request_frame.device and request_frame.device != session.device:
            session = Session(
                session.token_hash,
                session.user,
                request_frame.device,
                session.created_at,
                session.expires_at,
            )
        return session, request_frame.id


async def _serve(
    request: web.Request,
    ws: web.WebSocketResponse,
    settings: Settings,
    session: Session,
    hello_id: str | None,
    conn_id: str,
) -> None:
    app = request.app
    router = app[ROUTER]
    presence = app[PRESENCE]
    heartbeat = app[HEARTBEAT]
    conn = Connection(ws, request, settings, session, app[COALESCER], conn_id)
    opened = time.monotonic()
    log.info("socket authenticated (device %r)", session.device)

    def gone() -> None:
        router.remove(conn)
        heartbeat.remove(conn)
        presence.disconnected(session.user)

    conn.on_gone = gone
    interval = settings.heartbeat
    reply = {
        "user": session.user,
        "connection": conn.id,
        "server": app[SERVER_ID],
        "heartbeat": int(interval) if float(interval).is_integer() else interval,
    }
    dispatch = _Dispatcher(app, conn)
    try:
        # Routed to, locally and (through presence's registry entry) from other servers,
        # before the client reads ``ok``: whatever is sent to the user after it saw ``ok``
        # reaches this socket, and whatever was sent before is in the history it fetches.
        # Events routed meanwhile are held behind the reply.
        conn.hold()
        router.add(conn)
        app[CONNECTIONS].add(conn)
        heartbeat.add(conn)
        await presence.connected(session.user)
        conn.release(text_frame(frames.ok(hello_id, reply)))
        receive = ws.receive  # not ``async for``: one coroutine less per frame (every pong)
        while True:
            msg = await receive()
            conn.unanswered = 0  # any frame is a sign of life, a pong or anything else
            kind = msg.type
            if kind is WSMsgType.TEXT:
                await dispatch.handle(msg.data)
            elif kind is WSMsgType.PONG:
                pass
            elif kind is WSMsgType.PING:
                conn.send_wire(pong_frame(msg.data))
            elif kind is WSMsgType.BINARY:
                conn.send_payload(frames.error(None, "bad_request", "frames must be text JSON"))
            else:  # CLOSE, CLOSING, CLOSED or ERROR: the socket is done
                break
    finally:
        conn.leave()
        await dispatch.drain()
        code = conn.close_code or ws.close_code
        log.info("socket closed with code %s after %.1f s", code or "-", time.monotonic() - opened)


async def recheck_sessions(app: web.Application) -> None:
    """Long-lived sockets re-check their session, so that an expiry, or a revocation that the
    bus missed, still ends them. One sweep over every socket per interval, rather than a timer
    per socket: idle sockets then cost no task and no memory for it."""
    interval = app[SETTINGS].session_recheck_seconds
    accounts = app[ACCOUNTS]
    while True:
        await asyncio.sleep(interval)
        by_session: dict[str, list[Connection]] = {}
        sockets: weakref.WeakSet[Connection] = app[CONNECTIONS]
        for conn in list(sockets):
            if not conn.gone:
                by_session.setdefault(conn.token_hash, []).append(conn)
        for token_hash, conns in by_session.items():
            try:
                valid = await accounts.still_valid(token_hash)
            except ChatError:
                continue  # the store is down: keep the sockets, check again next sweep
            if not valid:
                for conn in conns:
                    conn.revoke()


Handler = Callable[[web.Application, Connection, Any], Awaitable[dict[str, Any] | None]]


class _Dispatcher:
    """Runs each request as its own task (bounded per socket) so that a sender with many
    messages in flight has them all in one group commit, while replies stay per-id."""

    def __init__(self, app: web.Application, conn: Connection) -> None:
        self.app = app
        self.conn = conn
        self.settings = app[SETTINGS]
        self.metrics = app[METRICS]
        self.tasks: set[asyncio.Task[None]] = set()
        self.loop = asyncio.get_running_loop()
        # Made when a socket first has MAX_IN_FLIGHT requests running (most never do); the
        # reader waits on it until one finishes.
        self.room: asyncio.Event | None = None

    async def handle(self, data: str) -> None:
        conn = self.conn
        try:
            req = frames.parse(data, max_body_chars=self.settings.max_body_chars)
        except frames.ProtocolError as exc:
            self.metrics.count_error(exc.code)
            conn.send_payload(frames.error(exc.request_id, exc.code, exc.message))
            return
        handler = HANDLERS.get(type(req))
        if handler is None:
            conn.send_payload(frames.error(req.id, "bad_request", "not allowed after hello"))
            return
        task = self.loop.create_task(self._run(handler, req))
        tasks = self.tasks
        tasks.add(task)
        task.add_done_callback(self._done)
        if len(tasks) >= MAX_IN_FLIGHT:
            if self.room is None:
                self.room = asyncio.Event()
            self.room.clear()
            await self.room.wait()

    def _done(self, task: asyncio.Task[None]) -> None:
        self.tasks.discard(task)
        if self.room is not None and len(self.tasks) < MAX_IN_FLIGHT:
            self.room.set()

    async def _run(self, handler: Handler, req: Any) -> None:
        conn = self.conn
        started = time.perf_counter()
        try:
            result = await handler(self.app, conn, req)
        except ChatError as exc:
            self.metrics.count_error(exc.code)
            extra = exc.extra or None
            conn.send_payload(frames.error(req.id, exc.code, exc.message, extra))
        except frames.ProtocolError as exc:
            self.metrics.count_error(exc.code)
            conn.send_payload(frames.error(req.id, exc.code, exc.message))
        except Exception:
            log.exception("request %s failed", type(req).__name__)
            self.metrics.count_error("internal")
            conn.send_payload(frames.error(req.id, "internal", "internal error"))
        else:
            if req.id is not None:
                conn.send_payload(frames.ok(req.id, result))
        finally:
            self.metrics.observe_request(type(req).wire_type, time.perf_counter() - started)

    async def drain(self) -> None:
        """Let requests already read finish (a send that reached the store completes and is
        delivered to the others), bounded; then cancel what is left."""
        if not self.tasks:
            return
        _done, pending = await asyncio.wait(self.tasks, timeout=10)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)


__all__ = ["Connection", "websocket_handler"]
