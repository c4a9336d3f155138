"""Fan-out: hand one serialized event to every connection of a set of users.

Local connections are written directly (synchronously: no await per recipient). Users held by
other servers are looked up in the registry and reached through the bus from a single pump task,
so that events of one conversation leave in the order they were made. The pump takes every
event waiting when it wakes and sends each remote server one envelope holding all of that
server's events: one registry lookup and at most one publish per remote server per batch, so
the bus is never paid a round trip per event (and never more than one publish per event).
Each registry lookup and each publish is timed into a histogram (``chatd_bus_locate_seconds``,
``chatd_bus_publish_seconds`` in ``/metrics``); with ``memory://`` nothing is remote, so both
stay empty.

Envelope (opaque to the bus): ``kind + JSON list of users + "\n" + payload`` for one event;
``"m"`` followed by such envelopes, each preceded by its length (4 bytes, big-endian), for
several.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Collection, Iterable
from typing import Protocol

import orjson

from chatd.errors import ChatError
from chatd.metrics import Histogram
from chatd.routing.base import Bus

log = logging.getLogger(__name__)

MAX_OUTBOX = 100_000  # remote deliveries waiting for the pump; beyond it they are dropped
# One batch of the pump: bounded so that one envelope stays a few MB at most.
MAX_BATCH_EVENTS = 4096
MAX_BATCH_BYTES = 4 << 20
MULTI = b"m"


class LocalConnection(Protocol):
    user: str
    token_hash: str

    def send_payload(self, payload: bytes) -> None:
        """Queue one serialized event for the socket; never blocks."""

    def send_wire(self, wire: bytes) -> None:
        """Queue an already framed WebSocket message; never blocks."""

    def revoke(self) -> None:
        """Close the socket because its session ended (4401)."""


def text_frame(payload: bytes) -> bytes:
    """Frame ``payload`` as one unmasked WebSocket text frame (RFC 6455 section 5.2), so that
    a fan-out frames an event once and writes the same bytes to every socket."""
    length = len(payload)
    if length < 126:
        return bytes((0x81, length)) + payload
    if length < 65536:
        return bytes((0x81, 126)) + length.to_bytes(2, "big") + payload
    return bytes((0x81, 127)) + length.to_bytes(8, "big") + payload


class Router:
    """Local fan-out and the pump to other servers.

    Args:
        bus: the backend between processes.
        publish_seconds: observes each ``bus.publish`` (one per remote server per batch).
        locate_seconds: observes each ``bus.locate`` (one per batch).
    """

    def __init__(
        self,
        bus: Bus,
        *,
        publish_seconds: Histogram | None = None,
        locate_seconds: Histogram | None = None,
    ) -> None:
        self.bus = bus
        self.publish_seconds = Histogram() if publish_seconds is None else publish_seconds
        self.locate_seconds = Histogram() if locate_seconds is None else locate_seconds
        self._by_user: dict[str, set[LocalConnection]] = {}
        self._outbox: deque[tuple[bytes, tuple[str, ...], bytes]] = deque()
        self._wake = asyncio.Event()
        self._pump_task: asyncio.Task[None] | None = None
        self.publishes = 0
        self.dropped = 0

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        await self.bus.start(self._on_envelope, self._on_servers_died)
        if not self.bus.local_only:
            self._pump_task = asyncio.get_running_loop().create_task(self._pump())

    async def close(self) -> None:
        if self._pump_task is not None:
            self._pump_task.cancel()
            await asyncio.gather(self._pump_task, return_exceptions=True)
            self._pump_task = None
        await self.bus.close()

    on_servers_died: object = None  # set by the app: async callable(users)

    async def _on_servers_died(self, users: list[str]) -> None:
        handler = self.on_servers_died
        if callable(handler):
            await handler(users)

    # -- local connections -------------------------------------------------------------------

    def add(self, conn: LocalConnection) -> int:
        """Register a connection; return how many this user now has here."""
        conns = self._by_user.setdefault(conn.user, set())
        conns.add(conn)
        return len(conns)

    def remove(self, conn: LocalConnection) -> int:
        conns = self._by_user.get(conn.user)
        if conns is None:
            return 0
        conns.discard(conn)
        if not conns:
            del self._by_user[conn.user]
            return 0
        return len(conns)

    def connections(self, user: str) -> Collection[LocalConnection]:
        return self._by_user.get(user, ())

    def connected_here(self, user: str) -> bool:
        return user in self._by_user

    def connection_count(self) -> int:
        return sum(len(c) for c in self._by_user.values())

    # -- delivery ----------------------------------------------------------------------------

    def deliver(self, users: Iterable[str], payload: bytes, exclude: object = None) -> None:
        """Write ``payload`` to every connection of ``users`` but ``exclude``; never awaits."""
        wire: bytes | None = None
        by_user = self._by_user
        for user in users:
            conns = by_user.get(user)
            if conns:
                if wire is None:
                    wire = text_frame(payload)
                for conn in conns:
                    if conn is not exclude:
                        conn.send_wire(wire)
        if not self.bus.local_only:
            self._enqueue(b"d", tuple(users), payload)

    def revoke(self, user: str, token_hash: str | None) -> None:
        """Close one session's sockets (or all of a user's) here and on every other server."""
        self._revoke_local(user, token_hash)
        if not self.bus.local_only:
            self._enqueue(b"r", (user,), (token_hash or "").encode())

    def _revoke_local(self, user: str, token_hash: str | None) -> None:
        for conn in list(self._by_user.get(user, ())):
            if token_hash is None or conn.token_hash == token_hash:
                conn.revoke()

    # -- remote ------------------------------------------------------------------------------

    def _enqueue(self, kind: bytes, users: tuple[str, ...], payload: bytes) -> None:
        if len(self._outbox) >= MAX_OUTBOX:
            self.dropped += 1
            return
        self._outbox.append((kind, users, payload))
        self._wake.set()

    async def _pump(self) -> None:
        outbox = self._outbox
        while True:
            await self._wake.wait()
            self._wake.clear()
            while outbox:
                batch = self._take_batch()
                try:
                    await self._publish_batch(batch)
                except ChatError as exc:
                    # The store is the truth: clients repair what the bus missed via history.
                    self.dropped += len(batch)
                    log.warning(
                        "bus unavailable, %d remote deliveries dropped: %s", len(batch), exc
                    )
                except Exception:
                    self.dropped += len(batch)
                    log.exception("remote delivery failed")

    def _take_batch(self) -> list[tuple[bytes, tuple[str, ...], bytes]]:
        """Everything waiting, up to the batch bounds, oldest first."""
        outbox = self._outbox
        batch: list[tuple[bytes, tuple[str, ...], bytes]] = []
        size = 0
        while outbox and len(batch) < MAX_BATCH_EVENTS and size < MAX_BATCH_BYTES:
            item = outbox.popleft()
            batch.append(item)
            size += len(item[2])
        return batch

    async def _publish_batch(self, batch: list[tuple[bytes, tuple[str, ...], bytes]]) -> None:
        everyone = {user for _, users, _ in batch for user in users}
        started = time.perf_counter()
        try:
            servers = await self.bus.locate(everyone)
        finally:
            self.locate_seconds.observe(time.perf_counter() - started)
        if not servers:
            return
        server_of: dict[str, list[str]] = {}
        for server, held in servers.items():
            for user in held:
                server_of.setdefault(user, []).append(server)
        # Per server, its part of every event in order: a server's events of one conversation
        # travel in one envelope (or in envelopes published one after the other).
        parts: dict[str, list[bytes]] = {}
        for kind, users, payload in batch:
            per_server: dict[str, list[str]] = {}
            for user in users:
                for server in server_of.get(user, ()):
                    per_server.setdefault(server, []).append(user)
            for server, targets in per_server.items():
                part = kind + orjson.dumps(targets) + b"\n" + payload
                parts.setdefault(server, []).append(part)
        publish = self._publish
        sends = [publish(server, _envelope(pieces)) for server, pieces in parts.items()]
        if len(sends) == 1:
            await sends[0]
        else:
            # Different servers have different channels: no order to keep between them.
            await asyncio.gather(*sends)
        self.publishes += len(sends)

    async def _publish(self, server: str, envelope: bytes) -> None:
        started = time.perf_counter()
        try:
            await self.bus.publish(server, envelope)
        finally:
            self.publish_seconds.observe(time.perf_counter() - started)

    def _on_envelope(self, data: bytes) -> None:
        if data[:1] == MULTI:
            view = memoryview(data)
            end = len(data)
            at = 1
            while at < end:
                length = int.from_bytes(view[at : at + 4], "big")
                at += 4
                if length <= 0 or at + length > end:
                    log.warning("malformed bus envelope dropped")
                    return
                self._on_event(data[at : at + length])
                at += length
            return
        self._on_event(data)

    def _on_event(self, data: bytes) -> None:
        kind = data[:1]
        newline = data.find(b"\n")
        if newline < 0:
            log.warning("malformed bus envelope dropped")
            return
        try:
            users = orjson.loads(data[1:newline])
        except orjson.JSONDecodeError:
            log.warning("malformed bus envelope dropped")
            return
        payload = data[newline + 1 :]
        if kind == b"d":
            wire = text_frame(payload)
            for user in users:
                for conn in self._by_user.get(user, ()):
                    conn.send_wire(wire)
        elif kind == b"r":
            token_hash = payload.decode() or None
            for user in users:
                self._revoke_local(user, token_hash)


def _envelope(parts: list[bytes]) -> bytes:
    """One event as it is; several as ``MULTI`` and each one length-prefixed."""
    if len(parts) == 1:
        return parts[0]
    out = bytearray(MULTI)
    for part in parts:
        out += len(part).to_bytes(4, "big")
        out += part
    return bytes(out)
