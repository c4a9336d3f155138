"""The blob store interface: where uploaded bytes live.

One abstract class, one module per backend (``file`` for a local folder, ``s3`` for any S3 API),
chosen by URL in :func:`chatd.media.open_media`. Every backend passes the same contract suite
(``tests/media/test_blob_contract.py``).

What a backend must guarantee:

* ``put`` streams: it never holds the whole object in memory (at most one part, a few MiB).
* ``put`` is all or nothing: past ``max_bytes`` it raises :class:`chatd.errors.TooLarge`, and on
  that or any other failure (the client went away mid-upload) no object and no temporary file or
  unfinished multipart upload is left behind. A finished ``put`` is durable.
* Keys are chosen by chatd from ids (see :func:`check_key`), never from client filenames; a
  backend may shard them into folders but must not interpret them otherwise.
* A backend that cannot be reached surfaces as ``Unavailable`` on requests and as
  ``ConfigError`` from ``start``.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator

from chatd.errors import BadRequest, TooLarge

# Ids, optionally with a derived suffix ("<id>.thumb"): nothing that could climb out of a folder.
_KEY_RE = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,199}$")


def check_key(key: str) -> str:
    """Return ``key`` if it is a safe storage key, else raise ``BadRequest``.

    Safe means: 1..200 characters of ``[A-Za-z0-9_.-]``, not starting with a dot, no ``..``.
    """
    if not _KEY_RE.fullmatch(key) or ".." in key:
        raise BadRequest(f"invalid media key {key[:40]!r}")
    return key


class BlobStore(ABC):
    """Named immutable blobs: put once, read by byte range, delete."""

    #: Whether downloads may be answered with a redirect to :meth:`presigned_url`. Backends
    #: that can presign set it from their URL (``s3://...?presign=true``).
    redirect_downloads: bool = False

    @abstractmethod
    async def start(self) -> None:
        """Connect and create what is missing; ``ConfigError`` if unreachable or misconfigured."""

    @abstractmethod
    async def close(self) -> None: ...

    @abstractmethod
    async def ping(self) -> None:
        """Return when the backend answers; raise ``Unavailable`` otherwise."""

    @abstractmethod
    async def put(
        self,
        key: str,
        chunks: AsyncIterator[bytes],
        *,
        max_bytes: int,
        content_type: str = "application/octet-stream",
    ) -> int:
        """Store the concatenation of ``chunks`` under ``key``; return its size in bytes.

        Raises:
            TooLarge: more than ``max_bytes`` arrived; nothing is left behind.
            Unavailable: the backend failed; nothing is left behind.
        Any exception raised by ``chunks`` itself propagates, again leaving nothing behind.
        """

    @abstractmethod
    def get_range(self, key: str, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        """Yield the bytes ``[start, end)`` of the blob (``end=None``: to its end).

        Ranges past the end are clipped. ``NotFound`` if there is no such blob (raised on the
        first iteration).
        """

    @abstractmethod
    async def exists(self, key: str) -> bool: ...

    @abstractmethod
    async def delete(self, key: str) -> None:
        """Delete the blob; deleting a missing blob is not an error."""

    async def presigned_url(self, key: str, expires_s: int, **response: str) -> str | None:
        """A URL a client may fetch the blob from directly for ``expires_s`` seconds, or ``None``
        if the backend cannot presign. ``response`` may set ``content_type`` and
        ``content_disposition`` headers of that answer."""
        return None

    async def __aenter__(self) -> BlobStore:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


async def read_all(store: BlobStore, key: str, *, limit: int) -> bytes:
    """Read a whole blob into memory, refusing (``TooLarge``) one past ``limit`` bytes.

    For small derived blobs such as thumbnails only.
    """
    buf = bytearray()
    async for chunk in store.get_range(key, 0, limit + 1):
        buf += chunk
        if len(buf) > limit:
            raise TooLarge(f"blob {key} is larger than {limit} bytes")
    return bytes(buf)
