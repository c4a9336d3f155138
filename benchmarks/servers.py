"""Server and driver processes: start them, wait for them, read /proc, stop them by pid.

Every process the harness starts is registered in one :class:`Processes`, and
:meth:`Processes.stop_all` (called from ``run.py``'s ``finally``, so also on an error or
Ctrl-C) terminates each by its pid, then kills what has not exited within a few seconds.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson

ROOT = Path(__file__).resolve().parent.parent
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024

# chatd's limits that a load test would trip on purpose otherwise; each is a documented setting.
CHATD_BENCH_ENV = {
    "CHATD_MESSAGES_PER_SECOND": "1000000",
    "CHATD_MESSAGE_BURST": "1000000",
    "CHATD_MAX_CONNECTIONS_PER_USER": "1000",
    "CHATD_REGISTRATIONS_PER_HOUR": "1000000",  # --provision http registers every user
    "CHATD_LOG_LEVEL": "warning",
}


class BenchError(Exception):
    """A workload could not run; the message says why (and where the server's log is)."""


class Interrupted(Exception):
    """Ctrl-C or SIGTERM: stop everything and leave."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def python() -> str:
    return sys.executable


@dataclass
class Server:
    """A running chatd or relay process."""

    name: str
    proc: subprocess.Popen[bytes]
    port: int
    log_path: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    def rss_kb(self) -> int:
        """Resident set size now (VmRSS), in KiB."""
        with open(f"/proc/{self.pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        raise BenchError(f"{self.name}: no VmRSS for pid {self.pid}")

    def cpu_seconds(self) -> float:
        """User + system CPU time so far, in seconds."""
        with open(f"/proc/{self.pid}/stat") as fh:
            # The command name may hold spaces; the fields after its ')' are fixed.
            fields = fh.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    async def wait_healthy(self, procs: Processes, within: float = 30.0) -> None:
        deadline = time.monotonic() + within
        async with aiohttp.ClientSession() as session:
            while time.monotonic() < deadline:
                procs.check()
                if self.proc.poll() is not None:
                    raise BenchError(
                        f"{self.name} exited with status {self.proc.returncode} before it was "
                        f"ready; log {self.log_path}:\n{self.log_tail()}"
                    )
                try:
                    async with session.get(
                        self.http_url + "/healthz", timeout=aiohttp.ClientTimeout(total=1)
                    ) as resp:
                        if resp.status == 200:
                            return
                except (aiohttp.ClientError, TimeoutError):
                    pass
                await asyncio.sleep(0.1)
        raise BenchError(f"{self.name} not healthy after {within:.0f} s; log {self.log_path}")


@dataclass
class Driver:
    """A driver process and its JSON-lines conversation (see :mod:`benchmarks.driver`)."""

    name: str
    proc: asyncio.subprocess.Process

    async def send(self, obj: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(orjson.dumps(obj) + b"\n")
        await self.proc.stdin.drain()

    async def expect(self, event: str, within: float) -> dict[str, Any]:
        assert self.proc.stdout is not None
        try:
            line = await asyncio.wait_for(self.proc.stdout.readline(), within)
        except TimeoutError:
            raise BenchError(f"driver {self.name}: no {event!r} within {within:.0f} s")
        if not line:
            raise BenchError(f"driver {self.name} exited before {event!r} (see stderr above)")
        reply: dict[str, Any] = orjson.loads(line)
        if reply.get("event") != event:
            raise BenchError(f"driver {self.name}: {reply.get('message', reply)}")
        return reply

    async def kill(self) -> None:
        """Kill it (if still running), reap it and close its pipes."""
        if self.proc.returncode is None:
            try:
                self.proc.kill()
            except ProcessLookupError:
                pass
        await self.proc.wait()
        if self.proc.stdin is not None:
            self.proc.stdin.close()

    async def finish(self) -> None:
        """Tell it to stop and wait for it to exit."""
        if self.proc.returncode is None and self.proc.stdin is not None:
            try:
                await self.send({"cmd": "stop"})
                self.proc.stdin.close()
            except (ConnectionError, RuntimeError):
                pass
        try:
            await asyncio.wait_for(self.proc.wait(), 15)
        except TimeoutError:
            await self.kill()


@dataclass
class Processes:
    """Every process the harness started, so that all are stopped by pid at the end."""

    servers: list[Server] = field(default_factory=list)
    drivers: list[Driver] = field(default_factory=list)
    # Set by the signal handler. Cancelling the main task alone is not enough: a timeout
    # inside a library can turn that cancellation into a TimeoutError that a retry loop eats.
    interrupted: bool = False

    def check(self) -> None:
        if self.interrupted:
            raise Interrupted("interrupted")

    def start_server(
        self, name: str, argv: list[str], log_path: Path, env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        self.check()
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(
                argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=ROOT,
                env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
            )
        return proc

    async def relay(self, workdir: Path, heartbeat: float = 25.0) -> Server:
        port = free_port()
        log = workdir / "relay.log"
        argv = [
            python(),
            "-m",
            "benchmarks.relay",
            "--port",
            str(port),
            "--heartbeat",
            str(heartbeat),
        ]
        server = Server("relay", self.start_server("relay", argv, log), port, log)
        self.servers.append(server)
        await server.wait_healthy(self)
        return server

    async def chatd(
        self,
        workdir: Path,
        *,
        name: str = "chatd",
        store: str | None = None,
        bus: str | None = None,
        server_id: str | None = None,
        heartbeat: float | None = None,
        extra_env: dict[str, str] | None = None,
    ) -> Server:
        port = free_port()
        data_dir = workdir / "data"
        data_dir.mkdir(parents=True, exist_ok=True)
        argv = [
            python(),
            "-m",
            "chatd",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--data-dir",
            str(data_dir),
        ]
        if store:
            argv += ["--store", store]
        if bus:
            argv += ["--bus", bus]
        if server_id:
            argv += ["--server-id", server_id]
        env = dict(CHATD_BENCH_ENV)
        if heartbeat is not None:
            env["CHATD_HEARTBEAT"] = str(heartbeat)
        env.update(extra_env or {})
        log = workdir / f"{name}.log"
        server = Server(name, self.start_server(name, argv, log, env), port, log)
        self.servers.append(server)
        await server.wait_healthy(self)
        return server

    async def driver(self, name: str, job: dict[str, Any]) -> Driver:
        self.check()
        proc = await asyncio.create_subprocess_exec(
            python(),
            "-m",
            "benchmarks.driver",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            limit=1 << 26,
        )
        driver = Driver(name, proc)
        self.drivers.append(driver)
        await driver.send(job)
        return driver

    def stop_server(self, server: Server, timeout: float = 10.0) -> None:
        _stop(server.proc.pid, server.proc.poll, server.proc.wait, timeout)
        if server in self.servers:
            self.servers.remove(server)

    async def stop_drivers(self) -> None:
        drivers, self.drivers = self.drivers, []
        for driver in drivers:
            if driver.proc.returncode is None:
                try:
                    driver.proc.terminate()
                except ProcessLookupError:
                    pass
        for driver in drivers:
            try:
                await asyncio.wait_for(driver.proc.wait(), 5)
            except TimeoutError:
                pass
            await driver.kill()

    def stop_all_sync(self) -> None:
        """Last resort (no event loop): terminate, then kill, every process by pid."""
        for server in list(self.servers):
            self.stop_server(server, timeout=5.0)
        for driver in self.drivers:
            if driver.proc.returncode is None:
                try:
                    os.kill(driver.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        self.drivers = []

    async def stop_all(self) -> None:
        await self.stop_drivers()
        for server in list(self.servers):
            await asyncio.to_thread(self.stop_server, server)


def _stop(pid: int, poll: Any, wait: Any, timeout: float) -> None:
    if poll() is not None:
        return
    try:
        os.kill(pid, signal.SIGTERM)
        wait(timeout=timeout)
    except ProcessLookupError:
        return
    except subprocess.TimeoutExpired:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            return
        wait(timeout=timeout)
