"""Users, sessions and history for a benchmark, written before the server starts.

Registering through the HTTP API costs two argon2id computations per user (about 60 ms here):
fine for a hundred users, twenty minutes for 19,000. So for chatd the harness writes users and
sessions straight into the store through chatd's own :class:`chatd.store.base.Store` interface
(one argon2 hash shared by every benchmark user, a fresh random token per session, only its
SHA-256 stored, exactly as ``AccountService.login`` does), with the server stopped.
``--provision http`` goes through the real API instead.

The 1,000,000-message history is bulk-inserted with ``sqlite3`` into the schema chatd's SQLite
store created: one message is appended through the store interface, then copied with new
``seq``, ``msg_id``, ``client_id`` and ``ts``, and the conversation's ``last_seq`` is moved.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from benchmarks.servers import BenchError

PASSWORD = "bench-password-1"
SESSION_DAYS = 30


@dataclass(frozen=True, slots=True)
class Account:
    user: str
    token: str


def usernames(prefix: str, count: int) -> list[str]:
    return [f"{prefix}{i:05d}" for i in range(count)]


def relay_accounts(names: Sequence[str]) -> list[Account]:
    """The relay checks nothing: a token is the username."""
    return [Account(name, name) for name in names]


def sqlite_path(store_url: str) -> Path:
    prefix = "sqlite:///"
    if not store_url.startswith(prefix):
        raise BenchError(f"not a SQLite store URL: {store_url}")
    return Path(store_url[len(prefix) :].split("?", 1)[0])


async def bounded(coros: Sequence[Awaitable[Any]], limit: int) -> list[Any]:
    semaphore = asyncio.Semaphore(limit)

    async def one(coro: Awaitable[Any]) -> Any:
        async with semaphore:
            return await coro

    return await asyncio.gather(*(one(c) for c in coros))


async def store_accounts(store_url: str, names: Sequence[str]) -> list[Account]:
    """Create ``names`` with one session each, straight in chatd's store (server stopped)."""
    from argon2 import PasswordHasher

    from chatd import ids
    from chatd.models import Session
    from chatd.store import open_store

    password_hash = PasswordHasher(time_cost=2, memory_cost=19 * 1024, parallelism=1).hash(PASSWORD)
    store = open_store(store_url)
    await store.start()
    try:
        now = int(time.time() * 1000)
        expires = now + SESSION_DAYS * 86_400_000

        async def one(name: str) -> Account:
            await store.create_user(name, password_hash, now)
            token = ids.new_token()
            await store.create_session(Session(ids.token_hash(token), name, "bench", now, expires))
            return Account(name, token)

        accounts: list[Account] = await bounded([one(n) for n in names], 256)
        return accounts
    finally:
        await store.close()


async def http_accounts(base_url: str, names: Sequence[str]) -> list[Account]:
    """Register and log in through the real HTTP API (slow: argon2id twice per user)."""
    async with aiohttp.ClientSession(base_url) as session:

        async def one(name: str) -> Account:
            body = {"username": name, "password": PASSWORD}
            async with session.post("/api/v1/users", json=body) as resp:
                if resp.status not in (201, 409):
                    raise BenchError(f"register {name}: HTTP {resp.status} {await resp.text()}")
            async with session.post("/api/v1/sessions", json={**body, "device": "bench"}) as resp:
                if resp.status != 201:
                    raise BenchError(f"login {name}: HTTP {resp.status} {await resp.text()}")
                token = (await resp.json())["token"]
            return Account(name, str(token))

        accounts: list[Account] = await bounded([one(n) for n in names], 4)
        return accounts


async def prefill_history(store_url: str, user_a: str, user_b: str, count: int) -> str:
    """A direct conversation of ``user_a`` and ``user_b`` holding ``count`` messages; its id.

    The users must exist. The first message goes through the store interface; the rest are
    copies of its row, bulk-inserted in one transaction.
    """
    from chatd import ids
    from chatd.models import NewMessage
    from chatd.store import open_store

    store = open_store(store_url)
    await store.start()
    try:
        now = int(time.time() * 1000)
        conv, _ = await store.get_or_create_direct(user_a, user_b, ids.new_conv_id(), now)
        snowflake = ids.Snowflake(ids.worker_number("bench-prefill"))
        await store.append_message(
            NewMessage(
                conv=conv.conv,
                sender=user_a,
                msg_id=str(snowflake.next()),
                ts=now,
                client_id="prefill-1",
                body="history message 1",
            )
        )
    finally:
        await store.close()
    if count > 1:
        await asyncio.to_thread(
            _bulk_copy, sqlite_path(store_url), conv.conv, count, snowflake, (user_a, user_b)
        )
    return conv.conv


def _bulk_copy(path: Path, conv: str, count: int, snowflake: Any, users: tuple[str, str]) -> None:
    db = sqlite3.connect(path, isolation_level=None)
    try:
        db.row_factory = sqlite3.Row
        table, conv_col = _find_table(db, {"seq", "msg_id", "client_id"}, ("conv", "conv_id"))
        template = db.execute(
            f"SELECT * FROM {table} WHERE {conv_col} = ? ORDER BY seq LIMIT 1", (conv,)
        ).fetchone()
        if template is None:
            raise BenchError(f"prefill: the first message is not in table {table}")
        columns = list(template.keys())
        base = dict(template)
        sender_col = next((c for c in ("sender", "from_user", "author") if c in base), None)
        rows: Callable[[], Any]

        def rows() -> Any:
            for seq in range(2, count + 1):
                row = dict(base)
                row["seq"] = seq
                row["msg_id"] = (
                    str(snowflake.next()) if isinstance(base["msg_id"], str) else (snowflake.next())
                )
                row["client_id"] = f"prefill-{seq}"
                if "ts" in row:
                    row["ts"] = base["ts"] + seq
                if "body" in row:
                    row["body"] = f"history message {seq}"
                if sender_col is not None:
                    row[sender_col] = users[seq % 2]
                if "id" in row and isinstance(row["id"], int) and conv_col != "id":
                    row["id"] = None  # an INTEGER PRIMARY KEY: let SQLite number it
                yield tuple(row[c] for c in columns)

        placeholders = ",".join("?" for _ in columns)
        db.execute("PRAGMA synchronous = OFF")
        db.execute("BEGIN")
        db.executemany(f"INSERT INTO {table} ({','.join(columns)}) VALUES ({placeholders})", rows())
        conv_table, key = _find_table(db, {"last_seq"}, ("conv", "conv_id", "id"))
        db.execute(f"UPDATE {conv_table} SET last_seq = ? WHERE {key} = ?", (count, conv))
        if "last_ts" in {r[1] for r in db.execute(f"PRAGMA table_info({conv_table})")}:
            db.execute(
                f"UPDATE {conv_table} SET last_ts = ? WHERE {key} = ?", (base["ts"] + count, conv)
            )
        db.execute("COMMIT")
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        db.close()


def _find_table(db: sqlite3.Connection, needs: set[str], keys: tuple[str, ...]) -> tuple[str, str]:
    """The table having every column in ``needs``, and its first column named in ``keys``."""
    tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
    for table in tables:
        cols = {r[1] for r in db.execute(f"PRAGMA table_info({table})")}
        if needs <= cols:
            for key in keys:
                if key in cols:
                    return table, key
    raise BenchError(
        f"prefill: no table with columns {sorted(needs)} in chatd's SQLite schema; "
        "the schema changed, update benchmarks/provision.py"
    )
