"""Fixtures for the browser tests: a real ``chatd serve`` and Debian's Chromium, headless.

The server fixtures are those of ``tests/e2e/conftest.py`` (one ``chatd serve`` per module,
stopped by pid). ``browser`` launches ``/usr/bin/chromium`` through Playwright once per
module (no browser download; each test gets fresh contexts); without it the tests skip, and
fail under ``CI=true`` like every other missing backend (``tests.conftest.require_backend``).

Not once per session: Playwright's sync API keeps an event loop running in the main thread
while it is open, and pytest-asyncio cannot run async tests of other packages under it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

import pytest

from tests.conftest import require_backend
from tests.e2e.conftest import module_server_factory, server, server_factory
from tests.e2e.server import ChatdServer

from .client import CHROMIUM, WebUser

__all__ = ["browser", "module_server_factory", "server", "server_factory", "web_user"]


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        require_backend("chromium", f"{CHROMIUM} is missing (apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as exc:
        require_backend("chromium", f"Playwright for Python is not installed ({exc})")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox"], headless=True
        )
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def web_user(browser: object, server: ChatdServer) -> Iterator[Callable[..., WebUser]]:
    """``web_user("alice")``: a new browser context on the module's server, signed up."""
    made: list[WebUser] = []

    def make(prefix: str, register: bool = True, **context_options: object) -> WebUser:
        user = WebUser.open(browser, server, prefix, **context_options)
        made.append(user)
        if register:
            user.register()
        return user

    try:
        yield make
    finally:
        problems: list[str] = []
        for user in made:
            user.close()
            problems += [f"{user.name}: uncaught {e}" for e in user.page_errors]
            problems += [f"{user.name}: {e}" for e in user.console_errors if "Security Policy" in e]
        if problems:
            pytest.fail("the page broke or was blocked:\n" + "\n".join(problems))
