"""The push dispatcher: who gets a notification, when, and what happens when a push service
misbehaves. Nothing here ever blocks a send.

``notify()`` only puts the message on a bounded queue (a full queue drops it, counted and
logged). One intake task then, per message:

1. drops the sender and every recipient that is online (``is_online``: connected on any
   server), has no subscription of an enabled kind, or has muted the conversation
   (``Member.muted``), in that order (cheapest first);
2. applies the coalescing rule below;
3. starts one delivery task per subscription of each user to notify now.

A delivery task sends through the sender of the subscription's kind under a hard per-request
timeout, with at most ``concurrency`` requests in flight, so an endpoint that hangs only ties
up its own task. ``retry`` answers (429, 5xx, network errors, timeouts) are retried up to
``max_retries`` times with exponential backoff (``backoff_base_s * 2**n``, with jitter,
capped at ``backoff_max_s``; a ``Retry-After`` replaces the computed delay, under the same
cap); ``gone`` answers (404, 410) delete the subscription.

Coalescing rule, per (user, conversation), with window ``W = coalesce_window_s``:

* A message with no open window is pushed at once and opens a window of ``W`` seconds.
* Messages arriving while the window is open are folded into one pending notification (the
  latest message's seq, sender and preview, and ``count`` = how many were folded).
* When the window ends, a pending notification is pushed (unless the user came online or
  muted the conversation meanwhile) and a new window of ``W`` opens; with nothing pending
  the window just closes.

``W = 0`` turns coalescing off: every message is pushed at once.

So a burst of 50 messages inside one window gives two notifications (the first message, then
"49 new messages"), and a steady stream gives at most one notification per ``W`` seconds per
user and conversation. Pending notifications are not sent if the dispatcher is closed first.
Windows live in this process: messages sent through another chatd process have their own.

The payload (JSON, the same for Web Push and webhooks)::

    {"type": "message", "conv": "c7", "conv_title": "ops" | null, "from": "alice",
     "seq": 42, "msg_id": "...", "ts": 1764316800123, "count": 1,
     "preview": "<at most 100 characters>" | null,
     "title": "alice in ops", "message": "<preview, or 'New message' without previews>"}

With ``previews=False`` neither ``preview`` nor ``message`` carries any text of the message.
Counters (``sent``, ``failed``, ``pruned``, ``dropped``, ``retried``, ``coalesced``,
``skipped_online``, ``skipped_muted``) are plain attributes; :meth:`stats` returns them all.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable, Collection, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from chatd.models import Message, PushSubscription
from chatd.push.base import PushResult, PushSender
from chatd.store.base import Store

log = logging.getLogger(__name__)

IsOnline = Callable[[Collection[str]], Awaitable[set[str]]]
"""Returns those of the given users who have a connected device on any server."""

PREVIEW_LIMIT = 100


@dataclass(frozen=True, slots=True)
class _Job:
    message: Message
    recipients: tuple[str, ...]
    conv_title: str | None


@dataclass(slots=True)
class _Window:
    """The open coalescing window of one (user, conversation)."""

    until: float
    pending: Message | None = None
    pending_title: str | None = None
    count: int = 0


def truncate(text: str, limit: int = PREVIEW_LIMIT) -> str:
    """At most ``limit`` characters, ending with an ellipsis when something was cut."""
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


def preview_of(message: Message) -> str | None:
    """A one-line description of ``message``, at most 100 characters."""
    if message.kind == "system":
        event = message.event or {}
        users = ", ".join(str(u) for u in event.get("users") or ())
        text = {
            "create": "created the group",
            "add": f"added {users}",
            "remove": f"removed {users}",
            "leave": "left the group",
            "title": f"renamed the group to {event.get('title')}",
            "role": f"made {users} {event.get('role')}",
        }.get(str(event.get("action")), "changed the group")
        return truncate(text)
    if message.body and message.body.strip():
        return truncate(" ".join(message.body.split()))
    if message.media:
        if len(message.media) == 1:
            return truncate(f"\U0001f4ce {message.media[0].filename}")
        return f"\U0001f4ce {len(message.media)} files"
    return None


def build_payload(
    message: Message, conv_title: str | None, count: int, previews: bool
) -> dict[str, Any]:
    """The notification document for ``message`` standing for ``count`` messages."""
    title = truncate(conv_title) if conv_title else None
    preview = preview_of(message) if previews else None
    if count <= 1:
        line = preview or "New message"
    else:
        line = f"{count} new messages" + (f": {preview}" if preview else "")
    return {
        "type": "message",
        "conv": message.conv,
        "conv_title": title,
        "from": message.sender,
        "seq": message.seq,
        "msg_id": message.msg_id,
        "ts": message.ts,
        "count": count,
        "preview": preview,
        "title": truncate(f"{message.sender} in {title}" if title else message.sender),
        "message": line,
    }


class PushDispatcher:
    """Turns stored messages into push notifications, off the send path.

    Args:
        store: where subscriptions and ``Member.muted`` live.
        senders: subscription kind -> sender (from :func:`chatd.push.open_push`). The
            dispatcher owns them: ``start`` starts and ``close`` closes each one.
        is_online: the subset of users with a connected device anywhere.
        previews: put message text in notifications (``push_previews``).
        coalesce_window_s: the coalescing window ``W`` (see the module docstring); 0 turns
            coalescing off.
        max_retries: retries after the first attempt for a ``retry`` answer.
        backoff_base_s, backoff_max_s: exponential backoff between attempts.
        request_timeout_s: hard limit of one send, whatever the sender does.
        concurrency: sends in flight at once.
        queue_size: messages waiting for the intake task before ``notify`` drops.
        max_deliveries: delivery tasks alive at once (sending or waiting to retry) before new
            ones are dropped.
        clock: monotonic seconds, for the coalescing windows.
    """

    def __init__(
        self,
        store: Store,
        senders: Mapping[str, PushSender],
        *,
        is_online: IsOnline,
        previews: bool = True,
        coalesce_window_s: float = 10.0,
        max_retries: int = 3,
        backoff_base_s: float = 1.0,
        backoff_max_s: float = 60.0,
        request_timeout_s: float = 10.0,
        concurrency: int = 32,
        queue_size: int = 10_000,
        max_deliveries: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if coalesce_window_s < 0 or max_retries < 0 or request_timeout_s <= 0 or concurrency < 1:
            raise ValueError("push dispatcher settings out of range")
        self.store = store
        self.senders = dict(senders)
        self.is_online = is_online
        self.previews = previews
        self.coalesce_window_s = coalesce_window_s
        self.max_retries = max_retries
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s
        self.request_timeout_s = request_timeout_s
        self.max_deliveries = max_deliveries
        self._clock = clock
        self._queue: asyncio.Queue[_Job] = asyncio.Queue(maxsize=queue_size)
        self._sem = asyncio.Semaphore(concurrency)
        self._windows: dict[tuple[str, str], _Window] = {}
        # Window deadlines in the order they were set. W is fixed, so this is also deadline
        # order and the flusher only ever looks at the head.
        self._expiries: deque[tuple[float, tuple[str, str]]] = deque()
        self._wakeup = asyncio.Event()
        self._workers: list[asyncio.Task[None]] = []
        self._deliveries: set[asyncio.Task[None]] = set()
        self._started = False
        self._closed = False

        self.sent = 0  # deliveries accepted by a push service or webhook
        self.failed = 0  # deliveries given up (retries exhausted, permanent error, bug)
        self.pruned = 0  # subscriptions deleted after 404/410
        self.dropped = 0  # notifications dropped: queue full, too many deliveries, closed
        self.retried = 0  # attempts repeated after a retry answer
        self.coalesced = 0  # messages folded into a pending notification
        self.skipped_online = 0  # recipients not notified because they were online
        self.skipped_muted = 0  # recipients not notified because they muted the conversation
        self.attempts = 0  # send calls made

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the senders and the background tasks."""
        if self._started:
            return
        self._started = True
        for sender in self._unique_senders():
            await sender.start()
        self._workers = [
            asyncio.create_task(self._intake_loop(), name="push-intake"),
            asyncio.create_task(self._flush_loop(), name="push-flush"),
        ]
        for task in self._workers:
            task.add_done_callback(self._worker_done)

    async def close(self) -> None:
        """Cancel and await every task (pending coalesced notifications are not sent), then
        close the senders."""
        self._closed = True
        tasks = [*self._workers, *self._deliveries]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._workers = []
        self._deliveries.clear()
        if self._started:
            for sender in self._unique_senders():
                try:
                    await sender.close()
                except Exception:
                    log.exception("closing push sender %r failed", sender)
        self._started = False

    async def drain(self) -> None:
        """Wait until every queued message has been handled and every delivery started so far
        has finished. Open coalescing windows are not waited for. For tests and for a
        graceful shutdown (bound it with ``asyncio.wait_for``)."""
        await self._queue.join()
        while self._deliveries:
            await asyncio.wait(set(self._deliveries))

    def stats(self) -> dict[str, int]:
        return {
            "sent": self.sent,
            "failed": self.failed,
            "pruned": self.pruned,
            "dropped": self.dropped,
            "retried": self.retried,
            "coalesced": self.coalesced,
            "skipped_online": self.skipped_online,
            "skipped_muted": self.skipped_muted,
            "attempts": self.attempts,
            "queued": self._queue.qsize(),
            "in_flight": len(self._deliveries),
        }

    def _unique_senders(self) -> list[PushSender]:
        # ``log`` serves several kinds with one instance: start and close it once.
        return list({id(s): s for s in self.senders.values()}.values())

    def _worker_done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            log.error("push task %s died", task.get_name(), exc_info=exc)

    # -- the send path's only entry --------------------------------------------------------

    def notify(
        self, message: Message, recipients: Sequence[str], conv_title: str | None = None
    ) -> None:
        """Queue ``message`` for the ``recipients`` (members other than the sender). Never
        blocks and never raises: when the queue is full the notification is dropped."""
        if self._closed:
            self.dropped += 1
            return
        try:
            self._queue.put_nowait(_Job(message, tuple(recipients), conv_title))
        except asyncio.QueueFull:
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                log.warning(
                    "push queue full (%d): dropped %s/%s (%d dropped so far)",
                    self._queue.maxsize,
                    message.conv,
                    message.seq,
                    self.dropped,
                )

    # -- intake: filter and coalesce -------------------------------------------------------

    async def _intake_loop(self) -> None:
        while True:
            job = await self._queue.get()
            try:
                await self._intake(job)
            except Exception:
                log.exception(
                    "push for %s/%s to %d recipients failed",
                    job.message.conv,
                    job.message.seq,
                    len(job.recipients),
                )
                self.failed += 1
            finally:
                self._queue.task_done()

    async def _intake(self, job: _Job) -> None:
        message = job.message
        targets = await self._targets(
            message.conv, [u for u in job.recipients if u != message.sender]
        )
        if not targets:
            return
        title = job.conv_title
        if title is None:
            conversation = await self.store.get_conversation(message.conv)
            title = conversation.title if conversation is not None else None
        now = self._clock()
        payload: dict[str, Any] | None = None
        for user, subs in targets.items():
            key = (user, message.conv)
            window = self._windows.get(key)
            if window is not None and self.coalesce_window_s > 0:
                window.pending = message
                window.pending_title = title
                window.count += 1
                self.coalesced += 1
                continue
            if self.coalesce_window_s > 0:
                until = now + self.coalesce_window_s
                self._windows[key] = _Window(until)
                self._expiries.append((until, key))
                self._wakeup.set()
            if payload is None:
                payload = build_payload(message, title, 1, self.previews)
            self._deliver_all(subs, payload)

    async def _targets(self, conv: str, users: Sequence[str]) -> dict[str, list[PushSubscription]]:
        """The subscriptions to push to, by user: ``users`` without duplicates, without those
        online, without those with no subscription of an enabled kind, and without those who
        muted ``conv``. Cheapest checks first: most users have no subscription at all."""
        users = list(dict.fromkeys(users))
        if not users:
            return {}
        try:
            online = await self.is_online(users)
        except Exception:
            # Better a push to someone who may be online than silence for someone who is not.
            log.exception("push: online lookup failed; treating %d users as offline", len(users))
            online = set()
        offline = [u for u in users if u not in online]
        self.skipped_online += len(users) - len(offline)
        if not offline:
            return {}
        targets: dict[str, list[PushSubscription]] = {}
        for sub in await self.store.push_subscriptions(offline):
            if sub.kind in self.senders:
                targets.setdefault(sub.user, []).append(sub)
            else:
                log.debug("push: no %s provider; skipped subscription %s", sub.kind, sub.id)
        if not targets:
            return {}
        for member in await self.store.get_members(conv):
            if member.muted and targets.pop(member.user, None) is not None:
                self.skipped_muted += 1
        return targets

    # -- flusher: close windows, send what they folded -------------------------------------

    async def _flush_loop(self) -> None:
        while True:
            if not self._expiries:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            deadline, key = self._expiries[0]
            delay = deadline - self._clock()
            if delay > 0:
                await asyncio.sleep(delay)
                continue
            self._expiries.popleft()
            window = self._windows.get(key)
            if window is None or window.until != deadline:
                continue
            if window.pending is None:
                del self._windows[key]
                continue
            message, title, count = window.pending, window.pending_title, window.count
            window.pending, window.pending_title, window.count = None, None, 0
            window.until = self._clock() + self.coalesce_window_s
            self._expiries.append((window.until, key))
            payload = build_payload(message, title, count, self.previews)
            self._spawn(self._flush_one(key[0], message.conv, payload), f"push-flush-{key[0]}")

    async def _flush_one(self, user: str, conv: str, payload: dict[str, Any]) -> None:
        for subs in (await self._targets(conv, [user])).values():
            self._deliver_all(subs, payload)

    # -- delivery --------------------------------------------------------------------------

    def _deliver_all(self, subs: Sequence[PushSubscription], payload: dict[str, Any]) -> None:
        for sub in subs:
            self._spawn(self._deliver(self.senders[sub.kind], sub, payload), f"push-{sub.id}")

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        if self._closed or len(self._deliveries) >= self.max_deliveries:
            self.dropped += 1
            coro.close()
            log.warning("push: %d deliveries in flight; dropped %s", len(self._deliveries), name)
            return
        task = asyncio.create_task(coro, name=name)
        self._deliveries.add(task)
        task.add_done_callback(self._delivery_done)

    def _delivery_done(self, task: asyncio.Task[None]) -> None:
        self._deliveries.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            self.failed += 1
            log.error("push delivery %s failed", task.get_name(), exc_info=exc)

    async def _deliver(
        self, sender: PushSender, sub: PushSubscription, payload: dict[str, Any]
    ) -> None:
        result = PushResult("retry")
        for attempt in range(self.max_retries + 1):
            if attempt:
                self.retried += 1
                await asyncio.sleep(self._backoff(attempt, result.retry_after))
            async with self._sem:
                self.attempts += 1
                try:
                    async with asyncio.timeout(self.request_timeout_s):
                        result = await sender.send(sub, payload)
                except TimeoutError:
                    result = PushResult("retry", detail=f"no answer in {self.request_timeout_s}s")
            if result.outcome == "delivered":
                self.sent += 1
                log.debug("push sent to %s via %s %s", sub.user, sub.kind, sub.id)
                return
            if result.outcome == "gone":
                await self.store.delete_push_subscription_by_id(sub.id)
                self.pruned += 1
                log.info(
                    "push subscription %s of %s pruned (%s %s)",
                    sub.id,
                    sub.user,
                    result.status,
                    result.detail,
                )
                return
            if result.permanent:
                break
        self.failed += 1
        log.warning(
            "push to %s via %s %s failed after %d attempts: %s %s",
            sub.user,
            sub.kind,
            sub.id,
            attempt + 1,
            result.status,
            result.detail,
        )

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(retry_after, self.backoff_max_s)
        delay = self.backoff_base_s * 2 ** (attempt - 1)
        jittered: float = delay * random.uniform(0.5, 1.0)
        return min(jittered, self.backoff_max_s)
