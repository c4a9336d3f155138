"""Appends per second of a store with many concurrent appenders.

    .venv/bin/python -m benchmarks.store_append                      # SQLite in a temp dir
    .venv/bin/python -m benchmarks.store_append --convs 50 --in-flight 32 --seconds 5
    .venv/bin/python -m benchmarks.store_append --url sqlite:////tmp/bench.db
    .venv/bin/python -m benchmarks.store_append --busy-us 40    # a loop as busy as chatd's

``--convs`` groups of 3 members each get ``--in-flight`` appenders that send back to back
(each waits for its durable acknowledgement before sending again) for ``--seconds``.
``--busy-us`` spends that much CPU on the event loop before each append, as chatd's loop does
parsing, checking and delivering a message: the writer thread then has to win the GIL back
from a busy loop, as in the server. Prints appends/s, latency percentiles and the process's
CPU per append. Not a test: run it on purpose.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import statistics
import tempfile
import time
from pathlib import Path

from chatd.models import NewMessage
from chatd.store import Store, open_store


def spin(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


async def appender(
    store: Store,
    conv: str,
    sender: str,
    deadline: float,
    ids: itertools.count[int],
    busy: float = 0.0,
) -> list[float]:
    latencies = []
    while (now := time.perf_counter()) < deadline:
        n = next(ids)
        if busy:
            spin(busy)
        await store.append_message(
            NewMessage(
                conv=conv,
                sender=sender,
                msg_id=str(n),
                ts=int(time.time() * 1000),
                client_id=f"c{n}",
                body="a message of a typical length, say some sixty characters or so",
            )
        )
        latencies.append(time.perf_counter() - now)
    return latencies


async def run(url: str, convs: int, in_flight: int, seconds: float, busy: float) -> None:
    store = open_store(url)
    await store.start()
    try:
        members = [("u0", "owner"), ("u1", "member"), ("u2", "member")]
        ids = itertools.count(1)
        conv_ids = []
        for c in range(convs):
            conv = f"bench-{c}-{time.time_ns()}"
            system = NewMessage(conv, "u0", f"s{c}-{time.time_ns()}", 0, kind="system", event={})
            await store.create_group(conv, f"g{c}", members, system)
            conv_ids.append(conv)
        # Warm up (page cache, member cache), then measure.
        warm = time.perf_counter() + 0.5
        await asyncio.gather(*(appender(store, c, "u1", warm, ids) for c in conv_ids))
        start = time.perf_counter()
        cpu = time.process_time()
        deadline = start + seconds
        tasks = [
            appender(store, conv, f"u{i % 3}", deadline, ids, busy)
            for conv in conv_ids
            for i in range(in_flight)
        ]
        results = await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - start
        cpu = time.process_time() - cpu
    finally:
        await store.close()
    latencies = sorted(x for r in results for x in r)
    count = len(latencies)
    p50 = statistics.median(latencies) * 1000
    p99 = latencies[int(count * 0.99) - 1] * 1000
    print(
        f"{url}: {convs} conversations x {in_flight} in flight:"
        f" {count / elapsed:,.0f} appends/s ({count} in {elapsed:.1f}s),"
        f" latency p50 {p50:.1f} ms, p99 {p99:.1f} ms,"
        f" CPU {cpu / count * 1e6:.0f} us per append ({busy * 1e6:.0f} us of it busy work)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="store URL (default: a SQLite file in a temp dir)")
    parser.add_argument("--convs", type=int, default=50)
    parser.add_argument("--in-flight", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument(
        "--busy-us", type=float, default=0.0, help="loop CPU spent per append (microseconds)"
    )
    args = parser.parse_args()
    try:
        import uvloop
    except ImportError:
        uvloop = None  # type: ignore[assignment]
    with tempfile.TemporaryDirectory() as tmp:
        url = args.url or f"sqlite:///{Path(tmp) / 'bench.db'}"
        coro = run(url, args.convs, args.in_flight, args.seconds, args.busy_us / 1e6)
        if uvloop is not None:
            uvloop.run(coro)
        else:
            asyncio.run(coro)


if __name__ == "__main__":
    main()
