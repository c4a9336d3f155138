"""Media: blob storage (local folder or S3), MIME sniffing, thumbnails, and the media rules.

``open_media(url)`` picks the blob backend by scheme:

* ``file:///abs/dir`` or ``file://relative/dir`` -- everything after ``file://`` is the folder
  (a leading ``/`` makes it absolute, otherwise it is relative to the working directory), so
  ``file://<data dir>/media`` works for both kinds of data dir.
* ``s3://bucket[/prefix]?endpoint_url=...&region=...`` -- any S3 API through aiobotocore.

:class:`chatd.media.service.MediaService` holds the rules (who may read what, sniffing,
thumbnails); :mod:`chatd.media.rules` has the pure functions the HTTP layer uses to decide how a
stored type is served.
"""

from __future__ import annotations

import importlib
from urllib.parse import urlsplit

from chatd.errors import ConfigError
from chatd.media.base import BlobStore

# scheme -> (module, class, pip extra that provides its driver)
BACKENDS: dict[str, tuple[str, str, str | None]] = {
    "file": ("chatd.media.file", "FileBlobStore", None),
    "s3": ("chatd.media.s3", "S3BlobStore", "s3"),
}


def open_media(url: str) -> BlobStore:
    """Build (not start) the blob backend for ``url``; ``ConfigError`` for an unknown scheme, a
    malformed URL or a missing driver."""
    scheme = urlsplit(url).scheme
    if scheme not in BACKENDS:
        known = ", ".join(sorted(BACKENDS))
        raise ConfigError(f"unknown media URL scheme {scheme!r} in {url!r} (known: {known})")
    module_name, class_name, extra = BACKENDS[scheme]
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        hint = f"; install it with: pip install 'chatd[{extra}]'" if extra else ""
        raise ConfigError(
            f"the {scheme} media store needs a driver that is missing ({exc.name}){hint}"
        )
    store: BlobStore = getattr(module, class_name)(url)
    return store


__all__ = ["BACKENDS", "BlobStore", "open_media"]
