"""The service's event sink: serialize each event once, then let the router fan it out."""

from __future__ import annotations

from collections.abc import Collection

from chatd.models import ConversationKind, MarkerKind, Message
from chatd.routing.router import Router
from chatd.transport import frames


class FrameEvents:
    def __init__(self, router: Router) -> None:
        self.router = router
        self.messages = 0
        self.deliveries_requested = 0

    def message(self, users: Collection[str], message: Message, exclude: object = None) -> None:
        self.messages += 1
        self.deliveries_requested += len(users)
        self.router.deliver(users, frames.message_event(message), exclude)

    def receipt(
        self, users: Collection[str], conv: str, user: str, kind: MarkerKind, seq: int, ts: int
    ) -> None:
        self.router.deliver(users, frames.receipt_event(conv, user, kind, seq, ts))

    def typing(
        self, users: Collection[str], conv: str, user: str, state: str, exclude: object = None
    ) -> None:
        # The typist's own other devices do not need to see themselves typing.
        others = [u for u in users if u != user]
        self.router.deliver(others, frames.typing_event(conv, user, state), exclude)

    def presence(
        self, users: Collection[str], user: str, status: str, last_seen: int | None
    ) -> None:
        self.router.deliver(users, frames.presence_event(user, status, last_seen))

    def conversation(
        self, users: Collection[str], conv: str, kind: ConversationKind, title: str | None
    ) -> None:
        self.router.deliver(users, frames.conversation_event(conv, kind, title))

    def session_revoked(self, user: str, token_hash: str | None) -> None:
        self.router.revoke(user, token_hash)
