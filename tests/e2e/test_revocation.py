"""`chatd user disable|enable|passwd` run in their own process while a server runs: the server
has no bus to hear them on, yet closes the user's open sockets with 4401 within seconds (it
polls the store every ``revocation_poll_seconds``), and spares sockets opened afterwards."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from .client import Harness
from .server import ChatdServer, ServerFactory, run_cli
from .test_accounts import assert_http_error

NEW_PASSWORD = "a-brand-new-password"


def cli(server: ChatdServer, *args: str, stdin: str | None = None) -> None:
    result = run_cli("user", *args, "--data-dir", str(server.data_dir), stdin=stdin)
    assert result.returncode == 0, result.stderr


async def test_a_socket_opened_after_chatd_user_enable_survives(
    server_factory: ServerFactory, harness: Callable[[ChatdServer], Harness]
) -> None:
    poll = 0.2
    server = server_factory(revocation_poll_seconds=poll)
    h = harness(server)
    alice, bob = await h.users("alice", "bob")
    before = await h.connect(alice)
    await asyncio.to_thread(cli, server, "disable", alice.name)
    assert await before.wait_closed(timeout=5) == 4401
    await asyncio.to_thread(cli, server, "enable", alice.name)
    status, body = await h.login(alice.name)
    assert status == 201, body
    after = await h.connect(alice, "again", token=body["token"])
    # Every poll in this time still finds alice's revocation (it is recent): none may close
    # the socket of the session she began after it.
    await asyncio.sleep(poll * 10)
    assert not after.closed, f"closed with {after.close_code}"
    await after.ok("ping")
    conv = (await after.ok("send", to=bob.name, client_id="c1", body="back again"))["conv"]
    bobs = await h.connect(bob)
    history = await bobs.ok("history", conv=conv)
    assert [m["body"] for m in history["messages"]] == ["back again"]


async def test_chatd_user_passwd_closes_every_socket_of_the_user_within_seconds(h: Harness) -> None:
    """At the default poll interval (2 s)."""
    alice, bob = await h.users("alice", "bob")
    phone = await h.connect(alice, "phone")
    laptop = await h.connect(alice, "laptop", token=await h.token(alice))
    bobs = await h.connect(bob)
    await asyncio.to_thread(cli, h.server, "passwd", alice.name, stdin=NEW_PASSWORD + "\n")
    codes = await asyncio.gather(phone.wait_closed(timeout=5), laptop.wait_closed(timeout=5))
    assert codes == [4401, 4401]
    status, body = await h.http("GET", "/api/v1/me", token=alice.token)
    assert_http_error(status, body, 401, "unauthorized")
    status, body = await h.login(alice.name)
    assert_http_error(status, body, 401, "unauthorized")
    # another user's socket is untouched, and alice can come back with her new password
    assert not bobs.closed
    await bobs.ok("ping")
    status, body = await h.login(alice.name, NEW_PASSWORD)
    assert status == 201, body
    back = await h.connect(alice, "phone", token=body["token"])
    await asyncio.sleep(3)  # past the next poll, which still finds the revocation
    assert not back.closed, f"closed with {back.close_code}"
    await back.ok("ping")
