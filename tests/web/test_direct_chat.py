"""Two people in two browsers: sign up, start a direct chat by username, talk.

Each browser context has its own storage, so the two pages are two users as they would be on
two computers; both talk to one real ``chatd serve``.
"""

from __future__ import annotations

from collections.abc import Callable

from playwright.sync_api import expect

from .client import WAIT_MS, WebUser


def test_two_users_register_and_exchange_messages(web_user: Callable[..., WebUser]) -> None:
    alice = web_user("alice")
    bob = web_user("bob")

    alice.start_chat(bob.name)
    alice.send("hi bob, lunch at noon?")
    alice.expect_message("hi bob, lunch at noon?")

    # bob sees the new conversation in his list with an unread badge, then opens it.
    entry = bob.conversation(alice.name)
    expect(entry.locator(".unread-badge")).to_have_text("1", timeout=WAIT_MS)
    expect(entry.locator(".conversation-preview")).to_have_text(
        "hi bob, lunch at noon?", timeout=WAIT_MS
    )
    bob.open_conversation(alice.name)
    bob.expect_message("hi bob, lunch at noon?")
    expect(entry.locator(".unread-badge")).to_have_count(0, timeout=WAIT_MS)

    bob.send("sure, see you there")
    alice.expect_bodies(["hi bob, lunch at noon?", "sure, see you there"])
    bob.expect_bodies(["hi bob, lunch at noon?", "sure, see you there"])

    # Own messages on the right, the other's on the left.
    expect(alice.message("hi bob").first).to_have_class("message own", timeout=WAIT_MS)
    expect(alice.message("sure, see you").first).to_have_class("message other", timeout=WAIT_MS)
    expect(alice.page.locator("#message-list .day")).to_have_text(["Today"], timeout=WAIT_MS)
    assert alice.page_errors == [] and bob.page_errors == []


def test_signing_in_again_keeps_the_conversation(web_user: Callable[..., WebUser]) -> None:
    alice = web_user("alice")
    bob = web_user("bob")
    alice.start_chat(bob.name)
    alice.send("still there after a reload?")
    alice.expect_tick("still there after a reload?", "delivered")  # bob is online

    # The token is kept in localStorage: a reload lands in the app, not on the sign-in form.
    alice.page.reload()
    alice.expect_online()
    alice.open_conversation(bob.name)
    alice.expect_bodies(["still there after a reload?"])

    # Signing out forgets it; signing in with the password brings everything back.
    alice.page.click("#menu-button")
    alice.page.click("#logout-button")
    expect(alice.page.locator("#auth-form")).to_be_visible(timeout=WAIT_MS)
    alice.page.reload()
    expect(alice.page.locator("#auth-form")).to_be_visible(timeout=WAIT_MS)
    alice.page.fill("#auth-username", alice.name)
    alice.page.fill("#auth-password", "wrong password")
    alice.page.click("#login-button")
    expect(alice.page.locator("#auth-error")).not_to_be_empty(timeout=WAIT_MS)
    alice.page.fill("#auth-password", "correct horse battery")
    alice.page.click("#login-button")
    alice.expect_online()
    alice.open_conversation(bob.name)
    alice.expect_bodies(["still there after a reload?"])


def test_unknown_username_is_explained(web_user: Callable[..., WebUser]) -> None:
    alice = web_user("alice")
    alice.page.click("#new-chat-button")
    alice.page.fill("#new-chat-user", "nobody-by-this-name")
    alice.page.click("#new-chat-form button[type=submit]")
    expect(alice.page.locator("#new-chat-form .error")).to_have_text(
        "There is no user called nobody-by-this-name.", timeout=WAIT_MS
    )


def test_a_revoked_session_returns_to_the_sign_in_form(web_user: Callable[..., WebUser]) -> None:
    alice = web_user("alice")
    # The session ends elsewhere (another device's "sign out", or `chatd user passwd`).
    status = alice.page.evaluate(
        """async () => (await fetch("/api/v1/sessions/current", {
            method: "DELETE",
            headers: {Authorization: `Bearer ${localStorage.getItem("chatd-token")}`},
        })).status"""
    )
    assert status == 204
    expect(alice.page.locator("#auth-error")).to_have_text(
        "Your session has ended. Please sign in again.", timeout=WAIT_MS
    )
    assert alice.page.evaluate("localStorage.getItem('chatd-token')") is None


def test_a_refused_message_says_why_and_can_be_removed(web_user: Callable[..., WebUser]) -> None:
    alice = web_user("alice")
    bob = web_user("bob")
    alice.start_chat(bob.name)
    alice.send("fine")
    alice.send("x" * 16385)  # one past max_body_chars
    failed = alice.page.locator("#message-list .message.failed")
    expect(failed.locator(".send-error")).to_contain_text("Not sent:", timeout=WAIT_MS)
    expect(failed.locator(".tick")).to_have_attribute("data-state", "failed", timeout=WAIT_MS)
    alice.send("after the long one")  # the refused message does not block the others
    bob.open_conversation(alice.name)
    bob.expect_bodies(["fine", "after the long one"])
    failed.locator("button.discard").click()
    expect(failed).to_have_count(0, timeout=WAIT_MS)
    alice.expect_bodies(["fine", "after the long one"])


def test_the_list_puts_the_latest_activity_first(web_user: Callable[..., WebUser]) -> None:
    alice = web_user("alice")
    bob = web_user("bob")
    carol = web_user("carol")
    bob.start_chat(alice.name)
    bob.send("from bob")
    carol.start_chat(alice.name)
    carol.send("from carol")
    names = alice.page.locator("#conversation-list .conversation-name")
    expect(names).to_have_text([carol.name, bob.name], timeout=WAIT_MS)
    bob.send("bob again")
    expect(names).to_have_text([bob.name, carol.name], timeout=WAIT_MS)
    expect(alice.conversation(bob.name).locator(".unread-badge")).to_have_text("2", timeout=WAIT_MS)
