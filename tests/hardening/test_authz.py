"""The authorization matrix (issue 10): every request type and HTTP endpoint, against every kind
of caller who must not succeed.

The matrix has one row per WebSocket request type (``WS_ROWS``, checked against
``chatd.transport.frames.REQUEST_TYPES``) and one per HTTP route (``HTTP_ROWS``, checked against
the routes of ``chatd.app.build_app``): a new request type or route without a row fails
:func:`test_matrix_has_a_row_for_every_request_type_and_route`.

Callers who must not succeed:

* members-only callers: a user who was never in the conversation (``outsider``), a member who
  was removed (``removed``), a member who left (``departed``). Every conversation-scoped probe
  answers ``not_found`` (or ``forbidden``), and the answer (code AND message, or HTTP status AND
  body) is identical to the one for a conversation id that does not exist;
* token callers: no token, a garbage token, a revoked token, an expired token, the token of a
  disabled user. ``hello`` is refused (``unauthorized``, close 4401), a request pipelined after
  it is never executed, and every authenticated HTTP route answers 401;
* another user's media id: download (and thumbnail) is 404 exactly like a media id that does
  not exist; sending it is ``forbidden`` exactly like a media id that does not exist.

At the end of each scenario the victims' view is compared with a snapshot taken before the
probes: nothing the hostile callers sent changed anything or reached anyone.
"""

from __future__ import annotations

import asyncio
import io
import json
import secrets
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from PIL import Image

from chatd.app import build_app
from chatd.config import load_settings
from chatd.transport.frames import REQUEST_TYPES
from tests.e2e.client import Frame, Harness, User, Ws, dumps
from tests.e2e.server import ChatdServer, ServerFactory, run_cli

# Typing probes are many per socket here; the typing limit itself is tested in test_limits.py.
SERVER_FLAGS = {"typing_per_second": 1000}

Fields = dict[str, Any]


def no_such_conv() -> str:
    """A conversation id shaped like chatd's (``c`` and 16 hex digits) that does not exist."""
    return "c" + secrets.token_hex(8)


def no_such_media() -> str:
    return secrets.token_urlsafe(16)


# ---------------------------------------------------------------------------------------------
# The WebSocket rows


@dataclass(frozen=True)
class Caller:
    """A hostile caller as the probes see it."""

    name: str
    own_conv: str  # a group of their own, where they may send
    own_media: str  # one of their own uploads


ConvProbe = Callable[[str, Caller, "World"], Fields]
PlainProbe = Callable[[Caller, "World"], Fields]


@dataclass(frozen=True)
class WsRow:
    """How one request type is probed.

    ``conv``: probes aimed at a conversation (the argument); a caller who is not a member must
    get ``not_found``/``forbidden``, identical to the answer for a conversation that does not
    exist. ``plain``: probes that name no conversation (any authenticated user may make them);
    ``no_leak`` then checks that the reply shows nothing of the victims' conversations.
    """

    conv: tuple[ConvProbe, ...] = ()
    plain: tuple[PlainProbe, ...] = ()
    no_leak: Callable[[Frame, World, str], None] | None = None
    hello: bool = False


def _cid() -> str:
    return uuid.uuid4().hex


def _conversations_hidden(reply: Frame, world: World, caller: str) -> None:
    listed = {c["conv"] for c in reply["conversations"]}
    assert world.group not in listed, f"{caller} still lists the group: {reply}"
    assert world.direct not in listed, f"{caller} lists alice and bob's direct conversation"


def _contacts_plain(reply: Frame, world: World, caller: str) -> None:
    assert isinstance(reply["contacts"], list), reply


def _group_is_new(reply: Frame, world: World, caller: str) -> None:
    assert reply["conv"] not in (world.group, world.direct), reply


WS_ROWS: dict[str, WsRow] = {
    "hello": WsRow(hello=True),
    "send": WsRow(
        conv=(
            lambda c, me, w: {"conv": c, "client_id": _cid(), "body": "intrusion"},
            lambda c, me, w: {"conv": c, "client_id": _cid(), "body": "x", "reply_to": 1},
            lambda c, me, w: {"conv": c, "client_id": _cid(), "body": "x", "reply_to": 10**6},
            lambda c, me, w: {"conv": c, "client_id": _cid(), "body": "", "media": [me.own_media]},
        )
    ),
    "history": WsRow(
        conv=(
            lambda c, me, w: {"conv": c},
            lambda c, me, w: {"conv": c, "after": 0, "limit": 100},
            lambda c, me, w: {"conv": c, "before": 10**6},
        )
    ),
    "conversations": WsRow(plain=(lambda me, w: {},), no_leak=_conversations_hidden),
    "receipt": WsRow(
        conv=(
            lambda c, me, w: {"conv": c, "kind": "read", "seq": 1},
            lambda c, me, w: {"conv": c, "kind": "delivered", "seq": 10**9},
            lambda c, me, w: {"conv": c, "kind": "read", "seq": 0},
        )
    ),
    "typing": WsRow(conv=(lambda c, me, w: {"conv": c, "state": "start"},)),
    "create_group": WsRow(
        plain=(lambda me, w: {"title": "mine too", "members": [w.alice.name]},),
        no_leak=_group_is_new,
    ),
    "add_members": WsRow(
        conv=(
            lambda c, me, w: {"conv": c, "members": [me.name]},
            lambda c, me, w: {"conv": c, "members": [w.bob.name]},
        )
    ),
    "remove_member": WsRow(
        conv=(
            lambda c, me, w: {"conv": c, "user": w.alice.name},
            lambda c, me, w: {"conv": c, "user": w.bob.name},
            lambda c, me, w: {"conv": c, "user": me.name},
        )
    ),
    "leave": WsRow(conv=(lambda c, me, w: {"conv": c},)),
    "update_group": WsRow(conv=(lambda c, me, w: {"conv": c, "title": "pwned"},)),
    "set_role": WsRow(
        conv=(
            lambda c, me, w: {"conv": c, "user": me.name, "role": "admin"},
            lambda c, me, w: {"conv": c, "user": w.bob.name, "role": "admin"},
        )
    ),
    "contacts": WsRow(plain=(lambda me, w: {},), no_leak=_contacts_plain),
    "add_contact": WsRow(plain=(lambda me, w: {"user": w.alice.name},)),
    "remove_contact": WsRow(plain=(lambda me, w: {"user": w.bob.name},)),
    "ping": WsRow(plain=(lambda me, w: {},)),
    "mute": WsRow(
        conv=(
            lambda c, me, w: {"conv": c, "muted": True},
            lambda c, me, w: {"conv": c, "muted": False},
        )
    ),
}


# ---------------------------------------------------------------------------------------------
# The HTTP rows


@dataclass(frozen=True)
class HttpRow:
    """One route. ``auth``: it needs a bearer token. ``scope``: what its path parameter names
    (``conv``, ``media``, ``sub``) and so which foreign-object probes apply. ``body``: a valid
    request body (so that only authorization can make it fail)."""

    auth: bool
    scope: str | None = None
    json_body: Any = None
    data: bytes | None = None
    no_leak: Callable[[Any, World, str], None] | None = None


def _http_conversations_hidden(body: Any, world: World, caller: str) -> None:
    if caller == "bob":
        return  # a member of both
    listed = {c["conv"] for c in body["conversations"]}
    assert world.group not in listed and world.direct not in listed, (caller, body)


def _subscriptions_hidden(body: Any, world: World, caller: str) -> None:
    ids = {s["id"] for s in body["subscriptions"]}
    assert world.sub_id not in ids, (caller, body)


HTTP_ROWS: dict[tuple[str, str], HttpRow] = {
    ("POST", "/api/v1/users"): HttpRow(auth=False),
    ("POST", "/api/v1/sessions"): HttpRow(auth=False),
    ("DELETE", "/api/v1/sessions/current"): HttpRow(auth=True),
    ("GET", "/api/v1/me"): HttpRow(auth=True),
    ("GET", "/api/v1/conversations"): HttpRow(auth=True, no_leak=_http_conversations_hidden),
    ("GET", "/api/v1/conversations/{conv}/messages"): HttpRow(auth=True, scope="conv"),
    ("PUT", "/api/v1/conversations/{conv}/mute"): HttpRow(
        auth=True, scope="conv", json_body={"muted": True}
    ),
    ("POST", "/api/v1/media"): HttpRow(auth=True, data=b"hello"),
    ("GET", "/api/v1/media/{media_id}"): HttpRow(auth=True, scope="media"),
    ("GET", "/api/v1/media/{media_id}/thumbnail"): HttpRow(auth=True, scope="media"),
    ("GET", "/api/v1/push/vapid-public-key"): HttpRow(auth=True),
    ("GET", "/api/v1/push/subscriptions"): HttpRow(auth=True, no_leak=_subscriptions_hidden),
    ("POST", "/api/v1/push/subscriptions"): HttpRow(
        auth=True, json_body={"kind": "webhook", "url": "https://push.example.com/t"}
    ),
    ("DELETE", "/api/v1/push/subscriptions/{sub_id}"): HttpRow(auth=True, scope="sub"),
    ("GET", "/healthz"): HttpRow(auth=False),
    ("GET", "/readyz"): HttpRow(auth=False),
    ("GET", "/metrics"): HttpRow(auth=False),
    ("GET", "/"): HttpRow(auth=False),
    ("GET", "/sw.js"): HttpRow(auth=False),
    ("GET", "/static"): HttpRow(auth=False),
    ("GET", "/ws"): HttpRow(auth=False),  # authenticated by hello; Origin is checked below
}


def app_routes(data_dir: Path) -> set[tuple[str, str]]:
    """``(method, path template)`` of every route of a real app (built, never started).

    A ``HEAD`` route is the ``GET`` route's twin (aiohttp adds one per ``add_get``): it runs the
    same handler, so it is covered by the ``GET`` row and probed with ``HEAD`` too.
    """
    settings = load_settings({"data_dir": str(data_dir), "store": "memory://"}, env={})
    app = build_app(settings)
    routes = {(r.method, r.resource.canonical) for r in app.router.routes() if r.resource}
    heads = {path for method, path in routes if method == "HEAD"}
    gets = {path for method, path in routes if method == "GET"}
    assert heads <= gets, f"HEAD routes without a GET: {heads - gets}"
    return {(method, path) for method, path in routes if method != "HEAD"}


def test_matrix_has_a_row_for_every_request_type_and_route(tmp_path: Path) -> None:
    wire_types = set(REQUEST_TYPES)
    assert set(WS_ROWS) == wire_types, (
        f"request types without a row: {sorted(wire_types - set(WS_ROWS))}; "
        f"rows for types that do not exist: {sorted(set(WS_ROWS) - wire_types)}"
    )
    routes = app_routes(tmp_path)
    assert set(HTTP_ROWS) == routes, (
        f"routes without a row: {sorted(routes - set(HTTP_ROWS))}; "
        f"rows for routes that do not exist: {sorted(set(HTTP_ROWS) - routes)}"
    )
    for name, row in WS_ROWS.items():
        assert row.hello or row.conv or row.plain, f"row {name} probes nothing"


# ---------------------------------------------------------------------------------------------
# The world the probes attack


@dataclass
class World:
    h: Harness
    alice: User  # owner of the group, uploader of the media, owner of the subscription
    bob: User  # member of the group and alice's direct partner
    group: str
    direct: str
    shared_media: str  # alice's image, sent to the group while ``removed`` was a member
    private_media: str  # alice's upload, never sent
    sub_id: str  # alice's push subscription
    alice_ws: Ws
    bob_ws: Ws
    hostile: dict[str, tuple[User, Ws, Caller]] = field(default_factory=dict)
    snapshot: dict[str, Any] = field(default_factory=dict)


def png(width: int = 40, height: int = 30) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), (200, 30, 30)).save(out, format="PNG")
    return out.getvalue()


async def fetch(h: Harness, method: str, path: str, token: str | None) -> tuple[int, Any]:
    """Like ``Harness.http`` for answers that may be binary: ``(status, JSON or bytes)``."""
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    async with asyncio.timeout(5):
        async with h.session.request(method, h.base + path, headers=headers) as resp:
            raw = await resp.read()
            if resp.content_type == "application/json" and raw:
                return resp.status, json.loads(raw)
            return resp.status, raw


async def upload(h: Harness, user: User, data: bytes, mime: str, name: str) -> str:
    status, body = await h.http(
        "POST",
        "/api/v1/media",
        token=user.token,
        data=data,
        headers={"Content-Type": mime},
        params={"filename": name},
    )
    assert status == 201, (status, body)
    return str(body["media_id"])


async def make_world(h: Harness, *, removed: bool = True, departed: bool = True) -> World:
    names = ["alice", "bob", "outsider"] + ["removed"] * removed + ["departed"] * departed
    users = dict(zip(names, await h.users(*names), strict=True))
    alice, bob = users["alice"], users["bob"]
    connected = await asyncio.gather(*(h.connect(u) for u in users.values()))
    sockets = dict(zip(names, connected, strict=True))
    a = sockets["alice"]
    members = [u.name for n, u in users.items() if n not in ("alice", "outsider")]
    group = (await a.ok("create_group", title="secret plans", members=members))["conv"]
    shared = await upload(h, alice, png(), "image/png", "plan.png")
    await a.send("secret one", conv=group)
    await a.ok("send", conv=group, client_id=_cid(), body="the plan", media=[shared])
    direct = (await a.send("hi bob", to=bob.name))["conv"]
    private = await upload(h, alice, b"private notes", "text/plain", "notes.txt")
    status, body = await h.http(
        "POST",
        "/api/v1/push/subscriptions",
        token=alice.token,
        json_body={"kind": "webhook", "url": "https://push.example.com/alice"},
    )
    assert status == 201, (status, body)
    if removed:
        await a.ok("remove_member", conv=group, user=users["removed"].name)
    if departed:
        await sockets["departed"].ok("leave", conv=group)
    world = World(h, alice, bob, group, direct, shared, private, str(body["id"]), a, sockets["bob"])
    for kind in ("outsider", "removed", "departed"):
        if kind not in users:
            continue
        user, ws = users[kind], sockets[kind]
        own_conv = (await ws.ok("create_group", title=f"{kind}'s own"))["conv"]
        own_media = await upload(h, user, png(8, 8), "image/png", "mine.png")
        world.hostile[kind] = (user, ws, Caller(user.name, own_conv, own_media))
    await take_snapshot(world)
    return world


async def victims_view(world: World) -> dict[str, Any]:
    """What alice and bob can see of their conversations: must not move under the probes."""
    reply = await world.alice_ws.ok("conversations")
    view: dict[str, Any] = {}
    for c in reply["conversations"]:
        if c["conv"] in (world.group, world.direct):
            view[c["conv"]] = {
                "last_seq": c["last_seq"],
                "title": c["title"],
                "members": c["members"],
                "muted": c.get("muted"),
            }
    status, subs = await world.h.http("GET", "/api/v1/push/subscriptions", token=world.alice.token)
    assert status == 200, subs
    view["subscriptions"] = sorted(s["id"] for s in subs["subscriptions"])
    for media in (world.shared_media, world.private_media):
        status, _ = await fetch(world.h, "GET", f"/api/v1/media/{media}", world.alice.token)
        view[media] = status
    return view


async def take_snapshot(world: World) -> None:
    world.snapshot = await victims_view(world)
    assert world.group in world.snapshot and world.direct in world.snapshot, world.snapshot
    world.bob_ws.take_events()
    world.alice_ws.take_events()


async def assert_nothing_changed(world: World) -> None:
    """The victims' conversations, subscriptions and media are as before, and neither alice nor
    bob received anything from the probes (checked behind a sentinel message)."""
    assert await victims_view(world) == world.snapshot
    sentinel = await world.alice_ws.send("sentinel", conv=world.group)
    await world.bob_ws.message(world.group, sentinel["seq"])
    for ws in (world.alice_ws, world.bob_ws):
        stray = [ev for ev in ws.take_events() if ev.get("conv") in (world.group, world.direct)]
        assert not stray, f"{ws.label} got events from the probes: {stray}"


# ---------------------------------------------------------------------------------------------
# Members-only: outsiders, removed members, departed members


def _same(a: Frame, b: Frame) -> bool:
    return (a.get("type"), a.get("code"), a.get("message")) == (
        b.get("type"),
        b.get("code"),
        b.get("message"),
    )


async def _probe(ws: Ws, type_: str, fields: Fields) -> Frame:
    return await ws.request(type_, **fields)


async def test_members_only_requests_refuse_outsiders_removed_and_departed_members(
    h: Harness,
) -> None:
    world = await make_world(h)
    failures: list[str] = []
    for kind, (user, ws, caller) in world.hostile.items():
        targets = [world.group, world.direct]
        for type_, row in WS_ROWS.items():
            for probe in row.conv:
                for target in targets:
                    fields = probe(target, caller, world)
                    got = await _probe(ws, type_, fields)
                    missing = await _probe(ws, type_, probe(no_such_conv(), caller, world))
                    what = f"{kind} {type_} {fields}"
                    if got.get("type") != "error" or got.get("code") not in (
                        "not_found",
                        "forbidden",
                    ):
                        failures.append(f"{what}: expected not_found/forbidden, got {got}")
                    elif not _same(got, missing):
                        failures.append(
                            f"{what}: reveals that the conversation exists: {got} "
                            f"!= the answer for one that does not: {missing}"
                        )
            for plain in row.plain:
                fields = plain(caller, world)
                got = await _probe(ws, type_, fields)
                if got.get("type") != "ok":
                    failures.append(f"{kind} {type_} {fields}: expected ok, got {got}")
                elif row.no_leak is not None:
                    try:
                        row.no_leak(got, world, kind)
                    except AssertionError as exc:
                        failures.append(f"{kind} {type_}: leaks: {exc}")
            if row.hello:
                got = await _probe(ws, "hello", {"token": user.token})
                if got.get("type") != "error" or got.get("code") != "bad_request":
                    failures.append(f"{kind} second hello: expected bad_request, got {got}")
        assert not ws.closed, f"{kind}'s socket was closed by the probes ({ws.close_code})"
        got = await ws.request("ping")
        assert got["type"] == "ok", got
    assert not failures, "\n".join(failures)
    await assert_nothing_changed(world)


async def test_removed_and_departed_members_lose_history_and_live_events(h: Harness) -> None:
    world = await make_world(h)
    for kind in ("removed", "departed"):
        _user, ws, _caller = world.hostile[kind]
        ws.take_events()
    after = await world.alice_ws.send("after they were gone", conv=world.group)
    await world.bob_ws.message(world.group, after["seq"])
    await world.alice_ws.ok("typing", conv=world.group, state="start")
    await world.bob_ws.event("typing", conv=world.group)
    for kind in ("removed", "departed", "outsider"):
        _user, ws, _caller = world.hostile[kind]
        pong = await ws.request("ping")  # replies come after anything already queued
        assert pong["type"] == "ok"
        leaked = [ev for ev in ws.take_events() if ev.get("conv") == world.group]
        assert not leaked, f"{kind} still receives the group's events: {leaked}"


# ---------------------------------------------------------------------------------------------
# Another user's media


async def test_another_users_media_cannot_be_fetched_or_sent(h: Harness) -> None:
    world = await make_world(h)
    failures: list[str] = []
    probes = {
        "outsider": [world.shared_media, world.private_media],
        "removed": [world.shared_media, world.private_media],  # saw the shared one once
        "departed": [world.shared_media, world.private_media],
    }
    readers: list[tuple[str, User, list[str]]] = [
        (kind, world.hostile[kind][0], ids) for kind, ids in probes.items()
    ]
    readers.append(("bob (a member, never sent the private one)", world.bob, [world.private_media]))
    for kind, user, media_ids in readers:
        for media_id in media_ids:
            for suffix in ("", "/thumbnail"):
                for method in ("GET", "HEAD"):
                    got = await fetch(h, method, f"/api/v1/media/{media_id}{suffix}", user.token)
                    missing = await fetch(
                        h, method, f"/api/v1/media/{no_such_media()}{suffix}", user.token
                    )
                    what = f"{kind} {method} media{suffix} of alice"
                    if got[0] != 404:
                        failures.append(f"{what}: expected 404, got {got}")
                    elif got != missing:
                        failures.append(f"{what}: {got} differs from a missing item's {missing}")
    # bob may see the shared image (a member of the group where it was sent) but not send it
    status, _ = await fetch(h, "GET", f"/api/v1/media/{world.shared_media}", world.bob.token)
    assert status == 200
    bob_own = (await world.bob_ws.ok("create_group", title="bob's"))["conv"]
    senders: list[tuple[str, Ws, str]] = [
        (kind, ws, caller.own_conv) for kind, (_u, ws, caller) in world.hostile.items()
    ]
    senders.append(("bob", world.bob_ws, bob_own))
    for kind, ws, own_conv in senders:
        for media_id in (world.shared_media, world.private_media):
            fake = no_such_media()
            sent = await ws.request(
                "send", conv=own_conv, client_id=_cid(), body="", media=[media_id]
            )
            refused = await ws.request(
                "send", conv=own_conv, client_id=_cid(), body="", media=[fake]
            )
            what = f"{kind} sends alice's media"
            if sent.get("code") != "forbidden":
                failures.append(f"{what}: expected forbidden, sent {sent}")
            elif str(sent.get("message")).replace(media_id, "ID") != str(
                refused.get("message")
            ).replace(fake, "ID"):
                failures.append(f"{what}: {sent} differs from a missing item's {refused}")
    assert not failures, "\n".join(failures)
    await assert_nothing_changed(world)


# ---------------------------------------------------------------------------------------------
# HTTP: members-only routes, foreign objects, and no-leak listings


def _fill(path: str, values: Mapping[str, str]) -> str:
    for name, value in values.items():
        path = path.replace("{" + name + "}", value)
    return path


async def _http(h: Harness, method: str, path: str, row: HttpRow, token: str | None) -> Any:
    if row.scope == "media":
        return await fetch(h, method, path, token)
    return await h.http(method, path, token=token, json_body=row.json_body, data=row.data)


async def test_http_routes_refuse_outsiders_removed_and_departed_members(h: Harness) -> None:
    world = await make_world(h)
    failures: list[str] = []
    callers: list[tuple[str, User]] = [(k, v[0]) for k, v in world.hostile.items()]
    callers.append(("bob", world.bob))
    for (method, template), row in HTTP_ROWS.items():
        if not row.auth:
            continue
        for kind, user in callers:
            if row.scope == "conv":
                targets = [world.group, world.direct] if kind != "bob" else []
                fake = {"conv": no_such_conv()}
                real = [{"conv": t} for t in targets]
            elif row.scope == "media":
                targets = [world.private_media] + ([world.shared_media] if kind != "bob" else [])
                fake = {"media_id": no_such_media()}
                real = [{"media_id": t} for t in targets]
            elif row.scope == "sub":
                fake = {"sub_id": secrets.token_urlsafe(12)}
                real = [{"sub_id": world.sub_id}]
            else:
                if row.no_leak is not None:
                    status, body = await _http(h, method, template, row, user.token)
                    try:
                        assert status == 200, (status, body)
                        row.no_leak(body, world, kind)
                    except AssertionError as exc:
                        failures.append(f"{kind} {method} {template} leaks: {exc}")
                continue
            for values in real:
                path = _fill(template, values)
                got = await _http(h, method, path, row, user.token)
                missing = await _http(h, method, _fill(template, fake), row, user.token)
                if got[0] not in (403, 404):
                    failures.append(f"{kind} {method} {path}: expected 404/403, got {got}")
                elif got != missing:
                    failures.append(
                        f"{kind} {method} {path}: {got} reveals existence; "
                        f"a missing one answers {missing}"
                    )
    assert not failures, "\n".join(failures)
    await assert_nothing_changed(world)


# ---------------------------------------------------------------------------------------------
# Tokens: none, garbage, revoked, disabled, expired


async def _pipelined_after_refused_hello(
    h: Harness, token: str | None, type_: str, fields: Fields
) -> tuple[list[Frame], int | None]:
    """Open a socket (the token at the upgrade), send ``hello`` and a request at once, and
    return every frame received until the server closed the socket, and the close code."""
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    ws = await h.raw_ws(headers=headers, label=f"pipelined-{type_}")
    await ws.send_raw(dumps({"type": "hello", "id": "hello", "device": "d"}))
    await ws.send_raw(dumps({"type": type_, "id": "probe", **fields}))
    code = await ws.wait_closed(timeout=5)
    return list(ws.frames), code


async def check_token_refused(h: Harness, token: str | None, world: World, kind: str) -> list[str]:
    """Every way of using ``token`` is refused; returns the failures found."""
    failures: list[str] = []
    # hello with the token in the frame
    ws = await h.raw_ws(label=f"hello-{kind}")
    fields: Fields = {"device": "d"} if token is None else {"token": token, "device": "d"}
    reply = await ws.request("hello", **fields)
    code = await ws.wait_closed(timeout=5)
    if reply.get("code") != "unauthorized" or code != 4401:
        failures.append(f"{kind}: hello answered {reply}, close {code}; expected 4401")
    # every request type pipelined after hello: never executed
    caller = Caller("nobody_here", no_such_conv(), no_such_media())
    target = world.group
    for type_, row in WS_ROWS.items():
        frames_: list[Fields] = [p(target, caller, world) for p in row.conv]
        frames_ += [p(caller, world) for p in row.plain]
        if row.hello:
            frames_.append({"token": token or "x", "device": "again"})
        for probe_fields in frames_[:1]:
            got, close = await _pipelined_after_refused_hello(h, token, type_, probe_fields)
            first = got[0] if got else {}
            executed = [f for f in got if f.get("id") == "probe" and f.get("type") == "ok"]
            if first.get("code") != "unauthorized" or close != 4401 or executed:
                failures.append(
                    f"{kind}: hello then {type_} answered {got}, close {close}; expected "
                    "unauthorized and 4401 without running the request"
                )
    # every authenticated HTTP route
    values = {"conv": world.group, "media_id": world.shared_media, "sub_id": world.sub_id}
    for (method, template), http_row in HTTP_ROWS.items():
        if not http_row.auth:
            continue
        path = _fill(template, values)
        methods = [method, "HEAD"] if method == "GET" else [method]
        for m in methods:
            status, body = await h.http(
                m, path, token=token, json_body=http_row.json_body, data=http_row.data
            )
            code_ok = m == "HEAD" or (
                isinstance(body, dict) and body.get("error", {}).get("code") == "unauthorized"
            )
            if status != 401 or not code_ok:
                failures.append(f"{kind}: {m} {path} answered {status} {body}; expected 401")
    return failures


async def test_missing_and_garbage_tokens_are_refused_everywhere(h: Harness) -> None:
    world = await make_world(h, removed=False, departed=False)
    failures: list[str] = []
    for kind, token in (
        ("no token", None),
        ("garbage token", secrets.token_urlsafe(32)),
        ("over-long token", "A" * 600),
        ("alice's token hash as a token", world.alice.token[::-1]),
    ):
        failures += await check_token_refused(h, token, world, kind)
    assert not failures, "\n".join(failures)
    await assert_nothing_changed(world)


async def test_a_revoked_token_is_refused_and_its_sockets_closed(h: Harness) -> None:
    world = await make_world(h, removed=False, departed=False)
    other_token = await h.token(world.bob)  # a second session of bob: must keep working
    other = await h.connect(world.bob, "phone", token=other_token)
    doomed = await h.connect(world.bob, "laptop")
    status, _ = await h.http("DELETE", "/api/v1/sessions/current", token=world.bob.token)
    assert status == 204
    assert await doomed.wait_closed(timeout=5) == 4401
    assert await world.bob_ws.wait_closed(timeout=5) == 4401
    failures = await check_token_refused(h, world.bob.token, world, "revoked token")
    assert not failures, "\n".join(failures)
    assert (await other.request("ping"))["type"] == "ok", "the other session was ended too"
    world.bob_ws = other
    await assert_nothing_changed(world)


async def test_a_disabled_user_is_cut_off_at_once(h: Harness) -> None:
    """``chatd user disable`` while the server runs: the user's open socket closes with 4401,
    their tokens are refused everywhere and logging in answers like a wrong password."""
    world = await make_world(h, removed=False, departed=False)
    victim, victim_ws, _ = world.hostile["outsider"]
    # make the victim a member of alice's group, so that their socket matters
    await world.alice_ws.ok("add_members", conv=world.group, members=[victim.name])
    await take_snapshot(world)
    server: ChatdServer = h.server
    result = await asyncio.to_thread(
        run_cli, "user", "disable", victim.name, "--data-dir", str(server.data_dir)
    )
    assert result.returncode == 0, result.stderr
    code = await victim_ws.wait_closed(timeout=5)
    failures: list[str] = []
    if code != 4401:
        failures.append(f"the disabled user's open socket was not closed with 4401: {code}")
    failures += await check_token_refused(h, victim.token, world, "disabled user's token")
    disabled_login = await h.login(victim.name)
    wrong_password = await h.login(world.bob.name, "not the password")
    if disabled_login != wrong_password:
        failures.append(
            f"login of a disabled user {disabled_login} differs from a wrong password "
            f"{wrong_password}"
        )
    assert not failures, "\n".join(failures)
    await assert_nothing_changed(world)


async def test_an_expired_token_is_refused_and_its_socket_closed(
    server_factory: ServerFactory, harness: Callable[[ChatdServer], Harness]
) -> None:
    """Sessions of 0.00002 days (1.7 s), re-checked every 0.5 s: a socket open past its
    session's expiry is closed with 4401, and the token is refused everywhere after it."""
    server = server_factory(session_ttl_days=0.00002, session_recheck_seconds=0.5)
    h = harness(server)
    alice, bob = await h.users("alice", "bob")
    a = await h.connect(alice)
    group = (await a.ok("create_group", title="short lived", members=[bob.name]))["conv"]
    code = await a.wait_closed(timeout=8)
    failures: list[str] = []
    if code != 4401:
        failures.append(f"the socket of an expired session closed with {code}, not 4401")
    world_like = World(
        h, alice, bob, group, no_such_conv(), no_such_media(), no_such_media(), "x", a, a
    )
    failures += await check_token_refused(h, alice.token, world_like, "expired token")
    assert not failures, "\n".join(failures)


# ---------------------------------------------------------------------------------------------
# Public routes and the WebSocket upgrade's Origin check


async def test_public_routes_answer_without_a_token(h: Harness) -> None:
    for (method, template), row in HTTP_ROWS.items():
        if row.auth or method != "GET" or template == "/ws":
            continue
        path = "/static/index.html" if template == "/static" else template
        status, body = await h.http("GET", path)
        assert status not in (401, 403), (path, status, body)


@pytest.mark.parametrize(
    "origin",
    [
        "http://evil.example",
        "null",
        "{own}.evil.example",  # the own origin as a prefix
        "http://evil.example/{own}",
        "https://127.0.0.1:{port}",  # another scheme
        "http://127.0.0.1:{port}0",  # another port that starts the same
        "http://127.0.0.2:{port}",
        "{own}/",
        "*",
    ],
)
async def test_websocket_upgrade_refuses_foreign_origins(h: Harness, origin: str) -> None:
    server = h.server
    value = origin.format(own=server.origin, port=server.port)
    user = await h.user("origin")
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await h.raw_ws(headers={"Origin": value, "Authorization": f"Bearer {user.token}"})
    assert refused.value.status == 403, (value, refused.value)


async def test_websocket_upgrade_allows_own_origin_and_no_origin(h: Harness) -> None:
    user = await h.user("origin")
    for headers in ({"Origin": h.server.origin}, {}):
        ws = await h.raw_ws(headers=headers)
        reply = await ws.request("hello", token=user.token)
        assert reply["type"] == "ok", (headers, reply)
