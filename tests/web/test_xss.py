"""What people type is shown as text, never run as HTML: messages, group titles, filenames and
usernames. An injection that worked would open a dialog (alert) or put an <img src=x> in the
page; both are checked for."""

from __future__ import annotations

from collections.abc import Callable

from playwright.sync_api import expect

from .client import PASSWORD, WAIT_MS, WebUser

IMG = "<img src=x onerror=alert(1)>"
SCRIPT = "<script>alert(2)</script>"


def no_injection(*users: WebUser) -> None:
    for user in users:
        expect(user.page.locator("img[src='x']")).to_have_count(0, timeout=WAIT_MS)
        expect(user.page.locator("#app-screen script")).to_have_count(0, timeout=WAIT_MS)
        assert user.dialogs == [], f"a dialog opened in {user.name}'s page: {user.dialogs}"


def test_messages_titles_and_filenames_are_text(web_user: Callable[..., WebUser]) -> None:
    alice = web_user("alice")
    bob = web_user("bob")
    alice.start_chat(bob.name)
    alice.send(IMG)
    alice.send(SCRIPT)
    bob.open_conversation(alice.name)
    bob.expect_bodies([IMG, SCRIPT])
    expect(alice.conversation(bob.name).locator(".conversation-preview")).to_have_text(
        f"You: {SCRIPT}", timeout=WAIT_MS
    )

    # A file whose name is markup.
    alice.page.set_input_files(
        "#file-input",
        files=[{"name": f"{IMG}.txt", "mimeType": "text/plain", "buffer": b"hello"}],
    )
    expect(bob.page.locator("#message-list .download .file-name")).to_have_text(
        f"{IMG}.txt", timeout=WAIT_MS
    )

    # A group title that is markup: in the list, the header and the system message.
    carol = web_user("carol")
    alice.create_group(IMG, [bob.name, carol.name])
    for user in (alice, bob, carol):
        expect(user.conversation(IMG)).to_have_count(1, timeout=WAIT_MS)
    carol.open_conversation(IMG)
    expect(carol.page.locator("#message-list .system")).to_have_text(
        [f"{alice.name} created the group “{IMG}”"], timeout=WAIT_MS
    )
    alice.page.click("#info-button")
    alice.page.fill("#rename-title", SCRIPT)
    alice.page.click("#rename-form button[type=submit]")
    expect(carol.page.locator("#chat-title")).to_have_text(SCRIPT, timeout=WAIT_MS)
    no_injection(alice, bob, carol)


def test_markup_as_a_username_is_refused_and_shown_as_text(
    web_user: Callable[..., WebUser],
) -> None:
    mallory = web_user("mallory", register=False)
    mallory.page.fill("#auth-username", IMG)
    mallory.page.fill("#auth-password", PASSWORD)
    mallory.page.click("#register-button")
    expect(mallory.page.locator("#auth-error")).to_contain_text("username", timeout=WAIT_MS)
    no_injection(mallory)

    # Typed into "New chat" and "New group", it is an error message, not markup.
    alice = web_user("alice")
    alice.page.click("#new-chat-button")
    alice.page.fill("#new-chat-user", IMG)
    alice.page.click("#new-chat-form button[type=submit]")
    expect(alice.page.locator("#new-chat-form .error")).not_to_be_empty(timeout=WAIT_MS)
    alice.page.click("#new-group-button")
    alice.page.fill("#new-group-title", "fine title")
    alice.page.fill("#new-group-members", IMG)
    alice.page.click("#new-group-form button[type=submit]")
    expect(alice.page.locator("#new-group-form .error")).not_to_be_empty(timeout=WAIT_MS)
    no_injection(alice)
