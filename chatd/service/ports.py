"""What the service needs from the layers around it, as structural types."""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from typing import Protocol

from chatd.models import ConversationKind, MarkerKind, Message

Clock = Callable[[], int]
"""Milliseconds since the Unix epoch."""


class EventSink(Protocol):
    """Where the service hands live events; the transport serializes each once and routes it.

    Every method returns at once: delivery is best effort and never awaited by a sender.
    ``exclude`` is an opaque handle of the connection that caused the event, if any.
    """

    def message(self, users: Collection[str], message: Message, exclude: object = None) -> None: ...

    def receipt(
        self, users: Collection[str], conv: str, user: str, kind: MarkerKind, seq: int, ts: int
    ) -> None: ...

    def typing(
        self, users: Collection[str], conv: str, user: str, state: str, exclude: object = None
    ) -> None: ...

    def presence(
        self, users: Collection[str], user: str, status: str, last_seen: int | None
    ) -> None: ...

    def conversation(
        self, users: Collection[str], conv: str, kind: ConversationKind, title: str | None
    ) -> None: ...

    def session_revoked(self, user: str, token_hash: str | None) -> None:
        """Close the sockets of one session of ``user`` (all of them if ``token_hash`` is None)."""


class Notifier(Protocol):
    """Push notifications: ``notify`` only enqueues; the work happens off the send path."""

    def notify(
        self, message: Message, recipients: Sequence[str], conv_title: str | None
    ) -> None: ...


class OnlineCheck(Protocol):
    async def online(self, users: Collection[str]) -> set[str]: ...


class NullNotifier:
    def notify(self, message: Message, recipients: Sequence[str], conv_title: str | None) -> None:
        return None
