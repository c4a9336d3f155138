"""Presence transitions through the in-process registry: announcements only on real change."""

from __future__ import annotations

import asyncio

from chatd.presence import PresenceTracker
from chatd.routing.memory import MemoryBus


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[str, bool, int | None]] = []
        self.changed = asyncio.Event()

    async def __call__(self, user: str, online: bool, last_seen: int | None) -> None:
        self.calls.append((user, online, last_seen))
        self.changed.set()


def make(grace: float, now: list[int]) -> tuple[PresenceTracker, Recorder]:
    recorder = Recorder()
    return PresenceTracker(MemoryBus("memory://", "s1"), lambda: now[0], recorder, grace), recorder


async def test_second_device_and_first_of_two_leaving_announce_nothing() -> None:
    now = [1000]
    tracker, recorder = make(0.01, now)
    await tracker.connected("bob")
    await tracker.connected("bob")
    tracker.disconnected("bob")
    await asyncio.sleep(0.05)
    assert recorder.calls == [("bob", True, None)]
    now[0] = 2000
    tracker.disconnected("bob")
    await asyncio.wait_for(recorder.changed.wait(), 2)
    recorder.changed.clear()
    for _ in range(100):
        if len(recorder.calls) == 2:
            break
        await asyncio.sleep(0.01)
    assert recorder.calls[-1] == ("bob", False, 2000)
    await tracker.close()


async def test_reconnect_inside_the_grace_does_not_flap() -> None:
    now = [1000]
    tracker, recorder = make(0.2, now)
    await tracker.connected("carol")
    tracker.disconnected("carol")
    await tracker.connected("carol")
    await asyncio.sleep(0.3)
    assert recorder.calls == [("carol", True, None)]
    await tracker.close()


async def test_shutdown_records_last_seen_of_users_inside_their_grace() -> None:
    now = [5000]
    tracker, recorder = make(60.0, now)
    await tracker.connected("dave")
    tracker.disconnected("dave")
    await asyncio.wait_for(tracker.close(), 5)
    assert recorder.calls == [("dave", True, None), ("dave", False, 5000)]
