"""The bus between chatd processes, with the user -> servers registry it needs.

A backend is chosen by URL (``memory://`` for one process, ``redis://`` for many). It carries
opaque bytes to one named server (never to every server), remembers which live servers hold a
connection of which user, and notices servers that died. What the bytes mean is the router's
business (:mod:`chatd.routing.router`); who may see whom is the service's.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Collection

EnvelopeHandler = Callable[[bytes], None]
"""Called on this server's event loop for every payload published to this server."""

OfflineHandler = Callable[[list[str]], Awaitable[None]]
"""Called with users who went offline everywhere because the server holding them died."""


class Bus(ABC):
    """Cross-process delivery, registry and liveness.

    ``local_only`` is True when no other server can exist (``memory://``): the router then
    skips every registry lookup on the hot path.
    """

    local_only: bool = False

    def __init__(self, url: str, server_id: str) -> None:
        self.url = url
        self.server_id = server_id

    @abstractmethod
    async def start(self, on_envelope: EnvelopeHandler, on_offline: OfflineHandler) -> None:
        """Subscribe to this server's channel and start heartbeats.

        Raise :class:`chatd.errors.ConfigError` if the backend cannot be reached at start.
        """

    @abstractmethod
    async def close(self) -> None:
        """Stop heartbeats, unsubscribe, remove this server's registry entries."""

    @abstractmethod
    async def ping(self) -> None:
        """Return if the backend answers; raise ``chatd.errors.Unavailable`` otherwise."""

    @abstractmethod
    async def publish(self, server_id: str, payload: bytes) -> None:
        """Best effort: a payload lost here is repaired by clients through history."""

    @abstractmethod
    async def attach(self, user: str) -> bool:
        """Record that this server holds a connection of ``user``.

        Returns True if no live server held one before (the user just came online).
        """

    @abstractmethod
    async def detach(self, user: str) -> bool:
        """Record that this server holds no connection of ``user`` any more.

        Returns True if no live server holds one now (the user just went offline).
        """

    @abstractmethod
    async def locate(self, users: Collection[str]) -> dict[str, list[str]]:
        """Map other live servers to those of ``users`` they hold (this server excluded)."""

    @abstractmethod
    async def online(self, users: Collection[str]) -> set[str]:
        """Those of ``users`` held by any live server, this one included."""
