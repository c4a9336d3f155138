"""Web Push delivery: RFC 8030 over aiohttp, RFC 8291 ``aes128gcm`` payload encryption
(http_ece), RFC 8292 VAPID authorization (:mod:`chatd.push.vapid`).

A subscription's ``data`` is the browser's ``PushSubscription.toJSON()``:
``{"endpoint": "https://...", "keys": {"p256dh": "<base64url>", "auth": "<base64url>"}}``.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import http_ece
import orjson
from cryptography.hazmat.primitives.asymmetric import ec

from chatd.models import PushSubscription
from chatd.push.base import PushResult, PushSender, parse_retry_after
from chatd.push.http import (
    PrivateHostError,
    check_endpoint_url,
    client_session,
    literal_host_refused,
)
from chatd.push.options import PushOptions
from chatd.push.vapid import VapidKeys, b64url, b64url_decode

log = logging.getLogger(__name__)

URGENCIES = ("very-low", "low", "normal", "high")
# A push service must accept at least 4096 bytes of encrypted payload (RFC 8030 section 7.2).
MAX_PLAINTEXT = 3993


def check_subscription(data: object) -> dict[str, Any]:
    """Validate a browser subscription object and return its canonical form.

    Raises:
        ValueError: with a message naming the bad field.
    """
    if not isinstance(data, dict):
        raise ValueError("subscription must be an object with endpoint and keys")
    try:
        endpoint = check_endpoint_url(data.get("endpoint"))
    except ValueError as exc:
        raise ValueError(f"subscription.endpoint {exc}") from None
    keys = data.get("keys")
    if not isinstance(keys, dict):
        raise ValueError("subscription.keys must be an object with p256dh and auth")
    p256dh, auth = keys.get("p256dh"), keys.get("auth")
    if not isinstance(p256dh, str) or not isinstance(auth, str):
        raise ValueError("subscription.keys.p256dh and subscription.keys.auth must be strings")
    try:
        point = b64url_decode(p256dh)
        ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), point)
    except ValueError:
        raise ValueError("subscription.keys.p256dh is not a base64url P-256 public key") from None
    try:
        secret = b64url_decode(auth)
    except ValueError:
        raise ValueError("subscription.keys.auth is not base64url") from None
    if len(secret) != 16:
        raise ValueError("subscription.keys.auth must be 16 bytes")
    return {"endpoint": endpoint, "keys": {"p256dh": b64url(point), "auth": b64url(secret)}}


def encrypt(plaintext: bytes, p256dh: str, auth: str) -> bytes:
    """RFC 8291 ``aes128gcm`` body for one subscription (fresh ephemeral key and salt)."""
    return bytes(
        http_ece.encrypt(
            plaintext,
            private_key=ec.generate_private_key(ec.SECP256R1()),
            dh=b64url_decode(p256dh),
            auth_secret=b64url_decode(auth),
            version="aes128gcm",
        )
    )


def topic_for(payload: dict[str, Any]) -> str | None:
    """RFC 8030 ``Topic``: a push service replaces a not-yet-delivered push of the same topic,
    so a phone that was offline wakes to one notification per conversation, not a pile."""
    conv = payload.get("conv")
    if not isinstance(conv, str):
        return None
    return b64url(hashlib.sha256(conv.encode()).digest())[:32]


class WebPushSender(PushSender):
    kind = "webpush"

    def __init__(
        self,
        vapid: VapidKeys,
        *,
        timeout_s: float = 10.0,
        ttl_s: int = 86400,
        urgency: str = "normal",
        allow_private_hosts: bool = False,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        if urgency not in URGENCIES:
            raise ValueError(f"urgency must be one of {', '.join(URGENCIES)}")
        self.vapid = vapid
        self.timeout_s = timeout_s
        self.ttl_s = ttl_s
        self.urgency = urgency
        self.allow_private_hosts = allow_private_hosts
        self._wall_clock = wall_clock
        self._session: aiohttp.ClientSession | None = None

    @classmethod
    def from_options(cls, options: PushOptions, vapid: VapidKeys | None) -> WebPushSender:
        if vapid is None:
            vapid = VapidKeys.load_or_create(options.data_dir, options.vapid_subject)
        return cls(
            vapid,
            timeout_s=options.timeout_s,
            ttl_s=options.ttl_s,
            urgency=options.urgency,
            allow_private_hosts=options.allow_private_hosts,
        )

    async def start(self) -> None:
        if self._session is None:
            self._session = client_session(self.timeout_s, self.allow_private_hosts)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def send(self, sub: PushSubscription, payload: dict[str, Any]) -> PushResult:
        if self._session is None:
            raise RuntimeError("WebPushSender.send before start()")
        try:
            info = check_subscription(sub.data)
        except ValueError as exc:
            # Validated when stored, so this is a corrupt record that can never work.
            return PushResult("gone", detail=f"invalid subscription: {exc}")
        endpoint = info["endpoint"]
        if literal_host_refused(endpoint, self.allow_private_hosts):
            return PushResult("retry", detail="endpoint is a private address", permanent=True)
        plaintext = orjson.dumps(payload)
        if len(plaintext) > MAX_PLAINTEXT:
            return PushResult("retry", detail="payload too large", permanent=True)
        body = encrypt(plaintext, info["keys"]["p256dh"], info["keys"]["auth"])
        headers = {
            "Authorization": self.vapid.authorization(endpoint, self._wall_clock()),
            "Content-Encoding": "aes128gcm",
            "Content-Type": "application/octet-stream",
            "TTL": str(self.ttl_s),
            "Urgency": self.urgency,
        }
        topic = topic_for(payload)
        if topic:
            headers["Topic"] = topic
        try:
            async with self._session.post(
                endpoint, data=body, headers=headers, allow_redirects=False
            ) as resp:
                detail = "" if resp.status < 300 else (await resp.text(errors="replace"))[:200]
                return PushResult.from_status(
                    resp.status, parse_retry_after(resp.headers.get("Retry-After")), detail
                )
        except PrivateHostError as exc:
            return PushResult("retry", detail=str(exc), permanent=True)
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            return PushResult("retry", detail=f"{type(exc).__name__}: {exc}"[:200])
