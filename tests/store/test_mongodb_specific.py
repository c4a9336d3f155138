"""What only the MongoDB store has to prove.

Without a server (always run): the URL is understood without any I/O, and an unreachable
server stops ``start`` with a one-line ``ConfigError`` within the configured timeout; both go
through the real PyMongo client.

With a server (only when ``CHATD_TEST_MONGODB_URL`` names a replica set, e.g.
``mongodb://127.0.0.1:27017/?replicaSet=rs0``): several stores appending into one
conversation get gapless seqs, and racing retries store one message. There is no MongoDB on
the development machine, so these tests are not defined at all without the variable (the
contract suite in ``test_contract.py`` follows the same rule).
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import AsyncIterator
from urllib.parse import urlsplit, urlunsplit

import pytest

from chatd.errors import ConfigError, Unavailable
from chatd.models import NewMessage
from chatd.store import open_store
from chatd.store.mongodb import MongoStore, redact
from tests.conftest import free_port

MONGODB_URL = os.environ.get("CHATD_TEST_MONGODB_URL", "")


def msg(conv: str, sender: str, client_id: str | None, n: int = 0) -> NewMessage:
    return NewMessage(
        conv=conv,
        sender=sender,
        msg_id=uuid.uuid4().hex,
        ts=1_764_316_800_000 + n,
        client_id=client_id,
        body=f"hello {n}",
    )


def test_the_url_is_understood_without_io() -> None:
    store = open_store("mongodb://u:pw@h1:27017,h2:27017/chat?replicaSet=rs0&timeoutMS=2500")
    assert isinstance(store, MongoStore)
    assert store._database_name == "chat"
    assert store._timeout == 2.5
    assert store._client_options == {
        "serverSelectionTimeoutMS": 2500,
        "connectTimeoutMS": 2500,
        "w": "majority",
    }
    # The URL's own settings win; the database defaults to "chatd".
    other = MongoStore("mongodb://h/?w=1&serverSelectionTimeoutMS=100")
    assert other._database_name == "chatd"
    assert other._client_options == {"connectTimeoutMS": 5000}
    # An SRV URL needs DNS, which must wait for start().
    assert isinstance(open_store("mongodb+srv://cluster.example.invalid/chat"), MongoStore)


@pytest.mark.parametrize("url", ["mongodb://h/?timeoutMS=0", "mongodb://h/?timeoutMS=soon"])
def test_bad_options_are_one_line_config_errors(url: str) -> None:
    with pytest.raises(ConfigError) as info:
        MongoStore(url)
    assert "\n" not in str(info.value)


def test_redact_hides_the_password() -> None:
    assert redact("mongodb://u:secret@h1,h2/x") == "mongodb://u:***@h1,h2/x"


async def test_a_malformed_url_is_a_config_error_at_start() -> None:
    store = MongoStore("mongodb://u:pw@127.0.0.1:port/chatd")
    with pytest.raises(ConfigError) as info:
        await asyncio.wait_for(store.start(), 10)
    assert "\n" not in str(info.value) and ":pw@" not in str(info.value)


async def test_unreachable_server_at_start_is_a_one_line_config_error() -> None:
    port = free_port()  # nothing listens there
    store = MongoStore(f"mongodb://u:pw@127.0.0.1:{port}/chatd?timeoutMS=500")
    started = time.monotonic()
    with pytest.raises(ConfigError) as info:
        await asyncio.wait_for(store.start(), 10)
    assert time.monotonic() - started < 5
    text = str(info.value)
    assert "\n" not in text and f"127.0.0.1:{port}" in text and ":pw@" not in text
    with pytest.raises(Unavailable):
        await store.ping()
    with pytest.raises(Unavailable):
        await store.append_message(msg("c", "alice", "x"))
    await store.close()


if MONGODB_URL:

    @pytest.fixture
    async def database_url() -> AsyncIterator[str]:
        from pymongo import AsyncMongoClient

        name = f"chatd_mongospec_{uuid.uuid4().hex[:12]}"
        parts = urlsplit(MONGODB_URL)
        try:
            yield urlunsplit(parts._replace(path=f"/{name}"))
        finally:
            client: AsyncMongoClient[dict[str, object]] = AsyncMongoClient(MONGODB_URL)
            try:
                await client.drop_database(name)
            finally:
                await client.close()

    async def _group(store: MongoStore, conv: str, users: list[str]) -> None:
        for user in users:
            await store.create_user(user, "hash", 1)
        members = [(users[0], "owner"), *((user, "member") for user in users[1:])]
        system = NewMessage(conv, users[0], uuid.uuid4().hex, 1, kind="system", event={})
        await store.create_group(conv, "ops", members, system)

    async def test_several_stores_appending_to_one_conversation_get_gapless_seqs(
        database_url: str,
    ) -> None:
        stores = [MongoStore(f"{database_url}?timeoutMS=30000") for _ in range(3)]
        users = ["alice", "bob", "carol"]
        try:
            await asyncio.wait_for(asyncio.gather(*(s.start() for s in stores)), 60)
            await _group(stores[0], "g1", users)

            async def send(n: int) -> int:
                result = await stores[n % 3].append_message(msg("g1", users[n % 3], f"c{n}", n))
                return result.message.seq

            seqs = await asyncio.wait_for(asyncio.gather(*(send(n) for n in range(300))), 120)
            assert sorted(seqs) == list(range(2, 302))
            conv = await stores[1].get_conversation("g1")
            assert conv is not None and conv.last_seq == 301
        finally:
            await asyncio.gather(*(s.close() for s in stores))

    async def test_racing_retries_store_one_message(database_url: str) -> None:
        stores = [MongoStore(f"{database_url}?timeoutMS=30000") for _ in range(3)]
        try:
            await asyncio.wait_for(asyncio.gather(*(s.start() for s in stores)), 60)
            await _group(stores[0], "g1", ["alice", "bob"])
            first = msg("g1", "alice", "same-client-id")
            results = await asyncio.wait_for(
                asyncio.gather(*(stores[n % 3].append_message(first) for n in range(12))), 60
            )
            assert sum(not r.duplicate for r in results) == 1
            assert {r.message.seq for r in results} == {2}
            nxt = await stores[1].append_message(msg("g1", "bob", "other", 1))
            assert nxt.message.seq == 3
        finally:
            await asyncio.gather(*(s.close() for s in stores))
