"""What tells a person their message got there: ticks, typing, presence and last seen."""

from __future__ import annotations

import json
from collections.abc import Callable

from playwright.sync_api import WebSocketRoute, expect

from .client import WAIT_MS, WebUser

# The shared server of tests/web has presence_grace 0.5 s: "last seen" shows within a second.


def test_ticks_go_from_sent_to_delivered_to_read(web_user: Callable[..., WebUser]) -> None:
    alice = web_user("alice")
    bob = web_user("bob")
    alice.start_chat(bob.name)
    alice.send("first")
    alice.expect_tick("first", "delivered")  # bob's page is open: his device has it

    # bob opens the chat: alice's ticks turn to read.
    bob.open_conversation(alice.name)
    bob.expect_message("first")
    alice.expect_tick("first", "read")

    # bob signs out: a message now is only stored ("sent") ...
    bob.page.click("#menu-button")
    bob.page.click("#logout-button")
    expect(bob.page.locator("#auth-form")).to_be_visible(timeout=WAIT_MS)
    alice.send("are you there?")
    alice.expect_tick("are you there?", "sent")
    expect(alice.page.locator(".tick[data-state=read]")).to_have_count(1, timeout=WAIT_MS)

    # ... delivered once he is back (the list shows it unread), read when he opens it.
    bob.sign_in()
    expect(bob.conversation(alice.name).locator(".unread-badge")).to_have_text("1", timeout=WAIT_MS)
    alice.expect_tick("are you there?", "delivered")
    bob.open_conversation(alice.name)
    bob.expect_bodies(["first", "are you there?"])
    alice.expect_tick("are you there?", "read")


def test_typing_is_shown_to_the_other_and_stops(web_user: Callable[..., WebUser]) -> None:
    alice = web_user("alice")
    bob = web_user("bob")
    alice.start_chat(bob.name)
    alice.send("knock knock")
    bob.open_conversation(alice.name)

    bob.type_without_sending("who's th")
    expect(alice.page.locator("#typing")).to_have_text("typing…", timeout=WAIT_MS)
    expect(alice.conversation(bob.name).locator(".typing-preview")).to_have_text(
        "typing…", timeout=WAIT_MS
    )
    bob.page.fill("#composer-input", "")  # emptied: "stop"
    bob.page.locator("#composer-input").dispatch_event("input")
    expect(alice.page.locator("#typing")).to_have_text("", timeout=WAIT_MS)

    alice.type_without_sending("who")
    expect(bob.page.locator("#typing")).to_have_text("typing…", timeout=WAIT_MS)
    alice.page.press("#composer-input", "Enter")  # sending ends typing too
    bob.expect_message("who")
    expect(bob.page.locator("#typing")).to_have_text("", timeout=WAIT_MS)


def test_presence_dot_and_last_seen(web_user: Callable[..., WebUser]) -> None:
    alice = web_user("alice")
    bob = web_user("bob")
    alice.start_chat(bob.name)
    alice.send("ping")
    expect(alice.page.locator("#chat-subtitle")).to_have_text("online", timeout=WAIT_MS)
    dot = alice.conversation(bob.name).locator(".presence-dot")
    expect(dot).to_have_attribute("data-status", "online", timeout=WAIT_MS)

    bob.close()  # the browser goes away
    expect(dot).to_have_attribute("data-status", "offline", timeout=WAIT_MS)
    expect(alice.page.locator("#chat-subtitle")).to_contain_text(
        "last seen today at", timeout=WAIT_MS
    )


def test_a_second_device_of_the_same_user_stays_in_step(web_user: Callable[..., WebUser]) -> None:
    alice = web_user("alice")
    bob = web_user("bob")
    laptop = web_user("alice", register=False)  # alice again, in another browser
    laptop.sign_in(alice.name)

    bob.start_chat(alice.name)
    bob.send("hi alice")
    for device in (alice, laptop):
        expect(device.conversation(bob.name).locator(".unread-badge")).to_have_text(
            "1", timeout=WAIT_MS
        )

    # Read on the phone: the laptop's badge goes too; her reply shows on both as her own.
    alice.open_conversation(bob.name)
    expect(laptop.conversation(bob.name).locator(".unread-badge")).to_have_count(0, timeout=WAIT_MS)
    alice.send("hi bob")
    laptop.open_conversation(bob.name)
    laptop.expect_bodies(["hi alice", "hi bob"])
    expect(laptop.message("hi bob")).to_have_class("message own", timeout=WAIT_MS)
    bob.expect_bodies(["hi alice", "hi bob"])


def test_a_list_reply_overtaken_by_a_live_message_does_not_hide_it(
    web_user: Callable[..., WebUser],
) -> None:
    """The `conversation` event makes the page ask for the list; the server may compute that
    reply before the first message is stored and send it after the message event. The proxy
    below makes that certain: the list reply shows the conversation as it was before its
    first message, and reaches the page only after the message event."""
    alice = web_user("alice")
    bob = web_user("bob", register=False)
    stale: list[str] = []  # the rewritten list reply, once sent
    waiting: list[str] = []  # ... or while it waits for the message to pass
    message_passed = False

    def bob_socket(ws: WebSocketRoute) -> None:
        upstream = ws.connect_to_server()

        def from_server(raw: str | bytes) -> None:
            nonlocal message_passed
            frame = json.loads(raw)
            entries = frame.get("conversations") if frame.get("type") == "ok" else None
            if entries and not stale and not waiting:
                for entry in entries:
                    entry.update(last_seq=0, unread=0, last_message=None)
                    for member in entry["members"]:
                        member.update(delivered=0, read=0)
                waiting.append(json.dumps(frame))
            else:
                ws.send(raw)
            if frame.get("type") == "message":
                message_passed = True
            if waiting and message_passed:
                stale.append(waiting.pop())
                ws.send(stale[-1])

        upstream.on_message(from_server)

    bob.context.route_web_socket("**/ws", bob_socket)
    bob.register()
    alice.start_chat(bob.name)
    alice.send("first words")
    entry = bob.conversation(alice.name)
    expect(entry.locator(".unread-badge")).to_have_text("1", timeout=WAIT_MS)
    expect(entry.locator(".conversation-preview")).to_have_text("first words", timeout=WAIT_MS)
    assert stale, "the proxy never saw the list reply it was meant to make stale"
    alice.expect_tick("first words", "delivered")
