"""A message that crosses processes is timed in the sender's ``/metrics``: one registry lookup
(``chatd_bus_locate_seconds``) and one publish (``chatd_bus_publish_seconds``, as many as
``chatd_bus_publishes_total``), on two real ``chatd serve`` processes sharing Redis."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import require_backend, tcp_reachable
from tests.e2e.client import Harness
from tests.e2e.prometheus import histogram, samples
from tests.e2e.server import ChatdServer, ServerFactory
from tests.e2e.test_metrics import scrape

from .conftest import bus_url


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[list[ChatdServer]]:
    """Two processes on one SQLite file and one Redis prefix (unique per test)."""
    if not tcp_reachable("127.0.0.1", 6379):
        require_backend("redis", "nothing listens on 127.0.0.1:6379")
    prefix = "bm" + uuid.uuid4().hex[:10]
    factory = ServerFactory(tmp_path / "servers")
    try:
        yield [
            factory(bus=bus_url(prefix), server_id=f"s{i}", store=f"sqlite:///{tmp_path}/chatd.db")
            for i in range(2)
        ]
    finally:
        factory.close()


def counter(text: str, name: str) -> float:
    found = [value for sample, _, value in samples(text) if sample == name]
    assert found, f"{name} missing from /metrics"
    return found[0]


async def test_a_message_to_another_process_is_one_timed_lookup_and_publish(
    pair: list[ChatdServer], harness: Callable[[ChatdServer], Harness]
) -> None:
    here, there = harness(pair[0]), harness(pair[1])
    alice, bob = await here.users("alice", "bob")
    sender = await here.connect(alice)
    receiver = await there.connect(bob)
    conv = (await sender.send("hello", to=bob.name))["conv"]
    await receiver.message(conv, seq=1)
    text = await scrape(here)
    _, _, locates = histogram(text, "chatd_bus_locate_seconds")
    _, publish_seconds, publishes = histogram(text, "chatd_bus_publish_seconds")
    assert locates >= 1
    assert publishes >= 1
    assert publish_seconds > 0
    # each publish the router counts is one it timed
    assert publishes == counter(text, "chatd_bus_publishes_total")
    assert counter(text, "chatd_bus_redis_lost_total") == 0  # Redis took every one

    seq = (await sender.send("again", conv=conv))["seq"]
    await receiver.message(conv, seq=seq)
    text = await scrape(here)
    assert histogram(text, "chatd_bus_publish_seconds")[2] >= publishes + 1
    assert histogram(text, "chatd_bus_locate_seconds")[2] >= locates + 1
    assert histogram(text, "chatd_store_seconds", op="append_message")[2] >= 2
