"""What a blob is (sniffed from its first bytes) and, for images, its size and thumbnail.

Nothing here trusts what the client said: the type comes from the bytes. Nothing here does I/O
beyond reading the file object it is given; :func:`make_thumbnail` is CPU-bound and meant to run
in a worker thread (``asyncio.to_thread``).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import IO

from PIL import Image, ImageOps, UnidentifiedImageError

#: How many leading bytes :func:`sniff` looks at.
SNIFF_BYTES = 4096
#: Images with more pixels than this get no thumbnail (a decompression bomb decodes a small file
#: into gigabytes). Checked from the header, before any pixel is decoded.
DEFAULT_MAX_PIXELS = 40_000_000
THUMBNAIL_SIZE = (320, 320)

#: Sniffed types for which :func:`make_thumbnail` is attempted, with Pillow's format name.
IMAGE_FORMATS = {
    "image/png": "PNG",
    "image/jpeg": "JPEG",
    "image/gif": "GIF",
    "image/webp": "WEBP",
}

# HTML tags that start an HTML document according to the WHATWG MIME sniffing standard (each
# followed by a space or '>').
_HTML_TAGS = (
    b"<!doctype html",
    b"<html",
    b"<head",
    b"<script",
    b"<iframe",
    b"<h1",
    b"<div",
    b"<font",
    b"<table",
    b"<a",
    b"<style",
    b"<title",
    b"<b",
    b"<body",
    b"<br",
    b"<p",
    b"<!--",
)
_TAG_END = b" \t\n\x0c\r>"
# Control characters that do not occur in text (tab, newlines, form feed and escape do).
_BINARY_CONTROLS = bytes(set(range(0x20)) - {0x09, 0x0A, 0x0C, 0x0D, 0x1B}) + b"\x7f"


def sniff(head: bytes) -> str:
    """The MIME type of a blob judged from its first bytes (up to :data:`SNIFF_BYTES`).

    Falls back to ``text/plain`` for valid UTF-8 without binary control characters (a
    multibyte character cut at the end of ``head`` is allowed) and ``application/octet-stream``
    for everything else.
    """
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if head.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if head.startswith((b"GIF87a", b"GIF89a")):
        return "image/gif"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    if head[:4] == b"RIFF" and head[8:12] == b"WAVE":
        return "audio/wav"
    if head.startswith(b"%PDF-"):
        return "application/pdf"
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06", b"PK\x07\x08")):
        return "application/zip"
    if head[4:8] == b"ftyp":
        brand = head[8:12]
        if brand in (b"M4A ", b"M4B ", b"M4P "):
            return "audio/mp4"
        if brand == b"qt  ":
            return "video/quicktime"
        return "video/mp4"
    if head.startswith(b"OggS"):
        return "audio/ogg"
    if head.startswith(b"ID3") or _is_mp3_frame(head):
        return "audio/mpeg"
    if head.startswith(b"\x1aE\xdf\xa3"):
        return "video/webm"
    markup = _sniff_markup(head)
    if markup:
        return markup
    return "text/plain" if _looks_like_text(head) else "application/octet-stream"


def _is_mp3_frame(head: bytes) -> bool:
    # An MPEG audio frame header: 11 sync bits, a version that is not "reserved", and a layer
    # that is not "reserved".
    if len(head) < 4 or head[0] != 0xFF or head[1] & 0xE0 != 0xE0:
        return False
    version = (head[1] >> 3) & 0b11
    layer = (head[1] >> 1) & 0b11
    bitrate = head[2] >> 4
    return version != 0b01 and layer != 0b00 and bitrate != 0b1111


def _sniff_markup(head: bytes) -> str | None:
    text = head.removeprefix(b"\xef\xbb\xbf").lstrip(b" \t\n\x0c\r").lower()
    if text.startswith(b"<?xml"):
        return "image/svg+xml" if b"<svg" in text else "application/xml"
    if text.startswith(b"<svg"):
        return "image/svg+xml"
    for tag in _HTML_TAGS:
        if text.startswith(tag):
            rest = text[len(tag) : len(tag) + 1]
            if tag == b"<!--" or (rest and rest in _TAG_END):
                return "text/html"
    if text.startswith(b"<!doctype svg"):
        return "image/svg+xml"
    return None


def _looks_like_text(head: bytes) -> bool:
    if any(c in _BINARY_CONTROLS for c in head):
        return False
    try:
        head.decode("utf-8")
        return True
    except UnicodeDecodeError as exc:
        # A character cut by the end of the sniffed prefix is fine (at most 3 bytes of it).
        return exc.reason == "unexpected end of data" and exc.start >= len(head) - 3


class ImageRejected(Exception):
    """The bytes are not a usable image (corrupt, an unsupported variant, or too many pixels)."""


@dataclass(frozen=True, slots=True)
class Thumbnail:
    """An image's display size (after EXIF orientation) and its thumbnail."""

    width: int
    height: int
    data: bytes
    mime: str


# EXIF orientations 5..8 turn the image by 90 degrees: width and height swap for display.
_ORIENTATION_TAG = 0x0112
_SWAPPING_ORIENTATIONS = {5, 6, 7, 8}


def make_thumbnail(
    source: IO[bytes] | bytes, mime: str, *, max_pixels: int = DEFAULT_MAX_PIXELS
) -> Thumbnail:
    """Decode an image and make a thumbnail of at most 320x320 pixels.

    The EXIF orientation is applied, all metadata (EXIF, ICC, text chunks) is dropped, and the
    thumbnail is a PNG if the image has transparency, else a JPEG. Only the format ``mime``
    names is tried (the type was sniffed already). Images past ``max_pixels`` are refused from
    their header, before decoding.

    Raises:
        ImageRejected: not decodable, or too many pixels.
    """
    fmt = IMAGE_FORMATS.get(mime)
    if fmt is None:
        raise ImageRejected(f"no thumbnails for {mime}")
    fp = io.BytesIO(source) if isinstance(source, bytes | bytearray) else source
    try:
        with Image.open(fp, formats=[fmt]) as im:
            width, height = im.size
            if width <= 0 or height <= 0 or width * height > max_pixels:
                raise ImageRejected(f"image of {width}x{height} pixels is too large")
            orientation = im.getexif().get(_ORIENTATION_TAG)
            if orientation in _SWAPPING_ORIENTATIONS:
                width, height = height, width
            # For JPEG, decode at a reduced scale (1/2..1/8) close to the target: far less
            # memory and time than decoding every pixel of a large photo.
            im.draft("RGB", (THUMBNAIL_SIZE[0] * 2, THUMBNAIL_SIZE[1] * 2))
            oriented = ImageOps.exif_transpose(im)
            oriented.thumbnail(THUMBNAIL_SIZE, Image.Resampling.LANCZOS)
            return _encode(oriented, width, height)
    except ImageRejected:
        raise
    except (
        UnidentifiedImageError,
        Image.DecompressionBombError,
        Image.DecompressionBombWarning,
        OSError,
        ValueError,
        SyntaxError,  # Pillow raises it for some malformed headers
        EOFError,
    ) as exc:
        # The class, not the text: Pillow's text names the file object it was given.
        raise ImageRejected(f"not a usable image ({type(exc).__name__})") from exc


def _has_alpha(im: Image.Image) -> bool:
    return im.mode in ("RGBA", "LA", "PA", "La", "RGBa") or (
        im.mode == "P" and "transparency" in im.info
    )


def _encode(im: Image.Image, width: int, height: int) -> Thumbnail:
    alpha = _has_alpha(im)
    mode = "RGBA" if alpha else "RGB"
    pixels = im.convert(mode)
    # A fresh image carries pixels only: no EXIF, ICC profile, comments or text chunks.
    clean = Image.new(mode, pixels.size)
    clean.paste(pixels)
    out = io.BytesIO()
    if alpha:
        clean.save(out, format="PNG", optimize=True)
        return Thumbnail(width, height, out.getvalue(), "image/png")
    clean.save(out, format="JPEG", quality=82, optimize=True)
    return Thumbnail(width, height, out.getvalue(), "image/jpeg")
