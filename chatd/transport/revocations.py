"""Revocations made by other processes reach this server's sockets within seconds.

``chatd user disable`` and ``chatd user passwd`` run in a process of their own, with no bus to
tell the servers (and the embedded default bus does not leave its process anyway). They record
in the store when the user's sessions were revoked; every server asks the store, every
``revocation_poll_seconds``, which users were revoked since it last looked, and closes with
4401 those users' local sockets whose session no longer exists. A socket opened after the
revocation (the user was enabled again and logged in) has a live session and stays open.

Asking the store whether each session still exists, rather than comparing the session's start
with the revocation's time, keeps the decision right however far apart the clocks of the
command's machine and this server are.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

from aiohttp import web

from chatd.errors import ChatError
from chatd.routing.router import LocalConnection, Router
from chatd.store.base import Store
from chatd.transport.keys import ACCOUNTS, ROUTER, SETTINGS, STORE

log = logging.getLogger(__name__)

# How far behind this server's clock a revocation may be stamped (another machine's clock, a
# slow commit) and still be found. The session re-check sweep catches anything older.
CLOCK_SKEW_MS = 60_000


class RevocationPoller:
    """One look at the store per tick. The cursor moves only after a look that succeeded, so
    a store outage delays revocations rather than losing them; ``(user, revoked_at)`` pairs
    already handled are remembered, since each look overlaps the last by ``CLOCK_SKEW_MS``."""

    def __init__(
        self,
        store: Store,
        router: Router,
        session_alive: Callable[[str], Awaitable[bool]],
        clock: Callable[[], int],
    ) -> None:
        self.store = store
        self.router = router
        self.session_alive = session_alive
        self.clock = clock
        self.cursor = clock()
        self.handled: set[tuple[str, int]] = set()
        self.failing = False

    async def run(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            await self.poll()

    async def poll(self) -> None:
        """Close the sockets of sessions revoked since the last look; never raises."""
        started = self.clock()
        try:
            revoked = await self.store.users_revoked_since(self.cursor - CLOCK_SKEW_MS)
            for user, revoked_at in revoked:
                if (user, revoked_at) not in self.handled:
                    await self._close_revoked_sockets(user)
                    self.handled.add((user, revoked_at))
        except Exception as exc:
            # Once per outage, not every tick; the next tick retries from the same cursor.
            if not self.failing:
                self.failing = True
                if isinstance(exc, ChatError):
                    log.warning("cannot look for revoked sessions, will retry: %s", exc.message)
                else:
                    log.exception("looking for revoked sessions failed, will retry")
            return
        if self.failing:
            self.failing = False
            log.info("looking for revoked sessions again")
        self.cursor = max(self.cursor, started)
        horizon = self.cursor - CLOCK_SKEW_MS
        self.handled = {pair for pair in self.handled if pair[1] >= horizon}

    async def _close_revoked_sockets(self, user: str) -> None:
        by_session: dict[str, list[LocalConnection]] = {}
        for conn in list(self.router.connections(user)):
            by_session.setdefault(conn.token_hash, []).append(conn)
        closed = 0
        for token_hash, conns in by_session.items():
            if not await self.session_alive(token_hash):
                for conn in conns:
                    conn.revoke()
                closed += len(conns)
        if closed:
            log.info("closing %d socket(s) of %s: their sessions were revoked", closed, user)


async def poll_revocations(app: web.Application) -> AsyncIterator[None]:
    """A ``cleanup_ctx``: the server's one poll task, from start-up until shutdown."""
    accounts = app[ACCOUNTS]
    poller = RevocationPoller(app[STORE], app[ROUTER], accounts.still_valid, accounts.clock)
    task = asyncio.get_running_loop().create_task(poller.run(app[SETTINGS].revocation_poll_seconds))
    yield
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
