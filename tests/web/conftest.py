"""Fixtures for the browser tests: a real ``chatd serve`` and Debian's Chromium, headless.

``server``: one ``chatd serve`` shared by every module of ``tests/web`` (users have unique
names, so tests never meet), started with :data:`WEB_SERVER_FLAGS`; a module that stops or
restarts its server sets ``OWN_SERVER = True`` (and optionally ``SERVER_FLAGS``) to get one of
its own. Every server is stopped by pid. ``server_factory`` (from ``tests/e2e/conftest.py``)
starts extra servers for one test.

``browser`` launches ``/usr/bin/chromium`` through Playwright once per module (no browser
download; each test gets fresh contexts); without it the tests skip, and fail under
``CI=true`` like every other missing backend (``tests.conftest.require_backend``). Not once
per session: Playwright's sync API keeps an event loop running in the main thread while it is
open, and pytest-asyncio cannot run the async tests of other packages under it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.conftest import require_backend
from tests.e2e.conftest import module_server_factory, server_factory
from tests.e2e.server import ChatdServer, ServerFactory

from .client import CHROMIUM, WebUser

__all__ = [
    "browser",
    "module_server_factory",
    "server",
    "server_factory",
    "shared_server",
    "web_user",
]

# A short presence grace, so "last seen" shows within a second of someone leaving; Web Push on,
# so the notifications switch has a VAPID key to subscribe with.
WEB_SERVER_FLAGS: dict[str, Any] = {"presence_grace": 0.5, "push": "webpush"}


@pytest.fixture(scope="session")
def shared_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChatdServer]:
    factory = ServerFactory(tmp_path_factory.mktemp("chatd-web"))
    try:
        yield factory.launch(WEB_SERVER_FLAGS)
    finally:
        factory.close()


@pytest.fixture(scope="module")
def server(request: pytest.FixtureRequest, module_server_factory: ServerFactory) -> ChatdServer:
    if getattr(request.module, "OWN_SERVER", False):
        return module_server_factory(**getattr(request.module, "SERVER_FLAGS", {}))
    shared: ChatdServer = request.getfixturevalue("shared_server")
    if not shared.running():
        pytest.fail("the shared chatd server of tests/web died:\n" + shared.stderr_text())
    return shared


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
