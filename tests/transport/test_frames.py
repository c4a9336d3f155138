"""chatd.transport.frames: parsing, validation and serialization, without any socket."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chatd.errors import ChatError
from chatd.models import Conversation, ConversationSummary, MediaItem, Member, Message
from chatd.transport import frames
from chatd.transport.frames import (
    REQUEST_TYPES,
    AddContact,
    AddMembers,
    Contacts,
    Conversations,
    CreateGroup,
    Hello,
    History,
    Leave,
    Mute,
    Ping,
    ProtocolError,
    Receipt,
    RemoveContact,
    RemoveMember,
    Send,
    SetRole,
    Typing,
    UpdateGroup,
    normalize_username,
    parse,
)

# The request types of protocol v1 (PROTOCOL.md section 3) plus chatd's additions.
PROTOCOL_V1_REQUESTS = {
    "hello",
    "send",
    "history",
    "conversations",
    "receipt",
    "typing",
    "create_group",
    "add_members",
    "remove_member",
    "leave",
    "update_group",
    "set_role",
    "contacts",
    "add_contact",
    "remove_contact",
    "ping",
}
ADDITIONS = {"mute"}

ID65 = "x" * 65
C65 = "c" * 65


def _frame(**fields: Any) -> bytes:
    return orjson.dumps(fields)


def _send(**over: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"type": "send", "id": "r1", "conv": "c7", "client_id": "k1"}
    base["body"] = "hi"
    base.update(over)
    return {k: v for k, v in base.items() if v is not _DROP}


_DROP = object()


def _with(base: dict[str, Any], **over: Any) -> dict[str, Any]:
    merged = {**base, **over}
    return {k: v for k, v in merged.items() if v is not _DROP}


HISTORY = {"type": "history", "id": "r1", "conv": "c7"}
RECEIPT = {"type": "receipt", "id": "r1", "conv": "c7", "kind": "read", "seq": 3}
TYPING = {"type": "typing", "id": "r1", "conv": "c7", "state": "start"}
CREATE = {"type": "create_group", "id": "r1", "title": "ops", "members": ["bob"]}
ADD = {"type": "add_members", "id": "r1", "conv": "c9", "members": ["dave"]}
REMOVE = {"type": "remove_member", "id": "r1", "conv": "c9", "user": "dave"}
LEAVE = {"type": "leave", "id": "r1", "conv": "c9"}
UPDATE = {"type": "update_group", "id": "r1", "conv": "c9", "title": "ops-team"}
ROLE = {"type": "set_role", "id": "r1", "conv": "c9", "user": "bob", "role": "admin"}
ADD_CONTACT = {"type": "add_contact", "id": "r1", "user": "carol"}
REMOVE_CONTACT = {"type": "remove_contact", "id": "r1", "user": "carol"}
HELLO = {"type": "hello", "id": "r1", "token": "t0k", "device": "laptop"}
MUTE = {"type": "mute", "id": "r1", "conv": "c7", "muted": True}

BAD_USERNAMES: list[Any] = [
    "ab",  # too short
    "a" * 33,  # too long
    "al ice",
    "al!ce",
    "alice\n",
    "\u00e9lise",
    "\u0430\u043b\u0438\u0441\u0430",
    "alice\u200b",
    "\uff41lice",  # fullwidth a
    "",
    5,
    None if False else True,
    ["alice"],
    {"u": "alice"},
]

# (case name, raw frame, expected code, expected request_id)
MALFORMED: list[tuple[str, str | bytes, str, str | None]] = [
    ("not json", "hello", "bad_request", None),
    ("truncated json", '{"type": "ping"', "bad_request", None),
    ("empty text", "", "bad_request", None),
    ("empty bytes", b"", "bad_request", None),
    ("invalid utf-8", b'{"type": "ping", "id": "\xff"}', "bad_request", None),
    ("json array", "[]", "bad_request", None),
    ("json array of frame", '[{"type": "ping"}]', "bad_request", None),
    ("json string", '"ping"', "bad_request", None),
    ("json number", "42", "bad_request", None),
    ("json float", "4.2", "bad_request", None),
    ("json null", "null", "bad_request", None),
    ("json true", "true", "bad_request", None),
    ("NaN", "NaN", "bad_request", None),
    ("trailing garbage", '{"type": "ping"} x', "bad_request", None),
    ("too deep", "[" * 2000, "bad_request", None),
    (
        "lone surrogate in str",
        '{"type": "ping", "id": "\ud800"}',
        "bad_request",
        None,
    ),
    ("lone surrogate escape", '{"type": "ping", "id": "\\ud800"}', "bad_request", None),
    ("missing type", '{"id": "r1"}', "bad_request", "r1"),
    ("missing type no id", "{}", "bad_request", None),
    ("type null", '{"type": null, "id": "r1"}', "bad_request", "r1"),
    ("type number", '{"type": 5, "id": "r1"}', "bad_request", "r1"),
    ("type false", '{"type": false, "id": "r1"}', "bad_request", "r1"),
    ("type list", '{"type": ["ping"], "id": "r1"}', "bad_request", "r1"),
    ("unknown type", '{"type": "fly", "id": "r1"}', "bad_request", "r1"),
    ("empty type", '{"type": "", "id": "r1"}', "bad_request", "r1"),
    ("type wrong case", '{"type": "PING", "id": "r1"}', "bad_request", "r1"),
    ("event type as request", '{"type": "message", "id": "r1"}', "bad_request", "r1"),
    ("ok as request", '{"type": "ok", "id": "r1"}', "bad_request", "r1"),
    ("id too long", _frame(type="ping", id=ID65), "bad_request", None),
    ("id number", '{"type": "ping", "id": 1}', "bad_request", None),
    ("id bool", '{"type": "ping", "id": true}', "bad_request", None),
    ("id list", '{"type": "ping", "id": ["r1"]}', "bad_request", None),
    ("id object", '{"type": "ping", "id": {}}', "bad_request", None),
    ("id too long unknown type", _frame(type="fly", id=ID65), "bad_request", None),
    # hello
    ("hello token number", _frame(**_with(HELLO, token=5)), "bad_request", "r1"),
    ("hello token empty", _frame(**_with(HELLO, token="")), "bad_request", "r1"),
    ("hello token too long", _frame(**_with(HELLO, token="t" * 1025)), "bad_request", "r1"),
    ("hello device empty", _frame(**_with(HELLO, device="")), "bad_request", "r1"),
    ("hello device too long", _frame(**_with(HELLO, device="d" * 65)), "bad_request", "r1"),
    ("hello device number", _frame(**_with(HELLO, device=1)), "bad_request", "r1"),
    # send: destination
    ("send both conv and to", _frame(**_send(to="bob")), "bad_request", "r1"),
    ("send neither conv nor to", _frame(**_send(conv=_DROP)), "bad_request", "r1"),
    ("send conv empty", _frame(**_send(conv="")), "bad_request", "r1"),
    ("send conv too long", _frame(**_send(conv=C65)), "bad_request", "r1"),
    ("send conv number", _frame(**_send(conv=7)), "bad_request", "r1"),
    ("send conv list", _frame(**_send(conv=["c7"])), "bad_request", "r1"),
    ("send to bad username", _frame(**_send(conv=_DROP, to="b!")), "bad_request", "r1"),
    ("send to number", _frame(**_send(conv=_DROP, to=5)), "bad_request", "r1"),
    ("send to too long", _frame(**_send(conv=_DROP, to="b" * 33)), "bad_request", "r1"),
    # send: client_id
    ("send client_id missing", _frame(**_send(client_id=_DROP)), "bad_request", "r1"),
    ("send client_id null", _frame(**_send(client_id=None)), "bad_request", "r1"),
    ("send client_id empty", _frame(**_send(client_id="")), "bad_request", "r1"),
    ("send client_id too long", _frame(**_send(client_id="k" * 65)), "bad_request", "r1"),
    ("send client_id number", _frame(**_send(client_id=12)), "bad_request", "r1"),
    # send: body
    ("send body number", _frame(**_send(body=5)), "bad_request", "r1"),
    ("send body list", _frame(**_send(body=["hi"])), "bad_request", "r1"),
    ("send body object", _frame(**_send(body={"text": "hi"})), "bad_request", "r1"),
    ("send body empty no media", _frame(**_send(body="")), "bad_request", "r1"),
    ("send body missing no media", _frame(**_send(body=_DROP)), "bad_request", "r1"),
    ("send body empty media empty", _frame(**_send(body="", media=[])), "bad_request", "r1"),
    ("send body too long", _frame(**_send(body="b" * 16385)), "too_large", "r1"),
    ("send body too long wide", _frame(**_send(body="\u00e9" * 16385)), "too_large", "r1"),
    # send: media
    ("send media string", _frame(**_send(media="m1")), "bad_request", "r1"),
    ("send media object", _frame(**_send(media={"id": "m1"})), "bad_request", "r1"),
    ("send 11 media", _frame(**_send(media=[f"m{i}" for i in range(11)])), "bad_request", "r1"),
    ("send media item number", _frame(**_send(media=[1])), "bad_request", "r1"),
    ("send media item empty", _frame(**_send(media=[""])), "bad_request", "r1"),
    ("send media item null", _frame(**_send(media=[None])), "bad_request", "r1"),
    ("send media item object", _frame(**_send(media=[{"id": "m1"}])), "bad_request", "r1"),
    ("send media item too long", _frame(**_send(media=["m" * 129])), "bad_request", "r1"),
    ("send media repeated", _frame(**_send(media=["m1", "m1"])), "bad_request", "r1"),
    # send: reply_to
    ("send reply_to zero", _frame(**_send(reply_to=0)), "bad_request", "r1"),
    ("send reply_to negative", _frame(**_send(reply_to=-1)), "bad_request", "r1"),
    ("send reply_to string", _frame(**_send(reply_to="3")), "bad_request", "r1"),
    ("send reply_to float", _frame(**_send(reply_to=3.0)), "bad_request", "r1"),
    ("send reply_to bool", _frame(**_send(reply_to=True)), "bad_request", "r1"),
    ("send reply_to huge", _frame(**_send(reply_to=2**63)), "bad_request", "r1"),
    (
        "send reply_to 1e30",
        '{"type":"send","conv":"c","client_id":"k","body":"x","reply_to":1e30}',
        "bad_request",
        None,
    ),
    # history
    ("history conv missing", _frame(**_with(HISTORY, conv=_DROP)), "bad_request", "r1"),
    ("history conv empty", _frame(**_with(HISTORY, conv="")), "bad_request", "r1"),
    ("history conv too long", _frame(**_with(HISTORY, conv=C65)), "bad_request", "r1"),
    ("history conv number", _frame(**_with(HISTORY, conv=1)), "bad_request", "r1"),
    ("history before and after", _frame(**_with(HISTORY, before=5, after=1)), "bad_request", "r1"),
    ("history before negative", _frame(**_with(HISTORY, before=-1)), "bad_request", "r1"),
    ("history before string", _frame(**_with(HISTORY, before="5")), "bad_request", "r1"),
    ("history before bool", _frame(**_with(HISTORY, before=True)), "bad_request", "r1"),
    ("history before float", _frame(**_with(HISTORY, before=5.5)), "bad_request", "r1"),
    ("history after negative", _frame(**_with(HISTORY, after=-3)), "bad_request", "r1"),
    ("history after list", _frame(**_with(HISTORY, after=[1])), "bad_request", "r1"),
    ("history after bool", _frame(**_with(HISTORY, after=False)), "bad_request", "r1"),
    ("history limit zero", _frame(**_with(HISTORY, limit=0)), "bad_request", "r1"),
    ("history limit 101", _frame(**_with(HISTORY, limit=101)), "bad_request", "r1"),
    ("history limit negative", _frame(**_with(HISTORY, limit=-1)), "bad_request", "r1"),
    ("history limit string", _frame(**_with(HISTORY, limit="50")), "bad_request", "r1"),
    ("history limit bool", _frame(**_with(HISTORY, limit=True)), "bad_request", "r1"),
    ("history limit float", _frame(**_with(HISTORY, limit=50.0)), "bad_request", "r1"),
    # receipt
    ("receipt conv missing", _frame(**_with(RECEIPT, conv=_DROP)), "bad_request", "r1"),
    ("receipt conv too long", _frame(**_with(RECEIPT, conv=C65)), "bad_request", "r1"),
    ("receipt kind missing", _frame(**_with(RECEIPT, kind=_DROP)), "bad_request", "r1"),
    ("receipt kind unknown", _frame(**_with(RECEIPT, kind="seen")), "bad_request", "r1"),
    ("receipt kind upper", _frame(**_with(RECEIPT, kind="READ")), "bad_request", "r1"),
    ("receipt kind number", _frame(**_with(RECEIPT, kind=1)), "bad_request", "r1"),
    ("receipt seq missing", _frame(**_with(RECEIPT, seq=_DROP)), "bad_request", "r1"),
    ("receipt seq null", _frame(**_with(RECEIPT, seq=None)), "bad_request", "r1"),
    ("receipt seq negative", _frame(**_with(RECEIPT, seq=-1)), "bad_request", "r1"),
    ("receipt seq bool true", _frame(**_with(RECEIPT, seq=True)), "bad_request", "r1"),
    ("receipt seq bool false", _frame(**_with(RECEIPT, seq=False)), "bad_request", "r1"),
    ("receipt seq string", _frame(**_with(RECEIPT, seq="3")), "bad_request", "r1"),
    ("receipt seq float", _frame(**_with(RECEIPT, seq=3.0)), "bad_request", "r1"),
    ("receipt seq too big", _frame(**_with(RECEIPT, seq=2**63)), "bad_request", "r1"),
    # typing
    ("typing conv missing", _frame(**_with(TYPING, conv=_DROP)), "bad_request", "r1"),
    ("typing conv empty", _frame(**_with(TYPING, conv="")), "bad_request", "r1"),
    ("typing state missing", _frame(**_with(TYPING, state=_DROP)), "bad_request", "r1"),
    ("typing state unknown", _frame(**_with(TYPING, state="pause")), "bad_request", "r1"),
    ("typing state bool", _frame(**_with(TYPING, state=True)), "bad_request", "r1"),
    # create_group
    ("create title missing", _frame(**_with(CREATE, title=_DROP)), "bad_request", "r1"),
    ("create title empty", _frame(**_with(CREATE, title="")), "bad_request", "r1"),
    ("create title blank", _frame(**_with(CREATE, title="   ")), "bad_request", "r1"),
    ("create title too long", _frame(**_with(CREATE, title="t" * 129)), "bad_request", "r1"),
    ("create title number", _frame(**_with(CREATE, title=5)), "bad_request", "r1"),
    ("create members string", _frame(**_with(CREATE, members="bob")), "bad_request", "r1"),
    ("create members object", _frame(**_with(CREATE, members={"bob": 1})), "bad_request", "r1"),
    (
        "create 10001 members",
        _frame(**_with(CREATE, members=[f"u{i:05}" for i in range(10001)])),
        "bad_request",
        "r1",
    ),
    ("create bad member", _frame(**_with(CREATE, members=["bob", "b"])), "bad_request", "r1"),
    ("create member number", _frame(**_with(CREATE, members=[5])), "bad_request", "r1"),
    # add_members
    ("add conv missing", _frame(**_with(ADD, conv=_DROP)), "bad_request", "r1"),
    ("add conv too long", _frame(**_with(ADD, conv=C65)), "bad_request", "r1"),
    ("add members missing", _frame(**_with(ADD, members=_DROP)), "bad_request", "r1"),
    ("add members empty", _frame(**_with(ADD, members=[])), "bad_request", "r1"),
    ("add members string", _frame(**_with(ADD, members="dave")), "bad_request", "r1"),
    (
        "add 10001 members",
        _frame(**_with(ADD, members=[f"u{i:05}" for i in range(10001)])),
        "bad_request",
        "r1",
    ),
    ("add bad member", _frame(**_with(ADD, members=["da ve"])), "bad_request", "r1"),
    # remove_member
    ("remove conv missing", _frame(**_with(REMOVE, conv=_DROP)), "bad_request", "r1"),
    ("remove user missing", _frame(**_with(REMOVE, user=_DROP)), "bad_request", "r1"),
    ("remove user bad", _frame(**_with(REMOVE, user="d")), "bad_request", "r1"),
    ("remove user list", _frame(**_with(REMOVE, user=["dave"])), "bad_request", "r1"),
    # leave
    ("leave conv missing", _frame(**_with(LEAVE, conv=_DROP)), "bad_request", "r1"),
    ("leave conv number", _frame(**_with(LEAVE, conv=9)), "bad_request", "r1"),
    # update_group
    ("update conv missing", _frame(**_with(UPDATE, conv=_DROP)), "bad_request", "r1"),
    ("update title missing", _frame(**_with(UPDATE, title=_DROP)), "bad_request", "r1"),
    ("update title blank", _frame(**_with(UPDATE, title=" \t\n")), "bad_request", "r1"),
    ("update title too long", _frame(**_with(UPDATE, title="t" * 129)), "bad_request", "r1"),
    ("update title null", _frame(**_with(UPDATE, title=None)), "bad_request", "r1"),
    # set_role
    ("role owner", _frame(**_with(ROLE, role="owner")), "bad_request", "r1"),
    ("role unknown", _frame(**_with(ROLE, role="king")), "bad_request", "r1"),
    ("role missing", _frame(**_with(ROLE, role=_DROP)), "bad_request", "r1"),
    ("role number", _frame(**_with(ROLE, role=1)), "bad_request", "r1"),
    ("role user missing", _frame(**_with(ROLE, user=_DROP)), "bad_request", "r1"),
    ("role user bad", _frame(**_with(ROLE, user="b@b")), "bad_request", "r1"),
    ("role conv missing", _frame(**_with(ROLE, conv=_DROP)), "bad_request", "r1"),
    # contacts
    ("add_contact user missing", _frame(**_with(ADD_CONTACT, user=_DROP)), "bad_request", "r1"),
    ("add_contact user bad", _frame(**_with(ADD_CONTACT, user="c/rol")), "bad_request", "r1"),
    (
        "remove_contact user missing",
        _frame(**_with(REMOVE_CONTACT, user=_DROP)),
        "bad_request",
        "r1",
    ),
    ("remove_contact user number", _frame(**_with(REMOVE_CONTACT, user=3)), "bad_request", "r1"),
    # mute
    ("mute muted missing", _frame(**_with(MUTE, muted=_DROP)), "bad_request", "r1"),
    ("mute muted int", _frame(**_with(MUTE, muted=1)), "bad_request", "r1"),
    ("mute muted string", _frame(**_with(MUTE, muted="true")), "bad_request", "r1"),
    ("mute conv missing", _frame(**_with(MUTE, conv=_DROP)), "bad_request", "r1"),
    # NUL characters, which PostgreSQL text cannot store
    ("send body NUL", _frame(**_send(body="a\x00b")), "bad_request", "r1"),
    ("send client_id NUL", _frame(**_send(client_id="k\x00")), "bad_request", "r1"),
    ("send conv NUL", _frame(**_send(conv="c\x00")), "bad_request", "r1"),
    ("send media NUL", _frame(**_send(media=["m\x00"])), "bad_request", "r1"),
    ("hello device NUL", _frame(**_with(HELLO, device="\x00")), "bad_request", "r1"),
    ("hello token NUL", _frame(**_with(HELLO, token="t\x00")), "bad_request", "r1"),
    ("create title NUL", _frame(**_with(CREATE, title="o\x00ps")), "bad_request", "r1"),
    ("update title NUL", _frame(**_with(UPDATE, title="\x00")), "bad_request", "r1"),
    # no id: the error carries null
    ("no id bad field", _frame(type="typing", conv="c7", state="x"), "bad_request", None),
]
MALFORMED += [
    (f"add_contact bad username {i}", _frame(**_with(ADD_CONTACT, user=u)), "bad_request", "r1")
    for i, u in enumerate(BAD_USERNAMES)
]


def test_malformed_table_is_large_and_unique() -> None:
    assert len(MALFORMED) >= 120
    names = [case[0] for case in MALFORMED]
    assert len(names) == len(set(names))


@pytest.mark.parametrize(
    ("raw", "code", "rid"), [c[1:] for c in MALFORMED], ids=[c[0] for c in MALFORMED]
)
def test_malformed_frame_is_refused(raw: str | bytes, code: str, rid: str | None) -> None:
    with pytest.raises(ProtocolError) as info:
        parse(raw)
    assert info.value.code == code
    assert info.value.request_id == rid
    assert info.value.message
    assert str(info.value) == info.value.message


def test_protocol_error_is_a_chat_error() -> None:
    # The HTTP error middleware and the WebSocket loop map any ChatError to a reply.
    exc = ProtocolError("bad_request", "'conv' is required", "r1")
    assert isinstance(exc, ChatError)
    assert (exc.code, exc.http_status, exc.message, exc.extra) == (
        "bad_request",
        400,
        "'conv' is required",
        {},
    )
    assert ProtocolError("too_large", "big").http_status == 413
    assert ProtocolError("too_large", "big").request_id is None
    assert "too_large" in repr(ProtocolError("too_large", "big"))


def test_messages_name_the_field() -> None:
    with pytest.raises(ProtocolError, match="'limit' must be an integer from 1 to 100"):
        parse(_frame(**_with(HISTORY, limit=500)))
    with pytest.raises(ProtocolError, match="unknown request type 'fly'"):
        parse('{"type": "fly"}')
    with pytest.raises(ProtocolError, match="'seq'"):
        parse(_frame(**_with(RECEIPT, seq=True)))
    with pytest.raises(ProtocolError, match="owner leaves"):
        parse(_frame(**_with(ROLE, role="owner")))


def test_unknown_type_message_is_bounded() -> None:
    with pytest.raises(ProtocolError) as info:
        parse(_frame(type="x" * 10000))
    assert len(info.value.message) < 200


# --- valid frames ------------------------------------------------------------------------------

VALID: list[tuple[dict[str, Any], frames.Request]] = [
    ({"type": "hello", "id": "1", "token": "abc", "device": "laptop"}, Hello("1", "abc", "laptop")),
    ({"type": "hello", "id": "1"}, Hello("1", None, "default")),
    ({"type": "hello", "token": None, "device": None}, Hello(None, None, "default")),
    (
        {"type": "send", "id": "r1", "conv": "c7", "client_id": "6f1c", "body": "hi"},
        Send("r1", "c7", None, "6f1c", "hi", (), None),
    ),
    (
        {"type": "send", "id": "r2", "to": "Bob", "client_id": "9ab2", "body": "hi bob"},
        Send("r2", None, "bob", "9ab2", "hi bob", (), None),
    ),
    (
        {"type": "send", "conv": "c7", "to": None, "client_id": "k", "body": "", "media": ["m1"]},
        Send(None, "c7", None, "k", "", ("m1",), None),
    ),
    (
        {"type": "send", "conv": "c7", "client_id": "k", "media": ["m1", "m2"], "reply_to": 4},
        Send(None, "c7", None, "k", "", ("m1", "m2"), 4),
    ),
    (
        {
            "type": "send",
            "conv": "c7",
            "client_id": "k",
            "body": "x",
            "media": None,
            "reply_to": None,
        },
        Send(None, "c7", None, "k", "x", (), None),
    ),
    (
        {"type": "history", "id": "h1", "conv": "c7", "before": 100, "limit": 50},
        History("h1", "c7", 100, None, 50),
    ),
    ({"type": "history", "id": "h1", "conv": "c7"}, History("h1", "c7", None, None, 50)),
    (
        {"type": "history", "conv": "c7", "after": 0, "limit": 100, "before": None},
        History(None, "c7", None, 0, 100),
    ),
    ({"type": "history", "conv": "c7", "limit": 1}, History(None, "c7", None, None, 1)),
    ({"type": "conversations", "id": "l1"}, Conversations("l1")),
    (
        {"type": "receipt", "id": "k1", "conv": "c7", "kind": "delivered", "seq": 42},
        Receipt("k1", "c7", "delivered", 42),
    ),
    ({"type": "receipt", "conv": "c7", "kind": "read", "seq": 0}, Receipt(None, "c7", "read", 0)),
    ({"type": "typing", "conv": "c7", "state": "start"}, Typing(None, "c7", "start")),
    ({"type": "typing", "conv": "c7", "state": "stop"}, Typing(None, "c7", "stop")),
    (
        {"type": "create_group", "id": "g1", "title": " ops ", "members": ["Bob", "carol", "bob"]},
        CreateGroup("g1", "ops", ("bob", "carol")),
    ),
    ({"type": "create_group", "title": "solo"}, CreateGroup(None, "solo", ())),
    ({"type": "create_group", "title": "solo", "members": []}, CreateGroup(None, "solo", ())),
    (
        {"type": "add_members", "id": "g2", "conv": "c9", "members": ["dave"]},
        AddMembers("g2", "c9", ("dave",)),
    ),
    (
        {"type": "remove_member", "id": "g3", "conv": "c9", "user": "Dave"},
        RemoveMember("g3", "c9", "dave"),
    ),
    ({"type": "leave", "id": "g4", "conv": "c9"}, Leave("g4", "c9")),
    (
        {"type": "update_group", "id": "g5", "conv": "c9", "title": "ops-team"},
        UpdateGroup("g5", "c9", "ops-team"),
    ),
    (
        {"type": "set_role", "id": "g6", "conv": "c9", "user": "bob", "role": "admin"},
        SetRole("g6", "c9", "bob", "admin"),
    ),
    (
        {"type": "set_role", "conv": "c9", "user": "bob", "role": "member"},
        SetRole(None, "c9", "bob", "member"),
    ),
    ({"type": "contacts", "id": "p1"}, Contacts("p1")),
    ({"type": "add_contact", "id": "p2", "user": "carol"}, AddContact("p2", "carol")),
    ({"type": "remove_contact", "id": "p3", "user": "CAROL"}, RemoveContact("p3", "carol")),
    ({"type": "ping", "id": "z1"}, Ping("z1")),
    ({"type": "ping", "id": ""}, Ping("")),
    ({"type": "ping", "id": None}, Ping(None)),
    ({"type": "ping", "id": "i" * 64}, Ping("i" * 64)),
    ({"type": "mute", "id": "m1", "conv": "c7", "muted": True}, Mute("m1", "c7", True)),
    ({"type": "mute", "conv": "c7", "muted": False}, Mute(None, "c7", False)),
]


@pytest.mark.parametrize(("fields", "expected"), VALID, ids=[str(v[0]) for v in VALID])
def test_valid_frame_parses(fields: dict[str, Any], expected: frames.Request) -> None:
    raw = orjson.dumps(fields)
    assert parse(raw) == expected
    assert parse(raw.decode()) == expected


def test_every_request_type_has_a_valid_example() -> None:
    assert {type(expected) for _, expected in VALID} == set(REQUEST_TYPES.values())


def test_request_types_cover_the_protocol() -> None:
    assert set(REQUEST_TYPES) == PROTOCOL_V1_REQUESTS | ADDITIONS
    for name, cls in REQUEST_TYPES.items():
        assert cls.wire_type == name  # type: ignore[attr-defined]
        assert dataclasses.fields(cls)[0].name == "id"
        assert cls.__dataclass_params__.frozen  # type: ignore[attr-defined]
        assert "__slots__" in cls.__dict__


@pytest.mark.parametrize(("fields", "expected"), VALID, ids=[str(v[0]) for v in VALID])
def test_round_trip_through_fields(fields: dict[str, Any], expected: frames.Request) -> None:
    # Re-encode the parsed request as a frame and parse it again: the same request comes back.
    again = {"type": type(expected).wire_type}  # type: ignore[union-attr]
    for f in dataclasses.fields(expected):
        value = getattr(expected, f.name)
        again[f.name] = list(value) if isinstance(value, tuple) else value
    assert parse(orjson.dumps(again)) == expected


def test_docs_describe_every_frame_type() -> None:
    # docs/protocol.md shows an example of every request; every type it shows is a request,
    # a reply or an event.
    doc = (Path(__file__).parents[2] / "docs" / "protocol.md").read_text(encoding="utf-8")
    shown = set(re.findall(r'"type": "([a-z_]+)"', doc))
    assert set(REQUEST_TYPES) <= shown
    replies_and_events = {"ok", "error", "message", "receipt", "presence", "typing", "conversation"}
    assert shown <= set(REQUEST_TYPES) | replies_and_events


def test_unknown_fields_are_ignored() -> None:
    frame = _frame(type="ping", id="z", extra={"nested": [1, 2]}, version=2)
    assert parse(frame) == Ping("z")


def test_max_body_chars() -> None:
    assert parse(_frame(**_send(body="b" * 16384))).body == "b" * 16384  # type: ignore[union-attr]
    assert parse(_frame(**_send(body="b" * 10)), max_body_chars=10)
    with pytest.raises(ProtocolError) as info:
        parse(_frame(**_send(body="b" * 11)), max_body_chars=10)
    assert info.value.code == "too_large"
    # Characters are code points, not bytes.
    assert parse(_frame(**_send(body="\U0001f600" * 10)), max_body_chars=10)


def test_limits_at_the_edge_are_accepted() -> None:
    ten = [f"m{i}" for i in range(10)]
    assert parse(_frame(**_send(media=ten))).media == tuple(ten)  # type: ignore[union-attr]
    # Group size is the service's rule (past max_group_members: conflict), so parse lets a
    # list past 1000 through, up to its own bound on the work of one frame.
    members = [f"u{i:05}" for i in range(10000)]
    group = parse(_frame(type="create_group", title="t" * 128, members=members))
    assert isinstance(group, CreateGroup) and len(group.members) == 10000
    add = parse(
        _frame(type="add_members", conv="c" * 64, members=[f"u{i:04}" for i in range(1001)])
    )
    assert isinstance(add, AddMembers) and len(add.members) == 1001
    big = parse(_frame(**_with(RECEIPT, seq=2**63 - 1)))
    assert isinstance(big, Receipt) and big.seq == 2**63 - 1


# --- usernames ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "folded"),
    [
        ("alice", "alice"),
        ("Alice", "alice"),
        ("ALICE", "alice"),
        ("a.b-c_d", "a.b-c_d"),
        ("abc", "abc"),
        ("z" * 32, "z" * 32),
        ("007", "007"),
        ("...", "..."),
        ("\u212aelvin", "kelvin"),  # the Kelvin sign folds to "k"
        ("Stra\u00dfe", "strasse"),
        ("\u00df" * 16, "ss" * 16),
    ],
)
def test_normalize_username_accepts(raw: str, folded: str) -> None:
    assert normalize_username(raw) == folded


@pytest.mark.parametrize("raw", BAD_USERNAMES, ids=repr)
def test_normalize_username_refuses(raw: Any) -> None:
    with pytest.raises(ProtocolError) as info:
        normalize_username(raw)
    assert info.value.code == "bad_request"
    assert info.value.request_id is None


# --- never anything but ProtocolError ----------------------------------------------------------

_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5)
    ),
    max_leaves=20,
)
_field_values = st.one_of(
    _json,
    st.sampled_from(["c7", "bob", "Bob", "", "x" * 70, "start", "read", "admin", "owner"]),
    st.integers(min_value=-2, max_value=2**64),
    st.lists(st.sampled_from(["bob", "m1", "", 3, None]), max_size=12),
)
_frames = st.fixed_dictionaries(
    {"type": st.sampled_from(sorted(REQUEST_TYPES))},
    optional={
        name: _field_values
        for name in (
            "id",
            "conv",
            "to",
            "client_id",
            "body",
            "media",
            "reply_to",
            "before",
            "after",
            "limit",
            "kind",
            "seq",
            "state",
            "title",
            "members",
            "user",
            "role",
            "token",
            "device",
            "muted",
        )
    },
)


def _parse_or_protocol_error(data: str | bytes) -> None:
    try:
        request = parse(data)
    except ProtocolError as exc:
        assert exc.code in ("bad_request", "too_large")
        assert exc.request_id is None or (
            isinstance(exc.request_id, str) and len(exc.request_id) <= 64
        )
    else:
        assert type(request) in REQUEST_TYPES.values()


@settings(max_examples=300, deadline=None)
@given(_json)
def test_parse_arbitrary_json_values(value: Any) -> None:
    # The standard library encodes what orjson refuses to (integers past 64 bits, lone
    # surrogates as escapes), so parse also sees those.
    _parse_or_protocol_error(json.dumps(value))
    _parse_or_protocol_error(json.dumps(value, ensure_ascii=False).encode("utf-8", "replace"))


@settings(max_examples=250, deadline=None)
@given(_frames)
def test_parse_frames_with_arbitrary_fields(value: dict[str, Any]) -> None:
    _parse_or_protocol_error(json.dumps(value))


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_parse_arbitrary_text(text: str) -> None:
    _parse_or_protocol_error(text)


@settings(max_examples=300, deadline=None)
@given(st.binary())
def test_parse_arbitrary_bytes(data: bytes) -> None:
    _parse_or_protocol_error(data)


# --- valid frames generated: whatever is within the limits parses, and parses back the same ----

_text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"))
_ids = st.none() | _text.filter(lambda t: len(t) <= 64)
_convs = _text.filter(lambda t: 1 <= len(t) <= 64)
_usernames = st.from_regex(r"[A-Za-z0-9_.\-]{3,32}", fullmatch=True)
_seqs = st.integers(min_value=0, max_value=2**63 - 1)


@st.composite
def _valid_sends(draw: st.DrawFn) -> dict[str, Any]:
    frame: dict[str, Any] = {"type": "send", "id": draw(_ids)}
    if draw(st.booleans()):
        frame["conv"] = draw(_convs)
    else:
        frame["to"] = draw(_usernames)
    frame["client_id"] = draw(_text.filter(lambda t: 1 <= len(t) <= 64))
    media = draw(st.lists(_text.filter(lambda t: 1 <= len(t) <= 128), max_size=10, unique=True))
    if media or draw(st.booleans()):
        frame["media"] = media
    frame["body"] = draw(_text.filter(lambda t: len(t) <= 16384 and (t or media)))
    if draw(st.booleans()):
        frame["reply_to"] = draw(st.integers(min_value=1, max_value=2**63 - 1))
    return frame


@settings(max_examples=200, deadline=None)
@given(_valid_sends())
def test_valid_send_frames_parse(frame: dict[str, Any]) -> None:
    request = parse(orjson.dumps(frame))
    assert isinstance(request, Send)
    assert request.id == frame["id"]
    assert request.conv == frame.get("conv")
    assert request.to == (frame["to"].lower() if "to" in frame else None)
    assert request.client_id == frame["client_id"]
    assert request.body == frame["body"]
    assert request.media == tuple(frame.get("media", ()))
    assert request.reply_to == frame.get("reply_to")


@settings(max_examples=200, deadline=None)
@given(
    _ids,
    _convs,
    st.one_of(
        st.fixed_dictionaries({}),
        st.fixed_dictionaries({"before": _seqs}),
        st.fixed_dictionaries({"after": _seqs}),
    ),
    st.none() | st.integers(min_value=1, max_value=100),
)
def test_valid_history_frames_parse(
    rid: str | None, conv: str, page: dict[str, int], limit: int | None
) -> None:
    frame = {"type": "history", "id": rid, "conv": conv, "limit": limit, **page}
    assert parse(orjson.dumps(frame)) == History(
        rid, conv, page.get("before"), page.get("after"), 50 if limit is None else limit
    )


@settings(max_examples=100, deadline=None)
@given(
    _ids,
    _text.filter(lambda t: 1 <= len(t.strip()) <= 128),
    st.lists(_usernames, max_size=30),
)
def test_valid_create_group_frames_parse(rid: str | None, title: str, members: list[str]) -> None:
    request = parse(
        orjson.dumps({"type": "create_group", "id": rid, "title": title, "members": members})
    )
    assert request == CreateGroup(
        rid, title.strip(), tuple(dict.fromkeys(m.lower() for m in members))
    )


# --- serializers -------------------------------------------------------------------------------

PHOTO = MediaItem(
    id="m1",
    uploader="alice",
    mime="image/png",
    size=1234,
    filename="cat.png",
    sha256="ab" * 32,
    created_at=1,
    width=640,
    height=480,
)
DOC = MediaItem(
    id="m2",
    uploader="alice",
    mime="application/pdf",
    size=99,
    filename="a.pdf",
    sha256="cd" * 32,
    created_at=1,
)
TEXT = Message(
    conv="c7",
    seq=42,
    msg_id="7153",
    kind="text",
    sender="alice",
    client_id="6f1c",
    ts=1764316800123,
    body="hi",
)
SYSTEM = Message(
    conv="c9",
    seq=1,
    msg_id="7154",
    kind="system",
    sender="alice",
    client_id=None,
    ts=5,
    body=None,
    event={"action": "create", "users": ["bob", "carol"], "title": "ops"},
)


def _loads(data: bytes) -> Any:
    assert isinstance(data, bytes)
    return orjson.loads(data)


def test_ok() -> None:
    assert _loads(frames.ok("r1")) == {"type": "ok", "id": "r1"}
    assert _loads(frames.ok(None)) == {"type": "ok", "id": None}
    assert _loads(frames.ok("z1", {"ts": 5})) == {"type": "ok", "id": "z1", "ts": 5}
    # fields cannot forge the frame's type or id
    assert _loads(frames.ok("z1", {"type": "error", "id": "other", "x": 1})) == {
        "type": "ok",
        "id": "z1",
        "x": 1,
    }


def test_error() -> None:
    assert _loads(frames.error("r1", "forbidden", "not a member")) == {
        "type": "error",
        "id": "r1",
        "code": "forbidden",
        "message": "not a member",
    }
    assert _loads(frames.error(None, "rate_limited", "slow down", {"retry_after": 1.5})) == {
        "type": "error",
        "id": None,
        "code": "rate_limited",
        "message": "slow down",
        "retry_after": 1.5,
    }
    assert _loads(frames.error("r1", "internal", "boom", {"code": "ok", "type": "x"})) == {
        "type": "error",
        "id": "r1",
        "code": "internal",
        "message": "boom",
    }


def test_error_reply_of_a_protocol_error() -> None:
    try:
        parse(_frame(**_with(HISTORY, limit=0)))
    except ProtocolError as exc:
        reply = _loads(frames.error(exc.request_id, exc.code, exc.message))
    assert reply == {
        "type": "error",
        "id": "r1",
        "code": "bad_request",
        "message": "'limit' must be an integer from 1 to 100",
    }


def test_message_object_text() -> None:
    assert frames.message_object(TEXT) == {
        "conv": "c7",
        "seq": 42,
        "msg_id": "7153",
        "kind": "text",
        "from": "alice",
        "client_id": "6f1c",
        "ts": 1764316800123,
        "body": "hi",
        "media": [],
        "reply_to": None,
    }


def test_message_object_with_media_and_reply() -> None:
    m = dataclasses.replace(TEXT, body=None, media=(PHOTO, DOC), reply_to=40)
    assert frames.message_object(m) == {
        "conv": "c7",
        "seq": 42,
        "msg_id": "7153",
        "kind": "text",
        "from": "alice",
        "client_id": "6f1c",
        "ts": 1764316800123,
        "body": "",
        "media": [
            {
                "id": "m1",
                "mime": "image/png",
                "size": 1234,
                "filename": "cat.png",
                "sha256": "ab" * 32,
                "width": 640,
                "height": 480,
            },
            {
                "id": "m2",
                "mime": "application/pdf",
                "size": 99,
                "filename": "a.pdf",
                "sha256": "cd" * 32,
            },
        ],
        "reply_to": 40,
    }


def test_message_object_system() -> None:
    assert frames.message_object(SYSTEM) == {
        "conv": "c9",
        "seq": 1,
        "msg_id": "7154",
        "kind": "system",
        "from": "alice",
        "client_id": None,
        "ts": 5,
        "body": None,
        "media": [],
        "reply_to": None,
        "event": {"action": "create", "users": ["bob", "carol"], "title": "ops"},
    }


@pytest.mark.parametrize("m", [TEXT, SYSTEM, dataclasses.replace(TEXT, media=(PHOTO,))])
def test_message_event(m: Message) -> None:
    data = frames.message_event(m)
    assert data.startswith(b'{"type":"message",')
    assert _loads(data) == {"type": "message", **frames.message_object(m)}


def test_events() -> None:
    assert _loads(frames.receipt_event("c7", "bob", "read", 42, 9)) == {
        "type": "receipt",
        "conv": "c7",
        "user": "bob",
        "kind": "read",
        "seq": 42,
        "ts": 9,
    }
    assert _loads(frames.presence_event("bob", "offline", 1764316800123)) == {
        "type": "presence",
        "user": "bob",
        "status": "offline",
        "last_seen": 1764316800123,
    }
    assert _loads(frames.presence_event("bob", "online", None)) == {
        "type": "presence",
        "user": "bob",
        "status": "online",
        "last_seen": None,
    }
    assert _loads(frames.typing_event("c7", "bob", "start")) == {
        "type": "typing",
        "conv": "c7",
        "user": "bob",
        "state": "start",
    }
    assert _loads(frames.conversation_event("c9", "group", "ops")) == {
        "type": "conversation",
        "conv": "c9",
        "kind": "group",
        "title": "ops",
    }
    assert _loads(frames.conversation_event("c3", "direct", None)) == {
        "type": "conversation",
        "conv": "c3",
        "kind": "direct",
        "title": None,
    }


def test_conversation_object() -> None:
    summary = ConversationSummary(
        conversation=Conversation(conv="c7", kind="group", title="ops", created_at=1, last_seq=42),
        members=(
            Member(user="alice", role="owner", joined_at=1, delivered=42, read=39, muted=True),
            Member(user="bob", role="member", joined_at=2, delivered=40, read=40),
        ),
        last_message=TEXT,
        unread=3,
        last_activity=1764316800123,
    )
    assert frames.conversation_object(summary, "alice") == {
        "conv": "c7",
        "kind": "group",
        "title": "ops",
        "last_seq": 42,
        "unread": 3,
        "members": [
            {"user": "alice", "role": "owner", "delivered": 42, "read": 39},
            {"user": "bob", "role": "member", "delivered": 40, "read": 40},
        ],
        "last_message": frames.message_object(TEXT),
        "muted": True,
    }
    assert frames.conversation_object(summary, "bob")["muted"] is False
    empty = dataclasses.replace(summary, last_message=None)
    assert frames.conversation_object(empty, "bob")["last_message"] is None
    orjson.dumps(frames.conversation_object(summary, "alice"))  # serializable as is
