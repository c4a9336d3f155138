"""``memory://``: the whole store in plain dicts, for tests and for trying chatd out.

Every method runs to completion without awaiting anything, so on one event loop each call is
atomic exactly like a transaction of a real backend. Records handed out are the frozen
dataclasses of :mod:`chatd.models`; the mutable bookkeeping stays private.
"""

from __future__ import annotations

import copy
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field, replace

from chatd.errors import BadRequest, Conflict, NotFound, StaleVersion, Unavailable
from chatd.models import (
    ROLES,
    AppendResult,
    Contact,
    Conversation,
    ConversationKind,
    ConversationSummary,
    GroupChange,
    MarkerKind,
    MediaItem,
    Member,
    Message,
    NewMessage,
    PushSubscription,
    Role,
    Session,
    User,
)
from chatd.store.base import Store, newest_first


@dataclass(slots=True)
class _MemberState:
    role: Role
    joined_at: int
    delivered: int = 0
    read: int = 0
    muted: bool = False

    def freeze(self, user: str) -> Member:
        return Member(user, self.role, self.joined_at, self.delivered, self.read, self.muted)


@dataclass(slots=True)
class _ConvState:
    conv: str
    kind: ConversationKind
    title: str | None
    created_at: int
    last_ts: int
    version: int = 0
    # messages[i] has seq i + 1: seqs are gapless, so a list is the index.
    messages: list[Message] = field(default_factory=list)
    # dicts keep insertion order, which is join order.
    members: dict[str, _MemberState] = field(default_factory=dict)

    def freeze(self) -> Conversation:
        return Conversation(
            self.conv, self.kind, self.title, self.created_at, len(self.messages), self.version
        )


def _check_role(role: str) -> Role:
    if role not in ROLES:
        raise BadRequest(f"unknown role {role!r}")
    return role


class MemoryStore(Store):
    """The reference implementation of :class:`chatd.store.base.Store`, held in memory."""

    def __init__(self, url: str = "memory://") -> None:
        self.url = url
        self._closed = False
        self._users: dict[str, User] = {}
        self._sessions: dict[str, Session] = {}
        self._convs: dict[str, _ConvState] = {}
        self._direct: dict[tuple[str, str], str] = {}
        self._by_client_id: dict[tuple[str, str], tuple[str, int]] = {}
        self._user_convs: dict[str, set[str]] = {}
        self._contacts: dict[str, set[str]] = {}
        self._media: dict[str, MediaItem] = {}
        self._media_convs: dict[str, set[str]] = {}
        self._push: dict[str, PushSubscription] = {}
        self._revoked_at: dict[str, int] = {}

    # -- lifecycle -------------------------------------------------------------------------

    async def close(self) -> None:
        self._closed = True

    async def ping(self) -> None:
        self._check_open()

    def _check_open(self) -> None:
        if self._closed:
            raise Unavailable("the store is closed")

    # -- users and sessions ----------------------------------------------------------------

    async def create_user(self, username: str, password_hash: str, created_at: int) -> User:
        self._check_open()
        if username in self._users:
            raise Conflict(f"the username {username!r} is taken")
        user = User(username, password_hash, created_at)
        self._users[username] = user
        return user

    async def get_user(self, username: str) -> User | None:
        self._check_open()
        return self._users.get(username)

    async def existing_users(self, usernames: Collection[str]) -> set[str]:
        self._check_open()
        found = set()
        for name in usernames:
            user = self._users.get(name)
            if user is not None and not user.disabled:
                found.add(name)
        return found

    def _user_or_404(self, username: str) -> User:
        user = self._users.get(username)
        if user is None:
            raise NotFound(f"no user {username!r}")
        return user

    async def set_user_disabled(
        self, username: str, disabled: bool, *, revoked_at: int | None = None
    ) -> None:
        self._check_open()
        user = self._user_or_404(username)
        self._users[username] = replace(user, disabled=disabled)
        if disabled:
            self._drop_sessions(username)
            if revoked_at is not None:
                self._revoked_at[username] = revoked_at

    async def set_password_hash(self, username: str, password_hash: str) -> None:
        self._check_open()
        user = self._user_or_404(username)
        self._users[username] = replace(user, password_hash=password_hash)

    async def set_last_seen(self, username: str, ts: int) -> None:
        self._check_open()
        user = self._users.get(username)
        if user is not None:
            self._users[username] = replace(user, last_seen=ts)

    async def create_session(self, session: Session) -> None:
        self._check_open()
        if session.token_hash in self._sessions:
            raise Conflict("session exists")
        self._sessions[session.token_hash] = session

    async def get_session(self, token_hash: str) -> Session | None:
        self._check_open()
        return self._sessions.get(token_hash)

    async def extend_session(self, token_hash: str, expires_at: int) -> None:
        self._check_open()
        session = self._sessions.get(token_hash)
        if session is not None:
            self._sessions[token_hash] = replace(session, expires_at=expires_at)

    async def delete_session(self, token_hash: str) -> Session | None:
        self._check_open()
        return self._sessions.pop(token_hash, None)

    async def delete_user_sessions(
        self, username: str, *, revoked_at: int | None = None
    ) -> list[str]:
        self._check_open()
        if revoked_at is not None and username in self._users:
            self._revoked_at[username] = revoked_at
        return self._drop_sessions(username)

    async def users_revoked_since(self, since: int) -> list[tuple[str, int]]:
        self._check_open()
        revoked = [(user, at) for user, at in self._revoked_at.items() if at >= since]
        return sorted(revoked, key=lambda pair: (pair[1], pair[0]))

    def _drop_sessions(self, username: str) -> list[str]:
        tokens = [t for t, s in self._sessions.items() if s.user == username]
        for token in tokens:
            del self._sessions[token]
        return tokens

    # -- conversations ---------------------------------------------------------------------

    async def get_or_create_direct(
        self, user_a: str, user_b: str, new_conv_id: str, now: int
    ) -> tuple[Conversation, bool]:
        self._check_open()
        if user_a == user_b:
            raise BadRequest("a direct conversation needs two different users")
        lo, hi = sorted((user_a, user_b))
        existing = self._direct.get((lo, hi))
        if existing is not None:
            return self._convs[existing].freeze(), False
        if new_conv_id in self._convs:
            raise Conflict(f"conversation {new_conv_id!r} exists")
        state = _ConvState(new_conv_id, "direct", None, now, now)
        for user in (user_a, user_b):
            state.members[user] = _MemberState("member", now)
            self._user_convs.setdefault(user, set()).add(new_conv_id)
        self._convs[new_conv_id] = state
        self._direct[(lo, hi)] = new_conv_id
        self._contacts.setdefault(user_a, set()).add(user_b)
        self._contacts.setdefault(user_b, set()).add(user_a)
        return state.freeze(), True

    async def create_group(
        self,
        conv_id: str,
        title: str,
        members: Sequence[tuple[str, str]],
        system: NewMessage,
    ) -> AppendResult:
        self._check_open()
        if conv_id in self._convs:
            raise Conflict(f"conversation {conv_id!r} exists")
        state = _ConvState(conv_id, "group", title, system.ts, system.ts)
        for user, role in members:
            if user in state.members:
                raise BadRequest(f"{user!r} is listed twice")
            state.members[user] = _MemberState(_check_role(role), system.ts)
        self._check_client_id(system)
        self._convs[conv_id] = state
        for user in state.members:
            self._user_convs.setdefault(user, set()).add(conv_id)
        message = self._append(state, replace(system, conv=conv_id))
        return AppendResult(message, False, tuple(state.members))

    async def get_conversation(self, conv: str) -> Conversation | None:
        self._check_open()
        state = self._convs.get(conv)
        return state.freeze() if state is not None else None

    async def get_members(self, conv: str) -> list[Member]:
        self._check_open()
        state = self._convs.get(conv)
        if state is None:
            return []
        return [m.freeze(user) for user, m in state.members.items()]

    async def get_member(self, conv: str, user: str) -> Member | None:
        self._check_open()
        state = self._convs.get(conv)
        member = state.members.get(user) if state is not None else None
        return member.freeze(user) if member is not None else None

    async def apply_group_change(
        self, conv: str, expected_version: int, change: GroupChange, system: NewMessage
    ) -> AppendResult:
        self._check_open()
        state = self._convs.get(conv)
        if state is None:
            raise NotFound("no such conversation")
        if state.kind != "group":
            raise BadRequest("only a group can be changed")
        if state.version != expected_version:
            raise StaleVersion("the group changed; retry")
        # Validate everything before touching anything: the change is all or nothing.
        for _, role in (*change.add, *change.roles):
            _check_role(role)
        self._check_client_id(system)
        removed: list[str] = []
        for user in change.remove:
            if state.members.pop(user, None) is not None:
                removed.append(user)
                self._user_convs.get(user, set()).discard(conv)
        for user, role in change.add:
            if user not in state.members:
                state.members[user] = _MemberState(role, system.ts)
                self._user_convs.setdefault(user, set()).add(conv)
        for user, role in change.roles:
            member = state.members.get(user)
            if member is not None:
                member.role = role
        if change.title is not None:
            state.title = change.title
        state.version += 1
        message = self._append(state, replace(system, conv=conv))
        return AppendResult(message, False, (*state.members, *removed))

    async def list_conversations(self, user: str) -> list[ConversationSummary]:
        self._check_open()
        summaries = []
        for conv in self._user_convs.get(user, ()):
            state = self._convs[conv]
            me = state.members[user]
            last_seq = len(state.messages)
            # Own messages are always at or below the own read marker (sending moves it),
            # except after a rejoin, so counting them from the marker on is short.
            own_after = sum(1 for m in state.messages[me.read :] if m.sender == user)
            summaries.append(
                ConversationSummary(
                    conversation=state.freeze(),
                    members=tuple(m.freeze(u) for u, m in state.members.items()),
                    last_message=state.messages[-1] if state.messages else None,
                    unread=max(0, last_seq - me.read - own_after),
                    last_activity=state.last_ts,
                )
            )
        newest_first(summaries)
        return summaries

    # -- messages and markers --------------------------------------------------------------

    async def append_message(self, message: NewMessage) -> AppendResult:
        self._check_open()
        state = self._convs.get(message.conv)
        if state is None or message.sender not in state.members:
            raise NotFound("no such conversation")
        if message.client_id is not None:
            first = self._by_client_id.get((message.sender, message.client_id))
            if first is not None:
                conv, seq = first
                original = self._convs[conv]
                return AppendResult(original.messages[seq - 1], True, tuple(original.members))
        stored = self._append(state, message)
        return AppendResult(stored, False, tuple(state.members))

    def _check_client_id(self, message: NewMessage) -> None:
        if (
            message.client_id is not None
            and (message.sender, message.client_id) in self._by_client_id
        ):
            raise Conflict("client_id already used")

    def _append(self, state: _ConvState, new: NewMessage) -> Message:
        seq = len(state.messages) + 1
        message = Message(
            conv=state.conv,
            seq=seq,
            msg_id=new.msg_id,
            kind=new.kind,
            sender=new.sender,
            client_id=new.client_id,
            ts=new.ts,
            body=new.body,
            media=tuple(new.media),
            reply_to=new.reply_to,
            # A private copy: the caller keeps no handle on what the store holds.
            event=copy.deepcopy(new.event) if new.event is not None else None,
        )
        state.messages.append(message)
        state.last_ts = new.ts
        if new.client_id is not None:
            self._by_client_id[(new.sender, new.client_id)] = (state.conv, seq)
        for item in new.media:
            self._media_convs.setdefault(item.id, set()).add(state.conv)
        sender = state.members.get(new.sender)
        if sender is not None:
            sender.delivered = max(sender.delivered, seq)
            sender.read = max(sender.read, seq)
        return message

    async def history(
        self, conv: str, *, before: int | None, after: int | None, limit: int
    ) -> tuple[list[Message], bool]:
        self._check_open()
        if limit < 1:
            raise BadRequest("limit must be at least 1")
        state = self._convs.get(conv)
        if state is None:
            return [], False
        messages = state.messages  # index i holds seq i + 1
        hi = len(messages) if before is None else max(0, min(before - 1, len(messages)))
        lo = 0 if after is None else max(0, min(after, len(messages)))
        if hi <= lo:
            return [], False
        if after is not None:
            end = min(hi, lo + limit)
            return messages[lo:end], end < hi
        start = max(lo, hi - limit)
        return messages[start:hi], start > lo

    async def set_marker(self, conv: str, user: str, kind: MarkerKind, seq: int) -> Member | None:
        self._check_open()
        state = self._convs.get(conv)
        member = state.members.get(user) if state is not None else None
        if state is None or member is None:
            raise NotFound("no such conversation")
        if seq < 0 or seq > len(state.messages):
            raise BadRequest(f"seq {seq} is past the end of the conversation")
        moved = False
        if kind == "read" and seq > member.read:
            member.read = seq
            moved = True
        if seq > member.delivered:
            member.delivered = seq
            moved = True
        return member.freeze(user) if moved else None

    async def set_muted(self, conv: str, user: str, muted: bool) -> None:
        self._check_open()
        state = self._convs.get(conv)
        member = state.members.get(user) if state is not None else None
        if member is None:
            raise NotFound("no such conversation")
        member.muted = muted

    # -- contacts --------------------------------------------------------------------------

    async def add_contact(self, owner: str, contact: str) -> None:
        self._check_open()
        self._contacts.setdefault(owner, set()).add(contact)

    async def remove_contact(self, owner: str, contact: str) -> None:
        self._check_open()
        self._contacts.get(owner, set()).discard(contact)

    async def list_contacts(self, owner: str) -> list[Contact]:
        self._check_open()
        contacts = []
        for name in sorted(self._contacts.get(owner, ())):
            user = self._users.get(name)
            contacts.append(Contact(name, user.last_seen if user is not None else None))
        return contacts

    async def followers(self, user: str) -> list[str]:
        self._check_open()
        return sorted(owner for owner, contacts in self._contacts.items() if user in contacts)

    # -- media -----------------------------------------------------------------------------

    async def create_media(self, item: MediaItem) -> None:
        self._check_open()
        if item.id in self._media:
            raise Conflict(f"media {item.id!r} exists")
        self._media[item.id] = item

    async def get_media(self, media_id: str) -> MediaItem | None:
        self._check_open()
        return self._media.get(media_id)

    async def media_visible_to(self, media_id: str, user: str) -> bool:
        self._check_open()
        item = self._media.get(media_id)
        if item is not None and item.uploader == user:
            return True
        return any(
            user in self._convs[conv].members for conv in self._media_convs.get(media_id, ())
        )

    # -- push subscriptions ----------------------------------------------------------------

    async def add_push_subscription(self, sub: PushSubscription) -> None:
        self._check_open()
        self._push[sub.id] = replace(sub, data=copy.deepcopy(sub.data))

    async def delete_push_subscription(self, user: str, sub_id: str) -> bool:
        self._check_open()
        sub = self._push.get(sub_id)
        if sub is None or sub.user != user:
            return False
        del self._push[sub_id]
        return True

    async def push_subscriptions(self, users: Collection[str]) -> list[PushSubscription]:
        self._check_open()
        wanted = set(users)
        subs = [s for s in self._push.values() if s.user in wanted]
        subs.sort(key=lambda s: (s.user, s.created_at, s.id))
        return subs

    async def delete_push_subscription_by_id(self, sub_id: str) -> None:
        self._check_open()
        self._push.pop(sub_id, None)
