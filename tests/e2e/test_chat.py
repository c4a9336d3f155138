"""One-to-one chat: send by `to` and by `conv`, devices, retries, history, conversations."""

from __future__ import annotations

import time
import uuid

import pytest

from .client import Frame, Harness, User, Ws, history_all

MESSAGE_KEYS = {
    "type",
    "conv",
    "seq",
    "msg_id",
    "kind",
    "from",
    "client_id",
    "ts",
    "body",
    "media",
    "reply_to",
}


def assert_send_ok(reply: Frame, conv: str | None = None, seq: int | None = None) -> None:
    assert reply["type"] == "ok", reply
    assert isinstance(reply["conv"], str) and reply["conv"]
    if conv is not None:
        assert reply["conv"] == conv
    assert isinstance(reply["seq"], int) and reply["seq"] >= 1
    if seq is not None:
        assert reply["seq"] == seq, reply
    assert isinstance(reply["msg_id"], str) and reply["msg_id"].isdigit(), reply
    assert isinstance(reply["ts"], int) and abs(reply["ts"] - time.time() * 1000) < 60_000
    assert reply["duplicate"] is False, reply


async def test_two_users_chat_by_to_then_by_conv(h: Harness) -> None:
    alice, bob = await h.users("alice", "bob")
    a = await h.connect(alice)
    b = await h.connect(bob)
    cid = uuid.uuid4().hex
    first = await a.ok("send", to=bob.name, client_id=cid, body="hi bob")
    assert_send_ok(first, seq=1)
    conv = first["conv"]
    ev = await b.message(conv, 1)
    assert set(ev) >= MESSAGE_KEYS, ev
    assert ev["kind"] == "text" and ev["from"] == alice.name and ev["body"] == "hi bob"
    assert ev["client_id"] == cid and ev["msg_id"] == first["msg_id"] and ev["ts"] == first["ts"]
    assert ev["media"] == [] and ev["reply_to"] is None

    second = await b.ok("send", conv=conv, client_id=uuid.uuid4().hex, body="hi alice", reply_to=1)
    assert_send_ok(second, conv=conv, seq=2)
    ev = await a.message(conv, 2)
    assert ev["from"] == bob.name and ev["body"] == "hi alice" and ev["reply_to"] == 1
    # by `to` again reaches the same direct conversation, from either side
    third = await b.send("again", to=alice.name)
    assert_send_ok(third, conv=conv, seq=3)
    await a.message(conv, 3)
    assert first["msg_id"] != second["msg_id"] != third["msg_id"]


async def test_send_to_unknown_user_or_conversation_fails(h: Harness) -> None:
    (alice,) = await h.users("lonely")
    a = await h.connect(alice)
    reply = await a.error("send", to="nobody_" + uuid.uuid4().hex[:8], client_id="c1", body="x")
    assert reply["code"] in ("not_found", "bad_request"), reply
    reply = await a.error("send", conv="no-such-conv", client_id="c2", body="x")
    assert reply["code"] in ("not_found", "forbidden"), reply


async def test_senders_other_device_gets_the_event_and_sending_connection_does_not(
    h: Harness,
) -> None:
    alice, bob = await h.users("alice", "bob")
    a1 = await h.connect(alice, "a1")
    a2 = await h.connect(alice, "a2")
    b1 = await h.connect(bob, "b1")
    sent = await a1.send("from a1", to=bob.name)
    conv = sent["conv"]
    ev = await a2.message(conv, sent["seq"])
    assert ev["from"] == alice.name and ev["body"] == "from a1"
    await b1.message(conv, sent["seq"])
    # events of one conversation arrive in seq order: once a1 sees bob's later message,
    # it has provably not been sent its own
    reply = await b1.send("sentinel", conv=conv)
    await a1.message(conv, reply["seq"])
    assert a1.peek_events("message", seq=sent["seq"]) == []
    assert a1.take_events("message") == []


async def test_duplicate_send_returns_first_result_and_delivers_once(h: Harness) -> None:
    alice, bob = await h.users("alice", "bob")
    a1 = await h.connect(alice, "a1")
    a2 = await h.connect(alice, "a2")
    b = await h.connect(bob)
    cid = uuid.uuid4().hex
    first = await a1.ok("send", to=bob.name, client_id=cid, body="once")
    conv = first["conv"]
    await b.message(conv, first["seq"])
    await a2.message(conv, first["seq"])
    again = await a1.ok("send", to=bob.name, client_id=cid, body="once")
    by_conv = await a2.ok("send", conv=conv, client_id=cid, body="changed body")
    for dup in (again, by_conv):
        assert dup["duplicate"] is True, dup
        assert (dup["conv"], dup["seq"], dup["msg_id"], dup["ts"]) == (
            conv,
            first["seq"],
            first["msg_id"],
            first["ts"],
        )
    sentinel = await a1.send("after", conv=conv)
    assert sentinel["seq"] == first["seq"] + 1
    for conn in (b, a2):
        ev = await conn.event("message", conv=conv)
        assert ev["seq"] == sentinel["seq"], f"{conn.label} got a second delivery: {ev}"
    history = await history_all(b, conv)
    assert [m["body"] for m in history] == ["once", "after"]
    # the same client_id from another sender is another message
    other = await b.ok("send", conv=conv, client_id=cid, body="bob's own")
    assert other["duplicate"] is False and other["seq"] == sentinel["seq"] + 1


async def make_history(h: Harness, count: int) -> tuple[User, User, Ws, Ws, str]:
    alice, bob = await h.users("pager", "pagee")
    a = await h.connect(alice)
    b = await h.connect(bob)
    conv = (await a.send("m1", to=bob.name))["conv"]
    for i in range(2, count + 1):
        await (a if i % 2 else b).send(f"m{i}", conv=conv)
    return alice, bob, a, b, conv


def seqs(reply: Frame) -> list[int]:
    return [m["seq"] for m in reply["messages"]]


async def test_history_paging_over_websocket(h: Harness) -> None:
    alice, bob, a, _, conv = await make_history(h, 12)
    latest = await a.ok("history", conv=conv, limit=5)
    assert seqs(latest) == [8, 9, 10, 11, 12] and latest["more"] is True
    page = await a.ok("history", conv=conv, before=8, limit=5)
    assert seqs(page) == [3, 4, 5, 6, 7] and page["more"] is True
    page = await a.ok("history", conv=conv, before=3, limit=5)
    assert seqs(page) == [1, 2] and page["more"] is False
    page = await a.ok("history", conv=conv, after=0, limit=5)
    assert seqs(page) == [1, 2, 3, 4, 5] and page["more"] is True
    page = await a.ok("history", conv=conv, after=10, limit=5)
    assert seqs(page) == [11, 12] and page["more"] is False
    page = await a.ok("history", conv=conv, after=12)
    assert page["messages"] == [] and page["more"] is False
    page = await a.ok("history", conv=conv, before=1)
    assert page["messages"] == [] and page["more"] is False
    everything = await a.ok("history", conv=conv)
    assert seqs(everything) == list(range(1, 13)) and everything["more"] is False
    exact = await a.ok("history", conv=conv, after=2, limit=10)
    assert seqs(exact) == list(range(3, 13)) and exact["more"] is False
    one = await a.ok("history", conv=conv, limit=1)
    assert seqs(one) == [12] and one["more"] is True
    full = await a.ok("history", conv=conv, limit=100)
    assert [m["body"] for m in full["messages"]] == [f"m{i}" for i in range(1, 13)]
    for m in full["messages"]:
        assert m["conv"] == conv and m["kind"] == "text" and m["from"] in (alice.name, bob.name)


async def test_history_default_limit_is_50(h: Harness) -> None:
    _, _, a, _, conv = await make_history(h, 55)
    page = await a.ok("history", conv=conv)
    assert seqs(page) == list(range(6, 56)) and page["more"] is True


async def test_history_over_http_matches_websocket(h: Harness) -> None:
    _alice, bob, _a, b, conv = await make_history(h, 7)
    path = f"/api/v1/conversations/{conv}/messages"
    for params, ws_fields in [
        ({}, {}),
        ({"limit": "3"}, {"limit": 3}),
        ({"before": "5", "limit": "2"}, {"before": 5, "limit": 2}),
        ({"after": "5"}, {"after": 5}),
        ({"after": "2", "limit": "2"}, {"after": 2, "limit": 2}),
    ]:
        status, body = await h.http("GET", path, token=bob.token, params=params)
        assert status == 200, body
        ws_reply = await b.ok("history", conv=conv, **ws_fields)
        assert body["messages"] == ws_reply["messages"], params
        assert body["more"] == ws_reply["more"], params


@pytest.mark.parametrize(
    "params",
    [
        {"limit": "0"},
        {"limit": "101"},
        {"limit": "x"},
        {"before": "-1"},
        {"after": "abc"},
        {"before": "3", "after": "1"},
    ],
)
async def test_history_over_http_bad_params(h: Harness, params: dict[str, str]) -> None:
    alice, _, _, _, conv = await make_history(h, 2)
    status, body = await h.http(
        "GET", f"/api/v1/conversations/{conv}/messages", token=alice.token, params=params
    )
    assert status == 400 and body["error"]["code"] == "bad_request", (params, status, body)


async def test_history_over_http_needs_membership_and_token(h: Harness) -> None:
    _, _, _, _, conv = await make_history(h, 2)
    outsider = await h.user("outsider")
    path = f"/api/v1/conversations/{conv}/messages"
    status, body = await h.http("GET", path, token=outsider.token)
    assert status in (403, 404), body
    status, missing = await h.http(
        "GET", "/api/v1/conversations/nope-123/messages", token=outsider.token
    )
    assert status in (403, 404), missing
    assert missing["error"]["code"] == {403: "forbidden", 404: "not_found"}[status]
    status, body = await h.http("GET", path)
    assert status == 401, body


async def test_history_non_member_over_websocket(h: Harness) -> None:
    _, _, _, _, conv = await make_history(h, 2)
    outsider = await h.user("outsider")
    o = await h.connect(outsider)
    for fields in ({"conv": conv}, {"conv": "does-not-exist"}):
        reply = await o.error("history", **fields)
        assert reply["code"] in ("forbidden", "not_found"), reply


async def test_conversations_list(h: Harness) -> None:
    me, p1, p2, p3 = await h.users("me", "p1", "p2", "p3")
    m = await h.connect(me)
    c1 = await h.connect(p1)
    c2 = await h.connect(p2)
    c3 = await h.connect(p3)
    conv1 = (await m.send("to p1", to=p1.name))["conv"]
    conv2 = (await c2.send("p2 says hi", to=me.name))["conv"]
    conv3 = (await m.send("to p3", to=p3.name))["conv"]
    await c2.send("p2 again", conv=conv2)
    await c1.send("p1 answers", conv=conv1)  # conv1 now has the newest activity

    listing = await m.ok("conversations")
    convs = listing["conversations"]
    order = [(c["conv"], c["last_message"]["ts"], c["last_message"]["msg_id"]) for c in convs]
    assert [c["conv"] for c in convs] == [conv1, conv2, conv3], (order, [conv1, conv2, conv3])
    by_id = {c["conv"]: c for c in convs}
    one = by_id[conv1]
    assert one["kind"] == "direct" and one["last_seq"] == 2
    assert one["last_message"]["body"] == "p1 answers"
    assert one["last_message"]["from"] == p1.name and one["last_message"]["seq"] == 2
    assert one["unread"] == 1
    members = {x["user"]: x for x in one["members"]}
    assert set(members) == {me.name, p1.name}
    # sending moves the sender's own markers
    assert members[me.name]["read"] == 1 and members[me.name]["delivered"] >= 1
    assert members[p1.name]["read"] == 2 and members[p1.name]["delivered"] == 2
    assert by_id[conv2]["unread"] == 2 and by_id[conv2]["last_message"]["body"] == "p2 again"
    assert by_id[conv3]["unread"] == 0, "own messages are never unread"
    assert by_id[conv3]["last_seq"] == 1
    # the other side sees the same conversation
    other = (await c3.ok("conversations"))["conversations"]
    assert [c["conv"] for c in other] == [conv3] and other[0]["unread"] == 1


async def test_conversations_order_follows_activity_even_within_one_millisecond(
    h: Harness,
) -> None:
    me, *peers = await h.users("me", *[f"peer{i}" for i in range(8)])
    m = await h.connect(me)
    convs = [(await m.send("hello", to=p.name))["conv"] for p in peers]
    order = [convs[i] for i in (3, 0, 7, 5, 1, 6, 2, 4)]
    acks = [await m.send("again", conv=c) for c in order]  # back to back: ms ties are likely
    listing = (await m.ok("conversations"))["conversations"]
    got = [c["conv"] for c in listing]
    detail = [(c["conv"], c["last_message"]["ts"], c["last_message"]["msg_id"]) for c in listing]
    assert got == order[::-1], (detail, [a["ts"] for a in acks])


async def test_reconnecting_client_catches_up_with_conversations_and_history(h: Harness) -> None:
    alice, bob, carol = await h.users("alice", "bob", "carol")
    a = await h.connect(alice)
    b = await h.connect(bob)
    c = await h.connect(carol)
    direct = (await a.send("seen live", to=bob.name))["conv"]
    group = (await a.ok("create_group", title="g", members=[bob.name, carol.name]))["conv"]
    await b.message(direct, 1)
    await b.message(group, 1)
    held = {direct: 1, group: 1}  # what bob's client has
    await b.close()
    for i in range(3):
        await a.send(f"missed {i}", conv=direct)
        await c.send(f"group missed {i}", conv=group)
    await a.ok("add_members", conv=group, members=[(await h.user("dave")).name])

    b = await h.connect(bob, "back")
    listing = {x["conv"]: x for x in (await b.ok("conversations"))["conversations"]}
    caught: dict[str, list[Frame]] = {}
    for conv, have in held.items():
        assert listing[conv]["last_seq"] > have
        reply = await b.ok("history", conv=conv, after=have)
        caught[conv] = reply["messages"]
        assert [m["seq"] for m in reply["messages"]] == list(
            range(have + 1, listing[conv]["last_seq"] + 1)
        )
    assert [m["body"] for m in caught[direct]] == [f"missed {i}" for i in range(3)]
    assert [m["body"] for m in caught[group] if m["kind"] == "text"] == [
        f"group missed {i}" for i in range(3)
    ]
    assert caught[group][-1]["kind"] == "system"
    assert listing[direct]["unread"] == 4 and listing[group]["unread"] == 5
