"""The ``log`` provider (the default): records what would be sent instead of sending it.

It accepts every subscription kind, keeps the last ``capacity`` notifications in memory
(``records``, for tests and for an operator poking at a dev server), logs one line per
notification, and counts them in ``sent``.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass
from typing import Any

from chatd.models import PushSubscription
from chatd.push.base import PushResult, PushSender
from chatd.push.options import PushOptions

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class LoggedPush:
    sub_id: str
    user: str
    kind: str
    payload: dict[str, Any]


class LogSender(PushSender):
    kind = "*"

    def __init__(self, capacity: int = 1000) -> None:
        self.records: deque[LoggedPush] = deque(maxlen=max(1, capacity))
        self.sent = 0

    @classmethod
    def from_options(cls, options: PushOptions, vapid: object = None) -> LogSender:
        return cls(options.log_capacity)

    async def send(self, sub: PushSubscription, payload: dict[str, Any]) -> PushResult:
        self.records.append(LoggedPush(sub.id, sub.user, sub.kind, payload))
        self.sent += 1
        log.info(
            "push (log only) to %s via %s %s: conv=%s seq=%s count=%s",
            sub.user,
            sub.kind,
            sub.id,
            payload.get("conv"),
            payload.get("seq"),
            payload.get("count"),
        )
        return PushResult("delivered")
