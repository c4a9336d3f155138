"""Plain data shared by the service and the backends.

Every record is a frozen, slotted dataclass: backends build them, the service reads them, and
the transport turns them into frames. Nothing here knows about JSON or sockets.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

Role = Literal["owner", "admin", "member"]
ConversationKind = Literal["direct", "group"]
MessageKind = Literal["text", "system"]
MarkerKind = Literal["delivered", "read"]

ROLES: tuple[Role, ...] = ("owner", "admin", "member")


@dataclass(frozen=True, slots=True)
class User:
    username: str
    password_hash: str
    created_at: int
    disabled: bool = False
    last_seen: int | None = None


@dataclass(frozen=True, slots=True)
class Session:
    token_hash: str
    user: str
    device: str
    created_at: int
    expires_at: int


@dataclass(frozen=True, slots=True)
class MediaItem:
    """An uploaded blob's metadata. Storage keys derive from ``id``, never from ``filename``."""

    id: str
    uploader: str
    mime: str
    size: int
    filename: str
    sha256: str
    created_at: int
    width: int | None = None
    height: int | None = None
    thumbnail_mime: str | None = None


@dataclass(frozen=True, slots=True)
class Message:
    conv: str
    seq: int
    msg_id: str
    kind: MessageKind
    sender: str
    client_id: str | None
    ts: int
    body: str | None
    media: tuple[MediaItem, ...] = ()
    reply_to: int | None = None
    event: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class NewMessage:
    """What the service asks a store to append; the store assigns ``seq``."""

    conv: str
    sender: str
    msg_id: str
    ts: int
    kind: MessageKind = "text"
    client_id: str | None = None
    body: str | None = None
    media: tuple[MediaItem, ...] = ()
    reply_to: int | None = None
    event: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class AppendResult:
    """The stored message, whether it was a retry of an earlier one, and who to deliver it to."""

    message: Message
    duplicate: bool
    members: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Conversation:
    conv: str
    kind: ConversationKind
    title: str | None
    created_at: int
    last_seq: int
    # Bumped by every membership, role or title change: lets the service apply a group change
    # read-check-write without a lock (the store refuses a write made against an old version).
    version: int = 0


@dataclass(frozen=True, slots=True)
class Member:
    user: str
    role: Role
    joined_at: int
    delivered: int = 0
    read: int = 0
    muted: bool = False


@dataclass(frozen=True, slots=True)
class ConversationSummary:
    conversation: Conversation
    members: tuple[Member, ...]
    last_message: Message | None
    unread: int
    last_activity: int


@dataclass(frozen=True, slots=True)
class GroupChange:
    """One atomic change to a group, computed and authorized by the service."""

    add: tuple[tuple[str, Role], ...] = ()
    remove: tuple[str, ...] = ()
    roles: tuple[tuple[str, Role], ...] = ()
    title: str | None = None


@dataclass(frozen=True, slots=True)
class Contact:
    user: str
    last_seen: int | None


@dataclass(frozen=True, slots=True)
class PushSubscription:
    id: str
    user: str
    kind: Literal["webpush", "webhook"]
    data: dict[str, Any] = field(default_factory=dict)
    created_at: int = 0
