"""The router across two processes' worth of buses on a real Redis: a burst of events for a
remote server arrives complete and in order, in fewer publishes than events (never more than
one per event)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest

from chatd.routing import open_bus
from chatd.routing.router import Router

from .conftest import eventually, redis_bus_url


@dataclass(eq=False)
class Socket:
    """Stands in for a WebSocket: records what the router writes to it."""

    user: str
    token_hash: str = "t"
    wires: list[bytes] = field(default_factory=list)
    revoked: int = 0

    def send_payload(self, payload: bytes) -> None:
        raise AssertionError("the router writes framed messages")

    def send_wire(self, wire: bytes) -> None:
        self.wires.append(wire)

    def revoke(self) -> None:
        self.revoked += 1


async def connected_at(router: Router, user: str) -> Socket:
    """A socket of ``user`` held by ``router``'s server, registered on the bus."""
    sock = Socket(user)
    router.add(sock)
    await router.bus.attach(user)
    return sock


@pytest.fixture
async def routers(redis_base: str, prefix: str) -> AsyncIterator[tuple[Router, Router]]:
    url = redis_bus_url(redis_base, prefix)
    started: list[Router] = []
    try:
        for server in ("a", "b"):
            router = Router(open_bus(url, server))
            await asyncio.wait_for(router.start(), 10)
            started.append(router)
        yield started[0], started[1]
    finally:
        for router in reversed(started):
            await asyncio.wait_for(router.close(), 10)


async def test_a_burst_reaches_the_remote_server_in_order_in_few_publishes(
    routers: tuple[Router, Router],
) -> None:
    a, b = routers
    sockets = {user: Socket(user) for user in ("u1", "u2")}
    for user, sock in sockets.items():
        b.add(sock)
        await b.bus.attach(user)
    events = 500
    for n in range(events):  # no await between them: they wait for the pump together
        a.deliver(["u1", "u2", "nobody"], b'{"n":%d}' % n)
    a.revoke("u2", "t")
    await eventually(lambda: sockets["u2"].revoked == 1, 10, "the revocation arrived")
    for sock in sockets.values():
        got = [int(wire.split(b":")[1].rstrip(b"}")) for wire in sock.wires]
        assert got == list(range(events)), sock.user
    # All 501 were queued before the pump woke: one batch, hence one envelope to b.
    assert a.publishes == 1
    assert a.dropped == 0


async def test_one_event_is_one_publish_to_each_server_holding_a_recipient(
    routers: tuple[Router, Router],
) -> None:
    a, b = routers
    sock = await connected_at(b, "u1")
    a.deliver(["u1"], b'{"n":1}')
    await eventually(lambda: len(sock.wires) == 1, 10, "the event arrived")
    a.deliver(["only-local"], b'{"n":2}')
    await asyncio.sleep(0.2)
    assert a.publishes == 1
    assert len(sock.wires) == 1


async def test_every_lookup_and_publish_is_timed(routers: tuple[Router, Router]) -> None:
    a, b = routers
    sock = await connected_at(b, "u1")
    a.deliver(["u1"], b'{"n":1}')
    await eventually(lambda: len(sock.wires) == 1, 10, "the event arrived")
    await eventually(lambda: a.publish_seconds.total == 1, 10, "the publish was timed")
    assert a.locate_seconds.total == 1
    assert a.publish_seconds.sum > 0 and a.locate_seconds.sum > 0
    # a batch for users no other server holds is looked up (and timed) but not published
    a.deliver(["nobody"], b'{"n":2}')
    await eventually(lambda: a.locate_seconds.total == 2, 10, "the lookup was timed")
    assert a.publish_seconds.total == a.publishes == 1
