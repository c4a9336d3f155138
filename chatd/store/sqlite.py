"""``sqlite:///path``: the embedded default store (WAL, ``synchronous=FULL``, group commit).

Threads, because the :mod:`sqlite3` module blocks:

* one **writer thread** owns the only writing connection. Write requests queue up (handed
  over once per loop iteration); the writer takes everything pending (from ``MAX_BATCH`` on,
  the rest waits), runs it in one ``BEGIN IMMEDIATE`` transaction, commits once (one fsync
  for the whole batch) and resolves every caller's future on the event loop. A request that
  fails is rolled back alone (a ``SAVEPOINT`` or a single statement), so one bad request never
  fails the others;
* a small pool of **reader connections** in an executor: WAL lets them read a committed
  snapshot while the writer writes.

Several chatd processes may share one file on one machine: every write runs inside
``BEGIN IMMEDIATE`` and reads ``last_seq`` (and the member list's ``version``) inside it, so
``seq`` stays gapless across processes. ``sqlite:///relative/path.db`` is relative to the
working directory; ``sqlite:////absolute/path.db`` (four slashes) is absolute.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Collection, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar, cast

import orjson

from chatd.errors import (
    BadRequest,
    ChatError,
    ConfigError,
    Conflict,
    Internal,
    NotFound,
    StaleVersion,
    Unavailable,
)
from chatd.models import (
    ROLES,
    AppendResult,
    Contact,
    Conversation,
    ConversationSummary,
    GroupChange,
    MarkerKind,
    MediaItem,
    Member,
    Message,
    NewMessage,
    PushSubscription,
    Role,
    Session,
    User,
)
from chatd.store.base import Store, newest_first

log = logging.getLogger(__name__)

T = TypeVar("T")

MAX_BATCH = 512
READERS = 4
BUSY_TIMEOUT_MS = 5000
BEGIN_POLL = (0.0001, 0.001)  # first and longest pause while another process holds the lock
# The member cache only saves a query per append; past this many conversations start over.
MEMBER_CACHE_MAX = 50_000

# Each entry upgrades the schema by one version (PRAGMA user_version). Never edit a shipped
# entry: append a new one.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE users (
            username TEXT PRIMARY KEY,
            password_hash TEXT NOT NULL,
            created_at INTEGER NOT NULL,
            disabled INTEGER NOT NULL DEFAULT 0,
            last_seen INTEGER
        ) WITHOUT ROWID""",
        """CREATE TABLE sessions (
            token_hash TEXT PRIMARY KEY,
            user TEXT NOT NULL,
            device TEXT NOT NULL,
            created_at INTEGER NOT NULL,
            expires_at INTEGER NOT NULL
        ) WITHOUT ROWID""",
        "CREATE INDEX sessions_by_user ON sessions (user)",
        # direct_key is the sorted pair of a direct conversation: at most one per pair.
        """CREATE TABLE conversations (
            conv TEXT PRIMARY KEY,
            kind TEXT NOT NULL,
            title TEXT,
            created_at INTEGER NOT NULL,
            last_seq INTEGER NOT NULL DEFAULT 0,
            last_ts INTEGER NOT NULL,
            version INTEGER NOT NULL DEFAULT 0,
            direct_key TEXT UNIQUE
        ) WITHOUT ROWID""",
        # A rowid table: rowid order is join order.
        """CREATE TABLE members (
            conv TEXT NOT NULL,
            user TEXT NOT NULL,
            role TEXT NOT NULL,
            joined_at INTEGER NOT NULL,
            delivered INTEGER NOT NULL DEFAULT 0,
            read INTEGER NOT NULL DEFAULT 0,
            muted INTEGER NOT NULL DEFAULT 0,
            UNIQUE (conv, user)
        )""",
        "CREATE INDEX members_by_user ON members (user)",
        # A rowid table with a (conv, seq) index rather than WITHOUT ROWID: new rows go at
        # the end of the table instead of into the middle of every conversation's range,
        # which measured 1.5x faster for interleaved appends.
        """CREATE TABLE messages (
            conv TEXT NOT NULL,
            seq INTEGER NOT NULL,
            msg_id TEXT NOT NULL,
            kind TEXT NOT NULL,
            sender TEXT NOT NULL,
            client_id TEXT,
            ts INTEGER NOT NULL,
            body TEXT,
            media BLOB,
            reply_to INTEGER,
            event BLOB,
            UNIQUE (conv, seq)
        )""",
        # Idempotent sends: the second (sender, client_id) fails the INSERT itself.
        "CREATE UNIQUE INDEX messages_by_client_id ON messages (sender, client_id)"
        " WHERE client_id IS NOT NULL",
        # unread = messages past my read marker minus mine among them: a range scan here.
        "CREATE INDEX messages_by_sender ON messages (conv, sender, seq)",
        """CREATE TABLE message_media (
            media_id TEXT NOT NULL,
            conv TEXT NOT NULL,
            PRIMARY KEY (media_id, conv)
        ) WITHOUT ROWID""",
        """CREATE TABLE media (
            id TEXT PRIMARY KEY,
            uploader TEXT NOT NULL,
            mime TEXT NOT NULL,
            size INTEGER NOT NULL,
            filename TEXT NOT NULL,
            sha256 TEXT NOT NULL,
            created_at INTEGER NOT NULL,
            width INTEGER,
            height INTEGER,
            thumbnail_mime TEXT
        ) WITHOUT ROWID""",
        """CREATE TABLE contacts (
            owner TEXT NOT NULL,
            contact TEXT NOT NULL,
            PRIMARY KEY (owner, contact)
        ) WITHOUT ROWID""",
        "CREATE INDEX contacts_by_contact ON contacts (contact, owner)",
        """CREATE TABLE push_subscriptions (
            id TEXT PRIMARY KEY,
            user TEXT NOT NULL,
            kind TEXT NOT NULL,
            data BLOB NOT NULL,
            created_at INTEGER NOT NULL
        ) WITHOUT ROWID""",
        "CREATE INDEX push_subscriptions_by_user ON push_subscriptions (user)",
    ),
    (
        # When the user's sessions were last revoked (disabled, password changed): every
        # server polls for recent ones and closes the sockets of the revoked sessions.
        "ALTER TABLE users ADD COLUMN sessions_revoked_at INTEGER",
        "CREATE INDEX users_by_sessions_revoked_at ON users (sessions_revoked_at)"
        " WHERE sessions_revoked_at IS NOT NULL",
    ),
)

MESSAGE_COLUMNS = "conv, seq, msg_id, kind, sender, client_id, ts, body, media, reply_to, event"
MEMBER_COLUMNS = "user, role, joined_at, delivered, read, muted"
CONV_COLUMNS = "conv, kind, title, created_at, last_seq, version"
INSERT_MESSAGE = f"INSERT INTO messages ({MESSAGE_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?)"


def database_path(url: str) -> Path:
    """``sqlite:///rel.db`` -> ``rel.db``; ``sqlite:////abs.db`` -> ``/abs.db``."""
    prefix = "sqlite://"
    if not url.startswith(prefix):
        raise ConfigError(f"not a sqlite URL: {url!r}")
    rest = url[len(prefix) :].split("?", 1)[0]
    if not rest.startswith("/") or rest == "/":
        raise ConfigError(
            f"a sqlite URL needs a file: sqlite:///relative.db or sqlite:////absolute.db,"
            f" not {url!r}"
        )
    return Path(rest[1:])


# -- rows to records -----------------------------------------------------------------------


def _media_to_json(media: tuple[MediaItem, ...]) -> bytes | None:
    if not media:
        return None
    # Positional rows in MediaItem's field order: compact, and read back with MediaItem(*row).
    return orjson.dumps([dataclasses.astuple(m) for m in media])


def _media_from_json(raw: bytes | None) -> tuple[MediaItem, ...]:
    if raw is None:
        return ()
    return tuple(MediaItem(*fields) for fields in orjson.loads(raw))


def _message(row: Sequence[Any]) -> Message:
    conv, seq, msg_id, kind, sender, client_id, ts, body, media, reply_to, event = row
    return Message(
        conv,
        seq,
        msg_id,
        kind,
        sender,
        client_id,
        ts,
        body,
        _media_from_json(media),
        reply_to,
        orjson.loads(event) if event is not None else None,
    )


def _member(row: Sequence[Any]) -> Member:
    user, role, joined_at, delivered, read, muted = row
    return Member(user, role, joined_at, delivered, read, bool(muted))


def _conversation(row: Sequence[Any]) -> Conversation:
    conv, kind, title, created_at, last_seq, version = row
    return Conversation(conv, kind, title, created_at, last_seq, version)


def _user(row: Sequence[Any]) -> User:
    username, password_hash, created_at, disabled, last_seen = row
    return User(username, password_hash, created_at, bool(disabled), last_seen)


def _session(row: Sequence[Any]) -> Session:
    return Session(*row)


def _record_revocation(conn: sqlite3.Connection, username: str, revoked_at: int | None) -> None:
    if revoked_at is not None:
        conn.execute(
            "UPDATE users SET sessions_revoked_at = ? WHERE username = ?", (revoked_at, username)
        )


def _check_role(role: str) -> Role:
    if role not in ROLES:
        raise BadRequest(f"unknown role {role!r}")
    return role


def _unavailable(exc: sqlite3.Error) -> Unavailable:
    return Unavailable(f"the sqlite store failed: {exc}")


def _connect(path: Path) -> sqlite3.Connection:
    # isolation_level=None: no implicit transactions, every BEGIN is ours. Reader connections
    # move between executor threads (never two at once), hence check_same_thread=False.
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute("PRAGMA temp_store = MEMORY")
    conn.execute("PRAGMA cache_size = -32768")
    return conn


@functools.lru_cache(maxsize=64)
def _rows(count: int, width: int) -> str:
    """``(?,?),(?,?)`` for ``count`` rows of ``width`` values."""
    row = "(" + ",".join("?" * width) + ")"
    return ",".join([row] * count)


@functools.lru_cache(maxsize=64)
def _state_query(convs: int, keys: int) -> str:
    """One query answering, as two JSON arrays, the state of ``convs`` conversations and
    which of ``keys`` (sender, client_id) pairs are already taken."""
    states = (
        "(SELECT json_group_array(json_array(conv, last_seq, last_ts, version))"
        f" FROM conversations WHERE conv IN ({_marks(convs)}))"
        if convs
        else "'[]'"
    )
    taken = (
        "(SELECT json_group_array(json_array(m.sender, m.client_id))"
        f" FROM (VALUES {_rows(keys, 2)}) AS v"
        " JOIN messages m ON m.sender = v.column1 AND m.client_id = v.column2)"
        if keys
        else "'[]'"
    )
    return f"SELECT {states}, {taken}"


def _marks(count: int) -> str:
    return _rows(1, count)[1:-1]


def _chunks(items: list[T], largest: int, unit: int = 1) -> Iterator[list[T]]:
    """Slices of at most ``largest`` items, each a power of two times ``unit`` long, so
    that a few distinct statements (kept in sqlite3's statement cache) serve every size."""
    start, total = 0, len(items)
    while start < total:
        size = largest
        while size > unit and size > total - start:
            size //= 2
        yield items[start : start + size]
        start += size


# -- the writer's batch ----------------------------------------------------------------------


class _Batch:
    """What the appends of one transaction have changed but not yet written back.

    Appends to one conversation in one batch read ``last_seq`` once and write it once, and
    move each sender's markers once; any other operation first calls :meth:`flush`.
    """

    __slots__ = ("convs", "dirty", "markers")

    def __init__(self) -> None:
        # conv -> [last_seq, last_ts, version] as of this transaction
        self.convs: dict[str, list[int]] = {}
        self.dirty: set[str] = set()
        self.markers: dict[tuple[str, str], int] = {}

    def flush(self, conn: sqlite3.Connection) -> None:
        # One UPDATE ... FROM (VALUES ...) per chunk rather than one statement per row: few
        # sqlite3 calls, so few trips through the GIL.
        if self.dirty:
            values = [x for c in self.dirty for x in (c, self.convs[c][0], self.convs[c][1])]
            for chunk in _chunks(values, 3 * 256, 3):
                conn.execute(
                    "UPDATE conversations SET last_seq = v.column2, last_ts = v.column3"
                    f" FROM (VALUES {_rows(len(chunk) // 3, 3)}) AS v"
                    " WHERE conversations.conv = v.column1",
                    chunk,
                )
            self.dirty.clear()
        if self.markers:
            values = [x for (conv, user), seq in self.markers.items() for x in (conv, user, seq)]
            for chunk in _chunks(values, 3 * 256, 3):
                conn.execute(
                    "UPDATE members SET delivered = max(delivered, v.column3),"
                    " read = max(read, v.column3)"
                    f" FROM (VALUES {_rows(len(chunk) // 3, 3)}) AS v"
                    " WHERE members.conv = v.column1 AND members.user = v.column2",
                    chunk,
                )
            self.markers.clear()
        self.convs.clear()


_WriteOp = Callable[[sqlite3.Connection, _Batch], Any]


class _Append:
    """A message to append, serialized once on the event loop's thread."""

    __slots__ = ("event_json", "media_json", "new")

    def __init__(self, new: NewMessage, media_json: bytes | None, event_json: bytes | None):
        self.new = new
        self.media_json = media_json
        self.event_json = event_json

    def params(self, seq: int) -> tuple[Any, ...]:
        n = self.new
        return (
            *(n.conv, seq, n.msg_id, n.kind, n.sender, n.client_id, n.ts, n.body),
            *(self.media_json, n.reply_to, self.event_json),
        )

    def message(self, seq: int) -> Message:
        n = self.new
        # The event is read back from its JSON: a private copy, exactly as stored.
        event = orjson.loads(self.event_json) if self.event_json is not None else None
        return Message(
            *(n.conv, seq, n.msg_id, n.kind, n.sender, n.client_id, n.ts, n.body),
            *(tuple(n.media), n.reply_to, event),
        )


class _Request:
    __slots__ = ("append", "future", "op")

    def __init__(self, op: _WriteOp, future: asyncio.Future[Any], append: _Append | None) -> None:
        self.op = op
        self.future = future
        # Appends run together in segments (see SQLiteStore._append_segment); ``op`` is
        # then only the fallback.
        self.append = append


_STOP = object()


def _statement(sql: str, params: Sequence[Any]) -> _WriteOp:
    """A write of one statement, which is atomic by itself."""

    def op(conn: sqlite3.Connection, batch: _Batch) -> None:
        conn.execute(sql, params)

    return op


def _begin_immediate(conn: sqlite3.Connection) -> None:
    """``BEGIN IMMEDIATE``, waiting for another process's write lock in short steps.

    SQLite's own busy handler sleeps 1, 2, 5, 10, 15, 20, 25... ms between tries, so a writer
    that finds the lock held for the ~1 ms of the other process's commit often sleeps far
    longer than the lock is held. Here the wait is polled every 0.1-1 ms, within the same
    overall bound. The writer's connection has no busy timeout of its own (see
    ``SQLiteStore._open_writer``): once it holds the write lock, in WAL mode, nothing else it
    does waits for a lock.
    """
    delay = BEGIN_POLL[0]
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            conn.execute("BEGIN IMMEDIATE")
            return
        except sqlite3.OperationalError as exc:
            if exc.sqlite_errorcode & 0xFF != sqlite3.SQLITE_BUSY:
                raise
            if time.monotonic() >= deadline:
                raise
        time.sleep(delay)
        delay = min(delay * 2, BEGIN_POLL[1])


def _resolve(outcomes: list[tuple[asyncio.Future[Any], Any, bool]]) -> None:
    for future, value, failed in outcomes:
        if future.cancelled():
            continue
        if failed:
            future.set_exception(value)
        else:
            future.set_result(value)


class SQLiteStore(Store):
    """The embedded store. See the module docstring for the threading and durability model."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.path = database_path(url)
        self._loop: asyncio.AbstractEventLoop | None = None
        # Requests go to the writer a loop iteration's worth at a time (see _write).
        self._requests: queue.SimpleQueue[list[_Request] | object] = queue.SimpleQueue()
        self._pending: list[_Request] = []
        self._writer: threading.Thread | None = None
        self._readers: ThreadPoolExecutor | None = None
        self._reader_conns: queue.SimpleQueue[sqlite3.Connection] = queue.SimpleQueue()
        self._all_reader_conns: list[sqlite3.Connection] = []
        # conv -> (version, members in join order, as a set): valid while version matches.
        self._member_cache: dict[str, tuple[int, tuple[str, ...], frozenset[str]]] = {}
        self._closed = False
        # Write transactions committed (the writer thread counts): appends per commit is the
        # group commit at work.
        self.commits = 0

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Open the file, migrate, start the writer thread and the reader pool."""
        self._loop = asyncio.get_running_loop()
        ready: asyncio.Future[None] = self._loop.create_future()
        self._writer = threading.Thread(
            target=self._writer_main, args=(ready,), name=f"chatd-sqlite-writer:{self.path}"
        )
        self._writer.start()
        try:
            await ready
        except BaseException:
            await asyncio.to_thread(self._writer.join)
            self._writer = None
            raise
        self._readers = ThreadPoolExecutor(READERS, thread_name_prefix="chatd-sqlite-reader")
        try:
            for _ in range(READERS):
                conn = await asyncio.to_thread(self._open_reader)
                self._all_reader_conns.append(conn)
                self._reader_conns.put(conn)
        except sqlite3.Error as exc:
            await self.close()
            raise ConfigError(f"cannot open the sqlite database {self.path}: {exc}")

    def _open_reader(self) -> sqlite3.Connection:
        conn = _connect(self.path)
        conn.execute("PRAGMA query_only = ON")
        return conn

    async def close(self) -> None:
        """Finish the queued writes, stop the writer, close every connection."""
        if self._closed:
            return
        self._closed = True
        self._hand_over()
        if self._writer is not None:
            self._requests.put(_STOP)
            await asyncio.to_thread(self._writer.join)
            self._writer = None
        if self._readers is not None:
            await asyncio.to_thread(self._readers.shutdown, wait=True)
            self._readers = None
        for conn in self._all_reader_conns:
            conn.close()
        self._all_reader_conns.clear()

    async def ping(self) -> None:
        await self._read(lambda conn: conn.execute("SELECT 1").fetchone())

    # -- the machinery ---------------------------------------------------------------------

    def _open_writer(self) -> sqlite3.Connection:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"cannot create the folder of {self.path}: {exc.strerror}")
        try:
            conn = _connect(self.path)
        except sqlite3.Error as exc:
            raise ConfigError(f"cannot open the sqlite database {self.path}: {exc}")
        try:
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if mode != "wal":
                raise ConfigError(f"the sqlite database {self.path} cannot use WAL mode")
            self._migrate(conn)
            # Every sqlite3 call gives up the GIL and must win it back from a busy event
            # loop (up to a 5 ms switch interval each), so the writer makes as few as it
            # can: no busy-timeout switching around each BEGIN (see _begin_immediate).
            conn.execute("PRAGMA busy_timeout = 0")
        except sqlite3.Error as exc:
            conn.close()
            raise ConfigError(f"cannot open the sqlite database {self.path}: {exc}")
        except BaseException:
            conn.close()
            raise
        return conn

    def _migrate(self, conn: sqlite3.Connection) -> None:
        # Inside BEGIN IMMEDIATE: two processes starting at once migrate one after the other,
        # and the second finds nothing left to do.
        conn.execute("BEGIN IMMEDIATE")
        try:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > len(MIGRATIONS):
                raise ConfigError(
                    f"the sqlite database {self.path} has schema version {version}, newer than"
                    f" this chatd knows ({len(MIGRATIONS)})"
                )
            for number, statements in enumerate(MIGRATIONS[version:], start=version + 1):
                for statement in statements:
                    conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {number}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def _writer_main(self, ready: asyncio.Future[None]) -> None:
        loop = ready.get_loop()
        try:
            conn = self._open_writer()
        except BaseException as exc:
            loop.call_soon_threadsafe(_resolve, [(ready, exc, True)])
            return
        loop.call_soon_threadsafe(_resolve, [(ready, None, False)])
        try:
            stop = False
            while not stop:
                first = self._requests.get()
                if first is _STOP:
                    break
                batch = list(cast(list[_Request], first))
                while len(batch) < MAX_BATCH:
                    try:
                        item = self._requests.get_nowait()
                    except queue.Empty:
                        break
                    if item is _STOP:
                        stop = True  # finish this batch, then leave
                        break
                    batch.extend(cast(list[_Request], item))
                loop.call_soon_threadsafe(_resolve, self._run_batch(conn, batch))
        finally:
            conn.close()

    def _run_batch(
        self, conn: sqlite3.Connection, requests: list[_Request]
    ) -> list[tuple[asyncio.Future[Any], Any, bool]]:
        outcomes: list[tuple[asyncio.Future[Any], Any, bool]] = []
        batch = _Batch()
        try:
            _begin_immediate(conn)
        except sqlite3.Error as exc:
            error: ChatError = _unavailable(exc)
            return [(r.future, error, True) for r in requests]
        try:
            index = 0
            while index < len(requests):
                request = requests[index]
                if request.append is not None:
                    end = index + 1
                    while end < len(requests) and requests[end].append is not None:
                        end += 1
                    outcomes.extend(self._append_segment(conn, batch, requests[index:end]))
                    index = end
                    continue
                index += 1
                batch.flush(conn)
                conn.execute("SAVEPOINT op")
                try:
                    value = request.op(conn, batch)
                    batch.flush(conn)
                except (ChatError, sqlite3.IntegrityError, sqlite3.InterfaceError) as exc:
                    conn.execute("ROLLBACK TO op")
                    conn.execute("RELEASE op")
                    if not isinstance(exc, ChatError):
                        log.exception("sqlite store: a write failed")
                        exc = Internal("the store could not write this")
                    outcomes.append((request.future, exc, True))
                    continue
                conn.execute("RELEASE op")
                outcomes.append((request.future, value, False))
            batch.flush(conn)
            conn.execute("COMMIT")
            self.commits += 1
        except Exception as exc:
            # A disk error, a lock held past the busy timeout, or a bug: nothing of this
            # batch is written, and every caller hears so.
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            self._member_cache.clear()
            if not isinstance(exc, sqlite3.Error):
                log.exception("sqlite store: a write batch failed")
            error = (
                _unavailable(exc) if isinstance(exc, sqlite3.Error) else Internal("store failed")
            )
            return [
                (future, value if failed else error, True) for future, value, failed in outcomes
            ] + [(r.future, error, True) for r in requests[len(outcomes) :]]
        return outcomes

    async def _write(self, op: _WriteOp, *, append: _Append | None = None) -> Any:
        if self._closed or self._loop is None:
            raise Unavailable("the store is closed")
        future: asyncio.Future[Any] = self._loop.create_future()
        # Handed over once per loop iteration rather than one put per request: the writer is
        # woken once for everything this iteration produced, instead of waking for the first
        # request alone and committing it in a batch of one (a commit costs ~150 us of CPU).
        pending = self._pending
        pending.append(_Request(op, future, append))
        if len(pending) == 1:
            self._loop.call_soon(self._hand_over)
        return await future

    def _hand_over(self) -> None:
        if self._pending:
            requests, self._pending = self._pending, []
            self._requests.put(requests)

    async def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        if self._closed or self._readers is None or self._loop is None:
            raise Unavailable("the store is closed")
        return await self._loop.run_in_executor(self._readers, self._run_read, fn)

    def _run_read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        conn = self._reader_conns.get()
        try:
            return fn(conn)
        except sqlite3.Error as exc:
            if conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            raise _unavailable(exc)
        finally:
            self._reader_conns.put(conn)

    def _members_of(
        self, conn: sqlite3.Connection, conv: str, version: int
    ) -> tuple[tuple[str, ...], frozenset[str]]:
        cached = self._member_cache.get(conv)
        if cached is not None and cached[0] == version:
            return cached[1], cached[2]
        users = tuple(
            row[0]
            for row in conn.execute(
                "SELECT user FROM members WHERE conv = ? ORDER BY rowid", (conv,)
            )
        )
        if len(self._member_cache) >= MEMBER_CACHE_MAX:
            self._member_cache.clear()
        members = frozenset(users)
        self._member_cache[conv] = (version, users, members)
        return users, members

    # -- users and sessions ----------------------------------------------------------------

    async def create_user(self, username: str, password_hash: str, created_at: int) -> User:
        def op(conn: sqlite3.Connection, batch: _Batch) -> User:
            try:
                conn.execute(
                    "INSERT INTO users (username, password_hash, created_at) VALUES (?, ?, ?)",
                    (username, password_hash, created_at),
                )
            except sqlite3.IntegrityError:
                raise Conflict(f"the username {username!r} is taken")
            return User(username, password_hash, created_at)

        user: User = await self._write(op)
        return user

    async def get_user(self, username: str) -> User | None:
        def read(conn: sqlite3.Connection) -> User | None:
            row = conn.execute(
                "SELECT username, password_hash, created_at, disabled, last_seen FROM users"
                " WHERE username = ?",
                (username,),
            ).fetchone()
            return _user(row) if row is not None else None

        return await self._read(read)

    async def existing_users(self, usernames: Collection[str]) -> set[str]:
        names = list(dict.fromkeys(usernames))
        if not names:
            return set()

        def read(conn: sqlite3.Connection) -> set[str]:
            found: set[str] = set()
            # Chunks stay under SQLite's limit on bound parameters.
            for start in range(0, len(names), 500):
                chunk = names[start : start + 500]
                marks = ",".join("?" * len(chunk))
                found.update(
                    row[0]
                    for row in conn.execute(
                        f"SELECT username FROM users WHERE disabled = 0 AND username IN ({marks})",
                        chunk,
                    )
                )
            return found

        return await self._read(read)

    async def set_user_disabled(
        self, username: str, disabled: bool, *, revoked_at: int | None = None
    ) -> None:
        def op(conn: sqlite3.Connection, batch: _Batch) -> None:
            cursor = conn.execute(
                "UPDATE users SET disabled = ? WHERE username = ?", (int(disabled), username)
            )
            if cursor.rowcount == 0:
                raise NotFound(f"no user {username!r}")
            if disabled:
                conn.execute("DELETE FROM sessions WHERE user = ?", (username,))
                _record_revocation(conn, username, revoked_at)

        await self._write(op)

    async def set_password_hash(self, username: str, password_hash: str) -> None:
        def op(conn: sqlite3.Connection, batch: _Batch) -> None:
            cursor = conn.execute(
                "UPDATE users SET password_hash = ? WHERE username = ?", (password_hash, username)
            )
            if cursor.rowcount == 0:
                raise NotFound(f"no user {username!r}")

        await self._write(op)

    async def set_last_seen(self, username: str, ts: int) -> None:
        await self._write(
            _statement("UPDATE users SET last_seen = ? WHERE username = ?", (ts, username))
        )

    async def create_session(self, session: Session) -> None:
        def op(conn: sqlite3.Connection, batch: _Batch) -> None:
            try:
                conn.execute(
                    "INSERT INTO sessions (token_hash, user, device, created_at, expires_at)"
                    " VALUES (?, ?, ?, ?, ?)",
                    (
                        session.token_hash,
                        session.user,
                        session.device,
                        session.created_at,
                        session.expires_at,
                    ),
                )
            except sqlite3.IntegrityError:
                raise Conflict("session exists")

        await self._write(op)

    async def get_session(self, token_hash: str) -> Session | None:
        def read(conn: sqlite3.Connection) -> Session | None:
            row = conn.execute(
                "SELECT token_hash, user, device, created_at, expires_at FROM sessions"
                " WHERE token_hash = ?",
                (token_hash,),
            ).fetchone()
            return _session(row) if row is not None else None

        return await self._read(read)

    async def extend_session(self, token_hash: str, expires_at: int) -> None:
        await self._write(
            _statement(
                "UPDATE sessions SET expires_at = ? WHERE token_hash = ?", (expires_at, token_hash)
            )
        )

    async def delete_session(self, token_hash: str) -> Session | None:
        def op(conn: sqlite3.Connection, batch: _Batch) -> Session | None:
            row = conn.execute(
                "DELETE FROM sessions WHERE token_hash = ?"
                " RETURNING token_hash, user, device, created_at, expires_at",
                (token_hash,),
            ).fetchone()
            return _session(row) if row is not None else None

        session: Session | None = await self._write(op)
        return session

    async def delete_user_sessions(
        self, username: str, *, revoked_at: int | None = None
    ) -> list[str]:
        def op(conn: sqlite3.Connection, batch: _Batch) -> list[str]:
            rows = conn.execute(
                "DELETE FROM sessions WHERE user = ? RETURNING token_hash", (username,)
            ).fetchall()
            _record_revocation(conn, username, revoked_at)
            return [row[0] for row in rows]

        tokens: list[str] = await self._write(op)
        return tokens

    async def users_revoked_since(self, since: int) -> list[tuple[str, int]]:
        def read(conn: sqlite3.Connection) -> list[tuple[str, int]]:
            rows = conn.execute(
                "SELECT username, sessions_revoked_at FROM users"
                " WHERE sessions_revoked_at >= ? ORDER BY sessions_revoked_at, username",
                (since,),
            ).fetchall()
            return [(row[0], row[1]) for row in rows]

        return await self._read(read)

    # -- conversations ---------------------------------------------------------------------

    async def get_or_create_direct(
        self, user_a: str, user_b: str, new_conv_id: str, now: int
    ) -> tuple[Conversation, bool]:
        if user_a == user_b:
            raise BadRequest("a direct conversation needs two different users")
        key = "\n".join(sorted((user_a, user_b)))
        find = f"SELECT {CONV_COLUMNS} FROM conversations WHERE direct_key = ?"

        def read(conn: sqlite3.Connection) -> Conversation | None:
            row = conn.execute(find, (key,)).fetchone()
            return _conversation(row) if row is not None else None

        # Almost always it exists: find it without queueing behind the writer.
        existing = await self._read(read)
        if existing is not None:
            return existing, False

        def op(conn: sqlite3.Connection, batch: _Batch) -> tuple[Conversation, bool]:
            # Inside the write transaction no one else can create it between find and insert.
            row = conn.execute(find, (key,)).fetchone()
            if row is not None:
                return _conversation(row), False
            try:
                conn.execute(
                    "INSERT INTO conversations (conv, kind, title, created_at, last_seq, last_ts,"
                    " version, direct_key) VALUES (?, 'direct', NULL, ?, 0, ?, 0, ?)",
                    (new_conv_id, now, now, key),
                )
            except sqlite3.IntegrityError:
                raise Conflict(f"conversation {new_conv_id!r} exists")
            conn.executemany(
                "INSERT INTO members (conv, user, role, joined_at) VALUES (?, ?, 'member', ?)",
                [(new_conv_id, user_a, now), (new_conv_id, user_b, now)],
            )
            conn.executemany(
                "INSERT OR IGNORE INTO contacts (owner, contact) VALUES (?, ?)",
                [(user_a, user_b), (user_b, user_a)],
            )
            return Conversation(new_conv_id, "direct", None, now, 0, 0), True

        result: tuple[Conversation, bool] = await self._write(op)
        return result

    async def create_group(
        self,
        conv_id: str,
        title: str,
        members: Sequence[tuple[str, str]],
        system: NewMessage,
    ) -> AppendResult:
        roles = [(user, _check_role(role)) for user, role in members]
        if len({user for user, _ in roles}) != len(roles):
            raise BadRequest("a member is listed twice")

        def op(conn: sqlite3.Connection, batch: _Batch) -> AppendResult:
            try:
                conn.execute(
                    "INSERT INTO conversations (conv, kind, title, created_at, last_seq, last_ts,"
                    " version) VALUES (?, 'group', ?, ?, 0, ?, 0)",
                    (conv_id, title, system.ts, system.ts),
                )
            except sqlite3.IntegrityError:
                raise Conflict(f"conversation {conv_id!r} exists")
            conn.executemany(
                "INSERT INTO members (conv, user, role, joined_at) VALUES (?, ?, ?, ?)",
                [(conv_id, user, role, system.ts) for user, role in roles],
            )
            users = tuple(user for user, _ in roles)
            message = self._insert_system(conn, conv_id, 1, system, users)
            return AppendResult(message, False, users)

        result: AppendResult = await self._write(op)
        return result

    def _insert_system(
        self,
        conn: sqlite3.Connection,
        conv: str,
        seq: int,
        new: NewMessage,
        members: Collection[str],
    ) -> Message:
        """Store a message written by a group operation (in its savepoint) at ``seq``."""
        append = _Append(
            dataclasses.replace(new, conv=conv),
            _media_to_json(new.media),
            orjson.dumps(new.event) if new.event is not None else None,
        )
        message = append.message(seq)
        try:
            conn.execute(INSERT_MESSAGE, append.params(seq))
        except sqlite3.IntegrityError:
            raise Conflict("client_id already used")
        self._link_media(conn, conv, new.media)
        conn.execute(
            "UPDATE conversations SET last_seq = ?, last_ts = ? WHERE conv = ?",
            (seq, new.ts, conv),
        )
        if new.sender in members:
            conn.execute(
                "UPDATE members SET delivered = max(delivered, ?1), read = max(read, ?1)"
                " WHERE conv = ?2 AND user = ?3",
                (seq, conv, new.sender),
            )
        return message

    async def get_conversation(self, conv: str) -> Conversation | None:
        def read(conn: sqlite3.Connection) -> Conversation | None:
            row = conn.execute(
                f"SELECT {CONV_COLUMNS} FROM conversations WHERE conv = ?", (conv,)
            ).fetchone()
            return _conversation(row) if row is not None else None

        return await self._read(read)

    async def get_members(self, conv: str) -> list[Member]:
        def read(conn: sqlite3.Connection) -> list[Member]:
            rows = conn.execute(
                f"SELECT {MEMBER_COLUMNS} FROM members WHERE conv = ? ORDER BY rowid", (conv,)
            )
            return [_member(row) for row in rows]

        return await self._read(read)

    async def get_member(self, conv: str, user: str) -> Member | None:
        def read(conn: sqlite3.Connection) -> Member | None:
            row = conn.execute(
                f"SELECT {MEMBER_COLUMNS} FROM members WHERE conv = ? AND user = ?", (conv, user)
            ).fetchone()
            return _member(row) if row is not None else None

        return await self._read(read)

    async def apply_group_change(
        self, conv: str, expected_version: int, change: GroupChange, system: NewMessage
    ) -> AppendResult:
        for _, role in (*change.add, *change.roles):
            _check_role(role)

        def op(conn: sqlite3.Connection, batch: _Batch) -> AppendResult:
            row = conn.execute(
                "SELECT kind, version, last_seq FROM conversations WHERE conv = ?", (conv,)
            ).fetchone()
            if row is None:
                raise NotFound("no such conversation")
            kind, version, last_seq = row
            if kind != "group":
                raise BadRequest("only a group can be changed")
            if version != expected_version:
                raise StaleVersion("the group changed; retry")
            removed = []
            for user in change.remove:
                cursor = conn.execute(
                    "DELETE FROM members WHERE conv = ? AND user = ?", (conv, user)
                )
                if cursor.rowcount:
                    removed.append(user)
            conn.executemany(
                "INSERT OR IGNORE INTO members (conv, user, role, joined_at) VALUES (?, ?, ?, ?)",
                [(conv, user, role, system.ts) for user, role in change.add],
            )
            conn.executemany(
                "UPDATE members SET role = ? WHERE conv = ? AND user = ?",
                [(role, conv, user) for user, role in change.roles],
            )
            if change.title is not None:
                conn.execute(
                    "UPDATE conversations SET title = ? WHERE conv = ?", (change.title, conv)
                )
            conn.execute("UPDATE conversations SET version = version + 1 WHERE conv = ?", (conv,))
            users = tuple(
                r[0]
                for r in conn.execute(
                    "SELECT user FROM members WHERE conv = ? ORDER BY rowid", (conv,)
                )
            )
            message = self._insert_system(conn, conv, last_seq + 1, system, users)
            return AppendResult(message, False, (*users, *removed))

        result: AppendResult = await self._write(op)
        return result

    async def list_conversations(self, user: str) -> list[ConversationSummary]:
        def read(conn: sqlite3.Connection) -> list[ConversationSummary]:
            conn.execute("BEGIN")  # one snapshot for both queries
            try:
                convs = conn.execute(
                    f"""SELECT c.conv, c.kind, c.title, c.created_at, c.last_seq, c.version,
                        c.last_ts, m.read,
                        (SELECT count(*) FROM messages o
                          WHERE o.conv = c.conv AND o.sender = m.user AND o.seq > m.read),
                        {", ".join("x." + col for col in MESSAGE_COLUMNS.split(", "))}
                    FROM members m
                    JOIN conversations c ON c.conv = m.conv
                    LEFT JOIN messages x ON x.conv = c.conv AND x.seq = c.last_seq
                    WHERE m.user = ?""",
                    (user,),
                ).fetchall()
                members: dict[str, list[Member]] = {}
                for row in conn.execute(
                    f"""SELECT conv, {MEMBER_COLUMNS} FROM members
                    WHERE conv IN (SELECT conv FROM members WHERE user = ?) ORDER BY rowid""",
                    (user,),
                ):
                    members.setdefault(row[0], []).append(_member(row[1:]))
            finally:
                conn.execute("COMMIT")
            summaries = []
            for row in convs:
                conversation = _conversation(row[:6])
                last_ts, read, own_after = row[6:9]
                summaries.append(
                    ConversationSummary(
                        conversation=conversation,
                        members=tuple(members.get(conversation.conv, ())),
                        last_message=_message(row[9:]) if row[9] is not None else None,
                        unread=max(0, conversation.last_seq - read - own_after),
                        last_activity=last_ts,
                    )
                )
            return newest_first(summaries)

        return await self._read(read)

    # -- messages and markers --------------------------------------------------------------

    @staticmethod
    def _link_media(conn: sqlite3.Connection, conv: str, media: Sequence[MediaItem]) -> None:
        if media:
            conn.executemany(
                "INSERT OR IGNORE INTO message_media (media_id, conv) VALUES (?, ?)",
                [(item.id, conv) for item in media],
            )

    def _find_by_client_id(self, conn: sqlite3.Connection, sender: str, client_id: str) -> Any:
        return conn.execute(
            f"SELECT {MESSAGE_COLUMNS} FROM messages WHERE sender = ? AND client_id = ?",
            (sender, client_id),
        ).fetchone()

    async def append_message(self, message: NewMessage) -> AppendResult:
        # Serialize here, on the loop thread, so the writer thread only writes.
        append = _Append(
            message,
            _media_to_json(message.media),
            orjson.dumps(message.event) if message.event is not None else None,
        )
        result: AppendResult = await self._write(self._append_one_op(append), append=append)
        return result

    def _append_one_op(self, append: _Append) -> _WriteOp:
        """One append on its own: the fallback of :meth:`_append_segment`."""

        def op(conn: sqlite3.Connection, batch: _Batch) -> AppendResult:
            new = append.new
            state = self._conv_state(conn, batch, new.conv)
            if state is None:
                raise NotFound("no such conversation")
            users, members = self._members_of(conn, new.conv, state[2])
            if new.sender not in members:
                raise NotFound("no such conversation")
            seq = state[0] + 1
            try:
                conn.execute("SAVEPOINT one")  # the message and its media links, or neither
                try:
                    conn.execute(INSERT_MESSAGE, append.params(seq))
                    self._link_media(conn, new.conv, new.media)
                except BaseException:
                    conn.execute("ROLLBACK TO one")
                    raise
                finally:
                    conn.execute("RELEASE one")
            except sqlite3.IntegrityError:
                return self._duplicate(conn, batch, new)
            state[0] = seq
            state[1] = new.ts
            batch.dirty.add(new.conv)
            batch.markers[(new.conv, new.sender)] = seq
            return AppendResult(append.message(seq), False, users)

        return op

    def _conv_state(self, conn: sqlite3.Connection, batch: _Batch, conv: str) -> list[int] | None:
        state = batch.convs.get(conv)
        if state is None:
            row = conn.execute(
                "SELECT last_seq, last_ts, version FROM conversations WHERE conv = ?", (conv,)
            ).fetchone()
            if row is None:
                return None
            state = batch.convs[conv] = list(row)
        return state

    def _append_segment(
        self, conn: sqlite3.Connection, batch: _Batch, requests: list[_Request]
    ) -> list[tuple[asyncio.Future[Any], Any, bool]]:
        """Append a run of messages with a handful of statements in all.

        Every sqlite3 call releases and retakes the GIL, and retaking it from a busy event
        loop is what costs, not SQLite: so the conversations are read in one query, the
        ``(sender, client_id)`` pairs checked in one query, and the rows inserted in a few
        multi-row INSERTs. The unique index stays the last word: if an INSERT still fails,
        the segment is rolled back and replayed one append at a time.
        """
        appends = [cast(_Append, r.append) for r in requests]
        missing = list({a.new.conv for a in appends if a.new.conv not in batch.convs})
        keys = list({(a.new.sender, a.new.client_id) for a in appends if a.new.client_id})
        taken: set[tuple[str, str]] = set()
        # The conversations' state and the client_ids already taken, in one query (one
        # sqlite3 call of two steps) per chunk of each.
        conv_chunks = list(_chunks(missing, 256))
        key_chunks = list(_chunks(keys, 256))
        for index in range(max(len(conv_chunks), len(key_chunks))):
            convs = conv_chunks[index] if index < len(conv_chunks) else []
            pairs = key_chunks[index] if index < len(key_chunks) else []
            found_convs, found_keys = conn.execute(
                _state_query(len(convs), len(pairs)),
                [*convs, *(x for key in pairs for x in key)],
            ).fetchone()
            for conv, last_seq, last_ts, version in orjson.loads(found_convs):
                batch.convs[conv] = [last_seq, last_ts, version]
            taken.update((sender, client_id) for sender, client_id in orjson.loads(found_keys))

        # Undo information, should the INSERTs fail after all.
        saved = {conv: list(state) for conv, state in batch.convs.items()}
        saved_dirty, saved_markers = set(batch.dirty), dict(batch.markers)

        outcomes: list[tuple[asyncio.Future[Any], Any, bool]] = []
        rows: list[Any] = []
        links: list[tuple[str, str]] = []
        fresh: dict[tuple[str, str], AppendResult] = {}
        for request, append in zip(requests, appends, strict=True):
            new = append.new
            state = batch.convs.get(new.conv)
            if state is None:
                outcomes.append((request.future, NotFound("no such conversation"), True))
                continue
            users, members = self._members_of(conn, new.conv, state[2])
            if new.sender not in members:
                outcomes.append((request.future, NotFound("no such conversation"), True))
                continue
            key = (new.sender, new.client_id) if new.client_id is not None else None
            if key is not None:
                earlier = fresh.get(key)
                if earlier is not None:  # a retry queued in this very batch
                    outcomes.append(
                        (
                            request.future,
                            AppendResult(earlier.message, True, earlier.members),
                            False,
                        )
                    )
                    continue
                if key in taken:
                    try:
                        value: Any = self._duplicate(conn, batch, new)
                    except ChatError as exc:
                        outcomes.append((request.future, exc, True))
                    else:
                        outcomes.append((request.future, value, False))
                    continue
            seq = state[0] + 1
            state[0] = seq
            state[1] = new.ts
            batch.dirty.add(new.conv)
            batch.markers[(new.conv, new.sender)] = seq
            rows.extend(append.params(seq))
            if new.media:
                links.extend((item.id, new.conv) for item in new.media)
            result = AppendResult(append.message(seq), False, users)
            if key is not None:
                fresh[key] = result
            outcomes.append((request.future, result, False))

        if not rows:
            return outcomes
        # One INSERT statement is atomic by itself; more need a savepoint to undo them all.
        guarded = len(rows) > 11 * 128 or bool(links)
        if guarded:
            conn.execute("SAVEPOINT segment")
        try:
            for chunk in _chunks(rows, 11 * 128, 11):
                conn.execute(
                    f"INSERT INTO messages ({MESSAGE_COLUMNS})"
                    f" VALUES {_rows(len(chunk) // 11, 11)}",
                    chunk,
                )
            for chunk in _chunks([x for link in links for x in link], 2 * 256, 2):
                conn.execute(
                    "INSERT OR IGNORE INTO message_media (media_id, conv)"
                    f" VALUES {_rows(len(chunk) // 2, 2)}",
                    chunk,
                )
        except sqlite3.IntegrityError:
            if guarded:
                conn.execute("ROLLBACK TO segment")
                conn.execute("RELEASE segment")
            batch.convs.clear()
            batch.convs.update(saved)
            batch.dirty, batch.markers = saved_dirty, saved_markers
            return [self._run_plain(conn, batch, r) for r in requests]
        if guarded:
            conn.execute("RELEASE segment")
        return outcomes

    def _run_plain(
        self, conn: sqlite3.Connection, batch: _Batch, request: _Request
    ) -> tuple[asyncio.Future[Any], Any, bool]:
        try:
            return (request.future, request.op(conn, batch), False)
        except ChatError as exc:
            return (request.future, exc, True)

    def _duplicate(self, conn: sqlite3.Connection, batch: _Batch, new: NewMessage) -> AppendResult:
        row = (
            self._find_by_client_id(conn, new.sender, new.client_id)
            if new.client_id is not None
            else None
        )
        if row is None:
            raise Internal("the message could not be stored")
        original = _message(row)
        if original.conv == new.conv:
            version = batch.convs[new.conv][2]
        else:
            version = conn.execute(
                "SELECT version FROM conversations WHERE conv = ?", (original.conv,)
            ).fetchone()[0]
        users, _ = self._members_of(conn, original.conv, version)
        return AppendResult(original, True, users)

    async def history(
        self, conv: str, *, before: int | None, after: int | None, limit: int
    ) -> tuple[list[Message], bool]:
        if limit < 1:
            raise BadRequest("limit must be at least 1")
        select = f"SELECT {MESSAGE_COLUMNS} FROM messages WHERE conv = ?"
        if after is not None:
            sql = f"{select} AND seq > ?{' AND seq < ?' if before is not None else ''}"
            sql += " ORDER BY seq LIMIT ?"
            params: tuple[Any, ...] = (conv, after, *(() if before is None else (before,)))
            descending = False
        elif before is not None:
            sql = f"{select} AND seq < ? ORDER BY seq DESC LIMIT ?"
            params = (conv, before)
            descending = True
        else:
            sql = f"{select} ORDER BY seq DESC LIMIT ?"
            params = (conv,)
            descending = True

        def read(conn: sqlite3.Connection) -> tuple[list[Message], bool]:
            rows = conn.execute(sql, (*params, limit + 1)).fetchall()
            more = len(rows) > limit
            rows = rows[:limit]
            if descending:
                rows.reverse()
            return [_message(row) for row in rows], more

        return await self._read(read)

    async def set_marker(self, conv: str, user: str, kind: MarkerKind, seq: int) -> Member | None:
        if seq < 0:
            raise BadRequest("seq must not be negative")
        column = "read" if kind == "read" else "delivered"
        fetch = (
            f"SELECT c.last_seq, {', '.join('m.' + c for c in MEMBER_COLUMNS.split(', '))}"
            " FROM members m JOIN conversations c ON c.conv = m.conv"
            " WHERE m.conv = ? AND m.user = ?"
        )

        def check(row: Any) -> Member | None:
            if row is None:
                raise NotFound("no such conversation")
            if seq > row[0]:
                raise BadRequest(f"seq {seq} is past the end of the conversation")
            member = _member(row[1:])
            if seq <= (member.read if kind == "read" else member.delivered):
                return None
            return member

        # Markers only grow: if the committed marker is already there, nothing can move, so
        # most repeated receipts never reach the writer.
        def precheck(conn: sqlite3.Connection) -> Member | None:
            return check(conn.execute(fetch, (conv, user)).fetchone())

        if await self._read(precheck) is None:
            return None

        def op(conn: sqlite3.Connection, batch: _Batch) -> Member | None:
            member = check(conn.execute(fetch, (conv, user)).fetchone())
            if member is None:
                return None
            read = max(member.read, seq) if column == "read" else member.read
            delivered = max(member.delivered, seq)
            conn.execute(
                "UPDATE members SET delivered = ?, read = ? WHERE conv = ? AND user = ?",
                (delivered, read, conv, user),
            )
            return Member(member.user, member.role, member.joined_at, delivered, read, member.muted)

        moved: Member | None = await self._write(op)
        return moved

    async def set_muted(self, conv: str, user: str, muted: bool) -> None:
        def op(conn: sqlite3.Connection, batch: _Batch) -> None:
            cursor = conn.execute(
                "UPDATE members SET muted = ? WHERE conv = ? AND user = ?", (int(muted), conv, user)
            )
            if cursor.rowcount == 0:
                raise NotFound("no such conversation")

        await self._write(op)

    # -- contacts --------------------------------------------------------------------------

    async def add_contact(self, owner: str, contact: str) -> None:
        await self._write(
            _statement(
                "INSERT OR IGNORE INTO contacts (owner, contact) VALUES (?, ?)", (owner, contact)
            )
        )

    async def remove_contact(self, owner: str, contact: str) -> None:
        await self._write(
            _statement("DELETE FROM contacts WHERE owner = ? AND contact = ?", (owner, contact))
        )

    async def list_contacts(self, owner: str) -> list[Contact]:
        def read(conn: sqlite3.Connection) -> list[Contact]:
            rows = conn.execute(
                "SELECT c.contact, u.last_seen FROM contacts c"
                " LEFT JOIN users u ON u.username = c.contact WHERE c.owner = ?"
                " ORDER BY c.contact",
                (owner,),
            )
            return [Contact(name, last_seen) for name, last_seen in rows]

        return await self._read(read)

    async def followers(self, user: str) -> list[str]:
        def read(conn: sqlite3.Connection) -> list[str]:
            rows = conn.execute(
                "SELECT owner FROM contacts WHERE contact = ? ORDER BY owner", (user,)
            )
            return [row[0] for row in rows]

        return await self._read(read)

    # -- media -----------------------------------------------------------------------------

    async def create_media(self, item: MediaItem) -> None:
        def op(conn: sqlite3.Connection, batch: _Batch) -> None:
            try:
                conn.execute(
                    "INSERT INTO media (id, uploader, mime, size, filename, sha256, created_at,"
                    " width, height, thumbnail_mime) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        item.id,
                        item.uploader,
                        item.mime,
                        item.size,
                        item.filename,
                        item.sha256,
                        item.created_at,
                        item.width,
                        item.height,
                        item.thumbnail_mime,
                    ),
                )
            except sqlite3.IntegrityError:
                raise Conflict(f"media {item.id!r} exists")

        await self._write(op)

    async def get_media(self, media_id: str) -> MediaItem | None:
        def read(conn: sqlite3.Connection) -> MediaItem | None:
            row = conn.execute(
                "SELECT id, uploader, mime, size, filename, sha256, created_at, width, height,"
                " thumbnail_mime FROM media WHERE id = ?",
                (media_id,),
            ).fetchone()
            return MediaItem(*row) if row is not None else None

        return await self._read(read)

    async def media_visible_to(self, media_id: str, user: str) -> bool:
        def read(conn: sqlite3.Connection) -> bool:
            row = conn.execute(
                "SELECT EXISTS (SELECT 1 FROM media WHERE id = ?1 AND uploader = ?2)"
                " OR EXISTS (SELECT 1 FROM message_media mm"
                " JOIN members m ON m.conv = mm.conv AND m.user = ?2 WHERE mm.media_id = ?1)",
                (media_id, user),
            ).fetchone()
            return bool(row[0])

        return await self._read(read)

    # -- push subscriptions ----------------------------------------------------------------

    async def add_push_subscription(self, sub: PushSubscription) -> None:
        data = orjson.dumps(sub.data)
        await self._write(
            _statement(
                "INSERT OR REPLACE INTO push_subscriptions (id, user, kind, data, created_at)"
                " VALUES (?, ?, ?, ?, ?)",
                (sub.id, sub.user, sub.kind, data, sub.created_at),
            )
        )

    async def delete_push_subscription(self, user: str, sub_id: str) -> bool:
        def op(conn: sqlite3.Connection, batch: _Batch) -> bool:
            cursor = conn.execute(
                "DELETE FROM push_subscriptions WHERE id = ? AND user = ?", (sub_id, user)
            )
            return cursor.rowcount > 0

        deleted: bool = await self._write(op)
        return deleted

    async def push_subscriptions(self, users: Collection[str]) -> list[PushSubscription]:
        names = list(dict.fromkeys(users))
        if not names:
            return []

        def read(conn: sqlite3.Connection) -> list[PushSubscription]:
            subs: list[PushSubscription] = []
            for start in range(0, len(names), 500):
                chunk = names[start : start + 500]
                rows = conn.execute(
                    "SELECT id, user, kind, data, created_at FROM push_subscriptions"
                    f" WHERE user IN ({','.join('?' * len(chunk))})",
                    chunk,
                )
                subs.extend(
                    PushSubscription(sub_id, user, kind, orjson.loads(data), created_at)
                    for sub_id, user, kind, data, created_at in rows
                )
            subs.sort(key=lambda s: (s.user, s.created_at, s.id))
            return subs

        return await self._read(read)

    async def delete_push_subscription_by_id(self, sub_id: str) -> None:
        await self._write(_statement("DELETE FROM push_subscriptions WHERE id = ?", (sub_id,)))
