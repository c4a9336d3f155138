"""The push sender interface: one :class:`PushSender` per subscription kind.

A sender delivers one payload to one subscription and says what happened; it never retries
and never touches the store. Retries, timeouts, pruning and coalescing are the dispatcher's
business (:mod:`chatd.push.dispatcher`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Literal

from chatd.models import PushSubscription

Outcome = Literal["delivered", "retry", "gone"]


@dataclass(frozen=True, slots=True)
class PushResult:
    """What one delivery attempt achieved.

    ``delivered``: the push service accepted it (2xx). ``retry``: a temporary failure (429,
    5xx, a network error or a timeout), with the server's ``Retry-After`` in seconds when it
    gave one. ``gone``: the subscription no longer exists (404, 410) and must be deleted.
    ``status`` is the HTTP status if there was an answer; ``detail`` a short reason for logs.
    Any other answer (a 4xx that is not 404/410/429) is ``retry`` with ``permanent=True``: the
    dispatcher counts it as failed without retrying, since sending it again cannot help.
    """

    outcome: Outcome
    status: int | None = None
    retry_after: float | None = None
    detail: str = ""
    permanent: bool = False

    @classmethod
    def from_status(
        cls, status: int, retry_after: float | None = None, detail: str = ""
    ) -> PushResult:
        """Classify an HTTP answer of a push service or webhook."""
        if 200 <= status < 300:
            return cls("delivered", status)
        if status in (404, 410):
            return cls("gone", status, detail=detail)
        if status == 429 or status >= 500:
            return cls("retry", status, retry_after, detail)
        return cls("retry", status, None, detail, permanent=True)


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header given as delay-seconds; ``None`` otherwise.

    The HTTP-date form is rare for push services and is ignored (the dispatcher's own
    exponential backoff applies instead).
    """
    if not value:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None
    return seconds if seconds >= 0 else None


class PushSender(ABC):
    """Delivers payloads to subscriptions of one kind (``webpush``, ``webhook``).

    ``start`` and ``close`` open and release what the sender needs (an HTTP client); the
    dispatcher that is given a sender owns it and calls both.
    """

    kind: str = ""

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Open connections; called once by the dispatcher's ``start``."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections; called once by the dispatcher's ``close``."""

    @abstractmethod
    async def send(self, sub: PushSubscription, payload: dict[str, Any]) -> PushResult:
        """Deliver ``payload`` once. Network errors are returned as ``retry``, not raised."""
