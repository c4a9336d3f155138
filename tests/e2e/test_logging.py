"""Every log line names the request or connection it belongs to, in both log formats.

Real ``chatd serve`` processes (one per format, shared by the module), read from their stderr:
a socket's lines carry its connection id (the ``connection`` of its ``hello`` reply), its user
and the id of its upgrade request; an HTTP request's lines carry the id echoed in its
``X-Request-Id``, the client's own when it is a sane one.
"""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from collections.abc import Callable
from typing import Any

import pytest

from .client import Harness, User
from .server import ChatdServer, ServerFactory

TEXT_LINE = re.compile(
    r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (?P<level>[A-Z]+) (?P<logger>\S+) "
    r"\[(?P<context>[^\]]*)\] (?P<message>.*)$"
)
TEXT_NAMES = {"req": "request_id", "conn": "conn", "user": "user"}
GENERATED_ID = re.compile(r"[0-9a-f]{12}")
BROKEN_PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 200  # sniffed as PNG, not decodable
Record = dict[str, Any]


@pytest.fixture(scope="module", params=["text", "json"])
def logged(request: pytest.FixtureRequest, module_server_factory: ServerFactory) -> ChatdServer:
    return module_server_factory(log_format=request.param)


def raw_lines(server: ChatdServer) -> list[str]:
    lines: list[str] = []
    for path in server.stderr_paths:
        lines += path.read_text(errors="replace").splitlines()
    return lines


def parse(line: str, log_format: str) -> Record | None:
    """A line as ``{"level", "logger", "message"}`` plus the context keys it has (the JSON
    names: ``request_id``, ``conn``, ``user``); None for a line of neither shape."""
    if log_format == "json":
        try:
            entry = json.loads(line)
        except ValueError:
            return None
        return entry if isinstance(entry, dict) else None
    match = TEXT_LINE.match(line)
    if match is None:
        return None
    record: Record = {
        "level": match["level"].lower(),
        "logger": match["logger"],
        "message": match["message"],
    }
    if match["context"] != "-":
        for pair in match["context"].split(" "):
            key, _, value = pair.partition("=")
            record[TEXT_NAMES[key]] = value
    return record


def records(server: ChatdServer) -> list[Record]:
    parsed = (parse(line, str(server.flags["log_format"])) for line in raw_lines(server))
    return [r for r in parsed if r is not None]


async def wait_for_record(
    server: ChatdServer, match: Callable[[Record], bool], what: str, within: float = 5.0
) -> Record:
    try:
        async with asyncio.timeout(within):
            while True:
                found = [r for r in records(server) if match(r)]
                if found:
                    assert len(found) == 1, f"more than one line {what}: {found}"
                    return found[0]
                await asyncio.sleep(0.05)
    except TimeoutError:
        pytest.fail(f"no log line {what} within {within}s:\n" + "\n".join(raw_lines(server)[-40:]))


def assert_no_token(server: ChatdServer, *users: User) -> None:
    text = "\n".join(raw_lines(server))
    for user in users:
        assert user.token not in text and user.token[:16] not in text, "a token is in the log"


async def test_a_sockets_lines_carry_its_connection_user_and_upgrade_request(
    logged: ChatdServer, harness: Callable[[ChatdServer], Harness]
) -> None:
    h = harness(logged)
    alice = await h.user("alice")
    upgrade_id = f"upgrade-{uuid.uuid4().hex[:8]}"
    conn = await h.raw_ws(headers={"X-Request-Id": upgrade_id}, label="alice")
    reply = await conn.request("hello", token=alice.token, device="phone")
    assert reply["type"] == "ok", reply
    conn_id = reply["connection"]

    opened = await wait_for_record(
        logged,
        lambda r: r.get("conn") == conn_id and "socket authenticated" in r["message"],
        f"of {conn_id} opening",
    )
    assert opened["level"] == "info" and "'phone'" in opened["message"], opened
    assert opened["user"] == alice.name and opened["request_id"] == upgrade_id, opened

    await conn.close()  # the client closes: 1000
    closed = await wait_for_record(
        logged,
        lambda r: r.get("conn") == conn_id and "socket closed" in r["message"],
        f"of {conn_id} closing",
    )
    assert "with code 1000" in closed["message"], closed
    assert closed["user"] == alice.name and closed["request_id"] == upgrade_id, closed
    assert_no_token(logged, alice)


async def test_a_revoked_socket_logs_its_close_code_under_its_own_ids(
    logged: ChatdServer, harness: Callable[[ChatdServer], Harness]
) -> None:
    h = harness(logged)
    alice, bob = await h.users("alice", "bob")
    revoked = await h.connect(alice)
    bystander = await h.connect(bob)
    assert revoked.hello is not None and bystander.hello is not None
    revoked_id, bystander_id = revoked.hello["connection"], bystander.hello["connection"]

    # The close is decided in the DELETE request's task; the line is the socket's own.
    status, _ = await h.http("DELETE", "/api/v1/sessions/current", token=alice.token)
    assert status == 204
    assert await revoked.wait_closed() == 4401
    closed = await wait_for_record(
        logged,
        lambda r: r.get("conn") == revoked_id and "socket closed" in r["message"],
        f"of {revoked_id} closing",
    )
    assert "with code 4401" in closed["message"] and closed["user"] == alice.name, closed
    assert not any(
        r.get("conn") == bystander_id and "socket closed" in r["message"] for r in records(logged)
    ), "the other user's socket was logged as closed"
    assert_no_token(logged, alice, bob)


async def upload(h: Harness, user: User, headers: dict[str, str]) -> tuple[str, str]:
    """Upload an undecodable PNG (chatd logs that it makes no thumbnail); returns the media id
    and the response's X-Request-Id."""
    async with (
        asyncio.timeout(10),
        h.session.post(
            h.base + "/api/v1/media",
            params={"filename": "broken.png"},
            data=BROKEN_PNG,
            headers={
                "Authorization": f"Bearer {user.token}",
                "Content-Type": "image/png",
                **headers,
            },
        ) as resp,
    ):
        assert resp.status == 201, await resp.text()
        body = await resp.json()
        return body["media_id"], resp.headers["X-Request-Id"]


async def test_an_http_requests_lines_carry_the_id_it_echoes(
    logged: ChatdServer, harness: Callable[[ChatdServer], Harness]
) -> None:
    h = harness(logged)
    alice = await h.user("alice")
    supplied = str(uuid.uuid4())
    media_id, echoed = await upload(h, alice, {"X-Request-Id": supplied})
    assert echoed == supplied
    line = await wait_for_record(
        logged, lambda r: media_id in r["message"], f"about media {media_id}"
    )
    assert "no thumbnail" in line["message"] and line.get("request_id") == supplied, line
    assert "conn" not in line and line.get("user") == alice.name, line
    assert "SpooledTemporaryFile" not in line["message"], line

    media_id, generated = await upload(h, alice, {})
    assert GENERATED_ID.fullmatch(generated), generated
    line = await wait_for_record(
        logged, lambda r: media_id in r["message"], f"about media {media_id}"
    )
    assert line.get("request_id") == generated, line
    assert_no_token(logged, alice)


async def raw_get(server: ChatdServer, path: str, request_id: bytes) -> tuple[int, str | None]:
    """``GET path`` with ``X-Request-Id: request_id`` written as raw bytes (aiohttp's client
    would refuse or re-encode some of them); returns the status and the echoed id."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection(server.host, server.port), 5)
    try:
        writer.write(
            b"GET "
            + path.encode()
            + b" HTTP/1.1\r\nHost: chatd\r\nX-Request-Id: "
            + request_id
            + b"\r\nConnection: close\r\n\r\n"
        )
        data = await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()
    head = data.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
    echoed = [line.split(":", 1)[1].strip() for line in head[1:] if ":" in line]
    names = [line.split(":", 1)[0].lower() for line in head[1:] if ":" in line]
    found = [value for name, value in zip(names, echoed, strict=True) if name == "x-request-id"]
    assert len(found) <= 1, head
    return int(head[0].split(" ")[1]), found[0] if found else None


@pytest.mark.parametrize(
    "unsafe",
    [
        b"x" * 65,
        b"two words",
        b"tab\there",
        b'quote"d',
        b"req=x] [user=admin",
        "caf\u00e9".encode(),
        b"",
    ],
    ids=["too-long", "space", "tab", "quote", "forged-field", "non-ascii", "empty"],
)
async def test_an_unsafe_request_id_is_replaced(logged: ChatdServer, unsafe: bytes) -> None:
    status, echoed = await raw_get(logged, "/healthz", unsafe)
    assert status == 200
    assert echoed is not None and GENERATED_ID.fullmatch(echoed), (unsafe, echoed)


async def test_a_sane_request_id_is_echoed_on_errors_too(logged: ChatdServer) -> None:
    status, echoed = await raw_get(logged, "/api/v1/no-such-thing", b"trace-404")
    assert (status, echoed) == (404, "trace-404")


async def test_a_malformed_request_is_one_warning_without_its_bytes(logged: ChatdServer) -> None:
    """aiohttp would log it at ERROR with a traceback quoting the header, a token perhaps."""
    marker = "secret" + uuid.uuid4().hex
    reader, writer = await asyncio.wait_for(asyncio.open_connection(logged.host, logged.port), 5)
    try:
        writer.write(
            f"GET /api/v1/me HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {marker}"
            f"{'a' * 20_000}\r\n\r\n".encode()
        )
        status_line = await asyncio.wait_for(reader.readline(), 10)
    finally:
        writer.close()
    assert status_line.split()[1] == b"400", status_line
    found = await wait_for_record(
        logged,
        lambda r: r["message"] == "malformed HTTP request: LineTooLong (400)",
        "about the malformed request",
    )
    assert found["level"] == "warning" and found["logger"] == "aiohttp.server", found
    text = "\n".join(raw_lines(logged))
    assert marker not in text and "Traceback" not in text


async def test_every_line_has_the_context_field(logged: ChatdServer) -> None:
    lines = raw_lines(logged)
    log_format = str(logged.flags["log_format"])
    assert not [line for line in lines if parse(line, log_format) is None], "\n".join(lines)
    started = [r for r in records(logged) if "listening on" in r["message"]]
    assert len(started) == 1, lines
    # Outside any request or connection: "[-]" in text, no context keys in JSON.
    assert not {"request_id", "conn", "user"} & set(started[0]), started
    if log_format == "text":
        assert any(" [-] chatd listening on" in line for line in lines), lines
