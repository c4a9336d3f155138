"""Messages and bus publishes across three real ``chatd serve`` processes."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable

from tests.e2e.client import Harness, Ws
from tests.e2e.server import ChatdServer


async def publishes(h: Harness) -> int:
    status, text = await h.http("GET", "/metrics")
    assert status == 200, (status, text)
    m = re.search(r"^chatd_bus_publishes_total\s+([0-9.e+]+)$", str(text), re.M)
    assert m, "chatd_bus_publishes_total missing from /metrics"
    return int(float(m.group(1)))


async def wait_peek(conn: Ws, conv: str, seq: int, within: float = 5.0) -> None:
    """Wait (bounded) until ``conn`` has received message ``seq`` of ``conv``, leaving it queued."""
    async with asyncio.timeout(within):
        while not conn.peek_events(  # noqa: ASYNC110  (Ws offers no event hook)
            "message", conv=conv, seq=seq
        ):
            await asyncio.sleep(0.02)


async def test_group_message_reaches_every_device_once_in_order(
    trio: list[ChatdServer], harness: Callable[[ChatdServer], Harness]
) -> None:
    hs = [harness(s) for s in trio]
    a, b, c = await hs[0].users("a", "b", "c")
    # each user has a device on every process
    conns: dict[tuple[str, int], Ws] = {}
    for u in (a, b, c):
        for i, h in enumerate(hs):
            conns[(u.name, i)] = await h.connect(u, device=f"d{i}")
    reply = await conns[(a.name, 0)].ok("create_group", title="t", members=[b.name, c.name])
    conv = reply["conv"]
    seqs = [(await conns[(a.name, 0)].send(f"m{n}", conv=conv))["seq"] for n in range(5)]
    sending = conns[(a.name, 0)]
    for conn in conns.values():
        if conn is not sending:
            await wait_peek(conn, conv, seqs[-1])
    await asyncio.sleep(0.3)  # room for a wrongly duplicated delivery to show up
    for key, conn in conns.items():
        got = [ev["seq"] for ev in conn.take_events("message", conv=conv) if ev["kind"] == "text"]
        want = [] if conn is sending else seqs
        assert got == want, (key, got, want)


async def test_one_publish_per_remote_server(
    trio: list[ChatdServer], harness: Callable[[ChatdServer], Harness]
) -> None:
    hs = [harness(s) for s in trio]
    a, b, c = await hs[0].users("a", "b", "c")
    sender = await hs[0].connect(a)
    await hs[0].connect(b, device="local")
    conn_b1 = await hs[1].connect(b)
    conn_c2 = await hs[2].connect(c)
    await hs[1].connect(c, device="x")
    conv = (await sender.ok("create_group", title="t", members=[b.name, c.name]))["conv"]
    await asyncio.sleep(0.3)
    before = await publishes(hs[0])
    seq = (await sender.send("x", conv=conv))["seq"]
    await conn_b1.message(conv, seq=seq)
    await conn_c2.message(conv, seq=seq)
    assert await publishes(hs[0]) - before == 2
    # a conversation whose members are all on the sender's process costs no publish
    d, e = await hs[0].users("d", "e")
    sd = await hs[0].connect(d)
    await hs[0].connect(e)
    conv2 = (await sd.ok("create_group", title="l", members=[e.name]))["conv"]
    await asyncio.sleep(0.3)
    before = await publishes(hs[0])
    await sd.send("y", conv=conv2)
    await asyncio.sleep(0.2)
    assert await publishes(hs[0]) - before == 0


async def test_direct_messages_reach_both_users_devices_once(
    trio: list[ChatdServer], harness: Callable[[ChatdServer], Harness]
) -> None:
    hs = [harness(s) for s in trio]
    a, b = await hs[0].users("a", "b")
    conns = {(u.name, i): await h.connect(u, f"d{i}") for u in (a, b) for i, h in enumerate(hs)}
    sending = conns[(a.name, 0)]
    first = await sending.send("m0", to=b.name)
    conv = first["conv"]
    seqs = [first["seq"]] + [(await sending.send(f"m{n}", conv=conv))["seq"] for n in range(1, 5)]
    for conn in conns.values():
        if conn is not sending:
            await wait_peek(conn, conv, seqs[-1])
    await asyncio.sleep(0.3)
    for key, conn in conns.items():
        got = [ev["seq"] for ev in conn.take_events("message", conv=conv) if ev["kind"] == "text"]
        assert got == ([] if conn is sending else seqs), (key, got)
