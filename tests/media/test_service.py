"""The media rules (MediaService) over a memory store and each blob backend."""

from __future__ import annotations

import asyncio
import hashlib
import io
import itertools
import os
from collections.abc import AsyncIterator

import pytest
from PIL import Image

from chatd.errors import Forbidden, NotFound, TooLarge, Unavailable
from chatd.media.rules import RangeNotSatisfiable
from chatd.media.service import MediaService, thumbnail_key
from chatd.models import NewMessage
from chatd.store import Store, open_store
from tests.media.conftest import Blobs, chunked, collect
from tests.media.images_util import jpeg_with_orientation, png_bomb_header, png_bytes

NOW = 1_764_316_800_000


@pytest.fixture
async def store() -> AsyncIterator[Store]:
    s = open_store("memory://")
    await s.start()
    for name in ("alice", "bob", "carol"):
        await s.create_user(name, "x", NOW)
    try:
        yield s
    finally:
        await s.close()


@pytest.fixture
def media(store: Store, blobs: Blobs) -> MediaService:
    counter = itertools.count(1)
    return MediaService(
        store,
        blobs.store,
        max_upload_bytes=1_000_000,
        clock=lambda: NOW,
        new_id=lambda: f"m{next(counter):04d}",
        max_image_pixels=5_000_000,
    )


async def share(store: Store, media_id: str, sender: str, recipient: str) -> None:
    """Send a message carrying ``media_id`` from ``sender`` to ``recipient``."""
    conv, _ = await store.get_or_create_direct(sender, recipient, f"c-{media_id}", NOW)
    item = await store.get_media(media_id)
    assert item is not None
    await store.append_message(
        NewMessage(conv=conv.conv, sender=sender, msg_id=f"msg-{media_id}", ts=NOW, media=(item,))
    )


async def test_upload_records_sniffed_type_size_and_hash(media: MediaService) -> None:
    data = b"just some text\n" * 1000
    item = await media.upload("alice", chunked(data, 1000), "image/png", "../notes.txt")
    assert item.uploader == "alice"
    assert item.mime == "text/plain"  # the declared image/png is not believed
    assert item.size == len(data)
    assert item.sha256 == hashlib.sha256(data).hexdigest()
    assert item.filename == "notes.txt"
    assert item.created_at == NOW
    assert (item.width, item.height, item.thumbnail_mime) == (None, None, None)
    assert await media.store.get_media(item.id) == item
    download = await media.open("alice", item.id)
    assert await collect(download.chunks) == data
    assert download.length == len(data)


async def test_sniffing_sees_past_tiny_first_chunks(media: MediaService) -> None:
    data = png_bytes(64, 64)
    item = await media.upload("alice", chunked(data, 3), None, "x")
    assert item.mime == "image/png"
    assert (item.width, item.height) == (64, 64)


async def test_image_upload_gets_a_thumbnail(media: MediaService, blobs: Blobs) -> None:
    data = jpeg_with_orientation(1600, 800, 6)
    item = await media.upload("alice", chunked(data), "image/jpeg", "photo.jpg")
    assert (item.mime, item.width, item.height) == ("image/jpeg", 800, 1600)
    assert item.thumbnail_mime == "image/jpeg"
    thumb = await media.thumbnail("alice", item.id)
    im = Image.open(io.BytesIO(thumb.data))
    assert im.size == (160, 320)
    assert await blobs.store.exists(thumbnail_key(item.id))
    # The original is kept byte for byte (metadata and all).
    assert await collect((await media.open("alice", item.id)).chunks) == data


async def test_too_large_upload_leaves_nothing(media: MediaService, blobs: Blobs) -> None:
    with pytest.raises(TooLarge):
        await media.upload("alice", chunked(os.urandom(1_000_001)), None, "big.bin")
    assert await blobs.leftovers() == []
    exact = await media.upload("alice", chunked(os.urandom(1_000_000)), None, "exact.bin")
    assert exact.size == 1_000_000


async def test_decompression_bomb_is_stored_without_thumbnail(media: MediaService) -> None:
    item = await media.upload("alice", chunked(png_bomb_header(30_000, 30_000)), None, "b.png")
    assert item.mime == "image/png"
    assert (item.width, item.height, item.thumbnail_mime) == (None, None, None)
    with pytest.raises(NotFound):
        await media.thumbnail("alice", item.id)


async def test_visibility(media: MediaService, store: Store) -> None:
    item = await media.upload("alice", chunked(png_bytes(10, 10)), None, "a.png")
    for user in ("bob", "carol", "nobody"):
        with pytest.raises(NotFound):
            await media.open(user, item.id)
        with pytest.raises(NotFound):
            await media.thumbnail(user, item.id)
    await share(store, item.id, "alice", "bob")
    assert await collect((await media.open("bob", item.id)).chunks) == png_bytes(10, 10)
    await media.thumbnail("bob", item.id)
    with pytest.raises(NotFound):
        await media.open("carol", item.id)


async def test_unknown_and_malformed_ids_are_not_found(media: MediaService) -> None:
    for media_id in ("m9999", "../../etc/passwd", "", "x" * 500):
        with pytest.raises(NotFound):
            await media.open("alice", media_id)


async def test_range(media: MediaService) -> None:
    data = os.urandom(10_000)
    item = await media.upload("alice", chunked(data), None, "r.bin")
    part = await media.open("alice", item.id, "bytes=100-199")
    assert part.range is not None and part.length == 100
    assert await collect(part.chunks) == data[100:200]
    tail = await media.open("alice", item.id, "bytes=-10")
    assert await collect(tail.chunks) == data[-10:]
    with pytest.raises(RangeNotSatisfiable):
        await media.open("alice", item.id, "bytes=10000-")


async def test_items_for_send_only_accepts_own_uploads(media: MediaService) -> None:
    mine = await media.upload("alice", chunked(b"a"), None, "a")
    theirs = await media.upload("bob", chunked(b"b"), None, "b")
    assert await media.items_for_send("alice", [mine.id]) == (mine,)
    for ids in ([theirs.id], [mine.id, "m9999"], ["../x"]):
        with pytest.raises(Forbidden):
            await media.items_for_send("alice", ids)


async def test_presigned_only_when_enabled(media: MediaService) -> None:
    item = await media.upload("alice", chunked(b"a"), None, "a")
    headers = {"Content-Type": "text/plain", "Content-Disposition": "inline"}
    assert await media.presigned_url("alice", item.id, expires_s=60, headers=headers) is None


async def test_concurrent_image_uploads_all_get_thumbnails(media: MediaService) -> None:
    images = [png_bytes(400 + i, 300) for i in range(6)]
    items = await asyncio.wait_for(
        asyncio.gather(*(media.upload("alice", chunked(d), None, "p.png") for d in images)), 30
    )
    assert [(i.width, i.thumbnail_mime) for i in items] == [
        (400 + n, "image/jpeg") for n in range(6)
    ]
    assert len({i.id for i in items}) == 6


async def test_blobs_are_dropped_when_the_record_cannot_be_written(
    media: MediaService, store: Store, blobs: Blobs
) -> None:
    await store.close()  # the store is down: create_media fails with Unavailable
    with pytest.raises(Unavailable):
        await media.upload("alice", chunked(png_bytes(500, 500)), None, "p.png")
    assert await blobs.leftovers() == []
