"""The load driver: one process, uvloop + a lean WebSocket client, told what to do on stdin.

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

The sockets are :class:`benchmarks.wsclient.RawWebSocket`: frames are handled in callbacks
straight from ``data_received`` and written at once, with no task or coroutine per frame, and
send frames are built from pre-serialized prefixes. Received frames are parsed with orjson.

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
import gc
import os
import random
import signal
import sys
import time
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, cast

import orjson

from benchmarks.limits import raise_nofile
from benchmarks.stats import Histogram
from benchmarks.wsclient import RawWebSocket, open_websocket

SETUP_TIMEOUT = 60.0
DELIVERY_TIMEOUT = 15.0
SETUP_ATTEMPTS = 3
MIN_TICK = 0.001
monotonic_ns = time.monotonic_ns
loads = orjson.loads


class DriverError(Exception):
    """Something the orchestrator must hear about: a refused hello, an error reply in set-up."""


@dataclass(slots=True)
class Window:
    """The run's clock marks, from the orchestrator's ``go``."""

    t_start: int = 0
    t_measure: int = 0
    t_end: int = 0

    def set(self, go: dict[str, Any]) -> None:
        self.t_start, self.t_measure, self.t_end = go["t_start"], go["t_measure"], go["t_end"]


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


async def connect(url: str, token: str, device: str) -> RawWebSocket:
    """Open a socket and say hello; return once the server said ``ok``."""
    ws = await open_websocket(url)
    try:
        ws.send_text(
            orjson.dumps({"type": "hello", "id": "hello", "token": token, "device": device})
        )
        while True:
            frame = loads(await ws.recv())
            if frame.get("id") == "hello":
                if frame.get("type") != "ok":
                    raise DriverError(f"hello refused: {frame}")
                return ws
    except BaseException:
        await ws.close()
        raise


async def request(ws: RawWebSocket, frame: dict[str, Any]) -> dict[str, Any]:
    """Send a request and wait for its reply (events in between are skipped)."""
    ws.send_text(orjson.dumps(frame))
    while True:
        reply: dict[str, Any] = loads(await ws.recv())
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


async def connect_all(url: str, tokens: list[str], device: str, limit: int) -> list[RawWebSocket]:
    sockets: list[RawWebSocket] = await asyncio.wait_for(
        gather_bounded([connect(url, token, device) for token in tokens], limit), SETUP_TIMEOUT
    )
    return sockets


# -- the 1:1 pairs ----------------------------------------------------------------------------


class Pair:
    """One sender and its partner. ``send`` writes a pre-built frame with the time in the body."""

    __slots__ = ("conv", "inflight", "n", "prefix", "receiver", "sender", "tag", "to")

    def __init__(self, sender: RawWebSocket, receiver: RawWebSocket, to: str, tag: str) -> None:
        self.sender = sender
        self.receiver = receiver
        self.to = to
        self.tag = tag
        self.conv = ""
        self.inflight = 0
        self.n = 0
        self.prefix = b""

    async def open_conversation(self) -> int:
        """The first message goes ``to`` the partner and creates the direct conversation.

        Live delivery is best effort, so a first message that is acknowledged but not
        delivered is sent again (up to ``SETUP_ATTEMPTS`` times); returns the retries needed.
        """

        async def delivered() -> None:
            while True:
                frame = loads(await self.receiver.recv())
                if frame.get("type") == "message" and frame.get("conv") == self.conv:
                    return

        for attempt in range(SETUP_ATTEMPTS):
            first = {
                "type": "send",
                "id": f"first{attempt}",
                "to": self.to,
                "client_id": f"{self.tag}-first{attempt}",
                "body": "0",
            }
            reply = await request(self.sender, first)
            self.conv = str(reply["conv"])
            try:
                await asyncio.wait_for(delivered(), DELIVERY_TIMEOUT / SETUP_ATTEMPTS)
                break
            except TimeoutError:
                continue
        else:
            raise DriverError(
                f"set-up: {SETUP_ATTEMPTS} first messages to {self.to} (conversation "
                f"{self.conv}) were acknowledged but none delivered within "
                f"{DELIVERY_TIMEOUT:.0f} s"
            )
        self.prefix = (
            '{"type":"send","conv":"' + self.conv + '","client_id":"' + self.tag + "-"
        ).encode()
        return attempt

    def send(self, stamp: int) -> None:
        self.n += 1
        n = self.n
        self.inflight += 1
        self.sender.send_text(b'%s%d","id":"%d","body":"%d"}' % (self.prefix, n, n, stamp))


async def run_pairs(job: dict[str, Any], ctl: Control) -> None:
    window = int(job.get("window", 32))
    rate = job.get("rate")  # messages/s per pair, or None for the closed loop
    cap = int(job.get("max_inflight", 2000))
    tag = f"{os.getpid()}{random.getrandbits(24):06x}"
    counters = Counters()
    clock = Window()

    retries = [0]

    async def open_pair(i: int, spec: dict[str, str]) -> Pair:
        sender = await connect(spec["s_url"], spec["s_token"], "bench")
        receiver = await connect(spec["r_url"], spec["r_token"], "bench")
        pair = Pair(sender, receiver, spec["r_user"], f"{tag}p{i}")
        retries[0] += await pair.open_conversation()
        return pair

    pairs: list[Pair] = await asyncio.wait_for(
        gather_bounded([open_pair(i, s) for i, s in enumerate(job["pairs"])], 50),
        SETUP_TIMEOUT,
    )
    clock.set(await ctl.ready({"pairs": len(pairs), "setup_retries": retries[0]}))
    closed_loop = rate is None
    t_measure, t_end = clock.t_measure, clock.t_end
    hist = counters.hist

    def on_message(pair: Pair) -> Callable[[bytes], None]:
        def handle(payload: bytes) -> None:
            frame = loads(payload)
            if frame.get("type") != "message":
                return
            now = monotonic_ns()
            pair.inflight -= 1
            if t_measure <= now <= t_end:
                hist.record(now - int(frame["body"]))
                counters.received += 1
            if closed_loop and now < t_end:
                pair.send(now)

        return handle

    def on_reply(pair: Pair) -> Callable[[bytes], None]:
        def handle(payload: bytes) -> None:
            if b'"ok"' in payload:
                counters.acks += 1
                return
            frame = loads(payload)
            if frame.get("type") == "error":
                counters.error(str(frame))
                # A refused send is never delivered: free its slot.
                pair.inflight -= 1
                now = monotonic_ns()
                if closed_loop and now < t_end:
                    pair.send(now)

        return handle

    for pair in pairs:
        pair.receiver.on_text = on_message(pair)
        pair.sender.on_text = on_reply(pair)
    await sleep_until(clock.t_start)
    if closed_loop:
        for _ in range(window):
            now = monotonic_ns()
            for pair in pairs:
                pair.send(now)
        cpu0, cpu1 = await measure_cpu(clock)
    else:
        cpu0, cpu1 = await open_loop(pairs, float(cast(float, rate)), cap, clock, counters)
    await asyncio.sleep(1.0)  # let what was sent before t_end land
    counters.sent = sum(p.n for p in pairs)
    result = result_of(counters, clock, cpu0, cpu1)
    # Acknowledged or not, never delivered within a second of the end: lost or very late.
    result["undelivered"] = sum(p.inflight for p in pairs)
    await ctl.result(result)
    await close_all([ws for p in pairs for ws in (p.sender, p.receiver)])


async def open_loop(
    pairs: list[Pair], rate: float, cap: int, clock: Window, counters: Counters
) -> tuple[float, float]:
    """Send at ``rate`` per pair on a fixed schedule, round robin; stamp the scheduled time.

    The loop wakes every millisecond at most (the event loop's timer resolution) and sends
    everything due, so a message may leave up to a millisecond after its stamp: that counts
    as latency (on average about half a millisecond).
    """
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
                pair.send(int(due))
            else:
                counters.dropped += 1
            due += interval
        # Never less than the event loop's 1 ms timer resolution: a shorter sleep returns at
        # once and the driver would spin, taking a core from the server on a 2-core machine.
        delay = (due - monotonic_ns()) / 1e9
        await asyncio.sleep(delay if delay > MIN_TICK else MIN_TICK)
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
    counters = Counters()  # received, hist: messages complete at the last member
    clock = Window()
    loop = asyncio.get_running_loop()
    wake = asyncio.Event()
    inflight = [0]

    def on_done(k: int, latency: int) -> None:
        inflight[0] -= 1
        if clock.t_measure <= monotonic_ns() <= clock.t_end:
            counters.hist.record(latency)
            counters.received += 1
        wake.set()

    transport, completions = await loop.create_datagram_endpoint(
        lambda: Completions(int(job["procs"]), on_done), local_addr=("127.0.0.1", 0)
    )
    try:
        ws = await connect(job["url"], job["token"], "bench-sender")

        def on_reply(payload: bytes) -> None:
            if b'"ok"' in payload:
                counters.acks += 1
                return
            frame = loads(payload)
            if frame.get("type") == "error":
                counters.error(str(frame))

        ws.on_text = on_reply
        clock.set(await ctl.ready({"udp_port": transport.get_extra_info("sockname")[1]}))
        prefix = ('{"type":"send","conv":"' + conv + f'","client_id":"{os.getpid()}f').encode()
        await sleep_until(clock.t_start)
        cpu0: float | None = None
        k = 0
        while True:
            now = monotonic_ns()
            if cpu0 is None and now >= clock.t_measure:
                cpu0 = time.process_time()
            if now >= clock.t_end:
                break
            if inflight[0] >= window:
                wake.clear()
                try:
                    await asyncio.wait_for(wake.wait(), (clock.t_end - now) / 1e9)
                except TimeoutError:
                    pass
                continue
            k += 1
            inflight[0] += 1
            ws.send_text(b'%s%d","id":"%d","body":"%d:%d"}' % (prefix, k, k, now, k))
        cpu1 = time.process_time()
        await asyncio.sleep(0.3)
        counters.sent = k
        result = result_of(counters, clock, cpu0 or cpu1, cpu1)
        result["incomplete"] = len(completions.pending)
        await ctl.result(result)
        await ws.close()
    finally:
        transport.close()


async def run_fanout_receivers(job: dict[str, Any], ctl: Control) -> None:
    conv = job["conv"].encode()
    counters = Counters()  # received, hist: every delivery
    clock = Window()
    loop = asyncio.get_running_loop()
    sockets = await connect_all(job["url"], job["tokens"], "bench", 100)
    local = len(sockets)
    go = await ctl.ready({"members": local})
    clock.set(go)
    transport, _ = await loop.create_datagram_endpoint(
        asyncio.DatagramProtocol, remote_addr=("127.0.0.1", int(go["udp_port"]))
    )
    seen: dict[int, int] = {}
    hist = counters.hist
    t_measure, t_end = clock.t_measure, clock.t_end

    def on_text(payload: bytes) -> None:
        frame = loads(payload)
        if frame.get("type") != "message" or frame.get("conv") != conv_text:
            return
        now = monotonic_ns()
        stamp_text, k_text = frame["body"].split(":")
        latency = now - int(stamp_text)
        if t_measure <= now <= t_end:
            hist.record(latency)
            counters.received += 1
        k = int(k_text)
        count = seen.get(k, 0) + 1
        if count >= local:
            del seen[k]
            transport.sendto(b"%d %d" % (k, latency))
        else:
            seen[k] = count

    conv_text = conv.decode()
    for ws in sockets:
        ws.on_text = on_text
    try:
        cpu0, cpu1 = await measure_cpu(clock)
        await asyncio.sleep(0.3)
    finally:
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
    counters = Counters()
    clock = Window()
    sockets = await connect_all(job["url"], job["tokens"], "bench", 50)
    clock.set(await ctl.ready({"sockets": len(sockets)}))
    rng = random.Random(os.getpid())
    prefix = ('{"type":"history","conv":"' + job["conv"] + f'","limit":{limit},"before":').encode()

    def driver_for(ws: RawWebSocket) -> Callable[[], None]:
        sent: dict[str, int] = {}
        counter = [0]

        def ask() -> None:
            counter[0] += 1
            request_id = str(counter[0])
            sent[request_id] = monotonic_ns()
            before = rng.randint(limit + 1, max_seq + 1)
            ws.send_text(b'%s%d,"id":"%s"}' % (prefix, before, request_id.encode()))

        def on_text(payload: bytes) -> None:
            frame = loads(payload)
            started = sent.pop(str(frame.get("id")), None)
            if started is None:
                return
            now = monotonic_ns()
            if frame.get("type") != "ok" or len(frame.get("messages", ())) != limit:
                counters.error(str(frame)[:300])
            elif clock.t_measure <= now <= clock.t_end:
                counters.received += 1
                counters.hist.record(now - started)
            if now < clock.t_end:
                ask()

        ws.on_text = on_text

        def start() -> None:
            for _ in range(window):
                ask()

        return start

    starters = [driver_for(ws) for ws in sockets]
    await sleep_until(clock.t_start)
    for start in starters:
        start()
    cpu0, cpu1 = await measure_cpu(clock)
    await asyncio.sleep(0.3)
    await ctl.result(result_of(counters, clock, cpu0, cpu1))
    await close_all(sockets)


# -- idle connections -------------------------------------------------------------------------


async def run_idle(job: dict[str, Any], ctl: Control) -> None:
    failures: list[str] = []

    async def one(token: str) -> RawWebSocket | None:
        try:
            return await connect(job["url"], token, "bench-idle")
        except Exception as exc:  # counted and reported: the figure says how many held
            failures.append(f"{type(exc).__name__}: {exc}")
            return None

    opened = await asyncio.wait_for(
        gather_bounded([one(t) for t in job["tokens"]], int(job.get("concurrency", 64))),
        SETUP_TIMEOUT * 5,
    )
    sockets = [ws for ws in opened if ws is not None]
    for ws in sockets:
        ws.on_text = _ignore  # pings are answered inside the protocol
    ctl.announce(
        {
            "connected": len(sockets),
            "failed": len(failures),
            "first_error": failures[0] if failures else None,
        }
    )
    await ctl.wait_stop()
    await ctl.result({"still_open": sum(1 for ws in sockets if not ws.closed)})
    await close_all(sockets)


def _ignore(payload: bytes) -> None:
    pass


# -- plumbing ---------------------------------------------------------------------------------


async def measure_cpu(clock: Window) -> tuple[float, float]:
    """Sleep through the measured window; this process's CPU time at its start and end."""
    await sleep_until(clock.t_measure)
    cpu0 = time.process_time()
    await sleep_until(clock.t_end)
    return cpu0, time.process_time()


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


async def close_all(sockets: list[RawWebSocket]) -> None:
    await gather_bounded([ws.close() for ws in sockets], 1000)


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
        obj: dict[str, Any] = loads(line)
        return obj

    def announce(self, info: dict[str, Any]) -> None:
        """Say ready without waiting for ``go`` (the idle role waits for ``stop``)."""
        self.emit({"event": "ready", **info})

    async def ready(self, info: dict[str, Any]) -> dict[str, Any]:
        """Say ready; return the ``go`` command. The garbage collector is frozen from here:
        what set-up allocated is never scanned again, so no collection pauses the run."""
        gc.collect()
        gc.freeze()
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
    # Ctrl-C in a terminal reaches the whole process group: the orchestrator decides, and
    # stops every driver by its pid.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise_nofile()
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        sys.exit(asyncio.run(amain()))
    sys.exit(uvloop.run(amain()))


if __name__ == "__main__":
    main()
