"""``TimedStore``: any store backend, timed call by call for ``/metrics``.

:func:`chatd.app.build_app` wraps whatever :func:`chatd.store.open_store` built, so every
backend (memory, SQLite, PostgreSQL, MongoDB) is measured the same way without any of them
knowing: ``chatd_store_seconds{op}`` is how long each call took as its caller saw it (queueing
for a connection or for the SQLite writer included), and ``chatd_store_errors_total{op,code}``
counts the calls that raised, by the error's code (``unavailable`` is an outage; ``not_found``
or ``conflict`` are ordinary answers of the store).

Every method is the backend's own with a clock around it: same arguments, same result, same
exception. A failed or cancelled call is timed too, so a store that hangs before it fails
shows in the histogram's upper buckets, not as a gap. The cost per call is two
``perf_counter()`` calls, one histogram update and one more coroutine frame (see the commit
that added this module for the measured figure); nothing is allocated per call but the
timestamps. The methods are written out one by one rather than generated, so that mypy checks
each signature against :class:`~chatd.store.base.Store` and no ``*args`` tuple is built per
call; :class:`Store` being abstract makes a method added there and forgotten here fail when
the app is built.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Sequence
from time import perf_counter

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

    def _failed(self, op: str, exc: Exception) -> None:
        self.errors[(op, exc.code if isinstance(exc, ChatError) else "internal")] += 1

    # -- lifecycle: once per process, not timed ----------------------------------------------

    async def start(self) -> None:
        await self._inner.start()

    async def close(self) -> None:
        await self._inner.close()

    # -- every other method: timed -----------------------------------------------------------

    async def ping(self) -> None:
        started = perf_counter()
        try:
            await self._inner.ping()
        except Exception as exc:
            self._failed("ping", exc)
            raise
        finally:
            self.seconds["ping"].observe(perf_counter() - started)

    async def create_user(self, username: str, password_hash: str, created_at: int) -> User:
        started = perf_counter()
        try:
            return await self._inner.create_user(username, password_hash, created_at)
        except Exception as exc:
            self._failed("create_user", exc)
            raise
        finally:
            self.seconds["create_user"].observe(perf_counter() - started)

    async def get_user(self, username: str) -> User | None:
        started = perf_counter()
        try:
            return await self._inner.get_user(username)
        except Exception as exc:
            self._failed("get_user", exc)
            raise
        finally:
            self.seconds["get_user"].observe(perf_counter() - started)

    async def existing_users(self, usernames: Collection[str]) -> set[str]:
        started = perf_counter()
        try:
            return await self._inner.existing_users(usernames)
        except Exception as exc:
            self._failed("existing_users", exc)
            raise
        finally:
            self.seconds["existing_users"].observe(perf_counter() - started)

    async def set_user_disabled(
        self, username: str, disabled: bool, *, revoked_at: int | None = None
    ) -> None:
        started = perf_counter()
        try:
            await self._inner.set_user_disabled(username, disabled, revoked_at=revoked_at)
        except Exception as exc:
            self._failed("set_user_disabled", exc)
            raise
        finally:
            self.seconds["set_user_disabled"].observe(perf_counter() - started)

    async def set_password_hash(self, username: str, password_hash: str) -> None:
        started = perf_counter()
        try:
            await self._inner.set_password_hash(username, password_hash)
        except Exception as exc:
            self._failed("set_password_hash", exc)
            raise
        finally:
            self.seconds["set_password_hash"].observe(perf_counter() - started)

    async def set_last_seen(self, username: str, ts: int) -> None:
        started = perf_counter()
        try:
            await self._inner.set_last_seen(username, ts)
        except Exception as exc:
            self._failed("set_last_seen", exc)
            raise
        finally:
            self.seconds["set_last_seen"].observe(perf_counter() - started)

    async def create_session(self, session: Session) -> None:
        started = perf_counter()
        try:
            await self._inner.create_session(session)
        except Exception as exc:
            self._failed("create_session", exc)
            raise
        finally:
            self.seconds["create_session"].observe(perf_counter() - started)

    async def get_session(self, token_hash: str) -> Session | None:
        started = perf_counter()
        try:
            return await self._inner.get_session(token_hash)
        except Exception as exc:
            self._failed("get_session", exc)
            raise
        finally:
            self.seconds["get_session"].observe(perf_counter() - started)

    async def extend_session(self, token_hash: str, expires_at: int) -> None:
        started = perf_counter()
        try:
            await self._inner.extend_session(token_hash, expires_at)
        except Exception as exc:
            self._failed("extend_session", exc)
            raise
        finally:
            self.seconds["extend_session"].observe(perf_counter() - started)

    async def delete_session(self, token_hash: str) -> Session | None:
        started = perf_counter()
        try:
            return await self._inner.delete_session(token_hash)
        except Exception as exc:
            self._failed("delete_session", exc)
            raise
        finally:
            self.seconds["delete_session"].observe(perf_counter() - started)

    async def delete_user_sessions(
        self, username: str, *, revoked_at: int | None = None
    ) -> list[str]:
        started = perf_counter()
        try:
            return await self._inner.delete_user_sessions(username, revoked_at=revoked_at)
        except Exception as exc:
            self._failed("delete_user_sessions", exc)
            raise
        finally:
            self.seconds["delete_user_sessions"].observe(perf_counter() - started)

    async def users_revoked_since(self, since: int) -> list[tuple[str, int]]:
        started = perf_counter()
        try:
            return await self._inner.users_revoked_since(since)
        except Exception as exc:
            self._failed("users_revoked_since", exc)
            raise
        finally:
            self.seconds["users_revoked_since"].observe(perf_counter() - started)

    async def get_or_create_direct(
        self, user_a: str, user_b: str, new_conv_id: str, now: int
    ) -> tuple[Conversation, bool]:
        started = perf_counter()
        try:
            return await self._inner.get_or_create_direct(user_a, user_b, new_conv_id, now)
        except Exception as exc:
            self._failed("get_or_create_direct", exc)
            raise
        finally:
            self.seconds["get_or_create_direct"].observe(perf_counter() - started)

    async def create_group(
        self, conv_id: str, title: str, members: Sequence[tuple[str, str]], system: NewMessage
    ) -> AppendResult:
        started = perf_counter()
        try:
            return await self._inner.create_group(conv_id, title, members, system)
        except Exception as exc:
            self._failed("create_group", exc)
            raise
        finally:
            self.seconds["create_group"].observe(perf_counter() - started)

    async def get_conversation(self, conv: str) -> Conversation | None:
        started = perf_counter()
        try:
            return await self._inner.get_conversation(conv)
        except Exception as exc:
            self._failed("get_conversation", exc)
            raise
        finally:
            self.seconds["get_conversation"].observe(perf_counter() - started)

    async def get_members(self, conv: str) -> list[Member]:
        started = perf_counter()
        try:
            return await self._inner.get_members(conv)
        except Exception as exc:
            self._failed("get_members", exc)
            raise
        finally:
            self.seconds["get_members"].observe(perf_counter() - started)

    async def get_member(self, conv: str, user: str) -> Member | None:
        started = perf_counter()
        try:
            return await self._inner.get_member(conv, user)
        except Exception as exc:
            self._failed("get_member", exc)
            raise
        finally:
            self.seconds["get_member"].observe(perf_counter() - started)

    async def apply_group_change(
        self, conv: str, expected_version: int, change: GroupChange, system: NewMessage
    ) -> AppendResult:
        started = perf_counter()
        try:
            return await self._inner.apply_group_change(conv, expected_version, change, system)
        except Exception as exc:
            self._failed("apply_group_change", exc)
            raise
        finally:
            self.seconds["apply_group_change"].observe(perf_counter() - started)

    async def list_conversations(self, user: str) -> list[ConversationSummary]:
        started = perf_counter()
        try:
            return await self._inner.list_conversations(user)
        except Exception as exc:
            self._failed("list_conversations", exc)
            raise
        finally:
            self.seconds["list_conversations"].observe(perf_counter() - started)

    async def append_message(self, message: NewMessage) -> AppendResult:
        started = perf_counter()
        try:
            return await self._inner.append_message(message)
        except Exception as exc:
            self._failed("append_message", exc)
            raise
        finally:
            self.seconds["append_message"].observe(perf_counter() - started)

    async def history(
        self, conv: str, *, before: int | None, after: int | None, limit: int
    ) -> tuple[list[Message], bool]:
        started = perf_counter()
        try:
            return await self._inner.history(conv, before=before, after=after, limit=limit)
        except Exception as exc:
            self._failed("history", exc)
            raise
        finally:
            self.seconds["history"].observe(perf_counter() - started)

    async def set_marker(self, conv: str, user: str, kind: MarkerKind, seq: int) -> Member | None:
        started = perf_counter()
        try:
            return await self._inner.set_marker(conv, user, kind, seq)
        except Exception as exc:
            self._failed("set_marker", exc)
            raise
        finally:
            self.seconds["set_marker"].observe(perf_counter() - started)

    async def set_muted(self, conv: str, user: str, muted: bool) -> None:
        started = perf_counter()
        try:
            await self._inner.set_muted(conv, user, muted)
        except Exception as exc:
            self._failed("set_muted", exc)
            raise
        finally:
            self.seconds["set_muted"].observe(perf_counter() - started)

    async def add_contact(self, owner: str, contact: str) -> None:
        started = perf_counter()
        try:
            await self._inner.add_contact(owner, contact)
        except Exception as exc:
            self._failed("add_contact", exc)
            raise
        finally:
            self.seconds["add_contact"].observe(perf_counter() - started)

    async def remove_contact(self, owner: str, contact: str) -> None:
        started = perf_counter()
        try:
            await self._inner.remove_contact(owner, contact)
        except Exception as exc:
            self._failed("remove_contact", exc)
            raise
        finally:
            self.seconds["remove_contact"].observe(perf_counter() - started)

    async def list_contacts(self, owner: str) -> list[Contact]:
        started = perf_counter()
        try:
            return await self._inner.list_contacts(owner)
        except Exception as exc:
            self._failed("list_contacts", exc)
            raise
        finally:
            self.seconds["list_contacts"].observe(perf_counter() - started)

    async def followers(self, user: str) -> list[str]:
        started = perf_counter()
        try:
            return await self._inner.followers(user)
        except Exception as exc:
            self._failed("followers", exc)
            raise
        finally:
            self.seconds["followers"].observe(perf_counter() - started)

    async def create_media(self, item: MediaItem) -> None:
        started = perf_counter()
        try:
            await self._inner.create_media(item)
        except Exception as exc:
            self._failed("create_media", exc)
            raise
        finally:
            self.seconds["create_media"].observe(perf_counter() - started)

    async def get_media(self, media_id: str) -> MediaItem | None:
        started = perf_counter()
        try:
            return await self._inner.get_media(media_id)
        except Exception as exc:
            self._failed("get_media", exc)
            raise
        finally:
            self.seconds["get_media"].observe(perf_counter() - started)

    async def media_visible_to(self, media_id: str, user: str) -> bool:
        started = perf_counter()
        try:
            return await self._inner.media_visible_to(media_id, user)
        except Exception as exc:
            self._failed("media_visible_to", exc)
            raise
        finally:
            self.seconds["media_visible_to"].observe(perf_counter() - started)

    async def add_push_subscription(self, sub: PushSubscription) -> None:
        started = perf_counter()
        try:
            await self._inner.add_push_subscription(sub)
        except Exception as exc:
            self._failed("add_push_subscription", exc)
            raise
        finally:
            self.seconds["add_push_subscription"].observe(perf_counter() - started)

    async def delete_push_subscription(self, user: str, sub_id: str) -> bool:
        started = perf_counter()
        try:
            return await self._inner.delete_push_subscription(user, sub_id)
        except Exception as exc:
            self._failed("delete_push_subscription", exc)
            raise
        finally:
            self.seconds["delete_push_subscription"].observe(perf_counter() - started)

    async def push_subscriptions(self, users: Collection[str]) -> list[PushSubscription]:
        started = perf_counter()
        try:
            return await self._inner.push_subscriptions(users)
        except Exception as exc:
            self._failed("push_subscriptions", exc)
            raise
        finally:
            self.seconds["push_subscriptions"].observe(perf_counter() - started)

    async def delete_push_subscription_by_id(self, sub_id: str) -> None:
        started = perf_counter()
        try:
            await self._inner.delete_push_subscription_by_id(sub_id)
        except Exception as exc:
            self._failed("delete_push_subscription_by_id", exc)
            raise
        finally:
            self.seconds["delete_push_subscription_by_id"].observe(perf_counter() - started)


TIMED: tuple[str, ...] = tuple(
    sorted(name for name in Store.__abstractmethods__ if name not in ("close",))
)
"""The methods timed: every abstract method of :class:`Store` but ``close``."""
