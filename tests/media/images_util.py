"""Generated test images (no binary fixtures in the repository)."""

from __future__ import annotations

import io
import struct
import zlib

from PIL import Image


def png_bytes(width: int, height: int, *, alpha: bool = False, noise: bool = False) -> bytes:
    mode = "RGBA" if alpha else "RGB"
    if noise:
        import os

        im = Image.frombytes(mode, (width, height), os.urandom(width * height * len(mode)))
    else:
        im = Image.new(mode, (width, height), (10, 200, 30, 128) if alpha else (10, 200, 30))
    out = io.BytesIO()
    im.save(out, format="PNG")
    return out.getvalue()


def jpeg_with_orientation(width: int, height: int, orientation: int) -> bytes:
    """A JPEG whose left half is red and right half blue, with an EXIF orientation tag and
    some identifying metadata that a thumbnail must not carry."""
    im = Image.new("RGB", (width, height), (0, 0, 255))
    im.paste((255, 0, 0), (0, 0, width // 2, height))
    exif = Image.Exif()
    exif[0x0112] = orientation
    exif[0x010F] = "SecretCameraMaker"  # Make
    exif[0x8298] = "Copyright Someone"
    out = io.BytesIO()
    im.save(out, format="JPEG", quality=90, exif=exif.tobytes(), comment=b"a private comment")
    return out.getvalue()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return (
        struct.pack(">I", len(data))
        + kind
        + data
        + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    )


def png_bomb_header(width: int, height: int) -> bytes:
    """A tiny PNG claiming ``width`` x ``height`` pixels: decoding it would need gigabytes."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 4096)
    return (
        b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")
    )
