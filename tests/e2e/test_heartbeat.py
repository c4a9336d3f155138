"""The WebSocket heartbeat (protocol section 1): the server pings every ``heartbeat`` seconds,
keeps a socket whose client answers (or sends anything), and closes with 4408, after a close
frame, a socket that missed two pongs in a row. Real server, real sockets; the client below
answers pings only when told to and records every control frame it gets."""

# Every wait in a test is bounded, so the bound is part of each helper's signature.
# ruff: noqa: ASYNC109

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest

from .client import DEFAULT_TIMEOUT, Harness, User, dumps
from .server import ChatdServer, ServerFactory

HEARTBEAT = 0.5


class PingWatcher:
    """One socket opened with ``autoping=False``: pings reach this code, which answers them
    only if ``answer_pings``; text frames are kept, the close code is recorded."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse, answer_pings: bool) -> None:
        self.ws = ws
        self.answer_pings = answer_pings
        self.pings: list[float] = []  # monotonic arrival of each ping
        self.pongs: list[bytes] = []  # payloads of pongs the server sent us
        self.texts: list[dict[str, Any]] = []
        self.closed_at: float | None = None
        self.done = asyncio.Event()
        self._arrived = asyncio.Event()  # replaced after each frame; see ``until``
        self.reader = asyncio.create_task(self._read())

    @classmethod
    async def open(
        cls, session: aiohttp.ClientSession, server: ChatdServer, answer_pings: bool
    ) -> PingWatcher:
        ws = await asyncio.wait_for(
            session.ws_connect(server.ws_url, autoping=False, heartbeat=None), DEFAULT_TIMEOUT
        )
        return cls(ws, answer_pings)

    async def _read(self) -> None:
        try:
            async for msg in self.ws:
                if msg.type == aiohttp.WSMsgType.PING:
                    self.pings.append(time.monotonic())
                    if self.answer_pings:
                        await self.ws.pong(msg.data)
                elif msg.type == aiohttp.WSMsgType.PONG:
                    self.pongs.append(msg.data)
                elif msg.type == aiohttp.WSMsgType.TEXT:
                    self.texts.append(json.loads(msg.data))
                self._wake()
        finally:
            self.closed_at = time.monotonic()
            self.done.set()
            self._wake()

    def _wake(self) -> None:
        arrived, self._arrived = self._arrived, asyncio.Event()
        arrived.set()

    async def until(
        self, found: Callable[[], Any], what: str, timeout: float = DEFAULT_TIMEOUT
    ) -> Any:
        """Wait (bounded) until ``found()`` returns something true, and return it."""
        async with asyncio.timeout(timeout):
            while True:
                arrived = self._arrived
                result = found()
                if result:
                    return result
                if self.done.is_set():
                    raise AssertionError(f"closed ({self.ws.close_code}) waiting for {what}")
                await arrived.wait()

    async def hello(self, user: User) -> dict[str, Any]:
        await self.ws.send_str(dumps({"type": "hello", "id": "h", "token": user.token}))
        return await self.reply("h")

    async def reply(self, rid: str) -> dict[str, Any]:
        def find() -> dict[str, Any] | None:
            return next((f for f in self.texts if f.get("id") == rid), None)

        frame: dict[str, Any] = await self.until(find, f"reply {rid}")
        return frame

    async def wait_closed(self, timeout: float) -> int | None:
        await asyncio.wait_for(self.done.wait(), timeout)
        return self.ws.close_code

    async def close(self) -> None:
        if not self.ws.closed:
            try:
                await asyncio.wait_for(self.ws.close(), 3)
            except (TimeoutError, aiohttp.ClientError, OSError):
                pass
        self.reader.cancel()
        await asyncio.gather(self.reader, return_exceptions=True)


@pytest.fixture
async def watchers(
    http_session: aiohttp.ClientSession,
) -> AsyncIterator[Callable[[ChatdServer, bool], Any]]:
    opened: list[PingWatcher] = []

    async def open_one(server: ChatdServer, answer_pings: bool) -> PingWatcher:
        watcher = await PingWatcher.open(http_session, server, answer_pings)
        opened.append(watcher)
        return watcher

    try:
        yield open_one
    finally:
        await asyncio.gather(*(w.close() for w in opened), return_exceptions=True)


@pytest.fixture
def fast_server(server_factory: ServerFactory) -> ChatdServer:
    return server_factory(heartbeat=HEARTBEAT)


async def test_a_client_that_answers_pings_stays_connected(
    fast_server: ChatdServer, harness: Callable[[ChatdServer], Harness], watchers: Any
) -> None:
    user = await harness(fast_server).user("pong")
    watcher: PingWatcher = await watchers(fast_server, True)
    assert (await watcher.hello(user))["type"] == "ok"
    await asyncio.sleep(HEARTBEAT * 7)
    assert not watcher.done.is_set(), f"closed with {watcher.ws.close_code}"
    assert len(watcher.pings) >= 4, f"only {len(watcher.pings)} pings in 7 intervals"
    await watcher.ws.send_str(dumps({"type": "ping", "id": "p"}))
    assert (await watcher.reply("p"))["type"] == "ok"


async def test_a_silent_client_is_closed_with_4408_after_two_missed_pongs(
    fast_server: ChatdServer, harness: Callable[[ChatdServer], Harness], watchers: Any
) -> None:
    h = harness(fast_server)
    user = await h.user("silent")
    watcher: PingWatcher = await watchers(fast_server, False)
    assert (await watcher.hello(user))["type"] == "ok"
    code = await watcher.wait_closed(timeout=HEARTBEAT * 10)
    # A close frame with the heartbeat's code (aiohttp reports 1006 when there is none), and
    # only after the second unanswered ping: one missed pong is not enough.
    assert code == 4408
    assert len(watcher.pings) == 2, watcher.pings
    assert watcher.closed_at is not None
    assert watcher.closed_at - watcher.pings[0] >= HEARTBEAT * 1.5
    # An operator sees it in /metrics.
    assert await counter(h, "chatd_ws_heartbeat_closes_total") == 1
    assert await counter(h, "chatd_ws_pings_total") >= 2


async def counter(h: Harness, name: str) -> float:
    status, text = await h.http("GET", "/metrics")
    assert status == 200, (status, text)
    found = re.search(rf"^{name}\s+([0-9.e+]+)$", str(text), re.M)
    assert found, f"{name} missing from /metrics"
    return float(found.group(1))


async def test_any_frame_counts_as_an_answer(
    fast_server: ChatdServer, harness: Callable[[ChatdServer], Harness], watchers: Any
) -> None:
    # A client that never pongs but keeps sending requests is alive and reading.
    user = await harness(fast_server).user("chatty")
    watcher: PingWatcher = await watchers(fast_server, False)
    assert (await watcher.hello(user))["type"] == "ok"
    until = time.monotonic() + HEARTBEAT * 7
    while time.monotonic() < until:
        await watcher.ws.send_str(dumps({"type": "ping"}))  # no id: no reply
        await asyncio.sleep(HEARTBEAT / 2)
    assert not watcher.done.is_set(), f"closed with {watcher.ws.close_code}"
    assert len(watcher.pings) >= 4
    # Once it falls silent, it is closed like any other.
    assert await watcher.wait_closed(timeout=HEARTBEAT * 10) == 4408


async def test_client_pings_are_answered_before_and_after_hello(
    fast_server: ChatdServer, harness: Callable[[ChatdServer], Harness], watchers: Any
) -> None:
    user = await harness(fast_server).user("pinger")
    watcher: PingWatcher = await watchers(fast_server, True)
    await watcher.ws.ping(b"before")
    assert (await watcher.hello(user))["type"] == "ok"
    await watcher.ws.ping(b"after")
    await watcher.until(lambda: len(watcher.pongs) >= 2, "two pongs")
    assert watcher.pongs == [b"before", b"after"]


async def test_a_ping_before_hello_does_not_extend_the_hello_deadline(
    server_factory: ServerFactory, watchers: Any
) -> None:
    server = server_factory(hello_timeout=1)
    watcher: PingWatcher = await watchers(server, True)
    started = time.monotonic()
    for _ in range(8):
        if watcher.done.is_set():
            break
        await watcher.ws.ping(b"still here")
        await asyncio.sleep(0.25)
    assert await watcher.wait_closed(timeout=5) == 4408
    assert watcher.closed_at is not None and watcher.closed_at - started < 2.5


async def test_hello_reports_the_heartbeat_as_the_protocol_shows_it(
    server_factory: ServerFactory, harness: Callable[[ChatdServer], Harness]
) -> None:
    default = server_factory()
    h = harness(default)
    reply = (await h.connect(await h.user("hb"))).hello
    assert reply is not None
    assert reply["heartbeat"] == 25 and type(reply["heartbeat"]) is int, reply
    fractional = server_factory(heartbeat=HEARTBEAT)
    h = harness(fractional)
    reply = (await h.connect(await h.user("hb"))).hello
    assert reply is not None and reply["heartbeat"] == HEARTBEAT, reply


async def test_the_heartbeat_stops_cleanly_with_the_server(
    fast_server: ChatdServer, harness: Callable[[ChatdServer], Harness], watchers: Any
) -> None:
    user = await harness(fast_server).user("bye")
    watcher: PingWatcher = await watchers(fast_server, True)
    assert (await watcher.hello(user))["type"] == "ok"
    await asyncio.sleep(HEARTBEAT * 2)
    assert await asyncio.to_thread(fast_server.stop) == 0
    assert await watcher.wait_closed(timeout=DEFAULT_TIMEOUT) == 1001
    assert "Traceback" not in fast_server.stderr_text()
