"""Typed application state: every shared object of the aiohttp app lives under one key here."""

from __future__ import annotations

import weakref
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from chatd.config import Settings
    from chatd.media.base import BlobStore
    from chatd.media.service import MediaService
    from chatd.metrics import Metrics
    from chatd.presence import PresenceTracker
    from chatd.push import PushProviders
    from chatd.push.dispatcher import PushDispatcher
    from chatd.routing.base import Bus
    from chatd.routing.router import Router
    from chatd.service.accounts import AccountService
    from chatd.service.chat import ChatService
    from chatd.store.base import Store
    from chatd.transport.ws import Connection, WriteCoalescer

SETTINGS: web.AppKey[Settings] = web.AppKey("settings")
STORE: web.AppKey[Store] = web.AppKey("store")
BUS: web.AppKey[Bus] = web.AppKey("bus")
ROUTER: web.AppKey[Router] = web.AppKey("router")
PRESENCE: web.AppKey[PresenceTracker] = web.AppKey("presence")
ACCOUNTS: web.AppKey[AccountService] = web.AppKey("accounts")
CHAT: web.AppKey[ChatService] = web.AppKey("chat")
METRICS: web.AppKey[Metrics] = web.AppKey("metrics")
SERVER_ID: web.AppKey[str] = web.AppKey("server_id")
CONNECTIONS: web.AppKey[weakref.WeakSet[Connection]] = web.AppKey("connections")
ReadyCheck = Callable[[], Awaitable[None]]
BLOBS: web.AppKey[BlobStore] = web.AppKey("blobs")
MEDIA_SERVICE: web.AppKey[MediaService] = web.AppKey("media_service")
PUSH_PROVIDERS: web.AppKey[PushProviders] = web.AppKey("push_providers")
PUSH: web.AppKey[PushDispatcher] = web.AppKey("push")
# Named readiness probes for /readyz beyond store and bus (media adds one).
COALESCER: web.AppKey[WriteCoalescer] = web.AppKey("coalescer")
READY_CHECKS: web.AppKey[dict[str, ReadyCheck]] = web.AppKey("ready_checks")
