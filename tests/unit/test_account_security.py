"""What docs/security.md says about passwords and sessions, checked on the AccountService
over a memory store and a clock the test moves: argon2id with OWASP's parameters, tokens kept
only as hashes, sliding expiry."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator

import pytest

from chatd.errors import BadRequest, Conflict, RateLimited, Unauthorized
from chatd.service.accounts import DAY_MS, AccountService
from chatd.store import Store, open_store

T0 = 1_764_316_800_000
TTL_DAYS = 30


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> int:
        return self.now


@pytest.fixture
async def store() -> AsyncIterator[Store]:
    s = open_store("memory://")
    await s.start()
    try:
        yield s
    finally:
        await s.close()


async def test_passwords_are_argon2id_with_owasps_parameters(store: Store) -> None:
    accounts = AccountService(store, Clock())
    await accounts.register("alice", "correct horse")
    user = await store.get_user("alice")
    assert user is not None
    # 19 MiB (19456 KiB), 2 passes, 1 lane: OWASP's Password Storage Cheat Sheet minimum
    assert user.password_hash.startswith("$argon2id$v=19$m=19456,t=2,p=1$"), user.password_hash
    assert "correct horse" not in user.password_hash


async def test_only_a_sha256_of_the_token_is_stored(store: Store) -> None:
    accounts = AccountService(store, Clock())
    await accounts.register("alice", "correct horse")
    issued = await accounts.login("alice", "correct horse")
    assert len(issued.token) == 43  # 256 bits, base64url
    digest = hashlib.sha256(issued.token.encode()).hexdigest()
    assert issued.session.token_hash == digest
    assert await store.get_session(digest) is not None
    assert await store.get_session(issued.token) is None


async def test_sessions_slide_when_used_in_the_second_half_of_their_life(store: Store) -> None:
    clock = Clock()
    accounts = AccountService(store, clock, session_ttl_days=TTL_DAYS)
    await accounts.register("alice", "correct horse")
    issued = await accounts.login("alice", "correct horse")
    ttl = TTL_DAYS * DAY_MS
    assert issued.session.expires_at == T0 + ttl

    clock.now = T0 + ttl // 2 - 1000  # first half: used, not extended
    assert (await accounts.authenticate(issued.token)).expires_at == T0 + ttl

    clock.now = T0 + ttl // 2 + 1000  # second half: extended to a full period from now
    assert (await accounts.authenticate(issued.token)).expires_at == clock.now + ttl

    clock.now += ttl  # unused for a whole period: gone
    with pytest.raises(Unauthorized):
        await accounts.authenticate(issued.token)
    assert not await accounts.still_valid(issued.session.token_hash)


async def test_failed_logins_slow_down_past_half_the_allowance_then_429(store: Store) -> None:
    """10 a minute: failures 1-5 answered at once, 6-10 after the slow-down, the 11th is 429;
    a wrong password for another name from elsewhere is not slowed."""
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)

    accounts = AccountService(
        store, Clock(), login_attempts_per_minute=10, login_slowdown_seconds=1.5, sleep=sleep
    )
    await accounts.register("alice", "correct horse")
    slowed = []
    for attempt in range(10):
        before = len(waits)
        with pytest.raises(Unauthorized):
            await accounts.login("alice", f"guess {attempt}", address=f"10.0.0.{attempt}")
        slowed.append(len(waits) > before)
    assert slowed == [False] * 5 + [True] * 5
    assert waits == [1.5] * 5
    with pytest.raises(RateLimited):
        await accounts.login("alice", "guess 11", address="10.0.0.99")
    with pytest.raises(Unauthorized):
        await accounts.login("bob", "guess", address="10.0.0.100")
    assert len(waits) == 5


async def test_no_slow_down_when_it_is_set_to_zero(store: Store) -> None:
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)

    accounts = AccountService(store, Clock(), login_slowdown_seconds=0, sleep=sleep)
    for attempt in range(10):
        with pytest.raises(Unauthorized):
            await accounts.login("alice", f"guess {attempt}")
    assert waits == []


async def test_registrations_are_limited_per_address(store: Store) -> None:
    """3 an hour: the 4th well-formed attempt from one address is 429 (a taken name spends a
    token too); another address, and the operator's `chatd user add`, are not limited."""
    clock = Clock()
    accounts = AccountService(store, clock, registrations_per_hour=3)
    await accounts.register("alice", "correct horse", address="10.0.0.1")
    await accounts.register("bob", "correct horse", address="10.0.0.1")
    with pytest.raises(Conflict):
        await accounts.register("alice", "correct horse", address="10.0.0.1")
    with pytest.raises(RateLimited) as refused:
        await accounts.register("carol", "correct horse", address="10.0.0.1")
    assert 0 < refused.value.retry_after <= 1200  # one token back every 20 minutes
    with pytest.raises(BadRequest):  # malformed input is refused before the limit
        await accounts.register("no spaces allowed", "correct horse", address="10.0.0.1")
    await accounts.register("carol", "correct horse", address="10.0.0.2")
    await accounts.register("dave", "correct horse", by_operator=True)
    clock.now += 20 * 60 * 1000  # a token refilled
    await accounts.register("erin", "correct horse", address="10.0.0.1")
