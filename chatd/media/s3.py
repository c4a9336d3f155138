"""Blobs in an S3 bucket (AWS, MinIO, Ceph, moto...) through aiobotocore.

URL: ``s3://bucket[/prefix]?endpoint_url=http://127.0.0.1:9000&region=us-east-1`` with optional
query settings:

``access_key_id``, ``secret_access_key``, ``session_token``
    credentials; without them the usual AWS chain applies (``AWS_ACCESS_KEY_ID`` and
    ``AWS_SECRET_ACCESS_KEY``, ``AWS_PROFILE``, instance roles...).
``create_bucket`` (default ``true``)
    create the bucket at start if it does not exist.
``presign`` (default ``false``)
    let the HTTP layer answer downloads with a short-lived presigned redirect instead of
    proxying the bytes.
``part_size`` (default 5 MiB, at least 5 MiB)
    the multipart upload part size: the most memory one upload holds.
``addressing_style`` (``path`` when ``endpoint_url`` is set, else ``auto``).
``max_attempts`` (default 3)
    attempts per request, retries included, before the backend counts as unavailable.

Uploads no bigger than one part are sent with a single ``PutObject`` once complete; larger ones
use a multipart upload that is completed only when every byte has arrived and aborted on any
failure, so a refused or broken upload never leaves an object (or billable parts) behind.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable
from typing import Any
from urllib.parse import parse_qs, urlsplit

from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from botocore.exceptions import BotoCoreError, ClientError

from chatd.errors import ConfigError, NotFound, TooLarge, Unavailable
from chatd.media.base import BlobStore, check_key

MIN_PART_SIZE = 5 * 1024 * 1024
READ_CHUNK = 256 * 1024
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}
_KNOWN_PARAMS = {
    "endpoint_url",
    "region",
    "access_key_id",
    "secret_access_key",
    "session_token",
    "create_bucket",
    "presign",
    "part_size",
    "addressing_style",
    "max_attempts",
}
# Transport-level failures: the backend is unreachable or timed out.
_NETWORK_ERRORS: tuple[type[BaseException], ...] = (BotoCoreError, OSError, TimeoutError)


def _flag(params: dict[str, str], name: str, default: bool) -> bool:
    value = params.get(name)
    if value is None:
        return default
    if value.lower() in _TRUE:
        return True
    if value.lower() in _FALSE:
        return False
    raise ConfigError(f"s3 media URL: {name}={value!r} is not true or false")


def _error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


async def _s3(call: Awaitable[Any]) -> Any:
    """Await one S3 call, turning backend failures into ``Unavailable``."""
    try:
        return await call
    except (ClientError, *_NETWORK_ERRORS) as exc:
        raise Unavailable(f"s3 request failed: {exc}")


class S3BlobStore(BlobStore):
    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        if not parts.hostname:
            raise ConfigError(f"the s3 media URL {url!r} names no bucket (s3://bucket?...)")
        self.bucket = parts.netloc
        self.prefix = parts.path.strip("/")
        params = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        unknown = sorted(set(params) - _KNOWN_PARAMS)
        if unknown:
            known = ", ".join(sorted(_KNOWN_PARAMS))
            raise ConfigError(f"s3 media URL: unknown setting(s) {unknown} (known: {known})")
        self.endpoint_url = params.get("endpoint_url") or None
        self.region = params.get("region") or None
        self.create_bucket = _flag(params, "create_bucket", True)
        self.redirect_downloads = _flag(params, "presign", False)
        try:
            self.part_size = int(params.get("part_size", MIN_PART_SIZE))
        except ValueError:
            raise ConfigError("s3 media URL: part_size must be a number of bytes")
        if self.part_size < MIN_PART_SIZE:
            raise ConfigError(f"s3 media URL: part_size must be at least {MIN_PART_SIZE}")
        try:
            attempts = int(params.get("max_attempts", 3))
        except ValueError:
            attempts = 0
        if not 1 <= attempts <= 10:
            raise ConfigError("s3 media URL: max_attempts must be a number from 1 to 10")
        style = params.get("addressing_style") or ("path" if self.endpoint_url else "auto")
        if style not in ("path", "virtual", "auto"):
            raise ConfigError("s3 media URL: addressing_style must be path, virtual or auto")
        self._client_kwargs: dict[str, Any] = {
            "region_name": self.region,
            "endpoint_url": self.endpoint_url,
            "aws_access_key_id": params.get("access_key_id") or None,
            "aws_secret_access_key": params.get("secret_access_key") or None,
            "aws_session_token": params.get("session_token") or None,
            "config": AioConfig(
                connect_timeout=5,
                read_timeout=30,
                retries={"max_attempts": attempts, "mode": "standard"},
                s3={"addressing_style": style},
            ),
        }
        self._stack: contextlib.AsyncExitStack | None = None
        self._client: Any = None

    def object_key(self, key: str) -> str:
        check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    @property
    def client(self) -> Any:
        if self._client is None:
            raise Unavailable("the s3 media store is not started")
        return self._client

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        stack = contextlib.AsyncExitStack()
        try:
            session = get_session()
            self._client = await stack.enter_async_context(
                session.create_client("s3", **self._client_kwargs)
            )
            await self._ensure_bucket()
        except ConfigError:
            await stack.aclose()
            self._client = None
            raise
        except (ClientError, *_NETWORK_ERRORS) as exc:
            await stack.aclose()
            self._client = None
            where = self.endpoint_url or "AWS"
            raise ConfigError(f"s3 bucket {self.bucket!r} at {where} is not usable: {exc}")
        self._stack = stack

    async def _ensure_bucket(self) -> None:
        try:
            await self._client.head_bucket(Bucket=self.bucket)
            return
        except ClientError as exc:
            if _error_code(exc) not in ("404", "NoSuchBucket", "NotFound"):
                raise
        if not self.create_bucket:
            raise ConfigError(f"s3 bucket {self.bucket!r} does not exist (create_bucket=false)")
        kwargs: dict[str, Any] = {"Bucket": self.bucket}
        if self.region and self.region != "us-east-1":
            kwargs["CreateBucketConfiguration"] = {"LocationConstraint": self.region}
        try:
            await self._client.create_bucket(**kwargs)
        except ClientError as exc:
            # Another process created it between our check and our create: fine.
            if _error_code(exc) not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                raise

    async def close(self) -> None:
        stack, self._stack, self._client = self._stack, None, None
        if stack is not None:
            await stack.aclose()

    async def ping(self) -> None:
        try:
            await self.client.head_bucket(Bucket=self.bucket)
        except (ClientError, *_NETWORK_ERRORS) as exc:
            raise Unavailable(f"s3 bucket {self.bucket!r} does not answer: {exc}")

    # -- blobs ---------------------------------------------------------------------------------

    async def put(
        self,
        key: str,
        chunks: AsyncIterator[bytes],
        *,
        max_bytes: int,
        content_type: str = "application/octet-stream",
    ) -> int:
        name = self.object_key(key)
        client = self.client
        size = 0
        buf = bytearray()
        upload_id: str | None = None
        parts: list[dict[str, Any]] = []

        async def send_part(body: bytes) -> None:
            nonlocal upload_id
            if upload_id is None:
                created = await _s3(
                    client.create_multipart_upload(
                        Bucket=self.bucket, Key=name, ContentType=content_type
                    )
                )
                upload_id = str(created["UploadId"])
            number = len(parts) + 1
            answer = await _s3(
                client.upload_part(
                    Bucket=self.bucket, Key=name, UploadId=upload_id, PartNumber=number, Body=body
                )
            )
            parts.append({"PartNumber": number, "ETag": answer["ETag"]})

        completed = False
        try:
            # Errors of the source itself (the client went away) propagate unchanged.
            async for chunk in chunks:
                size += len(chunk)
                if size > max_bytes:
                    raise TooLarge(f"upload is larger than {max_bytes} bytes")
                buf += chunk
                while len(buf) >= self.part_size:
                    part = bytes(buf[: self.part_size])
                    del buf[: self.part_size]
                    await send_part(part)
            if upload_id is None:
                await _s3(
                    client.put_object(
                        Bucket=self.bucket, Key=name, Body=bytes(buf), ContentType=content_type
                    )
                )
            else:
                if buf:
                    await send_part(bytes(buf))
                await _s3(
                    client.complete_multipart_upload(
                        Bucket=self.bucket,
                        Key=name,
                        UploadId=upload_id,
                        MultipartUpload={"Parts": parts},
                    )
                )
            completed = True
            return size
        finally:
            if upload_id is not None and not completed:
                # On cancellation this still runs before the task ends; an abort that fails
                # leaves only parts, never an object (a bucket lifecycle rule can expire them).
                with contextlib.suppress(ClientError, Unavailable, *_NETWORK_ERRORS):
                    await client.abort_multipart_upload(
                        Bucket=self.bucket, Key=name, UploadId=upload_id
                    )

    async def get_range(
        self, key: str, start: int = 0, end: int | None = None
    ) -> AsyncIterator[bytes]:
        name = self.object_key(key)
        start = max(start, 0)
        if end is not None and end <= start:
            # S3 cannot express an empty range; still report a missing blob.
            if not await self.exists(key):
                raise NotFound(f"no blob {key}")
            return
        header = f"bytes={start}-" if end is None else f"bytes={start}-{end - 1}"
        try:
            answer = await self.client.get_object(Bucket=self.bucket, Key=name, Range=header)
        except ClientError as exc:
            code = _error_code(exc)
            if code in ("NoSuchKey", "404", "NotFound"):
                raise NotFound(f"no blob {key}")
            if code == "InvalidRange":
                # start is at or past the end: an empty slice, as for files.
                return
            raise Unavailable(f"s3 download failed: {exc}")
        except _NETWORK_ERRORS as exc:
            raise Unavailable(f"s3 download failed: {exc}")
        try:
            async with answer["Body"] as body:
                async for chunk in body.iter_chunks(READ_CHUNK):
                    yield chunk
        except (ClientError, *_NETWORK_ERRORS) as exc:
            raise Unavailable(f"s3 download failed: {exc}")

    async def exists(self, key: str) -> bool:
        try:
            await self.client.head_object(Bucket=self.bucket, Key=self.object_key(key))
            return True
        except ClientError as exc:
            if _error_code(exc) in ("404", "NoSuchKey", "NotFound"):
                return False
            raise Unavailable(f"s3 request failed: {exc}")
        except _NETWORK_ERRORS as exc:
            raise Unavailable(f"s3 request failed: {exc}")

    async def delete(self, key: str) -> None:
        try:
            await self.client.delete_object(Bucket=self.bucket, Key=self.object_key(key))
        except (ClientError, *_NETWORK_ERRORS) as exc:
            raise Unavailable(f"s3 delete failed: {exc}")

    async def presigned_url(self, key: str, expires_s: int, **response: str) -> str | None:
        params: dict[str, Any] = {"Bucket": self.bucket, "Key": self.object_key(key)}
        if "content_type" in response:
            params["ResponseContentType"] = response["content_type"]
        if "content_disposition" in response:
            params["ResponseContentDisposition"] = response["content_disposition"]
        url: str = await self.client.generate_presigned_url(
            "get_object", Params=params, ExpiresIn=expires_s
        )
        return url
