"""The notifications switch: on subscribes this browser through the service worker and hands
the subscription to chatd; off deletes it on the server and in the browser.

The browser's own push service (FCM for Chromium) is outside chatd and unreachable from a
test machine, so ``PushManager`` is replaced in the page by a stand-in that returns a
subscription with a real P-256 key, as the push service would. Everything else is real: the
service worker registration, the permission, chatd's VAPID key and subscription endpoints
(the shared server of ``tests/web`` runs with ``--push webpush``).
"""

from __future__ import annotations

import base64
import json
import os
import urllib.request
from collections.abc import Callable
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from playwright.sync_api import Browser, expect

from tests.e2e.server import ChatdServer, ServerFactory

from .client import WAIT_MS, WebUser

ENDPOINT = "https://push.example.com/send/fake-subscription"


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def fake_push_service(refuse: str | None = None) -> str:
    """The stand-in for the browser's push service; ``refuse`` makes it fail like FCM can."""
    key = ec.generate_private_key(ec.SECP256R1()).public_key()
    point = key.public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    subscription = {
        "endpoint": ENDPOINT,
        "keys": {"p256dh": b64url(point), "auth": b64url(os.urandom(16))},
    }
    return f"""
        (() => {{
            let current = null;
            const make = (options) => ({{
                endpoint: {json.dumps(ENDPOINT)},
                options,
                toJSON: () => ({json.dumps(subscription)}),
                unsubscribe: async () => {{ current = null; return true; }},
            }});
            PushManager.prototype.subscribe = async function (options) {{
                const refuse = {json.dumps(refuse)};
                if (refuse) throw new DOMException(refuse, "AbortError");
                if (!(options.applicationServerKey instanceof Uint8Array)
                    || options.applicationServerKey.length !== 65) {{
                    throw new Error("applicationServerKey is not a P-256 public key");
                }}
                current = make(options);
                return current;
            }};
            PushManager.prototype.getSubscription = async function () {{ return current; }};
        }})();
    """


def subscriptions(server: ChatdServer, user: WebUser) -> list[dict[str, Any]]:
    token = user.page.evaluate("localStorage.getItem('chatd-token')")
    request = urllib.request.Request(
        server.base_url + "/api/v1/push/subscriptions",
        headers={"Authorization": f"Bearer {token}"},
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        return list(json.load(response)["subscriptions"])


def test_push_toggle_subscribes_and_unsubscribes(
    web_user: Callable[..., WebUser], server: ChatdServer
) -> None:
    alice = web_user("alice", permissions=["notifications"])
    alice.context.add_init_script(fake_push_service())
    alice.page.reload()
    alice.expect_online()

    alice.page.click("#menu-button")
    toggle = alice.page.locator("#push-toggle")
    expect(toggle).not_to_be_checked(timeout=WAIT_MS)
    expect(alice.page.locator("#push-status")).to_contain_text("Off", timeout=WAIT_MS)
    toggle.click()
    expect(alice.page.locator("#push-status")).to_contain_text("On", timeout=WAIT_MS)
    expect(toggle).to_be_checked(timeout=WAIT_MS)
    assert [s["target"] for s in subscriptions(server, alice)] == [ENDPOINT]
    assert alice.page.evaluate(
        "navigator.serviceWorker.getRegistration('/').then(r => Boolean(r && r.active))"
    )

    toggle.click()
    expect(alice.page.locator("#push-status")).to_contain_text("Off", timeout=WAIT_MS)
    expect(toggle).not_to_be_checked(timeout=WAIT_MS)
    assert subscriptions(server, alice) == []


def test_push_refused_by_the_browser_stays_off_and_says_why(
    web_user: Callable[..., WebUser], server: ChatdServer
) -> None:
    alice = web_user("alice", permissions=["notifications"])
    alice.context.add_init_script(fake_push_service(refuse="push service not available"))
    alice.page.reload()
    alice.expect_online()
    alice.page.click("#menu-button")
    alice.page.locator("#push-toggle").click()
    expect(alice.page.locator("#push-status")).to_have_text(
        "The browser could not subscribe: push service not available", timeout=WAIT_MS
    )
    expect(alice.page.locator("#push-toggle")).not_to_be_checked(timeout=WAIT_MS)
    assert subscriptions(server, alice) == []


def test_push_on_a_server_without_web_push_says_so(
    browser: Browser, server_factory: ServerFactory
) -> None:
    webhooks_only = server_factory(push="webhook")  # no Web Push: no VAPID key to give out
    alice = WebUser.open(browser, webhooks_only, "alice", permissions=["notifications"])
    try:
        alice.register()
        alice.page.click("#menu-button")
        alice.page.locator("#push-toggle").click()
        expect(alice.page.locator("#push-status")).to_have_text(
            "Push notifications are not enabled on this server.", timeout=WAIT_MS
        )
        expect(alice.page.locator("#push-toggle")).not_to_be_checked(timeout=WAIT_MS)
    finally:
        alice.close()


def test_a_notification_link_opens_its_conversation(web_user: Callable[..., WebUser]) -> None:
    alice = web_user("alice")
    bob = web_user("bob")
    alice.start_chat(bob.name)
    alice.send("see the notification?")
    conv = alice.conversation(bob.name).get_attribute("data-conv")
    assert conv
    # What the service worker opens when a notification is clicked (sw.js).
    bob.page.goto(f"{bob.server.base_url}/#conv={conv}")
    expect(bob.page.locator("#chat-title")).to_have_text(alice.name, timeout=WAIT_MS)
    bob.expect_message("see the notification?")
    expect(bob.page.locator("#chat-subtitle")).to_have_text("online", timeout=WAIT_MS)
