"""`chatd user disable` and `chatd user passwd` against a cluster on the Redis bus: the command
has no bus, yet every process closes the user's sockets with 4401 within seconds, on the
shared SQLite file and on PostgreSQL alike."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from tests.cluster.test_seq import pg_store, three_on  # noqa: F401  (fixtures reused)
from tests.e2e.client import Harness, Ws
from tests.e2e.server import ChatdServer, run_cli


async def cut_off_everywhere(
    servers: list[ChatdServer], harness: Callable[[ChatdServer], Harness], store: str, action: str
) -> None:
    hs = [harness(s) for s in servers]
    alice, bob = await hs[0].users("alice", "bob")
    alices = [await h.connect(alice, device=f"d{i}") for i, h in enumerate(hs)]
    bobs = [await h.connect(bob, device=f"d{i}") for i, h in enumerate(hs)]
    result = await asyncio.to_thread(
        run_cli, "user", action, alice.name, "--store", store, stdin="a-new-password\n"
    )
    assert result.returncode == 0, result.stderr
    codes = await asyncio.gather(*(ws.wait_closed(timeout=5) for ws in alices))
    assert codes == [4401] * len(servers)
    await assert_open(bobs)


async def assert_open(sockets: list[Ws]) -> None:
    for ws in sockets:
        assert not ws.closed, f"{ws.label} closed with {ws.close_code}"
        await ws.ok("ping")


async def test_disable_on_a_shared_sqlite_file_closes_sockets_on_every_process(
    trio: list[ChatdServer], harness: Callable[[ChatdServer], Harness]
) -> None:
    store = trio[0].flags["store"]
    await cut_off_everywhere(trio, harness, str(store), "disable")


async def test_passwd_on_postgres_closes_sockets_on_every_process(
    three_on: Callable[[str], list[ChatdServer]],  # noqa: F811
    pg_store: str,  # noqa: F811
    harness: Callable[[ChatdServer], Harness],
) -> None:
    await cut_off_everywhere(three_on(pg_store), harness, pg_store, "passwd")
