"""The load driver: one process, uvloop + aiohttp's WebSocket client, told what to do on stdin.

The orchestrator (:mod:`benchmarks.workloads`) starts several of these, so that the driver is
not the bottleneck and so that no process holds more sockets than its open-files limit. The
conversation with the orchestrator is JSON lines::

    stdin   {"role": ..., ...}                       the job (one line)
    stdout  {"event": "ready", ...}                  every connection is open and said hello
    stdin   {"cmd": "go", "t_start": ns, "t_measure": ns, "t_end": ns, ...}
    stdout  {"event": "result", ...}                 after t_end: counts and histograms
    stdin   {"cmd": "stop"} (or EOF)                 close everything and exit

or ``{"event": "error", "message": ...}`` and exit status 1 at any point. Times are
``time.monotonic_ns()``, one clock for every process on the machine, so a send time carried in a
message body gives the end-to-end latency wherever the message is received. Only what falls in
``[t_measure, t_end]`` is counted: before it is warm-up.

Roles:

* ``pairs``: 1:1 senders and receivers. Closed loop (at most ``window`` in flight per sender,
  a slot freed when the partner receives the message) or open loop at a fixed ``rate`` per pair
  (latency then runs from the scheduled send time, so a stalled server cannot hide its stalls).
* ``fanout_sender`` and ``fanout_receivers``: one group; receivers in several processes each
  tell the sender over UDP when all of their members have a message, so the sender keeps
  ``window`` messages in flight to the *last* member and measures the latency to it.
* ``history``: ``history`` requests over one conversation, ``window`` in flight per socket.
* ``idle``: connect, authenticate, then only answer the server's pings.
"""

from __future__ import annotations

import asyncio
import os
import random
import sys
import time
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
from aiohttp import WSMsgType

from benchmarks.limits import raise_nofile
from benchmarks.stats import Histogram

TEXT = WSMsgType.TEXT
SETUP_TIMEOUT = 60.0
DELIVERY_TIMEOUT = 15.0
monotonic_ns = time.monotonic_ns


class DriverError(Exception):
    """Something the orchestrator must hear about: a refused hello, an error reply in set-up."""


@dataclass(slots=True)
class Window:
    """The run's clock marks, from the orchestrator's ``go``."""

    t_start: int = 0
    t_measure: int = 0
    t_end: int = 0

    def measuring(self, now: int) -> bool:
        return self.t_measure <= now <= self.t_end


@dataclass(slots=True)
class Counters:
    received: int = 0
    sent: int = 0
    acks: int = 0
    errors: int = 0
    dropped: int = 0
    first_error: str | None = None
    hist: Histogram = field(default_factory=Histogram)

    def error(self, text: str) -> None:
        self.errors += 1
        if self.first_error is None:
            self.first_error = text[:300]


# -- connections ------------------------------------------------------------------------------


def new_session() -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(limit=0, force_close=False, enable_cleanup_closed=False)
    return aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=None))


async def connect(
    session: aiohttp.ClientSession, url: str, token: str, device: str
) -> aiohttp.ClientWebSocketResponse:
    """Open a socket and say hello; return once the server said ``ok``."""
    ws = await session.ws_connect(
        url, autoping=True, heartbeat=None, compress=0, max_msg_size=0, autoclose=True
    )
    try:
        await ws.send_str(
            orjson.dumps(
                {"type": "hello", "id": "hello", "token": token, "device": device}
            ).decode()
        )
        while True:
            frame = await receive_frame(ws)
            if frame.get("id") == "hello":
                if frame.get("type") != "ok":
                    raise DriverError(f"hello refused: {frame}")
                return ws
    except BaseException:
        await ws.close()
        raise


async def receive_frame(ws: aiohttp.ClientWebSocketResponse) -> dict[str, Any]:
    msg = await ws.receive()
    if msg.type is not TEXT:
        raise DriverError(f"socket closed during set-up ({msg.type.name}, {msg.extra})")
    frame: dict[str, Any] = orjson.loads(msg.data)
    return frame


async def request(ws: aiohttp.ClientWebSocketResponse, frame: dict[str, Any]) -> dict[str, Any]:
    """Send a request and wait for its reply (events in between are skipped)."""
    await ws.send_str(orjson.dumps(frame).decode())
    while True:
        reply = await receive_frame(ws)
        if reply.get("id") == frame["id"]:
            if reply.get("type") != "ok":
                raise DriverError(f"{frame['type']} failed: {reply}")
            return reply


async def gather_bounded(coros: list[Awaitable[Any]], limit: int) -> list[Any]:
    """Await ``coros`` with at most ``limit`` running at once, in order."""
    semaphore = asyncio.Semaphore(limit)

    async def one(coro: Awaitable[Any]) -> Any:
        async with semaphore:
            return await coro

    return await asyncio.gather(*(one(c) for c in coros))


# -- the 1:1 pairs ----------------------------------------------------------------------------


class Pair:
    """One sender and its partner. ``send`` writes a pre-built frame with the time in the body."""

    __slots__ = ("conv", "inflight", "n", "prefix", "receiver", "sender", "tag", "to")

    def __init__(
        self,
        sender: aiohttp.ClientWebSocketResponse,
        receiver: aiohttp.ClientWebSocketResponse,
        to: str,
        tag: str,
    ) -> None:
        self.sender = sender
        self.receiver = receiver
        self.to = to
        self.conv = ""
        self.inflight = 0
        self.n = 0
        self.prefix = ""
        self.tag = tag

    async def open_conversation(self) -> None:
        """The first message goes ``to`` the partner and creates the direct conversation."""
        reply = await request(
            self.sender,
            {
                "type": "send",
                "id": "first",
                "to": self.to,
                "client_id": f"{self.tag}-first",
                "body": "0",
            },
        )
        self.conv = str(reply["conv"])

        async def delivered() -> None:
            while True:
                frame = await receive_frame(self.receiver)
                if frame.get("type") == "message" and frame.get("conv") == self.conv:
                    return

        try:
            await asyncio.wait_for(delivered(), DELIVERY_TIMEOUT)
        except TimeoutError:
            raise DriverError(
                f"set-up: the first message to {self.to} (conversation {self.conv}) was "
                f"acknowledged but not delivered within {DELIVERY_TIMEOUT:.0f} s"
            ) from None
        self.prefix = '{"type":"send","conv":"' + self.conv + '","client_id":"' + self.tag + "-"

    async def send(self, stamp: int) -> None:
        self.n += 1
        n = self.n
        self.inflight += 1
        await self.sender.send_str(f'{self.prefix}{n}","id":"{n}","body":"{stamp}"}}')


async def run_pairs(job: dict[str, Any], ctl: Control) -> None:
    window = int(job.get("window", 32))
    rate = job.get("rate")  # messages/s per pair, or None for the closed loop
    cap = int(job.get("max_inflight", 2000))
    tag = f"{os.getpid()}{random.getrandbits(24):06x}"
    counters = Counters()
    clock = Window()
    async with new_session() as session:

        async def open_pair(i: int, spec: dict[str, str]) -> Pair:
            sender = await connect(session, spec["s_url"], spec["s_token"], "bench")
            receiver = await connect(session, spec["r_url"], spec["r_token"], "bench")
            pair = Pair(sender, receiver, spec["r_user"], f"{tag}p{i}")
            await pair.open_conversation()
            return pair

        pairs: list[Pair] = await asyncio.wait_for(
            gather_bounded([open_pair(i, s) for i, s in enumerate(job["pairs"])], 50),
            SETUP_TIMEOUT,
        )
        go = await ctl.ready({"pairs": len(pairs)})
        clock.t_start, clock.t_measure, clock.t_end = go["t_start"], go["t_measure"], go["t_end"]
        closed_loop = rate is None

        async def read_receiver(pair: Pair) -> None:
            ws = pair.receiver
            loads = orjson.loads
            hist = counters.hist
            t_measure, t_end = clock.t_measure, clock.t_end
            while True:
                msg = await ws.receive()
                if msg.type is not TEXT:
                    return
                frame = loads(msg.data)
                if frame.get("type") != "message":
                    continue
                now = monotonic_ns()
                pair.inflight -= 1
                if t_measure <= now <= t_end:
                    hist.record(now - int(frame["body"]))
                    counters.received += 1
                if closed_loop and now < t_end:
                    await pair.send(now)

        async def read_sender(pair: Pair) -> None:
            ws = pair.sender
            while True:
                msg = await ws.receive()
                if msg.type is not TEXT:
                    return
                data = msg.data
                if '"ok"' in data:
                    counters.acks += 1
                    continue
                frame = orjson.loads(data)
                if frame.get("type") == "error":
                    counters.error(str(frame))
                    # A refused send is never delivered: free its slot.
                    pair.inflight -= 1
                    now = monotonic_ns()
                    if closed_loop and now < clock.t_end:
                        await pair.send(now)

        readers = [asyncio.create_task(read_receiver(p)) for p in pairs]
        readers += [asyncio.create_task(read_sender(p)) for p in pairs]
        try:
            await sleep_until(clock.t_start)
            cpu0 = cpu1 = 0.0
            if closed_loop:
                for _ in range(window):
                    now = monotonic_ns()
                    for pair in pairs:
                        await pair.send(now)
                await sleep_until(clock.t_measure)
                cpu0 = time.process_time()
                await sleep_until(clock.t_end)
                cpu1 = time.process_time()
            else:
                cpu0, cpu1 = await open_loop(pairs, float(rate), cap, clock, counters)
            await asyncio.sleep(0.3)  # let the last in-window deliveries land
        finally:
            for task in readers:
                task.cancel()
            await asyncio.gather(*readers, return_exceptions=True)
        counters.sent = sum(p.n for p in pairs)
        await ctl.result(result_of(counters, clock, cpu0, cpu1))
        await close_all([ws for p in pairs for ws in (p.sender, p.receiver)])


async def open_loop(
    pairs: list[Pair], rate: float, cap: int, clock: Window, counters: Counters
) -> tuple[float, float]:
    """Send at ``rate`` per pair on a fixed schedule, round robin; stamp the scheduled time."""
    interval = 1e9 / (rate * len(pairs))
    due = float(clock.t_start)
    k = 0
    count = len(pairs)
    cpu0: float | None = None
    while True:
        now = monotonic_ns()
        if cpu0 is None and now >= clock.t_measure:
            cpu0 = time.process_time()
        if now >= clock.t_end:
            break
        while due <= now:
            pair = pairs[k % count]
            k += 1
            if pair.inflight < cap:
                await pair.send(int(due))
            else:
                counters.dropped += 1
            due += interval
        delay = (due - monotonic_ns()) / 1e9
        await asyncio.sleep(delay if delay > 0 else 0)
    return cpu0 or time.process_time(), time.process_time()


# -- group fan-out ----------------------------------------------------------------------------


class Completions(asyncio.DatagramProtocol):
    """The sender's side of the UDP back channel: ``"<k> <latency_ns>"`` from each receiver
    process once all of its members have message ``k``."""

    def __init__(self, procs: int, on_done: Callable[[int, int], None]) -> None:
        self.procs = procs
        self.on_done = on_done
        self.pending: dict[int, list[int]] = {}

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        k_text, lat_text = data.split(b" ")
        k, latency = int(k_text), int(lat_text)
        entry = self.pending.get(k)
        if entry is None:
            entry = self.pending[k] = [0, 0]
        entry[0] += 1
        if latency > entry[1]:
            entry[1] = latency
        if entry[0] >= self.procs:
            del self.pending[k]
            self.on_done(k, entry[1])


async def run_fanout_sender(job: dict[str, Any], ctl: Control) -> None:
    window = int(job.get("window", 10))
    conv = job["conv"]
    counters = Counters()  # hist: latency to the last member
    clock = Window()
    loop = asyncio.get_running_loop()
    wake = asyncio.Event()
    state = {"inflight": 0, "done": 0}

    def on_done(k: int, latency: int) -> None:
        state["inflight"] -= 1
        now = monotonic_ns()
        if clock.measuring(now):
            counters.hist.record(latency)
            counters.received += 1
        wake.set()

    transport, completions = await loop.create_datagram_endpoint(
        lambda: Completions(int(job["procs"]), on_done), local_addr=("127.0.0.1", 0)
    )
    try:
        async with new_session() as session:
            ws = await connect(session, job["url"], job["token"], "bench-sender")
            port = transport.get_extra_info("sockname")[1]
            go = await ctl.ready({"udp_port": port})
            clock.t_start, clock.t_measure, clock.t_end = (
                go["t_start"],
                go["t_measure"],
                go["t_end"],
            )

            async def read_acks() -> None:
                while True:
                    msg = await ws.receive()
                    if msg.type is not TEXT:
                        return
                    if '"ok"' in msg.data:
                        counters.acks += 1
                        continue
                    frame = orjson.loads(msg.data)
                    if frame.get("type") == "error":
                        counters.error(str(frame))

            reader = asyncio.create_task(read_acks())
            prefix = '{"type":"send","conv":"' + conv + f'","client_id":"{os.getpid()}f'
            try:
                await sleep_until(clock.t_start)
                cpu0: float | None = None
                k = 0
                while True:
                    now = monotonic_ns()
                    if cpu0 is None and now >= clock.t_measure:
                        cpu0 = time.process_time()
                    if now >= clock.t_end:
                        break
                    if state["inflight"] >= window:
                        wake.clear()
                        try:
                            await asyncio.wait_for(wake.wait(), (clock.t_end - now) / 1e9)
                        except TimeoutError:
                            pass
                        continue
                    k += 1
                    state["inflight"] += 1
                    await ws.send_str(f'{prefix}{k}","id":"{k}","body":"{now}:{k}"}}')
                cpu1 = time.process_time()
                await asyncio.sleep(0.3)
            finally:
                reader.cancel()
                await asyncio.gather(reader, return_exceptions=True)
            counters.sent = k
            result = result_of(counters, clock, cpu0 or cpu1, cpu1)
            result["incomplete"] = len(completions.pending)
            await ctl.result(result)
            await ws.close()
    finally:
        transport.close()


async def run_fanout_receivers(job: dict[str, Any], ctl: Control) -> None:
    conv = job["conv"]
    counters = Counters()  # hist: latency of every delivery
    clock = Window()
    loop = asyncio.get_running_loop()
    async with new_session() as session:
        sockets = await asyncio.wait_for(
            gather_bounded(
                [connect(session, job["url"], token, "bench") for token in job["tokens"]], 100
            ),
            SETUP_TIMEOUT,
        )
        local = len(sockets)
        go = await ctl.ready({"members": local})
        clock.t_start, clock.t_measure, clock.t_end = go["t_start"], go["t_measure"], go["t_end"]
        transport, _ = await loop.create_datagram_endpoint(
            asyncio.DatagramProtocol, remote_addr=("127.0.0.1", int(go["udp_port"]))
        )
        seen: dict[int, int] = {}

        async def read(ws: aiohttp.ClientWebSocketResponse) -> None:
            loads = orjson.loads
            hist = counters.hist
            t_measure, t_end = clock.t_measure, clock.t_end
            while True:
                msg = await ws.receive()
                if msg.type is not TEXT:
                    return
                frame = loads(msg.data)
                if frame.get("type") != "message" or frame.get("conv") != conv:
                    continue
                now = monotonic_ns()
                stamp_text, k_text = frame["body"].split(":")
                latency = now - int(stamp_text)
                if t_measure <= now <= t_end:
                    hist.record(latency)
                    counters.received += 1
                k = int(k_text)
                count = seen.get(k, 0) + 1
                if count >= local:
                    seen.pop(k, None)
                    transport.sendto(f"{k} {latency}".encode())
                else:
                    seen[k] = count

        readers = [asyncio.create_task(read(ws)) for ws in sockets]
        try:
            await sleep_until(clock.t_measure)
            cpu0 = time.process_time()
            await sleep_until(clock.t_end)
            cpu1 = time.process_time()
            await asyncio.sleep(0.3)
        finally:
            for task in readers:
                task.cancel()
            await asyncio.gather(*readers, return_exceptions=True)
            transport.close()
        result = result_of(counters, clock, cpu0, cpu1)
        result["incomplete"] = len(seen)
        await ctl.result(result)
        await close_all(sockets)


# -- history ----------------------------------------------------------------------------------


async def run_history(job: dict[str, Any], ctl: Control) -> None:
    window = int(job.get("window", 4))
    limit = int(job.get("limit", 50))
    max_seq = int(job["max_seq"])
    conv = job["conv"]
    counters = Counters()
    clock = Window()
    async with new_session() as session:
        sockets = await asyncio.wait_for(
            gather_bounded(
                [connect(session, job["url"], token, "bench") for token in job["tokens"]], 50
            ),
            SETUP_TIMEOUT,
        )
        go = await ctl.ready({"sockets": len(sockets)})
        clock.t_start, clock.t_measure, clock.t_end = go["t_start"], go["t_measure"], go["t_end"]
        rng = random.Random(os.getpid())
        prefix = '{"type":"history","conv":"' + conv + f'","limit":{limit},"before":'

        async def drive(ws: aiohttp.ClientWebSocketResponse) -> None:
            sent: dict[str, int] = {}
            n = 0

            async def ask() -> None:
                nonlocal n
                n += 1
                request_id = str(n)
                sent[request_id] = monotonic_ns()
                before = rng.randint(limit + 1, max_seq + 1)
                await ws.send_str(f'{prefix}{before},"id":"{request_id}"}}')

            await sleep_until(clock.t_start)
            for _ in range(window):
                await ask()
            while True:
                msg = await ws.receive()
                if msg.type is not TEXT:
                    return
                frame = orjson.loads(msg.data)
                started = sent.pop(str(frame.get("id")), None)
                if started is None:
                    continue
                now = monotonic_ns()
                if frame.get("type") != "ok" or len(frame.get("messages", ())) != limit:
                    counters.error(str(frame)[:300])
                elif clock.measuring(now):
                    counters.received += 1
                    counters.hist.record(now - started)
                if now < clock.t_end:
                    await ask()

        tasks = [asyncio.create_task(drive(ws)) for ws in sockets]
        try:
            await sleep_until(clock.t_measure)
            cpu0 = time.process_time()
            await sleep_until(clock.t_end)
            cpu1 = time.process_time()
            await asyncio.sleep(0.3)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        await ctl.result(result_of(counters, clock, cpu0, cpu1))
        await close_all(sockets)


# -- idle connections -------------------------------------------------------------------------


async def run_idle(job: dict[str, Any], ctl: Control) -> None:
    async with new_session() as session:
        failures: list[str] = []

        async def one(token: str) -> aiohttp.ClientWebSocketResponse | None:
            try:
                return await connect(session, job["url"], token, "bench-idle")
            except Exception as exc:  # counted and reported: the figure says how many held
                failures.append(f"{type(exc).__name__}: {exc}")
                return None

        opened = await asyncio.wait_for(
            gather_bounded([one(t) for t in job["tokens"]], int(job.get("concurrency", 64))),
            SETUP_TIMEOUT * 5,
        )
        sockets = [ws for ws in opened if ws is not None]

        async def answer_pings(ws: aiohttp.ClientWebSocketResponse) -> None:
            # aiohttp's client answers a ping only while someone is receiving.
            while True:
                msg = await ws.receive()
                if msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSED, WSMsgType.ERROR):
                    return

        readers = [asyncio.create_task(answer_pings(ws)) for ws in sockets]
        try:
            ctl.announce(
                {
                    "connected": len(sockets),
                    "failed": len(failures),
                    "first_error": failures[0] if failures else None,
                }
            )
            await ctl.wait_stop()
            still_open = sum(1 for ws in sockets if not ws.closed)
            await ctl.result({"still_open": still_open})
        finally:
            for task in readers:
                task.cancel()
            await asyncio.gather(*readers, return_exceptions=True)
            await close_all(sockets)


# -- plumbing ---------------------------------------------------------------------------------


def result_of(counters: Counters, clock: Window, cpu0: float, cpu1: float) -> dict[str, Any]:
    seconds = (clock.t_end - clock.t_measure) / 1e9
    return {
        "received": counters.received,
        "seconds": seconds,
        "sent": counters.sent,
        "acks": counters.acks,
        "errors": counters.errors,
        "first_error": counters.first_error,
        "dropped": counters.dropped,
        "hist": counters.hist.to_json(),
        "cpu": round((cpu1 - cpu0) / seconds, 3) if seconds > 0 else None,
    }


async def close_all(sockets: list[aiohttp.ClientWebSocketResponse]) -> None:
    async def close(ws: aiohttp.ClientWebSocketResponse) -> None:
        try:
            await asyncio.wait_for(ws.close(), 2.0)
        except (TimeoutError, ConnectionError, aiohttp.ClientError):
            pass

    await gather_bounded([close(ws) for ws in sockets], 500)


async def sleep_until(t_ns: int) -> None:
    delay = (t_ns - monotonic_ns()) / 1e9
    if delay > 0:
        await asyncio.sleep(delay)


class Control:
    """The JSON-lines conversation with the orchestrator over stdin and stdout."""

    def __init__(self, reader: asyncio.StreamReader) -> None:
        self.reader = reader

    @staticmethod
    def emit(obj: dict[str, Any]) -> None:
        sys.stdout.write(orjson.dumps(obj).decode() + "\n")
        sys.stdout.flush()

    async def read(self) -> dict[str, Any] | None:
        line = await self.reader.readline()
        if not line:
            return None
        obj: dict[str, Any] = orjson.loads(line)
        return obj

    def announce(self, info: dict[str, Any]) -> None:
        """Say ready without waiting for ``go`` (the idle role waits for ``stop``)."""
        self.emit({"event": "ready", **info})

    async def ready(self, info: dict[str, Any]) -> dict[str, Any]:
        """Say ready; return the ``go`` command."""
        self.emit({"event": "ready", **info})
        command = await self.read()
        if command is None or command.get("cmd") != "go":
            raise DriverError(f"expected go, got {command}")
        return command

    async def result(self, result: dict[str, Any]) -> None:
        self.emit({"event": "result", **result})

    async def wait_stop(self) -> None:
        while True:
            command = await self.read()
            if command is None or command.get("cmd") == "stop":
                return


ROLES: dict[str, Callable[[dict[str, Any], Control], Awaitable[None]]] = {
    "pairs": run_pairs,
    "fanout_sender": run_fanout_sender,
    "fanout_receivers": run_fanout_receivers,
    "history": run_history,
    "idle": run_idle,
}


async def amain() -> int:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 26)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    ctl = Control(reader)
    try:
        job = await ctl.read()
        if job is None or job.get("role") not in ROLES:
            raise DriverError(f"unknown job: {job and job.get('role')}")
        await ROLES[job["role"]](job, ctl)
        return 0
    except Exception as exc:
        traceback.print_exc(file=sys.stderr)
        Control.emit({"event": "error", "message": f"{type(exc).__name__}: {exc}"})
        return 1


def main() -> None:
    raise_nofile()
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        sys.exit(asyncio.run(amain()))
    sys.exit(uvloop.run(amain()))


if __name__ == "__main__":
    main()
