"""Log lines that say which request or connection they belong to, as text or JSON.

The *log context* (``request_id``, ``conn``, ``user``) lives in a :class:`~contextvars.ContextVar`.
The HTTP middleware (:mod:`chatd.transport.request_id`) binds a request id, and the WebSocket
handler a connection id and then its user, for the task that serves them. asyncio copies the
context into every task created from there (a socket's request tasks, say) and
``asyncio.to_thread`` into its thread, so whatever they log carries the ids without passing
them along.

:class:`ContextFilter` sits on the *handler*, not on a logger, so that it sees every record
the handler writes, aiohttp's and other libraries' included, and copies the context onto it.
:class:`TextFormatter` shows it as ``[req=... conn=... user=...]``, or ``[-]`` outside any
request or connection, so every line has the field; :class:`JsonFormatter` (one object a
line, ``log_format = "json"``) gives the keys that are known.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from typing import IO

import orjson
from aiohttp.http_exceptions import HttpProcessingError

#: Record attributes the context fills, in the order the text format shows them.
FIELDS = ("request_id", "conn", "user")
_LABELS = (("req", "request_id"), ("conn", "conn"), ("user", "user"))
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(context)s] %(message)s"


@dataclass(frozen=True, slots=True)
class LogContext:
    request_id: str | None = None
    conn: str | None = None
    user: str | None = None


_OUTSIDE = LogContext()  # frozen: safe to share as the default
_context: ContextVar[LogContext] = ContextVar("chatd_log_context", default=_OUTSIDE)


def current() -> LogContext:
    """The log context of the running task (or thread)."""
    return _context.get()


def name_user(user: str) -> None:
    """Name the authenticated user for the rest of the current request: the request's
    middleware (``bind``) restores the context when the request ends."""
    now = _context.get()
    if now.user != user:
        _context.set(LogContext(now.request_id, now.conn, user))


@contextlib.contextmanager
def bind(
    *, request_id: str | None = None, conn: str | None = None, user: str | None = None
) -> Iterator[None]:
    """Add fields to the current log context until the block ends; ``None`` keeps a field.

    Tasks created inside the block keep the fields for their whole life: they copied the
    context when they were made.
    """
    now = _context.get()
    token = _context.set(
        LogContext(
            request_id if request_id is not None else now.request_id,
            conn if conn is not None else now.conn,
            user if user is not None else now.user,
        )
    )
    try:
        yield
    finally:
        _context.reset(token)


class ContextFilter(logging.Filter):
    """Copies the log context onto each record (never drops one).

    A record that already names a connection, request or user (``extra={"conn": ...}``) keeps
    what it names and gets nothing from the context: such a line is about another socket
    than the one whose task wrote it (a slow consumer found during someone else's send).
    """

    def filter(self, record: logging.LogRecord) -> bool:
        explicit = any(getattr(record, name, None) is not None for name in FIELDS)
        ctx = _context.get()
        for name in FIELDS:
            if not explicit:
                setattr(record, name, getattr(ctx, name))
            elif not hasattr(record, name):
                setattr(record, name, None)
        return True


class BadRequestFilter(logging.Filter):
    """aiohttp logs every malformed HTTP request (a header over 16 KiB, a control character
    in a header) at ERROR with a traceback that quotes the offending bytes, which may hold a
    token, and anyone can fill a log that way. Such a record becomes one WARNING line naming
    the error's kind and status, without the bytes; the client has its 400 already."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError):
            record.msg = "malformed HTTP request: %s (%s)"
            record.args = (type(exc).__name__, exc.code)
            record.exc_info = None
            record.exc_text = None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


def render_context(record: logging.LogRecord) -> str:
    """``req=... conn=... user=...`` with the fields the record has, ``-`` if none."""
    parts = [
        f"{label}={value}"
        for label, name in _LABELS
        if (value := getattr(record, name, None)) is not None
    ]
    return " ".join(parts) or "-"


class TextFormatter(logging.Formatter):
    """``2026-11-29 06:22:01,123 INFO chatd.transport.ws [req=... conn=... user=alice] ...``"""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        record.context = render_context(record)
        return super().format(record)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in FIELDS:
            value = getattr(record, key, None)
            if value is not None:
                entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(entry).decode()


def make_handler(log_format: str, stream: IO[str] | None = None) -> logging.Handler:
    """A handler writing to ``stream`` (stderr by default) in ``"text"`` or ``"json"``, with
    the context filter installed."""
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    handler.addFilter(ContextFilter())
    handler.addFilter(BadRequestFilter())
    return handler
