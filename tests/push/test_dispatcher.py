"""The dispatcher end to end: real senders, a real store, a fake push service on a socket."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from chatd.push.dispatcher import PushDispatcher
from chatd.push.vapid import VapidKeys
from chatd.push.webhook import WebhookSender
from chatd.push.webpush import WebPushSender
from chatd.store import Store
from tests.push.conftest import Chat, Presence, PushService

Factory = Callable[..., PushDispatcher]


@pytest.fixture
async def make_dispatcher(
    push_service: PushService, presence: Presence
) -> AsyncIterator[Callable[..., Any]]:
    """Builds started dispatchers with a webpush and a webhook sender; closes them after."""
    made: list[PushDispatcher] = []
    vapid = VapidKeys.generate("mailto:ops@example.org")
    push_service.vapid_key = vapid.public_key_b64

    async def make(store: Store, **kwargs: Any) -> PushDispatcher:
        timeout = kwargs.pop("request_timeout_s", 5.0)
        senders = {
            "webpush": WebPushSender(vapid, timeout_s=timeout, allow_private_hosts=True),
            "webhook": WebhookSender(timeout_s=timeout, allow_private_hosts=True),
        }
        kwargs.setdefault("coalesce_window_s", 0.0)
        kwargs.setdefault("backoff_base_s", 0.01)
        dispatcher = PushDispatcher(
            store,
            senders,
            is_online=presence.is_online,
            request_timeout_s=timeout,
            **kwargs,
        )
        await dispatcher.start()
        made.append(dispatcher)
        return dispatcher

    yield make
    for dispatcher in made:
        await asyncio.wait_for(dispatcher.close(), 5)


async def drained(dispatcher: PushDispatcher, within: float = 5.0) -> None:
    await asyncio.wait_for(dispatcher.drain(), within)


async def test_offline_member_gets_an_encrypted_web_push(
    any_store: Store, push_service: PushService, make_dispatcher: Any
) -> None:
    chat = await Chat(any_store).setup()
    bob = push_service.browser("bob")
    await chat.subscribe("bob", "webpush", bob.subscription_json())
    dispatcher = await make_dispatcher(any_store)

    message = await chat.say("lunch at noon?")
    dispatcher.notify(message, chat.others(), "ops")
    await push_service.wait_for(lambda: len(push_service.received) == 1)

    got = push_service.received[0]
    assert got.error is None, got.error
    assert got.path == "/wp/bob"
    assert got.claims is not None
    assert got.claims["aud"] == push_service.base
    assert got.claims["sub"] == "mailto:ops@example.org"
    assert time.time() < got.claims["exp"] <= time.time() + 24 * 3600
    assert got.headers["TTL"] == "86400"
    assert got.headers["Urgency"] == "normal"
    assert len(got.headers["Topic"]) <= 32
    assert got.payload == {
        "type": "message",
        "conv": "g1",
        "conv_title": "ops",
        "from": "alice",
        "seq": message.seq,
        "msg_id": message.msg_id,
        "ts": message.ts,
        "count": 1,
        "preview": "lunch at noon?",
        "title": "alice in ops",
        "message": "lunch at noon?",
    }
    await drained(dispatcher)
    assert dispatcher.sent == 1 and dispatcher.failed == 0


async def test_webhook_receives_the_json_document(
    chat: Chat, push_service: PushService, make_dispatcher: Any
) -> None:
    await chat.subscribe("carol", "webhook", {"url": push_service.hook_url("carol")})
    dispatcher = await make_dispatcher(chat.store)

    message = await chat.say("deploy done")
    # No title given: the dispatcher looks the conversation's title up.
    dispatcher.notify(message, chat.others(), None)
    await push_service.wait_for(lambda: len(push_service.received) == 1)

    got = push_service.received[0]
    assert got.path == "/hook/carol"
    assert got.headers["Content-Type"] == "application/json"
    assert got.payload is not None
    assert {k: got.payload[k] for k in ("conv", "from", "seq", "preview", "ts", "count")} == {
        "conv": "g1",
        "from": "alice",
        "seq": message.seq,
        "preview": "deploy done",
        "ts": message.ts,
        "count": 1,
    }
    assert got.payload["title"] == "alice in ops"


async def test_online_member_is_not_notified(
    chat: Chat, push_service: PushService, presence: Presence, make_dispatcher: Any
) -> None:
    await chat.subscribe("bob", "webhook", {"url": push_service.hook_url("bob")})
    await chat.subscribe("carol", "webhook", {"url": push_service.hook_url("carol")})
    presence.online = {"bob"}
    dispatcher = await make_dispatcher(chat.store)

    dispatcher.notify(await chat.say("hi"), chat.others(), "ops")
    await drained(dispatcher)

    assert [r.path for r in push_service.received] == ["/hook/carol"]
    assert dispatcher.skipped_online == 1


async def test_sender_is_never_notified(
    chat: Chat, push_service: PushService, make_dispatcher: Any
) -> None:
    await chat.subscribe("alice", "webhook", {"url": push_service.hook_url("alice")})
    dispatcher = await make_dispatcher(chat.store)

    dispatcher.notify(await chat.say("hi"), list(chat.members), "ops")
    await drained(dispatcher)

    assert push_service.received == []


async def test_muted_conversation_is_not_notified(
    any_store: Store, push_service: PushService, make_dispatcher: Any
) -> None:
    chat = await Chat(any_store).setup()
    await chat.subscribe("bob", "webhook", {"url": push_service.hook_url("bob")})
    await chat.subscribe("carol", "webhook", {"url": push_service.hook_url("carol")})
    await any_store.set_muted("g1", "bob", True)
    dispatcher = await make_dispatcher(any_store)

    dispatcher.notify(await chat.say("hi"), chat.others(), "ops")
    await drained(dispatcher)

    assert [r.path for r in push_service.received] == ["/hook/carol"]
    assert dispatcher.skipped_muted == 1


@pytest.mark.parametrize("status", [410, 404])
async def test_gone_endpoint_prunes_the_subscription(
    any_store: Store, push_service: PushService, make_dispatcher: Any, status: int
) -> None:
    chat = await Chat(any_store).setup()
    bob = push_service.browser("bob")
    dead = await chat.subscribe("bob", "webpush", bob.subscription_json())
    alive = await chat.subscribe("bob", "webhook", {"url": push_service.hook_url("bob")})
    push_service.answer("/wp/bob", status)
    dispatcher = await make_dispatcher(any_store)

    dispatcher.notify(await chat.say("hi"), chat.others(), "ops")
    await drained(dispatcher)

    assert len(push_service.at("/wp/bob")) == 1  # no retry on 404/410
    assert [s.id for s in await any_store.push_subscriptions(["bob"])] == [alive.id]
    assert dead.id != alive.id
    assert dispatcher.pruned == 1 and dispatcher.sent == 1


async def test_server_error_is_retried_then_given_up(
    chat: Chat, push_service: PushService, make_dispatcher: Any
) -> None:
    bob = push_service.browser("bob")
    sub = await chat.subscribe("bob", "webpush", bob.subscription_json())
    push_service.answer("/wp/bob", 500)
    dispatcher = await make_dispatcher(chat.store, max_retries=2)

    dispatcher.notify(await chat.say("hi"), chat.others(), "ops")
    await drained(dispatcher)

    attempts = push_service.at("/wp/bob")
    assert len(attempts) == 3  # the first try and two retries
    assert all(a.error is None for a in attempts)
    assert attempts[1].at - attempts[0].at >= 0.004  # backed off, not hammered
    assert dispatcher.failed == 1 and dispatcher.retried == 2 and dispatcher.sent == 0
    assert [s.id for s in await chat.store.push_subscriptions(["bob"])] == [sub.id]


async def test_rate_limited_then_accepted(
    chat: Chat, push_service: PushService, make_dispatcher: Any
) -> None:
    await chat.subscribe("bob", "webhook", {"url": push_service.hook_url("bob")})
    push_service.answer("/hook/bob", 429, 503, 200)
    dispatcher = await make_dispatcher(chat.store, max_retries=3)

    dispatcher.notify(await chat.say("hi"), chat.others(), "ops")
    await drained(dispatcher)

    assert len(push_service.at("/hook/bob")) == 3
    assert dispatcher.sent == 1 and dispatcher.failed == 0 and dispatcher.retried == 2


async def test_hanging_push_service_delays_nobody(
    chat: Chat, push_service: PushService, make_dispatcher: Any
) -> None:
    bob = push_service.browser("bob")
    await chat.subscribe("bob", "webpush", bob.subscription_json())
    await chat.subscribe("carol", "webhook", {"url": push_service.hook_url("carol")})
    push_service.answer("/wp/bob", "hang")  # answers after 30 s
    dispatcher = await make_dispatcher(chat.store, request_timeout_s=0.5, max_retries=0)

    started = time.monotonic()
    for _ in range(5):
        dispatcher.notify(await chat.say("hi"), chat.others(), "ops")
    # notify() only enqueues, whatever the push services do.
    assert time.monotonic() - started < 0.5

    # Carol's five pushes arrive while bob's endpoint is hanging.
    await push_service.wait_for(lambda: len(push_service.at("/hook/carol")) == 5, within=2.0)
    assert time.monotonic() - started < 2.0
    # Bob's sends are cut off by the per-request timeout and counted as failed.
    await drained(dispatcher, within=3.0)
    assert time.monotonic() - started < 3.0
    assert dispatcher.failed == 5 and dispatcher.sent == 5


async def test_burst_of_50_is_coalesced(
    chat: Chat, push_service: PushService, make_dispatcher: Any
) -> None:
    await chat.subscribe("bob", "webhook", {"url": push_service.hook_url("bob")})
    window = 0.5
    dispatcher = await make_dispatcher(chat.store, coalesce_window_s=window)

    messages = [await chat.say(f"message {i}") for i in range(50)]
    for message in messages:
        dispatcher.notify(message, chat.others(), "ops")

    # The first message at once, the other 49 folded into one when the window ends.
    await push_service.wait_for(lambda: len(push_service.at("/hook/bob")) == 2, within=3.0)
    first, second = (r.payload for r in push_service.at("/hook/bob"))
    assert first is not None and second is not None
    assert first["seq"] == messages[0].seq and first["count"] == 1
    assert second["seq"] == messages[-1].seq and second["count"] == 49
    assert second["preview"] == "message 49"
    assert second["message"] == "49 new messages: message 49"
    assert dispatcher.coalesced == 49  # carol has no subscription: no window for her

    # Nothing else was pending: the window closes without another notification.
    await asyncio.sleep(window * 2.5)
    assert len(push_service.at("/hook/bob")) == 2

    # After a quiet window, the next message goes out at once again.
    t0 = time.monotonic()
    dispatcher.notify(await chat.say("later"), chat.others(), "ops")
    await push_service.wait_for(lambda: len(push_service.at("/hook/bob")) == 3, within=2.0)
    assert time.monotonic() - t0 < window


async def test_pending_notification_dropped_if_user_came_online(
    chat: Chat, push_service: PushService, presence: Presence, make_dispatcher: Any
) -> None:
    await chat.subscribe("bob", "webhook", {"url": push_service.hook_url("bob")})
    dispatcher = await make_dispatcher(chat.store, coalesce_window_s=0.3)

    for _ in range(3):
        dispatcher.notify(await chat.say("x"), chat.others(), "ops")
    await push_service.wait_for(lambda: len(push_service.at("/hook/bob")) == 1)
    presence.online = {"bob"}
    await asyncio.sleep(0.7)
    await drained(dispatcher)
    assert len(push_service.at("/hook/bob")) == 1


async def test_previews_off_sends_no_text(
    chat: Chat, push_service: PushService, make_dispatcher: Any
) -> None:
    bob = push_service.browser("bob")
    await chat.subscribe("bob", "webpush", bob.subscription_json())
    await chat.subscribe("carol", "webhook", {"url": push_service.hook_url("carol")})
    dispatcher = await make_dispatcher(chat.store, previews=False)

    dispatcher.notify(await chat.say("the secret plan"), chat.others(), "ops")
    await drained(dispatcher)

    assert len(push_service.received) == 2
    for got in push_service.received:
        assert got.error is None and got.payload is not None
        assert got.payload["preview"] is None
        assert got.payload["message"] == "New message"
        assert "secret" not in repr(got.payload)
    webhook = push_service.at("/hook/carol")[0]
    assert b"secret" not in webhook.body


async def test_preview_is_cut_to_100_characters(
    chat: Chat, push_service: PushService, make_dispatcher: Any
) -> None:
    bob = push_service.browser("bob")
    await chat.subscribe("bob", "webpush", bob.subscription_json())
    dispatcher = await make_dispatcher(chat.store)
    body = "".join(chr(ord("a") + i % 26) for i in range(300))

    dispatcher.notify(await chat.say(body), chat.others(), "ops")
    await push_service.wait_for(lambda: len(push_service.received) == 1)

    payload = push_service.received[0].payload
    assert payload is not None
    assert len(payload["preview"]) == 100
    assert payload["preview"] == body[:99] + "\u2026"


async def test_full_queue_drops_instead_of_blocking(
    chat: Chat, push_service: PushService, presence: Presence
) -> None:
    # Not started: nothing drains the queue.
    dispatcher = PushDispatcher(chat.store, {}, is_online=presence.is_online, queue_size=3)
    message = await chat.say("hi")
    for _ in range(5):
        dispatcher.notify(message, chat.others(), "ops")
    assert dispatcher.dropped == 2
    await dispatcher.close()
    dispatcher.notify(message, chat.others(), "ops")
    assert dispatcher.dropped == 3


async def test_private_addresses_are_refused_by_default(
    chat: Chat, push_service: PushService, presence: Presence
) -> None:
    await chat.subscribe("bob", "webhook", {"url": push_service.hook_url("bob")})
    await chat.subscribe("carol", "webhook", {"url": "http://localhost:9/hook"})
    dispatcher = PushDispatcher(
        chat.store, {"webhook": WebhookSender()}, is_online=presence.is_online, max_retries=3
    )
    await dispatcher.start()
    try:
        dispatcher.notify(await chat.say("hi"), chat.others(), "ops")
        await drained(dispatcher)
    finally:
        await dispatcher.close()
    assert push_service.received == []
    # Refused without retrying: a private address will not become public.
    assert dispatcher.failed == 2 and dispatcher.attempts == 2
