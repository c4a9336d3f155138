"""Redis stopped for 5 s under chatd processes and started again; chatd is not restarted."""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import Callable

from tests.e2e.client import Harness, history_all
from tests.e2e.server import ChatdServer

RESTART = [
    "redis-server", "--daemonize", "yes", "--bind", "127.0.0.1", "--port", "6379",
    "--save", "", "--appendonly", "no",
]  # fmt: skip


def redis_pong() -> bool:
    try:
        out = subprocess.run(
            ["redis-cli", "-h", "127.0.0.1", "-p", "6379", "ping"],
            capture_output=True,
            timeout=2,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return False
    return out.stdout.strip() == b"PONG"


def start_redis() -> None:
    """Start Redis unless it answers, then wait (bounded) for PONG."""
    if not redis_pong():
        subprocess.run(RESTART, timeout=10, check=False)
    deadline = time.monotonic() + 15
    while not redis_pong():
        assert time.monotonic() < deadline, "Redis did not come back within 15 s"
        time.sleep(0.1)


async def until_ready(h: Harness, want: int, within: float) -> object:
    async with asyncio.timeout(within):
        while True:
            status, body = await h.http("GET", "/readyz")
            if status == want:
                return body
            await asyncio.sleep(0.2)


async def test_sends_survive_a_redis_outage(
    trio: list[ChatdServer], harness: Callable[[ChatdServer], Harness]
) -> None:
    hs = [harness(s) for s in trio]
    a, b = await hs[0].users("a", "b")
    ca = await hs[0].connect(a)
    cb = await hs[1].connect(b)
    conv = (await ca.send("before", to=b.name))["conv"]
    await cb.message(conv)
    acked: list[int] = []
    try:
        await asyncio.to_thread(
            subprocess.run,
            ["redis-cli", "-h", "127.0.0.1", "-p", "6379", "shutdown", "nosave"],
            timeout=5,
            check=False,
        )
        down_at = time.monotonic()
        body = await until_ready(hs[0], 503, within=5)
        assert "bus" in str(body), body
        while time.monotonic() - down_at < 5:
            reply = await asyncio.wait_for(ca.send("during", conv=conv), 5)
            acked.append(reply["seq"])
            await asyncio.sleep(0.25)
    finally:
        await asyncio.to_thread(start_redis)
    await until_ready(hs[0], 200, within=15)
    await until_ready(hs[1], 200, within=15)
    assert acked, "no send was acknowledged while Redis was down"
    seqs = [m["seq"] for m in await history_all(cb, conv)]
    assert set(acked) <= set(seqs) and seqs == list(range(1, len(seqs) + 1))
    # live cross-process delivery resumes (allow the bus to re-register the users)
    async with asyncio.timeout(15):
        while True:
            seq = (await ca.send("after", conv=conv))["seq"]
            try:
                await cb.message(conv, seq=seq, timeout=1)
                break
            except (AssertionError, TimeoutError):
                continue
