"""``TimedStore``: any store backend, timed call by call for ``/metrics``.

:func:`chatd.app.build_app` wraps whatever :func:`chatd.store.open_store` built, so every
backend (memory, SQLite, PostgreSQL, MongoDB) is measured the same way without any of them
knowing: ``chatd_store_seconds{op}`` is how long each call took as its caller saw it (queueing
for a connection or for the SQLite writer included), and ``chatd_store_errors_total{op,code}``
counts the calls that raised, by the error's code (``unavailable`` is an outage; ``not_found``
or ``conflict`` are ordinary answers of the store).

Every method is the backend's own with a clock around it: same arguments, same result, same
exception. A failed or cancelled call is timed too, so a store that hangs before it fails
shows in the histogram's upper buckets, not as a gap. Each method is one line handing its
call to :meth:`TimedStore._timed`, which holds the clock; the cost per call is two
``perf_counter()`` calls, one histogram update and two more coroutine frames, about 0.4 us
(``get_user`` on the memory store, best of 5 x 200,000 calls). The methods are written out
one by one rather than generated, so that mypy checks each signature against
:class:`~chatd.store.base.Store`; :class:`Store` being abstract makes a method added there and
forgotten here fail when the app is built.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Coroutine, Sequence
from time import perf_counter
from typing import Any, TypeVar

from chatd.errors import ChatError
from chatd.metrics import Histogram
from chatd.models import (
    AppendResult,
    Contact,
    Conversation,
    ConversationSummary,
    GroupChange,
    MarkerKind,
    MediaItem,
    Member,
    Message,
    NewMessage,
    PushSubscription,
    Session,
    User,
)
from chatd.store.base import Store

T = TypeVar("T")


class TimedStore(Store):
    """Wraps ``inner``; ``seconds[op]`` and ``errors[(op, code)]`` are filled as calls end.

    Args:
        inner: the backend. ``start`` and ``close`` are passed through untimed.
        seconds: where to keep one histogram per timed method (created here, by name);
            ``Metrics.store_seconds`` in the app.
        errors: where to count failed calls by ``(method, error code)``; the code of a
            :class:`~chatd.errors.ChatError`, ``internal`` for any other exception.
    """

    def __init__(
        self,
        inner: Store,
        seconds: dict[str, Histogram] | None = None,
        errors: Counter[tuple[str, str]] | None = None,
    ) -> None:
        self._inner = inner
        self.seconds = {} if seconds is None else seconds
        self.errors: Counter[tuple[str, str]] = Counter() if errors is None else errors
        for name in TIMED:
            self.seconds.setdefault(name, Histogram())

    async def _timed(self, op: str, call: Coroutine[Any, Any, T]) -> T:
        started = perf_counter()
        try:
            return await call
        except Exception as exc:
            self.errors[(op, exc.code if isinstance(exc, ChatError) else "internal")] += 1
            raise
        finally:
            self.seconds[op].observe(perf_counter() - started)

    # -- lifecycle: once per process, not timed ----------------------------------------------

    async def start(self) -> None:
        await self._inner.start()

    async def close(self) -> None:
        await self._inner.close()

    # -- every other method: timed -----------------------------------------------------------

    async def ping(self) -> None:
        await self._timed("ping", self._inner.ping())

    async def create_user(self, username: str, password_hash: str, created_at: int) -> User:
        return await self._timed(
            "create_user", self._inner.create_user(username, password_hash, created_at)
        )

    async def get_user(self, username: str) -> User | None:
        return await self._timed("get_user", self._inner.get_user(username))

    async def existing_users(self, usernames: Collection[str]) -> set[str]:
        return await self._timed("existing_users", self._inner.existing_users(usernames))

    async def set_user_disabled(
        self, username: str, disabled: bool, *, revoked_at: int | None = None
    ) -> None:
        await self._timed(
            "set_user_disabled",
            self._inner.set_user_disabled(username, disabled, revoked_at=revoked_at),
        )

    async def set_password_hash(self, username: str, password_hash: str) -> None:
        await self._timed(
            "set_password_hash", self._inner.set_password_hash(username, password_hash)
        )

    async def set_last_seen(self, username: str, ts: int) -> None:
        await self._timed("set_last_seen", self._inner.set_last_seen(username, ts))

    async def create_session(self, session: Session) -> None:
        await self._timed("create_session", self._inner.create_session(session))

    async def get_session(self, token_hash: str) -> Session | None:
        return await self._timed("get_session", self._inner.get_session(token_hash))

    async def extend_session(self, token_hash: str, expires_at: int) -> None:
        await self._timed("extend_session", self._inner.extend_session(token_hash, expires_at))

    async def delete_session(self, token_hash: str) -> Session | None:
        return await self._timed("delete_session", self._inner.delete_session(token_hash))

    async def delete_user_sessions(
        self, username: str, *, revoked_at: int | None = None
    ) -> list[str]:
        return await self._timed(
            "delete_user_sessions",
            self._inner.delete_user_sessions(username, revoked_at=revoked_at),
        )

    async def users_revoked_since(self, since: int) -> list[tuple[str, int]]:
        return await self._timed("users_revoked_since", self._inner.users_revoked_since(since))

    async def get_or_create_direct(
        self, user_a: str, user_b: str, new_conv_id: str, now: int
    ) -> tuple[Conversation, bool]:
        return await self._timed(
            "get_or_create_direct",
            self._inner.get_or_create_direct(user_a, user_b, new_conv_id, now),
        )

    async def create_group(
        self, conv_id: str, title: str, members: Sequence[tuple[str, str]], system: NewMessage
    ) -> AppendResult:
        return await self._timed(
            "create_group", self._inner.create_group(conv_id, title, members, system)
        )

    async def get_conversation(self, conv: str) -> Conversation | None:
        return await self._timed("get_conversation", self._inner.get_conversation(conv))

    async def get_members(self, conv: str) -> list[Member]:
        return await self._timed("get_members", self._inner.get_members(conv))

    async def get_member(self, conv: str, user: str) -> Member | None:
        return await self._timed("get_member", self._inner.get_member(conv, user))

    async def apply_group_change(
        self, conv: str, expected_version: int, change: GroupChange, system: NewMessage
    ) -> AppendResult:
        return await self._timed(
            "apply_group_change",
            self._inner.apply_group_change(conv, expected_version, change, system),
        )

    async def list_conversations(self, user: str) -> list[ConversationSummary]:
        return await self._timed("list_conversations", self._inner.list_conversations(user))

    async def append_message(self, message: NewMessage) -> AppendResult:
        return await self._timed("append_message", self._inner.append_message(message))

    async def history(
        self, conv: str, *, before: int | None, after: int | None, limit: int
    ) -> tuple[list[Message], bool]:
        return await self._timed(
            "history", self._inner.history(conv, before=before, after=after, limit=limit)
        )

    async def set_marker(self, conv: str, user: str, kind: MarkerKind, seq: int) -> Member | None:
        return await self._timed("set_marker", self._inner.set_marker(conv, user, kind, seq))

    async def set_muted(self, conv: str, user: str, muted: bool) -> None:
        await self._timed("set_muted", self._inner.set_muted(conv, user, muted))

    async def add_contact(self, owner: str, contact: str) -> None:
        await self._timed("add_contact", self._inner.add_contact(owner, contact))

    async def remove_contact(self, owner: str, contact: str) -> None:
        await self._timed("remove_contact", self._inner.remove_contact(owner, contact))

    async def list_contacts(self, owner: str) -> list[Contact]:
        return await self._timed("list_contacts", self._inner.list_contacts(owner))

    async def followers(self, user: str) -> list[str]:
        return await self._timed("followers", self._inner.followers(user))

    async def create_media(self, item: MediaItem) -> None:
        await self._timed("create_media", self._inner.create_media(item))

    async def get_media(self, media_id: str) -> MediaItem | None:
        return await self._timed("get_media", self._inner.get_media(media_id))

    async def media_visible_to(self, media_id: str, user: str) -> bool:
        return await self._timed("media_visible_to", self._inner.media_visible_to(media_id, user))

    async def add_push_subscription(self, sub: PushSubscription) -> None:
        await self._timed("add_push_subscription", self._inner.add_push_subscription(sub))

    async def delete_push_subscription(self, user: str, sub_id: str) -> bool:
        return await self._timed(
            "delete_push_subscription", self._inner.delete_push_subscription(user, sub_id)
        )

    async def push_subscriptions(self, users: Collection[str]) -> list[PushSubscription]:
        return await self._timed("push_subscriptions", self._inner.push_subscriptions(users))

    async def delete_push_subscription_by_id(self, sub_id: str) -> None:
        await self._timed(
            "delete_push_subscription_by_id", self._inner.delete_push_subscription_by_id(sub_id)
        )


TIMED: tuple[str, ...] = tuple(
    sorted(name for name in Store.__abstractmethods__ if name not in ("close",))
)
"""The methods timed: every abstract method of :class:`Store` but ``close``."""
