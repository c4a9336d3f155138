"""The PostgreSQL store (``postgresql://user@host:5432/db?pool_max=20``), through asyncpg.

URL options, taken out of the query string before the rest goes to asyncpg:

    pool_min=1            connections opened at start and kept
    pool_max=10           most connections held at once
    command_timeout=5     seconds a statement may take before ``Unavailable``
    connect_timeout=5     seconds to open one connection
    acquire_timeout=5     seconds to wait for a free pooled connection

Any other query parameter (``sslmode``, ``application_name``, ...) is asyncpg's.

How the contract is kept:

* The schema is created and migrated at :meth:`PostgresStore.start` by numbered migrations,
  each applied at most once and recorded in ``chatd_migrations``, under a transaction-level
  advisory lock so that several processes starting together migrate once.
* An append is ONE round trip: ``SELECT * FROM chatd_append(...)``, a plpgsql function that
  the migration creates. It runs as one statement in its own transaction, so it is all or
  nothing, and inside it:

  1. an existing ``(sender, client_id)`` returns the original message (a retry: no seq used);
  2. ``UPDATE conversations SET last_seq = last_seq + 1`` takes the conversation's row lock,
     which serializes appends to one conversation across every chatd process; the seq is
     gapless because a failure later in the function rolls the increment back with it;
  3. the sender's markers move to the new seq, which is also the membership check: it runs
     after the lock, with a fresh snapshot, so a concurrent group change (which takes the
     same lock first) is seen;
  4. the insert uses ``ON CONFLICT (sender, client_id) DO NOTHING``: if a concurrent retry
     won the race, the function raises ``CH409``, everything rolls back, and the store reads
     and returns the original.

  Durability is PostgreSQL's commit (``synchronous_commit`` on); commits of concurrent
  connections share WAL flushes (group commit), so 50 appenders do not cost 50 fsyncs.
* Connection loss, a server restart and timeouts raise :class:`chatd.errors.Unavailable`
  within ``acquire_timeout`` + ``connect_timeout`` + ``command_timeout``; asyncpg's pool
  reconnects by itself once PostgreSQL answers again.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Collection, Iterator, Sequence
from dataclasses import asdict
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import asyncpg
import orjson

from chatd.errors import (
    BadRequest,
    ConfigError,
    Conflict,
    Internal,
    NotFound,
    StaleVersion,
    Unavailable,
)
from chatd.models import (
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
    Session,
    User,
)
from chatd.store.base import Store, newest_first

# An arbitrary constant that names chatd's migration lock among the database's advisory locks.
MIGRATION_LOCK_ID = 0x636861746401

# SQLSTATEs raised by chatd_append (class "CH" is not used by PostgreSQL itself).
NOT_A_MEMBER = "CH404"
DUPLICATE_RACE = "CH409"

# Numbered migrations, applied in order, each in the one migration transaction. Never edit one
# that has shipped: add the next number instead.
MIGRATIONS: tuple[tuple[int, str], ...] = (
    (
        1,
        """
CREATE TABLE users (
    username      text PRIMARY KEY,
    password_hash text NOT NULL,
    created_at    bigint NOT NULL,
    disabled      boolean NOT NULL DEFAULT false,
    last_seen     bigint
);

CREATE TABLE sessions (
    token_hash text PRIMARY KEY,
    username   text NOT NULL,
    device     text NOT NULL,
    created_at bigint NOT NULL,
    expires_at bigint NOT NULL
);
CREATE INDEX sessions_username ON sessions (username);

CREATE TABLE conversations (
    conv       text PRIMARY KEY,
    kind       text NOT NULL CHECK (kind IN ('direct', 'group')),
    title      text,
    created_at bigint NOT NULL,
    last_seq   bigint NOT NULL DEFAULT 0,
    version    bigint NOT NULL DEFAULT 0
);

-- At most one direct conversation per unordered pair (user_lo < user_hi).
CREATE TABLE direct_pairs (
    user_lo text NOT NULL,
    user_hi text NOT NULL,
    conv    text NOT NULL,
    PRIMARY KEY (user_lo, user_hi)
);

-- join_order keeps members in the order they joined; a member who leaves and comes back
-- joins again at the end.
CREATE SEQUENCE member_join_order;
CREATE TABLE members (
    conv       text NOT NULL REFERENCES conversations (conv) ON DELETE CASCADE,
    username   text NOT NULL,
    role       text NOT NULL CHECK (role IN ('owner', 'admin', 'member')),
    joined_at  bigint NOT NULL,
    delivered  bigint NOT NULL DEFAULT 0,
    read       bigint NOT NULL DEFAULT 0,
    muted      boolean NOT NULL DEFAULT false,
    join_order bigint NOT NULL DEFAULT nextval('member_join_order'),
    PRIMARY KEY (conv, username)
);
CREATE INDEX members_username ON members (username);

-- No foreign key to conversations: chatd_append already holds that row's lock, and a
-- sharded deployment distributes this table by conv.
CREATE TABLE messages (
    conv      text NOT NULL,
    seq       bigint NOT NULL,
    msg_id    text NOT NULL,
    kind      text NOT NULL CHECK (kind IN ('text', 'system')),
    sender    text NOT NULL,
    client_id text,
    ts        bigint NOT NULL,
    body      text,
    media     jsonb,
    reply_to  bigint,
    event     jsonb,
    PRIMARY KEY (conv, seq)
);
-- Idempotent sends. NULL client_ids (system messages) never collide.
CREATE UNIQUE INDEX messages_sender_client_id ON messages (sender, client_id);

-- Which messages carry which blob, for media_visible_to.
CREATE TABLE message_media (
    media_id text NOT NULL,
    conv     text NOT NULL,
    seq      bigint NOT NULL,
    PRIMARY KEY (media_id, conv, seq)
);

CREATE TABLE media (
    id             text PRIMARY KEY,
    uploader       text NOT NULL,
    mime           text NOT NULL,
    size           bigint NOT NULL,
    filename       text NOT NULL,
    sha256         text NOT NULL,
    created_at     bigint NOT NULL,
    width          integer,
    height         integer,
    thumbnail_mime text
);

CREATE TABLE contacts (
    owner   text NOT NULL,
    contact text NOT NULL,
    PRIMARY KEY (owner, contact)
);
CREATE INDEX contacts_contact ON contacts (contact);

CREATE TABLE push_subscriptions (
    id         text PRIMARY KEY,
    username   text NOT NULL,
    kind       text NOT NULL,
    data       jsonb NOT NULL,
    created_at bigint NOT NULL
);
CREATE INDEX push_subscriptions_username ON push_subscriptions (username);

CREATE FUNCTION chatd_append(
    p_conv text, p_sender text, p_msg_id text, p_kind text, p_client_id text, p_ts bigint,
    p_body text, p_media jsonb, p_reply_to bigint, p_event jsonb, p_require_member boolean
) RETURNS TABLE (
    r_duplicate boolean, r_conv text, r_seq bigint, r_msg_id text, r_kind text,
    r_sender text, r_client_id text, r_ts bigint, r_body text, r_media jsonb,
    r_reply_to bigint, r_event jsonb, r_members text[]
) LANGUAGE plpgsql AS $fn$
DECLARE
    v_seq bigint;
    v_old messages%ROWTYPE;
BEGIN
    -- 1. A retry returns the original and consumes no seq.
    IF p_client_id IS NOT NULL THEN
        SELECT * INTO v_old FROM messages m
            WHERE m.sender = p_sender AND m.client_id = p_client_id;
        IF FOUND THEN
            r_duplicate := true;
            r_conv := v_old.conv; r_seq := v_old.seq; r_msg_id := v_old.msg_id;
            r_kind := v_old.kind; r_sender := v_old.sender; r_client_id := v_old.client_id;
            r_ts := v_old.ts; r_body := v_old.body; r_media := v_old.media;
            r_reply_to := v_old.reply_to; r_event := v_old.event;
            SELECT coalesce(array_agg(mb.username ORDER BY mb.join_order), '{}')
                INTO r_members FROM members mb WHERE mb.conv = v_old.conv;
            RETURN NEXT;
            RETURN;
        END IF;
    END IF;

    -- 2. The row lock serializes appends to this conversation until commit.
    UPDATE conversations c SET last_seq = c.last_seq + 1
        WHERE c.conv = p_conv RETURNING c.last_seq INTO v_seq;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no such conversation' USING ERRCODE = 'CH404';
    END IF;

    -- 3. Membership, read after the lock with this statement's fresh snapshot.
    UPDATE members mb SET delivered = greatest(mb.delivered, v_seq),
                          read = greatest(mb.read, v_seq)
        WHERE mb.conv = p_conv AND mb.username = p_sender;
    IF NOT FOUND AND p_require_member THEN
        RAISE EXCEPTION 'not a member' USING ERRCODE = 'CH404';
    END IF;

    -- 4. The unique index settles a race between two first attempts of one client_id.
    INSERT INTO messages (conv, seq, msg_id, kind, sender, client_id, ts, body, media,
                          reply_to, event)
        VALUES (p_conv, v_seq, p_msg_id, p_kind, p_sender, p_client_id, p_ts, p_body,
                p_media, p_reply_to, p_event)
        ON CONFLICT (sender, client_id) DO NOTHING;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'duplicate client_id' USING ERRCODE = 'CH409';
    END IF;
    IF p_media IS NOT NULL AND jsonb_array_length(p_media) > 0 THEN
        INSERT INTO message_media (media_id, conv, seq)
            SELECT DISTINCT e ->> 'id', p_conv, v_seq FROM jsonb_array_elements(p_media) e
            ON CONFLICT DO NOTHING;
    END IF;

    r_duplicate := false;
    r_seq := v_seq;
    SELECT coalesce(array_agg(mb.username ORDER BY mb.join_order), '{}')
        INTO r_members FROM members mb WHERE mb.conv = p_conv;
    RETURN NEXT;
END
$fn$;
""",
    ),
    (
        2,
        """
-- When the user's sessions were last revoked (disabled, password changed): every server
-- polls for recent ones and closes the sockets of the revoked sessions.
ALTER TABLE users ADD COLUMN sessions_revoked_at bigint;
CREATE INDEX users_sessions_revoked_at ON users (sessions_revoked_at)
    WHERE sessions_revoked_at IS NOT NULL;
""",
    ),
)

APPEND_SQL = (
    "SELECT * FROM chatd_append($1, $2, $3, $4, $5, $6, $7, $8::jsonb, $9, $10::jsonb, $11)"
)

MESSAGE_COLUMNS = "conv, seq, msg_id, kind, sender, client_id, ts, body, media, reply_to, event"
MEMBER_COLUMNS = "username, role, joined_at, delivered, read, muted"

# (name, parser, default) of the options chatd reads from the URL's query string.
_INT_OPTIONS = {"pool_min": 1, "pool_max": 10}
_FLOAT_OPTIONS = {"command_timeout": 5.0, "connect_timeout": 5.0, "acquire_timeout": 5.0}

# Errors that mean "the database cannot be reached or answered too late": safe to retry.
_UNAVAILABLE_ERRORS: tuple[type[BaseException], ...] = (
    OSError,  # includes ConnectionRefusedError and socket errors
    TimeoutError,  # asyncio.TimeoutError is TimeoutError since Python 3.11
    asyncpg.InterfaceError,  # "connection is closed", "pool is closing"
    asyncpg.PostgresConnectionError,  # SQLSTATE class 08
    asyncpg.exceptions.OperatorInterventionError,  # 57: shutdown, starting up, canceled
    asyncpg.exceptions.InsufficientResourcesError,  # 53: too many connections, disk full
    asyncpg.exceptions.TransactionRollbackError,  # 40: serialization failure, deadlock
)


def redact(url: str) -> str:
    """``url`` without its password, for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def parse_url(url: str) -> tuple[str, dict[str, int], dict[str, float]]:
    """Split chatd's options off ``url``: ``(dsn for asyncpg, int options, float options)``.

    Raises:
        ConfigError: an option's value is not a valid number, or pool_min > pool_max.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("postgresql", "postgres"):
        raise ConfigError(f"not a PostgreSQL URL: {redact(url)!r}")
    try:
        parts.port  # noqa: B018 (parsing it is the check)
    except ValueError as exc:
        raise ConfigError(f"bad PostgreSQL URL {redact(url)!r}: {exc}")
    ints = dict(_INT_OPTIONS)
    floats = dict(_FLOAT_OPTIONS)
    rest: list[tuple[str, str]] = []
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        try:
            if key in ints:
                ints[key] = int(value)
                if ints[key] < 0:
                    raise ValueError
            elif key in floats:
                floats[key] = float(value)
                if not floats[key] > 0:
                    raise ValueError
            else:
                rest.append((key, value))
        except ValueError:
            kind = "a whole number >= 0" if key in ints else "a number of seconds > 0"
            raise ConfigError(f"store URL option {key}={value!r} must be {kind}")
    if ints["pool_max"] < 1 or ints["pool_min"] > ints["pool_max"]:
        raise ConfigError(
            f"store URL needs 1 <= pool_max and pool_min <= pool_max "
            f"(got pool_min={ints['pool_min']}, pool_max={ints['pool_max']})"
        )
    dsn = urlunsplit(parts._replace(query=urlencode(rest)))
    return dsn, ints, floats


@contextlib.contextmanager
def _mapped_errors() -> Iterator[None]:
    """Turn driver exceptions into chatd's error tree."""
    try:
        yield
    except _UNAVAILABLE_ERRORS as exc:
        raise Unavailable(f"PostgreSQL unavailable: {type(exc).__name__}: {exc}") from exc
    except asyncpg.PostgresError as exc:
        raise Internal(f"PostgreSQL error {exc.sqlstate}: {exc}") from exc


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Release a connection to the pool as it is.

    asyncpg's default reset sends ``RESET ALL; UNLISTEN *; CLOSE ALL; ...`` on every release:
    a second round trip per append. This store never changes session state (no ``SET``,
    ``LISTEN``, session advisory locks or cursors outside a transaction), and asyncpg still
    rolls back a transaction left open, so there is nothing to reset.
    """


def _dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


def _media_json(media: Sequence[MediaItem]) -> str | None:
    return _dumps([asdict(item) for item in media]) if media else None


def _media_items(raw: str | None) -> tuple[MediaItem, ...]:
    if not raw:
        return ()
    return tuple(MediaItem(**item) for item in orjson.loads(raw))


def _message(row: asyncpg.Record, prefix: str = "") -> Message:
    event = row[f"{prefix}event"]
    return Message(
        conv=row[f"{prefix}conv"],
        seq=row[f"{prefix}seq"],
        msg_id=row[f"{prefix}msg_id"],
        kind=row[f"{prefix}kind"],
        sender=row[f"{prefix}sender"],
        client_id=row[f"{prefix}client_id"],
        ts=row[f"{prefix}ts"],
        body=row[f"{prefix}body"],
        media=_media_items(row[f"{prefix}media"]),
        reply_to=row[f"{prefix}reply_to"],
        event=orjson.loads(event) if event is not None else None,
    )


def _member(row: asyncpg.Record) -> Member:
    return Member(
        user=row["username"],
        role=row["role"],
        joined_at=row["joined_at"],
        delivered=row["delivered"],
        read=row["read"],
        muted=row["muted"],
    )


def _conversation(row: asyncpg.Record) -> Conversation:
    return Conversation(
        conv=row["conv"],
        kind=row["kind"],
        title=row["title"],
        created_at=row["created_at"],
        last_seq=row["last_seq"],
        version=row["version"],
    )


def _user(row: asyncpg.Record) -> User:
    return User(
        username=row["username"],
        password_hash=row["password_hash"],
        created_at=row["created_at"],
        disabled=row["disabled"],
        last_seen=row["last_seen"],
    )


def _session(row: asyncpg.Record) -> Session:
    return Session(
        token_hash=row["token_hash"],
        user=row["username"],
        device=row["device"],
        created_at=row["created_at"],
        expires_at=row["expires_at"],
    )


def _media_item(row: asyncpg.Record) -> MediaItem:
    return MediaItem(
        id=row["id"],
        uploader=row["uploader"],
        mime=row["mime"],
        size=row["size"],
        filename=row["filename"],
        sha256=row["sha256"],
        created_at=row["created_at"],
        width=row["width"],
        height=row["height"],
        thumbnail_mime=row["thumbnail_mime"],
    )


def _push_subscription(row: asyncpg.Record) -> PushSubscription:
    return PushSubscription(
        id=row["id"],
        user=row["username"],
        kind=row["kind"],
        data=orjson.loads(row["data"]),
        created_at=row["created_at"],
    )


def _append_args(message: NewMessage, require_member: bool) -> tuple[Any, ...]:
    return (
        message.conv,
        message.sender,
        message.msg_id,
        message.kind,
        message.client_id,
        message.ts,
        message.body,
        _media_json(message.media),
        message.reply_to,
        _dumps(message.event) if message.event is not None else None,
        require_member,
    )


class PostgresStore(Store):
    """The store on PostgreSQL: several chatd processes may share one database."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._dsn, ints, floats = parse_url(url)
        self._pool_min = ints["pool_min"]
        self._pool_max = ints["pool_max"]
        self._command_timeout = floats["command_timeout"]
        self._connect_timeout = floats["connect_timeout"]
        self._acquire_timeout = floats["acquire_timeout"]
        self._pool: asyncpg.Pool | None = None

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Open the pool and migrate. ``ConfigError`` (one line) if PostgreSQL is unreachable."""
        if self._pool is not None:
            return
        try:
            pool = await asyncio.wait_for(
                asyncpg.create_pool(
                    self._dsn,
                    min_size=self._pool_min,
                    max_size=self._pool_max,
                    command_timeout=self._command_timeout,
                    timeout=self._connect_timeout,
                    reset=_keep_session,
                ),
                # Opening pool_min connections, each bounded by connect_timeout.
                timeout=self._connect_timeout * (1 + self._pool_min),
            )
        except (
            OSError,
            TimeoutError,
            ValueError,  # a DSN asyncpg cannot parse
            asyncpg.PostgresError,
            asyncpg.InterfaceError,
        ) as exc:
            detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise ConfigError(f"cannot reach PostgreSQL at {redact(self.url)}: {detail}")
        self._pool = pool
        try:
            await self._migrate()
        except BaseException as exc:
            self._pool = None
            pool.terminate()
            if isinstance(exc, ConfigError):
                raise
            if isinstance(exc, Exception):
                detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                raise ConfigError(f"cannot migrate PostgreSQL at {redact(self.url)}: {detail}")
            raise

    async def _migrate(self) -> None:
        latest = MIGRATIONS[-1][0]
        # Waiting for another process's migration, or building an index on a large table,
        # may take longer than an ordinary statement.
        slow = max(120.0, self._command_timeout)
        async with self._transaction() as conn:
            # Held until this transaction ends: a second process starting now waits here and
            # then finds every migration applied.
            await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK_ID, timeout=slow)
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS chatd_migrations "
                "(version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
            )
            current = await conn.fetchval("SELECT coalesce(max(version), 0) FROM chatd_migrations")
            if current > latest:
                raise ConfigError(
                    f"the database at {redact(self.url)} has schema version {current}, newer "
                    f"than this chatd knows ({latest}): upgrade chatd"
                )
            for version, sql in MIGRATIONS:
                if version > current:
                    await conn.execute(sql, timeout=slow)
                    await conn.execute(
                        "INSERT INTO chatd_migrations (version) VALUES ($1)", version
                    )

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is None:
            return
        try:
            await asyncio.wait_for(pool.close(), timeout=self._command_timeout)
        except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
            pool.terminate()

    async def ping(self) -> None:
        """``SELECT 1``, bounded by two seconds for the connection and two for the answer."""
        async with self._connection(acquire_timeout=min(2.0, self._acquire_timeout)) as conn:
            await conn.fetchval("SELECT 1", timeout=min(2.0, self._command_timeout))

    async def schema_version(self) -> int:
        """The highest migration applied (for operators and tests)."""
        async with self._connection() as conn:
            version: int = await conn.fetchval("SELECT max(version) FROM chatd_migrations")
            return version

    # -- plumbing --------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _connection(
        self, *, acquire_timeout: float | None = None
    ) -> AsyncIterator[asyncpg.Connection]:
        """A pooled connection, within ``acquire_timeout``; driver errors mapped."""
        pool = self._pool
        if pool is None:
            raise Unavailable("the PostgreSQL store is not started")
        with _mapped_errors():
            async with pool.acquire(timeout=acquire_timeout or self._acquire_timeout) as conn:
                yield conn

    @contextlib.asynccontextmanager
    async def _transaction(
        self, *, isolation: str = "read_committed", readonly: bool = False
    ) -> AsyncIterator[asyncpg.Connection]:
        async with (
            self._connection() as conn,
            conn.transaction(isolation=isolation, readonly=readonly),
        ):
            yield conn

    async def _fetch(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        async with self._connection() as conn:
            rows: list[asyncpg.Record] = await conn.fetch(sql, *args)
            return rows

    async def _fetchrow(self, sql: str, *args: Any) -> asyncpg.Record | None:
        async with self._connection() as conn:
            row: asyncpg.Record | None = await conn.fetchrow(sql, *args)
            return row

    async def _execute(self, sql: str, *args: Any) -> str:
        async with self._connection() as conn:
            status: str = await conn.execute(sql, *args)
            return status

    # -- users and sessions ----------------------------------------------------------------

    async def create_user(self, username: str, password_hash: str, created_at: int) -> User:
        row = await self._fetchrow(
            "INSERT INTO users (username, password_hash, created_at) VALUES ($1, $2, $3) "
            "ON CONFLICT (username) DO NOTHING RETURNING *",
            username,
            password_hash,
            created_at,
        )
        if row is None:
            raise Conflict(f"username {username!r} is taken")
        return _user(row)

    async def get_user(self, username: str) -> User | None:
        row = await self._fetchrow("SELECT * FROM users WHERE username = $1", username)
        return _user(row) if row is not None else None

    async def existing_users(self, usernames: Collection[str]) -> set[str]:
        if not usernames:
            return set()
        rows = await self._fetch(
            "SELECT username FROM users WHERE username = ANY($1::text[]) AND NOT disabled",
            list(usernames),
        )
        return {row["username"] for row in rows}

    async def set_user_disabled(
        self, username: str, disabled: bool, *, revoked_at: int | None = None
    ) -> None:
        row = await self._fetchrow(
            "WITH u AS (UPDATE users SET disabled = $2, sessions_revoked_at ="
            " CASE WHEN $2 THEN coalesce($3::bigint, sessions_revoked_at)"
            " ELSE sessions_revoked_at END WHERE username = $1 RETURNING username),"
            " d AS (DELETE FROM sessions WHERE $2 AND username IN (SELECT username FROM u))"
            " SELECT count(*) AS n FROM u",
            username,
            disabled,
            revoked_at,
        )
        if row is None or row["n"] == 0:
            raise NotFound(f"no user {username!r}")

    async def set_password_hash(self, username: str, password_hash: str) -> None:
        status = await self._execute(
            "UPDATE users SET password_hash = $2 WHERE username = $1", username, password_hash
        )
        if status == "UPDATE 0":
            raise NotFound(f"no user {username!r}")

    async def set_last_seen(self, username: str, ts: int) -> None:
        await self._execute("UPDATE users SET last_seen = $2 WHERE username = $1", username, ts)

    async def create_session(self, session: Session) -> None:
        row = await self._fetchrow(
            "INSERT INTO sessions (token_hash, username, device, created_at, expires_at) "
            "VALUES ($1, $2, $3, $4, $5) ON CONFLICT (token_hash) DO NOTHING RETURNING 1",
            session.token_hash,
            session.user,
            session.device,
            session.created_at,
            session.expires_at,
        )
        if row is None:
            raise Conflict("a session with this token already exists")

    async def get_session(self, token_hash: str) -> Session | None:
        row = await self._fetchrow("SELECT * FROM sessions WHERE token_hash = $1", token_hash)
        return _session(row) if row is not None else None

    async def extend_session(self, token_hash: str, expires_at: int) -> None:
        await self._execute(
            "UPDATE sessions SET expires_at = $2 WHERE token_hash = $1", token_hash, expires_at
        )

    async def delete_session(self, token_hash: str) -> Session | None:
        row = await self._fetchrow(
            "DELETE FROM sessions WHERE token_hash = $1 RETURNING *", token_hash
        )
        return _session(row) if row is not None else None

    async def delete_user_sessions(
        self, username: str, *, revoked_at: int | None = None
    ) -> list[str]:
        # One statement, so one transaction: the sessions go and the revocation is recorded
        # together (a CTE that modifies data runs whether or not it is read).
        rows = await self._fetch(
            "WITH r AS (UPDATE users SET sessions_revoked_at = $2"
            " WHERE username = $1 AND $2::bigint IS NOT NULL)"
            " DELETE FROM sessions WHERE username = $1 RETURNING token_hash",
            username,
            revoked_at,
        )
        return [row["token_hash"] for row in rows]

    async def users_revoked_since(self, since: int) -> list[tuple[str, int]]:
        rows = await self._fetch(
            "SELECT username, sessions_revoked_at FROM users WHERE sessions_revoked_at >= $1"
            " ORDER BY sessions_revoked_at, username",
            since,
        )
        return [(row["username"], row["sessions_revoked_at"]) for row in rows]

    # -- conversations ---------------------------------------------------------------------

    async def get_or_create_direct(
        self, user_a: str, user_b: str, new_conv_id: str, now: int
    ) -> tuple[Conversation, bool]:
        lo, hi = sorted((user_a, user_b))
        find = (
            "SELECT c.* FROM direct_pairs p JOIN conversations c ON c.conv = p.conv "
            "WHERE p.user_lo = $1 AND p.user_hi = $2"
        )
        row = await self._fetchrow(find, lo, hi)
        if row is not None:
            return _conversation(row), False
        async with self._transaction() as conn:
            # A concurrent creator of the same pair makes this wait for its commit and then
            # insert nothing: the pair's conversation is then theirs.
            claimed = await conn.fetchval(
                "INSERT INTO direct_pairs (user_lo, user_hi, conv) VALUES ($1, $2, $3) "
                "ON CONFLICT DO NOTHING RETURNING conv",
                lo,
                hi,
                new_conv_id,
            )
            if claimed is not None:
                created = await conn.fetchrow(
                    "INSERT INTO conversations (conv, kind, title, created_at) "
                    "VALUES ($1, 'direct', NULL, $2) RETURNING *",
                    new_conv_id,
                    now,
                )
                await conn.execute(
                    "INSERT INTO members (conv, username, role, joined_at) "
                    "SELECT $1, u, 'member', $3 FROM unnest($2::text[]) WITH ORDINALITY AS t(u, i)"
                    " ORDER BY i ON CONFLICT DO NOTHING",
                    new_conv_id,
                    [user_a, user_b],
                    now,
                )
                await conn.execute(
                    "INSERT INTO contacts (owner, contact) VALUES ($1, $2), ($2, $1) "
                    "ON CONFLICT DO NOTHING",
                    user_a,
                    user_b,
                )
                return _conversation(created), True
            row = await conn.fetchrow(find, lo, hi)
        if row is None:  # the pair's row exists but its conversation is gone: not expected
            raise Internal(f"direct conversation of {lo!r} and {hi!r} is missing")
        return _conversation(row), False

    async def create_group(
        self,
        conv_id: str,
        title: str,
        members: Sequence[tuple[str, str]],
        system: NewMessage,
    ) -> AppendResult:
        async with self._transaction() as conn:
            inserted = await conn.fetchval(
                "INSERT INTO conversations (conv, kind, title, created_at) "
                "VALUES ($1, 'group', $2, $3) ON CONFLICT DO NOTHING RETURNING 1",
                conv_id,
                title,
                system.ts,
            )
            if inserted is None:
                raise Conflict(f"conversation {conv_id!r} already exists")
            await self._add_members(conn, conv_id, members, system.ts)
            return await self._append(conn, system, require_member=False)

    @staticmethod
    async def _add_members(
        conn: asyncpg.Connection, conv: str, members: Sequence[tuple[str, str]], now: int
    ) -> None:
        if not members:
            return
        # ORDER BY ordinality makes join_order follow the given order.
        await conn.execute(
            "INSERT INTO members (conv, username, role, joined_at) "
            "SELECT $1, u, r, $4 FROM unnest($2::text[], $3::text[]) WITH ORDINALITY AS t(u, r, i)"
            " ORDER BY i ON CONFLICT DO NOTHING",
            conv,
            [user for user, _ in members],
            [role for _, role in members],
            now,
        )

    async def get_conversation(self, conv: str) -> Conversation | None:
        row = await self._fetchrow("SELECT * FROM conversations WHERE conv = $1", conv)
        return _conversation(row) if row is not None else None

    async def get_members(self, conv: str) -> list[Member]:
        rows = await self._fetch(
            f"SELECT {MEMBER_COLUMNS} FROM members WHERE conv = $1 ORDER BY join_order", conv
        )
        return [_member(row) for row in rows]

    async def get_member(self, conv: str, user: str) -> Member | None:
        row = await self._fetchrow(
            f"SELECT {MEMBER_COLUMNS} FROM members WHERE conv = $1 AND username = $2", conv, user
        )
        return _member(row) if row is not None else None

    async def apply_group_change(
        self, conv: str, expected_version: int, change: GroupChange, system: NewMessage
    ) -> AppendResult:
        async with self._transaction() as conn:
            # Taking the conversation's row lock first orders this change against appends.
            bumped = await conn.fetchval(
                "UPDATE conversations SET version = version + 1, title = coalesce($3, title) "
                "WHERE conv = $1 AND version = $2 RETURNING version",
                conv,
                expected_version,
                change.title,
            )
            if bumped is None:
                version = await conn.fetchval(
                    "SELECT version FROM conversations WHERE conv = $1", conv
                )
                if version is None:
                    raise NotFound(f"no conversation {conv!r}")
                raise StaleVersion(
                    f"conversation {conv!r} is at version {version}, not {expected_version}"
                )
            if change.remove:
                await conn.execute(
                    "DELETE FROM members WHERE conv = $1 AND username = ANY($2::text[])",
                    conv,
                    list(change.remove),
                )
            await self._add_members(conn, conv, change.add, system.ts)
            if change.roles:
                await conn.execute(
                    "UPDATE members m SET role = t.r "
                    "FROM unnest($2::text[], $3::text[]) AS t(u, r) "
                    "WHERE m.conv = $1 AND m.username = t.u",
                    conv,
                    [user for user, _ in change.roles],
                    [role for _, role in change.roles],
                )
            result = await self._append(conn, system, require_member=False)
        members = list(result.members)
        members.extend(user for user in change.remove if user not in members)
        return AppendResult(result.message, result.duplicate, tuple(members))

    async def list_conversations(self, user: str) -> list[ConversationSummary]:
        # One snapshot for both queries, so members and summaries agree.
        async with self._transaction(isolation="repeatable_read", readonly=True) as conn:
            rows = await conn.fetch(
                "SELECT c.*, me.read AS my_read,"
                " lm.conv AS lm_conv, lm.seq AS lm_seq, lm.msg_id AS lm_msg_id,"
                " lm.kind AS lm_kind, lm.sender AS lm_sender, lm.client_id AS lm_client_id,"
                " lm.ts AS lm_ts, lm.body AS lm_body, lm.media AS lm_media,"
                " lm.reply_to AS lm_reply_to, lm.event AS lm_event,"
                " (SELECT count(*) FROM messages x WHERE x.conv = c.conv AND x.seq > me.read"
                "  AND x.sender <> $1) AS unread "
                "FROM members me JOIN conversations c ON c.conv = me.conv "
                "LEFT JOIN messages lm ON lm.conv = c.conv AND lm.seq = c.last_seq "
                "WHERE me.username = $1",
                user,
            )
            member_rows = await conn.fetch(
                f"SELECT conv, {MEMBER_COLUMNS} FROM members WHERE conv IN "
                "(SELECT conv FROM members WHERE username = $1) ORDER BY conv, join_order",
                user,
            )
        members: dict[str, list[Member]] = {}
        for row in member_rows:
            members.setdefault(row["conv"], []).append(_member(row))
        summaries = []
        for row in rows:
            last = _message(row, "lm_") if row["lm_seq"] is not None else None
            summaries.append(
                ConversationSummary(
                    conversation=_conversation(row),
                    members=tuple(members.get(row["conv"], ())),
                    last_message=last,
                    unread=row["unread"],
                    last_activity=last.ts if last is not None else row["created_at"],
                )
            )
        newest_first(summaries)
        return summaries

    # -- messages and markers --------------------------------------------------------------

    async def append_message(self, message: NewMessage) -> AppendResult:
        async with self._connection() as conn:
            return await self._append(conn, message, require_member=True)

    async def _append(
        self, conn: asyncpg.Connection, message: NewMessage, *, require_member: bool
    ) -> AppendResult:
        """Append through chatd_append: one round trip (see the module docstring)."""
        try:
            row = await conn.fetchrow(APPEND_SQL, *_append_args(message, require_member))
        except asyncpg.PostgresError as exc:
            if exc.sqlstate == NOT_A_MEMBER:
                raise NotFound(f"no conversation {message.conv!r} with member {message.sender!r}")
            if exc.sqlstate == DUPLICATE_RACE and not conn.is_in_transaction():
                return await self._original(conn, message)
            if exc.sqlstate == DUPLICATE_RACE:
                raise Conflict(f"client_id {message.client_id!r} of {message.sender!r} is used")
            raise
        assert row is not None  # the function always returns one row
        members = tuple(row["r_members"])
        if row["r_duplicate"]:
            return AppendResult(_message(row, "r_"), True, members)
        stored = Message(
            conv=message.conv,
            seq=row["r_seq"],
            msg_id=message.msg_id,
            kind=message.kind,
            sender=message.sender,
            client_id=message.client_id,
            ts=message.ts,
            body=message.body,
            media=message.media,
            reply_to=message.reply_to,
            event=message.event,
        )
        return AppendResult(stored, False, members)

    async def _original(self, conn: asyncpg.Connection, message: NewMessage) -> AppendResult:
        """The message a concurrent first attempt of the same client_id stored."""
        row = await conn.fetchrow(
            f"SELECT {MESSAGE_COLUMNS}, (SELECT coalesce(array_agg(mb.username ORDER BY "
            "mb.join_order), '{}') FROM members mb WHERE mb.conv = m.conv) AS members "
            "FROM messages m WHERE m.sender = $1 AND m.client_id = $2",
            message.sender,
            message.client_id,
        )
        if row is None:
            raise Unavailable("a concurrent send with the same client_id vanished; retry")
        return AppendResult(_message(row), True, tuple(row["members"]))

    async def history(
        self, conv: str, *, before: int | None, after: int | None, limit: int
    ) -> tuple[list[Message], bool]:
        if limit < 1:
            raise BadRequest("limit must be at least 1")
        if after is not None:
            # The oldest messages past ``after`` (and before ``before`` if both are given).
            rows = await self._fetch(
                f"SELECT {MESSAGE_COLUMNS} FROM messages WHERE conv = $1 AND seq > $2 "
                "AND ($3::bigint IS NULL OR seq < $3) ORDER BY seq LIMIT $4",
                conv,
                after,
                before,
                limit + 1,
            )
            more = len(rows) > limit
            return [_message(row) for row in rows[:limit]], more
        rows = await self._fetch(
            f"SELECT {MESSAGE_COLUMNS} FROM messages WHERE conv = $1 "
            "AND ($2::bigint IS NULL OR seq < $2) ORDER BY seq DESC LIMIT $3",
            conv,
            before,
            limit + 1,
        )
        more = len(rows) > limit
        return [_message(row) for row in reversed(rows[:limit])], more

    async def set_marker(self, conv: str, user: str, kind: MarkerKind, seq: int) -> Member | None:
        # One statement: the member check, the bound check and the monotonic raise.
        row = await self._fetchrow(
            "WITH c AS (SELECT last_seq FROM conversations WHERE conv = $1),"
            " me AS (SELECT 1 FROM members WHERE conv = $1 AND username = $2),"
            " moved AS (UPDATE members SET delivered = greatest(delivered, $3),"
            "   read = CASE WHEN $4 THEN greatest(read, $3) ELSE read END"
            "   WHERE conv = $1 AND username = $2 AND $3 <= (SELECT last_seq FROM c)"
            "   AND (delivered < $3 OR ($4 AND read < $3))"
            f"   RETURNING {MEMBER_COLUMNS})"
            " SELECT (SELECT last_seq FROM c) AS last_seq, EXISTS (SELECT 1 FROM me) AS is_member,"
            " moved.* FROM (SELECT 1) AS one LEFT JOIN moved ON true",
            conv,
            user,
            seq,
            kind == "read",
        )
        assert row is not None
        if not row["is_member"]:
            raise NotFound(f"{user!r} is not a member of {conv!r}")
        if seq > row["last_seq"]:
            raise BadRequest(f"seq {seq} is past the last message ({row['last_seq']})")
        return _member(row) if row["username"] is not None else None

    async def set_muted(self, conv: str, user: str, muted: bool) -> None:
        status = await self._execute(
            "UPDATE members SET muted = $3 WHERE conv = $1 AND username = $2", conv, user, muted
        )
        if status == "UPDATE 0":
            raise NotFound(f"{user!r} is not a member of {conv!r}")

    # -- contacts --------------------------------------------------------------------------

    async def add_contact(self, owner: str, contact: str) -> None:
        await self._execute(
            "INSERT INTO contacts (owner, contact) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            owner,
            contact,
        )

    async def remove_contact(self, owner: str, contact: str) -> None:
        await self._execute(
            "DELETE FROM contacts WHERE owner = $1 AND contact = $2", owner, contact
        )

    async def list_contacts(self, owner: str) -> list[Contact]:
        rows = await self._fetch(
            "SELECT c.contact, u.last_seen FROM contacts c "
            "LEFT JOIN users u ON u.username = c.contact WHERE c.owner = $1 ORDER BY c.contact",
            owner,
        )
        return [Contact(user=row["contact"], last_seen=row["last_seen"]) for row in rows]

    async def followers(self, user: str) -> list[str]:
        rows = await self._fetch(
            "SELECT owner FROM contacts WHERE contact = $1 ORDER BY owner", user
        )
        return [row["owner"] for row in rows]

    # -- media -----------------------------------------------------------------------------

    async def create_media(self, item: MediaItem) -> None:
        row = await self._fetchrow(
            "INSERT INTO media (id, uploader, mime, size, filename, sha256, created_at, width,"
            " height, thumbnail_mime) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"
            " ON CONFLICT (id) DO NOTHING RETURNING 1",
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
        )
        if row is None:
            raise Conflict(f"media {item.id!r} already exists")

    async def get_media(self, media_id: str) -> MediaItem | None:
        row = await self._fetchrow("SELECT * FROM media WHERE id = $1", media_id)
        return _media_item(row) if row is not None else None

    async def media_visible_to(self, media_id: str, user: str) -> bool:
        row = await self._fetchrow(
            "SELECT EXISTS (SELECT 1 FROM media WHERE id = $1 AND uploader = $2)"
            " OR EXISTS (SELECT 1 FROM message_media mm JOIN members m ON m.conv = mm.conv"
            "  WHERE mm.media_id = $1 AND m.username = $2) AS visible",
            media_id,
            user,
        )
        return bool(row is not None and row["visible"])

    # -- push subscriptions ----------------------------------------------------------------

    async def add_push_subscription(self, sub: PushSubscription) -> None:
        await self._execute(
            "INSERT INTO push_subscriptions (id, username, kind, data, created_at)"
            " VALUES ($1, $2, $3, $4::jsonb, $5) ON CONFLICT (id) DO UPDATE SET"
            " username = excluded.username, kind = excluded.kind, data = excluded.data,"
            " created_at = excluded.created_at",
            sub.id,
            sub.user,
            sub.kind,
            _dumps(sub.data),
            sub.created_at,
        )

    async def delete_push_subscription(self, user: str, sub_id: str) -> bool:
        status = await self._execute(
            "DELETE FROM push_subscriptions WHERE id = $1 AND username = $2", sub_id, user
        )
        return status != "DELETE 0"

    async def push_subscriptions(self, users: Collection[str]) -> list[PushSubscription]:
        if not users:
            return []
        rows = await self._fetch(
            "SELECT * FROM push_subscriptions WHERE username = ANY($1::text[])"
            " ORDER BY created_at, id",
            list(users),
        )
        return [_push_subscription(row) for row in rows]

    async def delete_push_subscription_by_id(self, sub_id: str) -> None:
        await self._execute("DELETE FROM push_subscriptions WHERE id = $1", sub_id)
