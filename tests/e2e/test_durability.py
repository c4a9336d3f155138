"""Crash and restart durability (issue 2): kill -9 under load, graceful SIGTERM, same data dir.

Every message the server acknowledged before dying must be in history after a restart, each
exactly once, with gapless seqs; this is checked by :mod:`e2e.lossck`.
"""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest

from .client import Closed, Frame, Harness, RawWs, User, Ws, history_all, http_history_all
from .lossck import Sent, check
from .server import ChatdServer, ServerFactory


@dataclass
class Attempt:
    client_id: str
    sender: str
    body: str
    target: dict[str, Any]
    acked: bool = False
    conv: str | None = None
    seq: int | None = None

    def as_sent(self) -> Sent:
        return Sent(self.client_id, self.acked, self.sender, self.conv, self.seq, self.body)


async def pump(
    conn: Ws,
    user: User,
    targets: list[dict[str, Any]],
    attempts: list[Attempt],
    stop: asyncio.Event,
    limit: int,
) -> None:
    """Send until ``stop`` or the socket dies, recording every attempt and its outcome."""
    for i in range(limit):
        if stop.is_set():
            return
        target = targets[i % len(targets)]
        attempt = Attempt(uuid.uuid4().hex, user.name, f"{user.name} {i}", target)
        attempts.append(attempt)
        try:
            reply = await conn.request(
                "send", client_id=attempt.client_id, body=attempt.body, **target
            )
        except (Closed, ConnectionError, aiohttp.ClientError, AssertionError):
            return
        if reply["type"] != "ok":
            assert reply["code"] in ("rate_limited", "unavailable"), reply
            await asyncio.sleep(0.05)
            continue
        attempt.acked, attempt.conv, attempt.seq = True, reply["conv"], reply["seq"]
        assert reply["duplicate"] is False


async def all_histories(h: Harness, users: list[User]) -> dict[str, list[Frame]]:
    histories: dict[str, list[Frame]] = {}
    for user in users:
        conn = await h.connect(user, "checker")
        for summary in (await conn.ok("conversations"))["conversations"]:
            conv = summary["conv"]
            if conv not in histories:
                histories[conv] = await history_all(conn, conv)
                assert summary["last_seq"] == len(histories[conv]), summary
        await conn.close()
    return histories


async def load(h: Harness) -> tuple[list[User], list[Ws], list[list[dict[str, Any]]]]:
    users = await h.users("k0", "k1", "k2", "k3")
    conns = [await h.connect(u) for u in users]
    group = (await conns[0].ok("create_group", title="crash", members=[u.name for u in users[1:]]))[
        "conv"
    ]
    partner = {0: 1, 1: 0, 2: 3, 3: 2}
    targets = [[{"conv": group}, {"to": users[partner[i]].name}] for i in range(4)]
    return users, conns, targets


async def test_kill_9_while_four_clients_send(
    server_factory: ServerFactory, harness: Callable[[ChatdServer], Harness]
) -> None:
    server = server_factory()
    h = harness(server)
    users, conns, targets = await load(h)
    attempts: list[Attempt] = []
    stop = asyncio.Event()
    pumps = [
        asyncio.create_task(pump(conns[i], users[i], targets[i], attempts, stop, limit=150))
        for i in range(4)
    ]

    async def enough_acked() -> None:
        while sum(a.acked for a in attempts) < 120:  # noqa: ASYNC110 (polls a count)
            await asyncio.sleep(0.01)

    await asyncio.wait_for(enough_acked(), 20)
    server.kill()  # SIGKILL mid-flight: some sends are in the air
    await asyncio.wait_for(asyncio.gather(*pumps), 15)
    acked_before_kill = sum(a.acked for a in attempts)
    assert acked_before_kill >= 120

    server.start()
    histories = await all_histories(h, users)
    report = check([a.as_sent() for a in attempts], histories)
    print("after kill -9:", report.summary())  # shown when the test fails
    report.assert_ok(allow_unexpected=False)
    assert report.count("stored") == acked_before_kill

    # retrying every unacknowledged send with its client_id stores each exactly once
    by_sender = {u.name: await h.connect(u, "retry") for u in users}
    for a in attempts:
        if a.acked:
            continue
        reply = await by_sender[a.sender].ok("send", client_id=a.client_id, body=a.body, **a.target)
        stored_before = any(
            m.get("client_id") == a.client_id and m["from"] == a.sender
            for msgs in histories.values()
            for m in msgs
        )
        assert reply["duplicate"] is stored_before, (a, reply)
        a.acked, a.conv, a.seq = True, reply["conv"], reply["seq"]
    report = check([a.as_sent() for a in attempts], await all_histories(h, users))
    report.assert_ok(allow_unexpected=False)
    assert report.count("stored") == len(attempts)


async def test_sigterm_under_load_exits_0_and_keeps_every_acknowledged_message(
    server_factory: ServerFactory, harness: Callable[[ChatdServer], Harness]
) -> None:
    server = server_factory()
    h = harness(server)
    users, conns, targets = await load(h)
    attempts: list[Attempt] = []
    stop = asyncio.Event()
    pumps = [
        asyncio.create_task(pump(conns[i], users[i], targets[i], attempts, stop, limit=100))
        for i in range(4)
    ]

    async def enough_acked() -> None:
        while sum(a.acked for a in attempts) < 60:  # noqa: ASYNC110 (polls a count)
            await asyncio.sleep(0.01)

    await asyncio.wait_for(enough_acked(), 20)
    code = await asyncio.to_thread(server.stop)
    assert code == 0, server.stderr_text()
    await asyncio.wait_for(asyncio.gather(*pumps), 15)
    for conn in conns:
        assert await conn.wait_closed() == 1001
    server.start()
    histories = await all_histories(h, users)
    report = check([a.as_sent() for a in attempts], histories)
    report.assert_ok(allow_unexpected=False)
    for conv, messages in histories.items():  # HTTP shows the same histories
        member = next(u for u in users if any(m["from"] == u.name for m in messages))
        assert await http_history_all(h, member.token, conv) == messages


async def test_graceful_restart_closes_with_1001_and_keeps_history(
    server_factory: ServerFactory, harness: Callable[[ChatdServer], Harness]
) -> None:
    server = server_factory()
    h = harness(server)
    alice, bob = await h.users("alice", "bob")
    a = await h.connect(alice)
    b = await h.connect(bob)
    conv = (await a.send("first", to=bob.name))["conv"]
    group = (await a.ok("create_group", title="keep", members=[bob.name]))["conv"]
    for i in range(30):
        await (a if i % 3 else b).send(f"m{i}", conv=conv if i % 2 else group)
    await b.ok("receipt", conv=conv, kind="read", seq=5)
    before: dict[str, Any] = {}
    for c in (conv, group):
        status, before[c] = await h.http(
            "GET",
            f"/api/v1/conversations/{c}/messages",
            token=bob.token,
            params={"limit": "100"},
        )
        assert status == 200
    listing_before = (await b.ok("conversations"))["conversations"]

    assert await asyncio.to_thread(server.stop) == 0
    assert await a.wait_closed() == 1001
    assert await b.wait_closed() == 1001
    server.start()

    for c in (conv, group):
        status, after = await h.http(
            "GET",
            f"/api/v1/conversations/{c}/messages",
            token=bob.token,
            params={"limit": "100"},
        )
        assert status == 200 and after == before[c]
    b = await h.connect(bob, "again")
    assert (await b.ok("conversations"))["conversations"] == listing_before
    # and the next message continues the sequence
    a = await h.connect(alice, "again")
    nxt = await a.send("after restart", conv=conv)
    assert nxt["seq"] == before[conv]["messages"][-1]["seq"] + 1


async def test_sigterm_stops_accepting_before_it_closes_the_sockets(
    server_factory: ServerFactory, harness: Callable[[ChatdServer], Harness]
) -> None:
    """A client that never answers the close handshake keeps the server in its shutdown for a
    while: meanwhile the port refuses new connections, and the server still exits 0."""
    server = server_factory()
    h = harness(server)
    user = await h.user("lingerer")
    lingering = await RawWs.connect(server)
    await lingering.send_text(json.dumps({"type": "hello", "id": "h", "token": user.token}))
    assert (await lingering.read_json())["type"] == "ok"
    assert server.proc is not None
    server.proc.send_signal(signal.SIGTERM)
    code, _texts = await lingering.drain_until_closed(timeout=10)
    assert code == 1001
    assert server.proc.poll() is None, "the server should still wait for the close handshake"
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((server.host, server.port), timeout=2).close()
    lingering.close()
    assert await asyncio.to_thread(server.proc.wait, 15) == 0


async def test_sigint_is_a_graceful_stop_too(
    server_factory: ServerFactory, harness: Callable[[ChatdServer], Harness]
) -> None:
    server = server_factory()
    h = harness(server)
    alice, bob = await h.users("alice", "bob")
    a = await h.connect(alice)
    sent = await a.send("before ctrl-c", to=bob.name)
    assert server.proc is not None
    server.proc.send_signal(signal.SIGINT)
    assert await a.wait_closed(timeout=10) == 1001
    assert await asyncio.to_thread(server.proc.wait, 10) == 0
    server.start()
    status, body = await h.http(
        "GET", f"/api/v1/conversations/{sent['conv']}/messages", token=bob.token
    )
    assert status == 200 and [m["body"] for m in body["messages"]] == ["before ctrl-c"]


async def test_kill_9_during_group_changes_keeps_every_acknowledged_change(
    server_factory: ServerFactory, harness: Callable[[ChatdServer], Harness]
) -> None:
    server = server_factory()
    h = harness(server)
    users, conns, targets = await load(h)
    guest = await h.user("guest")
    group = targets[0][0]["conv"]
    attempts: list[Attempt] = []
    changes: list[tuple[str, int]] = []  # (action, seq) of every acknowledged change
    stop = asyncio.Event()

    async def churn() -> None:
        for i in range(200):
            action = "add" if i % 2 == 0 else "remove"
            try:
                if action == "add":
                    reply = await conns[0].request("add_members", conv=group, members=[guest.name])
                else:
                    reply = await conns[0].request("remove_member", conv=group, user=guest.name)
            except (Closed, ConnectionError, aiohttp.ClientError, AssertionError):
                return
            assert reply["type"] == "ok", reply
            assert isinstance(reply.get("seq"), int), reply
            changes.append((action, reply["seq"]))

    tasks = [asyncio.create_task(churn())] + [
        asyncio.create_task(pump(conns[i], users[i], [targets[i][0]], attempts, stop, limit=150))
        for i in range(1, 4)
    ]

    async def enough() -> None:
        while len(changes) < 20 or sum(a.acked for a in attempts) < 40:  # noqa: ASYNC110
            await asyncio.sleep(0.01)

    await asyncio.wait_for(enough(), 20)
    server.kill()
    await asyncio.wait_for(asyncio.gather(*tasks), 15)
    server.start()
    histories = await all_histories(h, users)
    check([a.as_sent() for a in attempts], histories).assert_ok(allow_unexpected=False)
    by_seq = {m["seq"]: m for m in histories[group]}
    for action, seq in changes:
        m = by_seq.get(seq)
        assert m is not None and m["kind"] == "system", (action, seq, m)
        assert m["event"]["action"] == action and m["event"]["users"] == [guest.name], m
