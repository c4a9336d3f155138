"""Appends per second of the PostgreSQL store with ~50 concurrent appenders.

    .venv/bin/python -m benchmarks.store_append_pg
    .venv/bin/python -m benchmarks.store_append_pg --appenders 50 --seconds 5 --pool-max 20
    .venv/bin/python -m benchmarks.store_append_pg --admin postgresql://postgres@db:5432/postgres

Creates a throwaway database through ``--admin``, then measures two shapes, each with
``--appenders`` tasks that append back to back (each waits for its durable acknowledgement):

* spread: one conversation per appender (many chats: commits share WAL flushes);
* hot: every appender in ONE conversation (its row lock serializes them: the ceiling of a
  single busy group).

``--stores`` splits the appenders over several independent stores (pools), as several chatd
processes would. Prints appends/s and latency percentiles; drops the database at the end.
Not a test: run it on purpose.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import statistics
import time
import uuid

import asyncpg

from chatd.models import NewMessage
from chatd.store.postgres import PostgresStore

BODY = "a message of a typical length, say some sixty characters or so"


async def appender(
    store: PostgresStore, conv: str, sender: str, deadline: float, ids: itertools.count[int]
) -> list[float]:
    latencies = []
    while (now := time.perf_counter()) < deadline:
        n = next(ids)
        await store.append_message(
            NewMessage(
                conv=conv,
                sender=sender,
                msg_id=str(n),
                ts=int(time.time() * 1000),
                client_id=f"c{n}",
                body=BODY,
            )
        )
        latencies.append(time.perf_counter() - now)
    return latencies


async def measure(
    stores: list[PostgresStore], convs: list[str], appenders: int, seconds: float, label: str
) -> None:
    ids = itertools.count(time.time_ns())
    senders = ("u0", "u1", "u2")

    def tasks(deadline: float) -> list[asyncio.Future[list[float]]]:
        return [
            asyncio.ensure_future(
                appender(
                    stores[i % len(stores)], convs[i % len(convs)], senders[i % 3], deadline, ids
                )
            )
            for i in range(appenders)
        ]

    await asyncio.gather(*tasks(time.perf_counter() + 0.5))  # warm up pools and caches
    start = time.perf_counter()
    results = await asyncio.gather(*tasks(start + seconds))
    elapsed = time.perf_counter() - start
    latencies = sorted(x for r in results for x in r)
    count = len(latencies)
    p50 = statistics.median(latencies) * 1000
    p99 = latencies[max(0, int(count * 0.99) - 1)] * 1000
    print(
        f"{label:<8} {appenders} appenders, {len(convs)} conversation(s), {len(stores)} store(s):"
        f" {count / elapsed:>8,.0f} appends/s  ({count} in {elapsed:.1f}s)"
        f"  p50 {p50:.1f} ms  p99 {p99:.1f} ms"
    )


async def run(args: argparse.Namespace) -> None:
    name = f"chatd_bench_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(args.admin, timeout=10)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    base, _, _ = args.admin.rpartition("/")
    per_store = max(1, args.pool_max // args.stores)
    url = f"{base}/{name}?pool_min={per_store}&pool_max={per_store}&command_timeout=30"
    stores = [PostgresStore(url) for _ in range(args.stores)]
    try:
        await asyncio.gather(*(s.start() for s in stores))
        for user in ("u0", "u1", "u2"):
            await stores[0].create_user(user, "hash", 0)
        members = [("u0", "owner"), ("u1", "member"), ("u2", "member")]
        convs = []
        for c in range(args.appenders):
            conv = f"bench-{c}"
            system = NewMessage(conv, "u0", f"s{c}", 0, kind="system", event={})
            await stores[0].create_group(conv, f"g{c}", members, system)
            convs.append(conv)
        await measure(stores, convs, args.appenders, args.seconds, "spread")
        await measure(stores, convs[:1], args.appenders, args.seconds, "hot")
    finally:
        await asyncio.gather(*(s.close() for s in stores))
        admin = await asyncpg.connect(args.admin, timeout=10)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--admin", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--appenders", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--pool-max", type=int, default=20, help="connections over all stores")
    parser.add_argument("--stores", type=int, default=1, help="independent stores (processes)")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
