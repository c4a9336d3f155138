"""The revocation poll on a real store and router, with a clock the test moves: sockets of
revoked sessions close, later sessions survive, equal and lagging timestamps are found, and a
store outage delays revocations without losing them."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest

from chatd.routing.memory import MemoryBus
from chatd.routing.router import Router
from chatd.service.accounts import AccountService
from chatd.store.memory import MemoryStore
from chatd.transport.revocations import CLOCK_SKEW_MS, RevocationPoller

T0 = 1_764_316_800_000
PASSWORD = "correct horse battery"


@dataclass(eq=False)
class Socket:
    """Stands in for a WebSocket: the router's view of one (user, token hash, revoke)."""

    user: str
    token_hash: str
    revoked: bool = False
    sent: list[bytes] = field(default_factory=list)

    def send_payload(self, payload: bytes) -> None:
        self.sent.append(payload)

    def send_wire(self, wire: bytes) -> None:
        self.sent.append(wire)

    def revoke(self) -> None:
        self.revoked = True


@dataclass
class World:
    store: MemoryStore
    router: Router
    accounts: AccountService
    now: list[int]
    poller: RevocationPoller

    async def socket(self, user: str) -> Socket:
        issued = await self.accounts.login(user, PASSWORD)
        sock = Socket(user, issued.session.token_hash)
        self.router.add(sock)
        return sock


@pytest.fixture
async def world() -> AsyncIterator[World]:
    store = MemoryStore()
    now = [T0]
    # No event sink: like `chatd user ...`, nothing tells the router; only the poll can.
    accounts = AccountService(store, lambda: now[0])
    for name in ("alice", "bob"):
        await accounts.register(name, PASSWORD)
    router = Router(MemoryBus("memory://", "s1"))
    poller = RevocationPoller(store, router, accounts.still_valid, lambda: now[0])
    yield World(store, router, accounts, now, poller)
    await store.close()


async def test_disabling_closes_every_socket_of_the_user_and_no_other(world: World) -> None:
    phone, laptop, bobs = [await world.socket(u) for u in ("alice", "alice", "bob")]
    await world.poller.poll()
    assert not (phone.revoked or laptop.revoked or bobs.revoked)
    world.now[0] += 1
    await world.accounts.disable("alice")
    await world.poller.poll()
    assert phone.revoked and laptop.revoked and not bobs.revoked


async def test_a_session_begun_after_the_revocation_survives_until_the_next_one(
    world: World,
) -> None:
    await world.socket("alice")
    await world.accounts.disable("alice")
    await world.accounts.enable("alice")
    world.now[0] += 1
    fresh = await world.socket("alice")
    for _ in range(3):
        world.now[0] += 500
        await world.poller.poll()
    assert not fresh.revoked
    # a second revocation of the same user is not taken for the one already handled
    world.now[0] += 1
    await world.accounts.set_password("alice", "another good password")
    await world.poller.poll()
    assert fresh.revoked


async def test_a_revocation_stamped_at_the_cursor_or_by_a_lagging_clock_is_found(
    world: World,
) -> None:
    alice, bob = await world.socket("alice"), await world.socket("bob")
    # stamped in the very millisecond the server started
    await world.store.set_user_disabled("alice", True, revoked_at=T0)
    await world.poller.poll()
    assert alice.revoked
    world.now[0] = T0 + 10_000
    await world.poller.poll()  # the cursor is now T0 + 10 s
    # another machine, its clock half a minute behind, changes bob's password
    lagging = world.now[0] - CLOCK_SKEW_MS // 2
    await world.store.delete_user_sessions("bob", revoked_at=lagging)
    await world.poller.poll()
    assert bob.revoked


async def test_a_store_outage_is_logged_once_and_delays_revocations_without_losing_them(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    alice = await world.socket("alice")
    live = world.store
    down = MemoryStore()
    await down.close()  # answers every call with Unavailable
    world.poller.store = down
    caplog.set_level(logging.INFO, logger="chatd.transport.revocations")
    await world.accounts.disable("alice")  # stamped T0, while this server cannot look
    for _ in range(5):
        world.now[0] += 60_000  # five minutes of failed polls
        await world.poller.poll()
    assert not alice.revoked
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, caplog.text
    assert "Traceback" not in caplog.text
    world.poller.store = live
    await world.poller.poll()
    assert alice.revoked
    assert any("again" in r.getMessage() for r in caplog.records[1:]), caplog.text
