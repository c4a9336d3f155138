"""Media end to end: real ``chatd serve`` processes, uploads and downloads over HTTP, media in
messages over the WebSocket (PROTOCOL.md sections 3-5)."""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from PIL import Image

from chatd.media import open_media
from chatd.media.s3 import S3BlobStore
from tests.media.conftest import moto_endpoint, s3_url

from .client import Harness, User
from .server import ChatdServer, ServerFactory

MiB = 1024 * 1024
TIMEOUT = 30.0
__all__ = ["moto_endpoint"]  # the fixture, shared with tests/media


def png(width: int, height: int) -> bytes:
    im = Image.new("RGB", (width, height), (200, 30, 30))
    im.paste((30, 30, 200), (0, 0, width // 2, height // 2))
    out = io.BytesIO()
    im.save(out, format="PNG")
    return out.getvalue()


def jpeg(width: int, height: int, orientation: int = 1) -> bytes:
    im = Image.new("RGB", (width, height), (0, 0, 255))
    im.paste((255, 0, 0), (0, 0, width // 2, height))
    exif = Image.Exif()
    exif[0x0112] = orientation
    out = io.BytesIO()
    im.save(out, format="JPEG", quality=90, exif=exif.tobytes())
    return out.getvalue()


async def upload(
    h: Harness, user: User, data: bytes | AsyncIterator[bytes], filename: str, mime: str = ""
) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {user.token}"}
    if mime:
        headers["Content-Type"] = mime
    async with (
        asyncio.timeout(TIMEOUT),
        h.session.post(
            h.base + "/api/v1/media", params={"filename": filename}, data=data, headers=headers
        ) as resp,
    ):
        return resp.status, await resp.json()


async def download(
    h: Harness, user: User, path: str, headers: dict[str, str] | None = None
) -> tuple[int, bytes, Any]:
    hdrs = {"Authorization": f"Bearer {user.token}", **(headers or {})}
    async with (
        asyncio.timeout(TIMEOUT),
        h.session.get(h.base + path, headers=hdrs, allow_redirects=False) as resp,
    ):
        return resp.status, await resp.read(), resp.headers


async def test_images_sent_in_a_message_reach_the_recipient_intact(h: Harness) -> None:
    alice, bob, carol = await h.users("alice", "bob", "carol")
    pictures = {"a.png": png(1200, 700), "b.jpg": jpeg(1600, 900, orientation=6)}
    uploaded = {}
    for name, data in pictures.items():
        status, meta = await upload(h, alice, data, name, "image/png")
        assert status == 201, meta
        assert meta["sha256"] == hashlib.sha256(data).hexdigest()
        assert meta["size"] == len(data)
        uploaded[name] = meta
    assert uploaded["a.png"]["mime"] == "image/png"
    assert uploaded["b.jpg"]["mime"] == "image/jpeg"  # sniffed, not the declared image/png
    assert (uploaded["b.jpg"]["width"], uploaded["b.jpg"]["height"]) == (900, 1600)

    a_ws = await h.connect(alice)
    b_ws = await h.connect(bob)
    ids = [uploaded["a.png"]["media_id"], uploaded["b.jpg"]["media_id"]]
    sent = await a_ws.ok("send", to=bob.name, client_id=uuid.uuid4().hex, body="", media=ids)
    event = await b_ws.message(sent["conv"], sent["seq"])
    assert [m["id"] for m in event["media"]] == ids
    for item, name in zip(event["media"], pictures, strict=True):
        meta = uploaded[name]
        assert item["mime"] == meta["mime"]
        assert item["size"] == meta["size"]
        assert item["filename"] == name
        assert item["sha256"] == meta["sha256"]
        assert (item["width"], item["height"]) == (meta["width"], meta["height"])

    for name, data in pictures.items():
        media_id = uploaded[name]["media_id"]
        status, body, _ = await download(h, bob, f"/api/v1/media/{media_id}")
        assert status == 200
        assert body == data
        status, thumb, headers = await download(h, bob, f"/api/v1/media/{media_id}/thumbnail")
        assert status == 200
        assert headers["Content-Type"] in ("image/jpeg", "image/png")
        im = Image.open(io.BytesIO(thumb))
        assert im.width <= 320 and im.height <= 320
        assert max(im.size) == 320
        # Carol is in no conversation carrying it: it does not exist for her.
        for path in (f"/api/v1/media/{media_id}", f"/api/v1/media/{media_id}/thumbnail"):
            status, _, _ = await download(h, carol, path)
            assert status == 404
    # The rotated JPEG's thumbnail is upright (portrait).
    _, thumb, _ = await download(h, bob, f"/api/v1/media/{ids[1]}/thumbnail")
    assert Image.open(io.BytesIO(thumb)).size == (180, 320)


async def test_send_accepts_only_own_uploads(h: Harness) -> None:
    alice, bob = await h.users("alice", "bob")
    _, meta = await upload(h, bob, b"bob's file", "b.txt")
    a_ws = await h.connect(alice)
    reply = await a_ws.error(
        "send", to=bob.name, client_id=uuid.uuid4().hex, body="x", media=[meta["media_id"]]
    )
    assert reply["code"] == "forbidden"


async def test_html_labelled_as_png_is_not_served_as_html(h: Harness) -> None:
    (alice,) = await h.users("alice")
    page = b"<!doctype html><html><body><script>fetch('/api/v1/me')</script></body></html>"
    status, meta = await upload(h, alice, page, "cat.png", "image/png")
    assert status == 201
    assert meta["mime"] == "text/html"
    assert "thumbnail" not in meta
    status, body, headers = await download(h, alice, f"/api/v1/media/{meta['media_id']}")
    assert status == 200 and body == page
    assert "html" not in headers["Content-Type"]
    assert headers["Content-Type"] == "application/octet-stream"
    assert headers["Content-Disposition"].startswith("attachment")
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["Content-Security-Policy"] == "sandbox"


async def test_range_request(h: Harness) -> None:
    (alice,) = await h.users("alice")
    data = os.urandom(200_000)
    _, meta = await upload(h, alice, data, "blob.bin")
    path = f"/api/v1/media/{meta['media_id']}"
    status, body, headers = await download(h, alice, path, {"Range": "bytes=12345-54320"})
    assert status == 206
    assert body == data[12345:54321]
    assert headers["Content-Range"] == "bytes 12345-54320/200000"
    assert headers["ETag"] == f'"{meta["sha256"]}"'
    status, body, _ = await download(h, alice, path, {"Range": "bytes=-100"})
    assert (status, body) == (206, data[-100:])


def _media_files(data_dir: Path) -> list[Path]:
    return sorted(p for p in (data_dir / "media").rglob("*") if p.is_file())


async def test_past_the_configured_limit_is_413_and_nothing_is_kept(
    server_factory: ServerFactory, harness: Any
) -> None:
    server: ChatdServer = server_factory(max_upload_bytes=100_000)
    h: Harness = harness(server)
    (alice,) = await h.users("alice")
    status, meta = await upload(h, alice, os.urandom(100_000), "exact.bin")
    assert status == 201, meta
    kept = await asyncio.to_thread(_media_files, server.data_dir)
    assert len(kept) == 1

    status, body = await upload(h, alice, os.urandom(100_001), "big.bin")
    assert status == 413
    assert body["error"]["code"] == "too_large"

    async def streamed() -> AsyncIterator[bytes]:  # no Content-Length: refused mid-stream
        for _ in range(40):
            yield os.urandom(16 * 1024)

    status, body = await upload(h, alice, streamed(), "big.bin")
    assert status == 413
    assert await asyncio.to_thread(_media_files, server.data_dir) == kept


def _rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


async def test_a_20_mib_upload_is_streamed(h: Harness, server: ChatdServer) -> None:
    (alice,) = await h.users("alice")
    # Warm up what the first upload initialises (worker threads, buffers).
    await upload(h, alice, os.urandom(2 * MiB), "warm.bin")
    before = _rss_kib(server.pid)
    peak = before
    digest = hashlib.sha256()
    done = asyncio.Event()

    async def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, _rss_kib(server.pid))
            await asyncio.sleep(0.01)

    async def body() -> AsyncIterator[bytes]:
        for _ in range(20 * 4):
            chunk = os.urandom(MiB // 4)
            digest.update(chunk)
            yield chunk

    sampler = asyncio.create_task(sample())
    try:
        status, meta = await upload(h, alice, body(), "big.bin")
    finally:
        done.set()
        await asyncio.wait_for(sampler, 5)
    peak = max(peak, _rss_kib(server.pid))
    assert status == 201, meta
    assert meta["size"] == 20 * MiB
    assert meta["sha256"] == digest.hexdigest()
    growth_mib = (peak - before) / 1024
    assert growth_mib < 10, f"server RSS grew by {growth_mib:.1f} MiB during a 20 MiB upload"


async def test_s3_backend_end_to_end(
    server_factory: ServerFactory, harness: Any, moto_endpoint: str
) -> None:
    url = s3_url(moto_endpoint)
    server: ChatdServer = server_factory(media=url, max_upload_bytes=6 * MiB)
    h: Harness = harness(server)
    alice, bob = await h.users("alice", "bob")
    picture = jpeg(1000, 800)
    status, meta = await upload(h, alice, picture, "photo.jpg")
    assert status == 201, meta
    a_ws = await h.connect(alice)
    await a_ws.ok(
        "send", to=bob.name, client_id=uuid.uuid4().hex, body="", media=[meta["media_id"]]
    )
    status, body, _ = await download(h, bob, f"/api/v1/media/{meta['media_id']}")
    assert (status, body) == (200, picture)
    status, thumb, _ = await download(h, bob, f"/api/v1/media/{meta['media_id']}/thumbnail")
    assert status == 200 and max(Image.open(io.BytesIO(thumb)).size) == 320

    # Past the limit after a multipart part went out: 413, and the bucket holds only the
    # photo and its thumbnail, with no unfinished upload.
    async def big() -> AsyncIterator[bytes]:
        for _ in range(7 * 4):
            yield os.urandom(MiB // 4)

    status, body = await upload(h, alice, big(), "big.bin")
    assert status == 413
    blobs = open_media(url)
    await blobs.start()
    try:
        assert isinstance(blobs, S3BlobStore)
        listing = await blobs.client.list_objects_v2(Bucket=blobs.bucket)
        keys = sorted(o["Key"] for o in listing.get("Contents", []))
        assert keys == [meta["media_id"], f"{meta['media_id']}.thumb"]
        uploads = await blobs.client.list_multipart_uploads(Bucket=blobs.bucket)
        assert uploads.get("Uploads", []) == []
    finally:
        await blobs.close()
