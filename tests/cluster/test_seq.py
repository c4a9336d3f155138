"""Concurrent sends into one group through three processes get gap-free, unique seqs."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import asyncpg
import pytest

from tests.cluster.conftest import bus_url
from tests.conftest import require_backend, tcp_reachable
from tests.e2e.client import Harness, history_all
from tests.e2e.server import ChatdServer, ServerFactory

SENDS = 300


@pytest.fixture
async def pg_store() -> AsyncIterator[str]:
    """A fresh PostgreSQL database for this test, dropped afterwards."""
    if not tcp_reachable("127.0.0.1", 5432):
        require_backend("postgres", "nothing listens on 127.0.0.1:5432")
    name = "chatd_cl_" + uuid.uuid4().hex[:10]
    admin_url = "postgresql://postgres@127.0.0.1:5432/test"
    admin = await asyncio.wait_for(asyncpg.connect(admin_url), 10)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    try:
        yield f"postgresql://postgres@127.0.0.1:5432/{name}"
    finally:
        # a fresh connection: a test may have restarted PostgreSQL meanwhile
        admin = await asyncio.wait_for(asyncpg.connect(admin_url), 10)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


@pytest.fixture
def three_on(tmp_path: Path) -> Iterator[Callable[[str], list[ChatdServer]]]:
    if not tcp_reachable("127.0.0.1", 6379):
        require_backend("redis", "nothing listens on 127.0.0.1:6379")
    factory = ServerFactory(tmp_path / "servers")
    prefix = "cs" + uuid.uuid4().hex[:10]

    def start(store: str) -> list[ChatdServer]:
        return [
            factory(
                bus=bus_url(prefix),
                server_id=f"s{i}",
                presence_grace=0.5,
                store=store,
                messages_per_second=1000,
                message_burst=1000,
            )
            for i in range(3)
        ]

    try:
        yield start
    finally:
        factory.close()


async def concurrent_sends(servers: list[ChatdServer], harness: Callable[..., Harness]) -> None:
    hs = [harness(s) for s in servers]
    users = await hs[0].users("a", "b", "c")
    conns = [await hs[i].connect(users[i]) for i in range(3)]
    conv = (await conns[0].ok("create_group", title="t", members=[u.name for u in users[1:]]))[
        "conv"
    ]
    await asyncio.sleep(0.2)
    replies = await asyncio.gather(*(conns[n % 3].send(f"m{n}", conv=conv) for n in range(SENDS)))
    acked = sorted(r["seq"] for r in replies)
    assert len(set(acked)) == SENDS, "two sends acknowledged with the same seq"
    history = await history_all(conns[1], conv)
    seqs = [m["seq"] for m in history]
    assert seqs == list(range(1, len(seqs) + 1)), "history seqs are not exactly 1..N"
    text = [m["seq"] for m in history if m["kind"] == "text"]
    assert text == acked and len(text) == SENDS


async def test_seq_on_shared_sqlite(
    tmp_path: Path, three_on: Callable[[str], list[ChatdServer]], harness: Callable[..., Harness]
) -> None:
    await concurrent_sends(three_on(f"sqlite:///{tmp_path / 'chatd.db'}"), harness)


async def test_seq_on_postgres(
    pg_store: str, three_on: Callable[[str], list[ChatdServer]], harness: Callable[..., Harness]
) -> None:
    await concurrent_sends(three_on(pg_store), harness)
