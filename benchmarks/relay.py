"""The bare baseline relay: what aiohttp + orjson can do with no storage and no checks.

It speaks the subset of chatd's protocol the driver uses, with the same frame shapes, so the
same driver drives both and the ratio chatd / relay says what chatd's rules, store and routing
cost. Per frame it parses once with orjson; a message is serialized once and the same bytes are
written to every member connection; the sender gets its ``ok`` after the writes. Nothing is
stored, nothing is checked: a token is the username.

HTTP: ``POST /api/v1/users`` and ``POST /api/v1/sessions`` answer like chatd (the token is the
username), ``GET /healthz`` is 200. WebSocket ``/ws``: ``hello``, ``send`` (``to`` or ``conv``),
``create_group``, ``ping``; anything else gets ``error`` ``bad_request``.

Run: ``python -m benchmarks.relay --port 9000 [--heartbeat 25]``.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import time
from typing import Any

import orjson
from aiohttp import WSMsgType, web

TEXT = WSMsgType.TEXT


class Relay:
    """Connections by user and conversations by id, in memory; one instance per process."""

    def __init__(self, heartbeat: float) -> None:
        self.heartbeat = heartbeat
        self.connections: dict[str, list[web.WebSocketResponse]] = {}
        self.members: dict[str, tuple[str, ...]] = {}
        self.seqs: dict[str, int] = {}
        self.direct: dict[tuple[str, str], str] = {}
        self.msg_ids = itertools.count(1)
        self.conv_ids = itertools.count(1)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/healthz", self.healthz)
        app.router.add_post("/api/v1/users", self.register)
        app.router.add_post("/api/v1/sessions", self.login)
        app.router.add_get("/ws", self.websocket)
        return app

    async def healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def register(self, request: web.Request) -> web.Response:
        body = orjson.loads(await request.read())
        return _json({"user": body["username"]}, 201)

    async def login(self, request: web.Request) -> web.Response:
        body = orjson.loads(await request.read())
        user = body["username"]
        return _json({"token": user, "user": user, "expires_at": 0}, 201)

    async def websocket(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(heartbeat=self.heartbeat, max_msg_size=65536)
        await ws.prepare(request)
        user: str | None = None
        try:
            while True:
                msg = await ws.receive()
                if msg.type is not TEXT:
                    break
                frame = orjson.loads(msg.data)
                kind = frame.get("type")
                if kind == "send" and user is not None:
                    await self.send(ws, user, frame)
                elif kind == "hello":
                    user = str(frame.get("token"))
                    self.connections.setdefault(user, []).append(ws)
                    await ws.send_frame(
                        _dumps(
                            {
                                "type": "ok",
                                "id": frame.get("id"),
                                "user": user,
                                "connection": str(id(ws)),
                                "server": "relay",
                                "heartbeat": self.heartbeat,
                            }
                        ),
                        TEXT,
                    )
                elif kind == "create_group" and user is not None:
                    await self.create_group(ws, user, frame)
                elif kind == "ping":
                    reply = {"type": "ok", "id": frame.get("id"), "ts": int(time.time() * 1000)}
                    await ws.send_frame(_dumps(reply), TEXT)
                else:
                    reply = {
                        "type": "error",
                        "id": frame.get("id"),
                        "code": "bad_request",
                        "message": f"the relay does not do {kind!r}",
                    }
                    await ws.send_frame(_dumps(reply), TEXT)
        finally:
            if user is not None:
                conns = self.connections.get(user, [])
                if ws in conns:
                    conns.remove(ws)
        return ws

    async def send(self, ws: web.WebSocketResponse, user: str, frame: dict[str, Any]) -> None:
        to = frame.get("to")
        if to is not None:
            pair = (user, to) if user < to else (to, user)
            conv = self.direct.get(pair)
            if conv is None:
                conv = f"d{next(self.conv_ids)}"
                self.direct[pair] = conv
                self.members[conv] = pair
                self.seqs[conv] = 0
        else:
            conv = frame["conv"]
        seq = self.seqs[conv] + 1
        self.seqs[conv] = seq
        msg_id = str(next(self.msg_ids))
        ts = int(time.time() * 1000)
        client_id = frame.get("client_id")
        data = _dumps(
            {
                "type": "message",
                "conv": conv,
                "seq": seq,
                "msg_id": msg_id,
                "kind": "text",
                "from": user,
                "client_id": client_id,
                "ts": ts,
                "body": frame.get("body"),
                "media": [],
                "reply_to": None,
            }
        )
        connections = self.connections
        for member in self.members[conv]:
            for peer in connections.get(member, ()):
                if peer is not ws:
                    try:
                        await peer.send_frame(data, TEXT)
                    except ConnectionError:
                        pass  # a peer that went away: best effort, as chatd's live delivery
        await ws.send_frame(
            _dumps(
                {
                    "type": "ok",
                    "id": frame.get("id"),
                    "conv": conv,
                    "seq": seq,
                    "msg_id": msg_id,
                    "ts": ts,
                    "duplicate": False,
                }
            ),
            TEXT,
        )

    async def create_group(
        self, ws: web.WebSocketResponse, user: str, frame: dict[str, Any]
    ) -> None:
        conv = f"g{next(self.conv_ids)}"
        members = (user, *[m for m in frame.get("members", []) if m != user])
        self.members[conv] = members
        self.seqs[conv] = 0
        event = _dumps(
            {"type": "conversation", "conv": conv, "kind": "group", "title": frame.get("title")}
        )
        for member in members:
            for peer in self.connections.get(member, ()):
                if peer is not ws:
                    await peer.send_frame(event, TEXT)
        await ws.send_frame(_dumps({"type": "ok", "id": frame.get("id"), "conv": conv}), TEXT)


def _dumps(obj: Any) -> bytes:
    return orjson.dumps(obj)


def _json(obj: Any, status: int) -> web.Response:
    return web.Response(body=orjson.dumps(obj), status=status, content_type="application/json")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="the bare baseline relay for benchmarks")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--heartbeat", type=float, default=25.0)
    args = parser.parse_args(argv)
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        uvloop = None  # type: ignore[assignment]
    if uvloop is not None:
        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    from benchmarks.limits import raise_nofile

    raise_nofile()
    web.run_app(
        Relay(args.heartbeat).app(),
        host=args.host,
        port=args.port,
        print=None,
        access_log=None,
        backlog=4096,
        handle_signals=True,
    )


if __name__ == "__main__":
    main()
