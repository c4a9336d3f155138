"""Accounts over HTTP: registration, login, /me, logout, health endpoints (issue 2)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import pytest

from .client import PASSWORD, Harness, unique_name
from .server import ChatdServer, ServerFactory


def assert_http_error(status: int, body: Any, expected_status: int, code: str) -> None:
    assert status == expected_status, (status, body)
    assert isinstance(body, dict) and isinstance(body.get("error"), dict), body
    assert body["error"].get("code") == code, body
    assert isinstance(body["error"].get("message"), str), body


async def test_health_and_ready(h: Harness) -> None:
    status, _ = await h.http("GET", "/healthz")
    assert status == 200
    status, body = await h.http("GET", "/readyz")
    assert status == 200, body


async def test_register_returns_the_case_folded_name(h: Harness) -> None:
    name = unique_name("Reg")
    status, body = await h.register(name.upper())
    assert status == 201, body
    assert body["user"] == name.lower()


async def test_register_case_variant_duplicate_is_conflict(h: Harness) -> None:
    name = unique_name("dup")
    status, _ = await h.register(name)
    assert status == 201
    status, body = await h.register(name)
    assert_http_error(status, body, 409, "conflict")
    status, body = await h.register(name.upper())
    assert_http_error(status, body, 409, "conflict")


async def test_register_boundary_lengths_are_accepted(h: Harness) -> None:
    three = "a" + unique_name("")[-2:]  # every server in these tests starts empty
    status, body = await h.register(three, password="8chars!!")
    assert status == 201, body
    assert (await h.login(three, "8chars!!"))[0] == 201
    long_name = ("l" + unique_name("x").replace("_", "-"))[:32].ljust(32, "9")
    status, body = await h.register(long_name, password="p" * 1024)
    assert status == 201, body
    status, body = await h.login(long_name, "p" * 1024)
    assert status == 201, body


@pytest.mark.parametrize(
    "username",
    ["ab", "a" * 33, "has space", "bad@name", "sla/sh", "", "ålice", "tab\tname", "emoji😀x"],
)
async def test_register_bad_username_is_bad_request(h: Harness, username: str) -> None:
    status, body = await h.register(username)
    assert_http_error(status, body, 400, "bad_request")


@pytest.mark.parametrize(
    "payload",
    [
        {"username": "okname_pw7", "password": "1234567"},
        {"username": "okname_pwl", "password": "p" * 1025},
        {"username": "okname_pwm"},
        {"password": PASSWORD},
        {"username": 12345, "password": PASSWORD},
        {"username": "okname_pwn", "password": 12345678},
        {"username": ["okname"], "password": PASSWORD},
        [],
        "just a string",
    ],
)
async def test_register_bad_body_is_bad_request(h: Harness, payload: Any) -> None:
    status, body = await h.http("POST", "/api/v1/users", json_body=payload)
    assert_http_error(status, body, 400, "bad_request")


async def test_register_non_json_is_bad_request(h: Harness) -> None:
    status, body = await h.http(
        "POST", "/api/v1/users", data="{not json", headers={"Content-Type": "application/json"}
    )
    assert_http_error(status, body, 400, "bad_request")


async def test_login_returns_token_and_expiry(h: Harness) -> None:
    name = unique_name("login")
    await h.register(name)
    status, body = await h.login(name.upper(), device="phone")
    assert status == 201, body
    assert body["user"] == name
    assert isinstance(body["token"], str) and len(body["token"]) >= 16
    assert isinstance(body["expires_at"], int) and body["expires_at"] > 1_700_000_000_000
    other_status, other = await h.login(name)
    assert other_status == 201 and other["token"] != body["token"]


async def test_login_failures_look_identical(h: Harness) -> None:
    name = unique_name("victim")
    await h.register(name)
    wrong_password = await h.login(name, "wrong password!")
    wrong_user = await h.login(unique_name("nobody"), "wrong password!")
    assert wrong_password[0] == 401
    assert_http_error(*wrong_password, 401, "unauthorized")
    assert wrong_user == wrong_password


async def test_me(h: Harness) -> None:
    user = await h.user("me")
    status, body = await h.http("GET", "/api/v1/me", token=user.token)
    assert status == 200, body
    assert body["user"] == user.name
    assert isinstance(body["created_at"], int) and body["created_at"] > 1_700_000_000_000


@pytest.mark.parametrize("token", [None, "", "not-a-token", "x" * 500])
async def test_me_without_a_valid_token_is_unauthorized(h: Harness, token: str | None) -> None:
    status, body = await h.http("GET", "/api/v1/me", token=token)
    assert_http_error(status, body, 401, "unauthorized")


async def test_logout_revokes_token_and_closes_its_sockets(h: Harness) -> None:
    user = await h.user("logout")
    other_token = await h.token(user)
    doomed = await h.connect(user, "doomed")
    survivor = await h.connect(user, "survivor", token=other_token)
    status, body = await h.http("DELETE", "/api/v1/sessions/current", token=user.token)
    assert status == 204, body
    assert await doomed.wait_closed() == 4401
    status, body = await h.http("GET", "/api/v1/me", token=user.token)
    assert_http_error(status, body, 401, "unauthorized")
    # a new socket with the revoked token is refused the protocol's way
    conn = await h.raw_ws(label="revoked")
    reply = await conn.request("hello", token=user.token, device="again")
    assert reply["type"] == "error" and reply["code"] == "unauthorized", reply
    assert await conn.wait_closed() == 4401
    # the user's other session is untouched
    assert not survivor.closed
    await survivor.ok("ping")
    status, _ = await h.http("GET", "/api/v1/me", token=other_token)
    assert status == 200
    # revoking twice is unauthorized
    status, body = await h.http("DELETE", "/api/v1/sessions/current", token=user.token)
    assert_http_error(status, body, 401, "unauthorized")


async def test_registration_closed(
    server_factory: ServerFactory, harness: Callable[[ChatdServer], Harness]
) -> None:
    h = harness(server_factory(registration="closed"))
    status, body = await h.register(unique_name("closed"))
    assert_http_error(status, body, 403, "forbidden")


async def raw_post(h: Harness, path: str, head: bytes, parts: list[bytes]) -> tuple[int, Any]:
    """POST over a plain socket, the body written in ``parts`` 0.2 s apart (each its own TCP
    segment); the status and the JSON body of the answer."""
    host, port = h.server.host, h.server.port
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 5)
    try:
        writer.write(f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\n".encode() + head)
        for part in parts:
            await asyncio.sleep(0.2)
            writer.write(part)
            await writer.drain()
        status_line = await asyncio.wait_for(reader.readline(), 10)
        headers = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        length = int(
            next(
                v
                for k, _, v in (h.partition(b":") for h in headers.split(b"\r\n"))
                if k.lower() == b"content-length"
            )
        )
        body = await asyncio.wait_for(reader.readexactly(length), 10)
    finally:
        writer.close()
    return int(status_line.split()[1]), json.loads(body)


async def test_a_body_that_arrives_in_pieces_is_read_whole(h: Harness) -> None:
    user = await h.user(unique_name("Split"))
    body = json.dumps({"username": user.name, "password": user.password}).encode()
    head = b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body)
    status, answer = await raw_post(h, "/api/v1/sessions", head, [body[:10], body[10:]])
    assert status == 201, answer
    chunked = b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    pieces = [b"%x\r\n%s\r\n" % (len(p), p) for p in (body[:7], body[7:20], body[20:])]
    status, answer = await raw_post(h, "/api/v1/sessions", chunked, [*pieces, b"0\r\n\r\n"])
    assert status == 201, answer


async def test_a_chunked_body_over_64_kib_is_413(h: Harness) -> None:
    chunked = b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    piece = b'{"username": "' + b"a" * 40_000
    parts = [b"%x\r\n%s\r\n" % (len(p), p) for p in (piece, b"b" * 40_000)] + [b"0\r\n\r\n"]
    status, answer = await raw_post(h, "/api/v1/sessions", chunked, parts)
    assert_http_error(status, answer, 413, "too_large")
