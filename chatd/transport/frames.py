"""The wire protocol as plain code: text in, typed requests out; records in, frame bytes out.

Nothing here does I/O. The WebSocket loop (``ws.py``) hands every text frame to :func:`parse`
and writes whatever the serializers below return; the HTTP handlers reuse
:func:`normalize_username` and the object builders. The contract implemented is
``docs/protocol.md`` (version 1 of the shared protocol plus the additions listed there).

Parsing::

    parse(data) -> Request          one frozen, slotted dataclass per request type
        raises ProtocolError        .code (a protocol error code), .message, .request_id

:func:`parse` checks the shape and the limits of every field; it knows nothing of who may do
what (the service decides that). Fields a client sends that the protocol does not define are
ignored, so that clients written against a later version keep working. An optional field given
as ``null`` is the same as an absent one.

Serializing: :func:`ok`, :func:`error` and the ``*_event`` functions return ``bytes`` encoded
once, so that fan-out can write the same bytes to many sockets. :func:`message_object` and
:func:`conversation_object` return the plain dicts that replies (``history``,
``conversations``) embed.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import orjson

from chatd.errors import ChatError
from chatd.models import ConversationSummary, MediaItem, Message

__all__ = [
    "MAX_BODY_CHARS",
    "REQUEST_TYPES",
    "AddContact",
    "AddMembers",
    "Contacts",
    "Conversations",
    "CreateGroup",
    "Hello",
    "History",
    "Leave",
    "Mute",
    "Ping",
    "ProtocolError",
    "Receipt",
    "RemoveContact",
    "RemoveMember",
    "Request",
    "Send",
    "SetRole",
    "Typing",
    "UpdateGroup",
    "conversation_event",
    "conversation_object",
    "error",
    "media_object",
    "message_event",
    "message_object",
    "normalize_username",
    "ok",
    "parse",
    "presence_event",
    "receipt_event",
    "typing_event",
]

# Limits of the protocol (docs/protocol.md states each one).
MAX_BODY_CHARS = 16384  # default of the server's max_body_chars setting
MAX_ID_CHARS = 64  # a request's "id"
MAX_CONV_CHARS = 64  # a conversation id
MAX_CLIENT_ID_CHARS = 64
MAX_DEVICE_CHARS = 64
MAX_TOKEN_CHARS = 1024
MAX_MEDIA_PER_MESSAGE = 10
MAX_MEDIA_ID_CHARS = 128
MAX_TITLE_CHARS = 128
# Only a bound on the work one frame can ask for. The group size limit (max_group_members,
# 1000 by default) is the service's: past it the protocol answers `conflict`, not
# `bad_request`, so parse must not refuse a list merely for being longer than that.
MAX_MEMBERS_PER_REQUEST = 10000
MAX_HISTORY_LIMIT = 100
DEFAULT_HISTORY_LIMIT = 50
# Sequence numbers are stored as signed 64-bit integers by every backend.
MAX_SEQ = 2**63 - 1

_USERNAME_RE = re.compile(r"[a-z0-9_.\-]{3,32}")
_HTTP_STATUS = {"bad_request": 400, "too_large": 413}


class ProtocolError(ChatError):
    """A frame is malformed or a field is invalid; the connection stays open.

    A :class:`chatd.errors.ChatError`, so that whatever maps errors to replies (the HTTP error
    middleware, the WebSocket loop) handles it like any other; ``code`` and ``http_status``
    are per instance here rather than per class.

    Attributes:
        code: the protocol's error code (``bad_request`` or ``too_large``).
        message: human text naming the field at fault.
        request_id: the frame's ``id`` when it was a valid one, so the ``error`` reply can
            carry it; ``None`` otherwise.
    """

    def __init__(self, code: str, message: str, request_id: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.http_status = _HTTP_STATUS.get(code, 400)
        self.request_id = request_id

    def __repr__(self) -> str:
        return f"ProtocolError({self.code!r}, {self.message!r}, {self.request_id!r})"


# ---------------------------------------------------------------------------------------------
# Requests


@dataclass(frozen=True, slots=True)
class Hello:
    wire_type: ClassVar[str] = "hello"
    id: str | None
    token: str | None = None
    device: str = "default"


@dataclass(frozen=True, slots=True)
class Send:
    """Exactly one of ``conv`` and ``to`` is set; ``to`` is a normalized username."""

    wire_type: ClassVar[str] = "send"
    id: str | None
    conv: str | None
    to: str | None
    client_id: str
    body: str
    media: tuple[str, ...] = ()
    reply_to: int | None = None


@dataclass(frozen=True, slots=True)
class History:
    """At most one of ``before`` and ``after`` is set."""

    wire_type: ClassVar[str] = "history"
    id: str | None
    conv: str
    before: int | None = None
    after: int | None = None
    limit: int = DEFAULT_HISTORY_LIMIT


@dataclass(frozen=True, slots=True)
class Conversations:
    wire_type: ClassVar[str] = "conversations"
    id: str | None


@dataclass(frozen=True, slots=True)
class Receipt:
    wire_type: ClassVar[str] = "receipt"
    id: str | None
    conv: str
    kind: Literal["delivered", "read"]
    seq: int


@dataclass(frozen=True, slots=True)
class Typing:
    wire_type: ClassVar[str] = "typing"
    id: str | None
    conv: str
    state: Literal["start", "stop"]


@dataclass(frozen=True, slots=True)
class CreateGroup:
    """``title`` is stripped; ``members`` are normalized usernames without repeats."""

    wire_type: ClassVar[str] = "create_group"
    id: str | None
    title: str
    members: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class AddMembers:
    wire_type: ClassVar[str] = "add_members"
    id: str | None
    conv: str
    members: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class RemoveMember:
    wire_type: ClassVar[str] = "remove_member"
    id: str | None
    conv: str
    user: str


@dataclass(frozen=True, slots=True)
class Leave:
    wire_type: ClassVar[str] = "leave"
    id: str | None
    conv: str


@dataclass(frozen=True, slots=True)
class UpdateGroup:
    wire_type: ClassVar[str] = "update_group"
    id: str | None
    conv: str
    title: str


@dataclass(frozen=True, slots=True)
class SetRole:
    """Only ``admin`` and ``member`` can be set: ownership passes on only when the owner leaves."""

    wire_type: ClassVar[str] = "set_role"
    id: str | None
    conv: str
    user: str
    role: Literal["admin", "member"]


@dataclass(frozen=True, slots=True)
class Contacts:
    wire_type: ClassVar[str] = "contacts"
    id: str | None


@dataclass(frozen=True, slots=True)
class AddContact:
    wire_type: ClassVar[str] = "add_contact"
    id: str | None
    user: str


@dataclass(frozen=True, slots=True)
class RemoveContact:
    wire_type: ClassVar[str] = "remove_contact"
    id: str | None
    user: str


@dataclass(frozen=True, slots=True)
class Ping:
    wire_type: ClassVar[str] = "ping"
    id: str | None


@dataclass(frozen=True, slots=True)
class Mute:
    """An addition to protocol v1: stop (or resume) push notifications for one conversation."""

    wire_type: ClassVar[str] = "mute"
    id: str | None
    conv: str
    muted: bool


Request = (
    Hello
    | Send
    | History
    | Conversations
    | Receipt
    | Typing
    | CreateGroup
    | AddMembers
    | RemoveMember
    | Leave
    | UpdateGroup
    | SetRole
    | Contacts
    | AddContact
    | RemoveContact
    | Ping
    | Mute
)

REQUEST_TYPES: dict[str, type] = {
    cls.wire_type: cls
    for cls in (
        Hello,
        Send,
        History,
        Conversations,
        Receipt,
        Typing,
        CreateGroup,
        AddMembers,
        RemoveMember,
        Leave,
        UpdateGroup,
        SetRole,
        Contacts,
        AddContact,
        RemoveContact,
        Ping,
        Mute,
    )
}


# ---------------------------------------------------------------------------------------------
# Field validators. Each takes the decoded frame, and the request id for the error it raises.


def _bad(message: str, rid: str | None) -> ProtocolError:
    return ProtocolError("bad_request", message, rid)


def _check_username(value: object, field: str, rid: str | None) -> str:
    # casefold() never shortens a string, so a long one is refused before folding it. A few
    # non-ASCII letters fold onto ASCII (the Kelvin sign onto "k", "ß" onto "ss"): that is
    # harmless, the folded form is the identity everywhere (chatd.service.accounts agrees).
    if type(value) is str and len(value) <= 32:
        folded = value.casefold()
        if _USERNAME_RE.fullmatch(folded):
            return folded
    raise _bad(f"'{field}' must be a username: 3 to 32 characters of a-z 0-9 _ . -", rid)


def normalize_username(s: object) -> str:
    """Validate a username and return its case-folded form (``Alice`` -> ``alice``).

    Raises:
        ProtocolError: ``bad_request`` unless ``s.casefold()`` is 3 to 32 characters of
            ``a-z 0-9 _ . -``.
    """
    return _check_username(s, "username", None)


def _no_nul(value: str, field: str, rid: str | None) -> str:
    # JSON allows "\u0000" but PostgreSQL text cannot hold it: refused here, as bad input,
    # rather than failing later in a store as an internal error.
    if "\x00" in value:
        raise _bad(f"'{field}' must not contain NUL characters", rid)
    return value


def _string(obj: Mapping[str, Any], field: str, rid: str | None, max_chars: int) -> str:
    value = obj.get(field)
    if type(value) is str and 1 <= len(value) <= max_chars:
        return _no_nul(value, field, rid)
    if value is None:
        raise _bad(f"'{field}' is required", rid)
    raise _bad(f"'{field}' must be a string of 1 to {max_chars} characters", rid)


def _conv(obj: Mapping[str, Any], rid: str | None) -> str:
    return _string(obj, "conv", rid, MAX_CONV_CHARS)


def _user(obj: Mapping[str, Any], rid: str | None) -> str:
    value = obj.get("user")
    if value is None:
        raise _bad("'user' is required", rid)
    return _check_username(value, "user", rid)


def _integer(
    obj: Mapping[str, Any], field: str, rid: str | None, low: int, high: int, default: int | None
) -> int | None:
    value = obj.get(field)
    if value is None:
        return default
    # type() rather than isinstance(): True and False are ints to Python, not to the protocol.
    if type(value) is int and low <= value <= high:
        return value
    raise _bad(f"'{field}' must be an integer from {low} to {high}", rid)


def _required_integer(
    obj: Mapping[str, Any], field: str, rid: str | None, low: int, high: int
) -> int:
    value = _integer(obj, field, rid, low, high, None)
    if value is None:
        raise _bad(f"'{field}' is required", rid)
    return value


def _choice(obj: Mapping[str, Any], field: str, rid: str | None, choices: tuple[str, ...]) -> Any:
    value = obj.get(field)
    if type(value) is str and value in choices:
        return value
    if value is None:
        raise _bad(f"'{field}' is required", rid)
    names = " or ".join(f"'{c}'" for c in choices)
    raise _bad(f"'{field}' must be {names}", rid)


def _title(obj: Mapping[str, Any], rid: str | None) -> str:
    value = obj.get("title")
    if type(value) is str:
        title = value.strip()
        if 1 <= len(title) <= MAX_TITLE_CHARS:
            return _no_nul(title, "title", rid)
    elif value is None:
        raise _bad("'title' is required", rid)
    raise _bad(f"'title' must be a string of 1 to {MAX_TITLE_CHARS} characters (stripped)", rid)


def _members(obj: Mapping[str, Any], rid: str | None, low: int, high: int) -> tuple[str, ...]:
    value = obj.get("members")
    if value is None:
        if low == 0:
            return ()
        raise _bad("'members' is required", rid)
    if type(value) is not list or not low <= len(value) <= high:
        raise _bad(f"'members' must be a list of {low} to {high} usernames", rid)
    # dict.fromkeys drops repeats and keeps the order the client gave.
    return tuple(dict.fromkeys(_check_username(v, "members", rid) for v in value))


# ---------------------------------------------------------------------------------------------
# One small parser per request type, chosen by a dict lookup on "type".

_Parser = Callable[[dict[str, Any], "str | None", int], Request]


def _parse_hello(obj: dict[str, Any], rid: str | None, max_body_chars: int) -> Hello:
    token = obj.get("token")
    if token is not None:
        token = _string(obj, "token", rid, MAX_TOKEN_CHARS)
    device = obj.get("device")
    if device is None:
        return Hello(rid, token)
    return Hello(rid, token, _string(obj, "device", rid, MAX_DEVICE_CHARS))


def _parse_send(obj: dict[str, Any], rid: str | None, max_body_chars: int) -> Send:
    conv = obj.get("conv")
    to = obj.get("to")
    if conv is not None:
        if to is not None:
            raise _bad("give exactly one of 'conv' and 'to', not both", rid)
        conv = _conv(obj, rid)
    elif to is not None:
        to = _check_username(to, "to", rid)
    else:
        raise _bad("one of 'conv' and 'to' is required", rid)
    client_id = _string(obj, "client_id", rid, MAX_CLIENT_ID_CHARS)

    media: tuple[str, ...] = ()
    raw_media = obj.get("media")
    if raw_media is not None:
        if type(raw_media) is not list or len(raw_media) > MAX_MEDIA_PER_MESSAGE:
            raise _bad(f"'media' must be a list of at most {MAX_MEDIA_PER_MESSAGE} media ids", rid)
        for item in raw_media:
            if type(item) is not str or not 1 <= len(item) <= MAX_MEDIA_ID_CHARS:
                raise _bad(
                    f"each of 'media' must be a media id: a string of 1 to "
                    f"{MAX_MEDIA_ID_CHARS} characters",
                    rid,
                )
            _no_nul(item, "media", rid)
        media = tuple(raw_media)
        if len(set(media)) != len(media):
            raise _bad("'media' must not name the same media id twice", rid)

    body = obj.get("body")
    if body is None:
        body = ""
    elif type(body) is not str:
        raise _bad("'body' must be a string", rid)
    elif len(body) > max_body_chars:
        raise ProtocolError("too_large", f"'body' must be at most {max_body_chars} characters", rid)
    if not body and not media:
        raise _bad("'body' may be empty only with 'media'", rid)
    _no_nul(body, "body", rid)

    reply_to = _integer(obj, "reply_to", rid, 1, MAX_SEQ, None)
    return Send(rid, conv, to, client_id, body, media, reply_to)


def _parse_history(obj: dict[str, Any], rid: str | None, max_body_chars: int) -> History:
    conv = _conv(obj, rid)
    before = _integer(obj, "before", rid, 0, MAX_SEQ, None)
    after = _integer(obj, "after", rid, 0, MAX_SEQ, None)
    if before is not None and after is not None:
        raise _bad("give at most one of 'before' and 'after'", rid)
    limit = _integer(obj, "limit", rid, 1, MAX_HISTORY_LIMIT, DEFAULT_HISTORY_LIMIT)
    assert limit is not None
    return History(rid, conv, before, after, limit)


def _parse_conversations(
    obj: dict[str, Any], rid: str | None, max_body_chars: int
) -> Conversations:
    return Conversations(rid)


def _parse_receipt(obj: dict[str, Any], rid: str | None, max_body_chars: int) -> Receipt:
    conv = _conv(obj, rid)
    kind = _choice(obj, "kind", rid, ("delivered", "read"))
    return Receipt(rid, conv, kind, _required_integer(obj, "seq", rid, 0, MAX_SEQ))


def _parse_typing(obj: dict[str, Any], rid: str | None, max_body_chars: int) -> Typing:
    conv = _conv(obj, rid)
    return Typing(rid, conv, _choice(obj, "state", rid, ("start", "stop")))


def _parse_create_group(obj: dict[str, Any], rid: str | None, max_body_chars: int) -> CreateGroup:
    title = _title(obj, rid)
    return CreateGroup(rid, title, _members(obj, rid, 0, MAX_MEMBERS_PER_REQUEST))


def _parse_add_members(obj: dict[str, Any], rid: str | None, max_body_chars: int) -> AddMembers:
    conv = _conv(obj, rid)
    return AddMembers(rid, conv, _members(obj, rid, 1, MAX_MEMBERS_PER_REQUEST))


def _parse_remove_member(obj: dict[str, Any], rid: str | None, max_body_chars: int) -> RemoveMember:
    conv = _conv(obj, rid)
    return RemoveMember(rid, conv, _user(obj, rid))


def _parse_leave(obj: dict[str, Any], rid: str | None, max_body_chars: int) -> Leave:
    return Leave(rid, _conv(obj, rid))


def _parse_update_group(obj: dict[str, Any], rid: str | None, max_body_chars: int) -> UpdateGroup:
    conv = _conv(obj, rid)
    return UpdateGroup(rid, conv, _title(obj, rid))


def _parse_set_role(obj: dict[str, Any], rid: str | None, max_body_chars: int) -> SetRole:
    conv = _conv(obj, rid)
    user = _user(obj, rid)
    if obj.get("role") == "owner":
        raise _bad("'role' cannot be 'owner': ownership passes on only when the owner leaves", rid)
    return SetRole(rid, conv, user, _choice(obj, "role", rid, ("admin", "member")))


def _parse_contacts(obj: dict[str, Any], rid: str | None, max_body_chars: int) -> Contacts:
    return Contacts(rid)


def _parse_add_contact(obj: dict[str, Any], rid: str | None, max_body_chars: int) -> AddContact:
    return AddContact(rid, _user(obj, rid))


def _parse_remove_contact(
    obj: dict[str, Any], rid: str | None, max_body_chars: int
) -> RemoveContact:
    return RemoveContact(rid, _user(obj, rid))


def _parse_ping(obj: dict[str, Any], rid: str | None, max_body_chars: int) -> Ping:
    return Ping(rid)


def _parse_mute(obj: dict[str, Any], rid: str | None, max_body_chars: int) -> Mute:
    conv = _conv(obj, rid)
    muted = obj.get("muted")
    if type(muted) is not bool:
        if muted is None:
            raise _bad("'muted' is required", rid)
        raise _bad("'muted' must be true or false", rid)
    return Mute(rid, conv, muted)


_PARSERS: dict[str, _Parser] = {
    "hello": _parse_hello,
    "send": _parse_send,
    "history": _parse_history,
    "conversations": _parse_conversations,
    "receipt": _parse_receipt,
    "typing": _parse_typing,
    "create_group": _parse_create_group,
    "add_members": _parse_add_members,
    "remove_member": _parse_remove_member,
    "leave": _parse_leave,
    "update_group": _parse_update_group,
    "set_role": _parse_set_role,
    "contacts": _parse_contacts,
    "add_contact": _parse_add_contact,
    "remove_contact": _parse_remove_contact,
    "ping": _parse_ping,
    "mute": _parse_mute,
}


def parse(data: str | bytes, *, max_body_chars: int = MAX_BODY_CHARS) -> Request:
    """Decode one client frame into a typed request.

    Args:
        data: the frame's text (or its UTF-8 bytes).
        max_body_chars: the server's limit on a message body, in characters (code points).

    Returns:
        One of the request dataclasses; ``REQUEST_TYPES`` maps each wire type to its class.

    Raises:
        ProtocolError: ``bad_request`` for anything malformed or invalid, ``too_large`` for a
            ``send`` body over ``max_body_chars``. ``request_id`` is the frame's ``id`` once
            that was found valid.
    """
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError:
        raise ProtocolError("bad_request", "the frame is not valid JSON") from None
    if type(obj) is not dict:
        raise ProtocolError("bad_request", "the frame must be a JSON object")
    rid = obj.get("id")
    if rid is not None and (type(rid) is not str or len(rid) > MAX_ID_CHARS):
        raise ProtocolError(
            "bad_request", f"'id' must be a string of at most {MAX_ID_CHARS} characters"
        )
    kind = obj.get("type")
    if type(kind) is not str:
        if kind is None:
            raise _bad("'type' is required", rid)
        raise _bad("'type' must be a string naming the request", rid)
    parser = _PARSERS.get(kind)
    if parser is None:
        shown = kind if len(kind) <= 64 else kind[:64] + "..."
        raise _bad(f"unknown request type {shown!r}", rid)
    return parser(obj, rid, max_body_chars)


# ---------------------------------------------------------------------------------------------
# Serializers: replies and events as bytes, ready to write to any number of sockets.


def ok(request_id: str | None, fields: Mapping[str, Any] | None = None) -> bytes:
    """``{"type": "ok", "id": ..., **fields}``; ``fields`` cannot override ``type`` or ``id``."""
    frame: dict[str, Any] = {"type": "ok", "id": request_id}
    if fields:
        frame.update(fields)
        frame["type"] = "ok"
        frame["id"] = request_id
    return orjson.dumps(frame)


def error(
    request_id: str | None, code: str, message: str, extra: Mapping[str, Any] | None = None
) -> bytes:
    """``{"type": "error", "id": ..., "code": ..., "message": ..., **extra}``.

    ``extra`` carries additions such as ``retry_after``; it cannot override the four fields.
    """
    frame: dict[str, Any] = {"type": "error", "id": request_id, "code": code, "message": message}
    if extra:
        frame = {**frame, **extra, **frame}
    return orjson.dumps(frame)


def media_object(item: MediaItem) -> dict[str, Any]:
    """A media item as messages carry it; ``width`` and ``height`` only when known."""
    obj: dict[str, Any] = {
        "id": item.id,
        "mime": item.mime,
        "size": item.size,
        "filename": item.filename,
        "sha256": item.sha256,
    }
    if item.width is not None:
        obj["width"] = item.width
    if item.height is not None:
        obj["height"] = item.height
    return obj


def _message_fields(frame: dict[str, Any], m: Message) -> dict[str, Any]:
    # Shared by message_object and message_event so the event's dict is built in one pass,
    # with "type" first, rather than copied.
    frame["conv"] = m.conv
    frame["seq"] = m.seq
    frame["msg_id"] = m.msg_id
    frame["kind"] = m.kind
    frame["from"] = m.sender
    frame["client_id"] = m.client_id
    frame["ts"] = m.ts
    if m.kind == "system":
        frame["body"] = None
        frame["media"] = []
        frame["reply_to"] = None
        frame["event"] = m.event if m.event is not None else {}
    else:
        frame["body"] = m.body if m.body is not None else ""
        frame["media"] = [media_object(item) for item in m.media] if m.media else []
        frame["reply_to"] = m.reply_to
    return frame


def message_object(m: Message) -> dict[str, Any]:
    """The protocol's message object (section 4), as ``history`` and ``conversations`` embed it.

    A ``system`` message has ``body`` null and an ``event`` object; a ``text`` message has a
    string ``body`` (empty for media only) and no ``event``.
    """
    return _message_fields({}, m)


def message_event(m: Message) -> bytes:
    """The ``message`` event: ``{"type": "message", **message_object(m)}``."""
    return orjson.dumps(_message_fields({"type": "message"}, m))


def receipt_event(conv: str, user: str, kind: str, seq: int, ts: int) -> bytes:
    return orjson.dumps(
        {"type": "receipt", "conv": conv, "user": user, "kind": kind, "seq": seq, "ts": ts}
    )


def presence_event(user: str, status: str, last_seen: int | None) -> bytes:
    return orjson.dumps(
        {"type": "presence", "user": user, "status": status, "last_seen": last_seen}
    )


def typing_event(conv: str, user: str, state: str) -> bytes:
    return orjson.dumps({"type": "typing", "conv": conv, "user": user, "state": state})


def conversation_event(conv: str, kind: str, title: str | None) -> bytes:
    return orjson.dumps({"type": "conversation", "conv": conv, "kind": kind, "title": title})


def conversation_object(summary: ConversationSummary, me: str) -> dict[str, Any]:
    """One entry of the ``conversations`` reply, as seen by user ``me``.

    ``muted`` (an addition to protocol v1) is ``me``'s own setting; false if ``me`` is not
    among the members.
    """
    conversation = summary.conversation
    muted = False
    members = []
    for member in summary.members:
        if member.user == me:
            muted = member.muted
        members.append(
            {
                "user": member.user,
                "role": member.role,
                "delivered": member.delivered,
                "read": member.read,
            }
        )
    last = summary.last_message
    return {
        "conv": conversation.conv,
        "kind": conversation.kind,
        "title": conversation.title,
        "last_seq": conversation.last_seq,
        "unread": summary.unread,
        "members": members,
        "last_message": message_object(last) if last is not None else None,
        "muted": muted,
    }
