"""The WebSocket heartbeat: one task for the whole app pings every authenticated socket every
``heartbeat`` seconds and closes, with 4408, a socket that missed two pongs in a row.

Why not aiohttp's own ``heartbeat=``: it keeps timers per socket and a task per ping, which at
19,000 idle sockets cost several percent of a core, and it drops a socket after one missed
pong, without a close frame. Here an idle socket costs nothing between two pings: it sits in
one slice's set, and any frame from its client (a pong, or anything else: every frame proves
the client is alive and reading) only sets an int attribute to 0. The interval is cut into
slices, each swept in turn, so the pings of many sockets are spread over the interval rather
than sent in one burst.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from aiohttp import web

from chatd.transport.keys import METRICS

if TYPE_CHECKING:
    from chatd.transport.ws import Connection


PING_FRAME = bytes((0x89, 0x00))  # an unmasked ping with no payload (RFC 6455 section 5.5.2)
MISSED_PONGS = 2  # protocol v1: a socket that misses two pongs is closed
SLICE_SECONDS = 0.5  # roughly how often a slice is swept; at most MAX_SLICES per interval
MAX_SLICES = 64


class Heartbeat:
    """Sockets spread over slices; ``run`` sweeps one slice per tick, all of them per interval.

    Each socket stays in the slice it was put in, so it is pinged every ``interval`` seconds,
    and ``Connection.unanswered`` counts the pings sent since its client last sent a frame.
    """

    def __init__(self, interval: float) -> None:
        self.interval = interval
        count = max(1, min(MAX_SLICES, round(interval / SLICE_SECONDS)))
        self._slices: list[set[Connection]] = [set() for _ in range(count)]
        self._next_slice = 0
        self.pings = 0
        self.expired = 0

    def add(self, conn: Connection) -> None:
        index = self._next_slice
        self._next_slice = (index + 1) % len(self._slices)
        conn.heartbeat_slice = index
        self._slices[index].add(conn)

    def remove(self, conn: Connection) -> None:
        self._slices[conn.heartbeat_slice].discard(conn)

    def __len__(self) -> int:
        return sum(len(s) for s in self._slices)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        tick = self.interval / len(self._slices)
        due = loop.time()
        index = 0
        while True:
            due += tick
            delay = due - loop.time()
            if delay < -self.interval:
                due = loop.time()  # the loop was stalled for a whole interval: do not catch up
            await asyncio.sleep(max(0.0, delay))
            self.sweep(self._slices[index])
            index = (index + 1) % len(self._slices)

    def sweep(self, conns: set[Connection]) -> None:
        for conn in list(conns):
            transport = conn.transport
            if conn.closing or transport is None or transport.is_closing():
                continue
            if conn.unanswered >= MISSED_PONGS:
                self.expired += 1
                conn.expire()
                continue
            conn.unanswered += 1
            # Straight into the transport: a ping needs no coalescing, and a frame already
            # queued for this socket is a whole frame, so the ping cannot split one.
            transport.write(PING_FRAME)
            self.pings += 1


HEARTBEAT: web.AppKey[Heartbeat] = web.AppKey("heartbeat", Heartbeat)


async def run_heartbeat(app: web.Application) -> AsyncIterator[None]:
    """A ``cleanup_ctx``: the sweep runs from startup and is cancelled, and awaited, at cleanup."""
    heartbeat = app[HEARTBEAT]
    if METRICS in app:
        app[METRICS].counters["chatd_ws_pings_total"] = lambda: heartbeat.pings
        app[METRICS].counters["chatd_ws_heartbeat_closes_total"] = lambda: heartbeat.expired
    task = asyncio.get_running_loop().create_task(heartbeat.run(), name="ws-heartbeat")
    yield
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
