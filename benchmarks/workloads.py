"""The six workloads of the performance issue, each against chatd and (where it applies) the
bare relay, each on a fresh data directory.

A workload returns plain dicts (figures, histograms already reduced to percentiles); the
report turns them into the table, the JSON file and the plot. Every process is started through
:class:`benchmarks.servers.Processes`, which stops them all at the end.
"""

from __future__ import annotations

import asyncio
import math
import secrets
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from benchmarks import profile as profiling
from benchmarks.provision import (
    Account,
    http_accounts,
    prefill_history,
    relay_accounts,
    store_accounts,
    usernames,
)
from benchmarks.servers import BenchError, Driver, Processes, Server
from benchmarks.stats import Histogram

TARGETS = ("relay", "chatd")
WORKLOADS = ("1to1", "latency", "fanout", "idle", "history", "cross")


@dataclass
class Options:
    duration: float = 8.0
    warmup: float = 2.0
    pairs: int = 50
    window: int = 32
    driver_procs: int = 1
    rates: tuple[float, ...] = (0.25, 0.5, 0.75)
    fanout_sizes: tuple[int, ...] = (100, 1000)
    fanout_window: int = 10
    fanout_procs: int = 0  # 0: one receiver process per 400 members, at least one
    idle: int = 2000
    idle_per_proc: int = 5000
    idle_heartbeat: float = 0.0  # 0: about 1,000 pings/s (N / 1000 s, within 2..25 s)
    idle_window: float = 10.0  # at least one heartbeat
    history_messages: int = 1_000_000
    history_sockets: int = 8
    history_window: int = 4
    redis: str = "redis://127.0.0.1:6379/0"
    provision: str = "store"  # or "http"
    targets: tuple[str, ...] = TARGETS
    profile: bool = False  # sample chatd with py-spy during the measured windows


@dataclass
class Bench:
    options: Options
    procs: Processes
    workdir: Path
    log: Callable[[str], None]
    results: dict[str, Any] = field(default_factory=dict)
    counter: int = 0
    profile_dir: Path | None = None

    def fresh_dir(self, name: str) -> Path:
        self.counter += 1
        path = self.workdir / f"{self.counter:02d}-{name}"
        path.mkdir(parents=True)
        return path


# -- servers with their users -----------------------------------------------------------------


def store_url_in(workdir: Path) -> str:
    return f"sqlite:///{(workdir / 'data' / 'chatd.db').resolve()}"


async def accounts_for(
    bench: Bench, target: str, workdir: Path, names: Sequence[str], server: Server | None
) -> list[Account]:
    """Users with a session each. For chatd with ``--provision store``: call before the server
    starts (``server`` is None); with ``http``: after (``server`` given)."""
    if target == "relay":
        return relay_accounts(names)
    if bench.options.provision == "http":
        assert server is not None
        return await http_accounts(server.http_url, names)
    started = time.monotonic()
    (workdir / "data").mkdir(parents=True, exist_ok=True)
    try:
        accounts = await store_accounts(store_url_in(workdir), names)
    except Exception as exc:
        raise BenchError(
            f"could not write users into chatd's store ({type(exc).__name__}: {exc}); "
            "try --provision http"
        ) from exc
    bench.log(f"    {len(names)} users provisioned in {time.monotonic() - started:.1f} s")
    return accounts


async def start_target(
    bench: Bench,
    target: str,
    workdir: Path,
    names: Sequence[str],
    *,
    heartbeat: float | None = None,
    before_start: Callable[[], Awaitable[None]] | None = None,
) -> tuple[Server, list[Account]]:
    """Start ``target`` on ``workdir`` with ``names`` registered and logged in."""
    if target == "relay":
        server = await bench.procs.relay(workdir, heartbeat or 25.0)
        return server, relay_accounts(names)
    accounts: list[Account] = []
    if bench.options.provision == "store":
        accounts = await accounts_for(bench, target, workdir, names, None)
    if before_start is not None:
        await before_start()
    server = await bench.procs.chatd(workdir, store=store_url_in(workdir), heartbeat=heartbeat)
    if bench.options.provision == "http":
        accounts = await accounts_for(bench, target, workdir, names, server)
    return server, accounts


# -- one measured phase -----------------------------------------------------------------------


@dataclass
class Phase:
    readies: list[dict[str, Any]]
    results: list[dict[str, Any]]
    server_cpu: list[float]  # fraction of a core over the measured window, per server
    seconds: float


async def run_phase(
    bench: Bench,
    jobs: Sequence[tuple[str, dict[str, Any]]],
    servers: Sequence[Server],
    *,
    go_extra: Callable[[list[dict[str, Any]]], dict[str, Any]] | None = None,
    ready_timeout: float = 120.0,
    profile: str | None = None,
) -> Phase:
    """Start one driver per job, wait until all are ready, run warm-up + measured window.

    With ``--profile``, a phase given a ``profile`` label has each server sampled by py-spy
    over the measured window.
    """
    opts = bench.options
    drivers: list[Driver] = []
    samplers: list[tuple[Server, Path, asyncio.subprocess.Process]] = []
    try:
        for name, job in jobs:
            drivers.append(await bench.procs.driver(name, job))
        readies = list(await asyncio.gather(*(d.expect("ready", ready_timeout) for d in drivers)))
        extra = go_extra(readies) if go_extra else {}
        t_start = time.monotonic_ns() + 300_000_000
        t_measure = t_start + int(opts.warmup * 1e9)
        t_end = t_measure + int(opts.duration * 1e9)
        go = {"cmd": "go", "t_start": t_start, "t_measure": t_measure, "t_end": t_end, **extra}
        for driver in drivers:
            await driver.send(go)
        await sleep_until(t_measure)
        cpu0 = [s.cpu_seconds() for s in servers]
        if profile and opts.profile and bench.profile_dir is not None:
            for server in servers:
                out = bench.profile_dir / f"{profile}-{server.name}.raw"
                sampler = await profiling.record(server.pid, opts.duration, out)
                if sampler is None:
                    bench.log("    (--profile: py-spy is not installed; pip install py-spy)")
                    break
                samplers.append((server, out, sampler))
        await sleep_until(t_end)
        cpu1 = [s.cpu_seconds() for s in servers]
        results = list(
            await asyncio.gather(*(d.expect("result", 60 + opts.duration) for d in drivers))
        )
        await asyncio.gather(*(d.finish() for d in drivers))
        for server, out, sampler in samplers:
            await asyncio.wait_for(sampler.wait(), 30)
            if out.exists():
                summary = profiling.summarize(out)
                bench.results.setdefault("profiles", {})[f"{profile}/{server.name}"] = {
                    "raw": str(out),
                    **summary,
                }
                for line in profiling.format_summary(f"{server.name}, {profile}", summary):
                    bench.log(line)
    finally:
        for _, _, sampler in samplers:
            if sampler.returncode is None:
                sampler.kill()
                await sampler.wait()
        for driver in drivers:
            if driver in bench.procs.drivers:
                bench.procs.drivers.remove(driver)
            await driver.kill()
    seconds = opts.duration
    return Phase(
        readies,
        results,
        [round((b - a) / seconds, 3) for a, b in zip(cpu0, cpu1, strict=True)],
        seconds,
    )


def _label(target: str, name: str) -> str | None:
    """Only chatd is profiled: the relay is the yardstick."""
    return name if target == "chatd" else None


async def sleep_until(t_ns: int) -> None:
    delay = (t_ns - time.monotonic_ns()) / 1e9
    if delay > 0:
        await asyncio.sleep(delay)


def split(items: Sequence[Any], parts: int) -> list[list[Any]]:
    parts = max(1, min(parts, len(items)))
    return [list(items[i::parts]) for i in range(parts)]


def latency(results: Sequence[dict[str, Any]], key: str = "hist") -> Histogram:
    return Histogram.merged(r[key] for r in results)


def errors_of(results: Sequence[dict[str, Any]]) -> dict[str, Any]:
    errors = sum(int(r.get("errors", 0)) for r in results)
    first = next((r["first_error"] for r in results if r.get("first_error")), None)
    return {"errors": errors, "first_error": first}


# -- 1 and 2: 1:1 throughput, then latency at fixed offered rates ------------------------------


def pair_specs(
    accounts: Sequence[Account], sender_urls: Sequence[str], receiver_urls: Sequence[str]
) -> list[dict[str, str]]:
    """Pairs (2i, 2i+1); pair i's sender on ``sender_urls[i % n]``, receiver likewise."""
    specs = []
    for i in range(len(accounts) // 2):
        sender, receiver = accounts[2 * i], accounts[2 * i + 1]
        specs.append(
            {
                "s_url": sender_urls[i % len(sender_urls)],
                "s_token": sender.token,
                "r_url": receiver_urls[i % len(receiver_urls)],
                "r_user": receiver.user,
                "r_token": receiver.token,
            }
        )
    return specs


async def pairs_phase(
    bench: Bench,
    specs: list[dict[str, str]],
    servers: Sequence[Server],
    rate_per_pair: float | None = None,
    profile: str | None = None,
) -> dict[str, Any]:
    opts = bench.options
    jobs = [
        (
            f"pairs{i}",
            {"role": "pairs", "pairs": chunk, "window": opts.window, "rate": rate_per_pair},
        )
        for i, chunk in enumerate(split(specs, opts.driver_procs))
    ]
    phase = await run_phase(bench, jobs, servers, profile=profile)
    received = sum(r["received"] for r in phase.results)
    hist = latency(phase.results)
    return {
        "msgs_per_s": round(received / phase.seconds),
        **hist.summary(),
        **errors_of(phase.results),
        "dropped": sum(r.get("dropped", 0) for r in phase.results),
        "undelivered": sum(r.get("undelivered", 0) for r in phase.results),
        "setup_retries": sum(r.get("setup_retries", 0) for r in phase.readies),
        "server_cpu": phase.server_cpu,
        "driver_cpu": [r["cpu"] for r in phase.results],
    }


async def one_to_one(bench: Bench, with_latency: bool) -> None:
    opts = bench.options
    for target in opts.targets:
        workdir = bench.fresh_dir(f"1to1-{target}")
        server, accounts = await start_target(
            bench, target, workdir, usernames("p", 2 * opts.pairs)
        )
        try:
            specs = pair_specs(accounts, [server.ws_url], [server.ws_url])
            bench.log(f"  1:1 {target}: {opts.pairs} pairs, {opts.window} in flight each")
            best = await pairs_phase(bench, specs, [server], profile=_label(target, "1to1"))
            bench.results.setdefault("1to1", {})[target] = best
            bench.log(f"    {fmt_pairs(best)}")
            if not with_latency:
                continue
            points = []
            for fraction in opts.rates:
                offered = best["msgs_per_s"] * fraction
                bench.log(f"  latency {target} at {fraction:.0%} of max: {offered:.0f} msgs/s")
                point = await pairs_phase(
                    bench,
                    specs,
                    [server],
                    offered / opts.pairs,
                    profile=_label(target, f"latency{fraction:g}"),
                )
                point = {"fraction": fraction, "offered": round(offered), **point}
                points.append(point)
                bench.log(f"    {fmt_pairs(point)}")
            bench.results.setdefault("latency", {})[target] = points
        finally:
            bench.procs.stop_server(server)


def fmt_pairs(r: dict[str, Any]) -> str:
    return (
        f"{r['msgs_per_s']:,} msgs/s  p50 {r.get('p50')} ms  p99 {r.get('p99')} ms  "
        f"p99.9 {r.get('p99.9')} ms  errors {r['errors']}  undelivered {r['undelivered']}  "
        f"set-up retries {r['setup_retries']}  server cpu {r['server_cpu']}  "
        f"driver cpu {r['driver_cpu']}"
    )


# -- 3: group fan-out -------------------------------------------------------------------------


async def ws_request(server: Server, token: str, frame: dict[str, Any]) -> dict[str, Any]:
    """One request on a fresh socket, after hello; the ``ok`` reply."""
    async with aiohttp.ClientSession() as session, session.ws_connect(server.ws_url) as ws:
        for request in ({"type": "hello", "id": "hello", "token": token, "device": "setup"}, frame):
            await ws.send_str(orjson.dumps(request).decode())
            while True:
                msg = await asyncio.wait_for(ws.receive(), 60)
                if msg.type is not aiohttp.WSMsgType.TEXT:
                    raise BenchError(f"{server.name} closed the set-up socket: {msg.extra}")
                reply = orjson.loads(msg.data)
                if reply.get("id") == request["id"]:
                    if reply.get("type") != "ok":
                        raise BenchError(f"{request['type']} refused: {reply}")
                    break
        result: dict[str, Any] = reply
        return result


async def fanout(bench: Bench) -> None:
    opts = bench.options
    for size in opts.fanout_sizes:
        for target in opts.targets:
            workdir = bench.fresh_dir(f"fanout{size}-{target}")
            server, accounts = await start_target(bench, target, workdir, usernames("g", size))
            try:
                owner, members = accounts[0], accounts[1:]
                reply = await ws_request(
                    server,
                    owner.token,
                    {
                        "type": "create_group",
                        "id": "g",
                        "title": f"bench {size}",
                        "members": [m.user for m in members],
                    },
                )
                conv = str(reply["conv"])
                procs = opts.fanout_procs or max(1, math.ceil(len(members) / 400))
                bench.log(f"  fan-out {target}: group of {size}, {procs} receiver process(es)")
                jobs: list[tuple[str, dict[str, Any]]] = [
                    (
                        f"recv{i}",
                        {
                            "role": "fanout_receivers",
                            "url": server.ws_url,
                            "conv": conv,
                            "tokens": [a.token for a in chunk],
                        },
                    )
                    for i, chunk in enumerate(split(members, procs))
                ]
                jobs.append(
                    (
                        "sender",
                        {
                            "role": "fanout_sender",
                            "url": server.ws_url,
                            "token": owner.token,
                            "conv": conv,
                            "window": opts.fanout_window,
                            "procs": len(jobs),
                        },
                    )
                )
                phase = await run_phase(
                    bench,
                    jobs,
                    [server],
                    go_extra=lambda readies: {"udp_port": readies[-1]["udp_port"]},
                    profile=_label(target, f"fanout{size}"),
                )
                receivers, sender = phase.results[:-1], phase.results[-1]
                deliveries = sum(r["received"] for r in receivers)
                each = latency(receivers).summary()
                last = latency([sender]).summary()
                result = {
                    "members": size,
                    "deliveries_per_s": round(deliveries / phase.seconds),
                    "msgs_per_s": round(sender["received"] / phase.seconds, 1),
                    "p50": each["p50"],
                    "p99": each["p99"],
                    "last_p50": last["p50"],
                    "last_p99": last["p99"],
                    "incomplete": sender.get("incomplete", 0),
                    **errors_of(phase.results),
                    "server_cpu": phase.server_cpu,
                    "driver_cpu": [r["cpu"] for r in phase.results],
                }
                bench.results.setdefault("fanout", {}).setdefault(str(size), {})[target] = result
                bench.log(
                    f"    {result['deliveries_per_s']:,} deliveries/s "
                    f"({result['msgs_per_s']} msgs/s)  p50 {result['p50']} ms  "
                    f"p99 {result['p99']} ms  last member p99 {result['last_p99']} ms  "
                    f"errors {result['errors']}  server cpu {result['server_cpu']}  "
                    f"driver cpu {result['driver_cpu']}"
                )
            finally:
                bench.procs.stop_server(server)


# -- 4: idle connections ----------------------------------------------------------------------


def idle_heartbeat(opts: Options) -> float:
    """The server's heartbeat for the idle workload: short enough that the pings cost
    measurable CPU, long enough (about 1,000 pings/s) that a busy 2-core machine still answers
    every pong in time, so no connection is dropped while it is measured."""
    if opts.idle_heartbeat > 0:
        return opts.idle_heartbeat
    return float(min(25, max(2, round(opts.idle / 1000))))


async def idle(bench: Bench) -> None:
    opts = bench.options
    heartbeat = idle_heartbeat(opts)
    window = max(opts.idle_window, heartbeat)
    for target in opts.targets:
        workdir = bench.fresh_dir(f"idle-{target}")
        server, accounts = await start_target(
            bench, target, workdir, usernames("i", opts.idle), heartbeat=heartbeat
        )
        drivers: list[Driver] = []
        try:
            await asyncio.sleep(1.0)
            rss0 = server.rss_kb()
            base_window = 3.0
            cpu_a = server.cpu_seconds()
            await asyncio.sleep(base_window)
            base_rate = (server.cpu_seconds() - cpu_a) / base_window
            procs = max(2, math.ceil(len(accounts) / opts.idle_per_proc))
            bench.log(
                f"  idle {target}: {len(accounts)} connections over {procs} processes, "
                f"heartbeat {heartbeat:g} s"
            )
            started = time.monotonic()
            for i, chunk in enumerate(split(accounts, procs)):
                drivers.append(
                    await bench.procs.driver(
                        f"idle{i}",
                        {"role": "idle", "url": server.ws_url, "tokens": [a.token for a in chunk]},
                    )
                )
            readies = await asyncio.gather(*(d.expect("ready", 600) for d in drivers))
            connected = sum(r["connected"] for r in readies)
            failed = sum(r["failed"] for r in readies)
            first_error = next((r["first_error"] for r in readies if r["first_error"]), None)
            connect_s = time.monotonic() - started
            await asyncio.sleep(2.0)  # let presence and any per-connection work settle
            rss1 = server.rss_kb()
            cpu_a = server.cpu_seconds()
            await asyncio.sleep(window)
            rate = (server.cpu_seconds() - cpu_a) / window
            rss2 = server.rss_kb()
            for driver in drivers:
                await driver.send({"cmd": "stop"})
            finals = await asyncio.gather(*(d.expect("result", 120) for d in drivers))
            await asyncio.gather(*(d.finish() for d in drivers))
            still_open = sum(r["still_open"] for r in finals)
            # Heartbeat CPU scales with the ping rate: scale the short heartbeat to 25 s.
            per_conn = max(0.0, rate - base_rate) / max(connected, 1) * (heartbeat / 25)
            result = {
                "connections": connected,
                "failed": failed,
                "first_error": first_error,
                "still_open": still_open,
                "connect_s": round(connect_s, 1),
                "rss_before_kb": rss0,
                "rss_after_kb": max(rss1, rss2),
                "kb_per_conn": round((max(rss1, rss2) - rss0) / max(connected, 1), 2),
                "heartbeat_s": heartbeat,
                "window_s": window,
                "cpu_at_short_heartbeat": round(rate, 4),
                "cpu_baseline": round(base_rate, 4),
                "cpu_ms_per_conn_per_min_at_25s": round(per_conn * 60 * 1000, 4),
                "core_pct_at_19000_at_25s": round(per_conn * 19000 * 100, 3),
            }
            bench.results.setdefault("idle", {})[target] = result
            bench.log(
                f"    {connected} held ({failed} failed, {still_open} still open at the end), "
                f"{result['kb_per_conn']} KB each, heartbeat CPU at 25 s: "
                f"{result['cpu_ms_per_conn_per_min_at_25s']} ms/conn/min, "
                f"{result['core_pct_at_19000_at_25s']}% of a core for 19,000"
            )
            if first_error:
                bench.log(f"    first failure: {first_error}")
        finally:
            for driver in drivers:
                if driver in bench.procs.drivers:
                    bench.procs.drivers.remove(driver)
                await driver.kill()
            bench.procs.stop_server(server)


# -- 5: history -------------------------------------------------------------------------------


async def history(bench: Bench) -> None:
    opts = bench.options
    if "chatd" not in opts.targets:
        return
    workdir = bench.fresh_dir("history-chatd")
    names = [*usernames("p", 2 * opts.pairs), "hist_a", "hist_b"]
    conv_box: list[str] = []

    async def fill() -> None:
        started = time.monotonic()
        conv_box.append(
            await prefill_history(store_url_in(workdir), "hist_a", "hist_b", opts.history_messages)
        )
        bench.log(
            f"    {opts.history_messages:,} messages written in {time.monotonic() - started:.1f} s"
        )

    if opts.provision != "store":
        raise BenchError("the history workload needs --provision store (it writes SQLite)")
    server, accounts = await start_target(bench, "chatd", workdir, names, before_start=fill)
    try:
        readers = [a for a in accounts if a.user.startswith("hist_")]
        tokens = [readers[i % 2].token for i in range(opts.history_sockets)]
        bench.log(
            f"  history: {opts.history_sockets} sockets x {opts.history_window} in flight "
            f"over {opts.history_messages:,} messages"
        )
        phase = await run_phase(
            bench,
            [
                (
                    "history",
                    {
                        "role": "history",
                        "url": server.ws_url,
                        "tokens": tokens,
                        "conv": conv_box[0],
                        "max_seq": opts.history_messages,
                        "window": opts.history_window,
                        "limit": 50,
                    },
                )
            ],
            [server],
            profile="history",
        )
        pages = sum(r["received"] for r in phase.results)
        result: dict[str, Any] = {
            "messages": opts.history_messages,
            "pages_per_s": round(pages / phase.seconds),
            **latency(phase.results).summary((50, 99)),
            **errors_of(phase.results),
            "server_cpu": phase.server_cpu,
        }
        bench.log(
            f"    {result['pages_per_s']:,} pages/s of 50  p50 {result['p50']} ms  "
            f"p99 {result['p99']} ms  errors {result['errors']}"
        )
        pair_accounts = [a for a in accounts if not a.user.startswith("hist_")]
        specs = pair_specs(pair_accounts, [server.ws_url], [server.ws_url])
        bench.log(f"  1:1 with the {opts.history_messages:,}-message store")
        full = await pairs_phase(bench, specs, [server], profile="1to1-full-store")
        bench.log(f"    {fmt_pairs(full)}")
        result["full_1to1"] = full
    finally:
        bench.procs.stop_server(server)
    empty = bench.results.get("1to1", {}).get("chatd")
    if empty is None:
        workdir = bench.fresh_dir("history-empty")
        server, accounts = await start_target(
            bench, "chatd", workdir, usernames("p", 2 * opts.pairs)
        )
        try:
            bench.log("  1:1 with an empty store (workload 1 was not run)")
            empty = await pairs_phase(
                bench, pair_specs(accounts, [server.ws_url], [server.ws_url]), [server]
            )
            bench.log(f"    {fmt_pairs(empty)}")
        finally:
            bench.procs.stop_server(server)
    result["empty_1to1"] = empty
    result["full_vs_empty"] = round(full["msgs_per_s"] / max(empty["msgs_per_s"], 1), 3)
    bench.results["history"] = result


# -- 6: across processes ----------------------------------------------------------------------


async def redis_available(url: str) -> str | None:
    """None if Redis answers at ``url``, else why not."""
    try:
        import redis.asyncio as aioredis
    except ImportError:
        return "the redis package is not installed (pip install 'chatd[redis]')"
    client = aioredis.from_url(url, socket_connect_timeout=2)
    try:
        await client.ping()
        return None
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    finally:
        await client.aclose()


async def cross(bench: Bench) -> None:
    opts = bench.options
    if "chatd" not in opts.targets:
        return
    problem = await redis_available(opts.redis)
    if problem:
        bench.log(f"  across processes: skipped, Redis at {opts.redis} is not usable: {problem}")
        bench.results["cross"] = {"skipped": problem}
        return
    workdir = bench.fresh_dir("cross-chatd")
    store = store_url_in(workdir)
    accounts = await accounts_for(bench, "chatd", workdir, usernames("p", 2 * opts.pairs), None)
    bus = f"{opts.redis}?prefix=bench{secrets.token_hex(4)}"
    servers: list[Server] = []
    try:
        for name in ("a", "b"):
            servers.append(
                await bench.procs.chatd(
                    workdir, name=f"chatd-{name}", store=store, bus=bus, server_id=f"bench-{name}"
                )
            )
        a, b = servers
        # Every pair crosses: even pairs send on A and receive on B, odd pairs the other way.
        specs = pair_specs(accounts, [a.ws_url, b.ws_url], [b.ws_url, a.ws_url])
        bench.log(
            f"  across processes: {opts.pairs} pairs, each sender and receiver on "
            "different chatd processes, Redis bus, one SQLite file"
        )
        result = await pairs_phase(bench, specs, servers, profile="cross")
        bench.log(f"    {fmt_pairs(result)}")
        bench.results["cross"] = result
    finally:
        for server in servers:
            bench.procs.stop_server(server)


WORKLOAD_FUNCS: dict[str, Callable[[Bench], Awaitable[None]]] = {
    "fanout": fanout,
    "idle": idle,
    "history": history,
    "cross": cross,
}
