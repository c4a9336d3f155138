"""A chatd-less process that holds users on a redis bus until it is killed.

``python -m tests.routing.holder <bus url> <server id> <user>...`` starts a RedisBus, attaches
the users, prints ``ready`` and waits forever: the SIGKILL test kills it to play a crashed
chatd process.
"""

from __future__ import annotations

import asyncio
import sys

from chatd.routing.redis import RedisBus


async def hold(url: str, server_id: str, users: list[str]) -> None:
    bus = RedisBus(url, server_id)

    async def ignore_offline(users: list[str]) -> None:
        return None

    await bus.start(lambda payload: None, ignore_offline)
    for user in users:
        await bus.attach(user)
    print("ready", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(hold(sys.argv[1], sys.argv[2], sys.argv[3:]))
