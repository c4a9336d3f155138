"""Settings every push sender is built from (one object, so ``open_push`` builds any sender
the same way)."""

from __future__ import annotations

import os
from dataclasses import dataclass

DEFAULT_SUBJECT = "mailto:postmaster@localhost"


@dataclass(frozen=True, slots=True)
class PushOptions:
    """
    Attributes:
        data_dir: where ``vapid_private.pem`` lives.
        vapid_subject: the VAPID ``sub`` claim, a ``mailto:`` or ``https://`` contact.
        timeout_s: hard limit of one HTTP request to a push service or webhook.
        ttl_s: how long a push service keeps an undelivered Web Push (``TTL`` header).
        urgency: RFC 8030 ``Urgency`` (``normal`` is what RFC 8030 suggests for chat).
        allow_private_hosts: let endpoints name loopback/LAN addresses (off: SSRF guard).
        log_capacity: how many notifications the ``log`` provider remembers.
    """

    data_dir: str | os.PathLike[str] = "data"
    vapid_subject: str = DEFAULT_SUBJECT
    timeout_s: float = 10.0
    ttl_s: int = 86400
    urgency: str = "normal"
    allow_private_hosts: bool = False
    log_capacity: int = 1000
