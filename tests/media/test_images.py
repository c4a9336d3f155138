"""MIME sniffing and thumbnails."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from chatd.media.images import ImageRejected, make_thumbnail, sniff
from tests.media.images_util import jpeg_with_orientation, png_bomb_header, png_bytes

SNIFF_TABLE = [
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "image/png"),
    (b"\xff\xd8\xff\xe0\x00\x10JFIF", "image/jpeg"),
    (b"GIF89a\x01\x00", "image/gif"),
    (b"GIF87a\x01\x00", "image/gif"),
    (b"RIFF\x24\x00\x00\x00WEBPVP8 ", "image/webp"),
    (b"RIFF\x24\x00\x00\x00WAVEfmt ", "audio/wav"),
    (b"%PDF-1.7\n%\xe2\xe3", "application/pdf"),
    (b"PK\x03\x04\x14\x00", "application/zip"),
    (b"PK\x05\x06" + b"\x00" * 18, "application/zip"),
    (b"\x00\x00\x00\x18ftypmp42\x00\x00", "video/mp4"),
    (b"\x00\x00\x00\x20ftypisom\x00\x00", "video/mp4"),
    (b"\x00\x00\x00\x20ftypM4A \x00\x00", "audio/mp4"),
    (b"ID3\x04\x00\x00\x00\x00", "audio/mpeg"),
    (b"\xff\xfb\x90\x64\x00", "audio/mpeg"),
    (b"OggS\x00\x02", "audio/ogg"),
    (b"\x1aE\xdf\xa3\x9fB\x86", "video/webm"),
    (b"<!DOCTYPE html><html><body>x</body></html>", "text/html"),
    (b"\xef\xbb\xbf  \n<html lang=en>", "text/html"),
    (b"<script>alert(1)</script>", "text/html"),
    (b"<!-- a comment --><p>", "text/html"),
    (b"<svg xmlns='http://www.w3.org/2000/svg'><script>alert(1)</script></svg>", "image/svg+xml"),
    (b"<?xml version='1.0'?>\n<svg xmlns='http://www.w3.org/2000/svg'/>", "image/svg+xml"),
    (b"<?xml version='1.0'?>\n<note><to>x</to></note>", "application/xml"),
    (b"<bold>not a tag we know", "text/plain"),
    (b"hello world\n", "text/plain"),
    ("h\u00e9llo w\u00f6rld \u2603".encode(), "text/plain"),
    ("\u2603".encode()[:2], "text/plain"),  # a character cut at the end of the sniffed prefix
    (b"", "text/plain"),
    (b"\x00\x01\x02\x03binary", "application/octet-stream"),
    (b"\xc3\x28 invalid utf-8 in the middle", "application/octet-stream"),
    (b"\xff\xd8 too short for jpeg", "application/octet-stream"),
]


@pytest.mark.parametrize(("head", "mime"), SNIFF_TABLE)
def test_sniff(head: bytes, mime: str) -> None:
    assert sniff(head) == mime


def test_sniff_real_images() -> None:
    assert sniff(png_bytes(4, 4)[:4096]) == "image/png"
    assert sniff(jpeg_with_orientation(8, 8, 1)[:4096]) == "image/jpeg"


def _open(data: bytes) -> Image.Image:
    im = Image.open(io.BytesIO(data))
    im.load()
    return im


def test_thumbnail_of_large_png_is_at_most_320() -> None:
    thumb = make_thumbnail(png_bytes(2000, 1000), "image/png")
    assert (thumb.width, thumb.height) == (2000, 1000)
    assert thumb.mime == "image/jpeg"  # opaque
    im = _open(thumb.data)
    assert im.format == "JPEG"
    assert im.size == (320, 160)


def test_thumbnail_of_transparent_png_is_png() -> None:
    thumb = make_thumbnail(png_bytes(640, 640, alpha=True), "image/png")
    assert thumb.mime == "image/png"
    im = _open(thumb.data)
    assert (im.format, im.mode, im.size) == ("PNG", "RGBA", (320, 320))


def test_small_image_is_not_enlarged() -> None:
    thumb = make_thumbnail(png_bytes(40, 30), "image/png")
    assert _open(thumb.data).size == (40, 30)


def test_jpeg_thumbnail_applies_exif_orientation_and_strips_metadata() -> None:
    # Orientation 6: displayed turned 90 degrees clockwise, so the stored left half (red) is
    # at the top of the displayed image, and the displayed size is 1000 wide x 2000 high.
    data = jpeg_with_orientation(2000, 1000, 6)
    thumb = make_thumbnail(data, "image/jpeg")
    assert (thumb.width, thumb.height) == (1000, 2000)
    im = _open(thumb.data)
    assert im.format == "JPEG"
    assert im.size == (160, 320)
    top = im.getpixel((80, 20))
    bottom = im.getpixel((80, 300))
    assert isinstance(top, tuple) and isinstance(bottom, tuple)
    assert top[0] > 200 and top[2] < 60, top  # red
    assert bottom[2] > 200 and bottom[0] < 60, bottom  # blue
    assert len(im.getexif()) == 0
    assert "exif" not in im.info and "comment" not in im.info
    assert b"SecretCameraMaker" not in thumb.data and b"private comment" not in thumb.data


def test_unrotated_jpeg_keeps_its_shape() -> None:
    thumb = make_thumbnail(jpeg_with_orientation(2000, 1000, 1), "image/jpeg")
    assert (thumb.width, thumb.height) == (2000, 1000)
    assert _open(thumb.data).size == (320, 160)


def test_decompression_bomb_is_refused_from_its_header() -> None:
    bomb = png_bomb_header(30_000, 30_000)
    assert len(bomb) < 1000
    with pytest.raises(ImageRejected):
        make_thumbnail(bomb, "image/png")


def test_pixel_limit_is_configurable() -> None:
    with pytest.raises(ImageRejected, match="too large"):
        make_thumbnail(png_bytes(200, 200), "image/png", max_pixels=200 * 199)
    make_thumbnail(png_bytes(200, 200), "image/png", max_pixels=200 * 200)


@pytest.mark.parametrize(
    ("data", "mime"),
    [
        (b"\x89PNG\r\n\x1a\n garbage after the signature", "image/png"),
        (png_bytes(50, 50)[:100], "image/png"),  # truncated
        (png_bytes(50, 50), "image/jpeg"),  # only the sniffed format is tried
        (b"%PDF-1.7", "application/pdf"),
    ],
)
def test_broken_images_are_refused_cleanly(data: bytes, mime: str) -> None:
    with pytest.raises(ImageRejected):
        make_thumbnail(data, mime)


@pytest.mark.parametrize(
    ("mode", "fmt", "thumb_mime"),
    [
        ("L", "PNG", "image/jpeg"),
        ("LA", "PNG", "image/png"),
        ("1", "PNG", "image/jpeg"),
        ("P", "PNG", "image/jpeg"),
        ("I;16", "PNG", "image/jpeg"),
        ("CMYK", "JPEG", "image/jpeg"),
        ("L", "JPEG", "image/jpeg"),
        ("P", "GIF", "image/jpeg"),
        ("RGBA", "WEBP", "image/png"),
        ("RGB", "WEBP", "image/jpeg"),
    ],
)
def test_every_common_pixel_mode_makes_a_thumbnail(mode: str, fmt: str, thumb_mime: str) -> None:
    out = io.BytesIO()
    Image.new(mode, (700, 500)).save(out, format=fmt)
    data = out.getvalue()
    mime = sniff(data[:4096])
    thumb = make_thumbnail(data, mime)
    assert (thumb.width, thumb.height, thumb.mime) == (700, 500, thumb_mime)
    assert _open(thumb.data).size == (320, 229)


def test_transparent_gif_thumbnail_is_png() -> None:
    im = Image.new("P", (400, 400))
    out = io.BytesIO()
    im.save(out, format="GIF", transparency=0)
    assert make_thumbnail(out.getvalue(), "image/gif").mime == "image/png"
