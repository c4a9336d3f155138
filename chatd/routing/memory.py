"""``memory://``: one process, no other servers. The registry is the set of attached users."""

from __future__ import annotations

from collections.abc import Collection

from chatd.routing.base import Bus, EnvelopeHandler, OfflineHandler


class MemoryBus(Bus):
    local_only = True

    def __init__(self, url: str, server_id: str) -> None:
        super().__init__(url, server_id)
        self._attached: set[str] = set()
        self._on_envelope: EnvelopeHandler | None = None

    async def start(self, on_envelope: EnvelopeHandler, on_offline: OfflineHandler) -> None:
        self._on_envelope = on_envelope

    async def close(self) -> None:
        self._attached.clear()

    async def ping(self) -> None:
        return None

    async def publish(self, server_id: str, payload: bytes) -> None:
        if server_id == self.server_id and self._on_envelope is not None:
            self._on_envelope(payload)

    async def attach(self, user: str) -> bool:
        if user in self._attached:
            return False
        self._attached.add(user)
        return True

    async def detach(self, user: str) -> bool:
        if user not in self._attached:
            return False
        self._attached.discard(user)
        return True

    async def locate(self, users: Collection[str]) -> dict[str, list[str]]:
        return {}

    async def online(self, users: Collection[str]) -> set[str]:
        return {u for u in users if u in self._attached}
