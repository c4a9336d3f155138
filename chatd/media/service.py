"""The media rules: uploads, who may download what, thumbnails.

:class:`MediaService` sits between the HTTP handlers and two backends: the blob store (bytes)
and the store (metadata, and which conversations carry which media). It knows nothing of
aiohttp; the HTTP layer turns its results into answers using :mod:`chatd.media.rules`.

Rules:

* The type of an upload is sniffed from its first bytes; the client's ``Content-Type`` is never
  trusted (it is accepted as an argument only so that callers need not drop it).
* Uploads stream to the blob store while their SHA-256 and size are computed; past
  ``max_upload_bytes`` they fail with ``TooLarge`` and nothing is kept.
* Each user may start ``uploads_per_hour`` uploads at once, then one every
  ``3600 / uploads_per_hour`` seconds (a token bucket). Over it, ``RateLimited`` is raised
  before a byte of the upload is read, so nothing reaches the blob store. Every upload that
  starts counts, including one that then fails (too large, a backend down): it cost the
  server the same work.
* Storage keys derive from the media id (``<id>`` and ``<id>.thumb``), never from filenames.
* A media item is visible to its uploader and to current members of any conversation in which a
  message carries it; to everyone else it does not exist (``NotFound``, never ``Forbidden``).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import tempfile
from collections.abc import AsyncIterator, Callable, Collection
from dataclasses import dataclass

from chatd.errors import BadRequest, ChatError, Forbidden, NotFound, RateLimited
from chatd.media.base import BlobStore, check_key, read_all
from chatd.media.images import (
    DEFAULT_MAX_PIXELS,
    IMAGE_FORMATS,
    SNIFF_BYTES,
    ImageRejected,
    Thumbnail,
    make_thumbnail,
    sniff,
)
from chatd.media.rules import ByteRange, parse_range, sanitize_filename
from chatd.models import MediaItem
from chatd.service.limits import KeyedLimiter
from chatd.store.base import Store

log = logging.getLogger(__name__)

#: A thumbnail is at most 320x320 pixels; anything bigger in storage is not ours.
MAX_THUMBNAIL_BYTES = 2 * 1024 * 1024
# Read-back of an image for its thumbnail stays in memory up to this, then spills to disk.
_SPOOL_IN_MEMORY = 1024 * 1024


def thumbnail_key(media_id: str) -> str:
    return f"{media_id}.thumb"


@dataclass(frozen=True, slots=True)
class Download:
    """A media item's bytes (all of them if ``range`` is ``None``), streamed from storage."""

    item: MediaItem
    range: ByteRange | None
    chunks: AsyncIterator[bytes]

    @property
    def length(self) -> int:
        return self.item.size if self.range is None else self.range.length


@dataclass(frozen=True, slots=True)
class ThumbnailData:
    item: MediaItem
    data: bytes
    mime: str


class MediaService:
    """Uploads and access-checked downloads of media.

    Args:
        store: where :class:`MediaItem` records live and who may see them.
        blobs: where the bytes live (started by the caller).
        max_upload_bytes: the largest accepted upload; exactly this many bytes is accepted.
        uploads_per_hour: uploads a user may start per hour (a bucket of this many, refilled
            evenly over the hour).
        clock: milliseconds since the epoch.
        new_id: a fresh media id (must be a safe storage key, see ``check_key``).
        max_image_pixels: images with more pixels get no thumbnail (decompression bombs).
        max_concurrent_thumbnails: decoding an image can take ``4 * max_image_pixels`` bytes;
            at most this many are decoded at once, whatever the number of uploads.
    """

    def __init__(
        self,
        store: Store,
        blobs: BlobStore,
        *,
        max_upload_bytes: int,
        uploads_per_hour: int = 200,
        clock: Callable[[], int],
        new_id: Callable[[], str],
        max_image_pixels: int = DEFAULT_MAX_PIXELS,
        max_concurrent_thumbnails: int = 2,
    ) -> None:
        if max_upload_bytes <= 0:
            raise ValueError("max_upload_bytes must be positive")
        if uploads_per_hour <= 0:
            raise ValueError("uploads_per_hour must be positive")
        self.store = store
        self.blobs = blobs
        self.max_upload_bytes = max_upload_bytes
        self.clock = clock
        self.new_id = new_id
        self.max_image_pixels = max_image_pixels
        self._decoding = asyncio.Semaphore(max_concurrent_thumbnails)
        self._upload_limit = KeyedLimiter(uploads_per_hour / 3600.0, uploads_per_hour)

    # -- upload --------------------------------------------------------------------------------

    async def upload(
        self,
        user: str,
        chunks: AsyncIterator[bytes],
        declared_type: str | None = None,
        filename: str | None = None,
    ) -> MediaItem:
        """Store an upload and record it as ``user``'s.

        ``declared_type`` is ignored (the type is sniffed). ``filename`` is sanitized and kept
        for display only.

        Raises:
            RateLimited: ``user`` is over ``uploads_per_hour``; ``chunks`` was not read.
            TooLarge: more than ``max_upload_bytes`` arrived (nothing is kept).
            Unavailable: a backend failed (nothing is kept).
        """
        wait = self._upload_limit.take(user, self.clock())
        if wait > 0:
            raise RateLimited("too many uploads; try again later", retry_after=wait)
        media_id = check_key(self.new_id())
        head, rest = await _peek(chunks, SNIFF_BYTES)
        mime = sniff(head)
        digest = hashlib.sha256()

        async def hashed() -> AsyncIterator[bytes]:
            async for chunk in rest:
                digest.update(chunk)
                yield chunk

        size = await self.blobs.put(
            media_id, hashed(), max_bytes=self.max_upload_bytes, content_type=mime
        )
        try:
            thumb = await self._thumbnail_for(media_id, mime) if mime in IMAGE_FORMATS else None
            item = MediaItem(
                id=media_id,
                uploader=user,
                mime=mime,
                size=size,
                filename=sanitize_filename(filename),
                sha256=digest.hexdigest(),
                created_at=self.clock(),
                width=thumb.width if thumb else None,
                height=thumb.height if thumb else None,
                thumbnail_mime=thumb.mime if thumb else None,
            )
            await self.store.create_media(item)
        except BaseException:
            # Not recorded, so nobody can ever reach these blobs: drop them.
            for key in (media_id, thumbnail_key(media_id)):
                with contextlib.suppress(ChatError):
                    await self.blobs.delete(key)
            raise
        return item

    async def _thumbnail_for(self, media_id: str, mime: str) -> Thumbnail | None:
        """Read the stored image back (spooled to disk past 1 MiB) and store its thumbnail.

        ``None`` if the image cannot be decoded or is too large in pixels: it is still kept, as
        a file without a preview.
        """
        with tempfile.SpooledTemporaryFile(max_size=_SPOOL_IN_MEMORY) as spool:
            async for chunk in self.blobs.get_range(media_id):
                await asyncio.to_thread(spool.write, chunk)
            spool.seek(0)
            try:
                async with self._decoding:
                    thumb = await asyncio.to_thread(
                        make_thumbnail, spool, mime, max_pixels=self.max_image_pixels
                    )
            except ImageRejected as exc:
                log.info("media %s: no thumbnail: %s", media_id, exc)
                return None

        async def one() -> AsyncIterator[bytes]:
            yield thumb.data

        await self.blobs.put(
            thumbnail_key(media_id), one(), max_bytes=MAX_THUMBNAIL_BYTES, content_type=thumb.mime
        )
        return thumb

    # -- access --------------------------------------------------------------------------------

    async def get(self, user: str, media_id: str) -> MediaItem:
        """The item if ``user`` may see it; ``NotFound`` otherwise (whether or not it exists)."""
        try:
            check_key(media_id)
        except BadRequest:
            raise NotFound("no such media")
        item = await self.store.get_media(media_id)
        if item is None or not await self.store.media_visible_to(media_id, user):
            raise NotFound("no such media")
        return item

    async def open(self, user: str, media_id: str, range_header: str | None = None) -> Download:
        """The bytes of a visible item, or the slice a ``Range`` header asks for.

        Raises:
            NotFound: no such item, or not visible to ``user``.
            RangeNotSatisfiable: the range starts past the end.
        """
        item = await self.get(user, media_id)
        byte_range = parse_range(range_header, item.size)
        if byte_range is None:
            chunks = self.blobs.get_range(media_id)
        else:
            chunks = self.blobs.get_range(media_id, byte_range.start, byte_range.end)
        return Download(item, byte_range, chunks)

    async def thumbnail(self, user: str, media_id: str) -> ThumbnailData:
        """The thumbnail of a visible image; ``NotFound`` if invisible or not an image."""
        item = await self.get(user, media_id)
        if item.thumbnail_mime is None:
            raise NotFound("this media has no thumbnail")
        data = await read_all(self.blobs, thumbnail_key(media_id), limit=MAX_THUMBNAIL_BYTES)
        return ThumbnailData(item, data, item.thumbnail_mime)

    async def presigned_url(
        self, user: str, media_id: str, *, expires_s: int, headers: dict[str, str]
    ) -> str | None:
        """A short-lived direct URL for a visible item if the backend is set to redirect
        downloads, else ``None``. ``headers`` are the Content-Type and Content-Disposition the
        direct answer must carry (from :func:`chatd.media.rules.served_headers`)."""
        if not self.blobs.redirect_downloads:
            return None
        await self.get(user, media_id)
        return await self.blobs.presigned_url(
            media_id,
            expires_s,
            content_type=headers["Content-Type"],
            content_disposition=headers["Content-Disposition"],
        )

    async def items_for_send(self, user: str, media_ids: Collection[str]) -> tuple[MediaItem, ...]:
        """The items a ``send`` may attach: each must exist and be uploaded by ``user``.

        Raises:
            Forbidden: an id that does not exist or belongs to someone else (one answer for
                both, so ids of others cannot be probed).
        """
        items = []
        for media_id in media_ids:
            item = None
            with contextlib.suppress(BadRequest):
                check_key(media_id)
                item = await self.store.get_media(media_id)
            if item is None or item.uploader != user:
                raise Forbidden(f"media {media_id[:40]!r} is not yours to send")
            items.append(item)
        return tuple(items)


async def _peek(chunks: AsyncIterator[bytes], n: int) -> tuple[bytes, AsyncIterator[bytes]]:
    """Read at least ``n`` bytes (or all, if fewer) and return them with an iterator over the
    whole stream, those bytes included."""
    it = aiter(chunks)
    taken: list[bytes] = []
    have = 0
    while have < n:
        try:
            chunk = await anext(it)
        except StopAsyncIteration:
            break
        if chunk:
            taken.append(chunk)
            have += len(chunk)

    async def whole() -> AsyncIterator[bytes]:
        for chunk in taken:
            yield chunk
        taken.clear()
        async for chunk in it:
            yield chunk

    return b"".join(taken)[:n], whole()
