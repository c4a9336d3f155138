"""Group fan-out (issue 3): 50 members x 2 devices, and a stalled reader among 50 members."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable

import pytest

from .client import Frame, Harness, RawWs, User, Ws, dumps, register_users
from .server import ChatdServer

MEMBERS = 50
GRACE = 0.5
# The per-connection outgoing buffer is small so that a stalled reader overflows it quickly;
# the rate limits are lifted because this file floods on purpose.
SERVER_FLAGS = {"send_buffer_bytes": 262144, "presence_grace": GRACE}


@pytest.fixture(scope="module")
def members(server: ChatdServer) -> list[User]:
    return asyncio.run(register_users(server, "fan", MEMBERS))


def texts(conn: Ws, conv: str) -> list[Frame]:
    return [e for e in conn.events if e.get("type") == "message" and e.get("conv") == conv]


async def until(pred: Callable[[], bool], timeout: float, what: str) -> None:  # noqa: ASYNC109
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.02)


async def until_offline(conn: Ws, user: str) -> None:
    async def offline() -> bool:
        listed = {c["user"]: c for c in (await conn.ok("contacts"))["contacts"]}
        return bool(listed[user]["status"] == "offline")

    deadline = time.monotonic() + GRACE + 5
    while not await offline():
        assert time.monotonic() < deadline, f"{user} still online"
        await asyncio.sleep(0.1)
    conn.take_events("presence", user=user)


async def test_fan_out_50_members_2_devices_each(h: Harness, members: list[User]) -> None:
    devices: dict[str, list[Ws]] = {}
    for u in members:
        devices[u.name] = [await h.connect(u, "d0"), await h.connect(u, "d1")]
    all_conns = [c for pair in devices.values() for c in pair]
    creator = devices[members[0].name][0]
    conv = (await creator.ok("create_group", title="fan", members=[u.name for u in members[1:]]))[
        "conv"
    ]
    for u in members[1:]:
        for conn in devices[u.name]:
            await conn.event("conversation", conv=conv)

    senders = [devices[u.name][0] for u in members[:5]]
    sent: dict[int, Ws] = {}  # seq -> sending connection
    bodies: dict[int, str] = {}

    async def send_some(conn: Ws, n: int) -> None:
        for i in range(n):
            body = f"{conn.label} #{i}"
            reply = await conn.send(body, conv=conv)
            sent[reply["seq"]] = conn
            bodies[reply["seq"]] = body

    await asyncio.gather(*(send_some(conn, 4) for conn in senders))
    assert len(sent) == 20
    # a sentinel from a non-sender: once every connection has it, nothing earlier is in flight
    sentinel = await devices[members[-1].name][1].send("sentinel", conv=conv)
    sent[sentinel["seq"]] = devices[members[-1].name][1]
    bodies[sentinel["seq"]] = "sentinel"

    def has_sentinel(conn: Ws) -> bool:
        return conn is sent[sentinel["seq"]] or any(
            e.get("seq") == sentinel["seq"] for e in texts(conn, conv)
        )

    await until(lambda: all(has_sentinel(c) for c in all_conns), 15, "the sentinel everywhere")
    problems = []
    for conn in all_conns:
        got = [e["seq"] for e in texts(conn, conv) if e["kind"] == "text"]
        expected = sorted(seq for seq, sender in sent.items() if sender is not conn)
        if got != expected:
            problems.append(f"{conn.label}: got {got}, expected {expected}")
        all_seqs = [e["seq"] for e in texts(conn, conv)]
        if all_seqs != sorted(set(all_seqs)):
            problems.append(f"{conn.label}: out of order or repeated: {all_seqs}")
    assert not problems, "\n".join(problems[:20])
    # the bodies arrive intact
    for e in texts(devices[members[10].name][1], conv):
        if e["kind"] == "text":
            assert e["body"] == bodies[e["seq"]], e


async def test_stalled_reader_does_not_slow_the_others_and_is_closed(
    h: Harness, members: list[User]
) -> None:
    stalled_user, sender_user, second_user, *others = members
    sender = await h.connect(sender_user, "sender")
    second = await h.connect(second_user, "second")  # two senders stay under the rate limit
    receivers = [await h.connect(u, "r") for u in others]
    conv = (
        await sender.ok(
            "create_group",
            title="stall",
            members=[u.name for u in (stalled_user, second_user, *others)],
        )
    )["conv"]
    await sender.ok("add_contact", user=stalled_user.name)
    # the previous test's devices of this user may still be inside the offline grace period
    await until_offline(sender, stalled_user.name)

    stalled = await RawWs.connect(h.server)
    await stalled.send_text(
        dumps({"type": "hello", "id": "h", "token": stalled_user.token, "device": "stalled"})
    )
    hello = await stalled.read_json()
    assert hello["type"] == "ok", hello
    await sender.event("presence", user=stalled_user.name, status="online")
    # from here on nobody reads `stalled`

    body = "z" * 16000
    count = 260  # ~4 MB: more than the kernel buffers plus the server's send buffer
    acked_at: dict[int, float] = {}
    started = time.monotonic()
    for i in range(count):
        conn = sender if i % 2 else second
        reply = await conn.ok("send", conv=conv, client_id=uuid.uuid4().hex, body=f"{i}{body}")
        acked_at[reply["seq"]] = time.monotonic()
        if i % 20 == 19:
            await asyncio.sleep(0.05)  # pace the flood a little: this is not a benchmark
    send_time = time.monotonic() - started
    last_seq = max(acked_at)

    await until(
        lambda: all(any(e.get("seq") == last_seq for e in texts(r, conv)) for r in receivers),
        20,
        "every receiver to get the last message",
    )
    problems = []
    for r in receivers:
        got = [e["seq"] for e in texts(r, conv) if e["kind"] == "text"]
        if got != sorted(acked_at):
            problems.append(
                f"{r.label}: {len(got)} of {count}, first missing "
                f"{sorted(set(acked_at) - set(got))[:5]}"
            )
    assert not problems, "\n".join(problems[:10])
    assert send_time < 30, f"sending {count} messages took {send_time:.1f}s"
    lags = sorted(
        r.arrivals[(conv, seq)] - acked for r in receivers for seq, acked in acked_at.items()
    )
    p99, worst = lags[int(len(lags) * 0.99)], lags[-1]
    assert p99 < 2.0 and worst < 5.0, f"delivery lag p99 {p99:.2f}s, max {worst:.2f}s"

    # the server gave up on the stalled connection: reading it now yields part of the flood,
    # then the close frame (1013), then nothing
    code, delivered = await stalled.drain_until_closed(timeout=15)
    stalled.close()
    assert code == 1013, f"stalled reader closed with {code}, expected 1013"
    assert delivered < count, "the stalled reader was buffered everything, not cut off"
    # and it catches up through history on reconnect
    again = await h.connect(stalled_user, "again")
    page = await again.ok("history", conv=conv, after=last_seq - 5)
    assert [m["seq"] for m in page["messages"]] == list(range(last_seq - 4, last_seq + 1))
