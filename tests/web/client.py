"""A person using the web client, driven through Playwright: what they click and what they see.

Every wait is bounded: Playwright actions use the context's default timeout and every
assertion goes through ``expect(...)`` with an explicit ``timeout``.
"""

from __future__ import annotations

import itertools
import os
import uuid
from typing import Any

from playwright.sync_api import Browser, BrowserContext, Dialog, Locator, Page, expect

from tests.e2e.server import ChatdServer

CHROMIUM = "/usr/bin/chromium"
WAIT_MS = 10_000  # what a person would tolerate; the restart test waits longer explicitly
PASSWORD = "correct horse battery"
_names = itertools.count(1)


def unique_name(prefix: str) -> str:
    """A username no other test of the run uses (3..32 characters of a-z 0-9 _ . -)."""
    return f"{prefix[:12]}{next(_names)}{uuid.uuid4().hex[:6]}"


class WebUser:
    """One browser context (its own localStorage) showing the client of ``server``."""

    def __init__(self, context: BrowserContext, page: Page, server: ChatdServer, name: str):
        self.context = context
        self.page = page
        self.server = server
        self.name = name
        self.dialogs: list[str] = []
        self.page_errors: list[str] = []  # uncaught exceptions in the page
        self.console_errors: list[str] = []  # CSP violations, failed loads, console.error
        page.on("dialog", self._dialog)
        page.on("pageerror", lambda error: self.page_errors.append(str(error)))
        page.on(
            "console",
            lambda m: self.console_errors.append(m.text) if m.type == "error" else None,
        )

    @classmethod
    def open(
        cls,
        browser: Browser,
        server: ChatdServer,
        prefix: str,
        exact_name: bool = False,
        **options: Any,
    ) -> WebUser:
        """A new context showing the sign-in page; the user is ``prefix`` plus a unique suffix
        (or exactly ``prefix`` with ``exact_name``, on a server of one's own)."""
        context = browser.new_context(**options)
        context.set_default_timeout(WAIT_MS)
        page = context.new_page()
        user = cls(context, page, server, prefix if exact_name else unique_name(prefix))
        page.goto(server.base_url + "/")
        return user

    def _dialog(self, dialog: Dialog) -> None:
        # A dialog is what an injected alert(1) would open: record it, then get it out of the way.
        self.dialogs.append(dialog.message)
        dialog.dismiss()

    def close(self) -> None:
        self.context.close()

    # -- signing in ------------------------------------------------------------------------

    def register(self) -> None:
        self.page.fill("#auth-username", self.name)
        self.page.fill("#auth-password", PASSWORD)
        self.page.click("#register-button")
        expect(self.page.locator("#me-name")).to_have_text(self.name, timeout=WAIT_MS)
        self.expect_online()

    def sign_in(self, name: str | None = None) -> None:
        """Sign in as an existing user (``name``: another device of that user)."""
        if name is not None:
            self.name = name
        self.page.fill("#auth-username", self.name)
        self.page.fill("#auth-password", PASSWORD)
        self.page.click("#login-button")
        expect(self.page.locator("#me-name")).to_have_text(self.name, timeout=WAIT_MS)
        self.expect_online()

    def expect_online(self, timeout: int = WAIT_MS) -> None:
        expect(self.page.locator("#connection-state")).to_have_attribute(
            "data-state", "online", timeout=timeout
        )

    # -- conversations ---------------------------------------------------------------------

    def start_chat(self, username: str) -> None:
        self.page.click("#new-chat-button")
        self.page.fill("#new-chat-user", username)
        self.page.click("#new-chat-form button[type=submit]")
        expect(self.page.locator("#chat-title")).to_have_text(username, timeout=WAIT_MS)

    def create_group(self, title: str, members: list[str]) -> None:
        self.page.click("#new-group-button")
        self.page.fill("#new-group-title", title)
        self.page.fill("#new-group-members", ", ".join(members))
        self.page.click("#new-group-form button[type=submit]")
        expect(self.page.locator("#chat-title")).to_have_text(title, timeout=WAIT_MS)

    def conversation(self, name: str) -> Locator:
        """The list entry whose shown name is ``name``."""
        return self.page.locator("#conversation-list .conversation").filter(
            has=self.page.locator(".conversation-name", has_text=name)
        )

    def open_conversation(self, name: str) -> None:
        self.conversation(name).click()
        expect(self.page.locator("#chat-title")).to_have_text(name, timeout=WAIT_MS)

    # -- messages --------------------------------------------------------------------------

    def send(self, text: str) -> None:
        self.page.fill("#composer-input", text)
        self.page.press("#composer-input", "Enter")

    def type_without_sending(self, text: str) -> None:
        self.page.locator("#composer-input").press_sequentially(text)

    def messages(self) -> Locator:
        return self.page.locator("#message-list .message")

    def message(self, text: str) -> Locator:
        return self.page.locator("#message-list .message").filter(
            has=self.page.locator(".body", has_text=text)
        )

    def expect_message(self, text: str, timeout: int = WAIT_MS) -> Locator:
        item = self.message(text)
        expect(item).to_have_count(1, timeout=timeout)
        return item

    def expect_bodies(self, bodies: list[str], timeout: int = WAIT_MS) -> None:
        """The open chat shows exactly these text messages, in this order, each once."""
        expect(self.page.locator("#message-list .message .body")).to_have_text(
            bodies, timeout=timeout
        )

    def expect_tick(self, text: str, state: str, timeout: int = WAIT_MS) -> None:
        tick = self.message(text).locator(".tick")
        expect(tick).to_have_attribute("data-state", state, timeout=timeout)


def png_file(path: os.PathLike[str] | str, width: int = 640, height: int = 400) -> None:
    """A real PNG with something on it, made with Pillow."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (width, height), (37, 99, 235))
    draw = ImageDraw.Draw(image)
    draw.ellipse((width // 4, height // 4, 3 * width // 4, 3 * height // 4), fill=(253, 230, 138))
    draw.rectangle((0, height - 60, width, height), fill=(22, 163, 74))
    image.save(path, format="PNG")
