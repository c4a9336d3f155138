"""Accounts and sessions: registration, login, tokens, and the operator's user commands."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from chatd import ids
from chatd.errors import BadRequest, Conflict, Forbidden, NotFound, RateLimited, Unauthorized
from chatd.models import Session, User
from chatd.service.limits import KeyedLimiter
from chatd.service.ports import Clock, EventSink
from chatd.store.base import Store

USERNAME_RE = re.compile(r"[a-z0-9_.\-]{3,32}")
MIN_PASSWORD, MAX_PASSWORD = 8, 1024
MAX_DEVICE_CHARS = 64
DAY_MS = 86_400_000


def normalize_username(name: object) -> str:
    """Case-fold and validate a username; ``BadRequest`` if it is not one."""
    if not isinstance(name, str):
        raise BadRequest("username must be a string")
    folded = name.casefold()
    if not USERNAME_RE.fullmatch(folded):
        raise BadRequest("username must be 3 to 32 characters of a-z 0-9 _ . -")
    return folded


def check_password(password: object) -> str:
    if not isinstance(password, str) or not MIN_PASSWORD <= len(password) <= MAX_PASSWORD:
        raise BadRequest(f"password must be {MIN_PASSWORD} to {MAX_PASSWORD} characters")
    return password


@dataclass(frozen=True, slots=True)
class IssuedSession:
    token: str
    session: Session


class AccountService:
    """Argon2id password hashes (OWASP's parameters: m=19 MiB, t=2, p=1), hashed off the loop;
    tokens of 256 random bits of which only a SHA-256 is stored; sliding expiry."""

    def __init__(
        self,
        store: Store,
        clock: Clock,
        *,
        registration_open: bool = True,
        session_ttl_days: float = 30.0,
        login_attempts_per_minute: int = 10,
        login_slowdown_seconds: float = 1.0,
        registrations_per_hour: int = 60,
        events: EventSink | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.store = store
        self.clock = clock
        self.registration_open = registration_open
        self.session_ttl_ms = int(session_ttl_days * DAY_MS)
        self.events = events
        self.hasher = PasswordHasher(time_cost=2, memory_cost=19 * 1024, parallelism=1)
        # Computed once so that a login for an unknown user costs as much as a wrong password.
        self._dummy_hash = self.hasher.hash("chatd-dummy-password")
        rate = login_attempts_per_minute / 60.0
        self._login_by_name = KeyedLimiter(rate, login_attempts_per_minute)
        self._login_by_addr = KeyedLimiter(rate * 5, login_attempts_per_minute * 5)
        self.login_slowdown_seconds = login_slowdown_seconds
        self._register_by_addr = KeyedLimiter(
            registrations_per_hour / 3600.0, registrations_per_hour
        )
        self._sleep = sleep

    async def _hash(self, password: str) -> str:
        return await asyncio.to_thread(self.hasher.hash, password)

    async def _verify(self, password_hash: str, password: str) -> bool:
        def verify() -> bool:
            try:
                return self.hasher.verify(password_hash, password)
            except (VerificationError, InvalidHashError):
                return False

        return await asyncio.to_thread(verify)

    async def register(
        self, username: object, password: object, *, by_operator: bool = False, address: str = ""
    ) -> User:
        if not self.registration_open and not by_operator:
            raise Forbidden("registration is closed on this server")
        name = normalize_username(username)
        secret = check_password(password)
        if not by_operator:
            # Every well-formed attempt spends a token, a taken name too: the limit holds back
            # account spam and probing for names alike.
            wait = self._register_by_addr.take(address, self.clock())
            if wait > 0:
                raise RateLimited("too many registrations; try again later", retry_after=wait)
        if await self.store.get_user(name) is not None:
            raise Conflict("that username is taken")
        return await self.store.create_user(name, await self._hash(secret), self.clock())

    async def login(
        self, username: object, password: object, device: object = None, address: str = ""
    ) -> IssuedSession:
        now = self.clock()
        if not isinstance(username, str) or not isinstance(password, str):
            raise BadRequest("username and password must be strings")
        if device is not None and (not isinstance(device, str) or len(device) > MAX_DEVICE_CHARS):
            raise BadRequest(f"device must be a string of at most {MAX_DEVICE_CHARS} characters")
        name = username.casefold()
        # Only failures spend tokens, so a user who types their password right is never slowed.
        wait = max(
            self._login_by_name.blocked(name, now), self._login_by_addr.blocked(address, now)
        )
        if wait > 0:
            raise RateLimited("too many login attempts; try again later", retry_after=wait)
        user = await self.store.get_user(name) if USERNAME_RE.fullmatch(name) else None
        ok = await self._verify(user.password_hash if user else self._dummy_hash, password)
        if user is None or not ok or user.disabled:
            wait = max(self._login_by_name.take(name, now), self._login_by_addr.take(address, now))
            if wait > 0:
                raise RateLimited("too many login attempts; try again later", retry_after=wait)
            # Slow down, then 429: past half of a username's allowance each failure for it
            # costs the guesser a wait, while its owner, who rarely fails twice, never does.
            if self.login_slowdown_seconds and self._login_by_name.spent(name) > 0.5:
                await self._sleep(self.login_slowdown_seconds)
            raise Unauthorized("wrong username or password")
        token = ids.new_token()
        session = Session(
            token_hash=ids.token_hash(token),
            user=user.username,
            device=(device or "default") if isinstance(device, str) else "default",
            created_at=now,
            expires_at=now + self.session_ttl_ms,
        )
        await self.store.create_session(session)
        return IssuedSession(token, session)

    async def authenticate(self, token: object) -> Session:
        """The live session for ``token``; ``Unauthorized`` if unknown, expired or disabled.

        Expiry slides: a session used in the second half of its life is extended.
        """
        if not isinstance(token, str) or not token or len(token) > 512:
            raise Unauthorized("missing or malformed token")
        digest = ids.token_hash(token)
        session = await self.store.get_session(digest)
        now = self.clock()
        if session is None or session.expires_at <= now:
            raise Unauthorized("invalid or expired token")
        if session.expires_at - now < self.session_ttl_ms // 2:
            expires_at = now + self.session_ttl_ms
            await self.store.extend_session(digest, expires_at)
            session = Session(
                session.token_hash, session.user, session.device, session.created_at, expires_at
            )
        return session

    async def still_valid(self, token_hash: str) -> bool:
        session = await self.store.get_session(token_hash)
        return session is not None and session.expires_at > self.clock()

    async def logout(self, session: Session) -> None:
        await self.store.delete_session(session.token_hash)
        if self.events is not None:
            self.events.session_revoked(session.user, session.token_hash)

    async def disable(self, username: str) -> None:
        name = normalize_username(username)
        # The time recorded lets every server (including ones this process has no bus to)
        # find the revocation and close the user's sockets.
        await self.store.set_user_disabled(name, True, revoked_at=self.clock())
        if self.events is not None:
            self.events.session_revoked(name, None)

    async def enable(self, username: str) -> None:
        await self.store.set_user_disabled(normalize_username(username), False)

    async def set_password(self, username: str, password: str) -> None:
        name = normalize_username(username)
        if await self.store.get_user(name) is None:
            raise NotFound(f"no user {name!r}")
        await self.store.set_password_hash(name, await self._hash(check_password(password)))
        await self.store.delete_user_sessions(name, revoked_at=self.clock())
        if self.events is not None:
            self.events.session_revoked(name, None)
