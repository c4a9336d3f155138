"""A hypothesis state machine of the protocol (issue 10), against one real ``chatd serve``.

Each example registers three fresh users, each with one socket, and then runs a random
sequence of requests: sends (to conversations the user is in or not, to users, retries of an
earlier ``client_id``), history pages, receipts, typing, mutes, group changes by every role,
contacts, pings, and hostile frames (garbage text and binary, JSON that is not an object, valid
requests with one field made invalid, random objects with a real request type).

A model of the conversations (members, roles, titles, every message) predicts each answer:
``ok`` with the right fields and values, or the right error code. After every step every
socket is still open; at the end of each example every frame each socket received has the
protocol's shape, every member's socket received exactly the messages meant for it, in
``seq`` order, and each conversation's history is ``1..last_seq`` without a gap and as the
model says.

The server runs in its own process; the test's sockets live on an event loop in a background
thread (hypothesis rules are synchronous), and every call into it is bounded.
"""

# Every wait in a test is bounded, so the bound is part of each helper's signature.

from __future__ import annotations

import asyncio
import itertools
import json
import secrets
import threading
import uuid
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

import aiohttp
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test

from tests.e2e.client import Frame, Harness, Ws, dumps, history_all
from tests.e2e.server import ChatdServer

from .protocol_shapes import check_error, check_frame, check_ok

T = TypeVar("T")

# Limits that would make answers depend on timing are lifted; they are tested elsewhere.
SERVER_FLAGS = {"messages_per_second": 100000, "message_burst": 100000, "typing_per_second": 1e5}
USERS = 3
STEP_TIMEOUT = 10.0
NOT_MEMBER = ("not_found", "forbidden")
STATS: dict[str, int] = {"examples": 0, "convs": 0, "messages": 0}


class LoopThread:
    """An asyncio loop in a daemon thread; :meth:`run` runs a coroutine there, bounded."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def __enter__(self) -> LoopThread:
        self.thread.start()
        return self

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = STEP_TIMEOUT) -> T:
        future = asyncio.run_coroutine_threadsafe(asyncio.wait_for(coro, timeout), self.loop)
        return future.result(timeout + 2)

    def __exit__(self, *exc: object) -> None:
        async def cancel_rest() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(cancel_rest(), self.loop).result(STEP_TIMEOUT)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


# ---------------------------------------------------------------------------------------------
# The model


@dataclass
class Conv:
    kind: str  # "direct" or "group"
    members: dict[str, str]  # user -> role, in join order
    title: str | None
    last_seq: int = 0
    messages: dict[int, tuple[str, str, str | None]] = field(default_factory=dict)
    # seq -> users whose socket must receive its message event
    recipients: dict[int, set[str]] = field(default_factory=dict)

    def store(self, seq: int, kind: str, sender: str, body: str | None, to: set[str]) -> None:
        assert seq == self.last_seq + 1, f"seq {seq} after {self.last_seq}: a gap or a repeat"
        self.last_seq = seq
        self.messages[seq] = (kind, sender, body)
        self.recipients[seq] = set(to)


@dataclass
class Client:
    name: str
    ws: Ws
    contacts: set[str] = field(default_factory=set)
    sends: list[tuple[str, str, int, str]] = field(default_factory=list)  # cid, conv, seq, msg_id


usernames = st.sampled_from(range(USERS))
bodies = st.text(max_size=40)  # any code point but surrogates (not encodable as UTF-8)
titles = st.one_of(
    st.text(min_size=1, max_size=20),
    st.sampled_from(["", "   ", "x" * 129, "ok title"]),
)
# No NaN or infinity: json.dumps would write them as bare words, which are not JSON at all.
finite_floats = st.floats(allow_nan=False, allow_infinity=False)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | finite_floats | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=8,
)
# A field made invalid: a wrong type, out of range, over-long, or with a NUL.
invalid_values: dict[str, st.SearchStrategy[Any]] = {
    "conv": st.sampled_from(["", "x" * 65, 5, [], {}, True, "c\u0000x"]),
    "seq": st.sampled_from([-1, 1.5, "1", True, 2**63, [1]]),
    "limit": st.sampled_from([0, 101, -5, 2.0, "10", False]),
    "before": st.sampled_from([-1, 0.5, "9", 2**64]),
    "after": st.sampled_from([-1, 0.5, "9", 2**64]),
    "kind": st.sampled_from(["", "seen", 1, None]),
    "state": st.sampled_from(["typing", "", 0, None]),
    "user": st.sampled_from(["", "ab", "x" * 33, "no spaces", 7, None, "bad!"]),
    "members": st.sampled_from(["bob", [1], [""], {"a": 1}, ["ok_name", None]]),
    "role": st.sampled_from(["owner", "boss", "", 1, None]),
    "title": st.sampled_from(["", "  ", "x" * 129, 5, None]),
    "muted": st.sampled_from([1, 0, "true", None]),
    "client_id": st.sampled_from(["", "x" * 65, 3, None, "a\u0000"]),
    "body": st.sampled_from([5, [], {"a": 1}]),
}
# For each request aimed at a conversation: a valid frame (fields) and the fields to spoil.
VALID_FRAMES: dict[str, tuple[dict[str, Any], tuple[str, ...]]] = {
    "send": ({"client_id": "cid", "body": "b"}, ("conv", "client_id", "body")),
    "history": ({"limit": 10, "after": 0}, ("conv", "limit", "after")),
    "receipt": ({"kind": "read", "seq": 1}, ("conv", "kind", "seq")),
    "typing": ({"state": "start"}, ("conv", "state")),
    "add_members": ({"members": ["someone"]}, ("conv", "members")),
    "remove_member": ({"user": "someone"}, ("conv", "user")),
    "update_group": ({"title": "t"}, ("conv", "title")),
    "set_role": ({"user": "someone", "role": "admin"}, ("conv", "user", "role")),
    "mute": ({"muted": True}, ("conv", "muted")),
    "leave": ({}, ("conv",)),
}


def heir_of(members: dict[str, str], leaving: str) -> set[str]:
    """Who may inherit ownership: the admins if any, else every other member."""
    others = {u: r for u, r in members.items() if u != leaving}
    admins = {u for u, r in others.items() if r == "admin"}
    return admins or set(others)


class ProtocolMachine(RuleBasedStateMachine):
    server: ChatdServer
    runner: LoopThread
    session: aiohttp.ClientSession

    def __init__(self) -> None:
        super().__init__()
        self.h = Harness(self.server, self.session)
        users = self.runner.run(self.h.users(*["fsm"] * USERS))
        sockets = [self.runner.run(self.h.connect(u)) for u in users]
        self.clients = [Client(u.name, ws) for u, ws in zip(users, sockets, strict=True)]
        self.names = [c.name for c in self.clients]
        self.convs: dict[str, Conv] = {}
        self.direct: dict[frozenset[str], str] = {}
        self.missing_conv = "c" + secrets.token_hex(8)
        self.ids = itertools.count()

    # -- helpers -----------------------------------------------------------------------------

    def request(self, who: int, type_: str, **fields: Any) -> Frame:
        reply = self.runner.run(self.clients[who].ws.request(type_, **fields))
        if reply["type"] == "ok":
            check_ok(reply, type_)
        else:
            check_error(reply)
        return reply

    def expect_error(self, reply: Frame, codes: tuple[str, ...] | str, what: str) -> None:
        wanted = (codes,) if isinstance(codes, str) else codes
        assert reply["type"] == "error" and reply["code"] in wanted, f"{what}: {reply}"

    def conv_choice(self, data: st.DataObject) -> str:
        # In the order they were made: their ids are random, so sorting them would make the same
        # draw pick another conversation on a replay, and hypothesis refuses such a test.
        return data.draw(st.sampled_from([*self.convs, self.missing_conv]), label="conv")

    def member(self, conv: str, who: int) -> bool:
        model = self.convs.get(conv)
        return model is not None and self.names[who] in model.members

    def system_event(self, who: int, conv: str, seq: int) -> Frame:
        """The system message the acting socket received before its ``ok``."""
        ws = self.clients[who].ws
        found = [e for e in ws.peek_events("message") if e["conv"] == conv and e["seq"] == seq]
        assert found, f"the acting socket did not get the system message {conv}/{seq}"
        return found[0]

    def stored_change(self, who: int, conv: str, reply: Frame, to: set[str]) -> None:
        model = self.convs[conv]
        assert reply["conv"] == conv, reply
        model.store(reply["seq"], "system", self.names[who], None, to)

    # -- sending -----------------------------------------------------------------------------

    @rule(who=usernames, data=st.data(), body=bodies)
    def send_to_conversation(self, who: int, data: st.DataObject, body: str) -> None:
        conv = self.conv_choice(data)
        cid = uuid.uuid4().hex
        reply = self.request(who, "send", conv=conv, client_id=cid, body=body)
        if body == "" or "\x00" in body:
            return self.expect_error(reply, "bad_request", f"send {body!r}")
        if not self.member(conv, who):
            return self.expect_error(reply, NOT_MEMBER, "send by a non-member")
        assert reply["type"] == "ok" and reply["conv"] == conv and not reply["duplicate"], reply
        model = self.convs[conv]
        model.store(
            reply["seq"], "text", self.names[who], body, set(model.members) - {self.names[who]}
        )
        self.clients[who].sends.append((cid, conv, reply["seq"], reply["msg_id"]))

    @rule(who=usernames, other=usernames, body=bodies.filter(lambda b: b and "\x00" not in b))
    def send_to_user(self, who: int, other: int, body: str) -> None:
        cid = uuid.uuid4().hex
        reply = self.request(who, "send", to=self.names[other], client_id=cid, body=body)
        if who == other:
            return self.expect_error(reply, "bad_request", "send to yourself")
        assert reply["type"] == "ok", reply
        pair = frozenset((self.names[who], self.names[other]))
        conv = reply["conv"]
        if pair not in self.direct:
            assert conv not in self.convs, "a new direct conversation reused an id"
            self.direct[pair] = conv
            self.convs[conv] = Conv("direct", {n: "member" for n in sorted(pair)}, None)
            self.clients[who].contacts.add(self.names[other])
            self.clients[other].contacts.add(self.names[who])
        assert self.direct[pair] == conv, "a second direct conversation for one pair"
        model = self.convs[conv]
        model.store(reply["seq"], "text", self.names[who], body, {self.names[other]})
        self.clients[who].sends.append((cid, conv, reply["seq"], reply["msg_id"]))

    @rule(who=usernames, data=st.data())
    def send_to_unknown_user(self, who: int, data: st.DataObject) -> None:
        name = "nobody_" + secrets.token_hex(6)
        reply = self.request(who, "send", to=name, client_id=uuid.uuid4().hex, body="hi")
        self.expect_error(reply, "not_found", "send to a user who does not exist")

    @rule(who=usernames, data=st.data())
    def resend_a_client_id(self, who: int, data: st.DataObject) -> None:
        sends = [s for s in self.clients[who].sends if self.member(s[1], who)]
        if not sends:
            return
        cid, conv, seq, msg_id = data.draw(st.sampled_from(sends), label="earlier send")
        target = self.conv_choice(data)  # a retry's other fields do not matter
        if target not in self.convs or self.names[who] not in self.convs[target].members:
            target = conv
        reply = self.request(who, "send", conv=target, client_id=cid, body="retry")
        assert reply["type"] == "ok", reply
        assert (reply["conv"], reply["seq"], reply["msg_id"], reply["duplicate"]) == (
            conv,
            seq,
            msg_id,
            True,
        ), reply

    # -- reading -----------------------------------------------------------------------------

    @rule(
        who=usernames,
        data=st.data(),
        mode=st.sampled_from(["newest", "before", "after"]),
        limit=st.integers(1, 100),
    )
    def history(self, who: int, data: st.DataObject, mode: str, limit: int) -> None:
        conv = self.conv_choice(data)
        fields: dict[str, Any] = {"conv": conv, "limit": limit}
        last = self.convs[conv].last_seq if conv in self.convs else 0
        edge = data.draw(st.integers(0, last + 3), label="edge")
        if mode != "newest":
            fields[mode] = edge
        reply = self.request(who, "history", **fields)
        if not self.member(conv, who):
            return self.expect_error(reply, NOT_MEMBER, "history of a non-member")
        assert reply["type"] == "ok", reply
        if mode == "after":
            expected = list(range(edge + 1, min(edge + limit, last) + 1))
            more = edge + limit < last
        else:
            top = last if mode == "newest" else min(edge - 1, last)
            expected = list(range(max(1, top - limit + 1), top + 1))
            more = bool(expected) and expected[0] > 1
        got = [m["seq"] for m in reply["messages"]]
        assert got == expected, f"history {fields}: seqs {got} != {expected}"
        assert reply["more"] == more, f"history {fields}: more={reply['more']}, expected {more}"
        model = self.convs[conv]
        for m in reply["messages"]:
            kind, sender, body = model.messages[m["seq"]]
            assert (m["kind"], m["from"], m["conv"]) == (kind, sender, conv), m
            if kind == "text":
                assert m["body"] == body, m

    @rule(who=usernames)
    def conversations(self, who: int) -> None:
        reply = self.request(who, "conversations")
        listed = {c["conv"]: c for c in reply["conversations"]}
        me = self.names[who]
        for conv, model in self.convs.items():
            if me not in model.members:
                assert conv not in listed, f"{me} lists {conv} without being a member"
                continue
            assert conv in listed, f"{me} does not list {conv}"
            item = listed[conv]
            assert item["last_seq"] == model.last_seq, (item, model.last_seq)
            assert item["kind"] == model.kind and item["title"] == model.title, item
            roles = {m["user"]: m["role"] for m in item["members"]}
            assert roles == model.members, (roles, model.members)

    # -- receipts, typing, mute ----------------------------------------------------------------

    @rule(who=usernames, data=st.data(), kind=st.sampled_from(["delivered", "read"]))
    def receipt(self, who: int, data: st.DataObject, kind: str) -> None:
        conv = self.conv_choice(data)
        last = self.convs[conv].last_seq if conv in self.convs else 0
        seq = data.draw(st.sampled_from([0, 1, last, last + 1, 10**9]), label="seq")
        reply = self.request(who, "receipt", conv=conv, kind=kind, seq=seq)
        if not self.member(conv, who):
            return self.expect_error(reply, NOT_MEMBER, "receipt of a non-member")
        if seq > last:
            return self.expect_error(reply, "bad_request", f"receipt past the end ({seq})")
        assert reply["type"] == "ok" and reply["conv"] == conv, reply
        assert reply["delivered"] >= reply["read"], "read implies delivered"
        assert reply["delivered"] >= seq and (kind == "delivered" or reply["read"] >= seq), reply
        assert reply["delivered"] <= last, reply

    @rule(who=usernames, data=st.data(), state=st.sampled_from(["start", "stop"]))
    def typing(self, who: int, data: st.DataObject, state: str) -> None:
        conv = self.conv_choice(data)
        reply = self.request(who, "typing", conv=conv, state=state)
        if not self.member(conv, who):
            return self.expect_error(reply, NOT_MEMBER, "typing of a non-member")
        assert reply["type"] == "ok", reply

    @rule(who=usernames, data=st.data(), muted=st.booleans())
    def mute(self, who: int, data: st.DataObject, muted: bool) -> None:
        conv = self.conv_choice(data)
        reply = self.request(who, "mute", conv=conv, muted=muted)
        if not self.member(conv, who):
            return self.expect_error(reply, NOT_MEMBER, "mute of a non-member")
        assert reply == {"type": "ok", "id": reply["id"], "conv": conv, "muted": muted}, reply

    # -- groups ------------------------------------------------------------------------------

    @rule(who=usernames, invited=st.lists(usernames, max_size=4), title=titles)
    def create_group(self, who: int, invited: list[int], title: str) -> None:
        names = [self.names[i] for i in invited]
        reply = self.request(who, "create_group", title=title, members=names)
        clean = title.strip()
        if not clean or len(clean) > 128 or "\x00" in title:
            return self.expect_error(reply, "bad_request", f"create_group title {title!r}")
        assert reply["type"] == "ok", reply
        conv = reply["conv"]
        assert conv not in self.convs, "a new group reused an id"
        me = self.names[who]
        members = {me: "owner"} | {n: "member" for n in names if n != me}
        self.convs[conv] = Conv("group", members, clean)
        self.convs[conv].store(1, "system", me, None, set(members))

    def group_target(self, who: int, data: st.DataObject) -> tuple[str, Conv | None, str | None]:
        """A conversation and the answer the model expects before the request's own rules:
        ``not_found`` for a non-member, ``bad_request`` for a direct conversation."""
        conv = self.conv_choice(data)
        model = self.convs.get(conv)
        if model is None or self.names[who] not in model.members:
            return conv, model, "not_member"
        if model.kind != "group":
            return conv, model, "bad_request"
        return conv, model, None

    @rule(who=usernames, data=st.data(), added=st.lists(usernames, min_size=1, max_size=3))
    def add_members(self, who: int, data: st.DataObject, added: list[int]) -> None:
        conv, model, early = self.group_target(who, data)
        names = [self.names[i] for i in added]
        reply = self.request(who, "add_members", conv=conv, members=names)
        if early == "not_member":
            return self.expect_error(reply, NOT_MEMBER, "add_members by a non-member")
        if early:
            return self.expect_error(reply, early, "add_members to a direct conversation")
        assert model is not None
        if model.members[self.names[who]] == "member":
            return self.expect_error(reply, "forbidden", "add_members by a plain member")
        new = [n for n in dict.fromkeys(names) if n not in model.members]
        assert reply["type"] == "ok", reply
        if not new:
            assert "seq" not in reply, f"add_members of members only stored something: {reply}"
            return
        for n in new:
            model.members[n] = "member"
        self.stored_change(who, conv, reply, set(model.members))

    @rule(who=usernames, data=st.data(), whom=usernames)
    def remove_member(self, who: int, data: st.DataObject, whom: int) -> None:
        conv, model, early = self.group_target(who, data)
        victim = self.names[whom]
        reply = self.request(who, "remove_member", conv=conv, user=victim)
        if early == "not_member":
            return self.expect_error(reply, NOT_MEMBER, "remove_member by a non-member")
        if early:
            return self.expect_error(reply, early, "remove_member in a direct conversation")
        assert model is not None
        if whom == who:
            return self.after_leave(who, conv, model, reply)
        actor = model.members[self.names[who]]
        if actor == "member":
            return self.expect_error(reply, "forbidden", "remove_member by a plain member")
        if victim not in model.members:
            return self.expect_error(reply, "not_found", "remove_member of a non-member")
        role = model.members[victim]
        if role == "owner" or (role == "admin" and actor != "owner"):
            return self.expect_error(reply, "forbidden", f"{actor} removes an {role}")
        assert reply["type"] == "ok", reply
        del model.members[victim]
        self.stored_change(who, conv, reply, set(model.members) | {victim})

    @rule(who=usernames, data=st.data())
    def leave(self, who: int, data: st.DataObject) -> None:
        conv, model, early = self.group_target(who, data)
        reply = self.request(who, "leave", conv=conv)
        if early == "not_member":
            return self.expect_error(reply, NOT_MEMBER, "leave by a non-member")
        if early:
            return self.expect_error(reply, early, "leave a direct conversation")
        assert model is not None
        self.after_leave(who, conv, model, reply)

    def after_leave(self, who: int, conv: str, model: Conv, reply: Frame) -> None:
        assert reply["type"] == "ok" and "seq" in reply, reply
        me = self.names[who]
        was_owner = model.members[me] == "owner"
        allowed = heir_of(model.members, me)
        del model.members[me]
        self.stored_change(who, conv, reply, set(model.members) | {me})
        event = self.system_event(who, conv, reply["seq"])["event"]
        assert event["action"] == "leave" and event["users"] == [me], event
        if was_owner and model.members:
            heir = event.get("owner")
            assert heir in allowed, f"ownership passed to {heir}, expected one of {allowed}"
            model.members[heir] = "owner"
        else:
            assert "owner" not in event, event

    @rule(who=usernames, data=st.data(), title=titles)
    def update_group(self, who: int, data: st.DataObject, title: str) -> None:
        conv, model, early = self.group_target(who, data)
        reply = self.request(who, "update_group", conv=conv, title=title)
        clean = title.strip()
        if not clean or len(clean) > 128 or "\x00" in title:
            return self.expect_error(reply, "bad_request", f"update_group title {title!r}")
        if early == "not_member":
            return self.expect_error(reply, NOT_MEMBER, "update_group by a non-member")
        if early:
            return self.expect_error(reply, early, "update_group of a direct conversation")
        assert model is not None
        if model.members[self.names[who]] == "member":
            return self.expect_error(reply, "forbidden", "update_group by a plain member")
        assert reply["type"] == "ok", reply
        if clean == model.title:
            assert "seq" not in reply, reply
            return
        model.title = clean
        self.stored_change(who, conv, reply, set(model.members))

    @rule(
        who=usernames,
        data=st.data(),
        whom=usernames,
        role=st.sampled_from(["admin", "member", "owner"]),
    )
    def set_role(self, who: int, data: st.DataObject, whom: int, role: str) -> None:
        conv, model, early = self.group_target(who, data)
        subject = self.names[whom]
        reply = self.request(who, "set_role", conv=conv, user=subject, role=role)
        if role == "owner":
            return self.expect_error(reply, "bad_request", "set_role owner")
        if early == "not_member":
            return self.expect_error(reply, NOT_MEMBER, "set_role by a non-member")
        if early:
            return self.expect_error(reply, early, "set_role in a direct conversation")
        assert model is not None
        if model.members[self.names[who]] != "owner":
            return self.expect_error(reply, "forbidden", "set_role by a non-owner")
        if subject not in model.members:
            return self.expect_error(reply, "not_found", "set_role of a non-member")
        if model.members[subject] == "owner":
            return self.expect_error(reply, "forbidden", "set_role of the owner")
        assert reply["type"] == "ok", reply
        if model.members[subject] == role:
            assert "seq" not in reply, reply
            return
        model.members[subject] = role
        self.stored_change(who, conv, reply, set(model.members))

    # -- contacts and ping -------------------------------------------------------------------

    @rule(who=usernames, other=usernames)
    def add_contact(self, who: int, other: int) -> None:
        reply = self.request(who, "add_contact", user=self.names[other])
        if who == other:
            return self.expect_error(reply, "bad_request", "add yourself as a contact")
        assert reply["type"] == "ok", reply
        self.clients[who].contacts.add(self.names[other])

    @rule(who=usernames, other=usernames)
    def remove_contact(self, who: int, other: int) -> None:
        reply = self.request(who, "remove_contact", user=self.names[other])
        assert reply["type"] == "ok", reply
        self.clients[who].contacts.discard(self.names[other])

    @rule(who=usernames)
    def contacts(self, who: int) -> None:
        reply = self.request(who, "contacts")
        listed = [c["user"] for c in reply["contacts"]]
        assert listed == sorted(self.clients[who].contacts), (listed, self.clients[who].contacts)
        assert all(c["status"] == "online" for c in reply["contacts"]), reply

    @rule(who=usernames)
    def ping(self, who: int) -> None:
        self.request(who, "ping")

    # -- hostile frames ----------------------------------------------------------------------

    def drain_orphans(self, who: int) -> list[Frame]:
        """Every id-less reply received so far, once a ``ping`` came back: errors found while
        parsing a frame are written at once, so they come before the ping's reply."""
        ws = self.clients[who].ws
        self.request(who, "ping")
        taken, ws.orphans = ws.orphans, []
        for frame in taken:
            check_error(frame)
            assert frame["id"] is None, f"an orphan reply with an id: {frame}"
        return taken

    @rule(who=usernames, text=st.text(max_size=60), binary=st.booleans())
    def garbage(self, who: int, text: str, binary: bool) -> None:
        """Text that is not a JSON object (or any binary frame): ``bad_request``, ``id`` null."""
        ws = self.clients[who].ws
        try:
            value = json.loads(text)
        except ValueError:
            value = None
        if isinstance(value, dict) and not binary:
            return  # an object: the typed rules cover those
        self.drain_orphans(who)
        if binary:
            self.runner.run(ws.ws.send_bytes(text.encode()))
        else:
            self.runner.run(ws.send_raw(text))
        orphans = self.drain_orphans(who)
        assert [f["code"] for f in orphans] == ["bad_request"], (text, binary, orphans)

    @rule(who=usernames, data=st.data())
    def spoiled_field(self, who: int, data: st.DataObject) -> None:
        """A valid request with one field made invalid: ``bad_request`` (``too_large`` never,
        bodies here are short), carrying the request's id, and nothing changes."""
        type_ = data.draw(st.sampled_from(sorted(VALID_FRAMES)), label="type")
        fields, spoilable = VALID_FRAMES[type_]
        frame = {"conv": self.conv_choice(data), **fields}
        name = data.draw(st.sampled_from(spoilable), label="field")
        bad = data.draw(invalid_values[name], label="value")
        if bad is None:
            frame.pop(name)
        else:
            frame[name] = bad
        reply = self.request(who, type_, **frame)
        self.expect_error(reply, "bad_request", f"{type_} with {name}={bad!r}")

    @rule(
        who=usernames,
        data=st.data(),
        type_=st.sampled_from(
            sorted(
                {
                    "history",
                    "conversations",
                    "receipt",
                    "typing",
                    "add_members",
                    "remove_member",
                    "leave",
                    "update_group",
                    "set_role",
                    "contacts",
                    "remove_contact",
                    "ping",
                    "mute",
                    "send",
                    "hello",
                    "add_contact",
                }
            )
        ),
        extra=st.dictionaries(
            st.sampled_from(
                [
                    "conv",
                    "seq",
                    "limit",
                    "before",
                    "after",
                    "kind",
                    "state",
                    "user",
                    "members",
                    "role",
                    "title",
                    "muted",
                    "client_id",
                    "body",
                    "to",
                    "media",
                    "reply_to",
                    "token",
                    "device",
                    "zzz",
                ]
            ),
            json_values,
            max_size=5,
        ),
        id_kind=st.sampled_from(["valid", "none", "int", "long", "list"]),
    )
    def random_object(
        self, who: int, data: st.DataObject, type_: str, extra: dict[str, Any], id_kind: str
    ) -> None:
        """A request type with random fields: whatever the answer, it has the protocol's shape
        and the socket stays open. Nothing can change the model: no field can name one of its
        conversations or users (random strings), and ``create_group`` is not fuzzed here."""
        ws = self.clients[who].ws
        frame: dict[str, Any] = {"type": type_, **extra}
        for key in ("conv", "user", "to"):
            if isinstance(frame.get(key), str):
                frame[key] = "zz" + frame[key]  # never a real conversation or one of our users
        if type_ == "send":
            frame["to"] = "nobody_" + secrets.token_hex(4)
        rid = f"fz{next(self.ids)}"
        if id_kind == "valid":
            frame["id"] = rid
            reply = self.runner.run(ws.request_text(dumps(frame), rid))
            check_frame(reply)
            if reply["type"] == "ok":
                check_ok(reply, type_)
                assert type_ not in ("hello",), f"a second hello succeeded: {reply}"
            return
        frame["id"] = {"none": None, "int": 7, "long": "x" * 65, "list": [rid]}[id_kind]
        if id_kind == "none":
            # Its error, if any, may come after anything else: it is shape-checked at the end.
            self.runner.run(ws.send_raw(dumps(frame)))
            return
        self.drain_orphans(who)
        self.runner.run(ws.send_raw(dumps(frame)))
        orphans = self.drain_orphans(who)
        assert [f["code"] for f in orphans] == ["bad_request"], (frame, orphans)

    # -- invariants and the end of an example --------------------------------------------------

    @invariant()
    def sockets_stay_open(self) -> None:
        for client in self.clients:
            assert not client.ws.closed, f"{client.name}'s socket closed: {client.ws.close_code}"

    def teardown(self) -> None:
        try:
            self.check_everything()
        finally:
            self.runner.run(self.h.close())

    def check_everything(self) -> None:
        STATS["examples"] += 1
        STATS["convs"] += len(self.convs)
        STATS["messages"] += sum(c.last_seq for c in self.convs.values())
        for client in self.clients:  # a reply comes after every event already written to it
            assert self.request(self.names.index(client.name), "ping")["type"] == "ok"
        for client in self.clients:
            received: dict[str, list[int]] = {}
            for frame in client.ws.frames:
                check_frame(frame)
                if frame.get("type") == "message" and frame["conv"] in self.convs:
                    received.setdefault(frame["conv"], []).append(frame["seq"])
            for orphan in client.ws.orphans:
                check_error(orphan)
            for conv, seqs in received.items():
                assert seqs == sorted(set(seqs)), f"{client.name}: {conv} events out of order"
            for conv, model in self.convs.items():
                meant = sorted(s for s, to in model.recipients.items() if client.name in to)
                got = received.get(conv, [])
                assert got == meant, (
                    f"{client.name} received messages {got} of {conv}, expected {meant}"
                )
        for conv, model in self.convs.items():
            if not model.members:
                continue
            reader = next(c for c in self.clients if c.name in model.members)
            messages = self.runner.run(history_all(reader.ws, conv), 30)
            seqs = [m["seq"] for m in messages]
            assert seqs == list(range(1, model.last_seq + 1)), f"{conv}: history seqs {seqs}"
            for m in messages:
                kind, sender, body = model.messages[m["seq"]]
                assert (m["kind"], m["from"]) == (kind, sender), m
                if kind == "text":
                    assert m["body"] == body, m


def machine_for(server: ChatdServer, runner: LoopThread, session: aiohttp.ClientSession) -> type:
    class Machine(ProtocolMachine):
        pass

    Machine.server = server
    Machine.runner = runner
    Machine.session = session
    return Machine


@pytest.fixture
def runner() -> Iterator[LoopThread]:
    with LoopThread() as loop:
        yield loop


@pytest.mark.timeout(120)
def test_protocol_state_machine(server: ChatdServer, runner: LoopThread) -> None:
    async def open_session() -> aiohttp.ClientSession:
        return aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))

    session = runner.run(open_session())
    try:
        run_state_machine_as_test(
            machine_for(server, runner, session),
            settings=settings(
                max_examples=60,
                stateful_step_count=80,
                deadline=None,
                database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
            ),
        )
    finally:
        runner.run(session.close())
    print(STATS)
