"""Contacts, presence and typing (issue 3). The server announces offline after 0.5 s here."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from .client import Frame, Harness, Ws, history_all
from .server import ChatdServer, ServerFactory

GRACE = 0.5
SERVER_FLAGS = {"presence_grace": GRACE}


async def contacts(conn: Ws) -> dict[str, Frame]:
    reply = await conn.ok("contacts")
    return {c["user"]: c for c in reply["contacts"]}


def now_ms() -> int:
    return int(time.time() * 1000)


async def test_add_list_remove_contacts(h: Harness) -> None:
    alice, bob, carol = await h.users("alice", "bob", "carol")
    a = await h.connect(alice)
    b = await h.connect(bob)
    assert await contacts(a) == {}
    await a.ok("add_contact", user=carol.name)
    await a.ok("add_contact", user=bob.name)
    listed = await contacts(a)
    assert set(listed) == {bob.name, carol.name}
    assert listed[bob.name]["status"] == "online"
    assert listed[carol.name]["status"] == "offline"
    assert listed[carol.name]["last_seen"] is None  # never connected
    assert await contacts(b) == {}, "contacts are one-way"
    await a.ok("remove_contact", user=carol.name)
    assert set(await contacts(a)) == {bob.name}
    reply = await a.request("add_contact", user="ghost_" + alice.name[-10:])
    assert reply["type"] == "error" and reply["code"] in ("not_found", "bad_request"), reply


async def test_first_direct_message_makes_both_contacts(h: Harness) -> None:
    alice, bob = await h.users("alice", "bob")
    a = await h.connect(alice)
    b = await h.connect(bob)
    await a.send("hi", to=bob.name)
    assert set(await contacts(a)) == {bob.name}
    assert set(await contacts(b)) == {alice.name}
    assert (await contacts(b))[alice.name]["status"] == "online"


async def test_presence_with_two_devices(h: Harness) -> None:
    alice, bob, carol = await h.users("alice", "bob", "carol")
    a = await h.connect(alice)
    c = await h.connect(carol)  # carol does not follow bob: hears nothing
    await a.ok("add_contact", user=bob.name)
    assert (await contacts(a))[bob.name]["status"] == "offline"

    b1 = await h.connect(bob, "b1")
    ev = await a.event("presence", user=bob.name)
    assert ev["status"] == "online", ev
    b2 = await h.connect(bob, "b2")
    await a.no_event("presence", user=bob.name)  # a second device is not a change
    await b1.close()
    await a.no_event("presence", user=bob.name, within=GRACE + 0.7)  # b2 is still there
    assert (await contacts(a))[bob.name]["status"] == "online"

    closed_at = now_ms()
    await b2.close()
    ev = await a.event("presence", user=bob.name, timeout=GRACE + 5)
    assert ev["status"] == "offline", ev
    assert isinstance(ev["last_seen"], int)
    assert closed_at - 2000 <= ev["last_seen"] <= now_ms(), (closed_at, ev)
    listed = (await contacts(a))[bob.name]
    assert listed["status"] == "offline" and listed["last_seen"] == ev["last_seen"]
    assert c.peek_events("presence") == []


async def test_quick_reconnect_does_not_flap(h: Harness) -> None:
    alice, bob = await h.users("alice", "bob")
    a = await h.connect(alice)
    await a.ok("add_contact", user=bob.name)
    b = await h.connect(bob, "b1")
    await a.event("presence", user=bob.name, status="online")
    again = await h.raw_ws(label="b1-again")  # upgraded before the old one goes: only hello
    await b.close()
    assert (await again.request("hello", token=bob.token, device="b1-again"))["type"] == "ok"
    await a.no_event("presence", user=bob.name, within=GRACE + 0.8)


async def test_presence_reaches_every_device_of_every_follower(h: Harness) -> None:
    alice, carol, bob = await h.users("alice", "carol", "bob")
    a1 = await h.connect(alice, "a1")
    a2 = await h.connect(alice, "a2")
    c = await h.connect(carol)
    await a1.ok("add_contact", user=bob.name)
    await c.ok("add_contact", user=bob.name)
    b = await h.connect(bob)
    for conn in (a1, a2, c):
        await conn.event("presence", user=bob.name, status="online")
    await b.close()
    for conn in (a1, a2, c):
        await conn.event("presence", user=bob.name, status="offline", timeout=GRACE + 5)
    await c.ok("remove_contact", user=bob.name)
    await h.connect(bob)
    await a1.event("presence", user=bob.name, status="online")
    await c.no_event("presence", user=bob.name)


async def test_last_seen_survives_a_restart(
    server_factory: ServerFactory, harness: Callable[[ChatdServer], Harness]
) -> None:
    server = server_factory(presence_grace=GRACE)
    h = harness(server)
    alice, bob = await h.users("alice", "bob")
    a = await h.connect(alice)
    await a.ok("add_contact", user=bob.name)
    b = await h.connect(bob)
    await a.event("presence", user=bob.name, status="online")
    await b.close()
    ev = await a.event("presence", user=bob.name, status="offline", timeout=GRACE + 5)
    last_seen = ev["last_seen"]
    await a.close()
    assert server.stop() == 0
    server.start()
    a = await h.connect(alice, "again")
    listed = (await contacts(a))[bob.name]
    assert listed == {**listed, "status": "offline", "last_seen": last_seen}


async def test_typing_goes_to_other_members_and_never_into_history(h: Harness) -> None:
    alice, bob, carol = await h.users("alice", "bob", "carol")
    a1 = await h.connect(alice, "a1")
    b1 = await h.connect(bob, "b1")
    b2 = await h.connect(bob, "b2")
    c = await h.connect(carol)
    conv = (await a1.ok("create_group", title="t", members=[bob.name, carol.name]))["conv"]
    before = await history_all(b1, conv)

    await a1.send_frame({"type": "typing", "conv": conv, "state": "start"})
    for conn in (b1, b2, c):
        ev = await conn.event("typing", conv=conv)
        assert (ev["user"], ev["state"]) == (alice.name, "start"), ev
    await asyncio.sleep(0.6)  # stay under the per-connection typing rate limit
    reply = await a1.ok("typing", conv=conv, state="stop")
    assert reply["type"] == "ok"
    for conn in (b1, b2, c):
        ev = await conn.event("typing", conv=conv)
        assert (ev["user"], ev["state"]) == (alice.name, "stop"), ev
    # the typer's own connection is not told; a message sent afterwards proves it (ordering)
    sent = await b1.send("after typing", conv=conv)
    await a1.message(conv, sent["seq"])
    assert a1.peek_events("typing") == []

    after = await history_all(b1, conv)
    assert after[: len(before)] == before
    assert [m["kind"] for m in after[len(before) :]] == ["text"]
    summary = [x for x in (await c.ok("conversations"))["conversations"] if x["conv"] == conv]
    assert summary[0]["last_seq"] == sent["seq"]


async def test_typing_in_a_direct_conversation(h: Harness) -> None:
    alice, bob = await h.users("alice", "bob")
    a = await h.connect(alice)
    b = await h.connect(bob)
    conv = (await a.send("hi", to=bob.name))["conv"]
    await b.send_frame({"type": "typing", "conv": conv, "state": "start"})
    ev = await a.event("typing", conv=conv)
    assert ev["user"] == bob.name and ev["state"] == "start"
    assert b.orphans == []
