"""``hello`` while the store cannot answer: ``unavailable`` and close 1013 (try again later),
not 4401, since the token may well be good; the same token works once the store answers.

The store is made to fail for real without stopping the machine's PostgreSQL (other tests
use it): chatd runs on a fresh database of its own, with a one-second statement timeout, and
the test holds an exclusive lock on that database's ``sessions`` table, so the session lookup
times out as it would against an overloaded or unreachable server.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from .client import Harness
from .prometheus import histogram, samples, scrape
from .server import ChatdServer, ServerFactory


@pytest.fixture
async def fresh_database(postgres_url: str) -> AsyncIterator[str]:
    """A PostgreSQL database for this test only, dropped afterwards."""
    name = "chatd_hello_" + uuid.uuid4().hex[:10]
    admin = await asyncpg.connect(postgres_url, timeout=10)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    try:
        yield urlunsplit(urlsplit(postgres_url)._replace(path="/" + name))
    finally:
        admin = await asyncpg.connect(postgres_url, timeout=10)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


async def test_hello_while_the_store_is_down_closes_with_1013_and_the_token_still_works(
    fresh_database: str,
    server_factory: ServerFactory,
    harness: Callable[[ChatdServer], Harness],
) -> None:
    server = server_factory(store=fresh_database + "?command_timeout=1&acquire_timeout=2")
    h = harness(server)
    user = await h.user("storedown")
    locker = await asyncpg.connect(fresh_database, timeout=10)
    try:
        async with locker.transaction():
            await locker.execute("LOCK TABLE sessions IN ACCESS EXCLUSIVE MODE")
            conn = await h.raw_ws(label="while-down")
            reply = await conn.request("hello", token=user.token, device="d", timeout=15)
            assert reply["type"] == "error" and reply["code"] == "unavailable", reply
            assert await conn.wait_closed(timeout=10) == 1013
    finally:
        await locker.close()
    # An operator sees the outage in /metrics: the failed lookup, by its code and its duration
    # (about command_timeout, far past what a session lookup takes).
    text = await scrape(h)
    failed = [
        value
        for name, labels, value in samples(text)
        if name == "chatd_store_errors_total"
        and labels == {"op": "get_session", "code": "unavailable"}
    ]
    assert failed and failed[0] >= 1, failed
    buckets, _, _ = histogram(text, "chatd_store_seconds", op="get_session")
    assert buckets[-1][1] - dict(buckets)[0.5] >= 1, buckets  # at least one call took > 0.5 s
    again = await h.connect(user, "after")  # the client kept its token, and it is good
    assert again.hello is not None and again.hello["user"] == user.name
