"""docs/protocol.md's JSON examples are what a real ``chatd serve`` sends.

Every indented code block of the document must be JSON objects (separated by whitespace or
``->``). Each request example is replayed, in document order, against a real server (started
with the shared factory of ``tests/e2e/server.py``), with the example's conversation ids and
token replaced by real ones; the reply must have the documented reply's type, keys and value
types (recursively). Each documented event must have been received, with the same shape, by a
second user watching along.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from chatd.transport.frames import REQUEST_TYPES
from tests.e2e.server import ChatdServer, ServerFactory

DOC = Path(__file__).resolve().parents[2] / "docs" / "protocol.md"
EVENT_TYPES = ("message", "receipt", "presence", "typing", "conversation")
REPLY_TYPES = ("ok", "error")
# Fields the protocol allows to be null: a documented value may be null in a real reply.
NULLABLE = frozenset({"title", "last_seen", "reply_to", "last_message", "client_id", "body"})
WAIT = 5.0  # seconds, for any one reply or event
PASSWORD = "correct horse"
USERS = ("alice", "bob", "carol", "dave")  # every user the examples name


# -- the document --------------------------------------------------------------------------


def code_blocks(text: str) -> list[str]:
    """The indented (4-space) code blocks of a Markdown text."""
    blocks: list[str] = []
    current: list[str] = []
    previous_blank = True
    for line in text.splitlines():
        if line.startswith("    ") and (current or previous_blank):
            current.append(line[4:])
        else:
            if current:
                blocks.append("\n".join(current))
                current = []
            previous_blank = not line.strip()
    if current:
        blocks.append("\n".join(current))
    return blocks


def json_objects(block: str) -> list[dict[str, Any]]:
    """The JSON objects of one block, in order; ``ValueError`` if anything else is in it."""
    decoder = json.JSONDecoder()
    objects: list[dict[str, Any]] = []
    pos = 0
    while True:
        match = re.compile(r"\s*(->\s*)?").match(block, pos)
        assert match is not None
        pos = match.end()
        if pos >= len(block):
            return objects
        try:
            obj, pos = decoder.raw_decode(block, pos)
        except json.JSONDecodeError as exc:
            raise ValueError(f"not JSON at {block[pos : pos + 60]!r}: {exc.msg}") from None
        if not isinstance(obj, dict):
            raise ValueError(f"not a JSON object: {obj!r}")
        objects.append(obj)


EVENTS_SECTION = re.compile(r"^## 4\. Events$(.*?)^## ", re.MULTILINE | re.DOTALL)


def documented_blocks(part: str = "all") -> list[list[dict[str, Any]]]:
    """The JSON objects of each code block: of the whole document (``all``), of section 4
    (``events``: ``receipt`` and ``typing`` there are events) or of the rest (``requests``)."""
    text = DOC.read_text(encoding="utf-8")
    events = EVENTS_SECTION.search(text)
    assert events is not None, "docs/protocol.md has no '## 4. Events' section"
    if part == "events":
        text = events.group(1)
    elif part == "requests":
        text = text[: events.start(1)] + text[events.end(1) :]
    return [json_objects(block) for block in code_blocks(text)]


@dataclass(frozen=True, slots=True)
class Example:
    request: dict[str, Any]
    reply: dict[str, Any] | None  # None: the request has no id, so no reply is documented


def request_examples() -> list[Example]:
    """Every request example, paired with the first reply after it in its block with its id."""
    examples = []
    for block in documented_blocks("requests"):
        for index, frame in enumerate(block):
            if frame.get("type") not in REQUEST_TYPES:
                continue
            reply = None
            if frame.get("id") is not None:
                reply = next(
                    (
                        f
                        for f in block[index + 1 :]
                        if f.get("type") in REPLY_TYPES and f.get("id") == frame["id"]
                    ),
                    None,
                )
            examples.append(Example(frame, reply))
    return examples


def event_examples() -> list[dict[str, Any]]:
    blocks = documented_blocks("events")
    return [f for block in blocks for f in block if f.get("type") in EVENT_TYPES]


def _kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"  # JSON has one number type
    return type(value).__name__


def shape_differences(documented: object, actual: object, path: str = "$") -> list[str]:
    """Where ``actual`` differs from ``documented`` in keys or value types (not values).

    A list is compared element by element against the documented list's first element.
    """
    key = path.rsplit(".", 1)[-1]
    if actual is None and key in NULLABLE:
        return []
    if documented is not None and _kind(documented) != _kind(actual):
        return [f"{path}: documented {_kind(documented)}, got {_kind(actual)} ({actual!r:.80})"]
    if documented is None:
        return [] if actual is None or key in NULLABLE else [f"{path}: documented null"]
    if isinstance(documented, dict):
        assert isinstance(actual, dict)
        problems = []
        if set(documented) != set(actual):
            missing = sorted(set(documented) - set(actual))
            extra = sorted(set(actual) - set(documented))
            problems.append(f"{path}: keys differ, missing {missing}, not documented {extra}")
        for name in documented.keys() & actual.keys():
            problems += shape_differences(documented[name], actual[name], f"{path}.{name}")
        return problems
    if isinstance(documented, list) and documented:
        assert isinstance(actual, list)
        problems = []
        for i, item in enumerate(actual):
            problems += shape_differences(documented[0], item, f"{path}[{i}]")
        return problems
    return []


# -- a small client ------------------------------------------------------------------------


@dataclass
class Socket:
    """One authenticated WebSocket; a reader task files replies by id and keeps events."""

    ws: aiohttp.ClientWebSocketResponse
    events: list[dict[str, Any]] = field(default_factory=list)
    unsolicited_errors: list[dict[str, Any]] = field(default_factory=list)
    waiting: dict[str, asyncio.Future[dict[str, Any]]] = field(default_factory=dict)
    reader: asyncio.Task[None] | None = None
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    def start(self) -> None:
        self.reader = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        async for msg in self.ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                continue
            frame = json.loads(msg.data)
            if frame.get("type") in REPLY_TYPES:
                future = self.waiting.pop(frame.get("id"), None)
                if future is not None and not future.done():
                    future.set_result(frame)
                elif frame.get("id") is None:
                    self.unsolicited_errors.append(frame)
            else:
                self.events.append(frame)
                self.arrived.set()

    async def request(self, frame: dict[str, Any]) -> dict[str, Any]:
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.waiting[frame["id"]] = future
        await self.ws.send_json(frame)
        return await asyncio.wait_for(future, WAIT)

    async def wait_event(self, type_: str) -> None:
        async def seen() -> None:
            while not any(e["type"] == type_ for e in self.events):
                self.arrived.clear()
                await self.arrived.wait()

        await asyncio.wait_for(seen(), WAIT)

    async def close(self) -> None:
        await self.ws.close()
        if self.reader is not None:
            self.reader.cancel()
            await asyncio.gather(self.reader, return_exceptions=True)


async def hello(http: aiohttp.ClientSession, server: ChatdServer, token: str) -> Socket:
    ws = await http.ws_connect(server.ws_url, timeout=aiohttp.ClientWSTimeout(ws_close=WAIT))
    await ws.send_json({"type": "hello", "id": "hello", "token": token})
    reply = await asyncio.wait_for(ws.receive_json(), WAIT)
    assert reply["type"] == "ok", reply
    sock = Socket(ws)
    sock.start()
    return sock


async def login(http: aiohttp.ClientSession, server: ChatdServer, user: str) -> str:
    async with http.post(
        server.base_url + "/api/v1/sessions", json={"username": user, "password": PASSWORD}
    ) as resp:
        assert resp.status == 201, await resp.text()
        token: str = (await resp.json())["token"]
        return token


@contextlib.asynccontextmanager
async def sockets() -> AsyncIterator[list[Socket]]:
    opened: list[Socket] = []
    try:
        yield opened
    finally:
        await asyncio.gather(*(s.close() for s in opened), return_exceptions=True)


# -- tests ---------------------------------------------------------------------------------


def test_every_code_block_is_json_objects() -> None:
    blocks = documented_blocks()  # raises on anything that is not JSON
    assert len(blocks) > 10


def test_every_request_type_has_a_replayable_example_with_its_reply() -> None:
    examples = request_examples()
    assert {e.request["type"] for e in examples} == set(REQUEST_TYPES)
    for example in examples:
        if example.request.get("id") is not None:
            assert example.reply is not None, f"no documented reply for {example.request}"


def test_every_event_type_has_an_example() -> None:
    assert {e["type"] for e in event_examples()} == set(EVENT_TYPES)


def _substitute(value: Any, names: dict[str, str]) -> Any:
    if isinstance(value, str):
        return names.get(value, value)
    if isinstance(value, dict):
        return {k: _substitute(v, names) for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute(v, names) for v in value]
    return value


@pytest.fixture
def server(chatd_server: ServerFactory) -> Iterator[ChatdServer]:
    yield chatd_server(presence_grace=0.2)


@pytest.mark.timeout(60)
async def test_examples_replayed_against_a_real_server(server: ChatdServer) -> None:
    problems: list[str] = []
    async with aiohttp.ClientSession() as http, sockets() as opened:
        for user in USERS:
            async with http.post(
                server.base_url + "/api/v1/users", json={"username": user, "password": PASSWORD}
            ) as resp:
                assert resp.status == 201, await resp.text()
        alice_token = await login(http, server, "alice")
        bob = await hello(http, server, await login(http, server, "bob"))
        alice = await hello(http, server, alice_token)
        opened += [bob, alice]

        # "c7" of the examples: the group "ops" of alice, bob and carol with 42 messages (the
        # creation and 41 texts), so that every seq the examples use exists.
        created = await alice.request(
            {"type": "create_group", "id": "setup", "title": "ops", "members": ["bob", "carol"]}
        )
        c7 = created["conv"]
        sent = await asyncio.gather(
            *(
                alice.request(
                    {
                        "type": "send",
                        "id": f"setup{i}",
                        "conv": c7,
                        "client_id": f"setup{i}",
                        "body": f"message {i}",
                    }
                )
                for i in range(41)
            )
        )
        assert all(r["type"] == "ok" for r in sent), sent
        # bob's own receipt: his devices get the receipt event.
        assert (
            await bob.request(
                {"type": "receipt", "id": "setup-r", "conv": c7, "kind": "read", "seq": 1}
            )
        )["type"] == "ok"

        names = {"c7": c7, "<session token>": alice_token}
        for example in request_examples():
            frame = _substitute(example.request, names)
            shown = json.dumps(example.request)
            if frame["type"] == "hello":
                ws = await http.ws_connect(server.ws_url)
                try:
                    await ws.send_json(frame)
                    reply = await asyncio.wait_for(ws.receive_json(), WAIT)
                finally:
                    await ws.close()
            elif frame.get("id") is None:
                # No id: nothing comes back unless it fails; a ping after it shows it did not.
                await alice.ws.send_json(frame)
                await alice.request({"type": "ping", "id": f"after {frame['type']}"})
                if alice.unsolicited_errors:
                    problems.append(f"{shown}: answered {alice.unsolicited_errors}")
                continue
            else:
                reply = await alice.request(frame)
            assert example.reply is not None
            if reply["type"] != example.reply["type"]:
                problems.append(f"{shown}: documented {example.reply}, got {reply}")
                continue
            problems += [f"{shown}: {p}" for p in shape_differences(example.reply, reply)]
            if frame["type"] == "create_group":
                names[example.reply["conv"]] = reply["conv"]

        # alice goes away: bob, her contact since the direct conversation, sees her offline.
        for sock in list(opened):
            if sock is alice:
                await sock.close()
                opened.remove(sock)
        await bob.wait_event("presence")

    for documented in event_examples():
        candidates = [e for e in bob.events if e["type"] == documented["type"]]
        if documented["type"] == "message":
            candidates = [e for e in candidates if e["kind"] == documented["kind"]]
            if documented["kind"] == "system":
                action = documented["event"]["action"]
                candidates = [e for e in candidates if e["event"]["action"] == action]
        if not candidates:
            problems.append(f"event {documented}: bob received none like it")
            continue
        problems += [
            f"event {json.dumps(documented)}: {p}"
            for p in shape_differences(documented, candidates[0])
        ]
    assert not problems, "docs/protocol.md differs from the server:\n" + "\n".join(problems)
