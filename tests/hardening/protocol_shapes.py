"""The protocol's shapes as checks: every frame chatd may send, written from docs/protocol.md.

Each ``check_*`` raises ``AssertionError`` naming what is wrong. Nothing here imports chatd:
the shapes are the contract, checked from the outside.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

ERROR_CODES = frozenset(
    {
        "bad_request",
        "unauthorized",
        "forbidden",
        "not_found",
        "conflict",
        "too_large",
        "rate_limited",
        "unavailable",
        "internal",
    }
)
MESSAGE_FIELDS = frozenset(
    {"conv", "seq", "msg_id", "kind", "from", "client_id", "ts", "body", "media", "reply_to"}
)
EVENT_ACTIONS = frozenset({"create", "add", "remove", "leave", "title", "role"})
MAX_SEQ = 2**63 - 1


def is_int(value: object) -> bool:
    return type(value) is int


def check_seq(value: object, what: str, minimum: int = 1) -> None:
    assert is_int(value) and minimum <= value <= MAX_SEQ, f"{what}: bad seq {value!r}"  # type: ignore[operator]


def check_ts(value: object, what: str) -> None:
    assert is_int(value) and value > 1_600_000_000_000, f"{what}: bad ts {value!r}"  # type: ignore[operator]


def check_message(m: Mapping[str, Any], what: str = "message") -> None:
    """A message object (an event without ``type``, or an item of ``history``)."""
    keys = set(m) - {"type"}
    expected = MESSAGE_FIELDS | ({"event"} if m.get("kind") == "system" else set())
    assert keys == expected, f"{what}: fields {sorted(keys)} != {sorted(expected)}: {m}"
    assert isinstance(m["conv"], str) and m["conv"], m
    check_seq(m["seq"], what)
    assert isinstance(m["msg_id"], str) and m["msg_id"].isdigit(), m
    check_ts(m["ts"], what)
    assert isinstance(m["from"], str), m
    assert isinstance(m["media"], list), m
    for item in m["media"]:
        assert {"id", "mime", "size", "filename", "sha256"} <= set(item), item
    if m["kind"] == "text":
        assert isinstance(m["body"], str), m
        assert isinstance(m["client_id"], str), m
        assert m["reply_to"] is None or is_int(m["reply_to"]), m
    else:
        assert m["kind"] == "system", f"{what}: kind {m['kind']!r}"
        assert m["body"] is None and m["client_id"] is None and m["reply_to"] is None, m
        assert m["media"] == [], m
        event = m["event"]
        assert isinstance(event, dict) and event.get("action") in EVENT_ACTIONS, m
        assert isinstance(event.get("users"), list), f"{what}: every system event has users: {m}"
        # a title change names nobody; every other change names whom it is about
        assert (event["users"] == []) == (event["action"] == "title"), m
        if event["action"] in ("create", "title"):
            assert isinstance(event.get("title"), str), m


def check_conversation(c: Mapping[str, Any]) -> None:
    """An item of the ``conversations`` reply."""
    required = {"conv", "kind", "title", "last_seq", "unread", "members", "last_message"}
    assert required <= set(c) <= required | {"muted"}, c
    assert c["kind"] in ("direct", "group"), c
    assert (c["title"] is None) == (c["kind"] == "direct"), c
    check_seq(c["last_seq"], "last_seq", 0)
    assert is_int(c["unread"]) and 0 <= c["unread"] <= c["last_seq"], c
    for member in c["members"]:
        assert set(member) == {"user", "role", "delivered", "read"}, member
        assert member["role"] in ("owner", "admin", "member"), member
        check_seq(member["delivered"], "delivered", 0)
        check_seq(member["read"], "read", 0)
    if c["last_message"] is not None:
        check_message(c["last_message"], "last_message")
        assert c["last_message"]["seq"] == c["last_seq"], c
    if "muted" in c:
        assert isinstance(c["muted"], bool), c


def check_ok(frame: Mapping[str, Any], request_type: str) -> None:
    """An ``ok`` reply to ``request_type``, with exactly the fields the protocol gives it."""
    fields = set(frame) - {"type", "id"}
    what = f"ok to {request_type}"
    if request_type == "send":
        assert fields == {"conv", "seq", "msg_id", "ts", "duplicate"}, (what, frame)
        check_seq(frame["seq"], what)
        assert isinstance(frame["msg_id"], str) and frame["msg_id"].isdigit(), frame
        check_ts(frame["ts"], what)
        assert isinstance(frame["duplicate"], bool), frame
    elif request_type == "history":
        assert fields == {"messages", "more"}, (what, frame)
        assert isinstance(frame["more"], bool), frame
        for m in frame["messages"]:
            check_message(m, "history item")
        seqs = [m["seq"] for m in frame["messages"]]
        assert seqs == sorted(set(seqs)), f"history not in ascending seq: {seqs}"
    elif request_type == "conversations":
        assert fields == {"conversations"}, (what, frame)
        for c in frame["conversations"]:
            check_conversation(c)
    elif request_type == "receipt":
        assert fields == {"conv", "delivered", "read"}, (what, frame)
        check_seq(frame["delivered"], what, 0)
        check_seq(frame["read"], what, 0)
    elif request_type == "create_group":
        assert fields == {"conv"}, (what, frame)
    elif request_type in ("add_members", "remove_member", "leave", "update_group", "set_role"):
        assert fields in ({"conv"}, {"conv", "seq"}), (what, frame)
        if "seq" in fields:
            check_seq(frame["seq"], what)
    elif request_type == "contacts":
        assert fields == {"contacts"}, (what, frame)
        for c in frame["contacts"]:
            assert set(c) == {"user", "status", "last_seen"}, c
            assert c["status"] in ("online", "offline"), c
            assert c["last_seen"] is None or is_int(c["last_seen"]), c
    elif request_type in ("typing", "add_contact", "remove_contact"):
        assert fields == set(), (what, frame)
    elif request_type == "ping":
        assert fields == {"ts"}, (what, frame)
        check_ts(frame["ts"], what)
    elif request_type == "mute":
        assert fields == {"conv", "muted"}, (what, frame)
        assert isinstance(frame["muted"], bool), frame
    elif request_type == "hello":
        assert {"user", "connection", "server", "heartbeat"} <= fields, (what, frame)
    else:
        raise AssertionError(f"no shape known for {request_type!r}")


def check_error(frame: Mapping[str, Any]) -> None:
    assert frame.get("type") == "error", frame
    assert set(frame) - {"retry_after"} == {"type", "id", "code", "message"}, frame
    assert frame["id"] is None or isinstance(frame["id"], str), frame
    assert frame["code"] in ERROR_CODES, f"unknown error code: {frame}"
    assert isinstance(frame["message"], str) and frame["message"], frame
    if frame["code"] == "rate_limited":
        retry = frame.get("retry_after")
        assert isinstance(retry, int | float) and not isinstance(retry, bool), frame
    else:
        assert "retry_after" not in frame, frame


def check_event(frame: Mapping[str, Any]) -> None:
    """Any frame without an ``id``: one of the protocol's events."""
    kind = frame.get("type")
    assert "id" not in frame, f"an event carries an id: {frame}"
    if kind == "message":
        check_message(frame)
    elif kind == "receipt":
        assert set(frame) == {"type", "conv", "user", "kind", "seq", "ts"}, frame
        assert frame["kind"] in ("delivered", "read"), frame
        check_seq(frame["seq"], "receipt event", 0)
        check_ts(frame["ts"], "receipt event")
    elif kind == "presence":
        assert set(frame) == {"type", "user", "status", "last_seen"}, frame
        assert frame["status"] in ("online", "offline"), frame
        if frame["status"] == "online":
            assert frame["last_seen"] is None, frame
        else:
            check_ts(frame["last_seen"], "presence event")
    elif kind == "typing":
        assert set(frame) == {"type", "conv", "user", "state"}, frame
        assert frame["state"] in ("start", "stop"), frame
    elif kind == "conversation":
        assert set(frame) == {"type", "conv", "kind", "title"}, frame
        assert frame["kind"] in ("direct", "group"), frame
    else:
        raise AssertionError(f"unknown event type: {frame}")


def check_frame(frame: Mapping[str, Any]) -> None:
    """Any frame from the server: an ``error``, an ``ok`` (shape checked by the caller, who
    knows the request), or an event."""
    kind = frame.get("type")
    if kind == "error":
        check_error(frame)
    elif kind == "ok":
        assert isinstance(frame.get("id"), str), f"an ok without an id: {frame}"
    else:
        check_event(frame)
