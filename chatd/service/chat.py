"""The chat rules: sending, history, conversations, receipts, typing, groups, contacts.

Every public method takes the acting user first, checks what the protocol allows, asks the
store (the truth), and hands live events to the event sink. Nothing here awaits a delivery.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from chatd.errors import BadRequest, Conflict, Forbidden, NotFound, RateLimited, StaleVersion
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
    Role,
)
from chatd.service.limits import KeyedLimiter
from chatd.service.ports import Clock, EventSink, Notifier, NullNotifier, OnlineCheck
from chatd.store.base import Store

log = logging.getLogger(__name__)

MAX_MEDIA_PER_MESSAGE = 10
GROUP_CHANGE_ATTEMPTS = 5
DIRECT_CACHE_SIZE = 100_000


@dataclass(frozen=True, slots=True)
class SendResult:
    message: Message
    duplicate: bool


@dataclass(frozen=True, slots=True)
class ContactStatus:
    user: str
    online: bool
    last_seen: int | None


class ChatService:
    def __init__(
        self,
        store: Store,
        events: EventSink,
        clock: Clock,
        new_msg_id: Callable[[], int],
        new_conv_id: Callable[[], str],
        *,
        online: OnlineCheck,
        push: Notifier | None = None,
        connected_here: Callable[[str], bool] | None = None,
        max_group_members: int = 1000,
        messages_per_second: float = 20.0,
        message_burst: int = 200,
    ) -> None:
        self.store = store
        self.events = events
        self.clock = clock
        self.new_msg_id = new_msg_id
        self.new_conv_id = new_conv_id
        self.online_check = online
        self.push: Notifier = push or NullNotifier()
        # Members with a socket on this very server certainly need no push: filtering them
        # here keeps the common case (everyone online) off the push queue entirely.
        self.connected_here = connected_here or (lambda _user: False)
        self.max_group_members = max_group_members
        self._send_limit = KeyedLimiter(messages_per_second, message_burst)
        # A direct conversation never changes members, so the pair -> conv mapping is cached.
        self._direct: dict[tuple[str, str], str] = {}

    # -- sending -----------------------------------------------------------------------------

    async def send(
        self,
        user: str,
        *,
        conv: str | None,
        to: str | None,
        client_id: str,
        body: str,
        media_ids: Sequence[str] = (),
        reply_to: int | None = None,
        origin: object = None,
    ) -> SendResult:
        now = self.clock()
        wait = self._send_limit.take(user, now)
        if wait > 0:
            raise RateLimited("sending too fast", retry_after=wait)
        if to is not None:
            conv = await self._direct_conversation(user, to, now)
        assert conv is not None
        media = await self._own_media(user, media_ids) if media_ids else ()
        if reply_to is not None:
            # Membership first, so a reply_to never tells an outsider how long a
            # conversation is, or that it exists.
            await self._require_member(conv, user)
            conversation = await self.store.get_conversation(conv)
            if conversation is None or not 1 <= reply_to <= conversation.last_seq:
                raise BadRequest("reply_to must be the seq of a message in this conversation")
        result = await self.store.append_message(
            NewMessage(
                conv=conv,
                sender=user,
                msg_id=str(self.new_msg_id()),
                ts=now,
                client_id=client_id,
                body=body,
                media=media,
                reply_to=reply_to,
            )
        )
        if not result.duplicate:
            self.events.message(result.members, result.message, origin)
            here = self.connected_here
            others = [m for m in result.members if m != user and not here(m)]
            if others:
                self.push.notify(result.message, others, None)
        return SendResult(result.message, result.duplicate)

    async def _direct_conversation(self, user: str, to: str, now: int) -> str:
        if to == user:
            raise BadRequest("a direct conversation needs another user")
        pair = (user, to) if user < to else (to, user)
        conv = self._direct.get(pair)
        if conv is not None:
            return conv
        if not await self.store.existing_users([to]):
            raise NotFound(f"no user {to!r}")
        conversation, created = await self.store.get_or_create_direct(
            pair[0], pair[1], self.new_conv_id(), now
        )
        if len(self._direct) >= DIRECT_CACHE_SIZE:
            self._direct.clear()
        self._direct[pair] = conversation.conv
        if created:
            self.events.conversation(pair, conversation.conv, "direct", None)
        return conversation.conv

    async def _own_media(self, user: str, media_ids: Sequence[str]) -> tuple[MediaItem, ...]:
        if len(media_ids) > MAX_MEDIA_PER_MESSAGE:
            raise BadRequest(f"at most {MAX_MEDIA_PER_MESSAGE} media items per message")
        items = []
        for media_id in dict.fromkeys(media_ids):
            item = await self.store.get_media(media_id)
            if item is None or item.uploader != user:
                raise Forbidden(f"media {media_id!r} is not one of your uploads")
            items.append(item)
        return tuple(items)

    # -- reading -----------------------------------------------------------------------------

    async def _require_member(self, conv: str, user: str) -> Member:
        member = await self.store.get_member(conv, user)
        if member is None:
            # The same answer whether or not the conversation exists.
            raise NotFound("no such conversation")
        return member

    async def history(
        self, user: str, conv: str, *, before: int | None, after: int | None, limit: int
    ) -> tuple[list[Message], bool]:
        if before is not None and after is not None:
            raise BadRequest("give before or after, not both")
        if not 1 <= limit <= 100:
            raise BadRequest("limit must be from 1 to 100")
        await self._require_member(conv, user)
        return await self.store.history(conv, before=before, after=after, limit=limit)

    async def conversations(self, user: str) -> list[ConversationSummary]:
        return await self.store.list_conversations(user)

    # -- receipts and typing -----------------------------------------------------------------

    async def receipt(self, user: str, conv: str, kind: MarkerKind, seq: int) -> Member:
        member = await self.store.set_marker(conv, user, kind, seq)
        if member is None:
            current = await self._require_member(conv, user)
            return current
        members = await self.store.get_members(conv)
        ts = self.clock()
        users = [m.user for m in members]
        if kind == "read":
            self.events.receipt(users, conv, user, "read", member.read, ts)
        else:
            self.events.receipt(users, conv, user, "delivered", member.delivered, ts)
        return member

    async def typing(self, user: str, conv: str, state: str, origin: object = None) -> None:
        members = await self.store.get_members(conv)
        users = [m.user for m in members]
        if user not in users:
            raise NotFound("no such conversation")
        self.events.typing(users, conv, user, state, origin)

    async def set_muted(self, user: str, conv: str, muted: bool) -> None:
        await self.store.set_muted(conv, user, muted)

    # -- groups ------------------------------------------------------------------------------

    async def create_group(self, user: str, title: str, members: Iterable[str]) -> Conversation:
        invited = [m for m in dict.fromkeys(members) if m != user]
        if len(invited) + 1 > self.max_group_members:
            raise Conflict(f"a group has at most {self.max_group_members} members")
        await self._require_users(invited)
        conv_id = self.new_conv_id()
        now = self.clock()
        roster: list[tuple[str, str]] = [(user, "owner"), *((m, "member") for m in invited)]
        result = await self.store.create_group(
            conv_id,
            title,
            roster,
            self._system(
                conv_id, user, now, {"action": "create", "users": [user, *invited], "title": title}
            ),
        )
        self.events.conversation(result.members, conv_id, "group", title)
        self.events.message(result.members, result.message)
        conversation = await self.store.get_conversation(conv_id)
        assert conversation is not None
        return conversation

    async def add_members(self, user: str, conv: str, users: Iterable[str]) -> Message | None:
        wanted = list(dict.fromkeys(users))

        async def plan(group: Conversation, members: list[Member]) -> _Plan | None:
            self._require_admin(members, user)
            present = {m.user for m in members}
            new = [u for u in wanted if u not in present]
            if not new:
                return None
            if len(members) + len(new) > self.max_group_members:
                raise Conflict(f"a group has at most {self.max_group_members} members")
            await self._require_users(new)
            return _Plan(
                GroupChange(add=tuple((u, "member") for u in new)),
                {"action": "add", "users": new},
                added=new,
            )

        return await self._change_group(user, conv, plan)

    async def remove_member(self, user: str, conv: str, target: str) -> Message | None:
        if target == user:
            return await self.leave(user, conv)

        async def plan(group: Conversation, members: list[Member]) -> _Plan | None:
            actor = self._require_admin(members, user)
            victim = _find(members, target)
            if victim is None:
                raise NotFound(f"{target!r} is not a member")
            if victim.role == "owner" or (victim.role == "admin" and actor.role != "owner"):
                raise Forbidden("only the owner removes admins, and nobody removes the owner")
            return _Plan(GroupChange(remove=(target,)), {"action": "remove", "users": [target]})

        return await self._change_group(user, conv, plan)

    async def leave(self, user: str, conv: str) -> Message | None:
        async def plan(group: Conversation, members: list[Member]) -> _Plan | None:
            me = _find(members, user)
            if me is None:
                raise NotFound("no such conversation")
            roles: tuple[tuple[str, Role], ...] = ()
            event: dict[str, Any] = {"action": "leave", "users": [user]}
            if me.role == "owner":
                heir = _heir(members, user)
                if heir is not None:
                    roles = ((heir, "owner"),)
                    event["owner"] = heir
            return _Plan(GroupChange(remove=(user,), roles=roles), event)

        return await self._change_group(user, conv, plan)

    async def update_group(self, user: str, conv: str, title: str) -> Message | None:
        async def plan(group: Conversation, members: list[Member]) -> _Plan | None:
            self._require_admin(members, user)
            if group.title == title:
                return None
            # users: [] so that every system event has the protocol's users list.
            return _Plan(GroupChange(title=title), {"action": "title", "users": [], "title": title})

        return await self._change_group(user, conv, plan)

    async def set_role(self, user: str, conv: str, target: str, role: Role) -> Message | None:
        if role == "owner":
            raise BadRequest("ownership passes only when the owner leaves")

        async def plan(group: Conversation, members: list[Member]) -> _Plan | None:
            actor = self._require_member_of(members, user)
            if actor.role != "owner":
                raise Forbidden("only the owner sets roles")
            subject = _find(members, target)
            if subject is None:
                raise NotFound(f"{target!r} is not a member")
            if subject.role == "owner":
                raise Forbidden("the owner's role cannot be changed")
            if subject.role == role:
                return None
            return _Plan(
                GroupChange(roles=((target, role),)),
                {"action": "role", "users": [target], "role": role},
            )

        return await self._change_group(user, conv, plan)

    async def _change_group(
        self,
        user: str,
        conv: str,
        plan: Callable[[Conversation, list[Member]], Any],
    ) -> Message | None:
        """Read the group, let ``plan`` authorize and compute the change, write it if the group
        has not changed meanwhile; on a race, read again and re-plan."""
        for _attempt in range(GROUP_CHANGE_ATTEMPTS):
            group = await self.store.get_conversation(conv)
            members = await self.store.get_members(conv) if group is not None else []
            if group is None or _find(members, user) is None:
                raise NotFound("no such conversation")
            if group.kind != "group":
                raise BadRequest("this request applies to groups only")
            decided: _Plan | None = await plan(group, members)
            if decided is None:
                return None
            event = decided.event
            try:
                result: AppendResult = await self.store.apply_group_change(
                    conv,
                    group.version,
                    decided.change,
                    self._system(conv, user, self.clock(), event),
                )
            except StaleVersion:
                continue
            if decided.added:
                title = decided.change.title or group.title
                self.events.conversation(decided.added, conv, "group", title)
            self.events.message(result.members, result.message)
            return result.message
        raise Conflict("the group is changing too fast; try again")

    def _system(self, conv: str, actor: str, now: int, event: dict[str, Any]) -> NewMessage:
        return NewMessage(
            conv=conv,
            sender=actor,
            msg_id=str(self.new_msg_id()),
            ts=now,
            kind="system",
            event=event,
        )

    @staticmethod
    def _require_member_of(members: list[Member], user: str) -> Member:
        me = _find(members, user)
        if me is None:
            raise NotFound("no such conversation")
        return me

    def _require_admin(self, members: list[Member], user: str) -> Member:
        me = self._require_member_of(members, user)
        if me.role not in ("owner", "admin"):
            raise Forbidden("only the owner and admins may do that")
        return me

    async def _require_users(self, users: Sequence[str]) -> None:
        if not users:
            return
        found = await self.store.existing_users(users)
        missing = [u for u in users if u not in found]
        if missing:
            raise NotFound("no such user: " + ", ".join(missing[:10]))

    # -- contacts and presence ---------------------------------------------------------------

    async def contacts(self, user: str) -> list[ContactStatus]:
        contacts: list[Contact] = await self.store.list_contacts(user)
        online = await self.online_check.online([c.user for c in contacts]) if contacts else set()
        return [ContactStatus(c.user, c.user in online, c.last_seen) for c in contacts]

    async def add_contact(self, user: str, contact: str) -> None:
        if contact == user:
            raise BadRequest("you cannot add yourself as a contact")
        await self._require_users([contact])
        await self.store.add_contact(user, contact)

    async def remove_contact(self, user: str, contact: str) -> None:
        await self.store.remove_contact(user, contact)

    async def announce_presence(self, user: str, online: bool, last_seen: int | None) -> None:
        """Tell everyone who has ``user`` as a contact; the presence tracker calls this."""
        if not online and last_seen is not None:
            await self.store.set_last_seen(user, last_seen)
        followers = await self.store.followers(user)
        if followers:
            status = "online" if online else "offline"
            self.events.presence(followers, user, status, last_seen)


@dataclass(frozen=True, slots=True)
class _Plan:
    change: GroupChange
    event: dict[str, Any]
    added: Sequence[str] = ()


def _find(members: Iterable[Member], user: str) -> Member | None:
    for member in members:
        if member.user == user:
            return member
    return None


def _heir(members: Sequence[Member], leaving: str) -> str | None:
    """The oldest admin, else the oldest member (members come in join order)."""
    others = [m for m in members if m.user != leaving]
    for member in others:
        if member.role == "admin":
            return member.user
    return others[0].user if others else None
