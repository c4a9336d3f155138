"""``redis://``: many chatd processes sharing one Redis for the bus, the registry and liveness.

URL: ``redis://[user:password@]host:port/db?prefix=chatd&heartbeat=2&ttl=6&timeout=2``
(``rediss://`` for TLS). Our own query parameters:

* ``prefix``: first part of every key and channel (default ``chatd``), so several deployments
  or test runs can share one Redis;
* ``heartbeat``: seconds between heartbeats, also the reaper's period (default 2);
* ``ttl``: seconds after which a silent server counts as dead (default 6). A SIGKILLed
  process's users are announced offline after at most ``ttl + heartbeat`` plus one reap;
* ``timeout``: upper bound in seconds of one Redis operation (default 2).

Any other parameter redis-py understands (``socket_keepalive``, ``max_connections``...) is
passed to it. Key layout (``P`` is the prefix)::

    P:srv:<server>   pub/sub channel of one server: payloads for connections it holds
    P:hb:<server>    string that expires after ``ttl``: the server is alive while it exists
    P:servers        set of servers that may have registry entries (what reapers scan)
    P:u:<user>       set of servers holding at least one connection of <user>
    P:s:<server>     set of users <server> holds (to clean up after it)
    P:reap:<server>  short lock (SET NX PX): the one live server cleaning up dead <server>

Every registry change is a Lua script, so "did the user just come online / go offline across
all live servers" is answered atomically. A server in ``P:u:<user>`` counts only while its
heartbeat key exists; the caller always counts itself as alive. The scripts build key names
from the prefix, so they need one Redis (or a Sentinel-managed primary), not Redis Cluster.

Failure model: the store is the truth and this bus is best effort. While Redis is
unreachable, ``publish`` drops (counted in ``dropped``), the registry calls raise
:class:`~chatd.errors.Unavailable` at once, the subscriber reconnects with backoff, and the
heartbeat keeps probing. When Redis answers again the heartbeat notices (its key is gone after
a restart, or the connection had failed) and re-registers the users this server holds, which
it always keeps in memory.

Connections: a blocking pool (``max_connections``, 64 by default) for the calls of the send and
connect paths, where a burst waits for a free connection within ``timeout``; and a separate
pool of a few connections for heartbeats, reaping, the subscriber and ``ping``, so that no
burst can delay a heartbeat past ``ttl``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import re
import secrets
from collections.abc import Awaitable, Callable, Collection, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import redis.asyncio as aioredis
from redis.asyncio.client import PubSub
from redis.asyncio.connection import URL_QUERY_ARGUMENT_PARSERS
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from chatd.errors import ConfigError, Unavailable
from chatd.routing.base import Bus, EnvelopeHandler, OfflineHandler

log = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_MAX_CONNECTIONS = 64  # per process; the URL's max_connections overrides it
CONTROL_CONNECTIONS = 4  # heartbeat, reaper, subscriber, ping
MIN_REDIS_VERSION = (6, 2)
REAP_BATCH = 500  # users cleaned per script call: keeps each call short for Redis
RESUBSCRIBE_BACKOFF = (0.1, 2.0)  # first and longest pause between subscriber reconnects
_LINK_ERRORS = (RedisConnectionError, RedisTimeoutError, OSError, TimeoutError)

# Shared by the scripts: is server ``s`` alive? ``me`` (the caller) always is; others while
# their heartbeat key exists. Answers are cached for the duration of one call.
_ALIVE = """
local prefix, me = ARGV[1], ARGV[2]
local cache = {}
local function alive(s)
  if s == me then return true end
  local v = cache[s]
  if v == nil then
    v = redis.call('EXISTS', prefix .. ':hb:' .. s) == 1
    cache[s] = v
  end
  return v
end
local function held_elsewhere(ukey, except)
  for _, s in ipairs(redis.call('SMEMBERS', ukey)) do
    if s ~= except and alive(s) then return true end
  end
  return false
end
"""

# ARGV: prefix, me, user. Returns 1 if no live server held the user before (came online).
ATTACH = (
    _ALIVE
    + """
local user = ARGV[3]
local ukey = prefix .. ':u:' .. user
local before = held_elsewhere(ukey, nil)
redis.call('SADD', ukey, me)
redis.call('SADD', prefix .. ':s:' .. me, user)
redis.call('SADD', prefix .. ':servers', me)
if before then return 0 end
return 1
"""
)

# ARGV: prefix, me, user. Returns 1 if this server held the user and no live server holds
# them now (went offline); 0 if another live server still does or this one never did.
DETACH = (
    _ALIVE
    + """
local user = ARGV[3]
local ukey = prefix .. ':u:' .. user
redis.call('SREM', prefix .. ':s:' .. me, user)
if redis.call('SREM', ukey, me) == 0 then return 0 end
if held_elsewhere(ukey, me) then return 0 end
return 1
"""
)

# ARGV: prefix, me, user... Returns a flat list server, user, server, user... for every
# (other live server, user it holds) pair.
LOCATE = (
    _ALIVE
    + """
local out = {}
for i = 3, #ARGV do
  local user = ARGV[i]
  for _, s in ipairs(redis.call('SMEMBERS', prefix .. ':u:' .. user)) do
    if s ~= me and alive(s) then
      out[#out + 1] = s
      out[#out + 1] = user
    end
  end
end
return out
"""
)

# ARGV: prefix, me, user... Returns those users held by any live server (this one included).
ONLINE = (
    _ALIVE
    + """
local out = {}
for i = 3, #ARGV do
  if held_elsewhere(prefix .. ':u:' .. ARGV[i], nil) then out[#out + 1] = ARGV[i] end
end
return out
"""
)

# ARGV: prefix, me, user... Makes the registry say that this server holds exactly these users
# (after Redis lost them, or missed attaches and detaches while unreachable). Returns
# {gone, came}: users dropped from this server's entries that no live server holds any more
# (they went offline), and users added that no live server held before (they came online).
RESYNC = (
    _ALIVE
    + """
local skey = prefix .. ':s:' .. me
local want = {}
for i = 3, #ARGV do want[ARGV[i]] = true end
local gone = {}
for _, user in ipairs(redis.call('SMEMBERS', skey)) do
  if not want[user] then
    local ukey = prefix .. ':u:' .. user
    redis.call('SREM', skey, user)
    redis.call('SREM', ukey, me)
    if not held_elsewhere(ukey, me) then gone[#gone + 1] = user end
  end
end
local came = {}
for i = 3, #ARGV do
  local ukey = prefix .. ':u:' .. ARGV[i]
  if not held_elsewhere(ukey, nil) then came[#came + 1] = ARGV[i] end
  redis.call('SADD', ukey, me)
  redis.call('SADD', skey, ARGV[i])
end
redis.call('SADD', prefix .. ':servers', me)
return {gone, came}
"""
)

# ARGV: prefix, me. Returns the known servers (other than me) whose heartbeat expired.
DEAD_SERVERS = """
local prefix, me = ARGV[1], ARGV[2]
local out = {}
for _, s in ipairs(redis.call('SMEMBERS', prefix .. ':servers')) do
  if s ~= me and redis.call('EXISTS', prefix .. ':hb:' .. s) == 0 then out[#out + 1] = s end
end
return out
"""

# ARGV: prefix, dead server, batch size, force ("1": clean even if its heartbeat exists, for a
# server cleaning up after its own previous run or its own shutdown).
# Removes up to <batch> users from the dead server's entries. Returns {status, user...}:
# status is 'alive' (heartbeat back: nothing done), 'more' (call again) or 'done'; the users
# are those no live server holds any more. A user is reported by exactly one call, because
# only the call whose SREM removed the dead server from P:u:<user> reports it.
REAP = """
local prefix, dead = ARGV[1], ARGV[2]
if ARGV[4] ~= '1' and redis.call('EXISTS', prefix .. ':hb:' .. dead) == 1 then
  return {'alive'}
end
local skey = prefix .. ':s:' .. dead
local out = {'done'}
local cache = {}
for _, user in ipairs(redis.call('SPOP', skey, tonumber(ARGV[3]))) do
  local ukey = prefix .. ':u:' .. user
  if redis.call('SREM', ukey, dead) == 1 then
    local held = false
    for _, s in ipairs(redis.call('SMEMBERS', ukey)) do
      local v = cache[s]
      if v == nil then
        v = redis.call('EXISTS', prefix .. ':hb:' .. s) == 1
        cache[s] = v
      end
      if v then held = true; break end
    end
    if not held then out[#out + 1] = user end
  end
end
if redis.call('SCARD', skey) > 0 then
  out[1] = 'more'
else
  redis.call('SREM', prefix .. ':servers', dead)
end
return out
"""


@dataclass(frozen=True, slots=True)
class RedisBusOptions:
    """What a ``redis://`` bus URL says, our parameters split from redis-py's."""

    redis_url: str
    prefix: str
    heartbeat: float
    ttl: float
    timeout: float

    @classmethod
    def from_url(cls, url: str) -> RedisBusOptions:
        """Parse ``url``; raise :class:`ConfigError` with one line for anything wrong."""
        parts = urlsplit(url)
        if parts.scheme not in ("redis", "rediss"):
            raise ConfigError(f"not a redis URL: {redact(url)!r}")
        ours: dict[str, str] = {}
        theirs: list[tuple[str, str]] = []
        for name, value in parse_qsl(parts.query, keep_blank_values=True):
            if name in ("prefix", "heartbeat", "ttl", "timeout"):
                ours[name] = value
            elif name in URL_QUERY_ARGUMENT_PARSERS:
                theirs.append((name, value))
            else:
                raise ConfigError(
                    f"unknown parameter {name!r} in bus URL {redact(url)!r} "
                    "(known: prefix, heartbeat, ttl, timeout, or a redis-py URL parameter)"
                )
        prefix = ours.get("prefix", "chatd")
        if not prefix or any(c.isspace() or c == ":" for c in prefix):
            raise ConfigError(
                f"bus URL prefix must be non-empty, without ':' or spaces: {prefix!r}"
            )
        heartbeat = _seconds(ours, "heartbeat", 2.0, url)
        ttl = _seconds(ours, "ttl", 6.0, url)
        timeout = _seconds(ours, "timeout", 2.0, url)
        if ttl <= heartbeat:
            raise ConfigError(
                f"bus URL ttl ({ttl:g}) must be longer than heartbeat ({heartbeat:g}), "
                "or live servers would be taken for dead"
            )
        redis_url = urlunsplit(parts._replace(query=urlencode(theirs)))
        return cls(redis_url, prefix, heartbeat, ttl, timeout)


def _seconds(params: dict[str, str], name: str, default: float, url: str) -> float:
    if name not in params:
        return default
    try:
        value = float(params[name])
    except ValueError:
        value = -1.0
    if not 0 < value <= 3600:
        raise ConfigError(
            f"bus URL {name} must be a number of seconds in (0, 3600], got {params[name]!r} "
            f"in {redact(url)!r}"
        )
    return value


def redact(url: str) -> str:
    """``url`` with its password (if any) hidden, for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


def _text(values: Iterable[bytes | str]) -> list[str]:
    return [v.decode() if isinstance(v, bytes) else v for v in values]


class RedisBus(Bus):
    """The bus, registry and liveness of many chatd processes, kept in one Redis.

    Attributes counted for tests and metrics: ``published`` (payloads handed to Redis),
    ``dropped`` (payloads lost because Redis failed), ``received`` (payloads delivered to the
    envelope handler).
    """

    local_only = False

    on_online: OfflineHandler | None = None
    """Optional, beyond :class:`Bus`: called with the users that came online (from the other
    servers' point of view) when this server re-registered what it holds after Redis failed:
    users whose ``attach`` raised ``Unavailable``, users another server announced offline
    after this one was unreachable for longer than ``ttl``, and after a Redis restart every
    user this server holds (announcing them again repeats a status, harmless)."""

    def __init__(self, url: str, server_id: str) -> None:
        super().__init__(url, server_id)
        if not server_id or any(c.isspace() or c == ":" for c in server_id):
            raise ConfigError(f"server id must be non-empty, without ':' or spaces: {server_id!r}")
        self.options = RedisBusOptions.from_url(url)
        prefix = self.options.prefix
        self._prefix = prefix
        self._channel = f"{prefix}:srv:{server_id}"
        self._hb_key = f"{prefix}:hb:{server_id}"
        # Tells this run's heartbeats apart from another process using the same server id.
        self._token = f"{os.getpid()}-{secrets.token_hex(6)}"
        self._client: aioredis.Redis | None = None
        self._control: aioredis.Redis | None = None
        self._pubsub: PubSub | None = None
        self._scripts: dict[str, Any] = {}
        self._on_envelope: EnvelopeHandler | None = None
        self._on_offline: OfflineHandler | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._wake: asyncio.Event | None = None
        # The users this server holds; the registry is rebuilt from it after Redis failed.
        self._attached: set[str] = set()
        self._changes = 0
        self._down = False
        self._resync_needed = False
        self._closing = False
        self._duplicate_warned = False
        self._publish_failing = False
        self._pending_offline: list[str] = []
        self.published = 0
        self.dropped = 0
        self.received = 0

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self, on_envelope: EnvelopeHandler, on_offline: OfflineHandler) -> None:
        if self._client is not None:
            raise RuntimeError("RedisBus.start() called twice")
        opts = self.options
        self._on_envelope = on_envelope
        self._on_offline = on_offline
        self._wake = asyncio.Event()
        # Two pools. Calls of the send and connect paths share a blocking one: a burst (a
        # thousand users reconnecting after a server died) queues for a connection within
        # ``timeout`` instead of failing. Heartbeats, reaping, the subscriber and ping have
        # their own few connections, so a burst can never delay a heartbeat past ``ttl`` and
        # make this live server look dead to the others.
        client = self._connect(opts.redis_url, DEFAULT_MAX_CONNECTIONS)
        self._client = client
        self._control = self._connect(
            _without_param(opts.redis_url, "max_connections"), CONTROL_CONNECTIONS
        )
        for name, text in (
            ("attach", ATTACH),
            ("detach", DETACH),
            ("locate", LOCATE),
            ("online", ONLINE),
            ("resync", RESYNC),
            ("dead", DEAD_SERVERS),
            ("reap", REAP),
        ):
            self._scripts[name] = client.register_script(text)
        try:
            async with asyncio.timeout(opts.timeout * 2):
                info = await self._ctl.info("server")
                version = str(info.get("redis_version", "0"))
                if _version_tuple(version) < MIN_REDIS_VERSION:
                    await self._close_client()
                    raise ConfigError(
                        f"the redis bus needs Redis 6.2 or later (SET ... GET); "
                        f"{redact(opts.redis_url)} runs {version}"
                    )
                # A previous run with this server id may have died and left entries behind:
                # they are stale (that run's sockets are gone), so clean them before anyone
                # can mistake them for live connections; their users are announced offline
                # by the reaper task once it runs.
                self._pending_offline = await self._reap_entries(self.server_id, force=True)
                old = await self._beat_once()
                if old is not None:
                    log.warning(
                        "redis bus: server id %r already had a live heartbeat; if another "
                        "process uses the same --server-id, give each process its own",
                        self.server_id,
                    )
                self._pubsub = await self._subscribe()
        except (RedisError, OSError, TimeoutError) as exc:
            await self._close_client()
            raise ConfigError(f"cannot reach redis at {redact(opts.redis_url)}: {_why(exc)}")
        loop = asyncio.get_running_loop()
        for name, job in (
            ("heartbeat", self._heartbeat_loop()),
            ("reaper", self._reaper_loop()),
            ("subscriber", self._subscriber_loop()),
        ):
            task = loop.create_task(job, name=f"chatd-bus-{name}-{self.server_id}")
            task.add_done_callback(_log_task_death)
            self._tasks.append(task)

    async def close(self) -> None:
        self._closing = True
        tasks, self._tasks = self._tasks, []
        await _stop_tasks(tasks)
        if self._client is None:
            return
        pubsub, self._pubsub = self._pubsub, None
        if pubsub is not None:
            await self._close_pubsub(pubsub, unsubscribe=True)
        if not self._down:
            try:
                async with asyncio.timeout(self.options.timeout * 2):
                    # The service detaches users as their sockets close; whatever is left
                    # is removed here without announcing anything.
                    await self._reap_entries(self.server_id, force=True)
                    await self._ctl.delete(self._hb_key)
                    await self._ctl.srem(f"{self._prefix}:servers", self.server_id)
            except (RedisError, OSError, TimeoutError) as exc:
                log.warning("redis bus: could not remove this server's entries: %s", _why(exc))
        self._attached.clear()
        await self._close_client()

    async def ping(self) -> None:
        await self._call("ping", lambda: self._ctl.ping(), probe=True)

    # -- bus ---------------------------------------------------------------------------------

    async def publish(self, server_id: str, payload: bytes) -> None:
        if self._down or self._client is None:
            self.dropped += 1
            return
        try:
            async with asyncio.timeout(self.options.timeout):
                await self._client.publish(f"{self._prefix}:srv:{server_id}", payload)
        except (RedisError, OSError, TimeoutError) as exc:
            self.dropped += 1
            if not self._publish_failing:  # once per failure streak, not once per payload
                self._publish_failing = True
                log.warning("redis bus: publish to %s failed: %s", server_id, _why(exc))
            return
        self._publish_failing = False
        self.published += 1

    # -- registry ----------------------------------------------------------------------------

    async def attach(self, user: str) -> bool:
        # Recorded first: if Redis is down now, the user is registered once it is back.
        self._attached.add(user)
        self._changes += 1
        result = await self._script("attach", [user])
        return bool(result)

    async def detach(self, user: str) -> bool:
        self._attached.discard(user)
        self._changes += 1
        result = await self._script("detach", [user])
        return bool(result)

    async def locate(self, users: Collection[str]) -> dict[str, list[str]]:
        """One round trip (one script call) whatever the number of users."""
        if not users:
            return {}
        flat = _text(await self._script("locate", list(dict.fromkeys(users))))
        servers: dict[str, list[str]] = {}
        for i in range(0, len(flat) - 1, 2):
            servers.setdefault(flat[i], []).append(flat[i + 1])
        return servers

    async def online(self, users: Collection[str]) -> set[str]:
        if not users:
            return set()
        return set(_text(await self._script("online", list(dict.fromkeys(users)))))

    # -- background tasks --------------------------------------------------------------------

    async def _heartbeat_loop(self) -> None:
        assert self._wake is not None
        while not self._closing:
            try:
                await asyncio.wait_for(self._wake.wait(), self.options.heartbeat)
            except TimeoutError:
                pass
            self._wake.clear()
            try:
                old = await self._call("heartbeat", self._beat_once, probe=True)
                if old is None:
                    # Our key vanished: Redis restarted, or was unreachable for longer than
                    # ttl and another server may have cleaned up after us.
                    self._resync_needed = True
                elif old != self._token.encode() and not self._duplicate_warned:
                    self._duplicate_warned = True
                    log.error(
                        "redis bus: another process heartbeats as server id %r; give each "
                        "process its own --server-id",
                        self.server_id,
                    )
                if self._resync_needed:
                    await self._resync()
            except Unavailable:
                pass  # logged once by _mark_down; probed again next beat
            except Exception:
                log.exception("redis bus: heartbeat failed")

    async def _reaper_loop(self) -> None:
        pending, self._pending_offline = self._pending_offline, []
        if pending:
            await self._announce_offline(pending)
        while not self._closing:
            await asyncio.sleep(self.options.heartbeat)
            if self._down:
                continue
            try:
                await self._reap_dead_servers()
            except Unavailable:
                pass
            except Exception:
                log.exception("redis bus: reaper failed")

    async def _subscriber_loop(self) -> None:
        first, longest = RESUBSCRIBE_BACKOFF
        pause = first
        while not self._closing:
            try:
                if self._pubsub is None:
                    self._pubsub = await self._subscribe()
                    pause = first
                    log.info("redis bus %s: resubscribed to %s", self.server_id, self._channel)
                    self._mark_up()
                    # Beat now rather than in a while: if Redis restarted, the beat finds its
                    # key gone and re-registers this server's users.
                    assert self._wake is not None
                    self._wake.set()
                await self._read(self._pubsub)
            except (RedisError, OSError, TimeoutError) as exc:
                self._mark_down(exc)
            except Exception:
                log.exception("redis bus: subscriber failed")
            pubsub, self._pubsub = self._pubsub, None
            if pubsub is not None:
                await self._close_pubsub(pubsub, unsubscribe=False)
            await asyncio.sleep(pause)
            pause = min(pause * 2, longest)

    # -- helpers -----------------------------------------------------------------------------

    def _connect(self, url: str, max_connections: int) -> aioredis.Redis:
        opts = self.options
        pool = aioredis.BlockingConnectionPool.from_url(
            url,
            max_connections=max_connections,
            timeout=opts.timeout,
            socket_connect_timeout=opts.timeout,
            socket_timeout=opts.timeout,
            # One immediate retry heals a pooled connection that died with a Redis restart;
            # more would only make callers wait while Redis is down.
            retry=Retry(NoBackoff(), 1),
        )
        return aioredis.Redis(connection_pool=pool)

    @property
    def _ctl(self) -> aioredis.Redis:
        """The client of heartbeats, reaping, the subscriber and ping (see ``start``)."""
        if self._control is None:
            raise Unavailable("the redis bus is not started")
        return self._control

    async def _call(self, what: str, op: Callable[[], Awaitable[T]], probe: bool = False) -> T:
        """Run one Redis operation within ``timeout``; map failures to ``Unavailable``.

        While Redis is known to be down only probes (heartbeat, ping) try: everything else
        fails at once instead of making every caller wait for a connect timeout. Only probes
        decide that Redis is down, so a burst that times out waiting for a pooled connection
        fails those calls without pausing the whole bus.
        """
        if self._down and not probe:
            raise Unavailable(f"redis is unavailable ({what})")
        try:
            async with asyncio.timeout(self.options.timeout):
                result = await op()
        except _LINK_ERRORS as exc:
            if probe:
                self._mark_down(exc)
            raise Unavailable(f"redis is unavailable ({what}): {_why(exc)}") from exc
        except RedisError as exc:
            log.error("redis bus: %s failed: %s", what, _why(exc))
            raise Unavailable(f"redis failed ({what}): {_why(exc)}") from exc
        self._mark_up()
        return result

    async def _script(self, name: str, users: list[str], control: bool = False) -> Any:
        script = self._scripts.get(name)
        if script is None:
            raise Unavailable("the redis bus is not started")
        args = [self._prefix, self.server_id, *users]
        client = self._ctl if control else None
        return await self._call(name, lambda: script(args=args, client=client))

    async def _beat_once(self) -> bytes | None:
        """Refresh this server's heartbeat; return the value it replaced (None if expired)."""
        pipe = self._ctl.pipeline(transaction=False)
        pipe.set(self._hb_key, self._token, px=int(self.options.ttl * 1000), get=True)
        pipe.sadd(f"{self._prefix}:servers", self.server_id)
        old, _ = await pipe.execute()
        return old  # type: ignore[no-any-return]

    async def _resync(self) -> None:
        # attach/detach may run while the script is in flight; redo it if they did, so the
        # registry ends up matching what the last snapshot saw.
        gone: list[str] = []
        came: list[str] = []
        for _ in range(3):
            changes = self._changes
            users = sorted(self._attached)
            went, arrived = await self._script("resync", users, control=True)
            gone.extend(_text(went))
            came.extend(_text(arrived))
            if changes == self._changes:
                break
        self._resync_needed = False
        log.info("redis bus %s: registered the %d users it holds", self.server_id, len(users))
        if gone:
            await self._announce_offline(gone)
        if came and self.on_online is not None:
            try:
                await self.on_online(list(dict.fromkeys(came)))
            except Exception:
                log.exception("redis bus: online handler failed for %d users", len(came))

    async def _reap_entries(self, server: str, force: bool) -> list[str]:
        """Remove ``server``'s registry entries; return the users now held by nobody."""
        script = self._scripts["reap"]
        offline: list[str] = []
        while True:
            args = [self._prefix, server, REAP_BATCH, "1" if force else "0"]
            result = _text(await script(args=args, client=self._ctl))
            offline.extend(result[1:])
            if result[0] != "more":
                return offline

    async def _reap_dead_servers(self) -> None:
        dead = _text(
            await self._call(
                "reap",
                lambda: self._scripts["dead"](
                    args=[self._prefix, self.server_id], client=self._ctl
                ),
            )
        )
        for server in dead:
            offline = await self._call("reap", functools.partial(self._reap_dead, server))
            if offline is None:
                continue  # another live server is cleaning up after it
            log.warning(
                "redis bus: server %s stopped heartbeating; removed its registry entries, "
                "%d users offline",
                server,
                len(offline),
            )
            if offline:
                await self._announce_offline(offline)

    async def _reap_dead(self, server: str) -> list[str] | None:
        """Clean up after ``server`` if this process wins the lock, else return None."""
        lock_ms = int(max(self.options.ttl, 1.0) * 1000)
        lock = f"{self._prefix}:reap:{server}"
        if not await self._ctl.set(lock, self.server_id, nx=True, px=lock_ms):
            return None
        return await self._reap_entries(server, force=False)

    async def _announce_offline(self, users: list[str]) -> None:
        if self._on_offline is None:
            return
        try:
            await self._on_offline(list(dict.fromkeys(users)))
        except Exception:
            log.exception("redis bus: offline handler failed for %d users", len(users))

    async def _subscribe(self) -> PubSub:
        pubsub = self._ctl.pubsub(ignore_subscribe_messages=True)
        try:
            async with asyncio.timeout(self.options.timeout):
                await pubsub.subscribe(self._channel)
        except BaseException:
            await self._close_pubsub(pubsub, unsubscribe=False)
            raise
        return pubsub

    async def _read(self, pubsub: PubSub) -> None:
        """Deliver payloads until the connection fails (raises) or the bus closes.

        A connection can also die silently (a network partition sends no reset), so when idle
        it pings every heartbeat and gives up on it after ``ttl`` without hearing anything.
        """
        loop = asyncio.get_running_loop()
        heard = pinged = loop.time()
        wait = self.options.heartbeat
        while not self._closing:
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=wait)
            now = loop.time()
            if message is not None:
                heard = now
                if message["type"] == "message":
                    self._deliver(message["data"])
                continue
            if now - heard > self.options.ttl:
                raise RedisConnectionError(f"no answer from redis for {self.options.ttl:g}s")
            if now - pinged >= wait:
                pinged = now
                async with asyncio.timeout(self.options.timeout):
                    await pubsub.ping()

    def _deliver(self, payload: bytes) -> None:
        self.received += 1
        if self._on_envelope is None:
            return
        try:
            self._on_envelope(payload)
        except Exception:
            log.exception("redis bus: envelope handler failed")

    async def _close_pubsub(self, pubsub: PubSub, unsubscribe: bool) -> None:
        if unsubscribe and not self._down:
            with contextlib.suppress(RedisError, OSError, TimeoutError):
                async with asyncio.timeout(self.options.timeout):
                    await pubsub.unsubscribe()
        with contextlib.suppress(RedisError, OSError, TimeoutError):
            async with asyncio.timeout(self.options.timeout):
                await pubsub.aclose()  # type: ignore[no-untyped-call]

    async def _close_client(self) -> None:
        clients = (self._client, self._control)
        self._client = self._control = None
        self._scripts.clear()
        for client in clients:
            if client is not None:
                with contextlib.suppress(RedisError, OSError, TimeoutError):
                    async with asyncio.timeout(self.options.timeout):
                        await client.aclose(close_connection_pool=True)

    def _mark_down(self, exc: BaseException) -> None:
        if not self._down:
            self._down = True
            log.warning(
                "redis bus %s: lost redis (%s); cross-server delivery paused, retrying",
                self.server_id,
                _why(exc),
            )

    def _mark_up(self) -> None:
        if self._down:
            self._down = False
            self._resync_needed = True
            log.info("redis bus %s: redis answers again", self.server_id)
            if self._wake is not None:
                self._wake.set()


def _without_param(url: str, name: str) -> str:
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != name]
    return urlunsplit(parts._replace(query=urlencode(query)))


def _version_tuple(version: str) -> tuple[int, ...]:
    """``"7.0.15"`` -> ``(7, 0)``; ``"8.0-rc1"`` -> ``(8, 0)``."""
    numbers: list[int] = []
    for part in version.split(".")[:2]:
        digits = re.match(r"\d*", part)
        numbers.append(int(digits.group() or 0) if digits else 0)
    return tuple(numbers)


def _why(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


async def _stop_tasks(tasks: list[asyncio.Task[None]]) -> None:
    """Cancel ``tasks`` and wait for them, logging any that failed.

    On Python 3.11 a cancellation that arrives just as an ``asyncio.timeout`` expires can be
    turned into a TimeoutError and swallowed by a loop; so the loops also check ``_closing``
    and the cancellation is repeated until every task has ended (bounded, not forever).
    """
    pending = set(tasks)
    for _ in range(100):
        if not pending:
            break
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=0.1)
    for task in pending:
        log.error("redis bus task %s did not stop", task.get_name())
    # A task that failed was logged when it died (_log_task_death).


def _log_task_death(task: asyncio.Task[None]) -> None:
    if task.cancelled():
        return
    exc = task.exception()
    if exc is not None:
        log.error("redis bus task %s died", task.get_name(), exc_info=exc)
