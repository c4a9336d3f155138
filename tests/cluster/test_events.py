"""Presence and session revocation across three real ``chatd serve`` processes."""

from __future__ import annotations

from collections.abc import Callable

from tests.e2e.client import Harness
from tests.e2e.server import ChatdServer


async def test_presence_across_processes(
    trio: list[ChatdServer], harness: Callable[[ChatdServer], Harness]
) -> None:
    hs = [harness(s) for s in trio]
    alice, bob = await hs[0].users("alice", "bob")
    a = await hs[0].connect(alice)
    await a.ok("add_contact", user=bob.name)
    b1 = await hs[1].connect(bob, "b1")
    ev = await a.event("presence", user=bob.name, timeout=5)
    assert ev["status"] == "online", ev
    b2 = await hs[2].connect(bob, "b2")
    await a.no_event("presence", user=bob.name, within=1.0)  # second device elsewhere: no change
    await b1.close()
    await a.no_event("presence", user=bob.name, within=1.5)  # b2 on another process remains
    await b2.close()
    ev = await a.event("presence", user=bob.name, timeout=6)
    assert ev["status"] == "offline", ev


async def test_revoking_a_session_closes_its_socket_on_another_process(
    trio: list[ChatdServer], harness: Callable[[ChatdServer], Harness]
) -> None:
    hs = [harness(s) for s in trio]
    (alice,) = await hs[0].users("alice")
    conn = await hs[1].connect(alice)
    status, body = await hs[0].http("DELETE", "/api/v1/sessions/current", token=alice.token)
    assert status == 204, (status, body)
    assert await conn.wait_closed(timeout=5) == 4401


async def test_receipts_typing_and_conversation_events_across_processes(
    trio: list[ChatdServer], harness: Callable[[ChatdServer], Harness]
) -> None:
    hs = [harness(s) for s in trio]
    a, b, c = await hs[0].users("a", "b", "c")
    ca = await hs[0].connect(a)
    cb = await hs[1].connect(b)
    cc = await hs[2].connect(c)
    conv = (await ca.ok("create_group", title="t", members=[b.name]))["conv"]
    await cb.event("conversation", conv=conv, timeout=5)
    seq = (await ca.send("hi", conv=conv))["seq"]
    await cb.message(conv, seq=seq)
    await cb.ok("receipt", conv=conv, kind="read", seq=seq)
    ev = await ca.event("receipt", conv=conv, timeout=5)
    assert ev["seq"] == seq, ev
    await cb.send_frame({"type": "typing", "conv": conv, "state": "start"})
    ev = await ca.event("typing", conv=conv, timeout=5)
    assert ev["user"] == b.name and ev["state"] == "start", ev
    await ca.ok("add_members", conv=conv, members=[c.name])
    await cc.event("conversation", conv=conv, timeout=5)
