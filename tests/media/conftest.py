"""Fixtures for the media tests: blob stores over ``file://`` and over S3 served by moto.

moto runs in server mode as a separate process (``moto_server.py``, see there): a real HTTP S3
endpoint on loopback, started once per test session and stopped by pid at the end. Each test
gets its own bucket, so tests never see each other's objects.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import pytest

from chatd.media import open_media
from chatd.media.base import BlobStore
from chatd.media.file import FileBlobStore
from chatd.media.s3 import S3BlobStore


def require_backend(name: str, reason: str) -> NoReturn:
    """Skip because ``name`` is unusable; under ``CI=true`` fail instead (CI runs every backend)."""
    message = f"{name} is not available: {reason}"
    if os.environ.get("CI") == "true":
        pytest.fail(f"{message} (CI=true: backend tests must run, not skip)", pytrace=False)
    pytest.skip(message)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


MOTO_START_TIMEOUT = 30.0
MOTO_LAUNCHER = Path(__file__).with_name("moto_server.py")


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """The URL of a moto S3 server on 127.0.0.1 (its own process, stopped at the end)."""
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    try:
        proc = subprocess.Popen(
            [sys.executable, str(MOTO_LAUNCHER), "-H", "127.0.0.1", "-p", str(port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env={**os.environ, "PYTHONWARNINGS": "ignore"},
        )
    except OSError as exc:
        require_backend("s3", f"cannot start moto's server: {exc}")
    try:
        deadline = time.monotonic() + MOTO_START_TIMEOUT
        while True:
            if proc.poll() is not None:
                err = proc.stderr.read().decode(errors="replace")[-500:] if proc.stderr else ""
                require_backend("s3", f"moto's server exited with {proc.returncode}: {err}")
            try:
                with urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=1):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    require_backend(
                        "s3", f"moto's server did not answer within {MOTO_START_TIMEOUT}s"
                    )
                time.sleep(0.1)
        yield endpoint
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        if proc.stderr:
            proc.stderr.close()


def s3_url(endpoint: str, bucket: str | None = None, **extra: str) -> str:
    bucket = bucket or f"chatd-test-{uuid.uuid4().hex[:12]}"
    query = {
        "endpoint_url": endpoint,
        "region": "us-east-1",
        "access_key_id": "test",
        "secret_access_key": "test",
        **extra,
    }
    return f"s3://{bucket}?" + "&".join(f"{k}={v}" for k, v in query.items())


@dataclass
class Blobs:
    """A started blob store and a way to list everything it holds, temporary state included."""

    store: BlobStore
    kind: str

    async def leftovers(self) -> list[str]:
        """Every file under the folder (``tmp/`` included), or every object and unfinished
        multipart upload in the bucket."""
        if isinstance(self.store, FileBlobStore):
            root = self.store.root
            return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
        assert isinstance(self.store, S3BlobStore)
        client: Any = self.store.client
        found: list[str] = []
        objects = await client.list_objects_v2(Bucket=self.store.bucket)
        found += [o["Key"] for o in objects.get("Contents", [])]
        uploads = await client.list_multipart_uploads(Bucket=self.store.bucket)
        found += [f"upload:{u['Key']}" for u in uploads.get("Uploads", [])]
        return sorted(found)


def blob_url(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    if kind == "file":
        return f"file://{tmp_path / 'media'}"
    endpoint: str = request.getfixturevalue("moto_endpoint")
    return s3_url(endpoint)


@pytest.fixture(params=["file", "s3"])
async def blobs(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Blobs]:
    """A started blob store of each kind (parametrized), closed after the test."""
    store = open_media(blob_url(request.param, tmp_path, request))
    await store.start()
    try:
        yield Blobs(store, request.param)
    finally:
        await store.close()


async def chunked(data: bytes, size: int = 64 * 1024) -> AsyncIterator[bytes]:
    """``data`` as an async stream of ``size``-byte chunks, like a request body."""
    for i in range(0, len(data), size):
        yield data[i : i + size]


async def collect(chunks: AsyncIterator[bytes]) -> bytes:
    return b"".join([c async for c in chunks])
