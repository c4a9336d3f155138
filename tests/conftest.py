"""Helpers shared by every test package.

``require_backend`` is how a test says "I need a real service": outside CI a missing service
is a skip with a reason; under ``CI=true`` it is a failure, because CI promises every backend.

The ``tests`` folder itself is put on ``sys.path`` (pytest's default *prepend* import mode does
that for this rootdir conftest), so test packages import shared helpers as
``from e2e.lossck import check_history`` or ``from e2e.server import ChatdServer``.
"""

from __future__ import annotations

import os
import socket
from typing import NoReturn

import pytest


def in_ci() -> bool:
    """True when running under CI, where skipping a backend test is not allowed."""
    return os.environ.get("CI") == "true"


def require_backend(name: str, reason: str) -> NoReturn:
    """Skip the current test because backend ``name`` is unusable; fail instead under CI.

    Args:
        name: the backend, e.g. ``"redis"``, ``"postgres"``, ``"chromium"``.
        reason: what is wrong, in plain words (shown in the test report).
    """
    message = f"{name} is not available: {reason}"
    if in_ci():
        pytest.fail(f"{message} (CI=true: backend tests must run, not skip)", pytrace=False)
    pytest.skip(message)


def tcp_reachable(host: str, port: int, timeout: float = 1.0) -> bool:
    """Whether something accepts TCP connections at ``host:port`` within ``timeout``."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (the kernel picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture(scope="session")
def redis_url() -> str:
    """The URL of the machine's Redis (``CHATD_TEST_REDIS_URL`` overrides the default)."""
    url = os.environ.get("CHATD_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
    host_port = url.split("://", 1)[1].split("/", 1)[0]
    host, _, port = host_port.rpartition(":")
    if not tcp_reachable(host or "127.0.0.1", int(port or 6379)):
        require_backend("redis", f"nothing answers at {host_port}")
    return url


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """The URL of the machine's PostgreSQL (``CHATD_TEST_POSTGRES_URL`` overrides it)."""
    url = os.environ.get("CHATD_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
    host_port = url.split("@", 1)[-1].split("/", 1)[0]
    host, _, port = host_port.rpartition(":")
    if not tcp_reachable(host or "127.0.0.1", int(port or 5432)):
        require_backend("postgres", f"nothing answers at {host_port}")
    return url
