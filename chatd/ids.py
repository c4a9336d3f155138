"""Identifiers: message snowflakes, conversation and media ids, session tokens."""

from __future__ import annotations

import hashlib
import secrets
import time

_EPOCH_MS = 1_704_067_200_000  # 2024-01-01: keeps snowflakes short for decades


class Snowflake:
    """64-bit ids: 41 bits of milliseconds, 10 bits of worker, 12 bits of sequence.

    Unique server-wide as long as each process has its own worker number (derived from the
    server id); monotonic within a process even if the clock steps back. Not thread-safe: one
    generator per event loop, called from that loop only (it is on every send's path, and a
    lock there costs more than the rest of the call).
    """

    def __init__(self, worker: int) -> None:
        self._worker = worker & 0x3FF
        self._last_ms = 0
        self._sequence = 0

    def next(self) -> int:
        now = int(time.time() * 1000) - _EPOCH_MS
        if now <= self._last_ms:
            now = self._last_ms
            self._sequence = (self._sequence + 1) & 0xFFF
            if self._sequence == 0:
                now += 1  # borrow the next millisecond rather than wait for it
        else:
            self._sequence = 0
        self._last_ms = now
        return (now << 22) | (self._worker << 12) | self._sequence


def worker_number(server_id: str) -> int:
    return int.from_bytes(hashlib.blake2b(server_id.encode(), digest_size=2).digest(), "big")


def new_token() -> str:
    """256 random bits, URL-safe."""
    return secrets.token_urlsafe(32)


def token_hash(token: str) -> str:
    """Only this is stored: a leaked database does not leak usable tokens."""
    return hashlib.sha256(token.encode()).hexdigest()


def new_conv_id() -> str:
    return "c" + secrets.token_hex(8)


def new_media_id() -> str:
    return "m" + secrets.token_hex(12)


def new_server_id() -> str:
    return "s" + secrets.token_hex(4)
