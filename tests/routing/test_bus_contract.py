"""The Bus contract, run against every backend: ``memory://`` and ``redis://`` (real Redis).

One server alone: what any backend must do, whether other servers can exist or not.
"""

from __future__ import annotations

import asyncio

import pytest

from chatd.routing import Bus

from .conftest import BusFactory, Recorder, eventually, redis_bus_url


@pytest.fixture(params=["memory", "redis"])
def bus_url(request: pytest.FixtureRequest, prefix: str) -> str:
    if request.param == "memory":
        return "memory://"
    base: str = request.getfixturevalue("redis_base")
    return redis_bus_url(base, prefix)


@pytest.fixture
async def one(bus_url: str, make_bus: BusFactory) -> tuple[Bus, Recorder]:
    return await make_bus(bus_url, "s1")


async def test_ping_answers(one: tuple[Bus, Recorder]) -> None:
    bus, _ = one
    await asyncio.wait_for(bus.ping(), 5)


async def test_publish_to_itself_reaches_its_handler_in_order(one: tuple[Bus, Recorder]) -> None:
    bus, rec = one
    payloads = [b"first", b"\x00binary\xff", b"x" * 100_000]
    for payload in payloads:
        await bus.publish("s1", payload)
    await eventually(lambda: len(rec.envelopes) == 3, 5, "three envelopes delivered")
    assert rec.envelopes == payloads


async def test_attach_reports_coming_online_once(one: tuple[Bus, Recorder]) -> None:
    bus, _ = one
    assert await bus.attach("alice") is True
    assert await bus.attach("alice") is False
    assert await bus.online(["alice", "bob"]) == {"alice"}


async def test_detach_reports_going_offline_once(one: tuple[Bus, Recorder]) -> None:
    bus, _ = one
    await bus.attach("alice")
    assert await bus.detach("alice") is True
    assert await bus.detach("alice") is False
    assert await bus.detach("never-attached") is False
    assert await bus.online(["alice"]) == set()


async def test_users_are_independent(one: tuple[Bus, Recorder]) -> None:
    bus, _ = one
    for user in ("alice", "bob", "carol"):
        assert await bus.attach(user) is True
    await bus.detach("bob")
    assert await bus.online(["alice", "bob", "carol", "dave"]) == {"alice", "carol"}


async def test_locate_never_names_this_server(one: tuple[Bus, Recorder]) -> None:
    bus, _ = one
    await bus.attach("alice")
    assert await bus.locate(["alice", "bob"]) == {}


async def test_empty_collections(one: tuple[Bus, Recorder]) -> None:
    bus, _ = one
    assert await bus.locate([]) == {}
    assert await bus.online([]) == set()


async def test_unicode_user_names(one: tuple[Bus, Recorder]) -> None:
    bus, _ = one
    assert await bus.attach("zoë") is True
    assert await bus.online(["zoë", "zoe"]) == {"zoë"}


async def test_close_forgets_this_servers_users(bus_url: str, make_bus: BusFactory) -> None:
    bus, _ = await make_bus(bus_url, "s1")
    await bus.attach("alice")
    await bus.close()
    again, _ = await make_bus(bus_url, "s1")
    assert await again.online(["alice"]) == set()
    assert await again.attach("alice") is True
