"""The WebSocket handshake: hello, tokens, the hello deadline, Origin checks (issue 2)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import aiohttp
import pytest

from .client import Harness, RawWs, dumps
from .server import ChatdServer, ServerFactory


async def test_hello_ok_fields(h: Harness) -> None:
    user = await h.user("hello")
    conn = await h.connect(user, "laptop")
    reply = conn.hello
    assert reply is not None
    assert reply["user"] == user.name
    assert isinstance(reply["connection"], str) and reply["connection"]
    assert isinstance(reply["server"], str) and reply["server"]
    assert reply["heartbeat"] == 25
    other = await h.connect(user, "phone")
    assert other.hello is not None and other.hello["connection"] != reply["connection"]


@pytest.mark.parametrize("token", ["bogus-token", "", "x" * 300])
async def test_hello_bad_token_is_unauthorized_then_4401(h: Harness, token: str) -> None:
    conn = await h.raw_ws()
    reply = await conn.request("hello", token=token, device="d")
    assert reply["type"] == "error" and reply["code"] == "unauthorized", reply
    assert await conn.wait_closed() == 4401


async def test_hello_without_token_and_no_bearer_is_unauthorized(h: Harness) -> None:
    conn = await h.raw_ws()
    reply = await conn.request("hello", device="d")
    assert reply["type"] == "error" and reply["code"] == "unauthorized", reply
    assert await conn.wait_closed() == 4401


@pytest.mark.parametrize(
    "frame",
    [
        {"type": "ping", "id": "early"},
        {"type": "send", "id": "early", "to": "bob", "client_id": "c", "body": "x"},
        {"type": "conversations", "id": "early"},
        {"type": "history", "id": "early", "conv": "c1"},
        {"type": "history", "id": "early", "limit": "not a number"},
    ],
)
async def test_request_before_hello_is_unauthorized_then_4401(
    h: Harness, frame: dict[str, str]
) -> None:
    conn = await h.raw_ws()
    reply = await conn.request_frame(frame)
    assert reply["type"] == "error" and reply["code"] == "unauthorized", reply
    assert reply["id"] == "early"
    assert await conn.wait_closed() == 4401


@pytest.mark.parametrize("text", ["not json", "[]", '{"type": "nope"}'])
async def test_malformed_frame_before_hello_is_unauthorized_then_4401(
    h: Harness, text: str
) -> None:
    conn = await h.raw_ws()
    await conn.send_raw(text)
    reply = await conn.orphan()
    assert reply["type"] == "error" and reply["code"] == "unauthorized", reply
    assert await conn.wait_closed() == 4401


async def test_bearer_at_upgrade_then_hello_without_token(h: Harness) -> None:
    user = await h.user("bearer")
    conn = await h.raw_ws(headers={"Authorization": f"Bearer {user.token}"})
    reply = await conn.request("hello", device="cli")
    assert reply["type"] == "ok", reply
    assert reply["user"] == user.name
    assert (await conn.ok("ping"))["type"] == "ok"


async def test_ping(h: Harness) -> None:
    user = await h.user("ping")
    conn = await h.connect(user)
    before = int(time.time() * 1000)
    reply = await conn.ok("ping")
    assert isinstance(reply["ts"], int)
    assert abs(reply["ts"] - before) < 60_000
    # a ping without an id gets no reply at all; the next one with an id does
    await conn.send_frame({"type": "ping"})
    await conn.ok("ping")
    assert conn.orphans == []


async def test_healthz_answers_during_websocket_traffic(h: Harness) -> None:
    user = await h.user("hz")
    conn = await h.connect(user)
    await conn.ok("ping")
    assert (await h.http("GET", "/healthz"))[0] == 200


# -- Origin ---------------------------------------------------------------------------------


async def upgrade_status(h: Harness, origin: str | None) -> int:
    headers = {"Origin": origin} if origin is not None else {}
    try:
        ws = await asyncio.wait_for(h.session.ws_connect(h.server.ws_url, headers=headers), 5)
    except aiohttp.WSServerHandshakeError as exc:
        return exc.status
    await ws.close()
    return 101


async def test_origin_default_allows_own_origin_and_no_origin(h: Harness) -> None:
    assert await upgrade_status(h, None) == 101
    assert await upgrade_status(h, h.server.origin) == 101


@pytest.mark.parametrize(
    "origin",
    ["http://evil.example", "null", "https://127.0.0.1", "http://127.0.0.1:1"],
)
async def test_origin_foreign_is_refused_with_403(h: Harness, origin: str) -> None:
    assert await upgrade_status(h, origin) == 403


async def test_origin_allowlist_is_exact(
    server_factory: ServerFactory, harness: Callable[[ChatdServer], Harness]
) -> None:
    server = server_factory(allowed_origins="http://a.example,https://b.example:8443")
    h = harness(server)
    assert await upgrade_status(h, "http://a.example") == 101
    assert await upgrade_status(h, "https://b.example:8443") == 101
    assert await upgrade_status(h, None) == 101
    for bad in (
        "http://a.example:8080",
        "https://a.example",
        "http://a.example.evil.com",
        "http://evila.example",
        "https://b.example",
        "http://b.example:8443",
        server.origin,  # the allowlist replaces the default
    ):
        assert await upgrade_status(h, bad) == 403, bad


async def test_no_hello_closes_with_4408(
    server_factory: ServerFactory, harness: Callable[[ChatdServer], Harness]
) -> None:
    server = server_factory(hello_timeout=1)
    h = harness(server)
    conn = await h.raw_ws()
    started = time.monotonic()
    assert await conn.wait_closed(timeout=6) == 4408
    assert time.monotonic() - started >= 0.8


async def test_heartbeat_keeps_answering_clients_and_drops_silent_ones(
    server_factory: ServerFactory, harness: Callable[[ChatdServer], Harness]
) -> None:
    server = server_factory(heartbeat=0.3)
    h = harness(server)
    user = await h.user("heartbeat")
    good = await h.connect(user, "good")  # aiohttp answers pings on its own
    assert good.hello is not None and good.hello["heartbeat"] == 0.3

    silent = await RawWs.connect(server)  # reads, but never answers a ping
    await silent.send_text(dumps({"type": "hello", "id": "h", "token": user.token}))
    assert (await silent.read_json())["type"] == "ok"
    pings = 0
    started = time.monotonic()
    while True:
        try:
            opcode, _ = await asyncio.wait_for(silent.read_frame(), 5)
        except (asyncio.IncompleteReadError, ConnectionError):
            break
        if opcode == 9:
            pings += 1
        elif opcode == 8:
            break
        if time.monotonic() - started > 4:
            break
    silent.close()
    assert pings >= 1, "the server sent no WebSocket ping"
    assert time.monotonic() - started < 4, "a client that never pongs was kept too long"
    await asyncio.sleep(0.5)
    assert not good.closed
    await good.ok("ping")


async def test_connections_per_user_are_capped(
    server_factory: ServerFactory, harness: Callable[[ChatdServer], Harness]
) -> None:
    h = harness(server_factory(max_connections_per_user=2))
    user, other = await h.users("capped", "other")
    first = await h.connect(user, "one")
    second = await h.connect(user, "two")
    third = await h.raw_ws(label="three")
    reply = await third.request("hello", token=user.token, device="three")
    assert reply["type"] == "error" and reply["code"] == "rate_limited", reply
    assert await third.wait_closed() is not None
    await first.ok("ping")
    await second.ok("ping")
    await h.connect(other, "one")  # the cap is per user
    await first.close()
    deadline = time.monotonic() + 3  # the server forgets the closed socket promptly
    while True:
        conn = await h.raw_ws(label="again")
        reply = await conn.request("hello", token=user.token, device="again")
        if reply["type"] == "ok":
            break
        assert time.monotonic() < deadline, f"a freed slot was not reusable: {reply}"
        await asyncio.sleep(0.05)
    await conn.ok("ping")
