"""Push through a real ``chatd serve`` process (default ``log`` provider), over real sockets."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest

from chatd.push.vapid import KEY_FILE, VapidKeys
from tests.e2e.client import Harness
from tests.e2e.server import ChatdServer, ServerFactory


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ChatdServer]:
    factory = ServerFactory(tmp_path)
    try:
        yield factory(log_level="info")
    finally:
        factory.close()


@pytest.fixture
async def h(server: ChatdServer) -> AsyncIterator[Harness]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        harness = Harness(server, session)
        try:
            yield harness
        finally:
            await harness.close()


async def wait_for_log(server: ChatdServer, needle: str, within: float = 5.0) -> str:
    async with asyncio.timeout(within):
        while needle not in (text := server.stderr_text()):  # noqa: ASYNC110 - a file
            await asyncio.sleep(0.05)
    return text


async def test_offline_member_is_pushed_and_the_key_survives_a_restart(
    server: ChatdServer, h: Harness
) -> None:
    alice, bob = await h.users("alice", "bob")
    status, body = await h.http("GET", "/api/v1/push/vapid-public-key", token=bob.token)
    assert status == 200, body
    key = body["public_key"]
    on_disk = VapidKeys.load_or_create(server.data_dir, "mailto:a@example.org")
    assert on_disk.public_key_b64 == key
    assert (server.data_dir / KEY_FILE).stat().st_mode & 0o077 == 0

    status, body = await h.http(
        "POST",
        "/api/v1/push/subscriptions",
        token=bob.token,
        json_body={"kind": "webhook", "url": "https://hooks.example.org/bob"},
    )
    assert status == 201, body
    sub_id = body["id"]

    # Bob has no device online: alice's message is pushed (recorded, in log mode).
    ws = await h.connect(alice)
    reply = await ws.send("are you there?", to=bob.name)
    assert reply["type"] == "ok", reply
    await wait_for_log(
        server, f"push (log only) to {bob.name} via webhook {sub_id}: conv={reply['conv']} seq="
    )

    status, _ = await h.http("DELETE", f"/api/v1/push/subscriptions/{sub_id}", token=bob.token)
    assert status == 204

    await h.close()
    server.restart()
    status, body = await h.http("GET", "/api/v1/push/vapid-public-key", token=bob.token)
    assert (status, body["public_key"]) == (200, key)
