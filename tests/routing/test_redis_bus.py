"""RedisBus with several servers in one test process, and its failure modes.

Real Redis only: the machine's one for the multi-server tests (each test under its own key
prefix), and a private redis-server for the tests that kill Redis.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from chatd.errors import ConfigError, Unavailable
from chatd.routing import open_bus
from chatd.routing.redis import (
    MIN_REDIS_VERSION,
    RedisBus,
    RedisBusOptions,
    _stop_tasks,
    _version_tuple,
    redact,
)
from tests.conftest import free_port

from .conftest import BusFactory, PrivateRedis, eventually, redis_bus_url

REPO = Path(__file__).resolve().parents[2]


async def raw_smembers(base: str, key: str) -> set[str]:
    client = aioredis.Redis.from_url(base, decode_responses=True, socket_timeout=2)
    try:
        return set(await client.smembers(key))  # type: ignore[misc]
    finally:
        await client.aclose()


async def raw_exists(base: str, *keys: str) -> int:
    client = aioredis.Redis.from_url(base, socket_timeout=2)
    try:
        return int(await client.exists(*keys))
    finally:
        await client.aclose()


# -- URL and start ---------------------------------------------------------------------------


def test_url_parameters_are_parsed() -> None:
    opts = RedisBusOptions.from_url(
        "redis://h:6380/2?prefix=x&heartbeat=0.5&ttl=3&timeout=1.5&max_connections=20"
    )
    assert (opts.prefix, opts.heartbeat, opts.ttl, opts.timeout) == ("x", 0.5, 3.0, 1.5)
    assert opts.redis_url == "redis://h:6380/2?max_connections=20"
    defaults = RedisBusOptions.from_url("redis://127.0.0.1:6379/0")
    assert (defaults.prefix, defaults.heartbeat, defaults.ttl) == ("chatd", 2.0, 6.0)


@pytest.mark.parametrize(
    ("url", "complaint"),
    [
        ("redis://h/0?bogus=1", "unknown parameter 'bogus'"),
        ("redis://h/0?ttl=abc", "ttl must be a number"),
        ("redis://h/0?heartbeat=-1", "heartbeat must be a number"),
        ("redis://h/0?heartbeat=5&ttl=5", "must be longer than heartbeat"),
        ("redis://h/0?prefix=a:b", "prefix must be non-empty"),
    ],
)
def test_bad_urls_are_one_line_config_errors(url: str, complaint: str) -> None:
    with pytest.raises(ConfigError, match=complaint) as caught:
        open_bus(url, "s1")
    assert "\n" not in str(caught.value)


def test_bad_server_id_is_refused() -> None:
    with pytest.raises(ConfigError, match="server id"):
        RedisBus("redis://127.0.0.1:6379/0", "has space")


def test_redis_versions_compare_by_major_and_minor() -> None:
    assert _version_tuple("7.0.15") == (7, 0)
    assert _version_tuple("8.0-rc1") == (8, 0)
    assert _version_tuple("6.2.0") >= MIN_REDIS_VERSION > _version_tuple("6.0.20")


def test_passwords_are_hidden_in_messages() -> None:
    assert redact("redis://u:secret@h:1/0") == "redis://u:***@h:1/0"
    assert redact("redis://h:1/0") == "redis://h:1/0"


async def test_unreachable_redis_is_a_config_error_at_start() -> None:
    bus = RedisBus(f"redis://127.0.0.1:{free_port()}/0?timeout=1", "s1")
    started = time.monotonic()
    with pytest.raises(ConfigError, match=r"cannot reach redis at redis://127\.0\.0\.1:") as caught:
        await asyncio.wait_for(bus.start(lambda p: None, _ignore), 10)
    assert time.monotonic() - started < 5
    assert "\n" not in str(caught.value)
    await bus.close()  # harmless after a failed start


async def _ignore(users: list[str]) -> None:
    return None


async def freeze(bus: RedisBus) -> None:
    """Make ``bus`` stop heartbeating as a hung or killed process would: its tasks end and
    its connections close, but nothing it wrote to Redis is removed."""
    bus._closing = True
    await asyncio.wait_for(_stop_tasks(bus._tasks), 15)
    bus._tasks.clear()
    await bus._close_client()


# -- several servers -------------------------------------------------------------------------


async def test_publish_reaches_exactly_the_named_server(
    redis_base: str, prefix: str, make_bus: BusFactory
) -> None:
    url = redis_bus_url(redis_base, prefix)
    (a, rec_a), (b, rec_b), (_, rec_c) = [await make_bus(url, s) for s in ("a", "b", "c")]
    await a.publish("b", b"for b")
    await eventually(lambda: rec_b.envelopes == [b"for b"], 5, "b got its payload")
    # A channel keeps order: once a later marker arrives, the earlier payload would have too.
    for bus_, server in ((b, "a"), (a, "c")):
        await bus_.publish(server, b"marker")
    await eventually(lambda: rec_a.envelopes == [b"marker"], 5, "a got only the marker")
    await eventually(lambda: rec_c.envelopes == [b"marker"], 5, "c got only the marker")
    assert rec_b.envelopes == [b"for b"]
    assert isinstance(a, RedisBus)
    assert a.published == 2 and a.dropped == 0


async def test_locate_groups_users_by_other_live_server(
    redis_base: str, prefix: str, make_bus: BusFactory
) -> None:
    url = redis_bus_url(redis_base, prefix)
    (a, _), (b, _), (c, _) = [await make_bus(url, s) for s in ("a", "b", "c")]
    await b.attach("u1")
    await c.attach("u2")
    await a.attach("u3")
    await b.attach("u3")
    await a.attach("u4")  # only here: never located
    found = await a.locate(["u1", "u2", "u3", "u4", "nobody", "u1"])
    assert {server: sorted(users) for server, users in found.items()} == {
        "b": ["u1", "u3"],
        "c": ["u2"],
    }
    from_c = await c.locate(["u1", "u2", "u3", "u4"])
    assert {server: sorted(users) for server, users in from_c.items()} == {
        "a": ["u3", "u4"],
        "b": ["u1", "u3"],
    }


async def test_online_and_offline_transitions_span_servers(
    redis_base: str, prefix: str, make_bus: BusFactory
) -> None:
    url = redis_bus_url(redis_base, prefix)
    (a, _), (b, _) = [await make_bus(url, s) for s in ("a", "b")]
    assert await a.attach("alice") is True  # first device anywhere
    assert await b.attach("alice") is False  # second device, another server: already online
    assert await a.online(["alice"]) == {"alice"}
    assert await a.detach("alice") is False  # still on b
    assert await b.online(["alice"]) == {"alice"}
    assert await b.detach("alice") is True  # last one gone
    assert await a.online(["alice"]) == set()
    assert await a.attach("alice") is True  # back again
    assert await a.locate(["alice"]) == {}
    assert await b.locate(["alice"]) == {"a": ["alice"]}


async def test_a_silent_server_does_not_count(
    redis_base: str, prefix: str, make_bus: BusFactory
) -> None:
    # A registry entry whose server has no heartbeat is ignored at once, before any reaping.
    url = redis_bus_url(redis_base, prefix)
    a, _ = await make_bus(url, "a")
    client = aioredis.Redis.from_url(redis_base)
    try:
        await client.sadd(f"{prefix}:u:ghosted", "gone")  # type: ignore[misc]
        await client.sadd(f"{prefix}:s:gone", "ghosted")  # type: ignore[misc]
    finally:
        await client.aclose()
    assert await a.online(["ghosted"]) == set()
    assert await a.locate(["ghosted"]) == {}
    assert await a.attach("ghosted") is True


async def test_frozen_server_is_reaped_and_its_users_announced_offline(
    redis_base: str, prefix: str, make_bus: BusFactory
) -> None:
    url = redis_bus_url(redis_base, prefix)  # ttl 1 s, heartbeat 0.2 s
    (a, rec_a), (_, rec_b) = [await make_bus(url, s) for s in ("a", "b")]
    frozen = RedisBus(url, "frozen")
    await frozen.start(lambda p: None, _ignore)
    await frozen.attach("only-frozen")
    await frozen.attach("both")
    await a.attach("both")
    assert await a.locate(["only-frozen", "both"]) == {"frozen": ["only-frozen", "both"]}
    # The process stops answering: its tasks stop, its state in Redis stays.
    await freeze(frozen)
    started = time.monotonic()

    await eventually(
        lambda: rec_a.offline_users() | rec_b.offline_users() == {"only-frozen"},
        5,
        "only-frozen announced offline",
    )
    assert time.monotonic() - started < 1 + 3
    # Exactly one live server announced it, once.
    assert sorted(rec_a.offline + rec_b.offline) == [["only-frozen"]]
    assert await a.online(["only-frozen", "both"]) == {"both"}
    assert await raw_smembers(redis_base, f"{prefix}:servers") == {"a", "b"}
    assert await raw_smembers(redis_base, f"{prefix}:u:both") == {"a"}
    assert await raw_exists(redis_base, f"{prefix}:s:frozen", f"{prefix}:u:only-frozen") == 0


async def test_sigkilled_process_users_go_offline_within_ttl(
    redis_base: str, prefix: str, make_bus: BusFactory
) -> None:
    url = redis_bus_url(redis_base, prefix)
    a, rec_a = await make_bus(url, "a")
    holder = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.routing.holder",
        url,
        "victim",
        "v1",
        "v2",
        "shared",
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        assert holder.stdout is not None
        line = await asyncio.wait_for(holder.stdout.readline(), 20)
        assert line.strip() == b"ready"
        assert await a.attach("shared") is False  # already online through the victim
        assert await a.online(["v1", "v2", "shared"]) == {"v1", "v2", "shared"}
        os.kill(holder.pid, signal.SIGKILL)
        await asyncio.wait_for(holder.wait(), 10)
        killed = time.monotonic()
        await eventually(lambda: rec_a.offline_users() == {"v1", "v2"}, 6, "victim's users off")
        assert time.monotonic() - killed < 1 + 3  # ttl plus a reaper round or two
        assert rec_a.offline == [["v1", "v2"]]
        assert await a.online(["v1", "v2", "shared"]) == {"shared"}
        assert await a.locate(["v1", "v2", "shared"]) == {}
        assert "victim" not in await raw_smembers(redis_base, f"{prefix}:servers")
    finally:
        if holder.returncode is None:
            os.kill(holder.pid, signal.SIGKILL)
            await asyncio.wait_for(holder.wait(), 10)


async def test_restarted_server_id_cleans_its_previous_run(
    redis_base: str, prefix: str, make_bus: BusFactory
) -> None:
    url = redis_bus_url(redis_base, prefix)
    a, _ = await make_bus(url, "a")
    crashed = RedisBus(url, "b")
    await crashed.start(lambda p: None, _ignore)
    await crashed.attach("stale")
    await freeze(crashed)
    # Restarted at once with the same id, before its old heartbeat expired.
    b, rec_b = await make_bus(url, "b")
    assert await a.online(["stale"]) == set()
    assert await b.attach("stale") is True
    await eventually(lambda: rec_b.offline == [["stale"]], 3, "stale user announced offline")


async def test_lost_heartbeat_makes_the_server_reassert_exactly_its_users(
    redis_base: str, prefix: str, make_bus: BusFactory
) -> None:
    # As after a partition longer than ttl: the registry missed a detach (it raised
    # Unavailable) and this server's heartbeat key vanished. The next beat notices, puts back
    # what the server really holds and announces the users nobody holds any more.
    # One server only: another one's reaper could clean up after "a" first (also correct).
    a, rec_a = await make_bus(redis_bus_url(redis_base, prefix), "a")
    await a.attach("kept")
    client = aioredis.Redis.from_url(redis_base)
    try:
        await client.sadd(f"{prefix}:s:a", "missed-detach")  # type: ignore[misc]
        await client.sadd(f"{prefix}:u:missed-detach", "a")  # type: ignore[misc]
        await client.srem(f"{prefix}:u:kept", "a")  # type: ignore[misc]
        await client.delete(f"{prefix}:hb:a")
    finally:
        await client.aclose()
    await eventually(lambda: rec_a.offline == [["missed-detach"]], 3, "stale user announced")
    await eventually(lambda: rec_a.online == [["kept"]], 3, "unregistered user announced back")
    assert await raw_smembers(redis_base, f"{prefix}:u:kept") == {"a"}
    assert await raw_exists(redis_base, f"{prefix}:u:missed-detach") == 0
    assert await raw_smembers(redis_base, f"{prefix}:s:a") == {"kept"}
    assert await raw_exists(redis_base, f"{prefix}:hb:a") == 1


async def test_a_saturated_pool_does_not_delay_heartbeats(
    redis_base: str, prefix: str, make_bus: BusFactory
) -> None:
    # Every connection of b's command pool is busy for twice the ttl (as in a burst of
    # reconnects): b must keep heartbeating, so a never takes it for dead.
    url = redis_bus_url(redis_base, prefix, "heartbeat=0.2&ttl=1&timeout=5&max_connections=1")
    (a, rec_a), (b, _) = [await make_bus(url, s) for s in ("a", "b")]
    await b.attach("busy")
    assert isinstance(b, RedisBus) and b._client is not None
    blocker = asyncio.create_task(b._client.blpop([f"{prefix}:nothing"], timeout=2))
    try:
        await asyncio.sleep(0.1)
        queued = asyncio.create_task(b.attach("queued"))  # waits for the pool's connection
        await asyncio.sleep(2.3)
        assert rec_a.offline == []
        assert await a.online(["busy"]) == {"busy"}
        assert await asyncio.wait_for(queued, 5) is True
    finally:
        await asyncio.wait_for(blocker, 5)


async def test_many_users_locate_in_one_call(
    redis_base: str, prefix: str, make_bus: BusFactory
) -> None:
    # A burst of 2000 concurrent attaches queues on the connection pool instead of failing;
    # the timeout leaves room for a loaded machine.
    url = redis_bus_url(redis_base, prefix, "heartbeat=0.2&ttl=1&timeout=5")
    (a, _), (b, _), (c, _) = [await make_bus(url, s) for s in ("a", "b", "c")]
    users = [f"user{i}" for i in range(2000)]
    await asyncio.gather(*(b.attach(u) for u in users[::2]), *(c.attach(u) for u in users[1::2]))
    found = await asyncio.wait_for(a.locate(users), 5)
    assert sorted(found) == ["b", "c"]
    assert sorted(found["b"]) == sorted(users[::2])
    assert sorted(found["c"]) == sorted(users[1::2])


# -- Redis going away ------------------------------------------------------------------------


async def test_redis_restart_is_survived_without_recreating_the_bus(
    private_redis: PrivateRedis, prefix: str, make_bus: BusFactory
) -> None:
    url = redis_bus_url(private_redis.url, prefix)
    (a, rec_a), (b, rec_b) = [await make_bus(url, s) for s in ("a", "b")]
    await a.attach("alice")
    await b.attach("bob")
    await a.attach("carol")

    private_redis.stop()
    with pytest.raises(Unavailable):
        await asyncio.wait_for(a.ping(), 5)
    started = time.monotonic()
    await a.publish("b", b"lost")  # best effort: dropped, never raised
    with pytest.raises(Unavailable):
        await asyncio.wait_for(a.locate(["bob"]), 5)
    with pytest.raises(Unavailable):
        await asyncio.wait_for(a.attach("dave"), 5)  # held here: registered once Redis is back
    with pytest.raises(Unavailable):
        await asyncio.wait_for(a.detach("carol"), 5)
    with pytest.raises(Unavailable):
        await asyncio.wait_for(b.online(["alice"]), 5)
    assert time.monotonic() - started < 3  # every call fails fast, none waits for long
    assert isinstance(a, RedisBus) and a.dropped >= 1

    private_redis.start()  # empty: a restart without persistence lost everything
    await eventually(_answers(a), 10, "ping answers again")

    async def registry_restored() -> bool:
        try:
            return await b.online(["alice", "bob", "carol", "dave"]) == {"alice", "bob", "dave"}
        except Unavailable:
            return False

    await eventually(registry_restored, 10, "both servers re-registered their users")
    found = await b.locate(["alice", "dave", "carol"])
    assert {k: sorted(v) for k, v in found.items()} == {"a": ["alice", "dave"]}

    # Subscriptions came back: each server hears the other again.
    async def hears(sender: RedisBus, target: str, rec: list[bytes]) -> bool:
        await sender.publish(target, b"hello " + target.encode())
        await asyncio.sleep(0.1)
        return b"hello " + target.encode() in rec

    assert isinstance(b, RedisBus)
    await eventually(lambda: hears(a, "b", rec_b.envelopes), 10, "b hears a after the restart")
    await eventually(lambda: hears(b, "a", rec_a.envelopes), 10, "a hears b after the restart")
    assert b"lost" not in rec_b.envelopes
    assert rec_a.offline == [] and rec_b.offline == []
    # Redis came back empty: each server announces the users it re-registered (dave's
    # attach failed, so this is his only "came online"); carol's detach is not undone.
    await eventually(lambda: rec_a.online_users() == {"alice", "dave"}, 5, "a announced")
    await eventually(lambda: rec_b.online_users() == {"bob"}, 5, "b announced")


async def test_close_while_redis_is_down_is_bounded(
    private_redis: PrivateRedis, prefix: str
) -> None:
    bus = RedisBus(redis_bus_url(private_redis.url, prefix), "a")
    await bus.start(lambda p: None, _ignore)
    await bus.attach("alice")
    private_redis.stop()
    with pytest.raises(Unavailable):
        await asyncio.wait_for(bus.ping(), 5)
    await asyncio.wait_for(bus.close(), 5)


def _answers(bus: object):  # type: ignore[no-untyped-def]
    async def check() -> bool:
        assert isinstance(bus, RedisBus)
        try:
            await bus.ping()
        except Unavailable:
            return False
        return True

    return check
