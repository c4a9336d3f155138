"""Fixtures for cluster tests: three ``chatd serve`` processes sharing one store and Redis."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import require_backend, tcp_reachable
from tests.e2e.conftest import harness, http_session  # noqa: F401  (fixtures reused)
from tests.e2e.server import ChatdServer, ServerFactory


def bus_url(prefix: str) -> str:
    return f"redis://127.0.0.1:6379/0?prefix={prefix}&heartbeat=1&ttl=4"


@pytest.fixture
def trio(tmp_path: Path) -> Iterator[list[ChatdServer]]:
    """Three processes on one SQLite file and one Redis prefix (unique per test)."""
    if not tcp_reachable("127.0.0.1", 6379):
        require_backend("redis", "nothing listens on 127.0.0.1:6379")
    prefix = "cl" + uuid.uuid4().hex[:10]
    store = f"sqlite:///{tmp_path / 'chatd.db'}"
    factory = ServerFactory(tmp_path / "servers")
    try:
        yield [
            factory(
                bus=bus_url(prefix),
                server_id=f"s{i}",
                presence_grace=0.5,
                store=store,
                messages_per_second=1000,
                message_burst=1000,
            )
            for i in range(3)
        ]
    finally:
        factory.close()
