"""Malformed and oversized frames (issue 2): every bad frame gets an `error`, never a crash.

The table below is generated from a few valid base requests, each broken one field at a time,
plus text that is not a JSON object at all. Every case must be answered by exactly one `error`
frame with code `bad_request`, carrying the request's `id` when that id was valid (else `id`
null), and the connection must still answer a `ping` afterwards.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from .client import Harness, Ws, dumps, short
from .server import ChatdServer, ServerFactory

MISSING = object()


@dataclass(frozen=True)
class Case:
    label: str
    text: str
    rid: str | None  # the valid id the error must carry, or None for `id: null`


def not_objects() -> list[Case]:
    raw = [
        "",
        " ",
        "not json",
        "{",
        "}",
        "[]",
        "[1, 2]",
        "1",
        "-1",
        "1.5",
        "true",
        "false",
        "null",
        '"ping"',
        "{'type': 'ping'}",
        '{type: "ping"}',
        '{"type": "ping",}',
        '{"type": "ping", "id": "x",}',
        '{"type": "ping", "id": "x"',
        '{"type": "ping" "id": "x"}',
        '{"type": "ping"} trailing',
        '{"type": "ping", "id": "x"}{"type": "ping", "id": "y"}',
        "NaN",
        "\u0000",
        "[" * 5000 + "]" * 5000,
        '{"a":' * 3000 + "1" + "}" * 3000,
        '{"type": "ping", "id": "x", "n": 1e999999}' + "x",
        '{"type": "ping", "id": "x"} ]',
    ]
    return [Case(f"not-an-object:{t[:30]!r}", t, None) for t in raw]


def broken(base: dict[str, Any], label: str, rid: str | None, **changes: Any) -> Case:
    frame = dict(base)
    for key, value in changes.items():
        key = key.rstrip("_")
        if value is MISSING:
            frame.pop(key, None)
        else:
            frame[key] = value
    if rid is not None:
        frame["id"] = rid
    else:
        frame.pop("id", None)
    return Case(label, dumps(frame), rid)


def type_cases() -> list[Case]:
    cases = []
    bad_types: list[Any] = [
        MISSING,
        None,
        1,
        [],
        {},
        True,
        "",
        "PING",
        "nope",
        " ping",
        "ping\u0000",
        "ok",
        "error",
        "message",
        "presence",
        "x" * 10_000,
    ]
    for i, t in enumerate(bad_types):
        for rid in (None, f"t{i}"):
            cases.append(broken({"type": "ping"}, f"type={t!r:.20}/id={rid}", rid, type=t))
    return cases


def id_cases() -> list[Case]:
    bad_ids: list[Any] = [1, 0, 1.5, [], {}, True, False, "x" * 65, "y" * 1000, ["a"]]
    cases = []
    for i, bad in enumerate(bad_ids):
        frame = {"type": "ping", "id": bad}
        cases.append(Case(f"id={bad!r:.20}#{i}", dumps(frame), None))
        frame = {"type": "send", "id": bad, "to": "someone", "client_id": "c", "body": "x"}
        cases.append(Case(f"send id={bad!r:.20}#{i}", dumps(frame), None))
    return cases


def request_cases(conv: str, group: str, peer: str, third: str) -> list[Case]:
    """Each valid request of the protocol, broken one field at a time (all with a valid id)."""
    n = 0

    def rid() -> str:
        nonlocal n
        n += 1
        return f"r{n}"

    cases: list[Case] = []

    def add(base: dict[str, Any], **changes: Any) -> None:
        desc = ",".join(
            f"{k}={'<missing>' if v is MISSING else repr(v)[:20]}" for k, v in changes.items()
        )
        cases.append(broken(base, f"{base['type']}:{desc}", rid(), **changes))

    send = {"type": "send", "conv": conv, "client_id": "cid-ok", "body": "x"}
    for v in (MISSING, None, 1, "", "c" * 65, [], {}, True):
        add(send, client_id=v)
    add(send, to=peer)  # both conv and to
    add(send, conv=MISSING)  # neither
    for v in (None, 1, [], {}, True):
        add(send, conv=v)
    for v in (None, 1, [], {}, True):
        add(send, conv=MISSING, to=v)
    for v in (MISSING, None, 1, [], {}, True, 1.5, ""):
        add(send, body=v)
    for v in ("x", {}, 1, [1], [None], [{}], [[]], True):
        add(send, media=v)
    for v in ("1", -1, 1.5, True, [], {}):
        add(send, reply_to=v)

    history = {"type": "history", "conv": conv}
    for v in (MISSING, None, 1, [], {}, True):
        add(history, conv=v)
    for v in (0, 101, -1, "10", 1.5, True, [], 10**6):
        add(history, limit=v)
    for v in ("5", -1, 1.5, True, [], {}):
        add(history, before=v)
    for v in ("x", -1, [], 2.5, False):
        add(history, after=v)
    add(history, before=3, after=1)

    receipt = {"type": "receipt", "conv": conv, "kind": "read", "seq": 1}
    for v in (MISSING, None, 1, []):
        add(receipt, conv=v)
    for v in (MISSING, None, "seen", 1, "READ", []):
        add(receipt, kind=v)
    for v in (MISSING, None, "1", -1, 1.5, True, [], 999_999):
        add(receipt, seq=v)

    typing = {"type": "typing", "conv": conv, "state": "start"}
    for v in (MISSING, None, "begin", 1, "START", []):
        add(typing, state=v)
    for v in (MISSING, None, 1, {}):
        add(typing, conv=v)

    create = {"type": "create_group", "title": "t", "members": [peer]}
    for v in (None, 1, [], {}, True):
        add(create, title=v)
    for v in ("x", {}, 1, [1], [None], [[peer]], True):
        add(create, members=v)

    add_members = {"type": "add_members", "conv": group, "members": [third]}
    for v in (MISSING, None, 1, []):
        add(add_members, conv=v)
    for v in (MISSING, None, "x", 1, [1], [None], {}):
        add(add_members, members=v)

    remove = {"type": "remove_member", "conv": group, "user": peer}
    for v in (MISSING, None, 1, [], {}):
        add(remove, user=v)
    for v in (MISSING, None, 1):
        add(remove, conv=v)

    leave = {"type": "leave", "conv": group}
    for v in (MISSING, None, 1, [], {}):
        add(leave, conv=v)

    update = {"type": "update_group", "conv": group, "title": "new"}
    for v in (1, [], {}, True):
        add(update, title=v)
    for v in (MISSING, None, 1):
        add(update, conv=v)

    set_role = {"type": "set_role", "conv": group, "user": peer, "role": "admin"}
    for v in (MISSING, None, "king", "ADMIN", 1, [], {}):
        add(set_role, role=v)
    for v in (MISSING, None, 1, []):
        add(set_role, user=v)
    for v in (MISSING, 1):
        add(set_role, conv=v)

    for kind in ("add_contact", "remove_contact"):
        for v in (MISSING, None, 1, [], {}, True):
            add({"type": kind, "user": third}, user=v)
    return cases


async def expect_bad_request(conn: Ws, case: Case) -> None:
    if case.rid is not None:
        reply = await conn.request_text(case.text, case.rid)
    else:
        await conn.send_raw(case.text)
        reply = await conn.orphan()
    assert reply["type"] == "error", (case.label, reply)
    assert reply.get("code") == "bad_request", (case.label, reply)
    assert isinstance(reply.get("message"), str) and reply["message"], (case.label, reply)
    assert reply.get("id") == case.rid, (case.label, reply)
    pong = await conn.request("ping")
    assert pong["type"] == "ok", (case.label, pong)
    assert conn.orphans == [], (case.label, "more than one reply", conn.orphans)
    assert not conn.closed


async def test_at_least_100_kinds_of_malformed_frames_each_get_bad_request(h: Harness) -> None:
    me, peer, third = await h.users("fuzz", "peer", "third")
    conn = await h.connect(me)
    await h.connect(peer)
    conv = (await conn.send("setup", to=peer.name))["conv"]
    group = (await conn.ok("create_group", title="g", members=[peer.name]))["conv"]
    before = await conn.ok("history", conv=conv)
    group_before = await conn.ok("history", conv=group)

    cases = (
        not_objects()
        + type_cases()
        + id_cases()
        + request_cases(conv, group, peer.name, third.name)
    )
    assert len(cases) >= 100
    assert len({c.label for c in cases}) == len(cases), "labels must name each case"
    failures = []
    for case in cases:
        try:
            await expect_bad_request(conn, case)
        except AssertionError as exc:
            failures.append(f"{case.label}: {exc}")
            if conn.closed:
                break
    assert not failures, f"{len(failures)}/{len(cases)} cases failed:\n" + "\n".join(failures)
    # a failed request changes nothing
    assert (await conn.ok("history", conv=conv))["messages"] == before["messages"]
    after_group = await conn.ok("history", conv=group)
    assert after_group["messages"] == group_before["messages"]


async def test_typing_without_id_that_is_invalid_gets_id_null_error(h: Harness) -> None:
    me, peer = await h.users("typer", "peer")
    conn = await h.connect(me)
    conv = (await conn.send("x", to=peer.name))["conv"]
    await expect_bad_request(
        conn, Case("typing-no-id", dumps({"type": "typing", "conv": conv, "state": "x"}), None)
    )


async def test_binary_frame_is_bad_request_and_connection_stays_open(h: Harness) -> None:
    user = await h.user("binary")
    conn = await h.connect(user)
    for payload in (b"\x00\x01\x02", b"", b"{}"):
        await conn.ws.send_bytes(payload)
        reply = await conn.orphan()
        assert reply["type"] == "error" and reply["code"] == "bad_request", reply
        assert reply.get("id") is None
        await conn.ok("ping")
    assert conn.orphans == []


async def test_valid_limits_are_accepted(h: Harness) -> None:
    me, peer = await h.users("limits", "peer")
    conn = await h.connect(me)
    rid = "i" * 64
    reply = await conn.request_frame({"type": "ping", "id": rid})
    assert reply["type"] == "ok" and reply["id"] == rid
    sent = await conn.send("x", to=peer.name, client_id="c" * 64)
    assert sent["duplicate"] is False
    long_body = "b" * 16384
    sent = await conn.send(long_body, conv=sent["conv"])
    page = await conn.ok("history", conv=sent["conv"], after=sent["seq"] - 1)
    assert page["messages"][0]["body"] == long_body
    assert (await conn.ok("history", conv=sent["conv"], limit=100))["more"] is False


async def test_body_over_max_body_chars_is_refused(h: Harness) -> None:
    me, peer = await h.users("toolong", "peer")
    conn = await h.connect(me)
    reply = await conn.error("send", to=peer.name, client_id="c1", body="b" * 16385)
    assert reply["code"] == "too_large", reply  # docs/protocol.md: the one non-bad_request case
    await conn.ok("ping")


def frame_of_size(size: int, base: dict[str, Any], pad_key: str = "pad") -> str:
    frame = dict(base, **{pad_key: ""})
    overhead = len(dumps(frame).encode())
    frame[pad_key] = "p" * (size - overhead)
    text = dumps(frame)
    assert len(text.encode()) == size
    return text


async def test_frame_of_exactly_64_kib_is_accepted(h: Harness) -> None:
    user = await h.user("big")
    conn = await h.connect(user)
    text = frame_of_size(65536, {"type": "ping", "id": "big"})
    reply = await conn.request_text(text, "big")
    assert reply["type"] in ("ok", "error"), reply
    await conn.ok("ping")
    assert not conn.closed


async def test_message_frame_of_exactly_64_kib_is_stored(h: Harness) -> None:
    me, peer = await h.users("bigmsg", "peer")
    conn = await h.connect(me)
    base = {
        "type": "send",
        "id": "bigsend",
        "to": peer.name,
        "client_id": uuid.uuid4().hex,
        "body": "",
    }
    room = 65536 - len(dumps(base).encode())
    emoji, ascii_tail = divmod(room, 4)  # 4 UTF-8 bytes per emoji keeps the body <= 16384 chars
    body = "😀" * emoji + "a" * ascii_tail
    text = dumps(dict(base, body=body))
    assert len(text.encode()) == 65536 and len(body) <= 16384
    reply = await conn.request_text(text, "bigsend")
    assert reply["type"] == "ok", reply
    page = await conn.ok("history", conv=reply["conv"])
    assert page["messages"][-1]["body"] == body


@pytest.mark.parametrize("size", [65537, 70000, 1_000_000])
async def test_frame_over_64_kib_closes_with_1009(h: Harness, size: int) -> None:
    user = await h.user("huge")
    conn = await h.connect(user)
    await conn.send_raw(frame_of_size(size, {"type": "ping", "id": "huge"}))
    assert await conn.wait_closed() == 1009
    # and the server is fine
    other = await h.connect(user, "after")
    await other.ok("ping")


def test_table_is_json_where_it_claims_to_be() -> None:
    # guard against a table bug turning a valid frame into a test expecting bad_request
    for case in request_cases("c", "g", "p", "t"):
        frame = json.loads(case.text)
        assert isinstance(frame, dict) and frame["id"] == case.rid


async def test_empty_id_is_valid_and_null_id_means_none(h: Harness) -> None:
    user = await h.user("ids")
    conn = await h.connect(user)
    reply = await conn.request_frame({"type": "ping", "id": ""})
    assert reply["type"] == "ok" and reply["id"] == ""
    await conn.send_frame({"type": "ping", "id": None})  # like no id: no reply at all
    await conn.send_frame({"type": "nope", "id": None})  # a failure: error with id null
    reply = await conn.orphan()
    assert reply["code"] == "bad_request" and reply["id"] is None
    await conn.ok("ping")
    assert conn.orphans == []


ERROR_CODES = {
    "bad_request",
    "unauthorized",
    "forbidden",
    "not_found",
    "conflict",
    "too_large",
    "rate_limited",
    "unavailable",
}  # never "internal": a random frame is no excuse
REQUEST_TYPES = [
    "send",
    "history",
    "conversations",
    "receipt",
    "typing",
    "create_group",
    "add_members",
    "remove_member",
    "leave",
    "update_group",
    "set_role",
    "contacts",
    "add_contact",
    "remove_contact",
    "ping",
    "mute",
    "hello",
]
FIELDS = [
    "conv",
    "to",
    "client_id",
    "body",
    "media",
    "reply_to",
    "before",
    "after",
    "limit",
    "kind",
    "seq",
    "state",
    "title",
    "members",
    "user",
    "role",
    "muted",
    "token",
    "device",
]


def random_value(rng: random.Random, pool: list[Any], depth: int = 0) -> Any:
    pick = rng.randrange(12)
    if pick < 3:
        return rng.choice(pool)
    if pick == 3:
        return rng.choice([0, 1, -1, 2**31, 2**63 - 1, 2**63, -(2**63), 10**18, 3])
    if pick == 4:
        return rng.choice([0.5, -0.0, 1e300, 1.0])
    if pick == 5:
        return rng.choice([True, False, None])
    if pick == 6:
        return "".join(rng.choice('aZ09_.-é😀 \n"\\\u2028') for _ in range(rng.randrange(0, 80)))
    if pick == 7:
        return "x" * rng.choice([64, 65, 128, 129, 1024, 1025, 16384, 16385])
    if pick == 8 and depth < 3:
        return [random_value(rng, pool, depth + 1) for _ in range(rng.randrange(0, 12))]
    if pick == 9 and depth < 3:
        return {rng.choice(FIELDS): random_value(rng, pool, depth + 1) for _ in range(3)}
    return rng.choice(["start", "stop", "read", "delivered", "admin", "member", "owner", ""])


FUZZ_SEEDS = [int(x) for x in os.environ.get("CHATD_FUZZ_SEEDS", "20261128,7,1999").split(",")]


@pytest.mark.parametrize("seed", FUZZ_SEEDS)
async def test_random_frames_never_crash_a_connection(h: Harness, seed: int) -> None:
    me, peer, third = await h.users("rnd", "peer", "third")
    conn = await h.connect(me)
    await h.connect(peer)
    conv = (await conn.send("setup", to=peer.name))["conv"]
    group = (await conn.ok("create_group", title="g", members=[peer.name]))["conv"]
    pool: list[Any] = [
        conv,
        group,
        peer.name,
        third.name,
        me.name,
        1,
        2,
        "c1",
        ["m1"],
        [peer.name, third.name],
    ]
    rng = random.Random(seed)
    problems = []
    for i in range(400):
        frame: dict[str, Any] = {"type": rng.choice(REQUEST_TYPES), "id": f"f{i}"}
        for key in rng.sample(FIELDS, rng.randrange(0, 6)):
            frame[key] = random_value(rng, pool)
        if frame["type"] == "hello":
            frame["type"] = "ping"  # a second hello is not what this test is about
        text = dumps(frame)
        if len(text.encode()) > 65536:
            continue
        reply = await conn.request_text(text, f"f{i}")
        if reply["type"] == "error" and reply.get("code") not in ERROR_CODES:
            problems.append(f"{short(frame, 300)} -> {reply}")
        if conn.closed:
            problems.append(f"closed ({conn.close_code}) after {short(frame, 300)}")
            break
        if reply["type"] == "error" and reply["code"] == "rate_limited":
            await asyncio.sleep(float(reply.get("retry_after", 0.2)))
    await conn.ok("ping")
    assert not problems, "\n".join(problems[:20])
    assert (await h.http("GET", "/healthz"))[0] == 200


async def test_size_limits_follow_their_flags(
    server_factory: ServerFactory, harness: Callable[[ChatdServer], Harness]
) -> None:
    h = harness(server_factory(max_body_chars=10, max_frame_bytes=2048))
    me, peer = await h.users("flags", "peer")
    conn = await h.connect(me)
    sent = await conn.send("x" * 10, to=peer.name)
    reply = await conn.error("send", conv=sent["conv"], client_id="long", body="x" * 11)
    assert reply["code"] == "too_large", reply
    reply = await conn.request_text(frame_of_size(2048, {"type": "ping", "id": "edge"}), "edge")
    assert reply["id"] == "edge"
    await conn.send_raw(frame_of_size(2049, {"type": "ping", "id": "over"}))
    assert await conn.wait_closed() == 1009
