"""The one exception tree of chatd.

    ChatError                 a request failed; carries the protocol's error code
    ├── BadRequest            bad_request   400
    ├── Unauthorized          unauthorized  401
    ├── Forbidden             forbidden     403
    ├── NotFound              not_found     404
    ├── Conflict              conflict      409
    │   └── StaleVersion      the conversation changed under an optimistic update (retried)
    ├── TooLarge              too_large     413
    ├── RateLimited           rate_limited  429
    ├── Unavailable           unavailable   503 (a backend is down; safe to retry)
    └── Internal              internal      500
    ConfigError               a setting or backend URL is wrong (not a request error)

Client-facing code and HTTP status are looked up in exactly one place: ``ChatError.code`` and
``ChatError.http_status``.
"""

from __future__ import annotations

import math


class ChatError(Exception):
    code = "internal"
    http_status = 500

    def __init__(self, message: str = "", **extra: object) -> None:
        super().__init__(message or self.code.replace("_", " "))
        self.message = message or self.code.replace("_", " ")
        self.extra = extra


class BadRequest(ChatError):
    code = "bad_request"
    http_status = 400


class Unauthorized(ChatError):
    code = "unauthorized"
    http_status = 401


class Forbidden(ChatError):
    code = "forbidden"
    http_status = 403


class NotFound(ChatError):
    code = "not_found"
    http_status = 404


class Conflict(ChatError):
    code = "conflict"
    http_status = 409


class StaleVersion(Conflict):
    """The members of a conversation changed between read and write; the service retries."""


class TooLarge(ChatError):
    code = "too_large"
    http_status = 413


class RateLimited(ChatError):
    code = "rate_limited"
    http_status = 429

    def __init__(self, message: str = "", retry_after: float = 1.0) -> None:
        # Rounded up to the millisecond: a bucket short by a float's hair must not tell the
        # client to retry in 0 s (and be refused again).
        shown = math.ceil(retry_after * 1000) / 1000 if math.isfinite(retry_after) else retry_after
        super().__init__(message or "rate limited", retry_after=shown)
        self.retry_after = retry_after


class Unavailable(ChatError):
    code = "unavailable"
    http_status = 503


class Internal(ChatError):
    code = "internal"
    http_status = 500


class ConfigError(Exception):
    """A setting is invalid or a backend cannot be reached at start: reported as one line."""
