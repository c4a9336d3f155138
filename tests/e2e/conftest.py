"""Fixtures for end-to-end tests.

* ``server``: one ``chatd serve`` shared by a whole test module (tests use unique usernames so
  they never interfere). A module sets ``SERVER_FLAGS = {...}`` to start it with flags.
* ``server_factory`` (``chatd_server`` from ``tests/conftest.py``): start extra servers for one
  test (``server_factory(presence_grace=0.5)``); all are stopped by pid at the end of the test.
* ``h``: a :class:`~e2e.client.Harness` on ``server``; ``harness(other_server)`` makes more.

When a test fails, the stderr of every server it used is attached to the report (the hook is
in ``tests/conftest.py``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import aiohttp
import pytest

from .client import Harness
from .server import ChatdServer, ServerFactory


@pytest.fixture
def server_factory(chatd_server: ServerFactory) -> ServerFactory:
    """The top-level ``chatd_server`` factory under the name these tests use."""
    return chatd_server


@pytest.fixture(scope="module")
def module_server_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerFactory]:
    factory = ServerFactory(tmp_path_factory.mktemp("chatd"))
    try:
        yield factory
    finally:
        factory.close()


@pytest.fixture(scope="module")
def server(request: pytest.FixtureRequest, module_server_factory: ServerFactory) -> ChatdServer:
    flags: dict[str, Any] = getattr(request.module, "SERVER_FLAGS", {})
    return module_server_factory(**flags)


@pytest.fixture
async def http_session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        yield session


@pytest.fixture
async def harness(
    http_session: aiohttp.ClientSession,
) -> AsyncIterator[Callable[[ChatdServer], Harness]]:
    made: list[Harness] = []

    def make(server: ChatdServer) -> Harness:
        h = Harness(server, http_session)
        made.append(h)
        return h

    try:
        yield make
    finally:
        for h in made:
            await h.close()


@pytest.fixture
async def h(server: ChatdServer, harness: Callable[[ChatdServer], Harness]) -> Harness:
    if not server.running():
        pytest.fail("the module's chatd server is not running:\n" + server.stderr_text())
    return harness(server)
