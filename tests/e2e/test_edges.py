"""Edge cases a client author would hit: races, case folding, odd bodies, event shapes."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable

from .client import Harness, history_all
from .server import ChatdServer, ServerFactory


async def test_concurrent_retries_of_one_client_id_store_one_message(h: Harness) -> None:
    alice, bob = await h.users("alice", "bob")
    a1 = await h.connect(alice, "a1")
    a2 = await h.connect(alice, "a2")
    b = await h.connect(bob)
    conv = (await a1.send("setup", to=bob.name))["conv"]
    await b.message(conv, 1)
    cid = uuid.uuid4().hex
    replies = await asyncio.gather(
        *(conn.ok("send", conv=conv, client_id=cid, body="race") for conn in (a1, a2) * 4)
    )
    assert len({(r["seq"], r["msg_id"]) for r in replies}) == 1, replies
    assert sorted(r["duplicate"] for r in replies) == [False] + [True] * 7, replies
    sentinel = await a1.send("sentinel", conv=conv)
    assert sentinel["seq"] == 3
    assert (await b.message(conv))["seq"] == 2
    assert (await b.message(conv))["seq"] == 3
    assert [m["body"] for m in await history_all(b, conv)] == ["setup", "race", "sentinel"]


async def test_usernames_are_case_folded_everywhere(h: Harness) -> None:
    alice, bob, carol = await h.users("alice", "bob", "carol")
    a = await h.connect(alice)
    b = await h.connect(bob)
    first = await a.send("hi", to=bob.name.upper())
    second = await a.send("again", to=bob.name)
    assert first["conv"] == second["conv"]
    ev = await b.message(first["conv"], 1)
    assert ev["from"] == alice.name
    group = (await a.ok("create_group", title="case", members=[carol.name.upper()]))["conv"]
    listing = (await a.ok("conversations"))["conversations"]
    (summary,) = [c for c in listing if c["conv"] == group]
    assert {m["user"] for m in summary["members"]} == {alice.name, carol.name}
    await a.ok("add_contact", user=carol.name.upper())
    contacts = (await a.ok("contacts"))["contacts"]
    assert carol.name in [c["user"] for c in contacts]


async def test_odd_bodies_round_trip_exactly(h: Harness) -> None:
    alice, bob = await h.users("alice", "bob")
    a = await h.connect(alice)
    b = await h.connect(bob)
    bodies = [
        "plain",
        "emoji 😀👍🏽 and math \U0001d518\U0001d52b",
        'quotes " and \\ backslash',
        "line\nbreak\r\nand\ttab",
        "separators \u2028 \u2029",
        "rtl שלום مرحبا",
        "combining e\u0301\u0301\u0301",
        "<script>alert(1)</script>",
        " ",
    ]
    conv = (await a.send("start", to=bob.name))["conv"]
    for body in bodies:
        await a.send(body, conv=conv)
    received = [(await b.message(conv))["body"] for _ in range(len(bodies) + 1)]
    assert received == ["start", *bodies]
    assert [m["body"] for m in await history_all(b, conv)] == ["start", *bodies]


async def test_lone_surrogate_never_breaks_the_conversation(h: Harness) -> None:
    alice, bob = await h.users("alice", "bob")
    a = await h.connect(alice)
    b = await h.connect(bob)
    conv = (await a.send("start", to=bob.name))["conv"]
    text = '{"type":"send","id":"sur","conv":"CONV","client_id":"sur","body":"x\\ud800y"}'
    await a.send_raw(text.replace("CONV", conv))
    reply = await a.orphan()  # unpaired surrogates are not Unicode: "not JSON" (id null) is fair
    assert reply.get("id") in ("sur", None), reply
    if reply["type"] == "error":
        assert reply["code"] == "bad_request", reply
    await a.ok("ping")
    # whatever happened, both sides can still read the conversation and keep chatting
    await history_all(b, conv)
    await history_all(a, conv)
    after = await b.send("still fine", conv=conv)
    await a.message(conv, after["seq"])


async def test_nul_in_a_body_is_stored_exactly_or_refused(h: Harness) -> None:
    alice, bob = await h.users("alice", "bob")
    a = await h.connect(alice)
    conv = (await a.send("start", to=bob.name))["conv"]
    reply = await a.request("send", conv=conv, client_id="nul", body="a\x00b")
    if reply["type"] == "ok":
        assert (await history_all(a, conv))[-1]["body"] == "a\x00b"
    else:
        assert reply["code"] == "bad_request", reply
        assert len(await history_all(a, conv)) == 1


async def test_message_event_and_history_entry_are_the_same_object(h: Harness) -> None:
    alice, bob = await h.users("alice", "bob")
    a = await h.connect(alice)
    b = await h.connect(bob)
    sent = await a.send("same", to=bob.name)
    reply = await a.ok("send", conv=sent["conv"], client_id="r1", body="reply", reply_to=1)
    events = [await b.message(sent["conv"], 1), await b.message(sent["conv"], 2)]
    history = await history_all(b, sent["conv"])
    for ev, stored in zip(events, history, strict=True):
        assert {k: v for k, v in ev.items() if k != "type"} == {
            k: v for k, v in stored.items() if k != "type"
        }
    assert history[1]["reply_to"] == 1 and reply["seq"] == 2


async def test_reply_to_a_missing_seq_is_refused(h: Harness) -> None:
    alice, bob = await h.users("alice", "bob")
    a = await h.connect(alice)
    conv = (await a.send("one", to=bob.name))["conv"]
    for bad in (2, 99):
        reply = await a.error("send", conv=conv, client_id=f"bad{bad}", body="x", reply_to=bad)
        assert reply["code"] in ("bad_request", "not_found"), reply
    assert len(await history_all(a, conv)) == 1


async def test_first_direct_message_announces_the_conversation(h: Harness) -> None:
    alice, bob = await h.users("alice", "bob")
    a = await h.connect(alice)
    b = await h.connect(bob)
    sent = await a.send("hello", to=bob.name)
    ev = await b.event("conversation", conv=sent["conv"])
    assert ev["kind"] == "direct", ev


async def test_typing_flood_is_dropped_silently(h: Harness) -> None:
    alice, bob = await h.users("alice", "bob")
    a = await h.connect(alice)
    b = await h.connect(bob)
    conv = (await a.send("x", to=bob.name))["conv"]
    began = time.monotonic()
    for _ in range(30):
        await a.send_frame({"type": "typing", "conv": conv, "state": "start"})
    elapsed = time.monotonic() - began
    await a.ok("ping")
    assert a.orphans == [], "typing over the limit must be dropped without error"
    sentinel = await a.send("after the flood", conv=conv)
    await b.message(conv, sentinel["seq"])
    relayed = b.take_events("typing", conv=conv)
    # 2 a second in bursts of 4 (the defaults): the burst, then what the time refilled.
    assert 4 <= len(relayed) <= 4 + 2 * elapsed + 1, f"{len(relayed)} of 30 relayed"


async def test_revoking_a_token_closes_every_socket_of_that_token(h: Harness) -> None:
    user = await h.user("revoke")
    first = await h.connect(user, "one")
    second = await h.connect(user, "two")
    status, _ = await h.http("DELETE", "/api/v1/sessions/current", token=user.token)
    assert status == 204
    assert await first.wait_closed() == 4401
    assert await second.wait_closed() == 4401


MESSAGE_FIELDS = {
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


async def test_message_objects_have_exactly_the_documented_fields(h: Harness) -> None:
    alice, bob = await h.users("alice", "bob")
    a = await h.connect(alice)
    b = await h.connect(bob)
    conv = (await a.send("text", to=bob.name))["conv"]
    ev = await b.message(conv, 1)
    assert set(ev) == MESSAGE_FIELDS | {"type"}, ev
    group = (await a.ok("create_group", title="fields", members=[bob.name]))["conv"]
    sys_ev = await b.message(group, 1)
    assert set(sys_ev) == MESSAGE_FIELDS | {"type", "event"}, sys_ev
    assert (sys_ev["body"], sys_ev["media"], sys_ev["reply_to"], sys_ev["client_id"]) == (
        None,
        [],
        None,
        None,
    )
    for m in await history_all(b, group) + await history_all(b, conv):
        assert set(m) - {"type"} in (MESSAGE_FIELDS, MESSAGE_FIELDS | {"event"}), m


async def test_group_of_one_title_rules_and_repeated_members(h: Harness) -> None:
    alice, bob = await h.users("alice", "bob")
    a = await h.connect(alice)
    solo = (await a.ok("create_group", title="  just me  "))["conv"]
    listing = {c["conv"]: c for c in (await a.ok("conversations"))["conversations"]}
    assert listing[solo]["title"] == "just me"
    assert [m["user"] for m in listing[solo]["members"]] == [alice.name]
    assert listing[solo]["last_message"]["kind"] == "system"
    for title in ("", "   ", "t" * 129):
        reply = await a.error("create_group", title=title, members=[bob.name])
        assert reply["code"] == "bad_request", (title, reply)
    group = (
        await a.ok("create_group", title="t" * 128, members=[bob.name, bob.name.upper(), bob.name])
    )["conv"]
    listing = {c["conv"]: c for c in (await a.ok("conversations"))["conversations"]}
    assert sorted(m["user"] for m in listing[group]["members"]) == sorted([alice.name, bob.name])
    reply = await a.error("update_group", conv=group, title=" ")
    assert reply["code"] == "bad_request"


async def test_mute_shows_in_conversations(h: Harness) -> None:
    alice, bob = await h.users("alice", "bob")
    a = await h.connect(alice)
    b = await h.connect(bob)
    conv = (await a.send("x", to=bob.name))["conv"]
    reply = await b.ok("mute", conv=conv, muted=True)
    assert reply["muted"] is True and reply["conv"] == conv
    listing = (await b.ok("conversations"))["conversations"]
    assert listing[0]["muted"] is True
    assert (await a.ok("conversations"))["conversations"][0]["muted"] is False
    sent = await a.send("still delivered live", conv=conv)
    await b.message(conv, sent["seq"])
    for bad in (1, "true", None):
        reply = await b.error("mute", conv=conv, muted=bad)
        assert reply["code"] == "bad_request", reply
    await b.ok("mute", conv=conv, muted=False)
    assert (await b.ok("conversations"))["conversations"][0]["muted"] is False


async def test_pipelined_concurrent_sends_arrive_gapless_and_in_order(h: Harness) -> None:
    users = await h.users("p0", "p1", "p2", "p3", "r0", "r1")
    conns = [await h.connect(u) for u in users]
    watchers = [await h.connect(u, "second") for u in users[:2]]
    conv = (await conns[0].ok("create_group", title="pipe", members=[u.name for u in users[1:]]))[
        "conv"
    ]

    async def burst(i: int) -> list[int]:
        replies = await asyncio.gather(
            *(
                conns[i].ok("send", conv=conv, client_id=f"{i}-{n}", body=f"{i}-{n}")
                for n in range(30)
            )
        )
        return [r["seq"] for r in replies]

    seqs = [s for part in await asyncio.gather(*(burst(i) for i in range(4))) for s in part]
    assert sorted(seqs) == list(range(2, 122)), "seqs must be gapless and unique"
    last = max(seqs)

    # receivers that sent nothing, and the senders' second devices, see every message
    for conn in conns[4:] + watchers:
        await conn.event("message", conv=conv, seq=last, timeout=10)
        got = [  # every frame in the order it arrived
            f["seq"]
            for f in conn.frames
            if f.get("type") == "message" and f.get("conv") == conv and f["kind"] == "text"
        ]
        assert got == sorted(seqs), f"{conn.label}: not in seq order or incomplete: {got}"
    history = await history_all(conns[5], conv)
    assert [m["seq"] for m in history] == list(range(1, last + 1))


async def test_message_rate_limit_answers_rate_limited_and_stores_nothing(
    server_factory: ServerFactory, harness: Callable[[ChatdServer], Harness]
) -> None:
    h = harness(server_factory(messages_per_second=2, message_burst=5))
    alice, bob = await h.users("alice", "bob")
    a = await h.connect(alice)
    began = time.monotonic()
    conv = (await a.send("first", to=bob.name))["conv"]
    replies = await asyncio.gather(
        *(a.request("send", conv=conv, client_id=f"flood{i}", body=f"f{i}") for i in range(12))
    )
    ok = [r for r in replies if r["type"] == "ok"]
    limited = [r for r in replies if r["type"] == "error"]
    assert len(ok) + len(limited) == 12  # every request answered: nothing dropped silently
    # 5 tokens, one spent on "first": 4 of the flood go through, plus 2 a second refilled.
    refilled = 2 * (time.monotonic() - began)
    assert 4 <= len(ok) <= min(5, 4 + refilled + 1) and limited, replies
    for r in limited:
        assert r["code"] == "rate_limited", r
        assert isinstance(r.get("retry_after"), int | float) and r["retry_after"] > 0, r
    history = await history_all(a, conv)
    assert len(history) == 1 + len(ok), "a rate-limited send must store nothing"
    await asyncio.sleep(max(r["retry_after"] for r in limited) + 0.1)
    await a.send("after waiting", conv=conv)
