"""Fixtures of the routing tests: started buses on a real Redis, cleaned up after each test.

Every test gets its own key prefix, so tests (and other people's test runs on the same Redis)
never see each other's servers, users or channels. Timings are short (``heartbeat`` 0.2 s,
``ttl`` 1 s) to keep the liveness tests fast.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field

import pytest
import redis.asyncio as aioredis

from chatd.routing import Bus, open_bus
from chatd.routing.redis import RedisBus
from tests.conftest import free_port, require_backend

FAST = "heartbeat=0.2&ttl=1&timeout=1"


@dataclass
class Recorder:
    """Collects what a bus hands to the service: envelopes, offline and online announcements."""

    envelopes: list[bytes] = field(default_factory=list)
    offline: list[list[str]] = field(default_factory=list)
    online: list[list[str]] = field(default_factory=list)

    def on_envelope(self, payload: bytes) -> None:
        self.envelopes.append(payload)

    async def on_offline(self, users: list[str]) -> None:
        self.offline.append(sorted(users))

    async def on_online(self, users: list[str]) -> None:
        self.online.append(sorted(users))

    def online_users(self) -> set[str]:
        return {user for batch in self.online for user in batch}

    def offline_users(self) -> set[str]:
        return {user for batch in self.offline for user in batch}


async def eventually(
    check: Callable[[], Awaitable[bool]] | Callable[[], bool], within: float, what: str
) -> None:
    """Poll ``check`` until it is true; fail with ``what`` after ``within`` seconds."""
    deadline = asyncio.get_running_loop().time() + within
    while True:
        result = check()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if asyncio.get_running_loop().time() > deadline:
            pytest.fail(f"not within {within:g}s: {what}")
        await asyncio.sleep(0.05)


def redis_bus_url(base: str, prefix: str, params: str = FAST) -> str:
    sep = "&" if "?" in base else "?"
    return f"{base}{sep}prefix={prefix}&{params}"


async def delete_prefix(base_url: str, prefix: str) -> None:
    client = aioredis.Redis.from_url(base_url, socket_timeout=2, socket_connect_timeout=2)
    try:
        async with asyncio.timeout(5):
            keys = [key async for key in client.scan_iter(match=f"{prefix}:*", count=1000)]
            if keys:
                await client.delete(*keys)
    except (OSError, TimeoutError, aioredis.RedisError):
        pass  # the Redis of a test that stopped it; nothing to clean
    finally:
        await client.aclose()


@pytest.fixture
def prefix() -> str:
    return f"t{uuid.uuid4().hex[:12]}"


BusFactory = Callable[..., Awaitable[tuple[Bus, Recorder]]]


@pytest.fixture
async def make_bus() -> AsyncIterator[BusFactory]:
    """``await make_bus(url, server_id)`` -> a started bus and its recorder, closed at the end."""
    started: list[Bus] = []

    async def make(url: str, server_id: str) -> tuple[Bus, Recorder]:
        bus = open_bus(url, server_id)
        recorder = Recorder()
        if isinstance(bus, RedisBus):
            bus.on_online = recorder.on_online
        await asyncio.wait_for(bus.start(recorder.on_envelope, recorder.on_offline), 10)
        started.append(bus)
        return bus, recorder

    yield make
    for bus in reversed(started):
        await asyncio.wait_for(bus.close(), 10)


@pytest.fixture
async def redis_base(redis_url: str, prefix: str) -> AsyncIterator[str]:
    """The machine's Redis (skipped, or failed under CI, when it does not answer)."""
    yield redis_url
    await delete_prefix(redis_url, prefix)


@dataclass
class PrivateRedis:
    """A redis-server of this test alone, on a free port, that the test may stop and restart.

    Stopping the machine's shared Redis would break whatever else is using it at the time
    (other test runs, other processes); a private server exercises the same code paths.
    """

    port: int
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        assert self.process is None, "already running"
        self.process = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--loglevel",
                "warning",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while not self.answers():
            if time.monotonic() > deadline or self.process.poll() is not None:
                self.stop()
                pytest.fail(f"redis-server on port {self.port} did not answer PONG")
            time.sleep(0.05)

    def stop(self) -> None:
        """Kill the server (like a crash: nothing saved) and wait until it is gone."""
        process, self.process = self.process, None
        if process is None:
            return
        if process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=10)

    def answers(self) -> bool:
        try:
            out = subprocess.run(
                ["redis-cli", "-h", "127.0.0.1", "-p", str(self.port), "ping"],
                capture_output=True,
                timeout=2,
                check=False,
            )
        except subprocess.TimeoutExpired:
            return False
        return out.stdout.strip() == b"PONG"


@pytest.fixture
def private_redis() -> Iterator[PrivateRedis]:
    if shutil.which("redis-server") is None or shutil.which("redis-cli") is None:
        require_backend("redis", "redis-server and redis-cli are not installed")
    server = PrivateRedis(free_port())
    server.start()
    try:
        yield server
    finally:
        server.stop()
