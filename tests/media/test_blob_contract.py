"""The blob store contract, run against ``file://`` and against S3 (moto's server)."""

from __future__ import annotations

import hashlib
import os
from collections.abc import AsyncIterator

import aiohttp
import pytest

from chatd.errors import BadRequest, NotFound, TooLarge
from tests.media.conftest import Blobs, chunked, collect

MiB = 1024 * 1024


async def test_roundtrip_small(blobs: Blobs) -> None:
    data = b"hello, blob"
    assert await blobs.store.put("m1", chunked(data), max_bytes=100) == len(data)
    assert await collect(blobs.store.get_range("m1")) == data
    assert await blobs.store.exists("m1")
    assert await blobs.leftovers() != []


async def test_roundtrip_empty(blobs: Blobs) -> None:
    assert await blobs.store.put("empty", chunked(b""), max_bytes=10) == 0
    assert await collect(blobs.store.get_range("empty")) == b""
    assert await collect(blobs.store.get_range("empty", 0, 0)) == b""


async def test_roundtrip_multipart_sized(blobs: Blobs) -> None:
    # Past the 5 MiB part size: the S3 backend goes through a multipart upload.
    data = os.urandom(11 * MiB + 123)
    size = await blobs.store.put("big", chunked(data, 300_001), max_bytes=12 * MiB)
    assert size == len(data)
    back = await collect(blobs.store.get_range("big"))
    assert hashlib.sha256(back).hexdigest() == hashlib.sha256(data).hexdigest()
    assert [k for k in await blobs.leftovers() if k.startswith("upload:")] == []


async def test_exactly_max_bytes_is_accepted(blobs: Blobs) -> None:
    data = os.urandom(1000)
    assert await blobs.store.put("m", chunked(data, 7), max_bytes=1000) == 1000
    assert await collect(blobs.store.get_range("m")) == data


async def test_too_large_leaves_nothing(blobs: Blobs) -> None:
    with pytest.raises(TooLarge):
        await blobs.store.put("m", chunked(os.urandom(1001), 100), max_bytes=1000)
    assert not await blobs.store.exists("m")
    assert await blobs.leftovers() == []


async def test_too_large_after_parts_were_sent_leaves_nothing(blobs: Blobs) -> None:
    # 12 MiB against a 7 MiB limit: on S3 one part is already uploaded when the limit hits.
    with pytest.raises(TooLarge):
        await blobs.store.put("m", chunked(os.urandom(12 * MiB), MiB), max_bytes=7 * MiB)
    assert await blobs.leftovers() == []


async def test_failing_source_leaves_nothing(blobs: Blobs) -> None:
    class ClientGone(ConnectionResetError):
        """An OSError from the source: must not be mistaken for a backend failure."""

    async def broken() -> AsyncIterator[bytes]:
        for _ in range(7):
            yield os.urandom(MiB)
        raise ClientGone

    with pytest.raises(ClientGone):
        await blobs.store.put("m", broken(), max_bytes=100 * MiB)
    assert await blobs.leftovers() == []


async def test_put_replaces(blobs: Blobs) -> None:
    await blobs.store.put("m", chunked(b"first"), max_bytes=100)
    await blobs.store.put("m", chunked(b"second"), max_bytes=100)
    assert await collect(blobs.store.get_range("m")) == b"second"


@pytest.mark.parametrize(
    ("start", "end", "expected"),
    [
        (0, None, slice(0, None)),
        (0, 1, slice(0, 1)),
        (10, 20, slice(10, 20)),
        (299_990, None, slice(299_990, None)),
        (299_990, 400_000, slice(299_990, None)),
        (123_456, 234_567, slice(123_456, 234_567)),
        (300_000, None, slice(300_000, None)),
        (500_000, 600_000, slice(500_000, 600_000)),
        (5, 5, slice(5, 5)),
    ],
)
async def test_range_slices(blobs: Blobs, start: int, end: int | None, expected: slice) -> None:
    data = os.urandom(300_000)
    await blobs.store.put("r", chunked(data), max_bytes=len(data))
    assert await collect(blobs.store.get_range("r", start, end)) == data[expected]


async def test_delete(blobs: Blobs) -> None:
    await blobs.store.put("d", chunked(b"x" * 10), max_bytes=100)
    await blobs.store.delete("d")
    assert not await blobs.store.exists("d")
    with pytest.raises(NotFound):
        await collect(blobs.store.get_range("d"))
    await blobs.store.delete("d")  # deleting again is fine
    assert await blobs.leftovers() == []


async def test_missing_blob_is_not_found(blobs: Blobs) -> None:
    with pytest.raises(NotFound):
        await collect(blobs.store.get_range("nope"))
    with pytest.raises(NotFound):
        await collect(blobs.store.get_range("nope", 0, 0))
    assert not await blobs.store.exists("nope")


@pytest.mark.parametrize("key", ["../etc/passwd", "a/b", ".hidden", "", "a..b", "x" * 201, "é"])
async def test_unsafe_keys_are_refused(blobs: Blobs, key: str) -> None:
    with pytest.raises(BadRequest):
        await blobs.store.put(key, chunked(b"x"), max_bytes=10)
    assert await blobs.leftovers() == []


async def test_keys_with_derived_suffix(blobs: Blobs) -> None:
    await blobs.store.put("abc", chunked(b"main"), max_bytes=10)
    await blobs.store.put("abc.thumb", chunked(b"thumb"), max_bytes=10)
    assert await collect(blobs.store.get_range("abc")) == b"main"
    assert await collect(blobs.store.get_range("abc.thumb")) == b"thumb"


async def test_ping(blobs: Blobs) -> None:
    await blobs.store.ping()


async def test_presigned_url(blobs: Blobs) -> None:
    data = os.urandom(5000)
    await blobs.store.put("p", chunked(data), max_bytes=len(data))
    url = await blobs.store.presigned_url(
        "p", 60, content_type="image/png", content_disposition='inline; filename="a.png"'
    )
    if blobs.kind == "file":
        assert url is None
        return
    assert url is not None
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(timeout=timeout) as http, http.get(url) as resp:
        assert resp.status == 200
        assert await resp.read() == data
        assert resp.headers["Content-Type"] == "image/png"
        assert resp.headers["Content-Disposition"] == 'inline; filename="a.png"'
