"""What one revocation poll costs the store: ``users_revoked_since`` on a large user table.

    .venv/bin/python -m benchmarks.revocation_poll
    .venv/bin/python -m benchmarks.revocation_poll --users 100000 --polls 500
    .venv/bin/python -m benchmarks.revocation_poll --admin postgresql://postgres@db:5432/postgres

Every chatd process asks the store every ``revocation_poll_seconds`` (2 s) for users revoked
in the last minute or so. This fills a SQLite file and a throwaway PostgreSQL database (made
through ``--admin``, dropped at the end) with ``--users`` users, a tenth of them revoked long
ago and ten revoked just now, then times ``--polls`` polls one after the other and prints
the latency percentiles per backend. Not a test: run it on purpose.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
import uuid
from pathlib import Path

import asyncpg

from chatd.store import open_store
from chatd.store.base import Store

NOW = 1_764_316_800_000
LONG_AGO = NOW - 30 * 86_400_000
RECENT = 10


def rows(users: int) -> list[tuple[str, str, int, int | None]]:
    out: list[tuple[str, str, int, int | None]] = []
    for i in range(users):
        revoked: int | None = None
        if i < RECENT:
            revoked = NOW - i
        elif i % 10 == 0:
            revoked = LONG_AGO + i
        out.append((f"user{i:07d}", "hash", LONG_AGO, revoked))
    return out


async def time_polls(store: Store, polls: int) -> list[float]:
    found = await store.users_revoked_since(NOW - 62_000)
    assert len(found) == RECENT, found
    latencies = []
    for _ in range(polls):
        started = time.perf_counter()
        await store.users_revoked_since(NOW - 62_000)
        latencies.append(time.perf_counter() - started)
    return latencies


def report(name: str, latencies: list[float]) -> None:
    ms = sorted(x * 1000 for x in latencies)
    p99 = ms[min(len(ms) - 1, int(len(ms) * 0.99))]
    print(
        f"{name:>10}: {len(ms)} polls, p50 {statistics.median(ms):.3f} ms, "
        f"p99 {p99:.3f} ms, max {ms[-1]:.3f} ms"
    )


async def sqlite(users: int, polls: int) -> None:
    import sqlite3

    with tempfile.TemporaryDirectory() as folder:
        url = f"sqlite:///{Path(folder) / 'chatd.db'}"
        store = open_store(url)
        await store.start()  # migrate
        await store.close()
        conn = sqlite3.connect(Path(folder) / "chatd.db")
        with conn:
            conn.executemany(
                "INSERT INTO users (username, password_hash, created_at, sessions_revoked_at)"
                " VALUES (?, ?, ?, ?)",
                rows(users),
            )
        conn.close()
        store = open_store(url)
        await store.start()
        try:
            report("sqlite", await time_polls(store, polls))
        finally:
            await store.close()


async def postgres(admin: str, users: int, polls: int) -> None:
    name = f"chatd_bench_{uuid.uuid4().hex[:10]}"
    conn = await asyncpg.connect(admin)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    url = f"{admin.rpartition('/')[0]}/{name}"
    try:
        store = open_store(url)
        await store.start()
        conn = await asyncpg.connect(url)
        try:
            await conn.copy_records_to_table(
                "users",
                records=rows(users),
                columns=["username", "password_hash", "created_at", "sessions_revoked_at"],
            )
            await conn.execute("ANALYZE users")
        finally:
            await conn.close()
        try:
            report("postgres", await time_polls(store, polls))
        finally:
            await store.close()
    finally:
        conn = await asyncpg.connect(admin)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--polls", type=int, default=500)
    parser.add_argument("--admin", default="postgresql://postgres@127.0.0.1:5432/test")
    args = parser.parse_args()
    print(f"{args.users} users, {args.users // 10} revoked long ago, {RECENT} revoked just now")
    await sqlite(args.users, args.polls)
    await postgres(args.admin, args.users, args.polls)


if __name__ == "__main__":
    asyncio.run(main())
