"""The same user-visible scenarios against every store a server can run on.

``memory://``, the default SQLite file and PostgreSQL (a fresh database per test, dropped
afterwards). PostgreSQL is skipped when none answers (a failure under ``CI=true``).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Iterator
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import pytest

from tests.conftest import require_backend

from .client import Closed, Harness, Ws, history_all
from .lossck import Sent, check
from .server import ChatdServer, ServerFactory

STORES = ["memory", "sqlite", "postgresql"]


def _with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, f"/{name}", parts.query, parts.fragment))


async def _admin(url: str, sql: str) -> None:
    import asyncpg

    conn = await asyncio.wait_for(asyncpg.connect(url), 10)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@pytest.fixture(params=STORES)
def store_flags(request: pytest.FixtureRequest) -> Iterator[dict[str, str]]:
    """Server flags selecting the store under test ({} is the default SQLite file)."""
    kind = request.param
    if kind == "memory":
        yield {"store": "memory://"}
    elif kind == "sqlite":
        yield {}
    else:
        base = request.getfixturevalue("postgres_url")
        try:
            import asyncpg  # noqa: F401
        except ImportError:
            require_backend("postgres", "asyncpg is not installed")
        name = f"chatd_e2e_{uuid.uuid4().hex[:12]}"
        try:
            asyncio.run(_admin(base, f'CREATE DATABASE "{name}"'))
        except (OSError, TimeoutError) as exc:
            require_backend("postgres", f"cannot create a database: {exc}")
        try:
            yield {"store": _with_database(base, name)}
        finally:
            asyncio.run(_admin(base, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture
def backend_server(server_factory: ServerFactory, store_flags: dict[str, str]) -> ChatdServer:
    return server_factory.launch({"presence_grace": 0.5, **store_flags})


async def test_chat_history_and_conversations(
    backend_server: ChatdServer, harness: Callable[[ChatdServer], Harness]
) -> None:
    h = harness(backend_server)
    alice, bob, carol = await h.users("alice", "bob", "carol")
    a = await h.connect(alice)
    b = await h.connect(bob)
    first = await a.send("m1", to=bob.name.upper())
    conv = first["conv"]
    assert first["seq"] == 1 and not first["duplicate"]
    again = await a.ok("send", conv=conv, client_id="dup", body="m2")
    retry = await a.ok("send", to=bob.name, client_id="dup", body="m2")
    assert retry["duplicate"] is True and retry["seq"] == again["seq"] == 2
    for i in range(3, 13):
        await (a if i % 2 else b).send(f"m{i}", conv=conv)
    page = await b.ok("history", conv=conv, before=8, limit=5)
    assert [m["seq"] for m in page["messages"]] == [3, 4, 5, 6, 7] and page["more"] is True
    page = await b.ok("history", conv=conv, after=10)
    assert [m["seq"] for m in page["messages"]] == [11, 12] and page["more"] is False
    assert [m["body"] for m in await history_all(b, conv)] == [f"m{i}" for i in range(1, 13)]
    await asyncio.sleep(0.005)  # distinct milliseconds: ordering ties are another test's business
    c = await h.connect(carol)
    conv2 = (await c.send("hey alice", to=alice.name))["conv"]
    listing = (await a.ok("conversations"))["conversations"]
    assert [c["conv"] for c in listing] == [conv2, conv]
    assert listing[0]["unread"] == 1 and listing[1]["unread"] == 1  # after her own m11
    contacts = {c["user"] for c in (await a.ok("contacts"))["contacts"]}
    assert contacts == {bob.name, carol.name}


async def test_groups_receipts_and_presence(
    backend_server: ChatdServer, harness: Callable[[ChatdServer], Harness]
) -> None:
    h = harness(backend_server)
    alice, bob, carol = await h.users("alice", "bob", "carol")
    a = await h.connect(alice)
    b1 = await h.connect(bob, "b1")
    b2 = await h.connect(bob, "b2")
    c = await h.connect(carol)
    conv = (await a.ok("create_group", title="ops", members=[bob.name]))["conv"]
    await a.ok("add_members", conv=conv, members=[carol.name])
    await c.event("conversation", conv=conv)
    await a.ok("set_role", conv=conv, user=bob.name, role="admin")
    reply = await c.error("update_group", conv=conv, title="nope")
    assert reply["code"] == "forbidden"
    sent = await a.send("hello", conv=conv)
    await b1.ok("receipt", conv=conv, kind="read", seq=sent["seq"])
    for conn in (a, b2, c):
        ev = await conn.event("receipt", conv=conv, kind="read")
        assert (ev["user"], ev["seq"]) == (bob.name, sent["seq"])
    await a.ok("leave", conv=conv)
    listing = (await b1.ok("conversations"))["conversations"]
    roles = {m["user"]: m["role"] for m in listing[0]["members"]}
    assert roles == {bob.name: "owner", carol.name: "member"}
    actions = [m["event"]["action"] for m in await history_all(c, conv) if m["kind"] == "system"]
    assert actions[:3] == ["create", "add", "role"] and "leave" in actions[3:], actions

    await c.ok("add_contact", user=bob.name)
    await b1.close()
    await b2.close()
    ev = await c.event("presence", user=bob.name, status="offline", timeout=6)
    assert isinstance(ev["last_seen"], int)


@pytest.mark.parametrize("store_flags", ["sqlite", "postgresql"], indirect=True)
async def test_kill_9_and_restart_keep_everything(
    backend_server: ChatdServer,
    harness: Callable[[ChatdServer], Harness],
) -> None:
    # memory:// keeps nothing across restarts, by design: not parametrized here
    h = harness(backend_server)
    alice, bob = await h.users("alice", "bob")
    a = await h.connect(alice)
    b = await h.connect(bob)
    first = await a.send("first", to=bob.name, client_id="first")
    conv = first["conv"]
    sent: list[Sent] = [Sent("first", True, alice.name, conv, first["seq"], "first")]
    in_flight: list[asyncio.Task[None]] = []

    async def one(conn: Ws, name: str, i: int) -> None:
        cid = f"{name}-{i}"
        try:
            reply = await conn.request("send", conv=conv, client_id=cid, body=cid)
        except (Closed, AssertionError, ConnectionError, aiohttp.ClientError):
            sent.append(Sent(cid, False, name, body=cid))
            return
        if reply["type"] == "ok":
            sent.append(Sent(cid, True, name, reply["conv"], reply["seq"], cid))
        else:
            sent.append(Sent(cid, False, name, body=cid))

    for i in range(40):
        in_flight.append(asyncio.create_task(one(a, alice.name, i)))
        in_flight.append(asyncio.create_task(one(b, bob.name, i)))
        if i == 30:
            await asyncio.sleep(0.02)  # let some sends reach the server, then crash it
            backend_server.kill()
    await asyncio.wait_for(asyncio.gather(*in_flight), 15)
    backend_server.start()
    a = await h.connect(alice, "again")
    history = await history_all(a, conv)
    report = check(sent, {conv: history})
    report.assert_ok(allow_unexpected=False)
    assert report.count("stored") >= 1
    # a graceful restart changes nothing
    assert backend_server.stop() == 0
    backend_server.start()
    a = await h.connect(alice, "third")
    assert await history_all(a, conv) == history


async def test_conversations_order_within_one_millisecond(
    backend_server: ChatdServer, harness: Callable[[ChatdServer], Harness]
) -> None:
    h = harness(backend_server)
    me, *peers = await h.users("me", *[f"peer{i}" for i in range(6)])
    m = await h.connect(me)
    convs = [(await m.send("hello", to=p.name))["conv"] for p in peers]
    order = [convs[i] for i in (2, 0, 5, 1, 4, 3)]
    for conv in order:
        await m.send("again", conv=conv)  # back to back: several land in one millisecond
    listing = (await m.ok("conversations"))["conversations"]
    detail = [(c["conv"], c["last_message"]["ts"], c["last_message"]["msg_id"]) for c in listing]
    assert [c["conv"] for c in listing] == order[::-1], detail
