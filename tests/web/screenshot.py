"""Takes ``docs/screenshot-chat.png``: the web client in the middle of a realistic chat.

    .venv/bin/python -m tests.web.screenshot [OUTPUT.png]

Starts its own ``chatd serve`` on a temporary data dir (stopped by pid at the end), has
alice, bob and carol use it from three browser contexts, and photographs alice's window.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from playwright.sync_api import expect, sync_playwright

from tests.e2e.server import ServerFactory

from .client import CHROMIUM, WAIT_MS, WebUser, png_file

REPO = Path(__file__).resolve().parents[2]
DEFAULT_OUTPUT = REPO / "docs" / "screenshot-chat.png"


def take(output: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp, sync_playwright() as playwright:
        factory = ServerFactory(Path(tmp))
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox"], headless=True
        )
        try:
            server = factory()
            alice, bob, carol = (
                WebUser.open(browser, server, name, exact_name=True, **options)
                for name, options in [
                    ("alice", {"viewport": {"width": 1100, "height": 720}}),
                    ("bob", {}),
                    ("carol", {}),
                ]
            )
            for user in (alice, bob, carol):
                user.register()

            carol.create_group("Weekend trip", ["alice", "bob"])
            carol.send("Who brings the tent?")
            bob.open_conversation("Weekend trip")
            bob.send("I do! Carol, can you do food?")

            alice.start_chat("bob")
            alice.send("Are we still on for Saturday?")
            bob.open_conversation("alice")
            bob.send("Yes! Leaving at 8, I'll pick you up")
            alice.send("Perfect. This is where we're going:")
            picture = Path(tmp) / "lake.png"
            png_file(picture, 640, 400)
            alice.page.set_input_files("#file-input", str(picture))
            expect(bob.page.locator("img.thumb")).to_have_count(1, timeout=WAIT_MS)
            bob.send("Wow, that lake!")
            alice.send("Bring a swimsuit")
            alice.expect_tick("Bring a swimsuit", "read")
            carol.send("Food is on me")
            bob.type_without_sending("See you")
            expect(alice.page.locator("#typing")).to_have_text("typing…", timeout=WAIT_MS)
            alice.page.wait_for_function(
                "() => [...document.querySelectorAll('img.thumb')].every(i => i.naturalWidth)",
                timeout=WAIT_MS,
            )
            alice.page.screenshot(path=str(output))
        finally:
            browser.close()
            factory.close()


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_OUTPUT
    take(target)
    print(target)
