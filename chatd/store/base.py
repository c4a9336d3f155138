"""The store interface: the durable truth of chatd.

One abstract class, one module per backend (``memory``, ``sqlite``, ``postgres``, ``mongodb``),
chosen by URL in :func:`chatd.store.open_store`. Every backend passes the same contract suite
(``tests/store/test_contract.py``).

What a backend must guarantee:

* ``append_message`` assigns the next ``seq`` of the conversation atomically and gaplessly, and
  only after the write is durable does it return. A second append with the same
  ``(sender, client_id)`` returns the first message with ``duplicate=True`` and stores nothing.
* Preconditions that must hold at the moment of the write (the sender is a current member, the
  group has not changed since the service read it) are checked inside the same transaction.
* Connection loss and timeouts surface as :class:`chatd.errors.Unavailable`, never as a hang.

Errors raised: ``NotFound`` (no such conversation, or the user is not a member), ``Conflict``
(a unique name is taken), ``StaleVersion`` (a group changed under ``apply_group_change``),
``BadRequest`` (a marker past ``last_seq``), ``Unavailable``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Collection, Sequence

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


class Store(ABC):
    """Users, sessions, conversations, members, messages, markers, contacts, media, push."""

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:  # noqa: B027 - optional hook; most backends need it
        """Connect and migrate. Raise :class:`chatd.errors.ConfigError` if unreachable."""

    @abstractmethod
    async def close(self) -> None: ...

    @abstractmethod
    async def ping(self) -> None:
        """Return when the backend answers; raise ``Unavailable`` otherwise."""

    # -- users and sessions ----------------------------------------------------------------

    @abstractmethod
    async def create_user(self, username: str, password_hash: str, created_at: int) -> User:
        """Raise ``Conflict`` if the (already case-folded) name is taken."""

    @abstractmethod
    async def get_user(self, username: str) -> User | None: ...

    @abstractmethod
    async def existing_users(self, usernames: Collection[str]) -> set[str]:
        """The subset of ``usernames`` that exist and are not disabled."""

    @abstractmethod
    async def set_user_disabled(
        self, username: str, disabled: bool, *, revoked_at: int | None = None
    ) -> None:
        """Raise ``NotFound`` for an unknown user. Disabling also deletes their sessions and,
        given ``revoked_at``, records it as when they were revoked (see
        :meth:`users_revoked_since`), in the same transaction."""

    @abstractmethod
    async def set_password_hash(self, username: str, password_hash: str) -> None:
        """Raise ``NotFound`` for an unknown user."""

    @abstractmethod
    async def set_last_seen(self, username: str, ts: int) -> None: ...

    @abstractmethod
    async def create_session(self, session: Session) -> None: ...

    @abstractmethod
    async def get_session(self, token_hash: str) -> Session | None:
        """The session, expired or not (the caller checks ``expires_at``)."""

    @abstractmethod
    async def extend_session(self, token_hash: str, expires_at: int) -> None: ...

    @abstractmethod
    async def delete_session(self, token_hash: str) -> Session | None:
        """Delete and return the session, or ``None`` if there was none."""

    @abstractmethod
    async def delete_user_sessions(
        self, username: str, *, revoked_at: int | None = None
    ) -> list[str]:
        """Delete every session of a user; return their token hashes. Given ``revoked_at``,
        also record it as when the user's sessions were revoked, in the same transaction."""

    @abstractmethod
    async def users_revoked_since(self, since: int) -> list[tuple[str, int]]:
        """``(username, revoked_at)`` of every user whose sessions were last revoked at or
        after ``since`` (ms), oldest first. Every server polls this, so that a revocation by
        another process (``chatd user disable`` has no bus) still closes its sockets."""

    # -- conversations ---------------------------------------------------------------------

    @abstractmethod
    async def get_or_create_direct(
        self, user_a: str, user_b: str, new_conv_id: str, now: int
    ) -> tuple[Conversation, bool]:
        """The direct conversation of the pair, created with ``new_conv_id`` if none exists.

        Creating it also makes each user a contact of the other. Returns ``(conv, created)``.
        At most one direct conversation exists per unordered pair, even under races.
        """

    @abstractmethod
    async def create_group(
        self,
        conv_id: str,
        title: str,
        members: Sequence[tuple[str, str]],
        system: NewMessage,
    ) -> AppendResult:
        """Create a group with ``members`` as ``(user, role)`` in join order, and append
        ``system`` (its ``conv`` is ``conv_id``) as seq 1, all in one transaction."""

    @abstractmethod
    async def get_conversation(self, conv: str) -> Conversation | None: ...

    @abstractmethod
    async def get_members(self, conv: str) -> list[Member]:
        """Current members in join order; empty for an unknown conversation."""

    @abstractmethod
    async def get_member(self, conv: str, user: str) -> Member | None: ...

    @abstractmethod
    async def apply_group_change(
        self, conv: str, expected_version: int, change: GroupChange, system: NewMessage
    ) -> AppendResult:
        """Apply ``change`` and append ``system`` in one transaction, if the conversation's
        ``version`` is still ``expected_version`` (else ``StaleVersion``). Bumps ``version``.
        ``members`` of the result lists the members after the change plus removed ones, so
        that they see their own removal."""

    @abstractmethod
    async def list_conversations(self, user: str) -> list[ConversationSummary]:
        """The user's conversations, newest activity first, with ``unread`` counting
        messages past the user's read marker that others sent."""

    # -- messages and markers --------------------------------------------------------------

    @abstractmethod
    async def append_message(self, message: NewMessage) -> AppendResult:
        """Append if ``message.sender`` is a current member (else ``NotFound``).

        Moves the sender's ``delivered`` and ``read`` markers to the new seq. Idempotent on
        ``(sender, client_id)``. Returns only once durable.
        """

    @abstractmethod
    async def history(
        self, conv: str, *, before: int | None, after: int | None, limit: int
    ) -> tuple[list[Message], bool]:
        """A page of messages in ascending seq and whether more exist past it.

        ``before``: the newest messages with seq < before. ``after``: the oldest with
        seq > after. Neither: the newest.
        """

    @abstractmethod
    async def set_marker(self, conv: str, user: str, kind: MarkerKind, seq: int) -> Member | None:
        """Raise a member's marker to ``seq``; ``read`` raises ``delivered`` too.

        Returns the member after the change, or ``None`` if nothing moved. ``NotFound`` if not
        a member; ``BadRequest`` if ``seq`` is past the conversation's ``last_seq``.
        """

    @abstractmethod
    async def set_muted(self, conv: str, user: str, muted: bool) -> None:
        """``NotFound`` if the user is not a member."""

    # -- contacts --------------------------------------------------------------------------

    @abstractmethod
    async def add_contact(self, owner: str, contact: str) -> None: ...

    @abstractmethod
    async def remove_contact(self, owner: str, contact: str) -> None: ...

    @abstractmethod
    async def list_contacts(self, owner: str) -> list[Contact]:
        """Sorted by username."""

    @abstractmethod
    async def followers(self, user: str) -> list[str]:
        """Users who have ``user`` as a contact."""

    # -- media -----------------------------------------------------------------------------

    @abstractmethod
    async def create_media(self, item: MediaItem) -> None: ...

    @abstractmethod
    async def get_media(self, media_id: str) -> MediaItem | None: ...

    @abstractmethod
    async def media_visible_to(self, media_id: str, user: str) -> bool:
        """True if ``user`` uploaded it or is a current member of a conversation where a
        message carries it."""

    # -- push subscriptions ----------------------------------------------------------------

    @abstractmethod
    async def add_push_subscription(self, sub: PushSubscription) -> None: ...

    @abstractmethod
    async def delete_push_subscription(self, user: str, sub_id: str) -> bool:
        """True if it existed and belonged to ``user``."""

    @abstractmethod
    async def push_subscriptions(self, users: Collection[str]) -> list[PushSubscription]: ...

    @abstractmethod
    async def delete_push_subscription_by_id(self, sub_id: str) -> None:
        """Used when a push endpoint answers 404/410."""


def newest_first(summaries: list[ConversationSummary]) -> list[ConversationSummary]:
    """Sort as ``list_conversations`` promises: newest activity first. Two conversations active
    in the same millisecond are told apart by their last messages' ids (snowflakes grow with
    time), so every device lists them in the same order."""
    summaries.sort(key=_activity, reverse=True)
    return summaries


def _activity(summary: ConversationSummary) -> tuple[int, int, str]:
    last = summary.last_message
    return (
        summary.last_activity,
        int(last.msg_id) if last is not None else 0,
        summary.conversation.conv,
    )
