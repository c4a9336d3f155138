"""The per-user upload limit of MediaService (``uploads_per_hour``), on a clock the test moves."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator

import pytest

from chatd.errors import RateLimited
from chatd.media.service import MediaService
from chatd.store import Store, open_store
from tests.media.conftest import Blobs, chunked

NOW = 1_764_316_800_000
PER_HOUR = 4


@pytest.fixture
async def store() -> AsyncIterator[Store]:
    s = open_store("memory://")
    await s.start()
    for name in ("alice", "bob"):
        await s.create_user(name, "x", NOW)
    try:
        yield s
    finally:
        await s.close()


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> int:
        return self.now


async def never_read() -> AsyncIterator[bytes]:
    raise AssertionError("the body of a refused upload was read")
    yield b""  # pragma: no cover  (makes this an async generator)


async def test_over_the_limit_is_refused_unread_and_refills_over_the_hour(
    store: Store, blobs: Blobs
) -> None:
    clock = Clock()
    counter = itertools.count(1)
    media = MediaService(
        store,
        blobs.store,
        max_upload_bytes=1_000_000,
        uploads_per_hour=PER_HOUR,
        clock=clock,
        new_id=lambda: f"m{next(counter):04d}",
    )
    for i in range(PER_HOUR):
        await media.upload("alice", chunked(b"text %d\n" % i * 50), None, "a.txt")
    kept = await blobs.leftovers()

    with pytest.raises(RateLimited) as refused:
        await media.upload("alice", never_read(), None, "b.txt")
    assert refused.value.retry_after == pytest.approx(3600 / PER_HOUR)
    assert await blobs.leftovers() == kept, "a refused upload left something behind"

    await media.upload("bob", chunked(b"bob's\n" * 50), None, "c.txt")  # his own allowance

    clock.now += int(3600 / PER_HOUR * 1000) - 1000
    with pytest.raises(RateLimited) as again:
        await media.upload("alice", never_read(), None, "b.txt")
    assert again.value.retry_after == pytest.approx(1.0)
    clock.now += 1000
    await media.upload("alice", chunked(b"later\n" * 50), None, "b.txt")
    with pytest.raises(RateLimited):
        await media.upload("alice", never_read(), None, "b.txt")
