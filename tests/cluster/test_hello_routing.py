"""A socket is routed to from every process by the time its client reads hello's ``ok``.

The server attaches the user (its registry entry, through which other processes route to it)
before it replies ``ok``; so a message sent on another process right after the client saw
``ok`` reaches that socket live, and one sent before is in the history the client fetches.
"""

from __future__ import annotations

from collections.abc import Callable

from tests.e2e.client import Harness
from tests.e2e.server import ChatdServer

ROUNDS = 12


async def test_a_message_sent_right_after_hello_ok_on_another_process_arrives_live(
    trio: list[ChatdServer], harness: Callable[[ChatdServer], Harness]
) -> None:
    near, far = harness(trio[0]), harness(trio[1])
    sender = await near.user("sender")
    receivers = await near.users(*["fresh"] * ROUNDS)
    a = await near.connect(sender)
    # Conversations made beforehand, so the send below needs no lookup before it is stored.
    convs = [(await a.send("before", to=r.name))["conv"] for r in receivers]
    for receiver, conv in zip(receivers, convs, strict=True):
        # Each receiver's first socket on its process: the one that attaches it.
        b = await far.connect(receiver)
        reply = await a.send("right after ok", conv=conv)
        assert reply["type"] == "ok", reply
        live = await b.message(conv, seq=reply["seq"])
        assert live["body"] == "right after ok"
