"""PostgreSQL stopped and started under running chatd processes; chatd is not restarted."""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from collections.abc import Callable

import asyncpg

from tests.cluster.test_redis_outage import until_ready
from tests.cluster.test_seq import pg_store, three_on  # noqa: F401  (fixtures reused)
from tests.e2e.client import Harness
from tests.e2e.server import ChatdServer


def pg_ctl(action: str) -> None:
    version = os.listdir("/etc/postgresql")[0]
    subprocess.run(
        ["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", action],
        timeout=30,
        check=False,
    )


async def pg_accepts(within: float = 30) -> None:
    deadline = time.monotonic() + within
    while True:
        try:
            conn = await asyncio.wait_for(
                asyncpg.connect("postgresql://postgres@127.0.0.1:5432/test"), 2
            )
            await conn.close()
            return
        except (OSError, asyncpg.PostgresError, TimeoutError):
            assert time.monotonic() < deadline, "PostgreSQL did not accept connections again"
            await asyncio.sleep(0.2)


async def test_sends_unavailable_while_postgres_is_down(
    pg_store: str,  # noqa: F811
    three_on: Callable[[str], list[ChatdServer]],  # noqa: F811
    harness: Callable[[ChatdServer], Harness],
) -> None:
    servers = three_on(pg_store)
    hs = [harness(s) for s in servers]
    a, b = await hs[0].users("a", "b")
    ca = await hs[0].connect(a)
    cb = await hs[1].connect(b)
    conv = (await ca.send("before", to=b.name))["conv"]
    try:
        await asyncio.to_thread(pg_ctl, "stop")
        started = time.monotonic()
        reply = await asyncio.wait_for(
            ca.request("send", conv=conv, client_id="down1", body="x"), 10
        )
        assert time.monotonic() - started < 10
        assert reply["type"] == "error" and reply["code"] == "unavailable", reply
        body = await until_ready(hs[0], 503, within=10)
        assert "store" in str(body), body
    finally:
        await asyncio.to_thread(pg_ctl, "start")
        await pg_accepts()
    await until_ready(hs[0], 200, within=20)
    async with asyncio.timeout(20):
        while True:
            reply = await ca.request("send", conv=conv, client_id="up1", body="y")
            if reply["type"] == "ok":
                break
            await asyncio.sleep(0.5)
    await cb.message(conv, seq=reply["seq"])
