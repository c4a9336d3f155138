"""Fixtures for the hardening tests: the end-to-end harness, reused as it is.

The fixtures of ``tests/e2e/conftest.py`` (``server``, ``server_factory``, ``harness``, ``h``,
``http_session``) are imported here so that these tests start real ``chatd serve`` processes
and talk to them exactly like the end-to-end tests do. A module sets ``SERVER_FLAGS`` to start
its shared ``server`` with flags.
"""

from __future__ import annotations

from tests.e2e.conftest import (
    h,
    harness,
    http_session,
    module_server_factory,
    server,
    server_factory,
)

__all__ = [
    "h",
    "harness",
    "http_session",
    "module_server_factory",
    "server",
    "server_factory",
]
