"""Provider selection, VAPID keys and the pieces with no I/O."""

from __future__ import annotations

import asyncio
import os
import stat
import time
from pathlib import Path

import pytest
from py_vapid import Vapid02

from chatd.errors import ConfigError
from chatd.models import MediaItem, Message, PushSubscription
from chatd.push import open_push
from chatd.push.base import PushResult, parse_retry_after
from chatd.push.dispatcher import PushDispatcher, build_payload, preview_of
from chatd.push.http import (
    PrivateHostError,
    PublicResolver,
    check_endpoint_url,
    literal_host_refused,
)
from chatd.push.log import LogSender
from chatd.push.vapid import KEY_FILE, VapidKeys
from chatd.push.webhook import WebhookSender, check_webhook
from chatd.push.webpush import WebPushSender, check_subscription
from chatd.store import Store
from tests.push.conftest import Browser, Chat, Presence, verify_vapid


def test_default_is_log_for_every_kind(tmp_path: Path) -> None:
    providers = open_push("log", data_dir=tmp_path)
    assert providers.names == ("log",)
    assert set(providers.senders) == {"webpush", "webhook"}
    assert isinstance(providers.senders["webpush"], LogSender)
    assert providers.senders["webpush"] is providers.senders["webhook"]
    # Keys exist in log mode too, so a browser can subscribe to a development server.
    assert providers.vapid is not None


def test_real_providers_by_name(tmp_path: Path) -> None:
    providers = open_push(" webpush, webhook ", data_dir=tmp_path, vapid_subject="https://x.org")
    assert providers.names == ("webpush", "webhook")
    assert isinstance(providers.senders["webpush"], WebPushSender)
    assert isinstance(providers.senders["webhook"], WebhookSender)
    only_hooks = open_push("webhook", data_dir=tmp_path)
    assert only_hooks.accepts("webhook") and not only_hooks.accepts("webpush")


@pytest.mark.parametrize(
    ("spec", "needle"),
    [
        ("pigeon", "unknown push provider 'pigeon'"),
        ("webpush,fcm", "unknown push provider 'fcm'"),
        ("log,webhook", "cannot be combined"),
        (" , ", "empty"),
    ],
)
def test_bad_provider_names_are_refused(tmp_path: Path, spec: str, needle: str) -> None:
    with pytest.raises(ConfigError) as info:
        open_push(spec, data_dir=tmp_path)
    assert needle in str(info.value)
    if "unknown" in needle:
        assert "log, webpush, webhook" in str(info.value)


def test_bad_vapid_subject_is_refused(tmp_path: Path) -> None:
    for spec in ("webpush", "log"):
        with pytest.raises(ConfigError, match="mailto"):
            open_push(spec, data_dir=tmp_path, vapid_subject="ops@example.org")


def test_unwritable_data_dir(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    # log mode only loses the keys (and says so); webpush cannot start without them.
    providers = open_push("log", data_dir=blocker / "data")
    assert providers.vapid is None and not providers.accepts("webpush")
    assert providers.accepts("webhook")
    with pytest.raises(ConfigError, match="cannot read or create the VAPID key"):
        open_push("webpush", data_dir=blocker / "data")


def test_vapid_key_is_created_once_and_kept(tmp_path: Path) -> None:
    first = VapidKeys.load_or_create(tmp_path / "data", "mailto:a@example.org")
    path = tmp_path / "data" / KEY_FILE
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    second = VapidKeys.load_or_create(tmp_path / "data", "mailto:a@example.org")
    assert second.public_key_b64 == first.public_key_b64
    # What a browser passes as applicationServerKey: 65 bytes, uncompressed point.
    assert len(first.public_key_bytes) == 65 and first.public_key_bytes[0] == 4
    # And through open_push, as a restarted server would.
    again = open_push("webpush", data_dir=tmp_path / "data")
    assert again.vapid is not None and again.vapid.public_key_b64 == first.public_key_b64
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == [KEY_FILE]


def test_unusable_key_file_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / KEY_FILE).write_text("not a key")
    with pytest.raises(ConfigError, match="not a usable PEM"):
        VapidKeys.load_or_create(tmp_path, "mailto:a@example.org")


def test_vapid_token_verifies_and_is_reused(tmp_path: Path) -> None:
    keys = VapidKeys.generate("mailto:a@example.org")
    now = time.time()
    header = keys.authorization("https://push.example.net/wpush/v2/abc", now)
    claims = verify_vapid(header, keys.public_key_b64)
    assert Vapid02.verify(header)  # and py-vapid, an independent implementation, agrees
    assert claims["aud"] == "https://push.example.net"
    assert claims["exp"] == int(now) + 12 * 3600
    assert keys.authorization("https://push.example.net/other", now + 60) == header
    assert keys.authorization("https://push.example.net/other", now + 12 * 3600) != header


def test_status_classification() -> None:
    assert PushResult.from_status(201).outcome == "delivered"
    assert PushResult.from_status(410).outcome == "gone"
    assert PushResult.from_status(404).outcome == "gone"
    limited = PushResult.from_status(429, retry_after=3)
    assert limited.outcome == "retry" and limited.retry_after == 3 and not limited.permanent
    assert PushResult.from_status(502).outcome == "retry"
    bad = PushResult.from_status(400)
    assert bad.outcome == "retry" and bad.permanent
    assert parse_retry_after("120") == 120.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") is None
    assert parse_retry_after(None) is None


def test_subscription_validation() -> None:
    good = Browser("https://push.example.net/x").subscription_json()
    assert check_subscription(good) == good
    cases = [
        ("nope", "must be an object"),
        ({**good, "endpoint": "ftp://x/y"}, "http:// or https://"),
        ({**good, "endpoint": None}, "endpoint must be a non-empty string"),
        ({"endpoint": good["endpoint"]}, "keys must be an object"),
        ({**good, "keys": {**good["keys"], "p256dh": "AAAA"}}, "not a base64url P-256"),
        ({**good, "keys": {**good["keys"], "auth": "AAAA"}}, "16 bytes"),
    ]
    for data, needle in cases:
        with pytest.raises(ValueError, match=needle):
            check_subscription(data)
    assert check_webhook({"url": "https://ntfy.sh/chatd-x?tpl=1"}) == {
        "url": "https://ntfy.sh/chatd-x?tpl=1"
    }
    with pytest.raises(ValueError, match="url must name a host"):
        check_webhook({"url": "http://"})
    with pytest.raises(ValueError, match="whitespace"):
        check_endpoint_url("https://a.example/ b")


def test_private_literals() -> None:
    assert literal_host_refused("http://127.0.0.1:6379/", False)
    assert literal_host_refused("http://[::1]/", False)
    assert literal_host_refused("http://169.254.169.254/latest", False)
    assert literal_host_refused("http://localhost:8080/", False)
    assert not literal_host_refused("https://8.8.8.8/", False)
    assert not literal_host_refused("https://push.example.net/", False)  # checked on resolve
    assert not literal_host_refused("http://127.0.0.1/", True)


def _message(body: str | None, **kw: object) -> Message:
    fields: dict[str, object] = {
        "conv": "c1",
        "seq": 5,
        "msg_id": "m5",
        "kind": "text",
        "sender": "alice",
        "client_id": None,
        "ts": 1,
        "body": body,
    }
    fields.update(kw)
    return Message(**fields)  # type: ignore[arg-type]


def test_previews() -> None:
    assert preview_of(_message("  two\n\nlines  ")) == "two lines"
    assert preview_of(_message("x" * 100)) == "x" * 100
    assert preview_of(_message("x" * 101)) == "x" * 99 + "\u2026"
    item = MediaItem("i", "alice", "image/png", 1, "cat.png", "00", 1)
    assert preview_of(_message(None, media=(item,))) == "\U0001f4ce cat.png"
    assert preview_of(_message(None, media=(item, item))) == "\U0001f4ce 2 files"
    system = _message(None, kind="system", event={"action": "add", "users": ["bob"]})
    assert preview_of(system) == "added bob"
    direct = build_payload(_message("hi"), None, 1, previews=True)
    assert direct["title"] == "alice" and direct["conv_title"] is None
    hidden = build_payload(_message("hi"), "ops", 3, previews=False)
    assert hidden["preview"] is None and hidden["message"] == "3 new messages"


async def test_log_provider_records_what_would_be_sent(
    chat: Chat, presence: Presence, tmp_path: Path
) -> None:
    providers = open_push("log", data_dir=tmp_path)
    await chat.subscribe("bob", "webhook", {"url": "https://ntfy.sh/x"})
    await chat.subscribe("carol", "webpush", Browser("https://p.example/1").subscription_json())
    dispatcher = PushDispatcher(chat.store, providers.senders, is_online=presence.is_online)
    await dispatcher.start()
    try:
        dispatcher.notify(await chat.say("hello"), chat.others(), "ops")
        await _drain(dispatcher)
    finally:
        await dispatcher.close()
    log = providers.senders["webpush"]
    assert isinstance(log, LogSender)
    assert log.sent == 2 and dispatcher.sent == 2
    assert sorted((r.user, r.kind) for r in log.records) == [
        ("bob", "webhook"),
        ("carol", "webpush"),
    ]
    assert all(r.payload["preview"] == "hello" for r in log.records)


async def _drain(dispatcher: PushDispatcher) -> None:
    await asyncio.wait_for(dispatcher.drain(), 5)


async def test_subscription_of_a_disabled_kind_is_skipped(
    store: Store, presence: Presence, tmp_path: Path
) -> None:
    chat = await Chat(store).setup()
    await chat.subscribe("bob", "webpush", Browser("https://p.example/1").subscription_json())
    dispatcher = PushDispatcher(store, {"webhook": WebhookSender()}, is_online=presence.is_online)
    await dispatcher.start()
    try:
        dispatcher.notify(await chat.say("hello"), chat.others(), "ops")
        await _drain(dispatcher)
    finally:
        await dispatcher.close()
    assert dispatcher.attempts == 0 and dispatcher.failed == 0
    assert [s.kind for s in await store.push_subscriptions(["bob"])] == ["webpush"]
    assert isinstance((await store.push_subscriptions(["bob"]))[0], PushSubscription)


async def test_resolver_refuses_names_of_private_addresses() -> None:
    resolver = PublicResolver()
    try:
        with pytest.raises(PrivateHostError):
            await asyncio.wait_for(resolver.resolve("localhost", 80), 5)
    finally:
        await resolver.close()
