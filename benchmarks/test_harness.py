"""Tests of the benchmark harness itself (not collected by ``make test``: ``testpaths`` is
``tests``). Run with ``.venv/bin/python -m pytest benchmarks``.

They run the real thing at toy sizes: the relay and chatd as processes, the drivers as
processes, chatd's real SQLite store for the prefill.
"""

from __future__ import annotations

import math
import os
import random
from pathlib import Path
from typing import Any

import orjson
import pytest

from benchmarks import run
from benchmarks.provision import http_accounts, prefill_history, store_accounts
from benchmarks.report import Row, build_rows, table
from benchmarks.servers import Processes
from benchmarks.stats import Histogram


def test_histogram_percentiles_are_within_one_percent() -> None:
    rng = random.Random(7)
    samples = [int(rng.lognormvariate(math.log(5e6), 1.0)) for _ in range(20_000)]
    hist = Histogram()
    for sample in samples:
        hist.record(sample)
    ordered = sorted(samples)
    for pct in (50, 90, 99, 99.9):
        exact = ordered[math.ceil(len(ordered) * pct / 100) - 1] / 1e6
        assert hist.percentile(pct) == pytest.approx(exact, rel=0.011)


def test_histograms_merge_through_json() -> None:
    a, b = Histogram(), Histogram()
    for ns in (1_000_000, 2_000_000):
        a.record(ns)
    b.record(100_000_000)
    merged = Histogram.merged([orjson.loads(orjson.dumps(h.to_json())) for h in (a, b)])
    assert merged.total == 3
    assert merged.percentile(100) == pytest.approx(100.0, rel=0.01)
    assert Histogram().percentile(50) is None


def test_rows_state_each_target_and_by_how_much_it_is_missed() -> None:
    results: dict[str, Any] = {
        "1to1": {
            "chatd": {"msgs_per_s": 10_000, "p50": 5.0, "p90": 9.0, "p99": 20.0},
            "relay": {"msgs_per_s": 40_000, "p50": 2.0, "p90": 4.0, "p99": 8.0},
        },
        "latency": {
            "chatd": [
                {"fraction": 0.5, "msgs_per_s": 5_000, "p50": 2.0, "p99": 30.0, "p99.9": 40.0}
            ]
        },
        "fanout": {
            "1000": {"chatd": {"deliveries_per_s": 120_000}, "relay": {"deliveries_per_s": 150_000}}
        },
        "idle": {
            "chatd": {"connections": 2000, "kb_per_conn": 20.5, "core_pct_at_19000_at_25s": 0.5}
        },
        "cross": {"error": "chatd-a exited\nwith details"},
    }
    rows = {(r.workload, r.metric): r for r in build_rows(results)}
    throughput = rows[("1:1 throughput (50 pairs)", "msgs/s")]
    assert throughput.ratio == 0.25
    assert throughput.status.startswith("MISSED: 0.25x")
    assert rows[("latency at 50% of max", "p99 ms")].status == "MISSED: 30.0 ms"
    assert rows[("fan-out, group of 1000", "deliveries/s")].status == "met"
    assert rows[("idle connections (2,000 held)", "server RSS KB per connection")].status == "met"
    assert rows[("cross", "FAILED")].status == "chatd-a exited"
    text = table(list(rows.values()))
    assert "| 1:1 throughput (50 pairs)" in text and "0.25x" in text
    assert Row("w", "m", 1.0, 0).ratio is None


async def test_prefill_writes_users_and_a_long_history_into_chatds_sqlite(tmp_path: Path) -> None:
    from chatd.store import open_store

    url = f"sqlite:///{tmp_path / 'chatd.db'}"
    accounts = await store_accounts(url, ["bench_a", "bench_b"])
    assert [a.user for a in accounts] == ["bench_a", "bench_b"]
    conv = await prefill_history(url, "bench_a", "bench_b", 1_000)
    store = open_store(url)
    await store.start()
    try:
        from chatd import ids

        session = await store.get_session(ids.token_hash(accounts[0].token))
        assert session is not None and session.user == "bench_a"
        conversation = await store.get_conversation(conv)
        assert conversation is not None and conversation.last_seq == 1_000
        page, more = await store.history(conv, before=None, after=None, limit=50)
        assert [m.seq for m in page] == list(range(951, 1_001)) and more
        page, _ = await store.history(conv, before=501, after=None, limit=2)
        assert [(m.seq, m.body) for m in page] == [
            (499, "history message 499"),
            (500, "history message 500"),
        ]
    finally:
        await store.close()


def _live(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.timeout(120)
@pytest.mark.parametrize("target", ["relay", "chatd"])
def test_a_tiny_run_measures_every_workload_and_stops_every_process(
    tmp_path: Path, target: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    started: list[int] = []
    real_start = Processes.start_server

    def record(self: Processes, *args: Any, **kwargs: Any) -> Any:
        proc = real_start(self, *args, **kwargs)
        started.append(proc.pid)
        return proc

    monkeypatch.setattr(Processes, "start_server", record)
    out = tmp_path / "r.json"
    only = "1to1,latency,fanout,idle" + (",history" if target == "chatd" else "")
    args = (
        f"--targets {target} --only {only} --duration 1 --warmup 0.3 --pairs 4 --rates 0.5 "
        "--fanout-sizes 12 --idle 30 --idle-window 1 --idle-heartbeat 1 "
        "--history-messages 5000 --history-sockets 2 --plot"
    ).split()
    code = run.main([*args, "--json", str(out), "--plot-path", str(tmp_path / "plot.png")])
    assert code == 0
    doc = orjson.loads(out.read_bytes())
    found = doc["workloads"]
    assert found["1to1"][target]["msgs_per_s"] > 0 and found["1to1"][target]["errors"] == 0
    assert found["latency"][target][0]["msgs_per_s"] > 0
    assert found["fanout"]["12"][target]["deliveries_per_s"] > 0
    assert found["fanout"]["12"][target]["incomplete"] == 0
    assert found["idle"][target]["connections"] == 30
    if target == "chatd":
        assert found["history"]["pages_per_s"] > 0 and found["history"]["errors"] == 0
    assert doc["machine"]["cpus"] == os.cpu_count()
    assert (tmp_path / "plot.png").read_bytes().startswith(b"\x89PNG")
    assert started and not [pid for pid in started if _live(pid)]


async def test_the_lean_client_speaks_rfc6455_to_a_hand_written_server() -> None:
    import asyncio
    import base64
    import hashlib

    from benchmarks.wsclient import open_websocket

    received: list[bytes] = []
    done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def read_frame(reader: asyncio.StreamReader) -> tuple[int, bytes]:
        first, second = await reader.readexactly(2)
        length = second & 0x7F
        if length == 126:
            length = int.from_bytes(await reader.readexactly(2), "big")
        elif length == 127:
            length = int.from_bytes(await reader.readexactly(8), "big")
        assert second & 0x80, "client frames must be masked"
        key = await reader.readexactly(4)
        data = await reader.readexactly(length)
        return first & 0x0F, bytes(b ^ key[i % 4] for i, b in enumerate(data))

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = (await reader.readuntil(b"\r\n\r\n")).decode()
        key = next(
            ln.split(":", 1)[1].strip()
            for ln in head.split("\r\n")
            if ln.lower().startswith("sec-websocket-key")
        )
        accept = base64.b64encode(
            hashlib.sha1((key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest()
        ).decode()
        writer.write(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Accept: {accept}\r\n\r\n".encode()
        )
        big = b"x" * 70_000
        writer.write(b"\x89\x02hi")  # ping
        writer.write(b"\x01\x03abc" + b"\x80\x03def")  # one text message in two fragments
        writer.write(b"\x81\x7f" + len(big).to_bytes(8, "big") + big)
        writer.write(b"\x81\x7e" + (300).to_bytes(2, "big") + b"y" * 300)
        await writer.drain()
        received.append(b"%d:%s" % await read_frame(reader))  # the pong
        for _ in range(2):
            received.append(b"%d:%s" % await read_frame(reader))
        writer.write(b"\x88\x02\x03\xe8")  # close 1000
        await writer.drain()
        writer.close()
        done.set_result(None)

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        ws = await asyncio.wait_for(open_websocket(f"ws://127.0.0.1:{port}/ws"), 5)
        messages = [await asyncio.wait_for(ws.recv(), 5) for _ in range(3)]
        assert messages == [b"abcdef", b"x" * 70_000, b"y" * 300]
        ws.send_text(b"short")
        ws.send_text(b"z" * 1000)
        await asyncio.wait_for(done, 5)
        await asyncio.wait_for(asyncio.shield(ws.closed_future), 5)
        assert received == [b"10:hi", b"1:short", b"1:" + b"z" * 1000]
        assert ws.close_code == 1000
    finally:
        server.close()
        await server.wait_closed()


async def test_http_provisioning_registers_and_logs_in_through_the_real_api(
    tmp_path: Path,
) -> None:
    from benchmarks.workloads import ws_request

    procs = Processes()
    try:
        server = await procs.chatd(tmp_path)
        accounts = await http_accounts(server.http_url, ["http_a", "http_b"])
        reply = await ws_request(server, accounts[0].token, {"type": "ping", "id": "p"})
        assert reply["type"] == "ok"
        relay = await procs.relay(tmp_path)
        relayed = await http_accounts(relay.http_url, ["someone"])
        assert relayed[0].token == "someone"
    finally:
        await procs.stop_all()


def test_a_profile_summary_names_threads_and_their_own_time(tmp_path: Path) -> None:
    from benchmarks.profile import format_summary, summarize

    raw = tmp_path / "p.raw"
    raw.write_text(
        "thread (1): MainThread;run (a/runners.py:118) 6\n"
        "thread (1): MainThread;send (chatd/service/chat.py:85) 2\n"
        "thread (2): writer:/tmp/x.db;_writer_main (chatd/store/sqlite.py:9);"
        "commit (chatd/store/sqlite.py:573) 2\n"
    )
    summary = summarize(raw)
    assert summary["samples"] == 10
    main = summary["threads"]["MainThread"]
    assert main["share"] == 0.8 and main["self"][0] == ("run (runners.py:118)", 0.75)
    writer = summary["threads"]["writer (_writer_main)"]
    assert writer["self"] == [("commit (sqlite.py:573)", 1.0)]
    assert "MainThread: 80% of samples" in "\n".join(format_summary("chatd", summary))
