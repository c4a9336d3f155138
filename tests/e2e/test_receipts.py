"""Delivery and read receipts, markers and unread counts (issue 3)."""

from __future__ import annotations

from .client import Frame, Harness, Ws

SERVER_FLAGS = {"presence_grace": 0.5}


async def summary_of(conn: Ws, conv: str) -> Frame:
    listing = (await conn.ok("conversations"))["conversations"]
    (summary,) = [c for c in listing if c["conv"] == conv]
    assert isinstance(summary, dict)
    return summary


async def markers(conn: Ws, conv: str) -> dict[str, tuple[int, int]]:
    summary = await summary_of(conn, conv)
    return {m["user"]: (m["delivered"], m["read"]) for m in summary["members"]}


async def test_receipts_reach_the_other_member_and_the_readers_other_device(h: Harness) -> None:
    alice, bob = await h.users("alice", "bob")
    a1 = await h.connect(alice, "a1")
    a2 = await h.connect(alice, "a2")
    b1 = await h.connect(bob, "b1")
    b2 = await h.connect(bob, "b2")
    conv = (await a1.send("one", to=bob.name))["conv"]
    await a1.send("two", conv=conv)
    await a1.send("three", conv=conv)

    reply = await b1.ok("receipt", conv=conv, kind="delivered", seq=3)
    assert reply["id"]
    for conn in (a1, a2, b2):
        ev = await conn.event("receipt", conv=conv, kind="delivered")
        assert (ev["user"], ev["seq"]) == (bob.name, 3), ev
        assert isinstance(ev["ts"], int)
    await b1.ok("receipt", conv=conv, kind="read", seq=2)
    for conn in (a1, a2, b2):
        ev = await conn.event("receipt", conv=conv, kind="read")
        assert (ev["user"], ev["seq"]) == (bob.name, 2), ev
    assert (await markers(a1, conv))[bob.name] == (3, 2)
    assert (await summary_of(b2, conv))["unread"] == 1

    # monotonic: a lower seq is accepted and changes nothing, and nobody hears about it
    await b1.ok("receipt", conv=conv, kind="read", seq=1)
    await b2.ok("receipt", conv=conv, kind="delivered", seq=2)
    await b1.ok("receipt", conv=conv, kind="read", seq=2)  # equal: no move either
    assert (await markers(b1, conv))[bob.name] == (3, 2)
    # a later real move proves (events are ordered) that the no-ops sent nothing
    await b2.ok("receipt", conv=conv, kind="read", seq=3)
    for conn in (a1, a2):
        ev = await conn.event("receipt", conv=conv)
        assert (ev["kind"], ev["seq"]) == ("read", 3), f"no-op receipts were broadcast: {ev}"
    assert (await summary_of(b1, conv))["unread"] == 0

    # past last_seq is bad_request and changes nothing
    reply = await b1.error("receipt", conv=conv, kind="read", seq=4)
    assert reply["code"] == "bad_request", reply
    reply = await b1.error("receipt", conv=conv, kind="delivered", seq=1000)
    assert reply["code"] == "bad_request", reply
    assert (await markers(a2, conv))[bob.name] == (3, 3)


async def test_read_implies_delivered(h: Harness) -> None:
    alice, bob = await h.users("alice", "bob")
    a = await h.connect(alice)
    b = await h.connect(bob)
    conv = (await a.send("one", to=bob.name))["conv"]
    await a.send("two", conv=conv)
    assert (await markers(a, conv))[bob.name] == (0, 0)
    await b.ok("receipt", conv=conv, kind="read", seq=2)
    assert (await markers(a, conv))[bob.name] == (2, 2)
    # events for the read (and possibly for the delivered move) reach the sender
    ev = await a.event("receipt", conv=conv, kind="read")
    assert ev["seq"] == 2 and ev["user"] == bob.name


async def test_sending_moves_the_senders_own_markers(h: Harness) -> None:
    alice, bob = await h.users("alice", "bob")
    a = await h.connect(alice)
    b = await h.connect(bob)
    conv = (await a.send("one", to=bob.name))["conv"]
    await b.send("two", conv=conv)
    await b.send("three", conv=conv)
    got = await markers(a, conv)
    assert got[alice.name] == (1, 1), got
    assert got[bob.name] == (3, 3), got


async def test_group_receipts_reach_every_member(h: Harness) -> None:
    alice, bob, carol = await h.users("alice", "bob", "carol")
    a = await h.connect(alice)
    b = await h.connect(bob)
    c = await h.connect(carol)
    conv = (await a.ok("create_group", title="r", members=[bob.name, carol.name]))["conv"]
    sent = await a.send("hello all", conv=conv)
    await c.ok("receipt", conv=conv, kind="read", seq=sent["seq"])
    for conn in (a, b):
        ev = await conn.event("receipt", conv=conv, kind="read")
        assert (ev["user"], ev["seq"]) == (carol.name, sent["seq"])


async def test_unread_counts(h: Harness) -> None:
    alice, bob = await h.users("alice", "bob")
    a = await h.connect(alice)
    b = await h.connect(bob)
    conv = (await a.send("1", to=bob.name))["conv"]
    await a.send("2", conv=conv)
    await a.send("3", conv=conv)
    assert (await summary_of(b, conv))["unread"] == 3
    assert (await summary_of(a, conv))["unread"] == 0
    await b.send("4", conv=conv)  # replying moves bob's read marker to his own message
    assert (await summary_of(b, conv))["unread"] == 0
    assert (await summary_of(a, conv))["unread"] == 1
    await a.send("5", conv=conv)
    await a.send("6", conv=conv)
    assert (await summary_of(b, conv))["unread"] == 2
    assert (await summary_of(a, conv))["unread"] == 0
    await b.ok("receipt", conv=conv, kind="read", seq=5)
    assert (await summary_of(b, conv))["unread"] == 1
    await b.ok("receipt", conv=conv, kind="read", seq=6)
    summary = await summary_of(b, conv)
    assert summary["unread"] == 0 and summary["last_seq"] == 6


async def test_unread_in_group_excludes_own_messages(h: Harness) -> None:
    alice, bob, carol = await h.users("alice", "bob", "carol")
    a = await h.connect(alice)
    b = await h.connect(bob)
    c = await h.connect(carol)
    conv = (await a.ok("create_group", title="u", members=[bob.name, carol.name]))["conv"]
    await b.ok("receipt", conv=conv, kind="read", seq=1)
    await c.ok("receipt", conv=conv, kind="read", seq=1)
    await a.send("a1", conv=conv)
    await c.send("c1", conv=conv)
    await a.send("a2", conv=conv)
    assert (await summary_of(b, conv))["unread"] == 3
    assert (await summary_of(c, conv))["unread"] == 1
    assert (await summary_of(a, conv))["unread"] == 0
