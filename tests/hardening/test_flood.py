"""A flood of bad frames (issue 10): 1,000 oversized frames, each on a fresh connection (an
oversized frame closes it with 1009), and 5,000 malformed frames from several connections.

Throughout, ``/healthz`` is polled (each poll bounded) and must answer 200 every time; every
malformed frame gets exactly one ``error`` reply and its socket stays open; afterwards the
server's resident memory returns to within 20% of what it was after a warm-up.
"""

# Every wait in a test is bounded, so the bound is part of each helper's signature.

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest

from tests.e2e.client import Harness, Ws
from tests.e2e.server import ChatdServer, ServerFactory

MAX_FRAME = 65536
OVERSIZED = 1000
MALFORMED = 5000
MALFORMED_SOCKETS = 5
OVERSIZED_WORKERS = 16
HEALTHZ_EVERY = 0.05
HEALTHZ_TIMEOUT = 2.0
RSS_TOLERANCE = 1.20
RSS_SETTLE = 15.0


def rss_kib(pid: int) -> int:
    """The process's resident set size (``VmRSS``) in KiB."""
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError(f"no VmRSS for pid {pid}")


# ---------------------------------------------------------------------------------------------
# Frames


def malformed_frames() -> Iterator[tuple[str | bytes, str | None, str]]:
    """Endless malformed frames: ``(frame, the id its reply must carry, expected code)``.

    Text that is not a JSON object, unknown or missing types, fields of the wrong type or out
    of range, over-long ids, nesting deeper than any parser allows, binary frames.
    """
    counter = itertools.count()
    variants: list[Callable[[str], tuple[str | bytes, str | None, str]]] = [
        lambda rid: ("not json at all", None, "bad_request"),
        lambda rid: ("[1, 2, 3]", None, "bad_request"),
        lambda rid: ('"a string"', None, "bad_request"),
        lambda rid: ("null", None, "bad_request"),
        lambda rid: ("1e999999", None, "bad_request"),
        lambda rid: ("{" * 5000, None, "bad_request"),
        lambda rid: ("[" * 3000 + "]" * 3000, None, "bad_request"),
        lambda rid: (json.dumps({"id": rid}), rid, "bad_request"),
        lambda rid: (json.dumps({"type": 7, "id": rid}), rid, "bad_request"),
        lambda rid: (json.dumps({"type": "PING", "id": rid}), rid, "bad_request"),
        lambda rid: (json.dumps({"type": "nope", "id": rid}), rid, "bad_request"),
        lambda rid: (json.dumps({"type": "ping", "id": "x" * 65}), None, "bad_request"),
        lambda rid: (json.dumps({"type": "ping", "id": 12}), None, "bad_request"),
        lambda rid: (json.dumps({"type": "history", "id": rid, "conv": 5}), rid, "bad_request"),
        lambda rid: (
            json.dumps({"type": "history", "id": rid, "conv": "c1", "limit": 0}),
            rid,
            "bad_request",
        ),
        lambda rid: (
            json.dumps({"type": "history", "id": rid, "conv": "c1", "before": -1}),
            rid,
            "bad_request",
        ),
        lambda rid: (
            json.dumps({"type": "receipt", "id": rid, "conv": "c1", "kind": "x", "seq": 1}),
            rid,
            "bad_request",
        ),
        lambda rid: (
            json.dumps({"type": "receipt", "id": rid, "conv": "c1", "kind": "read", "seq": 2**64}),
            rid,
            "bad_request",
        ),
        lambda rid: (
            json.dumps({"type": "send", "id": rid, "conv": "c1", "to": "bob", "client_id": "x"}),
            rid,
            "bad_request",
        ),
        lambda rid: (
            json.dumps({"type": "send", "id": rid, "conv": "c\u0000", "client_id": "x"}),
            rid,
            "bad_request",
        ),
        lambda rid: (
            json.dumps({"type": "send", "id": rid, "conv": "c1", "client_id": "x", "body": 5}),
            rid,
            "bad_request",
        ),
        lambda rid: (
            json.dumps({"type": "create_group", "id": rid, "title": "", "members": []}),
            rid,
            "bad_request",
        ),
        lambda rid: (
            json.dumps({"type": "create_group", "id": rid, "title": "t", "members": "bob"}),
            rid,
            "bad_request",
        ),
        lambda rid: (
            json.dumps({"type": "set_role", "id": rid, "conv": "c1", "user": "b!", "role": "x"}),
            rid,
            "bad_request",
        ),
        lambda rid: (
            json.dumps({"type": "mute", "id": rid, "conv": "c1", "muted": 1}),
            rid,
            "bad_request",
        ),
        lambda rid: ('{"type": "ping", "id": "\\ud800"}', None, "bad_request"),
        lambda rid: (b"\x00\x01binary", None, "bad_request"),
    ]
    for n in counter:
        yield variants[n % len(variants)](f"m{n}")


@dataclass
class Poller:
    """``/healthz`` polled every ``HEALTHZ_EVERY`` s, each poll bounded by ``HEALTHZ_TIMEOUT``."""

    server: ChatdServer
    session: aiohttp.ClientSession
    polls: int = 0
    failures: list[str] = field(default_factory=list)
    slowest: float = 0.0

    async def run(self) -> None:
        url = self.server.base_url + "/healthz"
        timeout = aiohttp.ClientTimeout(total=HEALTHZ_TIMEOUT)
        while True:
            began = time.monotonic()
            try:
                async with self.session.get(url, timeout=timeout) as resp:
                    await resp.read()
                    if resp.status != 200:
                        self.failures.append(f"status {resp.status}")
            except (TimeoutError, aiohttp.ClientError) as exc:
                self.failures.append(f"{type(exc).__name__}: {exc}")
            self.polls += 1
            self.slowest = max(self.slowest, time.monotonic() - began)
            await asyncio.sleep(HEALTHZ_EVERY)


async def oversized_on_fresh_connection(
    h: Harness, n: int, token: str | None
) -> tuple[int | None, str]:
    """One connection, one frame one byte (or more) over the limit; the close code."""
    size = MAX_FRAME + 1 + (n % 7) * 50_000 if n % 10 else MAX_FRAME + 1
    async with asyncio.timeout(10):
        ws = await h.session.ws_connect(h.server.ws_url, max_msg_size=0, heartbeat=None)
        try:
            if token is not None:
                await ws.send_str(json.dumps({"type": "hello", "id": "h", "token": token}))
                reply = await ws.receive()
                if reply.type != aiohttp.WSMsgType.TEXT or json.loads(reply.data)["type"] != "ok":
                    return None, f"hello failed: {reply}"
            padding = "x" * (size - len('{"type":"ping","pad":""}'))
            await ws.send_str('{"type":"ping","pad":"' + padding + '"}')
            while True:
                msg = await ws.receive()
                if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED):
                    return ws.close_code, ""
                if msg.type == aiohttp.WSMsgType.ERROR:
                    return ws.close_code, f"error {msg.data}"
        finally:
            await ws.close()


async def oversized_flood(h: Harness, count: int, token: str) -> list[str]:
    """``count`` oversized frames on fresh connections (every 4th after a ``hello``)."""
    problems: list[str] = []
    numbers = iter(range(count))

    async def worker() -> None:
        for n in numbers:
            code, note = await oversized_on_fresh_connection(h, n, token if n % 4 == 0 else None)
            if code != 1009:
                problems.append(f"oversized frame {n}: closed with {code} {note}")

    await asyncio.gather(*(worker() for _ in range(OVERSIZED_WORKERS)))
    return problems


async def malformed_flood(sockets: list[Ws], count: int) -> list[str]:
    """``count`` malformed frames spread over ``sockets``; every one must get exactly one
    ``error`` reply with the expected code and id, and every socket must stay open."""
    problems: list[str] = []
    frames = malformed_frames()
    per_socket = count // len(sockets)

    async def one(ws: Ws) -> None:
        first_frame = len(ws.frames)
        expected: list[tuple[str | None, str]] = []
        for _ in range(per_socket):
            frame, rid, code = next(frames)
            expected.append((rid, code))
            if isinstance(frame, bytes):
                await ws.ws.send_bytes(frame)
            else:
                await ws.send_raw(frame)
        deadline = time.monotonic() + 30
        while len(ws.frames) - first_frame < per_socket and time.monotonic() < deadline:
            if ws.closed:
                break
            await asyncio.sleep(0.05)
        got = ws.frames[first_frame:]
        if ws.closed:
            problems.append(f"{ws.label} was closed ({ws.close_code}) by malformed frames")
        if len(got) != per_socket:
            problems.append(f"{ws.label}: {len(got)} replies to {per_socket} malformed frames")
        wanted_ids = sorted(str(rid) for rid, _ in expected)
        got_ids = sorted(str(f.get("id")) for f in got)
        if wanted_ids != got_ids:
            problems.append(f"{ws.label}: reply ids differ from the request ids")
        codes = {(str(f.get("id")), f.get("code")) for f in got if f.get("type") == "error"}
        for rid, code in expected:
            if rid is not None and (rid, code) not in codes:
                problems.append(f"{ws.label}: {rid} not answered with {code}")
        wrong = [f for f in got if f.get("type") != "error" or f.get("code") != "bad_request"]
        if wrong:
            problems.append(f"{ws.label}: unexpected replies {wrong[:5]}")
        pong = await ws.request("ping")
        if pong.get("type") != "ok":
            problems.append(f"{ws.label}: ping after the flood answered {pong}")

    await asyncio.gather(*(one(ws) for ws in sockets))
    return problems


async def settle_rss(pid: int, baseline: int) -> int:
    """Poll the RSS until it is within tolerance of ``baseline`` (bounded); return the last."""
    deadline = time.monotonic() + RSS_SETTLE
    rss = rss_kib(pid)
    while rss > baseline * RSS_TOLERANCE and time.monotonic() < deadline:
        await asyncio.sleep(0.5)
        rss = rss_kib(pid)
    return rss


@pytest.mark.timeout(150)
async def test_oversized_and_malformed_flood_keeps_the_server_healthy_and_bounded(
    server_factory: ServerFactory, harness: Callable[[ChatdServer], Harness]
) -> None:
    server = server_factory()
    h = harness(server)
    users = await h.users(*["flood"] * MALFORMED_SOCKETS)
    sockets = [await h.connect(u) for u in users]
    poller = Poller(server, h.session)
    polling = asyncio.create_task(poller.run())
    try:
        # Warm-up: the server's arenas, caches and buffers reach their working size first.
        problems = await oversized_flood(h, 100, users[0].token)
        problems += await malformed_flood(sockets, 500)
        assert not problems, "\n".join(problems[:30])
        await asyncio.sleep(1)
        baseline = rss_kib(server.pid)

        began = time.monotonic()
        oversized, malformed = await asyncio.gather(
            oversized_flood(h, OVERSIZED, users[0].token), malformed_flood(sockets, MALFORMED)
        )
        flood_seconds = time.monotonic() - began
        peak = rss_kib(server.pid)
        settled = await settle_rss(server.pid, baseline)
    finally:
        polling.cancel()
        await asyncio.gather(polling, return_exceptions=True)
    report: dict[str, Any] = {
        "flood_seconds": round(flood_seconds, 1),
        "rss_kib": {"baseline": baseline, "peak": peak, "settled": settled},
        "healthz_polls": poller.polls,
        "healthz_slowest_s": round(poller.slowest, 3),
    }
    print(report)
    assert not oversized, "\n".join(oversized[:30])
    assert not malformed, "\n".join(malformed[:30])
    assert not poller.failures, f"/healthz failed during the flood: {poller.failures[:10]}"
    assert poller.polls >= flood_seconds / (HEALTHZ_EVERY + HEALTHZ_TIMEOUT), report
    assert settled <= baseline * RSS_TOLERANCE, (
        f"RSS did not return within 20% of {baseline} KiB: {report}"
    )
    assert server.running() and server.healthy()
