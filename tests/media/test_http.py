"""The media HTTP handlers, in process over a real socket: a small app with the real account
and media services over ``memory://`` and a blob backend, driven by aiohttp's client."""

from __future__ import annotations

import hashlib
import io
import itertools
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from PIL import Image

from chatd.media import open_media
from chatd.media.base import BlobStore
from chatd.media.service import MediaService
from chatd.metrics import Metrics
from chatd.models import NewMessage
from chatd.service.accounts import AccountService
from chatd.store import Store, open_store
from chatd.transport import media_http
from chatd.transport.http import error_middleware
from chatd.transport.keys import ACCOUNTS, MEDIA_SERVICE, METRICS
from tests.media.conftest import Blobs, s3_url
from tests.media.images_util import jpeg_with_orientation, png_bytes

TIMEOUT = aiohttp.ClientTimeout(total=30)
# chatd.transport.auth caches the session under a plain string request key, which aiohttp 3.14
# warns about (the warning is an error in tests); not this module's concern.


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclass
class Api:
    base: str
    http: aiohttp.ClientSession
    store: Store
    blobs: Blobs
    tokens: dict[str, str]

    def auth(self, user: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[user]}"}

    async def upload(
        self, user: str, data: bytes | AsyncIterator[bytes], filename: str = "f", **headers: str
    ) -> aiohttp.ClientResponse:
        return await self.http.post(
            f"{self.base}/api/v1/media",
            params={"filename": filename},
            data=data,
            headers={**self.auth(user), **headers},
        )

    async def get(self, user: str, path: str, **headers: str) -> aiohttp.ClientResponse:
        return await self.http.get(
            f"{self.base}{path}", headers={**self.auth(user), **headers}, allow_redirects=False
        )

    async def share(self, media_id: str, sender: str, recipient: str) -> None:
        conv, _ = await self.store.get_or_create_direct(sender, recipient, f"c{media_id}", 1)
        item = await self.store.get_media(media_id)
        assert item is not None
        await self.store.append_message(
            NewMessage(conv=conv.conv, sender=sender, msg_id=media_id, ts=1, media=(item,))
        )


@asynccontextmanager
async def running_api(media_url: str, max_upload_bytes: int) -> AsyncIterator[Api]:
    store = open_store("memory://")
    await store.start()
    blob_store: BlobStore = open_media(media_url)
    await blob_store.start()
    counter = itertools.count(1)
    accounts = AccountService(store, now_ms)
    app = web.Application(middlewares=[error_middleware])
    app[ACCOUNTS] = accounts
    app[METRICS] = Metrics()
    app[MEDIA_SERVICE] = MediaService(
        store,
        blob_store,
        max_upload_bytes=max_upload_bytes,
        clock=now_ms,
        new_id=lambda: f"m{next(counter):06d}",
    )
    media_http.add_routes(app)
    tokens = {}
    for user in ("alice", "bob", "carol"):
        await accounts.register(user, "correct horse battery")
        tokens[user] = (await accounts.login(user, "correct horse battery")).token
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        async with aiohttp.ClientSession(timeout=TIMEOUT) as http:
            yield Api(
                str(server.make_url("")).rstrip("/"),
                http,
                store,
                Blobs(blob_store, media_url.split(":", 1)[0]),
                tokens,
            )
    finally:
        await server.close()
        await blob_store.close()
        await store.close()


LIMIT = 300_000


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Api]:
    async with running_api(f"file://{tmp_path}/media", LIMIT) as running:
        yield running


async def body_of(resp: aiohttp.ClientResponse) -> Any:
    async with resp:
        return await resp.json()


async def test_upload_and_download_png(api: Api) -> None:
    data = png_bytes(1000, 500)
    resp = await api.upload("alice", data, "pic.png", **{"Content-Type": "image/png"})
    assert resp.status == 201
    meta = await body_of(resp)
    assert meta["mime"] == "image/png"
    assert meta["size"] == len(data)
    assert meta["sha256"] == hashlib.sha256(data).hexdigest()
    assert meta["filename"] == "pic.png"
    assert (meta["width"], meta["height"]) == (1000, 500)
    assert meta["thumbnail"] == f"/api/v1/media/{meta['media_id']}/thumbnail"

    async with await api.get("alice", f"/api/v1/media/{meta['media_id']}") as got:
        assert got.status == 200
        assert await got.read() == data
        assert got.headers["Content-Type"] == "image/png"
        assert got.headers["ETag"] == f'"{meta["sha256"]}"'
        assert got.headers["X-Content-Type-Options"] == "nosniff"
        assert got.headers["Content-Security-Policy"] == "sandbox"
        assert got.headers["Accept-Ranges"] == "bytes"
    async with await api.get("alice", meta["thumbnail"]) as thumb:
        assert thumb.status == 200
        assert thumb.headers["Content-Type"] == "image/jpeg"
        im = Image.open(io.BytesIO(await thumb.read()))
        assert im.size == (320, 160)


async def test_only_uploader_and_members_see_media(api: Api) -> None:
    meta = await body_of(await api.upload("alice", jpeg_with_orientation(900, 600, 8), "j.jpg"))
    path = f"/api/v1/media/{meta['media_id']}"
    for user in ("bob", "carol"):
        for p in (path, f"{path}/thumbnail"):
            async with await api.get(user, p) as resp:
                assert resp.status == 404
                assert (await resp.json())["error"]["code"] == "not_found"
    async with await api.get("bob", "/api/v1/media/m999999") as resp:
        assert resp.status == 404  # unknown looks the same as invisible
    await api.share(meta["media_id"], "alice", "bob")
    async with await api.get("bob", path) as resp:
        assert resp.status == 200
    async with await api.get("carol", path) as resp:
        assert resp.status == 404
    async with api.http.get(f"{api.base}{path}") as resp:
        assert resp.status == 401


async def test_html_labelled_png_is_not_served_as_html(api: Api) -> None:
    page = b"<!DOCTYPE html><html><script>alert(document.cookie)</script></html>"
    meta = await body_of(
        await api.upload("alice", page, "innocent.png", **{"Content-Type": "image/png"})
    )
    assert meta["mime"] == "text/html"
    assert "thumbnail" not in meta
    async with await api.get("alice", f"/api/v1/media/{meta['media_id']}") as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"] == "application/octet-stream"
        assert resp.headers["Content-Disposition"].startswith("attachment;")
        assert resp.headers["Content-Security-Policy"] == "sandbox"
        assert resp.headers["X-Content-Type-Options"] == "nosniff"
        assert await resp.read() == page
    async with await api.get("alice", f"/api/v1/media/{meta['media_id']}/thumbnail") as resp:
        assert resp.status == 404


async def test_limit_exactly_accepted_one_more_refused(api: Api) -> None:
    exact = os.urandom(LIMIT)
    resp = await api.upload("alice", exact)
    assert resp.status == 201
    assert (await body_of(resp))["size"] == LIMIT
    before = await api.blobs.leftovers()
    resp = await api.upload("alice", os.urandom(LIMIT + 1))
    assert resp.status == 413
    assert (await body_of(resp))["error"]["code"] == "too_large"
    assert await api.blobs.leftovers() == before


async def test_chunked_upload_past_the_limit_is_refused(api: Api) -> None:
    async def body() -> AsyncIterator[bytes]:
        for _ in range(10):
            yield os.urandom(64 * 1024)

    before = await api.blobs.leftovers()
    resp = await api.upload("alice", body())
    assert resp.status == 413
    resp.release()
    assert await api.blobs.leftovers() == before


async def test_range_requests(api: Api) -> None:
    data = os.urandom(100_000)
    meta = await body_of(await api.upload("alice", data))
    path = f"/api/v1/media/{meta['media_id']}"
    async with await api.get("alice", path, Range="bytes=1000-1999") as resp:
        assert resp.status == 206
        assert resp.headers["Content-Range"] == "bytes 1000-1999/100000"
        assert await resp.read() == data[1000:2000]
    async with await api.get("alice", path, Range="bytes=-10") as resp:
        assert resp.status == 206
        assert await resp.read() == data[-10:]
    async with await api.get("alice", path, Range="bytes=200000-") as resp:
        assert resp.status == 416
        assert resp.headers["Content-Range"] == "bytes */100000"
    stale = {"Range": "bytes=0-9", "If-Range": '"not-the-etag"'}
    async with await api.get("alice", path, **stale) as resp:
        assert resp.status == 200
        assert await resp.read() == data


async def test_conditional_get(api: Api) -> None:
    meta = await body_of(await api.upload("alice", b"hello"))
    path = f"/api/v1/media/{meta['media_id']}"
    async with await api.get("alice", path, **{"If-None-Match": f'"{meta["sha256"]}"'}) as resp:
        assert resp.status == 304


async def test_head(api: Api) -> None:
    meta = await body_of(await api.upload("alice", b"hello text"))
    async with api.http.head(
        f"{api.base}/api/v1/media/{meta['media_id']}", headers=api.auth("alice")
    ) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Length"] == "10"
        assert resp.headers["Content-Type"] == "text/plain; charset=utf-8"


async def test_filename_is_sanitized(api: Api) -> None:
    meta = await body_of(await api.upload("alice", b"x", "../../etc/\u202epasswd\r\n"))
    assert meta["filename"] == "passwd"


@pytest.fixture
async def presigning_api(moto_endpoint: str) -> AsyncIterator[Api]:
    async with running_api(s3_url(moto_endpoint, presign="true"), LIMIT) as running:
        yield running


async def test_s3_presigned_redirect(presigning_api: Api) -> None:
    api = presigning_api
    page = b"<html><script>alert(1)</script></html>"
    meta = await body_of(await api.upload("alice", page, "x.html"))
    async with await api.get("alice", f"/api/v1/media/{meta['media_id']}") as resp:
        assert resp.status == 302
        location = resp.headers["Location"]
    async with api.http.get(location) as direct:
        assert direct.status == 200
        assert await direct.read() == page
        assert direct.headers["Content-Type"] == "application/octet-stream"
        assert direct.headers["Content-Disposition"].startswith("attachment;")
    async with await api.get("bob", f"/api/v1/media/{meta['media_id']}") as resp:
        assert resp.status == 404
