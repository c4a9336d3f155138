"""Turn connects and disconnects on this server into online/offline announcements.

A user's first connection here attaches them to the registry; if no live server held them
before, they came online. Their last connection here closing starts a grace period; if no
connection returns within it, they are detached, and if no live server holds them any more,
they went offline, with ``last_seen`` the moment the last socket closed. A quick reconnect
inside the grace therefore announces nothing.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from chatd.errors import ChatError
from chatd.routing.base import Bus
from chatd.service.ports import Clock

log = logging.getLogger(__name__)

Announce = Callable[[str, bool, int | None], Awaitable[None]]
"""``announce(user, online, last_seen)``."""


class PresenceTracker:
    def __init__(self, bus: Bus, clock: Clock, announce: Announce, grace_seconds: float) -> None:
        self.bus = bus
        self.clock = clock
        self.announce = announce
        self.grace = grace_seconds
        self._local: dict[str, int] = {}
        # user -> (grace timer, when their last socket closed)
        self._pending_offline: dict[str, tuple[asyncio.Task[None], int]] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def count(self, user: str) -> int:
        return self._local.get(user, 0)

    async def connected(self, user: str) -> None:
        count = self._local.get(user, 0) + 1
        self._local[user] = count
        if count > 1:
            return
        pending = self._pending_offline.pop(user, None)
        if pending is not None:
            pending[0].cancel()  # a reconnect inside the grace: still attached, nothing to say
            return
        try:
            came_online = await self.bus.attach(user)
        except ChatError as exc:
            log.warning("presence: registry unavailable while attaching %s: %s", user, exc)
            return
        if came_online:
            await self._announce(user, True, None)

    def disconnected(self, user: str) -> None:
        count = self._local.get(user, 0) - 1
        if count > 0:
            self._local[user] = count
            return
        self._local.pop(user, None)
        last_seen = self.clock()
        task = asyncio.get_running_loop().create_task(self._go_offline(user, last_seen))
        self._pending_offline[user] = (task, last_seen)
        self._tasks.add(task)
        task.add_done_callback(self._reap)

    async def _go_offline(self, user: str, last_seen: int) -> None:
        await asyncio.sleep(self.grace)
        pending = self._pending_offline.get(user)
        if pending is not None and pending[0] is asyncio.current_task():
            del self._pending_offline[user]
        if self._local.get(user):
            return
        await self._detach(user, last_seen)

    async def _detach(self, user: str, last_seen: int) -> None:
        try:
            went_offline = await self.bus.detach(user)
        except ChatError as exc:
            log.warning("presence: registry unavailable while detaching %s: %s", user, exc)
            went_offline = True
        if went_offline:
            await self._announce(user, False, last_seen)

    async def servers_died(self, users: list[str]) -> None:
        """The bus found users whose server died: they are offline unless connected here."""
        now = self.clock()
        for user in users:
            if not self._local.get(user):
                await self._announce(user, False, now)

    async def registered_again(self, users: list[str]) -> None:
        """The bus re-registered users it holds after losing its backend: announce them online
        (their followers may have heard them go offline meanwhile; a repeat is harmless)."""
        for user in users:
            if self._local.get(user):
                await self._announce(user, True, None)

    async def _announce(self, user: str, online: bool, last_seen: int | None) -> None:
        try:
            await self.announce(user, online, last_seen)
        except ChatError as exc:
            log.warning("presence: could not announce %s: %s", user, exc)

    def _reap(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("presence task failed", exc_info=task.exception())

    async def close(self) -> None:
        """At shutdown: users whose grace is running go offline now, so that their
        ``last_seen`` is stored before the process exits; then cancel what is left."""
        pending = list(self._pending_offline.items())
        self._pending_offline.clear()
        for _user, (task, _last_seen) in pending:
            task.cancel()
        if pending:
            finishing = (self._detach(user, last_seen) for user, (_t, last_seen) in pending)
            try:
                await asyncio.wait_for(asyncio.gather(*finishing, return_exceptions=True), 10)
            except TimeoutError:
                log.warning("presence: shutdown could not record last_seen of every user")
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks.clear()
