"""``GET /metrics`` times store calls per operation (``chatd_store_seconds{op}``) on a real
``chatd serve``, and lists the bus histograms even when one process has nothing to publish.

The bus histograms filled by a message that crosses processes are checked in
``tests/cluster/test_bus_metrics.py``.
"""

from __future__ import annotations

from .client import Harness
from .prometheus import histogram, samples, scrape

SENDS = 5


async def test_store_calls_are_timed_per_operation(h: Harness) -> None:
    alice, bob = await h.users("alice", "bob")
    conn = await h.connect(alice)
    conv = (await conn.send("first", to=bob.name))["conv"]
    _, _, before = histogram(await scrape(h), "chatd_store_seconds", op="append_message")
    for n in range(SENDS):
        await conn.send(f"m{n}", conv=conv)
    text = await scrape(h)
    buckets, seconds, count = histogram(text, "chatd_store_seconds", op="append_message")
    assert count - before >= SENDS
    assert count >= SENDS + 1
    assert seconds > 0
    assert any(le < float("inf") and n > 0 for le, n in buckets), buckets
    # Other operations have their own series: logging in read the user and made a session.
    for op in ("get_user", "create_session", "get_session"):
        assert histogram(text, "chatd_store_seconds", op=op)[2] >= 1, op
    assert "# TYPE chatd_store_seconds histogram" in text
    assert "# TYPE chatd_store_errors_total counter" in text


async def test_a_refused_store_call_is_timed_and_counted_by_code(h: Harness) -> None:
    alice, bob, carol = await h.users("alice", "bob", "carol")
    conn = await h.connect(alice)
    conv = (await conn.send("first", to=bob.name))["conv"]
    outsider = await h.connect(carol)

    def refused(text: str) -> float:
        key = {"op": "append_message", "code": "not_found"}
        found = [
            v for n, labels, v in samples(text) if n == "chatd_store_errors_total" and labels == key
        ]
        return found[0] if found else 0.0

    text = await scrape(h)
    errors, (_, _, calls) = (
        refused(text),
        histogram(text, "chatd_store_seconds", op="append_message"),
    )
    # carol is no member: the store refuses the append (membership is checked in its
    # transaction), and the client gets the same answer as for a conversation that does not exist
    reply = await outsider.error("send", client_id="x", body="no", conv=conv)
    assert reply["code"] == "not_found"
    text = await scrape(h)
    assert refused(text) == errors + 1
    assert histogram(text, "chatd_store_seconds", op="append_message")[2] == calls + 1


async def test_bus_histograms_are_listed_on_a_single_process(h: Harness) -> None:
    text = await scrape(h)
    for name in ("chatd_bus_publish_seconds", "chatd_bus_locate_seconds"):
        _, _, count = histogram(text, name)
        assert count == 0, (name, count)  # memory:// has no other process to publish to
