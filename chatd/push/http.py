"""The HTTP client both real senders share: one aiohttp session with a hard timeout, and a
guard against subscriptions that point at the server's own network.

Subscriptions come from users, so an endpoint could name ``http://127.0.0.1:6379/`` or a
cloud metadata address. Unless ``allow_private_hosts`` is set (tests, or an operator whose
ntfy runs on the LAN), hosts that are not globally routable are refused: IP literals are
checked before connecting, and names are checked after resolution by :class:`PublicResolver`,
so a name that resolves to a private address is refused too. Redirects are not followed
(a redirect to an IP literal would skip the resolver), so a 3xx counts as a failure.
"""

from __future__ import annotations

import ipaddress
import socket
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver


class PrivateHostError(OSError):
    """The endpoint resolves only to addresses that are not globally routable."""


def is_public_address(host: str) -> bool:
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    return address.is_global


def literal_host_refused(url: str, allow_private_hosts: bool) -> bool:
    """True if ``url`` names a non-public IP literal (or localhost) and those are not allowed."""
    if allow_private_hosts:
        return False
    host = (urlsplit(url).hostname or "").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False  # a name: checked after resolution
    return not is_public_address(host)


class PublicResolver(AbstractResolver):
    """Resolves like aiohttp's default resolver, then drops non-public addresses."""

    def __init__(self) -> None:
        self._inner = DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        public = [r for r in results if is_public_address(r["host"])]
        if not public:
            raise PrivateHostError(f"{host} resolves to no public address")
        return public

    async def close(self) -> None:
        await self._inner.close()


def client_session(timeout_s: float, allow_private_hosts: bool) -> aiohttp.ClientSession:
    """A session whose every request is bounded by ``timeout_s`` in total."""
    kwargs: dict[str, Any] = {"limit": 100}
    if not allow_private_hosts:
        kwargs["resolver"] = PublicResolver()
    return aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(total=timeout_s),
        connector=aiohttp.TCPConnector(**kwargs),
        headers={"User-Agent": "chatd-push"},
    )


def check_endpoint_url(url: object) -> str:
    """An ``http``/``https`` URL with a host, or ``ValueError`` saying what is wrong."""
    if not isinstance(url, str) or not url:
        raise ValueError("must be a non-empty string")
    if len(url) > 2048:
        raise ValueError("must be at most 2048 characters")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as exc:
        raise ValueError(f"is not a valid URL: {exc}") from None
    if parts.scheme not in ("http", "https"):
        raise ValueError("must be an http:// or https:// URL")
    if not parts.hostname:
        raise ValueError("must name a host")
    if any(c.isspace() for c in url):
        raise ValueError("must not contain whitespace")
    return url
