"""Pure rules for serving media over HTTP: which type a browser gets, filenames, ranges.

No I/O here: the HTTP layer asks these functions what headers to send.

A stored type is served as itself only if it is on :data:`INLINE_TYPES`, types a browser
displays without running code. Everything else (HTML, SVG, XML, JavaScript, PDF, archives,
anything unknown) is served as ``application/octet-stream`` with ``Content-Disposition:
attachment``, so that a file uploaded by one user can never run script in another user's
session on our origin. Every answer also carries ``X-Content-Type-Options: nosniff`` and
``Content-Security-Policy: sandbox`` (a document opened anyway gets a unique opaque origin).
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from urllib.parse import quote

#: Types served as themselves, displayed inline.
INLINE_TYPES = frozenset(
    {
        "image/png",
        "image/jpeg",
        "image/gif",
        "image/webp",
        "audio/mpeg",
        "audio/ogg",
        "audio/wav",
        "audio/mp4",
        "video/mp4",
        "video/webm",
        "text/plain",
    }
)
MAX_FILENAME_CHARS = 200
DEFAULT_FILENAME = "file"

_SEPARATORS = re.compile(r"[/\\]")
_WHITESPACE = re.compile(r"\s+")


def served_headers(mime: str, filename: str) -> dict[str, str]:
    """Response headers for a media download of stored type ``mime`` named ``filename``.

    Returns ``Content-Type``, ``Content-Disposition``, ``X-Content-Type-Options`` and
    ``Content-Security-Policy``.
    """
    if mime in INLINE_TYPES:
        content_type = "text/plain; charset=utf-8" if mime == "text/plain" else mime
        disposition = content_disposition("inline", filename)
    else:
        content_type = "application/octet-stream"
        disposition = content_disposition("attachment", filename)
    return {
        "Content-Type": content_type,
        "Content-Disposition": disposition,
        "X-Content-Type-Options": "nosniff",
        "Content-Security-Policy": "sandbox",
    }


def sanitize_filename(name: str | None) -> str:
    """A display filename safe for headers and file systems.

    Drops everything up to the last ``/`` or ``\\``, control and format characters, leading
    dots and surrounding whitespace; folds runs of whitespace to one space; keeps at most
    :data:`MAX_FILENAME_CHARS` characters (keeping a short extension). Empty -> ``"file"``.
    """
    if not name:
        return DEFAULT_FILENAME
    name = unicodedata.normalize("NFC", _SEPARATORS.split(name)[-1])
    name = "".join(_clean_char(ch) for ch in name)
    name = _WHITESPACE.sub(" ", name).strip().lstrip(".").strip()
    if len(name) > MAX_FILENAME_CHARS:
        stem, dot, ext = name.rpartition(".")
        if dot and 0 < len(ext) <= 16 and stem:
            name = stem[: MAX_FILENAME_CHARS - len(ext) - 1].rstrip() + "." + ext
        else:
            name = name[:MAX_FILENAME_CHARS].rstrip()
    return name or DEFAULT_FILENAME


def _clean_char(ch: str) -> str:
    category = unicodedata.category(ch)[0]
    if ch == "\t":
        return " "
    if category == "C":  # control, format (bidi overrides...), unassigned, surrogates
        return ""
    if category == "Z":  # any space or line/paragraph separator
        return " "
    return ch


def content_disposition(kind: str, filename: str) -> str:
    """``inline`` or ``attachment`` with an ASCII ``filename`` and an RFC 5987 ``filename*``."""
    safe = sanitize_filename(filename)
    ascii_name = "".join(ch if 0x20 <= ord(ch) < 0x7F and ch not in '"\\%' else "_" for ch in safe)
    return f"{kind}; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(safe, safe='')}"


class RangeNotSatisfiable(Exception):
    """A ``Range`` header that selects nothing of a blob of ``size`` bytes (HTTP 416)."""

    def __init__(self, header: str, size: int) -> None:
        super().__init__(f"range {header!r} is outside a blob of {size} bytes")
        self.size = size


@dataclass(frozen=True, slots=True)
class ByteRange:
    """Bytes ``[start, end)`` of a blob of ``size`` bytes."""

    start: int
    end: int
    size: int

    @property
    def length(self) -> int:
        return self.end - self.start

    def content_range(self) -> str:
        return f"bytes {self.start}-{self.end - 1}/{self.size}"


_RANGE_RE = re.compile(r"^\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*$", re.IGNORECASE)


def parse_range(header: str | None, size: int) -> ByteRange | None:
    """Parse a single-range ``Range`` header against a blob of ``size`` bytes.

    Returns ``None`` when the whole blob should be sent (no header, a malformed one, or several
    ranges -- all allowed by RFC 9110 to be ignored). Raises :class:`RangeNotSatisfiable` for a
    range that starts past the end.
    """
    if not header:
        return None
    match = _RANGE_RE.match(header)
    if match is None:
        return None
    first, last = match.groups()
    if first == "" and last == "":
        return None
    if first == "":
        # A suffix: the last N bytes.
        suffix = int(last)
        if suffix == 0:
            raise RangeNotSatisfiable(header, size)
        return ByteRange(max(size - suffix, 0), size, size)
    start = int(first)
    end = size if last == "" else min(int(last) + 1, size)
    if last != "" and int(last) < start:
        return None
    if start >= size:
        raise RangeNotSatisfiable(header, size)
    return ByteRange(start, end, size)
