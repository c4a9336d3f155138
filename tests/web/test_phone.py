"""On a phone-sized screen (390 x 844) the list and the chat are two screens that switch."""

from __future__ import annotations

from collections.abc import Callable

from playwright.sync_api import Page, expect

from .client import WAIT_MS, WebUser

PHONE = {"viewport": {"width": 390, "height": 844}, "is_mobile": True, "has_touch": True}


def fits_the_width(page: Page) -> bool:
    return bool(page.evaluate("document.documentElement.scrollWidth <= window.innerWidth"))


def test_phone_layout_switches_between_list_and_chat(web_user: Callable[..., WebUser]) -> None:
    alice = web_user("alice", **PHONE)
    bob = web_user("bob")
    page = alice.page
    expect(page.locator(".list-pane")).to_be_visible(timeout=WAIT_MS)
    expect(page.locator("#chat-pane")).to_be_hidden(timeout=WAIT_MS)

    alice.start_chat(bob.name)
    expect(page.locator(".list-pane")).to_be_hidden(timeout=WAIT_MS)
    expect(page.locator("#composer-input")).to_be_in_viewport(timeout=WAIT_MS)
    expect(page.locator("#send-button")).to_be_in_viewport(timeout=WAIT_MS)
    alice.send("hello from my phone " + "with a long line that has to wrap " * 4)
    bob.open_conversation(alice.name)
    bob.send("got it")
    alice.expect_message("got it")
    assert fits_the_width(page)

    # Back to the list: the conversation is there; tapping it opens the chat again.
    page.click("#back-button")
    expect(page.locator(".list-pane")).to_be_visible(timeout=WAIT_MS)
    expect(page.locator("#chat-pane")).to_be_hidden(timeout=WAIT_MS)
    bob.send("and another one")
    expect(alice.conversation(bob.name).locator(".unread-badge")).to_have_text("1", timeout=WAIT_MS)
    alice.conversation(bob.name).tap()
    alice.expect_message("and another one")
    expect(page.locator("#composer-input")).to_be_in_viewport(timeout=WAIT_MS)
    assert fits_the_width(page)
