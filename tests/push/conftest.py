"""A fake push service on a real socket, and the pieces a push test needs.

``PushService`` is an aiohttp server that plays both a Web Push service and a webhook
receiver. For Web Push it does what a real push service and browser would do together:
checks the VAPID ``Authorization`` (the ES256 signature against the key in ``k=``, that key
against the server's, the ``aud``, ``exp`` and ``sub`` claims), then decrypts the
``aes128gcm`` body with the browser's private key and auth secret. Each endpoint's behaviour
(answer with a status, hang) is set per path, and every request is recorded.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import time
from collections.abc import AsyncIterator, Callable, Collection
from dataclasses import dataclass, field
from typing import Any

import http_ece
import pytest
from aiohttp import web
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from chatd.models import NewMessage, PushSubscription
from chatd.store import Store, open_store
from tests.conftest import require_backend


def b64d(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def b64e(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@dataclass
class Browser:
    """A fake browser's push subscription: its key pair and auth secret."""

    endpoint: str
    private_key: ec.EllipticCurvePrivateKey = field(
        default_factory=lambda: ec.generate_private_key(ec.SECP256R1())
    )
    auth: bytes = field(default_factory=lambda: os.urandom(16))

    def subscription_json(self) -> dict[str, Any]:
        point = self.private_key.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
        return {"endpoint": self.endpoint, "keys": {"p256dh": b64e(point), "auth": b64e(self.auth)}}

    def decrypt(self, body: bytes) -> bytes:
        return bytes(
            http_ece.decrypt(
                body, private_key=self.private_key, auth_secret=self.auth, version="aes128gcm"
            )
        )


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float
    payload: dict[str, Any] | None = None  # decrypted (webpush) or parsed (webhook)
    claims: dict[str, Any] | None = None  # the verified VAPID JWT claims
    error: str | None = None  # why verification or decryption failed


def verify_vapid(authorization: str, expected_key: str) -> dict[str, Any]:
    """Check ``vapid t=<jwt>, k=<key>`` as a push service does; return the claims."""
    scheme, _, params = authorization.partition(" ")
    assert scheme.lower() == "vapid", f"scheme {scheme!r}"
    parts = dict(p.strip().split("=", 1) for p in params.split(","))
    assert parts["k"] == expected_key, "k= is not the server's VAPID public key"
    header_b64, claims_b64, sig_b64 = parts["t"].split(".")
    header = json.loads(b64d(header_b64))
    assert header == {"typ": "JWT", "alg": "ES256"}, header
    raw = b64d(sig_b64)
    assert len(raw) == 64, "ES256 signature must be raw r||s"
    der = encode_dss_signature(int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big"))
    public = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), b64d(parts["k"]))
    try:
        public.verify(der, f"{header_b64}.{claims_b64}".encode(), ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        raise AssertionError("bad VAPID signature") from None
    claims: dict[str, Any] = json.loads(b64d(claims_b64))
    return claims


class PushService:
    """The fake push service / webhook receiver. Paths: ``/wp/<name>``, ``/hook/<name>``."""

    def __init__(self) -> None:
        self.received: list[Received] = []
        self.browsers: dict[str, Browser] = {}
        self.behaviour: dict[str, list[int | str]] = {}  # path -> answers to give in turn
        self.vapid_key: str | None = None
        self.base = ""
        self._changed = asyncio.Condition()
        self._release = asyncio.Event()
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/wp/{name}", self._handle)
        app.router.add_post("/hook/{name}", self._handle)
        self._runner = web.AppRunner(app, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.base = f"http://127.0.0.1:{port}"

    async def close(self) -> None:
        self._release.set()  # let hanging handlers finish
        if self._runner is not None:
            await self._runner.cleanup()

    def browser(self, name: str) -> Browser:
        browser = Browser(f"{self.base}/wp/{name}")
        self.browsers[f"/wp/{name}"] = browser
        return browser

    def hook_url(self, name: str) -> str:
        return f"{self.base}/hook/{name}"

    def answer(self, path: str, *answers: int | str) -> None:
        """Answer requests to ``path`` with these statuses in turn (the last one repeats);
        ``"hang"`` waits 30 s before answering."""
        self.behaviour[path] = list(answers)

    def at(self, path: str) -> list[Received]:
        return [r for r in self.received if r.path == path]

    async def wait_for(self, predicate: Callable[[], bool], within: float = 5.0) -> None:
        async with asyncio.timeout(within), self._changed:
            await self._changed.wait_for(predicate)

    async def _handle(self, request: web.Request) -> web.Response:
        path = request.path
        body = await request.read()
        item = Received(path, dict(request.headers), body, time.monotonic())
        if path.startswith("/wp/"):
            try:
                assert self.vapid_key is not None, "test did not set the server's VAPID key"
                item.claims = verify_vapid(request.headers["Authorization"], self.vapid_key)
                assert request.headers["Content-Encoding"] == "aes128gcm"
                item.payload = json.loads(self.browsers[path].decrypt(body))
            except Exception as exc:
                item.error = f"{type(exc).__name__}: {exc}"
        else:
            try:
                item.payload = json.loads(body)
            except ValueError as exc:
                item.error = f"not JSON: {exc}"
        async with self._changed:
            self.received.append(item)
            self._changed.notify_all()
        answers = self.behaviour.get(path, [201])
        answer = answers.pop(0) if len(answers) > 1 else answers[0]
        if answer == "hang":
            await asyncio.wait_for(self._release.wait(), 30)
            answer = 201
        if item.error:
            return web.Response(status=400, text=item.error)
        if answer == 429:
            return web.Response(status=429, headers={"Retry-After": "0"})
        return web.Response(status=int(answer))


@pytest.fixture
async def push_service() -> AsyncIterator[PushService]:
    service = PushService()
    await service.start()
    try:
        yield service
    finally:
        await asyncio.wait_for(service.close(), 10)


class Presence:
    """Who is online, as the dispatcher's ``is_online`` sees it."""

    def __init__(self) -> None:
        self.online: set[str] = set()

    async def is_online(self, users: Collection[str]) -> set[str]:
        return self.online & set(users)


@pytest.fixture
def presence() -> Presence:
    return Presence()


def _sqlite_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("chatd.store.sqlite") is not None


@pytest.fixture(params=["memory"])
async def store(request: pytest.FixtureRequest, tmp_path: Any) -> AsyncIterator[Store]:
    st = await _open(request.param, tmp_path)
    try:
        yield st
    finally:
        await st.close()


@pytest.fixture(params=["memory", "sqlite"])
async def any_store(request: pytest.FixtureRequest, tmp_path: Any) -> AsyncIterator[Store]:
    """Every embedded store backend: for the tests that read and delete subscriptions."""
    st = await _open(request.param, tmp_path)
    try:
        yield st
    finally:
        await st.close()


async def _open(kind: str, tmp_path: Any) -> Store:
    if kind == "sqlite" and not _sqlite_available():
        require_backend("sqlite store", "chatd.store.sqlite does not exist yet")
    url = "memory://" if kind == "memory" else f"sqlite:///{tmp_path}/chatd.db"
    st = open_store(url)
    await asyncio.wait_for(st.start(), 10)
    return st


@dataclass
class Chat:
    """A group ``g1`` of alice (who sends), bob and carol, in a started store."""

    store: Store
    conv: str = "g1"
    members: tuple[str, ...] = ("alice", "bob", "carol")
    _n: int = 0

    async def setup(self) -> Chat:
        for user in self.members:
            await self.store.create_user(user, "x", 1)
        await self.store.create_group(
            self.conv,
            "ops",
            [(u, "owner" if u == "alice" else "member") for u in self.members],
            NewMessage(
                conv=self.conv,
                sender="alice",
                msg_id="m0",
                ts=1000,
                kind="system",
                event={"action": "create", "users": list(self.members)},
            ),
        )
        return self

    async def say(self, body: str, sender: str = "alice") -> Any:
        self._n += 1
        result = await self.store.append_message(
            NewMessage(
                conv=self.conv,
                sender=sender,
                msg_id=f"m{self._n}",
                ts=1000 + self._n,
                client_id=f"c{self._n}",
                body=body,
            )
        )
        return result.message

    async def subscribe(self, user: str, kind: str, data: dict[str, Any]) -> PushSubscription:
        self._n += 1
        sub = PushSubscription(f"s{self._n}-{user}", user, kind, data, 1)  # type: ignore[arg-type]
        await self.store.add_push_subscription(sub)
        return sub

    def others(self, sender: str = "alice") -> list[str]:
        return [u for u in self.members if u != sender]


@pytest.fixture
async def chat(store: Store) -> Chat:
    return await Chat(store).setup()
