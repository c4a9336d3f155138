"""Helpers shared by every test package.

``require_backend`` is how a test says "I need a real service": outside CI a missing service
is a skip with a reason; under ``CI=true`` it is a failure, because CI promises every backend.

``tests`` is a package, so test packages import shared helpers as
``from tests.e2e.lossck import check`` or ``from tests.e2e.server import ChatdServer``.

Fixtures here: ``chatd_server`` (a factory of real ``chatd serve`` subprocesses, all stopped by
pid when the test ends: ``chatd_server(bus=redis_url, presence_grace=0.5)``), ``redis_url``
and ``postgres_url``. When a test fails, the stderr of every chatd server it used is attached
to its report.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn

import pytest

from tests.e2e.server import ChatdServer, ServerFactory


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
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The URL of a Redis to test against.

    ``CHATD_TEST_REDIS_URL`` if set, else the machine's Redis at 127.0.0.1:6379; if nothing
    answers there and ``redis-server`` is installed, a private one is started for the session
    (and stopped by pid at its end); else the test is skipped (failed under CI).
    """
    url = os.environ.get("CHATD_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
    host_port = url.split("://", 1)[1].split("/", 1)[0].rsplit("@", 1)[-1]
    host, _, port = host_port.rpartition(":")
    if tcp_reachable(host or "127.0.0.1", int(port or 6379)):
        yield url
        return
    binary = shutil.which("redis-server")
    if binary is None or "CHATD_TEST_REDIS_URL" in os.environ:
        require_backend("redis", f"nothing answers at {host_port} and redis-server is missing")
    private_port = free_port()
    workdir = tmp_path_factory.mktemp("redis")
    proc = subprocess.Popen(
        [
            binary,
            "--port",
            str(private_port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(workdir),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while not tcp_reachable("127.0.0.1", private_port, timeout=0.2):
            if proc.poll() is not None or time.monotonic() > deadline:
                require_backend("redis", f"could not start {binary} on port {private_port}")
            time.sleep(0.05)
        yield f"redis://127.0.0.1:{private_port}/0"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """The URL of the machine's PostgreSQL (``CHATD_TEST_POSTGRES_URL`` overrides it)."""
    url = os.environ.get("CHATD_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
    host_port = url.split("@", 1)[-1].split("/", 1)[0]
    host, _, port = host_port.rpartition(":")
    if not tcp_reachable(host or "127.0.0.1", int(port or 5432)):
        require_backend("postgres", f"nothing answers at {host_port}")
    return url


@pytest.fixture
def chatd_server(tmp_path: Path) -> Iterator[ServerFactory]:
    """Start ``chatd serve`` subprocesses: ``chatd_server(**flags) -> ChatdServer``.

    ``chatd_server.create(**flags)`` makes one without starting it (to prepare its data dir);
    ``server.restart()``, ``server.kill()`` and ``server.stop()`` act on the same data dir.
    """
    factory = ServerFactory(tmp_path / "chatd")
    factory.base_dir.mkdir(parents=True, exist_ok=True)
    try:
        yield factory
    finally:
        factory.close()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[Any]:
    """Attach the stderr of every chatd server a failed test used to its report."""
    outcome: Any = yield
    report = outcome.get_result()
    if not report.failed:
        return
    seen: set[int] = set()
    for value in getattr(item, "funcargs", {}).values():
        servers: list[ChatdServer] = []
        if isinstance(value, ChatdServer):
            servers = [value]
        elif isinstance(value, ServerFactory):
            servers = value.servers
        elif isinstance(getattr(value, "server", None), ChatdServer):
            servers = [value.server]
        for server in servers:
            if id(server) in seen:
                continue
            seen.add(id(server))
            report.sections.append(
                (f"chatd stderr (port {server.port})", server.stderr_text(tail=6000))
            )
