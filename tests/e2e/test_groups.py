"""Groups (issue 3): lifecycle, system messages, roles and permissions, limits, removal."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .client import Frame, Harness, User, Ws, history_all
from .server import ChatdServer, ServerFactory

SERVER_FLAGS = {"presence_grace": 0.5}


def system_events(history: list[Frame]) -> list[tuple[str, str, tuple[str, ...], Any]]:
    """(action, from, users, title-or-role) of each system message, in seq order."""
    out = []
    for m in history:
        if m["kind"] != "system":
            continue
        ev = m["event"]
        extra = ev.get("title") if ev["action"] in ("create", "title") else ev.get("role")
        out.append((ev["action"], m["from"], tuple(sorted(ev.get("users") or [])), extra))
    return out


def is_subsequence(needles: list[Any], haystack: list[Any]) -> bool:
    it = iter(haystack)
    return all(any(n == h for h in it) for n in needles)


async def roles(conn: Ws, conv: str) -> dict[str, str]:
    listing = (await conn.ok("conversations"))["conversations"]
    (summary,) = [c for c in listing if c["conv"] == conv]
    return {m["user"]: m["role"] for m in summary["members"]}


async def summary_of(conn: Ws, conv: str) -> Frame:
    listing = (await conn.ok("conversations"))["conversations"]
    (summary,) = [c for c in listing if c["conv"] == conv]
    assert isinstance(summary, dict)
    return summary


async def assert_locked_out(conn: Ws, conv: str) -> None:
    reply = await conn.error("history", conv=conv)
    assert reply["code"] in ("forbidden", "not_found"), reply
    listing = (await conn.ok("conversations"))["conversations"]
    assert conv not in [c["conv"] for c in listing]


async def test_group_whole_life(h: Harness) -> None:
    alice, bob, carol, dave, erin = await h.users("alice", "bob", "carol", "dave", "erin")
    a, b, c, d, e = [await h.connect(u) for u in (alice, bob, carol, dave, erin)]

    conv = (await a.ok("create_group", title="ops", members=[bob.name, carol.name]))["conv"]
    assert isinstance(conv, str) and conv
    for conn in (b, c):
        ev = await conn.event("conversation", conv=conv)
        assert ev["kind"] == "group" and ev["title"] == "ops", ev
    assert await roles(a, conv) == {alice.name: "owner", bob.name: "member", carol.name: "member"}
    summary = await summary_of(b, conv)
    assert summary["kind"] == "group" and summary["title"] == "ops"

    await a.ok("add_members", conv=conv, members=[dave.name])
    ev = await d.event("conversation", conv=conv)
    assert ev["kind"] == "group" and ev["title"] == "ops"
    await a.ok("set_role", conv=conv, user=bob.name, role="admin")
    await b.ok("update_group", conv=conv, title="ops-team")  # admins change the title
    await b.ok("remove_member", conv=conv, user=carol.name)  # and remove members
    await assert_locked_out(c, conv)

    hello = await a.send("after carol left", conv=conv)
    await d.message(conv, hello["seq"])
    await a.ok("add_members", conv=conv, members=[erin.name])
    await e.event("conversation", conv=conv)
    sentinel = await a.send("sentinel", conv=conv)
    await e.message(conv, sentinel["seq"])
    await c.no_event("message", conv=conv, seq=hello["seq"])
    await c.no_event("message", conv=conv, seq=sentinel["seq"], within=0)

    await a.ok("leave", conv=conv)  # the owner leaves: the oldest admin (bob) takes over
    await assert_locked_out(a, conv)
    assert await roles(b, conv) == {bob.name: "owner", dave.name: "member", erin.name: "member"}
    await b.ok("leave", conv=conv)  # no admin left: the oldest member (dave) takes over
    assert await roles(d, conv) == {dave.name: "owner", erin.name: "member"}
    await d.ok("update_group", conv=conv, title="ops-2")
    summary = await summary_of(e, conv)
    assert summary["title"] == "ops-2"

    history = await history_all(d, conv)
    assert [m["seq"] for m in history] == list(range(1, len(history) + 1))
    assert history[0]["kind"] == "system" and history[0]["event"]["action"] == "create"
    assert history[0]["from"] == alice.name and history[0]["event"].get("title") == "ops"
    assert {bob.name, carol.name} <= set(history[0]["event"]["users"])
    events = system_events(history)
    expected = [
        ("add", alice.name, (dave.name,), None),
        ("role", alice.name, (bob.name,), "admin"),
        ("title", bob.name, (), "ops-team"),
        ("remove", bob.name, (carol.name,), None),
        ("add", alice.name, (erin.name,), None),
        ("leave", alice.name, (), None),
        ("leave", bob.name, (), None),
        ("title", dave.name, (), "ops-2"),
    ]
    normalized = [
        (act, frm, () if act in ("title", "leave") else users, extra)
        for act, frm, users, extra in events
    ]
    assert is_subsequence(expected, normalized), f"system messages: {events}"
    texts = [m["body"] for m in history if m["kind"] == "text"]
    assert texts == ["after carol left", "sentinel"]
    for m in history:
        if m["kind"] == "system":
            assert m.get("body") in (None, ""), m
    # every remaining member sees the identical history
    assert await history_all(e, conv) == history


async def test_system_messages_are_delivered_as_message_events(h: Harness) -> None:
    alice, bob, carol = await h.users("alice", "bob", "carol")
    a = await h.connect(alice)
    b = await h.connect(bob)
    c = await h.connect(carol)
    conv = (await a.ok("create_group", title="t", members=[bob.name]))["conv"]
    await a.ok("add_members", conv=conv, members=[carol.name])
    ev = await b.event(
        "message", conv=conv, kind="system", pred=lambda e: e["event"]["action"] == "add"
    )
    assert ev["from"] == alice.name and ev["event"]["users"] == [carol.name]
    await c.event("conversation", conv=conv)
    await b.ok("leave", conv=conv)
    ev = await c.event(
        "message", conv=conv, kind="system", pred=lambda e: e["event"]["action"] == "leave"
    )
    assert ev["from"] == bob.name


async def group_with_roles(h: Harness) -> tuple[list[User], list[Ws], str]:
    owner, admin, member, extra = await h.users("owner", "admin", "member", "extra")
    conns = [await h.connect(u) for u in (owner, admin, member, extra)]
    conv = (await conns[0].ok("create_group", title="perm", members=[admin.name, member.name]))[
        "conv"
    ]
    await conns[0].ok("set_role", conv=conv, user=admin.name, role="admin")
    return [owner, admin, member, extra], conns, conv


async def test_plain_member_is_forbidden_every_admin_request(h: Harness) -> None:
    (owner, admin, member, extra), (o, a, m, _), conv = await group_with_roles(h)
    before = await history_all(o, conv)
    denied: list[tuple[str, dict[str, Any]]] = [
        ("add_members", {"conv": conv, "members": [extra.name]}),
        ("remove_member", {"conv": conv, "user": admin.name}),
        ("remove_member", {"conv": conv, "user": owner.name}),
        ("update_group", {"conv": conv, "title": "mine now"}),
        ("set_role", {"conv": conv, "user": member.name, "role": "admin"}),
        ("set_role", {"conv": conv, "user": admin.name, "role": "member"}),
    ]
    for type_, fields in denied:
        reply = await m.error(type_, **fields)
        assert reply["code"] == "forbidden", (type_, fields, reply)
    # only the owner sets roles: an admin is refused too
    for fields in (
        {"conv": conv, "user": member.name, "role": "admin"},
        {"conv": conv, "user": owner.name, "role": "member"},
    ):
        reply = await a.error("set_role", **fields)
        assert reply["code"] == "forbidden", reply
    # nothing changed
    assert await history_all(o, conv) == before
    assert await roles(o, conv) == {owner.name: "owner", admin.name: "admin", member.name: "member"}
    # a plain member may still talk and leave
    await m.send("still here", conv=conv)
    await m.ok("leave", conv=conv)


async def test_non_member_gets_forbidden_or_not_found_for_everything(h: Harness) -> None:
    (_owner, _admin, member, outsider), (o, _, _, x), conv = await group_with_roles(h)
    before = await history_all(o, conv)
    requests: list[tuple[str, dict[str, Any]]] = [
        ("send", {"conv": conv, "client_id": "c1", "body": "let me in"}),
        ("history", {"conv": conv}),
        ("history", {"conv": conv, "after": 0}),
        ("receipt", {"conv": conv, "kind": "read", "seq": 1}),
        ("receipt", {"conv": conv, "kind": "delivered", "seq": 1}),
        ("typing", {"conv": conv, "state": "start"}),
        ("add_members", {"conv": conv, "members": [outsider.name]}),
        ("remove_member", {"conv": conv, "user": member.name}),
        ("leave", {"conv": conv}),
        ("update_group", {"conv": conv, "title": "hijack"}),
        ("set_role", {"conv": conv, "user": outsider.name, "role": "admin"}),
        ("set_role", {"conv": conv, "user": member.name, "role": "admin"}),
    ]
    for type_, fields in requests:
        for target in (conv, "no-such-conversation"):
            reply = await x.error(type_, **{**fields, "conv": target})
            assert reply["code"] in ("forbidden", "not_found"), (type_, target, reply)
    status, body = await h.http(
        "GET", f"/api/v1/conversations/{conv}/messages", token=outsider.token
    )
    assert status in (403, 404), body
    assert await history_all(o, conv) == before
    assert conv not in [c["conv"] for c in (await x.ok("conversations"))["conversations"]]


async def test_removed_member_reads_nothing_and_receives_nothing(h: Harness) -> None:
    alice, bob, carol = await h.users("alice", "bob", "carol")
    a = await h.connect(alice)
    b = await h.connect(bob)
    c1 = await h.connect(carol, "c1")
    c2 = await h.connect(carol, "c2")
    conv = (await a.ok("create_group", title="r", members=[bob.name, carol.name]))["conv"]
    first = await a.send("before", conv=conv)
    await c1.message(conv, first["seq"])
    await a.ok("remove_member", conv=conv, user=carol.name)
    after = await a.send("after", conv=conv)
    await b.message(conv, after["seq"])
    later = await b.send("later", conv=conv)
    await a.message(conv, later["seq"])
    for conn in (c1, c2):
        await assert_locked_out(conn, conv)
        reply = await conn.error("send", conv=conv, client_id="sneak", body="x")
        assert reply["code"] in ("forbidden", "not_found"), reply
    await c1.no_event("message", conv=conv, seq=after["seq"])
    for conn in (c1, c2):
        assert conn.peek_events("message", conv=conv, seq=after["seq"]) == []
        assert conn.peek_events("message", conv=conv, seq=later["seq"]) == []
    status, _ = await h.http("GET", f"/api/v1/conversations/{conv}/messages", token=carol.token)
    assert status in (403, 404)


async def test_readded_member_reads_whole_history(h: Harness) -> None:
    alice, bob = await h.users("alice", "bob")
    a = await h.connect(alice)
    b = await h.connect(bob)
    conv = (await a.ok("create_group", title="back", members=[bob.name]))["conv"]
    await a.send("one", conv=conv)
    await b.ok("leave", conv=conv)
    await a.send("two", conv=conv)
    await a.ok("add_members", conv=conv, members=[bob.name])
    await b.event("conversation", conv=conv)
    assert [m.get("body") for m in await history_all(b, conv) if m["kind"] == "text"] == [
        "one",
        "two",
    ]


async def test_create_group_with_unknown_user_fails_and_creates_nothing(h: Harness) -> None:
    (alice,) = await h.users("alice")
    a = await h.connect(alice)
    reply = await a.error("create_group", title="x", members=["ghost_" + alice.name[-8:]])
    assert reply["code"] in ("not_found", "bad_request"), reply
    assert (await a.ok("conversations"))["conversations"] == []


async def test_max_group_members_is_conflict(
    server_factory: ServerFactory, harness: Callable[[ChatdServer], Harness]
) -> None:
    h = harness(server_factory(max_group_members=3))
    alice, bob, carol, dave, erin = await h.users("alice", "bob", "carol", "dave", "erin")
    a = await h.connect(alice)
    reply = await a.error("create_group", title="big", members=[bob.name, carol.name, dave.name])
    assert reply["code"] == "conflict", reply
    assert (await a.ok("conversations"))["conversations"] == []
    conv = (await a.ok("create_group", title="full", members=[bob.name, carol.name]))["conv"]
    before = await history_all(a, conv)
    reply = await a.error("add_members", conv=conv, members=[dave.name])
    assert reply["code"] == "conflict", reply
    reply = await a.error("add_members", conv=conv, members=[dave.name, erin.name])
    assert reply["code"] == "conflict", reply
    assert await history_all(a, conv) == before
    await a.ok("remove_member", conv=conv, user=carol.name)
    await a.ok("add_members", conv=conv, members=[dave.name])
    assert set(await roles(a, conv)) == {alice.name, bob.name, dave.name}


async def test_creators_other_device_learns_of_the_new_group(h: Harness) -> None:
    alice, bob = await h.users("alice", "bob")
    a1 = await h.connect(alice, "a1")
    a2 = await h.connect(alice, "a2")
    conv = (await a1.ok("create_group", title="mine", members=[bob.name]))["conv"]
    ev = await a2.event("conversation", conv=conv)
    assert (ev["kind"], ev["title"]) == ("group", "mine")
    created = await a2.message(conv, 1)
    assert created["kind"] == "system" and created["event"]["action"] == "create"
