"""A long conversation: the newest page first, older pages as one scrolls up, until the
beginning; every message once and in order. Day separators name the day."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import aiohttp
from playwright.sync_api import expect

from tests.e2e.client import Harness
from tests.e2e.server import ChatdServer

from .client import WAIT_MS, WebUser

COUNT = 130  # more than two pages of 50


async def _write(server: ChatdServer, to: str, count: int) -> str:
    """Another user, over the plain protocol, sends ``count`` numbered messages to ``to``."""
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        harness = Harness(server, http)
        try:
            writer = await harness.user("writer")
            ws = await harness.connect(writer)
            first = await ws.send("message 1", to=to)
            for n in range(2, count + 1):
                await ws.send(f"message {n}", conv=first["conv"])
            return writer.name
        finally:
            await harness.close()


def test_scrolling_up_loads_the_whole_history(
    web_user: Callable[..., WebUser], server: ChatdServer
) -> None:
    bob = web_user("bob")
    bob.page.goto("about:blank")  # away while the messages are written: nothing held live
    # Playwright's sync API keeps an event loop running in this thread: the writer gets its own.
    with ThreadPoolExecutor(1) as pool:
        job = pool.submit(
            lambda: asyncio.run(asyncio.wait_for(_write(server, bob.name, COUNT), 60))
        )
        writer = job.result(timeout=90)
    bob.page.goto(server.base_url + "/")  # still signed in (the token is in localStorage)
    bob.expect_online()
    entry = bob.conversation(writer)
    expect(entry.locator(".unread-badge")).to_have_text("99+", timeout=WAIT_MS)

    bob.open_conversation(writer)
    bodies = bob.page.locator("#message-list .message .body")
    expect(bodies.last).to_have_text(f"message {COUNT}", timeout=WAIT_MS)
    shown = bodies.count()
    assert shown < COUNT, "the first page should not be the whole history"

    state = bob.page.locator("#history-state")
    for _ in range(COUNT // 50 + 2):  # bounded: one scroll per page at most
        if state.text_content() == "This is the beginning of the conversation.":
            break
        bob.page.locator("#messages").evaluate("box => { box.scrollTop = 0; }")
        expect(bodies).not_to_have_count(shown, timeout=WAIT_MS)
        shown = bodies.count()
    expect(state).to_have_text("This is the beginning of the conversation.", timeout=WAIT_MS)
    # Every message was written today: one separator, "Today", above the first of them.
    days = bob.page.locator("#message-list li.day")
    expect(days).to_have_count(1, timeout=WAIT_MS)
    expect(days).to_have_text("Today")
    first_item = bob.page.locator("#message-list > li").first
    expect(first_item).to_have_class("day")
    bob.expect_bodies([f"message {n}" for n in range(1, COUNT + 1)])
    expect(entry.locator(".unread-badge")).to_have_count(0, timeout=WAIT_MS)


def test_day_separators_name_the_day(web_user: Callable[..., WebUser]) -> None:
    bob = web_user("bob", register=False)
    labels = bob.page.evaluate(
        """async () => {
            const ui = await import("/static/ui.js");
            const now = new Date();
            const at = (days) => new Date(now.getFullYear(), now.getMonth(),
                                          now.getDate() - days, 12).getTime();
            return [ui.dayLabel(at(0)), ui.dayLabel(at(1)), ui.dayLabel(at(3)),
                    ui.dayLabel(at(400))];
        }"""
    )
    assert labels[:2] == ["Today", "Yesterday"]
    assert labels[2] not in ("Today", "Yesterday") and labels[2]
    assert labels[3] != labels[2] and any(ch.isdigit() for ch in labels[3][-4:])
