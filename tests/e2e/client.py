"""A small test client for the chatd wire protocol, built on aiohttp's client only.

``Ws`` wraps one WebSocket: a reader task files every frame as it arrives, replies (frames
with an ``id``) resolve the request that sent that id, and everything else becomes an event
the test can wait for. Every wait is bounded (``DEFAULT_TIMEOUT``). ``Harness`` owns one
HTTP session and every socket a test opened, and closes them at the end of the test.
"""

# Every wait in a test is bounded, so the bound is part of each helper's signature.
# ruff: noqa: ASYNC109

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import os
import socket
import struct
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp

from .server import ChatdServer

DEFAULT_TIMEOUT = 5.0
QUIET = 0.4  # how long "nothing arrives" is watched when no sentinel can prove it
PASSWORD = "correct horse battery"

Frame = dict[str, Any]
Predicate = Callable[[Frame], bool]


class Closed(Exception):
    """The socket closed while a test was waiting for a frame."""


def unique_name(prefix: str = "u") -> str:
    """A fresh valid username (3..32 of ``a-z0-9_.-``) so tests sharing a server never meet."""
    return f"{prefix[:14].lower()}_{uuid.uuid4().hex[:12]}"


def dumps(obj: object) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


class Ws:
    """One WebSocket connection to chatd, with request/reply matching and event queues."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse, label: str) -> None:
        self.ws = ws
        self.label = label
        self.frames: list[Frame] = []  # every JSON frame received, in arrival order
        self.events: list[Frame] = []  # events not yet taken by a test
        self.orphans: list[Frame] = []  # replies whose id matched no pending request
        self.non_json: list[str] = []
        self.arrivals: dict[tuple[str, int], float] = {}  # (conv, seq) of messages -> monotonic
        self.hello: Frame | None = None
        self._pending: dict[str, asyncio.Future[Frame]] = {}
        self._ids = itertools.count(1)
        self._signal = asyncio.Event()
        self._closed = asyncio.Event()
        self.close_code: int | None = None
        self._reader = asyncio.create_task(self._read(), name=f"ws-reader-{label}")

    # -- reading ---------------------------------------------------------------------------

    async def _read(self) -> None:
        try:
            async for msg in self.ws:
                if msg.type == aiohttp.WSMsgType.TEXT:
                    self._file(msg.data)
                elif msg.type == aiohttp.WSMsgType.BINARY:
                    self.non_json.append(repr(msg.data[:100]))
                elif msg.type == aiohttp.WSMsgType.ERROR:
                    break
        finally:
            self.close_code = self.ws.close_code
            self._closed.set()
            for fut in self._pending.values():
                if not fut.done():
                    fut.set_exception(Closed(f"{self.label}: closed with {self.close_code}"))
            self._wake()

    def _file(self, text: str) -> None:
        now = time.monotonic()
        try:
            frame = json.loads(text)
        except ValueError:
            self.non_json.append(text[:200])
            self._wake()
            return
        if not isinstance(frame, dict):
            self.non_json.append(text[:200])
            self._wake()
            return
        self.frames.append(frame)
        if frame.get("type") in ("ok", "error"):
            rid = frame.get("id")
            fut = self._pending.pop(rid, None) if isinstance(rid, str) else None
            if fut is not None and not fut.done():
                fut.set_result(frame)
            else:
                self.orphans.append(frame)
        else:
            self.events.append(frame)
            if frame.get("type") == "message":
                self.arrivals.setdefault((str(frame.get("conv")), frame.get("seq", -1)), now)
        self._wake()

    def _wake(self) -> None:
        old, self._signal = self._signal, asyncio.Event()
        old.set()

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    # -- sending ---------------------------------------------------------------------------

    def next_id(self) -> str:
        return f"{self.label[:20]}-{next(self._ids)}"

    async def send_raw(self, text: str) -> None:
        await self.ws.send_str(text)

    async def send_frame(self, frame: Mapping[str, Any]) -> None:
        await self.ws.send_str(dumps(frame))

    async def request(
        self, type_: str, *, timeout: float = DEFAULT_TIMEOUT, **fields: Any
    ) -> Frame:
        """Send ``{"type": type_, "id": <fresh>, **fields}`` and return its one reply."""
        rid = self.next_id()
        return await self.request_frame({"type": type_, "id": rid, **fields}, timeout=timeout)

    async def request_frame(
        self, frame: Mapping[str, Any], *, timeout: float = DEFAULT_TIMEOUT
    ) -> Frame:
        """Send a frame whose ``id`` is set and wait for the reply with that id."""
        rid = frame["id"]
        assert isinstance(rid, str)
        return await self.request_text(dumps(frame), rid, timeout=timeout)

    async def request_text(self, text: str, rid: str, *, timeout: float = DEFAULT_TIMEOUT) -> Frame:
        fut: asyncio.Future[Frame] = asyncio.get_running_loop().create_future()
        self._pending[rid] = fut
        await self.ws.send_str(text)
        try:
            return await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            raise AssertionError(
                f"{self.label}: no reply to id {rid!r} within {timeout}s; sent {text[:300]}"
            ) from None
        finally:
            self._pending.pop(rid, None)

    async def ok(self, type_: str, **fields: Any) -> Frame:
        """A request that must succeed; returns the ``ok`` frame."""
        reply = await self.request(type_, **fields)
        assert reply["type"] == "ok", f"{self.label}: {type_} {fields} -> {reply}"
        return reply

    async def error(self, type_: str, **fields: Any) -> Frame:
        """A request that must fail; returns the ``error`` frame."""
        reply = await self.request(type_, **fields)
        assert reply["type"] == "error", f"{self.label}: {type_} {fields} expected error: {reply}"
        assert isinstance(reply.get("code"), str) and isinstance(reply.get("message"), str), reply
        return reply

    async def send(self, body: str = "hi", *, client_id: str | None = None, **target: Any) -> Frame:
        """Send a text message (``conv=`` or ``to=``) and return the ``ok`` reply."""
        cid = client_id or uuid.uuid4().hex
        return await self.ok("send", client_id=cid, body=body, **target)

    async def orphan(self, timeout: float = DEFAULT_TIMEOUT) -> Frame:
        """The next reply that answered no pending request (an ``error`` with ``id: null``)."""

        def take() -> Frame | None:
            return self.orphans.pop(0) if self.orphans else None

        return await self._wait(take, timeout, "an id-less reply")

    # -- events ----------------------------------------------------------------------------

    async def event(
        self,
        type_: str | None = None,
        pred: Predicate | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        **match: Any,
    ) -> Frame:
        """Take the first event (oldest first) of ``type_`` whose fields equal ``match``."""

        def take() -> Frame | None:
            for i, ev in enumerate(self.events):
                if matches(ev, type_, pred, match):
                    return self.events.pop(i)
            return None

        return await self._wait(take, timeout, f"event {type_} {match}")

    async def message(self, conv: str, seq: int | None = None, **match: Any) -> Frame:
        """Take the next ``message`` event of ``conv`` (the one with ``seq`` if given)."""
        if seq is not None:
            match["seq"] = seq
        return await self.event("message", conv=conv, **match)

    def take_events(self, type_: str | None = None, **match: Any) -> list[Frame]:
        """Remove and return every event received so far that matches."""
        taken = [ev for ev in self.events if matches(ev, type_, None, match)]
        self.events = [ev for ev in self.events if not matches(ev, type_, None, match)]
        return taken

    def peek_events(self, type_: str | None = None, **match: Any) -> list[Frame]:
        return [ev for ev in self.events if matches(ev, type_, None, match)]

    async def no_event(self, type_: str | None = None, within: float = QUIET, **match: Any) -> None:
        """Assert that no matching event arrives within ``within`` seconds (or is queued)."""
        await asyncio.sleep(within)
        found = self.peek_events(type_, **match)
        assert not found, f"{self.label}: unexpected {type_} events {found}"

    async def wait_closed(self, timeout: float = DEFAULT_TIMEOUT) -> int | None:
        """Wait (bounded) until the server closes the socket; return the close code."""
        try:
            await asyncio.wait_for(self._closed.wait(), timeout)
        except TimeoutError:
            raise AssertionError(f"{self.label}: still open after {timeout}s") from None
        return self.close_code

    async def _wait(self, take: Callable[[], Frame | None], timeout: float, what: str) -> Frame:
        async def loop() -> Frame:
            while True:
                signal = self._signal
                found = take()
                if found is not None:
                    return found
                if self.closed:
                    raise Closed(f"{self.label}: closed ({self.close_code}) waiting for {what}")
                await signal.wait()

        try:
            return await asyncio.wait_for(loop(), timeout)
        except TimeoutError:
            raise AssertionError(
                f"{self.label}: no {what} within {timeout}s; "
                f"last pending events: {short(self.events[-8:])}"
            ) from None

    async def close(self) -> None:
        if not self.ws.closed:
            try:
                await asyncio.wait_for(self.ws.close(), 3)
            except (TimeoutError, aiohttp.ClientError, OSError):
                pass
        self._reader.cancel()
        try:
            await self._reader
        except (asyncio.CancelledError, Exception):
            pass


def short(obj: object, limit: int = 3000) -> str:
    """A repr for failure messages: long strings cut, the whole thing bounded."""

    def cut(value: Any) -> Any:
        if isinstance(value, str) and len(value) > 80:
            return value[:60] + f"...<{len(value)} chars>"
        if isinstance(value, dict):
            return {k: cut(v) for k, v in value.items()}
        if isinstance(value, list):
            return [cut(v) for v in value[:20]] + (
                [f"...<{len(value)} items>"] if len(value) > 20 else []
            )
        return value

    text = repr(cut(obj))
    return text if len(text) <= limit else text[:limit] + "..."


def matches(ev: Frame, type_: str | None, pred: Predicate | None, match: Mapping[str, Any]) -> bool:
    if type_ is not None and ev.get("type") != type_:
        return False
    if any(ev.get(k) != v for k, v in match.items()):
        return False
    return pred is None or pred(ev)


@dataclass
class User:
    name: str
    password: str
    token: str


class Harness:
    """HTTP and WebSocket access to one server for one test; closes everything at the end."""

    def __init__(self, server: ChatdServer, session: aiohttp.ClientSession) -> None:
        self.server = server
        self.session = session
        self.sockets: list[Ws] = []

    @property
    def base(self) -> str:
        return self.server.base_url

    # -- HTTP ------------------------------------------------------------------------------

    async def http(
        self,
        method: str,
        path: str,
        *,
        token: str | None = None,
        json_body: object = None,
        data: bytes | str | None = None,
        headers: Mapping[str, str] | None = None,
        params: Mapping[str, str] | None = None,
    ) -> tuple[int, Any]:
        """One HTTP request; returns ``(status, parsed JSON body or None or raw text)``."""
        hdrs = dict(headers or {})
        if token is not None:
            hdrs["Authorization"] = f"Bearer {token}"
        kwargs: dict[str, Any] = {"headers": hdrs, "params": params}
        if json_body is not None:
            kwargs["data"] = dumps(json_body)
            hdrs.setdefault("Content-Type", "application/json")
        elif data is not None:
            kwargs["data"] = data
        async with asyncio.timeout(DEFAULT_TIMEOUT):
            async with self.session.request(method, self.base + path, **kwargs) as resp:
                text = await resp.text()
                if not text:
                    return resp.status, None
                try:
                    return resp.status, json.loads(text)
                except ValueError:
                    return resp.status, text

    async def register(self, username: str, password: str = PASSWORD) -> tuple[int, Any]:
        return await self.http(
            "POST", "/api/v1/users", json_body={"username": username, "password": password}
        )

    async def login(
        self, username: str, password: str = PASSWORD, device: str | None = None
    ) -> tuple[int, Any]:
        body: dict[str, str] = {"username": username, "password": password}
        if device is not None:
            body["device"] = device
        return await self.http("POST", "/api/v1/sessions", json_body=body)

    async def user(self, prefix: str = "u") -> User:
        """Register a fresh user and log in; returns its name and token."""
        name = unique_name(prefix)
        status, body = await self.register(name)
        assert status == 201, (status, body)
        status, body = await self.login(name)
        assert status == 201, (status, body)
        return User(name, PASSWORD, body["token"])

    async def users(self, *prefixes: str) -> list[User]:
        return list(await asyncio.gather(*(self.user(p) for p in prefixes)))

    async def token(self, user: User) -> str:
        """Another session (token) of the same user."""
        status, body = await self.login(user.name, user.password)
        assert status == 201, (status, body)
        return str(body["token"])

    # -- WebSocket -------------------------------------------------------------------------

    async def raw_ws(self, headers: Mapping[str, str] | None = None, label: str = "ws") -> Ws:
        """An open WebSocket on which nothing has been sent yet."""
        ws = await asyncio.wait_for(
            self.session.ws_connect(
                self.server.ws_url,
                headers=dict(headers or {}),
                autoping=True,
                max_msg_size=0,
                heartbeat=None,
            ),
            DEFAULT_TIMEOUT,
        )
        conn = Ws(ws, label)
        self.sockets.append(conn)
        return conn

    async def connect(self, user: User | str, device: str = "d1", token: str | None = None) -> Ws:
        """Open a WebSocket and complete ``hello``; the ``ok`` reply is kept in ``.hello``."""
        name = user if isinstance(user, str) else user.name
        tok = token if token is not None else (user.token if isinstance(user, User) else None)
        assert tok is not None
        conn = await self.raw_ws(label=f"{name}/{device}")
        reply = await conn.request("hello", token=tok, device=device)
        assert reply["type"] == "ok", f"hello failed for {name}: {reply}"
        conn.hello = reply
        return conn

    async def close(self) -> None:
        await asyncio.gather(*(s.close() for s in self.sockets), return_exceptions=True)


async def history_all(conn: Ws, conv: str, page: int = 100) -> list[Frame]:
    """Every message of ``conv``, oldest first, fetched with ``after`` paging."""
    messages: list[Frame] = []
    after = 0
    while True:
        reply = await conn.ok("history", conv=conv, after=after, limit=page)
        messages += reply["messages"]
        if not reply["more"]:
            return messages
        assert reply["messages"], f"more=true with an empty page: {reply}"
        after = reply["messages"][-1]["seq"]


async def register_users(server: ChatdServer, prefix: str, count: int) -> list[User]:
    """Register and log in ``count`` fresh users (for module-scoped fixtures)."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        h = Harness(server, session)
        users: list[User] = []
        for start in range(0, count, 10):  # a few at a time: argon2id is deliberately slow
            users += await h.users(*[prefix] * min(10, count - start))
        return users


class RawWs:
    """A hand-made WebSocket client on a socket with a tiny receive buffer.

    It exists to be a *stalled reader*: after ``hello`` the test simply stops calling
    :meth:`read_frame`, so the server's writes back up in the kernel and then in the server.
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def connect(cls, server: ChatdServer, rcvbuf: int = 4096) -> RawWs:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.setblocking(False)
        loop = asyncio.get_running_loop()
        await asyncio.wait_for(loop.sock_connect(sock, (server.host, server.port)), 5)
        reader, writer = await asyncio.open_connection(sock=sock, limit=4096)
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write(
            (
                f"GET /ws HTTP/1.1\r\nHost: {server.host}:{server.port}\r\n"
                "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 101"), head[:200]
        return cls(reader, writer)

    async def send_text(self, text: str) -> None:
        payload = text.encode()
        mask = os.urandom(4)
        n = len(payload)
        if n < 126:
            header = struct.pack("!BB", 0x81, 0x80 | n)
        elif n < 65536:
            header = struct.pack("!BBH", 0x81, 0x80 | 126, n)
        else:
            header = struct.pack("!BBQ", 0x81, 0x80 | 127, n)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.writer.write(header + mask + masked)
        await self.writer.drain()

    async def read_frame(self) -> tuple[int, bytes]:
        """The next frame as ``(opcode, payload)``; raises ``IncompleteReadError`` at EOF."""
        b1, b2 = await self.reader.readexactly(2)
        n = b2 & 0x7F
        if n == 126:
            (n,) = struct.unpack("!H", await self.reader.readexactly(2))
        elif n == 127:
            (n,) = struct.unpack("!Q", await self.reader.readexactly(8))
        mask = await self.reader.readexactly(4) if b2 & 0x80 else b""
        payload = await self.reader.readexactly(n)
        if mask:
            payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        return b1 & 0x0F, payload

    async def read_json(self, timeout: float = DEFAULT_TIMEOUT) -> Frame:
        while True:
            opcode, payload = await asyncio.wait_for(self.read_frame(), timeout)
            if opcode == 1:
                frame: Frame = json.loads(payload)
                return frame
            if opcode == 8:
                raise Closed(f"close frame {payload[:2]!r}")

    async def drain_until_closed(self, timeout: float) -> tuple[int | None, int]:
        """Read until the connection ends: ``(close code or None at EOF, text frames read)``."""

        async def loop() -> tuple[int | None, int]:
            texts = 0
            while True:
                try:
                    opcode, payload = await self.read_frame()
                except (asyncio.IncompleteReadError, ConnectionError):
                    return None, texts
                if opcode == 1:
                    texts += 1
                elif opcode == 8:
                    code = int(struct.unpack("!H", payload[:2])[0]) if len(payload) >= 2 else 1005
                    return code, texts

        return await asyncio.wait_for(loop(), timeout)

    def close(self) -> None:
        self.writer.close()


async def http_history_all(h: Harness, token: str, conv: str, page: int = 100) -> list[Frame]:
    """Every message of ``conv`` over ``GET /api/v1/conversations/{conv}/messages``."""
    messages: list[Frame] = []
    after = 0
    while True:
        status, body = await h.http(
            "GET",
            f"/api/v1/conversations/{conv}/messages",
            token=token,
            params={"after": str(after), "limit": str(page)},
        )
        assert status == 200, (status, body)
        messages += body["messages"]
        if not body["more"]:
            return messages
        assert body["messages"], f"more=true with an empty page: {body}"
        after = body["messages"][-1]["seq"]
