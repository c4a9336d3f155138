"""The server restarts mid-conversation: both pages come back by themselves, what was typed
while it was down is sent once, and what one page missed is fetched; every message shows
exactly once, in order.

This module has its own ``chatd serve`` (``OWN_SERVER``), stopped by pid and started again on
the same port and data dir.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from playwright.sync_api import WebSocketRoute, expect

from tests.e2e.server import ChatdServer

from .client import WAIT_MS, WebUser

OWN_SERVER = True
# Pings after 1 s of silence, so that a silently dead connection is noticed within seconds.
SERVER_FLAGS = {"heartbeat": 1}

# Reconnecting backs off 0.5, 1, 2, 4 ... s; the restart itself takes a second or two.
RECOVER_MS = 30_000


def test_restart_mid_conversation(web_user: Callable[..., WebUser], server: ChatdServer) -> None:
    alice = web_user("alice")
    bob = web_user("bob")
    alice.start_chat(bob.name)
    alice.send("one")
    bob.open_conversation(alice.name)
    bob.send("two")
    alice.send("three")
    before = ["one", "two", "three"]
    alice.expect_bodies(before)
    bob.expect_bodies(before)

    # bob's network will refuse the socket until we say so, so that he misses live events and
    # has to catch up from history; alice's goes straight through.
    bob_cut_off = True

    def bob_socket(ws: WebSocketRoute) -> None:
        if bob_cut_off:
            ws.close()
        else:
            ws.connect_to_server()

    bob.context.route_web_socket("**/ws", bob_socket)

    server.stop()
    for user in (alice, bob):
        expect(user.page.locator("#connection-state")).to_contain_text("Offline", timeout=WAIT_MS)
    alice.send("typed while the server was down")
    alice.expect_tick("typed while the server was down", "pending")

    server.start()
    alice.expect_online(timeout=RECOVER_MS)
    alice.expect_tick("typed while the server was down", "sent")
    alice.send("four")
    alice.send("five")
    alice.expect_tick("five", "sent")
    expect(bob.page.locator("#connection-state")).to_contain_text("Offline", timeout=WAIT_MS)

    # bob's network is back: he reconnects (no need to wait for the back-off) and catches up.
    bob_cut_off = False
    bob.page.locator("#connection-state button").click()
    bob.expect_online(timeout=RECOVER_MS)
    after = [*before, "typed while the server was down", "four", "five"]
    bob.expect_bodies(after)
    alice.expect_tick("five", "read")

    # Live delivery works again both ways, and nobody sees anything twice.
    bob.send("six")
    alice.send("seven")
    final = [*after, "six", "seven"]
    alice.expect_bodies(final)
    bob.expect_bodies(final)

    # A reload (from the store alone) shows the same conversation.
    bob.page.reload()
    bob.expect_online()
    bob.open_conversation(alice.name)
    bob.expect_bodies(final)
    assert alice.page_errors == [] and bob.page_errors == []


def test_a_silently_dead_connection_is_noticed_and_replaced(
    web_user: Callable[..., WebUser],
) -> None:
    alice = web_user("alice")
    bob = web_user("bob", register=False)

    # bob's connection goes quiet without closing (a laptop waking up on another network):
    # while `silent`, nothing the server sends reaches his page.
    silent = False

    def bob_socket(ws: WebSocketRoute) -> None:
        upstream = ws.connect_to_server()
        upstream.on_message(lambda message: None if silent else ws.send(message))

    bob.context.route_web_socket("**/ws", bob_socket)
    bob.register()
    alice.start_chat(bob.name)
    alice.send("before")
    bob.open_conversation(alice.name)
    bob.expect_message("before")

    silent = True
    alice.send("while bob's line was dead")
    # The client pings after `heartbeat` seconds of silence and gives up on an unanswered ping:
    # it shows "offline", and moves on to "connecting" as soon as its first back-off ends,
    # which can be before a poll sees "offline".
    expect(bob.page.locator("#connection-state")).to_have_attribute(
        "data-state", re.compile("^(offline|connecting)$"), timeout=WAIT_MS
    )
    silent = False
    bob.expect_online(timeout=RECOVER_MS)
    bob.expect_bodies(["before", "while bob's line was dead"])
    alice.expect_tick("while bob's line was dead", "read")
