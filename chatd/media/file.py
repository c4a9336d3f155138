"""Blobs in a local folder: ``file:///abs/dir`` or ``file://relative/dir``.

Layout: ``<dir>/<aa>/<bb>/<key>`` where ``aa``/``bb`` are the first hex digits of the key's
SHA-256 (so no folder grows past a few thousand entries whatever the id scheme), and
``<dir>/tmp/`` for uploads in progress. An upload is written to ``tmp/``, fsynced, then renamed
into place, so a reader never sees a partial blob and a crash leaves at most a stray file in
``tmp/`` (removed at a later start once it is an hour old: several processes may share the
folder).

Disk I/O runs in worker threads (``asyncio.to_thread``); writes are batched to about 1 MiB so an
upload costs few thread hops while memory stays bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import secrets
import time
from collections.abc import AsyncIterator, Awaitable
from pathlib import Path
from typing import BinaryIO, TypeVar
from urllib.parse import urlsplit

from chatd.errors import ConfigError, NotFound, TooLarge, Unavailable
from chatd.media.base import BlobStore, check_key

WRITE_BATCH = 1 << 20
# An upload in progress touches its temporary file at least this often (every 1 MiB written).
STALE_TMP_SECONDS = 3600
T = TypeVar("T")
READ_CHUNK = 256 * 1024


def folder_from_url(url: str) -> Path:
    """The folder of a ``file://`` URL: everything after ``file://`` (query ignored)."""
    parts = urlsplit(url)
    if parts.scheme != "file":
        raise ConfigError(f"not a file:// media URL: {url!r}")
    raw = url[len("file://") :].split("?", 1)[0].split("#", 1)[0]
    if not raw:
        raise ConfigError(f"the media URL {url!r} names no folder (use file:///abs/dir)")
    return Path(raw)


async def _disk(call: Awaitable[T]) -> T:
    """Await one disk operation, turning OS errors (disk full, permissions) into
    ``Unavailable``."""
    try:
        return await call
    except OSError as exc:
        raise Unavailable(f"media folder I/O failed: {exc}")


class FileBlobStore(BlobStore):
    def __init__(self, url: str) -> None:
        self.root = folder_from_url(url).absolute()
        self.tmp = self.root / "tmp"

    def path_for(self, key: str) -> Path:
        digest = hashlib.sha256(check_key(key).encode()).hexdigest()
        return self.root / digest[:2] / digest[2:4] / key

    async def start(self) -> None:
        def prepare() -> None:
            self.tmp.mkdir(parents=True, exist_ok=True)
            # Leftovers of uploads interrupted by a crash were never committed: drop them. Only
            # old ones, since other processes may share this folder and be uploading right now.
            cutoff = time.time() - STALE_TMP_SECONDS
            for leftover in self.tmp.iterdir():
                with contextlib.suppress(OSError):
                    if leftover.stat().st_mtime < cutoff:
                        leftover.unlink()
            probe = self.tmp / f"probe-{secrets.token_hex(4)}"
            probe.write_bytes(b"")
            probe.unlink()

        try:
            await asyncio.to_thread(prepare)
        except OSError as exc:
            raise ConfigError(f"media folder {self.root} is not usable: {exc}")

    async def close(self) -> None:
        return None

    async def ping(self) -> None:
        ok = await asyncio.to_thread(lambda: self.tmp.is_dir() and os.access(self.tmp, os.W_OK))
        if not ok:
            raise Unavailable(f"media folder {self.root} is not writable")

    async def put(
        self,
        key: str,
        chunks: AsyncIterator[bytes],
        *,
        max_bytes: int,
        content_type: str = "application/octet-stream",
    ) -> int:
        final = self.path_for(key)
        tmp_path = self.tmp / f"{key}.{secrets.token_hex(8)}.part"
        fh: BinaryIO = await _disk(asyncio.to_thread(open, tmp_path, "xb"))
        size = 0
        committed = False
        try:
            batch = bytearray()
            # Errors of the source itself (the client went away) propagate unchanged.
            async for chunk in chunks:
                size += len(chunk)
                if size > max_bytes:
                    raise TooLarge(f"upload is larger than {max_bytes} bytes")
                batch += chunk
                if len(batch) >= WRITE_BATCH:
                    await _disk(asyncio.to_thread(fh.write, batch))
                    batch = bytearray()
            await _disk(asyncio.to_thread(self._commit, fh, bytes(batch), tmp_path, final))
            committed = True
            return size
        finally:
            if not committed:
                await asyncio.to_thread(self._discard, fh, tmp_path)

    @staticmethod
    def _commit(fh: BinaryIO, tail: bytes, tmp_path: Path, final: Path) -> None:
        fh.write(tail)
        fh.flush()
        os.fsync(fh.fileno())
        fh.close()
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp_path, final)
        # The rename itself must survive a crash: fsync the folder that now holds the name.
        dir_fd = os.open(final.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    @staticmethod
    def _discard(fh: BinaryIO, tmp_path: Path) -> None:
        with contextlib.suppress(OSError):
            fh.close()
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()

    async def get_range(
        self, key: str, start: int = 0, end: int | None = None
    ) -> AsyncIterator[bytes]:
        path = self.path_for(key)
        try:
            fh: BinaryIO = await asyncio.to_thread(open, path, "rb")
        except FileNotFoundError:
            raise NotFound(f"no blob {key}")
        except OSError as exc:
            raise Unavailable(f"cannot read from the media folder: {exc}")
        try:
            await asyncio.to_thread(fh.seek, max(start, 0))
            remaining = None if end is None else max(end - max(start, 0), 0)
            while remaining is None or remaining > 0:
                want = READ_CHUNK if remaining is None else min(READ_CHUNK, remaining)
                data = await asyncio.to_thread(fh.read, want)
                if not data:
                    break
                if remaining is not None:
                    remaining -= len(data)
                yield data
        finally:
            fh.close()

    async def exists(self, key: str) -> bool:
        return await asyncio.to_thread(self.path_for(key).is_file)

    async def delete(self, key: str) -> None:
        path = self.path_for(key)

        def unlink() -> None:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

        await asyncio.to_thread(unlink)
