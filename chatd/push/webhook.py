"""Webhook delivery: an HTTP POST of the notification as a small JSON document.

A subscription's ``data`` is ``{"url": "https://..."}``. The body is the dispatcher's payload
(see :mod:`chatd.push.dispatcher`): ``conv``, ``conv_title``, ``from``, ``seq``, ``msg_id``,
``ts``, ``count``, ``preview``, plus ready-made ``title`` and ``message`` strings, so that ntfy
(with ``?tpl=1&t={{.title}}&m={{.message}}``), Gotify (``/message?token=...`` reads ``title``
and ``message``) and UnifiedPush distributors can use it unchanged.
"""

from __future__ import annotations

from typing import Any

import aiohttp
import orjson

from chatd.models import PushSubscription
from chatd.push.base import PushResult, PushSender, parse_retry_after
from chatd.push.http import (
    PrivateHostError,
    check_endpoint_url,
    client_session,
    literal_host_refused,
)
from chatd.push.options import PushOptions


def check_webhook(data: object) -> dict[str, Any]:
    """Validate ``{"url": ...}``; ``ValueError`` naming the problem."""
    if not isinstance(data, dict):
        raise ValueError("webhook subscription must be an object with a url")
    try:
        url = check_endpoint_url(data.get("url"))
    except ValueError as exc:
        raise ValueError(f"url {exc}") from None
    return {"url": url}


class WebhookSender(PushSender):
    kind = "webhook"

    def __init__(self, *, timeout_s: float = 10.0, allow_private_hosts: bool = False) -> None:
        self.timeout_s = timeout_s
        self.allow_private_hosts = allow_private_hosts
        self._session: aiohttp.ClientSession | None = None

    @classmethod
    def from_options(cls, options: PushOptions, vapid: object = None) -> WebhookSender:
        return cls(timeout_s=options.timeout_s, allow_private_hosts=options.allow_private_hosts)

    async def start(self) -> None:
        if self._session is None:
            self._session = client_session(self.timeout_s, self.allow_private_hosts)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def send(self, sub: PushSubscription, payload: dict[str, Any]) -> PushResult:
        if self._session is None:
            raise RuntimeError("WebhookSender.send before start()")
        try:
            url = check_webhook(sub.data)["url"]
        except ValueError as exc:
            return PushResult("gone", detail=f"invalid subscription: {exc}")
        if literal_host_refused(url, self.allow_private_hosts):
            return PushResult("retry", detail="url is a private address", permanent=True)
        headers = {"Content-Type": "application/json"}
        try:
            async with self._session.post(
                url, data=orjson.dumps(payload), headers=headers, allow_redirects=False
            ) as r:
                detail = "" if r.status < 300 else (await r.text(errors="replace"))[:200]
                return PushResult.from_status(
                    r.status, parse_retry_after(r.headers.get("Retry-After")), detail
                )
        except PrivateHostError as exc:
            return PushResult("retry", detail=str(exc), permanent=True)
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            return PushResult("retry", detail=f"{type(exc).__name__}: {exc}"[:200])
