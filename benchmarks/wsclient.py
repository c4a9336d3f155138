"""A lean WebSocket client for the driver's hot paths: an ``asyncio.Protocol``, no task and no
coroutine per frame.

aiohttp's client costs several microseconds per received frame (a reader, a queue, a
``WSMessage``, an awaited ``receive()``); at 100,000 deliveries/s that alone would take most of
a core on a 2-core machine that also runs the server, and the driver would measure itself.
Here a frame is parsed straight out of ``data_received`` and handed to a callback.

What it implements of RFC 6455, client side: the opening handshake (checks ``101`` and
``Sec-WebSocket-Accept``), masked text frames out (the mask key is random per connection, not
per frame: the server cannot tell, and the masking itself is what costs), unmasked frames in of
any length, fragmented messages, ping -> pong, close. Before a callback is set, text frames queue
up for :meth:`RawWebSocket.recv` (set-up: hello, create the conversation).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import socket
from collections import deque
from collections.abc import Callable
from typing import Any, cast

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_OP_CONT, _OP_TEXT, _OP_BINARY, _OP_CLOSE, _OP_PING, _OP_PONG = 0, 1, 2, 8, 9, 10


class HandshakeError(Exception):
    """The server did not upgrade the connection (the status line says why)."""


class RawWebSocket(asyncio.Protocol):
    """One client connection. ``send_text`` writes at once; ``on_text`` receives payloads."""

    def __init__(self, host: str, path: str, extra_headers: dict[str, str] | None = None) -> None:
        loop = asyncio.get_running_loop()
        self._host = host
        self._path = path
        self._extra = extra_headers or {}
        self._key = base64.b64encode(os.urandom(16))
        self._mask = os.urandom(4)
        # The key repeated over 256 bytes: most frames are masked with one XOR of two ints.
        self._mask_long = int.from_bytes(self._mask * 64, "little")
        self._buffer = bytearray()
        self._fragments: list[bytes] = []
        self._upgraded = False
        self.transport: asyncio.Transport | None = None
        self.opened: asyncio.Future[None] = loop.create_future()
        self.closed_future: asyncio.Future[None] = loop.create_future()
        self.on_text: Callable[[bytes], None] | None = None
        self._queue: deque[bytes] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self.close_code: int | None = None

    # -- opening ---------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports quack like asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)
        sock = self.transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        headers = "".join(f"{k}: {v}\r\n" for k, v in self._extra.items())
        self.transport.write(
            (
                f"GET {self._path} HTTP/1.1\r\nHost: {self._host}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {self._key.decode()}\r\n"
                f"Sec-WebSocket-Version: 13\r\n{headers}\r\n"
            ).encode()
        )

    def _handshake(self) -> None:
        end = self._buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(self._buffer) > 65536:
                self._fail(HandshakeError("oversized handshake response"))
            return
        head = bytes(self._buffer[:end]).decode("latin-1")
        del self._buffer[: end + 4]
        lines = head.split("\r\n")
        if not lines[0].startswith("HTTP/1.1 101"):
            self._fail(HandshakeError(lines[0]))
            return
        accept = base64.b64encode(hashlib.sha1(self._key + _GUID).digest()).decode()
        fields = {
            k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])
        }
        if fields.get("sec-websocket-accept") != accept:
            self._fail(HandshakeError("bad Sec-WebSocket-Accept"))
            return
        self._upgraded = True
        if not self.opened.done():
            self.opened.set_result(None)

    def _fail(self, exc: Exception) -> None:
        if not self.opened.done():
            self.opened.set_exception(exc)
        if self.transport is not None:
            self.transport.close()

    # -- frames in -------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        if not self._upgraded:
            self._handshake()
            if not self._upgraded:
                return
        size = len(buffer)
        pos = 0
        while size - pos >= 2:
            first, second = buffer[pos], buffer[pos + 1]
            length = second & 0x7F
            head = 2
            if length == 126:
                if size - pos < 4:
                    break
                length = int.from_bytes(buffer[pos + 2 : pos + 4], "big")
                head = 4
            elif length == 127:
                if size - pos < 10:
                    break
                length = int.from_bytes(buffer[pos + 2 : pos + 10], "big")
                head = 10
            masked = second & 0x80
            if masked:
                head += 4
            end = pos + head + length
            if end > size:
                break
            payload = bytes(buffer[pos + head : end])
            if masked:  # servers must not mask; tolerate it anyway
                key = buffer[pos + head - 4 : pos + head]
                payload = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
            pos = end
            opcode = first & 0x0F
            fin = first & 0x80
            if opcode in (_OP_TEXT, _OP_BINARY, _OP_CONT):
                if not fin:
                    self._fragments.append(payload)
                    continue
                if self._fragments:
                    self._fragments.append(payload)
                    payload = b"".join(self._fragments)
                    self._fragments = []
                self._deliver(payload)
            elif opcode == _OP_PING:
                self._write_frame(_OP_PONG, payload)
            elif opcode == _OP_CLOSE:
                self.close_code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
                self._write_frame(_OP_CLOSE, payload[:2])
                if self.transport is not None:
                    self.transport.close()
                break
        if pos:
            del buffer[:pos]

    def _deliver(self, payload: bytes) -> None:
        callback = self.on_text
        if callback is not None:
            callback(payload)
            return
        self._queue.append(payload)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def recv(self) -> bytes:
        """The next text frame (set-up only, before ``on_text`` is set)."""
        while not self._queue:
            if self.closed_future.done():
                raise ConnectionError(f"closed by the server (code {self.close_code})")
            self._waiter = asyncio.get_running_loop().create_future()
            waiter = self._waiter
            closed = self.closed_future
            await asyncio.wait([waiter, closed], return_when=asyncio.FIRST_COMPLETED)
        return self._queue.popleft()

    # -- frames out ------------------------------------------------------------------------

    def send_text(self, data: bytes) -> None:
        self._write_frame(_OP_TEXT, data)

    def _write_frame(self, opcode: int, data: bytes) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        length = len(data)
        if length < 126:
            header = bytes((0x80 | opcode, 0x80 | length))
        elif length < 65536:
            header = bytes((0x80 | opcode, 0x80 | 126)) + length.to_bytes(2, "big")
        else:
            header = bytes((0x80 | opcode, 0x80 | 127)) + length.to_bytes(8, "big")
        if length <= 256:
            masked = (
                int.from_bytes(data, "little") ^ (self._mask_long & ((1 << (8 * length)) - 1))
            ).to_bytes(length, "little")
        else:
            masked = _mask(data, self._mask)
        transport.write(header + self._mask + masked)

    # -- closing ---------------------------------------------------------------------------

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.opened.done():
            self.opened.set_exception(exc or ConnectionError("connection closed in handshake"))
        if not self.closed_future.done():
            self.closed_future.set_result(None)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    @property
    def closed(self) -> bool:
        return self.closed_future.done()

    async def close(self, within: float = 2.0) -> None:
        if self.transport is None or self.closed:
            return
        self._write_frame(_OP_CLOSE, (1000).to_bytes(2, "big"))
        try:
            await asyncio.wait_for(asyncio.shield(self.closed_future), within)
        except TimeoutError:
            self.transport.abort()


def _mask(data: bytes, key: bytes) -> bytes:
    """XOR ``data`` with the repeating 4-byte ``key``, as one big-integer operation."""
    length = len(data)
    if not length:
        return data
    repeated = int.from_bytes((key * ((length + 3) // 4))[:length], "little")
    return (int.from_bytes(data, "little") ^ repeated).to_bytes(length, "little")


async def open_websocket(url: str, **kwargs: Any) -> RawWebSocket:
    """Connect to ``ws://host:port/path`` and finish the handshake."""
    if not url.startswith("ws://"):
        raise ValueError(f"only ws:// URLs are supported: {url}")
    rest = url[len("ws://") :]
    hostport, _, path = rest.partition("/")
    host, _, port = hostport.rpartition(":")
    loop = asyncio.get_running_loop()
    _, protocol = await loop.create_connection(
        lambda: RawWebSocket(hostport, "/" + path, **kwargs), host, int(port)
    )
    await protocol.opened
    return protocol
