"""The MongoDB store (``mongodb://host1,host2/chatd?replicaSet=rs0``), through PyMongo's own
asyncio API (:class:`pymongo.AsyncMongoClient`; not Motor, which is deprecated).

MongoDB must be a replica set (a single-node one is fine) or a sharded cluster: appends use
multi-document transactions, which a standalone ``mongod`` refuses. :meth:`MongoStore.start`
checks this and stops with a one-line ``ConfigError`` otherwise.

URL options are MongoDB's own. chatd reads ``timeoutMS`` (default 5000) as the bound on every
store call, transaction retries included, and fills in ``serverSelectionTimeoutMS`` and
``connectTimeoutMS`` with the same value and ``w=majority`` unless the URL sets them. The
database is the URL's path (``chatd`` if none).

Collections (created with their indexes at start; the schema version is the ``meta``
document ``{_id: "schema", version: N}``):

    users               _id = username; sessions_revoked_at (partial index)
    sessions            _id = token hash; index user
    conversations       _id = conv; last_seq (the per-conversation counter), version,
                        next_order (join order of the next member), pair (direct only, unique)
    members             unique (conv, user); index user; index (conv, order)
    messages            unique (conv, seq); unique (sender, client_id) where client_id is a
                        string; sparse index media.id
    media               _id = media id
    contacts            unique (owner, contact); index contact
    push_subscriptions  _id = id; index user

An append is one transaction: look up ``(sender, client_id)`` (a retry returns the original),
``find_one_and_update`` ``$inc`` of the conversation's ``last_seq`` (returning the new value),
the sender's markers (which is also the membership check), the insert, the member list. Two
appends to one conversation write the same counter document, so one of them hits a write
conflict and ``with_transaction`` runs it again from the start: seqs are gapless and the
membership check always sees the latest group change (which writes the same document). The
unique index settles two first attempts of one client_id: the loser's transaction aborts
with ``DuplicateKeyError`` and the store returns the winner's message.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, Collection, Iterator, Sequence
from dataclasses import asdict
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlsplit, urlunsplit

import pymongo
from pymongo import AsyncMongoClient, IndexModel, ReturnDocument, UpdateOne
from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import (
    CollectionInvalid,
    ConfigurationError,
    ConnectionFailure,
    DuplicateKeyError,
    InvalidOperation,
    OperationFailure,
    PyMongoError,
)
from pymongo.read_concern import ReadConcern
from pymongo.write_concern import WriteConcern

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

Doc = dict[str, Any]
T = TypeVar("T")

DEFAULT_DATABASE = "chatd"
DEFAULT_TIMEOUT_MS = 5000

COLLECTIONS = (
    "meta",
    "users",
    "sessions",
    "conversations",
    "members",
    "messages",
    "media",
    "contacts",
    "push_subscriptions",
)

# Server error codes that mean "not now, retry": the server is stepping down, shutting down
# or unreachable from the node we talk to. (Most arrive as NotPrimaryError or carry a
# retryable label; these are the ones that may not.)
_RETRYABLE_CODES = frozenset({6, 7, 89, 91, 112, 189, 262, 9001, 10107, 11600, 11602, 13435})
_NAMESPACE_EXISTS = 48


def redact(url: str) -> str:
    """``url`` without its password, for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.replace(parts.password, "***", 1)))


def _first_line(exc: BaseException, limit: int = 200) -> str:
    text = str(exc).strip().splitlines()
    line = text[0] if text else type(exc).__name__
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _is_retryable(exc: PyMongoError) -> bool:
    if isinstance(exc, ConnectionFailure) or exc.timeout:
        return True
    if exc.has_error_label("TransientTransactionError") or exc.has_error_label(
        "RetryableWriteError"
    ):
        return True
    if isinstance(exc, OperationFailure) and exc.code in _RETRYABLE_CODES:
        return True
    # "Cannot use AsyncMongoClient after close": the store is shutting down.
    return isinstance(exc, InvalidOperation)


def _mapped(exc: PyMongoError) -> ChatError:
    if _is_retryable(exc):
        return Unavailable(f"MongoDB unavailable: {type(exc).__name__}: {_first_line(exc)}")
    return Internal(f"MongoDB error: {type(exc).__name__}: {_first_line(exc)}")


# -- documents <-> records ------------------------------------------------------------------


def _message_doc(message: NewMessage, seq: int) -> Doc:
    doc: Doc = {
        "conv": message.conv,
        "seq": seq,
        "msg_id": message.msg_id,
        "kind": message.kind,
        "sender": message.sender,
        "client_id": message.client_id,
        "ts": message.ts,
        "body": message.body,
        "reply_to": message.reply_to,
        "event": message.event,
    }
    if message.media:  # absent rather than empty, so the sparse media.id index stays small
        doc["media"] = [asdict(item) for item in message.media]
    return doc


def _stored(message: NewMessage, seq: int) -> Message:
    return Message(
        conv=message.conv,
        seq=seq,
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


def _message(doc: Doc) -> Message:
    return Message(
        conv=doc["conv"],
        seq=doc["seq"],
        msg_id=doc["msg_id"],
        kind=doc["kind"],
        sender=doc["sender"],
        client_id=doc.get("client_id"),
        ts=doc["ts"],
        body=doc.get("body"),
        media=tuple(MediaItem(**item) for item in doc.get("media") or ()),
        reply_to=doc.get("reply_to"),
        event=doc.get("event"),
    )


def _member(doc: Doc) -> Member:
    return Member(
        user=doc["user"],
        role=doc["role"],
        joined_at=doc["joined_at"],
        delivered=doc.get("delivered", 0),
        read=doc.get("read", 0),
        muted=doc.get("muted", False),
    )


def _new_member_fields(role: str, joined_at: int, order: int) -> Doc:
    """A new member's fields other than ``conv`` and ``user`` (an upsert's filter sets those)."""
    return {
        "role": role,
        "joined_at": joined_at,
        "delivered": 0,
        "read": 0,
        "muted": False,
        "order": order,
    }


def _member_doc(conv: str, user: str, role: str, joined_at: int, order: int) -> Doc:
    return {"conv": conv, "user": user, **_new_member_fields(role, joined_at, order)}


def _conversation(doc: Doc) -> Conversation:
    return Conversation(
        conv=doc["_id"],
        kind=doc["kind"],
        title=doc.get("title"),
        created_at=doc["created_at"],
        last_seq=doc.get("last_seq", 0),
        version=doc.get("version", 0),
    )


def _user(doc: Doc) -> User:
    return User(
        username=doc["_id"],
        password_hash=doc["password_hash"],
        created_at=doc["created_at"],
        disabled=doc.get("disabled", False),
        last_seen=doc.get("last_seen"),
    )


def _session(doc: Doc) -> Session:
    return Session(
        token_hash=doc["_id"],
        user=doc["user"],
        device=doc["device"],
        created_at=doc["created_at"],
        expires_at=doc["expires_at"],
    )


def _media_item(doc: Doc) -> MediaItem:
    fields = {key: value for key, value in doc.items() if key != "_id"}
    return MediaItem(id=doc["_id"], **fields)


def _push_subscription(doc: Doc) -> PushSubscription:
    return PushSubscription(
        id=doc["_id"],
        user=doc["user"],
        kind=doc["kind"],
        data=doc.get("data") or {},
        created_at=doc.get("created_at", 0),
    )


def _client_id_filter(sender: str, client_id: str) -> Doc:
    # Spelled with $type so that the planner can use the partial unique index.
    return {"sender": sender, "client_id": {"$type": "string", "$eq": client_id}}


def _dedupe(members: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    seen: set[str] = set()
    unique = []
    for user, role in members:
        if user not in seen:
            seen.add(user)
            unique.append((user, role))
    return unique


# -- migrations -----------------------------------------------------------------------------


async def _migration_1(db: AsyncDatabase[Doc]) -> None:
    """Every collection (a transaction cannot create one everywhere) and every index."""
    existing = set(await db.list_collection_names())
    for name in COLLECTIONS:
        if name in existing:
            continue
        try:
            await db.create_collection(name)
        except CollectionInvalid:
            pass  # another process created it meanwhile
        except OperationFailure as exc:
            if exc.code != _NAMESPACE_EXISTS:
                raise
    await db["sessions"].create_indexes([IndexModel([("user", 1)], name="user")])
    await db["conversations"].create_indexes(
        [
            IndexModel(
                [("pair", 1)],
                name="pair_unique",
                unique=True,
                partialFilterExpression={"pair": {"$exists": True}},
            )
        ]
    )
    await db["members"].create_indexes(
        [
            IndexModel([("conv", 1), ("user", 1)], name="conv_user_unique", unique=True),
            IndexModel([("user", 1)], name="user"),
            IndexModel([("conv", 1), ("order", 1)], name="conv_order"),
        ]
    )
    await db["messages"].create_indexes(
        [
            IndexModel([("conv", 1), ("seq", 1)], name="conv_seq_unique", unique=True),
            IndexModel(
                [("sender", 1), ("client_id", 1)],
                name="sender_client_id_unique",
                unique=True,
                partialFilterExpression={"client_id": {"$type": "string"}},
            ),
            IndexModel([("media.id", 1)], name="media_id", sparse=True),
        ]
    )
    await db["contacts"].create_indexes(
        [
            IndexModel([("owner", 1), ("contact", 1)], name="owner_contact_unique", unique=True),
            IndexModel([("contact", 1)], name="contact"),
        ]
    )
    await db["push_subscriptions"].create_indexes([IndexModel([("user", 1)], name="user")])


async def _migration_2(db: AsyncDatabase[Doc]) -> None:
    """``users.sessions_revoked_at``, which every server polls for recent revocations."""
    await db["users"].create_indexes(
        [
            IndexModel(
                [("sessions_revoked_at", 1)],
                name="sessions_revoked_at",
                partialFilterExpression={"sessions_revoked_at": {"$exists": True}},
            )
        ]
    )


# Numbered migrations, each idempotent (several processes may run one at the same time).
# Never edit one that has shipped: add the next number instead.
MIGRATIONS: tuple[tuple[int, Callable[[AsyncDatabase[Doc]], Awaitable[None]]], ...] = (
    (1, _migration_1),
    (2, _migration_2),
)


class MongoStore(Store):
    """The store on a MongoDB replica set or sharded cluster."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("mongodb", "mongodb+srv"):
            raise ConfigError(f"not a MongoDB URL: {redact(url)!r}")
        self.url = url
        options = {key.lower(): value for key, value in parse_qsl(parts.query)}
        try:
            timeout_ms = float(options.get("timeoutms", DEFAULT_TIMEOUT_MS))
            if not timeout_ms > 0:
                raise ValueError
        except ValueError:
            raise ConfigError(
                f"store URL option timeoutMS={options['timeoutms']!r} must be milliseconds > 0"
            )
        self._timeout = timeout_ms / 1000
        self._client_options: dict[str, Any] = {}
        if "serverselectiontimeoutms" not in options:
            self._client_options["serverSelectionTimeoutMS"] = int(timeout_ms)
        if "connecttimeoutms" not in options:
            self._client_options["connectTimeoutMS"] = int(timeout_ms)
        if "w" not in options:
            self._client_options["w"] = "majority"
        self._database_name = parts.path.lstrip("/") or DEFAULT_DATABASE
        self._client: AsyncMongoClient[Doc] | None = None
        self._db: AsyncDatabase[Doc] | None = None

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Connect, check for transactions support, migrate; ``ConfigError`` if unreachable."""
        if self._client is not None:
            return
        where = redact(self.url)
        try:
            client: AsyncMongoClient[Doc] = AsyncMongoClient(
                self.url, document_class=dict, tz_aware=False, **self._client_options
            )
        except (ConfigurationError, ValueError, TypeError) as exc:
            raise ConfigError(f"bad MongoDB URL {where}: {_first_line(exc)}")
        try:
            with pymongo.timeout(self._timeout):
                hello = await client.admin.command("hello")
            if not hello.get("setName") and hello.get("msg") != "isdbgrid":
                raise ConfigError(
                    f"MongoDB at {where} is a standalone server; chatd needs transactions, so "
                    "a replica set (a single node started with --replSet is enough) or a "
                    "sharded cluster"
                )
            db = client[self._database_name]
            with pymongo.timeout(self._timeout * 6):  # index builds on a large database
                await self._migrate(db)
        except ConfigError:
            await client.close()
            raise
        except PyMongoError as exc:
            await client.close()
            raise ConfigError(f"cannot reach MongoDB at {where}: {_first_line(exc)}")
        self._client, self._db = client, db

    async def _migrate(self, db: AsyncDatabase[Doc]) -> None:
        latest = MIGRATIONS[-1][0]
        meta = await db["meta"].find_one({"_id": "schema"})
        current: int = meta["version"] if meta else 0
        if current > latest:
            raise ConfigError(
                f"the MongoDB database {self._database_name!r} has schema version {current}, "
                f"newer than this chatd knows ({latest}): upgrade chatd"
            )
        for version, migrate in MIGRATIONS:
            if version > current:
                await migrate(db)
                for attempt in range(2):
                    try:
                        await db["meta"].update_one(
                            {"_id": "schema"}, {"$max": {"version": version}}, upsert=True
                        )
                        break
                    except DuplicateKeyError:
                        # Two processes upserted at once; the second attempt is an update.
                        if attempt:
                            raise

    async def close(self) -> None:
        client, self._client, self._db = self._client, None, None
        if client is not None:
            await client.close()

    async def ping(self) -> None:
        with self._guard(min(2.0, self._timeout)):
            await self._mongo().admin.command("ping")

    async def schema_version(self) -> int:
        """The highest migration applied (for operators and tests)."""
        with self._guard():
            meta = await self._c("meta").find_one({"_id": "schema"})
        return int(meta["version"]) if meta else 0

    # -- plumbing --------------------------------------------------------------------------

    def _mongo(self) -> AsyncMongoClient[Doc]:
        if self._client is None:
            raise Unavailable("the MongoDB store is not started")
        return self._client

    def _c(self, name: str) -> AsyncCollection[Doc]:
        if self._db is None:
            raise Unavailable("the MongoDB store is not started")
        return self._db[name]

    @contextlib.contextmanager
    def _guard(self, seconds: float | None = None) -> Iterator[None]:
        """Bound the block by the store's timeout and map driver errors to chatd's tree."""
        with pymongo.timeout(seconds or self._timeout):
            try:
                yield
            except PyMongoError as exc:
                raise _mapped(exc) from exc

    async def _transaction(self, callback: Callable[[AsyncClientSession], Awaitable[T]]) -> T:
        """Run ``callback`` in a transaction, again from the start on a transient error
        (a write conflict), within the store's timeout. ``callback`` must only touch the
        database through the session it is given, and let every driver error propagate."""
        async with self._mongo().start_session() as session:
            result: T = await session.with_transaction(
                callback,
                read_concern=ReadConcern("snapshot"),
                write_concern=WriteConcern(w="majority"),
            )
            return result

    async def _member_names(self, conv: str, session: AsyncClientSession | None) -> list[str]:
        cursor = (
            self._c("members")
            .find({"conv": conv}, {"user": 1, "_id": 0}, session=session)
            .sort("order", 1)
        )
        return [doc["user"] async for doc in cursor]

    # -- users and sessions ----------------------------------------------------------------

    async def create_user(self, username: str, password_hash: str, created_at: int) -> User:
        doc: Doc = {
            "_id": username,
            "password_hash": password_hash,
            "created_at": created_at,
            "disabled": False,
            "last_seen": None,
        }
        with self._guard():
            try:
                await self._c("users").insert_one(doc)
            except DuplicateKeyError:
                raise Conflict(f"username {username!r} is taken")
        return _user(doc)

    async def get_user(self, username: str) -> User | None:
        with self._guard():
            doc = await self._c("users").find_one({"_id": username})
        return _user(doc) if doc is not None else None

    async def existing_users(self, usernames: Collection[str]) -> set[str]:
        if not usernames:
            return set()
        with self._guard():
            cursor = self._c("users").find(
                {"_id": {"$in": list(usernames)}, "disabled": {"$ne": True}}, {"_id": 1}
            )
            return {doc["_id"] async for doc in cursor}

    async def set_user_disabled(
        self, username: str, disabled: bool, *, revoked_at: int | None = None
    ) -> None:
        changes: Doc = {"disabled": disabled}
        if disabled and revoked_at is not None:
            changes["sessions_revoked_at"] = revoked_at

        async def change(s: AsyncClientSession) -> bool:
            found = await self._c("users").update_one(
                {"_id": username}, {"$set": changes}, session=s
            )
            if found.matched_count and disabled:
                await self._c("sessions").delete_many({"user": username}, session=s)
            return found.matched_count > 0

        with self._guard():
            if not await self._transaction(change):
                raise NotFound(f"no user {username!r}")

    async def set_password_hash(self, username: str, password_hash: str) -> None:
        with self._guard():
            found = await self._c("users").update_one(
                {"_id": username}, {"$set": {"password_hash": password_hash}}
            )
        if found.matched_count == 0:
            raise NotFound(f"no user {username!r}")

    async def set_last_seen(self, username: str, ts: int) -> None:
        with self._guard():
            await self._c("users").update_one({"_id": username}, {"$set": {"last_seen": ts}})

    async def create_session(self, session: Session) -> None:
        with self._guard():
            try:
                await self._c("sessions").insert_one(
                    {
                        "_id": session.token_hash,
                        "user": session.user,
                        "device": session.device,
                        "created_at": session.created_at,
                        "expires_at": session.expires_at,
                    }
                )
            except DuplicateKeyError:
                raise Conflict("a session with this token already exists")

    async def get_session(self, token_hash: str) -> Session | None:
        with self._guard():
            doc = await self._c("sessions").find_one({"_id": token_hash})
        return _session(doc) if doc is not None else None

    async def extend_session(self, token_hash: str, expires_at: int) -> None:
        with self._guard():
            await self._c("sessions").update_one(
                {"_id": token_hash}, {"$set": {"expires_at": expires_at}}
            )

    async def delete_session(self, token_hash: str) -> Session | None:
        with self._guard():
            doc = await self._c("sessions").find_one_and_delete({"_id": token_hash})
        return _session(doc) if doc is not None else None

    async def delete_user_sessions(
        self, username: str, *, revoked_at: int | None = None
    ) -> list[str]:
        async def delete(s: AsyncClientSession) -> list[str]:
            sessions = self._c("sessions")
            hashes = [
                doc["_id"] async for doc in sessions.find({"user": username}, {"_id": 1}, session=s)
            ]
            if hashes:
                await sessions.delete_many({"_id": {"$in": hashes}}, session=s)
            if revoked_at is not None:
                await self._c("users").update_one(
                    {"_id": username}, {"$set": {"sessions_revoked_at": revoked_at}}, session=s
                )
            return hashes

        with self._guard():
            return await self._transaction(delete)

    async def users_revoked_since(self, since: int) -> list[tuple[str, int]]:
        # Spelled with $exists so that the planner can use the partial index.
        recent: Doc = {"sessions_revoked_at": {"$exists": True, "$gte": since}}
        with self._guard():
            cursor = (
                self._c("users")
                .find(recent, {"sessions_revoked_at": 1})
                .sort([("sessions_revoked_at", 1), ("_id", 1)])
            )
            return [(doc["_id"], doc["sessions_revoked_at"]) async for doc in cursor]

    # -- conversations ---------------------------------------------------------------------

    async def get_or_create_direct(
        self, user_a: str, user_b: str, new_conv_id: str, now: int
    ) -> tuple[Conversation, bool]:
        lo, hi = sorted((user_a, user_b))
        # Usernames never hold a newline, so this names the unordered pair unambiguously.
        pair = f"{lo}\n{hi}"
        # Spelled with $exists so that the planner can use the partial unique index.
        by_pair: Doc = {"pair": {"$exists": True, "$eq": pair}}
        with self._guard():
            found = await self._c("conversations").find_one(by_pair)
            if found is not None:
                return _conversation(found), False

            async def create(s: AsyncClientSession) -> Doc:
                doc: Doc = {
                    "_id": new_conv_id,
                    "kind": "direct",
                    "title": None,
                    "created_at": now,
                    "last_seq": 0,
                    "version": 0,
                    "next_order": 2,
                    "pair": pair,
                }
                await self._c("conversations").insert_one(doc, session=s)
                users = [user_a] if user_a == user_b else [user_a, user_b]
                await self._c("members").insert_many(
                    [_member_doc(new_conv_id, u, "member", now, i) for i, u in enumerate(users)],
                    session=s,
                )
                await self._c("contacts").bulk_write(
                    [
                        UpdateOne(
                            {"owner": owner, "contact": contact},
                            {"$set": {"owner": owner, "contact": contact}},
                            upsert=True,
                        )
                        for owner, contact in ((user_a, user_b), (user_b, user_a))
                    ],
                    session=s,
                )
                return doc

            try:
                return _conversation(await self._transaction(create)), True
            except DuplicateKeyError:
                # A concurrent creator of the same pair committed first: theirs it is.
                found = await self._c("conversations").find_one(by_pair)
        if found is None:
            raise Unavailable("the direct conversation was created concurrently; retry")
        return _conversation(found), False

    async def create_group(
        self,
        conv_id: str,
        title: str,
        members: Sequence[tuple[str, str]],
        system: NewMessage,
    ) -> AppendResult:
        unique = _dedupe(members)

        async def create(s: AsyncClientSession) -> AppendResult:
            await self._c("conversations").insert_one(
                {
                    "_id": conv_id,
                    "kind": "group",
                    "title": title,
                    "created_at": system.ts,
                    "last_seq": 0,
                    "version": 0,
                    "next_order": len(unique),
                },
                session=s,
            )
            if unique:
                await self._c("members").insert_many(
                    [
                        _member_doc(conv_id, user, role, system.ts, i)
                        for i, (user, role) in enumerate(unique)
                    ],
                    session=s,
                )
            return await self._append_in(s, system, require_member=False)

        with self._guard():
            try:
                return await self._transaction(create)
            except DuplicateKeyError:
                raise Conflict(f"conversation {conv_id!r} already exists")

    async def get_conversation(self, conv: str) -> Conversation | None:
        with self._guard():
            doc = await self._c("conversations").find_one({"_id": conv})
        return _conversation(doc) if doc is not None else None

    async def get_members(self, conv: str) -> list[Member]:
        with self._guard():
            cursor = self._c("members").find({"conv": conv}).sort("order", 1)
            return [_member(doc) async for doc in cursor]

    async def get_member(self, conv: str, user: str) -> Member | None:
        with self._guard():
            doc = await self._c("members").find_one({"conv": conv, "user": user})
        return _member(doc) if doc is not None else None

    async def apply_group_change(
        self, conv: str, expected_version: int, change: GroupChange, system: NewMessage
    ) -> AppendResult:
        added = _dedupe(change.add)

        async def apply(s: AsyncClientSession) -> AppendResult:
            conversations = self._c("conversations")
            update: Doc = {"$inc": {"version": 1, "next_order": len(added)}}
            if change.title is not None:
                update["$set"] = {"title": change.title}
            # Writing the conversation document orders this change against every append.
            before = await conversations.find_one_and_update(
                {"_id": conv, "version": expected_version},
                update,
                projection={"next_order": 1},
                return_document=ReturnDocument.BEFORE,
                session=s,
            )
            if before is None:
                current = await conversations.find_one({"_id": conv}, {"version": 1}, session=s)
                if current is None:
                    raise NotFound(f"no conversation {conv!r}")
                raise StaleVersion(
                    f"conversation {conv!r} is at version {current.get('version', 0)}, "
                    f"not {expected_version}"
                )
            members = self._c("members")
            if change.remove:
                await members.delete_many(
                    {"conv": conv, "user": {"$in": list(change.remove)}}, session=s
                )
            first = before.get("next_order", 0)
            writes = [
                UpdateOne(
                    {"conv": conv, "user": user},
                    {"$setOnInsert": _new_member_fields(role, system.ts, first + i)},
                    upsert=True,
                )
                for i, (user, role) in enumerate(added)
            ]
            writes += [
                UpdateOne({"conv": conv, "user": user}, {"$set": {"role": role}})
                for user, role in change.roles
            ]
            if writes:
                await members.bulk_write(writes, ordered=True, session=s)
            return await self._append_in(s, system, require_member=False)

        with self._guard():
            result = await self._transaction(apply)
        names = list(result.members)
        names.extend(user for user in change.remove if user not in names)
        return AppendResult(result.message, result.duplicate, tuple(names))

    async def list_conversations(self, user: str) -> list[ConversationSummary]:
        async def read(s: AsyncClientSession) -> list[ConversationSummary]:
            members, messages = self._c("members"), self._c("messages")
            mine = {
                doc["conv"]: doc.get("read", 0)
                async for doc in members.find({"user": user}, {"conv": 1, "read": 1}, session=s)
            }
            if not mine:
                return []
            convs = list(mine)
            conversations = {
                doc["_id"]: doc
                async for doc in self._c("conversations").find({"_id": {"$in": convs}}, session=s)
            }
            by_conv: dict[str, list[Member]] = {}
            cursor = members.find({"conv": {"$in": convs}}, session=s).sort(
                [("conv", 1), ("order", 1)]
            )
            async for doc in cursor:
                by_conv.setdefault(doc["conv"], []).append(_member(doc))
            wanted = [
                {"conv": c, "seq": doc["last_seq"]}
                for c, doc in conversations.items()
                if doc.get("last_seq", 0) > 0
            ]
            last: dict[str, Message] = {}
            if wanted:
                async for doc in messages.find({"$or": wanted}, session=s):
                    last[doc["conv"]] = _message(doc)
            pipeline: list[Doc] = [
                {
                    "$match": {
                        "$or": [{"conv": c, "seq": {"$gt": r}} for c, r in mine.items()],
                        "sender": {"$ne": user},
                    }
                },
                {"$group": {"_id": "$conv", "n": {"$sum": 1}}},
            ]
            unread = {
                doc["_id"]: int(doc["n"])
                async for doc in await messages.aggregate(pipeline, session=s)
            }
            summaries = []
            for conv, doc in conversations.items():
                message = last.get(conv)
                summaries.append(
                    ConversationSummary(
                        conversation=_conversation(doc),
                        members=tuple(by_conv.get(conv, ())),
                        last_message=message,
                        unread=unread.get(conv, 0),
                        last_activity=message.ts if message is not None else doc["created_at"],
                    )
                )
            return summaries

        with self._guard():
            summaries = await self._transaction(read)
        newest_first(summaries)
        return summaries

    # -- messages and markers --------------------------------------------------------------

    async def append_message(self, message: NewMessage) -> AppendResult:
        async def append(s: AsyncClientSession) -> AppendResult:
            return await self._append_in(s, message, require_member=True)

        with self._guard():
            try:
                return await self._transaction(append)
            except DuplicateKeyError:
                if message.client_id is None:
                    raise
                # A concurrent first attempt of this client_id committed first.
                original = await self._c("messages").find_one(
                    _client_id_filter(message.sender, message.client_id)
                )
                if original is None:
                    raise Unavailable("a concurrent send with the same client_id vanished")
                names = await self._member_names(original["conv"], None)
                return AppendResult(_message(original), True, tuple(names))

    async def _append_in(
        self, s: AsyncClientSession, message: NewMessage, *, require_member: bool
    ) -> AppendResult:
        """The append, inside the caller's transaction (see the module docstring)."""
        messages = self._c("messages")
        if message.client_id is not None:
            original = await messages.find_one(
                _client_id_filter(message.sender, message.client_id), session=s
            )
            if original is not None:
                names = await self._member_names(original["conv"], s)
                return AppendResult(_message(original), True, tuple(names))
        counter = await self._c("conversations").find_one_and_update(
            {"_id": message.conv},
            {"$inc": {"last_seq": 1}},
            projection={"last_seq": 1},
            return_document=ReturnDocument.AFTER,
            session=s,
        )
        if counter is None:
            raise NotFound(f"no conversation {message.conv!r}")
        seq: int = counter["last_seq"]
        moved = await self._c("members").update_one(
            {"conv": message.conv, "user": message.sender},
            {"$max": {"delivered": seq, "read": seq}},
            session=s,
        )
        if moved.matched_count == 0 and require_member:
            raise NotFound(f"no conversation {message.conv!r} with member {message.sender!r}")
        await messages.insert_one(_message_doc(message, seq), session=s)
        names = await self._member_names(message.conv, s)
        return AppendResult(_stored(message, seq), False, tuple(names))

    async def history(
        self, conv: str, *, before: int | None, after: int | None, limit: int
    ) -> tuple[list[Message], bool]:
        if limit < 1:
            raise BadRequest("limit must be at least 1")
        seq: Doc = {}
        if after is not None:
            seq["$gt"] = after
        if before is not None:
            seq["$lt"] = before
        query: Doc = {"conv": conv, **({"seq": seq} if seq else {})}
        newest_first = after is None
        with self._guard():
            cursor = (
                self._c("messages")
                .find(query)
                .sort("seq", -1 if newest_first else 1)
                .limit(limit + 1)
            )
            docs = [doc async for doc in cursor]
        more = len(docs) > limit
        page = [_message(doc) for doc in docs[:limit]]
        if newest_first:
            page.reverse()
        return page, more

    async def set_marker(self, conv: str, user: str, kind: MarkerKind, seq: int) -> Member | None:
        members = self._c("members")
        with self._guard():
            if await members.find_one({"conv": conv, "user": user}, {"_id": 1}) is None:
                raise NotFound(f"{user!r} is not a member of {conv!r}")
            found = await self._c("conversations").find_one({"_id": conv}, {"last_seq": 1})
            last_seq = found.get("last_seq", 0) if found is not None else 0
            if seq > last_seq:
                raise BadRequest(f"seq {seq} is past the last message ({last_seq})")
            behind: list[Doc] = [{"delivered": {"$lt": seq}}]
            raised: Doc = {"delivered": seq}
            if kind == "read":
                behind.append({"read": {"$lt": seq}})
                raised["read"] = seq
            doc = await members.find_one_and_update(
                {"conv": conv, "user": user, "$or": behind},
                {"$max": raised},
                return_document=ReturnDocument.AFTER,
            )
        return _member(doc) if doc is not None else None

    async def set_muted(self, conv: str, user: str, muted: bool) -> None:
        with self._guard():
            found = await self._c("members").update_one(
                {"conv": conv, "user": user}, {"$set": {"muted": muted}}
            )
        if found.matched_count == 0:
            raise NotFound(f"{user!r} is not a member of {conv!r}")

    # -- contacts --------------------------------------------------------------------------

    async def add_contact(self, owner: str, contact: str) -> None:
        with self._guard():
            try:
                await self._c("contacts").update_one(
                    {"owner": owner, "contact": contact},
                    {"$set": {"owner": owner, "contact": contact}},
                    upsert=True,
                )
            except DuplicateKeyError:
                pass  # a concurrent add of the same contact: it exists, which is the point

    async def remove_contact(self, owner: str, contact: str) -> None:
        with self._guard():
            await self._c("contacts").delete_one({"owner": owner, "contact": contact})

    async def list_contacts(self, owner: str) -> list[Contact]:
        with self._guard():
            cursor = self._c("contacts").find({"owner": owner}, {"contact": 1}).sort("contact", 1)
            names = [doc["contact"] async for doc in cursor]
            if not names:
                return []
            seen = {
                doc["_id"]: doc.get("last_seen")
                async for doc in self._c("users").find({"_id": {"$in": names}}, {"last_seen": 1})
            }
        return [Contact(user=name, last_seen=seen.get(name)) for name in names]

    async def followers(self, user: str) -> list[str]:
        with self._guard():
            cursor = self._c("contacts").find({"contact": user}, {"owner": 1}).sort("owner", 1)
            return [doc["owner"] async for doc in cursor]

    # -- media -----------------------------------------------------------------------------

    async def create_media(self, item: MediaItem) -> None:
        doc = asdict(item)
        doc["_id"] = doc.pop("id")
        with self._guard():
            try:
                await self._c("media").insert_one(doc)
            except DuplicateKeyError:
                raise Conflict(f"media {item.id!r} already exists")

    async def get_media(self, media_id: str) -> MediaItem | None:
        with self._guard():
            doc = await self._c("media").find_one({"_id": media_id})
        return _media_item(doc) if doc is not None else None

    async def media_visible_to(self, media_id: str, user: str) -> bool:
        with self._guard():
            if await self._c("media").find_one({"_id": media_id, "uploader": user}, {"_id": 1}):
                return True
            convs = await self._c("messages").distinct("conv", {"media.id": media_id})
            if not convs:
                return False
            member = await self._c("members").find_one(
                {"conv": {"$in": convs}, "user": user}, {"_id": 1}
            )
        return member is not None

    # -- push subscriptions ----------------------------------------------------------------

    async def add_push_subscription(self, sub: PushSubscription) -> None:
        with self._guard():
            await self._c("push_subscriptions").replace_one(
                {"_id": sub.id},
                {
                    "_id": sub.id,
                    "user": sub.user,
                    "kind": sub.kind,
                    "data": sub.data,
                    "created_at": sub.created_at,
                },
                upsert=True,
            )

    async def delete_push_subscription(self, user: str, sub_id: str) -> bool:
        with self._guard():
            deleted = await self._c("push_subscriptions").delete_one({"_id": sub_id, "user": user})
        return deleted.deleted_count > 0

    async def push_subscriptions(self, users: Collection[str]) -> list[PushSubscription]:
        if not users:
            return []
        with self._guard():
            cursor = (
                self._c("push_subscriptions")
                .find({"user": {"$in": list(users)}})
                .sort([("created_at", 1), ("_id", 1)])
            )
            return [_push_subscription(doc) async for doc in cursor]

    async def delete_push_subscription_by_id(self, sub_id: str) -> None:
        with self._guard():
            await self._c("push_subscriptions").delete_one({"_id": sub_id})
