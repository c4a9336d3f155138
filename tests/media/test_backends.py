"""Backend-specific behaviour: URL parsing, start-up failures, file layout, S3 settings."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from chatd.errors import ConfigError, Unavailable
from chatd.media import open_media
from chatd.media.file import FileBlobStore
from chatd.media.s3 import S3BlobStore
from tests.media.conftest import chunked, collect, free_port, s3_url


def files_under(root: Path) -> list[Path]:
    return [p.relative_to(root) for p in root.rglob("*") if p.is_file()]


def test_unknown_scheme_lists_known_ones() -> None:
    with pytest.raises(ConfigError, match=r"known: file, s3"):
        open_media("ftp://example.com/media")


def test_file_url_forms(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    absolute = open_media(f"file://{tmp_path}/media")
    assert isinstance(absolute, FileBlobStore)
    assert absolute.root == tmp_path / "media"
    monkeypatch.chdir(tmp_path)
    relative = open_media("file://data/media")
    assert isinstance(relative, FileBlobStore)
    assert relative.root == tmp_path / "data" / "media"
    dotted = open_media("file://./data/media")
    assert isinstance(dotted, FileBlobStore)
    assert dotted.root.resolve() == (tmp_path / "data" / "media").resolve()
    with pytest.raises(ConfigError):
        open_media("file://")


async def test_file_layout_uses_sharded_paths_from_keys(tmp_path: Path) -> None:
    store = open_media(f"file://{tmp_path}")
    await store.start()
    await store.put("abcdef", chunked(b"x"), max_bytes=1)
    files = files_under(tmp_path)
    assert len(files) == 1
    shard_a, shard_b, name = files[0].parts
    assert (len(shard_a), len(shard_b), name) == (2, 2, "abcdef")
    await store.close()


async def test_file_start_clears_old_interrupted_uploads(tmp_path: Path) -> None:
    (tmp_path / "tmp").mkdir()
    old = tmp_path / "tmp" / "old.part"
    old.write_bytes(b"half")
    two_hours_ago = time.time() - 7200
    os.utime(old, (two_hours_ago, two_hours_ago))
    recent = tmp_path / "tmp" / "recent.part"  # maybe another process's upload in progress
    recent.write_bytes(b"half")
    store = open_media(f"file://{tmp_path}")
    await store.start()
    assert sorted(p.name for p in (tmp_path / "tmp").iterdir()) == ["recent.part"]
    await store.close()


async def test_file_unusable_folder_is_a_config_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_bytes(b"")
    store = open_media(f"file://{blocker}/media")
    with pytest.raises(ConfigError, match="not usable"):
        await store.start()


async def test_file_ping_fails_when_folder_vanishes(tmp_path: Path) -> None:
    store = open_media(f"file://{tmp_path}/m")
    await store.start()
    (tmp_path / "m" / "tmp").rmdir()
    with pytest.raises(Unavailable):
        await store.ping()


@pytest.mark.parametrize(
    "url",
    [
        "s3://?endpoint_url=http://127.0.0.1:1",
        "s3://b?colour=blue",
        "s3://b?create_bucket=maybe",
        "s3://b?part_size=1000",
        "s3://b?part_size=lots",
        "s3://b?addressing_style=sideways",
        "s3://b?max_attempts=0",
        "s3://b?max_attempts=many",
    ],
)
def test_s3_bad_urls(url: str) -> None:
    with pytest.raises(ConfigError):
        open_media(url)


def test_s3_url_settings() -> None:
    store = open_media(
        "s3://bucket/some/prefix?endpoint_url=http://h:9000&region=eu-west-1&presign=true"
        "&part_size=8388608"
    )
    assert isinstance(store, S3BlobStore)
    assert (store.bucket, store.prefix, store.region) == ("bucket", "some/prefix", "eu-west-1")
    assert store.redirect_downloads is True
    assert store.part_size == 8 * 1024 * 1024
    assert store.object_key("k") == "some/prefix/k"


async def test_s3_unreachable_is_a_config_error() -> None:
    store = open_media(s3_url(f"http://127.0.0.1:{free_port()}", max_attempts="1"))
    with pytest.raises(ConfigError, match="not usable"):
        await store.start()


async def test_s3_missing_bucket_without_create_is_a_config_error(moto_endpoint: str) -> None:
    store = open_media(s3_url(moto_endpoint, create_bucket="false"))
    with pytest.raises(ConfigError, match="does not exist"):
        await store.start()


async def test_s3_existing_bucket_and_prefix(moto_endpoint: str) -> None:
    url = s3_url(moto_endpoint, bucket="shared-bucket")
    first = open_media(url)
    await first.start()
    await first.close()
    # A second start finds the bucket there; a prefix keeps objects apart.
    prefixed = open_media(url.replace("shared-bucket?", "shared-bucket/team-a?"))
    assert isinstance(prefixed, S3BlobStore)
    await prefixed.start()
    try:
        await prefixed.put("k", chunked(b"data"), max_bytes=10)
        listing = await prefixed.client.list_objects_v2(Bucket="shared-bucket")
        assert [o["Key"] for o in listing["Contents"]] == ["team-a/k"]
        assert await collect(prefixed.get_range("k")) == b"data"
    finally:
        await prefixed.close()


async def test_s3_ping_after_close_is_unavailable(moto_endpoint: str) -> None:
    store = open_media(s3_url(moto_endpoint))
    await store.start()
    await store.close()
    with pytest.raises(Unavailable):
        await store.ping()


async def test_s3_env_credentials(moto_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "from-env")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "from-env")
    url = f"s3://env-bucket?endpoint_url={moto_endpoint}&region=us-east-1"
    store = open_media(url)
    await store.start()
    try:
        await store.put("k", chunked(os.urandom(10)), max_bytes=10)
    finally:
        await store.close()
