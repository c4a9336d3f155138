"""The pure serving rules: types, filenames, ranges."""

from __future__ import annotations

import pytest

from chatd.media.rules import (
    MAX_FILENAME_CHARS,
    ByteRange,
    RangeNotSatisfiable,
    content_disposition,
    parse_range,
    sanitize_filename,
    served_headers,
)


@pytest.mark.parametrize("mime", ["image/png", "image/jpeg", "image/gif", "video/mp4"])
def test_safe_types_are_served_inline_as_themselves(mime: str) -> None:
    headers = served_headers(mime, "a.bin")
    assert headers["Content-Type"] == mime
    assert headers["Content-Disposition"].startswith("inline;")
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["Content-Security-Policy"] == "sandbox"


def test_text_is_served_with_a_charset() -> None:
    assert served_headers("text/plain", "a.txt")["Content-Type"] == "text/plain; charset=utf-8"


@pytest.mark.parametrize(
    "mime",
    [
        "text/html",
        "image/svg+xml",
        "application/xml",
        "text/javascript",
        "application/javascript",
        "application/pdf",
        "application/zip",
        "application/octet-stream",
        "text/xml",
        "application/xhtml+xml",
        "something/unknown",
    ],
)
def test_types_a_browser_could_run_are_downloads(mime: str) -> None:
    headers = served_headers(mime, "page.html")
    assert headers["Content-Type"] == "application/octet-stream"
    assert headers["Content-Disposition"].startswith("attachment;")
    assert headers["Content-Security-Policy"] == "sandbox"
    assert headers["X-Content-Type-Options"] == "nosniff"


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("photo.png", "photo.png"),
        ("../../etc/passwd", "passwd"),
        ("C:\\Users\\x\\evil.exe", "evil.exe"),
        ("a\x00b\r\nc.txt", "abc.txt"),
        ("  .hidden  ", "hidden"),
        ("...", "file"),
        ("", "file"),
        (None, "file"),
        ("x/", "file"),
        ("r\u00e9sum\u00e9 \u2603.pdf", "r\u00e9sum\u00e9 \u2603.pdf"),
        ("evil\u202egnp.exe", "evilgnp.exe"),  # bidi override dropped
        ("a\tb\u00a0c\u2028d", "a b c d"),
    ],
)
def test_sanitize_filename(raw: str | None, clean: str) -> None:
    assert sanitize_filename(raw) == clean


def test_long_filenames_keep_their_extension() -> None:
    name = sanitize_filename("n" * 500 + ".jpeg")
    assert len(name) == MAX_FILENAME_CHARS
    assert name.endswith(".jpeg")
    assert len(sanitize_filename("z" * 500)) == MAX_FILENAME_CHARS


def test_content_disposition_is_header_safe() -> None:
    value = content_disposition("attachment", 'we"ird;na%me \u00e9\r\n.txt')
    assert "\r" not in value and "\n" not in value
    assert value == (
        'attachment; filename="we_ird;na_me _.txt"; '
        "filename*=UTF-8''we%22ird%3Bna%25me%20%C3%A9.txt"
    )


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, None),
        ("", None),
        ("bytes=0-99", ByteRange(0, 100, 1000)),
        ("bytes=100-", ByteRange(100, 1000, 1000)),
        ("bytes=-100", ByteRange(900, 1000, 1000)),
        ("bytes=-5000", ByteRange(0, 1000, 1000)),
        ("bytes=990-5000", ByteRange(990, 1000, 1000)),
        ("bytes=999-999", ByteRange(999, 1000, 1000)),
        ("Bytes = 1 - 2", ByteRange(1, 3, 1000)),
        ("bytes=0-1,5-6", None),  # several ranges: the whole blob
        ("items=0-1", None),
        ("bytes=5-1", None),
        ("bytes=-", None),
    ],
)
def test_parse_range(header: str | None, expected: ByteRange | None) -> None:
    assert parse_range(header, 1000) == expected


@pytest.mark.parametrize("header", ["bytes=1000-", "bytes=5000-6000", "bytes=-0"])
def test_unsatisfiable_ranges(header: str) -> None:
    with pytest.raises(RangeNotSatisfiable):
        parse_range(header, 1000)


def test_byte_range_headers() -> None:
    r = ByteRange(10, 20, 100)
    assert (r.length, r.content_range()) == (10, "bytes 10-19/100")
