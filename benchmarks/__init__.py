"""The benchmark harness: run on purpose with ``make bench``, never part of ``make test``.

Layout (one process per box, all started and stopped by :mod:`benchmarks.run`)::

    run.py ── orchestrator: starts servers, provisions users, drives workloads, prints the table
      │
      ├── servers.py    chatd / relay processes, /proc readings (RSS, CPU)
      ├── provision.py  users and sessions written straight into chatd's store (argon2 is slow)
      ├── workloads.py  the six workloads of the performance issue
      ├── report.py     table, JSON and the latency-vs-load plot
      │
      ├──▶ relay.py     the bare baseline relay (its own process)
      └──▶ driver.py    the load driver (its own processes), uvloop + aiohttp client

Drivers and the orchestrator agree on time through ``time.monotonic_ns()``, which on Linux is
one system-wide clock, so a timestamp carried in a message body is comparable across processes.
"""
