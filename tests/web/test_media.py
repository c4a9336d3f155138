"""Files in a chat: an image shows as a thumbnail to the other person, any file downloads."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

from playwright.sync_api import expect

from .client import WAIT_MS, WebUser, png_file

# <img src> cannot carry the bearer token: thumbnails are fetched and shown as blob: URLs.
BLOB_URL = re.compile(r"^blob:http://127\.0\.0\.1:\d+/")


def test_image_upload_is_a_thumbnail_for_the_other_user(
    web_user: Callable[..., WebUser], tmp_path: Path
) -> None:
    alice = web_user("alice")
    bob = web_user("bob")
    alice.start_chat(bob.name)
    alice.send("photo from the trip")
    bob.open_conversation(alice.name)
    bob.expect_message("photo from the trip")

    picture = tmp_path / "lake.png"
    png_file(picture, 640, 400)
    alice.page.set_input_files("#file-input", str(picture))  # what the + (attach) button opens

    for user in (alice, bob):
        thumb = user.page.locator("#message-list .message img.thumb")
        expect(thumb).to_have_count(1, timeout=WAIT_MS)
        expect(thumb).to_have_attribute("src", BLOB_URL, timeout=WAIT_MS)
        # Decoded: the browser really got an image through the authorized fetch.
        user.page.wait_for_function(
            "() => document.querySelector('img.thumb').naturalWidth > 0", timeout=WAIT_MS
        )
        expect(user.page.locator("#message-list .download .file-name")).to_have_text(
            "lake.png", timeout=WAIT_MS
        )
    expect(alice.page.locator("#message-list .message").last.locator(".tick")).to_have_attribute(
        "data-state", "read", timeout=WAIT_MS
    )

    # The download link hands over the original bytes under the original name.
    with bob.page.expect_download(timeout=WAIT_MS) as download_info:
        bob.page.click("#message-list .download")
    download = download_info.value
    assert download.suggested_filename == "lake.png"
    assert Path(download.path()).read_bytes() == picture.read_bytes()


def test_dropped_file_is_sent_with_a_download_link(
    web_user: Callable[..., WebUser],
) -> None:
    alice = web_user("alice")
    bob = web_user("bob")
    alice.start_chat(bob.name)
    alice.send("the notes")
    bob.open_conversation(alice.name)

    # Drag and drop from the desktop, as the page sees it: a drop event carrying a File.
    alice.page.evaluate(
        """() => {
            const data = new DataTransfer();
            data.items.add(new File(["line one\\nline two\\n"], "notes.txt", {type: "text/plain"}));
            const chat = document.getElementById("chat");
            chat.dispatchEvent(new DragEvent("dragenter", {dataTransfer: data, bubbles: true}));
            chat.dispatchEvent(new DragEvent("drop", {dataTransfer: data, bubbles: true}));
        }"""
    )
    link = bob.page.locator("#message-list .download")
    expect(link.locator(".file-name")).to_have_text("notes.txt", timeout=WAIT_MS)
    expect(link.locator(".file-size")).to_have_text(" · 18 B", timeout=WAIT_MS)
    expect(bob.page.locator("#message-list img.thumb")).to_have_count(0, timeout=WAIT_MS)
    expect(bob.conversation(alice.name).locator(".conversation-preview")).to_have_text(
        "File: notes.txt", timeout=WAIT_MS
    )
    with bob.page.expect_download(timeout=WAIT_MS) as download_info:
        link.click()
    assert Path(download_info.value.path()).read_text() == "line one\nline two\n"
