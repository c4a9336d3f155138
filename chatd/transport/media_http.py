"""HTTP handlers for media (PROTOCOL.md section 5).

    POST /api/v1/media?filename=NAME          the raw file as the body -> 201 {"media_id", ...}
    GET  /api/v1/media/{media_id}             the bytes (Range, ETag, the safe-type rules)
    GET  /api/v1/media/{media_id}/thumbnail   a JPEG or PNG of at most 320x320

The body of an upload is streamed from the socket to the blob store: memory stays at a few
buffers whatever the size. Past ``max_upload_bytes`` the answer is 413 and nothing is kept.

Downloads answer 404 to anyone who may not see the item (never 403: existence is not revealed).
How a stored type is served (inline as itself, or as an ``application/octet-stream``
attachment) is decided by :func:`chatd.media.rules.served_headers`. With an S3 backend set to
``presign=true`` a download is a 302 to a presigned URL valid for :data:`PRESIGN_EXPIRES_S`
seconds, carrying the same Content-Type and Content-Disposition decisions.

Wiring: ``media_http.add_routes(app)`` in ``build_app``; the handlers use the
:data:`chatd.transport.keys.MEDIA_SERVICE` key.
"""

from __future__ import annotations

from aiohttp import web

from chatd.errors import TooLarge
from chatd.media.rules import RangeNotSatisfiable, served_headers
from chatd.media.service import Download
from chatd.models import MediaItem
from chatd.transport.auth import authenticate
from chatd.transport.http import json_response
from chatd.transport.keys import MEDIA_SERVICE

UPLOAD_CHUNK = 64 * 1024
PRESIGN_EXPIRES_S = 300
# Content is immutable under its id; only the uploader's and members' browsers may keep it.
CACHE_CONTROL = "private, max-age=86400"


def media_json(item: MediaItem) -> dict[str, object]:
    """The upload answer: ``media_id, mime, size, sha256, filename`` and, for images,
    ``width, height, thumbnail`` (the thumbnail's URL)."""
    body: dict[str, object] = {
        "media_id": item.id,
        "mime": item.mime,
        "size": item.size,
        "sha256": item.sha256,
        "filename": item.filename,
    }
    if item.width is not None and item.height is not None:
        body["width"] = item.width
        body["height"] = item.height
    if item.thumbnail_mime is not None:
        body["thumbnail"] = f"/api/v1/media/{item.id}/thumbnail"
    return body


async def upload(request: web.Request) -> web.Response:
    session = await authenticate(request)
    media = request.app[MEDIA_SERVICE]
    length = request.content_length
    if length is not None and length > media.max_upload_bytes:
        # Refused before a byte of the body is read.
        raise TooLarge(f"the upload limit is {media.max_upload_bytes} bytes")
    item = await media.upload(
        session.user,
        request.content.iter_chunked(UPLOAD_CHUNK),
        request.headers.get("Content-Type"),
        request.query.get("filename"),
    )
    return json_response(media_json(item), 201)


def _etag(item: MediaItem) -> str:
    return f'"{item.sha256}"'


def _matches(header: str, etag: str) -> bool:
    candidates = [c.strip().removeprefix("W/") for c in header.split(",")]
    return "*" in candidates or etag in candidates


async def download(request: web.Request) -> web.StreamResponse:
    session = await authenticate(request)
    media = request.app[MEDIA_SERVICE]
    media_id = request.match_info["media_id"]
    item = await media.get(session.user, media_id)
    headers = served_headers(item.mime, item.filename)
    etag = _etag(item)
    common = {
        "ETag": etag,
        "Cache-Control": CACHE_CONTROL,
        "X-Content-Type-Options": "nosniff",
        "Content-Security-Policy": "sandbox",
    }
    if_none_match = request.headers.get("If-None-Match")
    if if_none_match and _matches(if_none_match, etag):
        return web.Response(status=304, headers=common)

    url = await media.presigned_url(
        session.user, media_id, expires_s=PRESIGN_EXPIRES_S, headers=headers
    )
    if url is not None:
        raise web.HTTPFound(url, headers={"Cache-Control": "no-store"})

    range_header = request.headers.get("Range")
    if_range = request.headers.get("If-Range")
    if range_header and if_range and if_range.strip() != etag:
        range_header = None  # the client's copy is another version: send it all
    try:
        found = await media.open(session.user, media_id, range_header)
    except RangeNotSatisfiable as exc:
        return web.Response(status=416, headers={**common, "Content-Range": f"bytes */{exc.size}"})
    response = web.StreamResponse(
        status=200 if found.range is None else 206, headers={**headers, **common}
    )
    response.headers["Accept-Ranges"] = "bytes"
    if found.range is not None:
        response.headers["Content-Range"] = found.range.content_range()
    response.content_length = found.length
    return await _stream(request, response, found)


async def _stream(
    request: web.Request, response: web.StreamResponse, found: Download
) -> web.StreamResponse:
    chunks = aiter(found.chunks)
    try:
        # Read the first chunk before the status line goes out: a blob missing from storage
        # is still answered with a proper error.
        first = b"" if request.method == "HEAD" else await anext(chunks, b"")
        await response.prepare(request)
        if request.method != "HEAD":
            if first:
                await response.write(first)
            async for chunk in chunks:
                await response.write(chunk)
        await response.write_eof()
        return response
    finally:
        aclose = getattr(chunks, "aclose", None)
        if aclose is not None:
            await aclose()


async def thumbnail(request: web.Request) -> web.Response:
    session = await authenticate(request)
    thumb = await request.app[MEDIA_SERVICE].thumbnail(session.user, request.match_info["media_id"])
    return web.Response(
        body=thumb.data,
        content_type=thumb.mime,
        headers={
            "ETag": f'"{thumb.item.sha256}-thumb"',
            "Cache-Control": CACHE_CONTROL,
            "X-Content-Type-Options": "nosniff",
            "Content-Security-Policy": "sandbox",
            "Content-Disposition": "inline",
        },
    )


def add_routes(app: web.Application) -> None:
    """Register the media routes; ``app[MEDIA_SERVICE]`` must hold a started MediaService."""
    app.router.add_post("/api/v1/media", upload)
    app.router.add_get("/api/v1/media/{media_id}", download)
    app.router.add_get("/api/v1/media/{media_id}/thumbnail", thumbnail)


__all__ = ["PRESIGN_EXPIRES_S", "add_routes", "media_json"]
