"""Start, stop, kill and restart real ``chatd serve`` subprocesses for end-to-end tests.

Nothing here imports chatd: the server is a black box started the way an operator would,
``python -m chatd serve --host ... --port ... --data-dir ... [flags]``, and is ready when
``GET /healthz`` answers 200. Every process started is stopped by its pid (SIGTERM, bounded
wait, then SIGKILL), and its stderr is kept in a file so a failing test can show it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PYTHON = str(REPO / ".venv" / "bin" / "python") if (REPO / ".venv").exists() else sys.executable
READY_TIMEOUT = 15.0
STOP_TIMEOUT = 10.0


def _free_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def flag_args(flags: Mapping[str, object]) -> list[str]:
    """``{"presence_grace": 0.5}`` -> ``["--presence-grace", "0.5"]``."""
    args: list[str] = []
    for name, value in flags.items():
        if value is None:
            continue
        args += [f"--{name.replace('_', '-')}", str(value)]
    return args


def clean_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The test process's environment minus any ``CHATD_*`` setting that could leak in."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHATD_")}
    env["PYTHONUNBUFFERED"] = "1"
    env.pop("PYTHONASYNCIODEBUG", None)  # debug mode slows the server; tests time it
    # Every test user registers from 127.0.0.1: lift the per-address limit (a flag, as the
    # limit's own test passes, still wins over the environment).
    env["CHATD_REGISTRATIONS_PER_HOUR"] = "1000000"
    if extra:
        env.update(extra)
    return env


class ChatdServer:
    """One ``chatd serve`` process (and its later incarnations on the same data dir)."""

    def __init__(
        self,
        data_dir: Path,
        log_dir: Path,
        flags: Mapping[str, object] | None = None,
        env: Mapping[str, str] | None = None,
        port: int | None = None,
    ) -> None:
        self.data_dir = data_dir
        self.log_dir = log_dir
        self.flags = dict(flags or {})
        self.env = dict(env or {})
        self.port = port or _free_port()
        self.host = "127.0.0.1"
        self.proc: subprocess.Popen[bytes] | None = None
        self.incarnation = 0
        self.stderr_paths: list[Path] = []

    # -- addresses -------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://{self.host}:{self.port}/ws"

    @property
    def origin(self) -> str:
        """The server's own origin, allowed by default for browser upgrades."""
        return self.base_url

    @property
    def pid(self) -> int:
        assert self.proc is not None, "server not started"
        return self.proc.pid

    # -- lifecycle -------------------------------------------------------------------------

    def command(self) -> list[str]:
        return [
            PYTHON,
            "-m",
            "chatd",
            "serve",
            "--host",
            self.host,
            "--port",
            str(self.port),
            "--data-dir",
            str(self.data_dir),
            *flag_args(self.flags),
        ]

    def start(self) -> ChatdServer:
        """Start a process and wait (bounded) until ``/healthz`` answers 200."""
        assert self.proc is None or self.proc.poll() is not None, "already running"
        self.incarnation += 1
        stderr_path = self.log_dir / f"chatd-{self.port}-{self.incarnation}.stderr"
        self.stderr_paths.append(stderr_path)
        with open(stderr_path, "wb") as stderr:
            self.proc = subprocess.Popen(
                self.command(),
                cwd=str(REPO),
                env=clean_env(self.env),
                stdin=subprocess.DEVNULL,
                stdout=stderr,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"chatd exited with {self.proc.returncode} before it was ready:\n"
                    + self.stderr_text()
                )
            if self.healthy(timeout=0.5):
                return self
            time.sleep(0.05)
        self.kill()
        raise RuntimeError(
            f"chatd not ready within {READY_TIMEOUT}s on port {self.port}:\n" + self.stderr_text()
        )

    def healthy(self, timeout: float = 1.0) -> bool:
        try:
            with urllib.request.urlopen(self.base_url + "/healthz", timeout=timeout) as resp:
                return bool(resp.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = STOP_TIMEOUT) -> int | None:
        """SIGTERM, wait up to ``timeout``, then SIGKILL. Returns the exit status."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=timeout)
        return self.proc.returncode

    def kill(self) -> None:
        """SIGKILL: the crash case. Nothing gets flushed that was not already durable."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=STOP_TIMEOUT)

    def restart(self, graceful: bool = True) -> ChatdServer:
        """Stop (SIGTERM, or SIGKILL if not ``graceful``) and start on the same data dir."""
        if graceful:
            self.stop()
        else:
            self.kill()
        return self.start()

    def stderr_text(self, tail: int = 20000) -> str:
        parts = []
        for path in self.stderr_paths:
            try:
                text = path.read_text(errors="replace")
            except OSError:
                continue
            parts.append(f"--- {path.name} ---\n{text[-tail:]}")
        return "\n".join(parts)


class ServerFactory:
    """Starts servers for one scope (test or module) and stops all of them at its end."""

    def __init__(self, base_dir: Path) -> None:
        self.base_dir = base_dir
        self.servers: list[ChatdServer] = []

    def __call__(self, env: Mapping[str, str] | None = None, **flags: object) -> ChatdServer:
        """Start a server with ``flags`` (``presence_grace=0.5`` -> ``--presence-grace 0.5``)."""
        return self.create(env=env, **flags).start()

    def launch(
        self, flags: Mapping[str, object], env: Mapping[str, str] | None = None
    ) -> ChatdServer:
        """Like calling the factory, with the flags as one mapping."""
        return self.create(env=env, **flags).start()

    def create(self, env: Mapping[str, str] | None = None, **flags: object) -> ChatdServer:
        """A server object, not started yet (to run CLI commands on its data dir first)."""
        index = len(self.servers)
        data_dir = self.base_dir / f"server{index}"
        data_dir.mkdir(parents=True, exist_ok=True)
        server = ChatdServer(data_dir, self.base_dir, flags, env)
        self.servers.append(server)
        return server

    def close(self) -> None:
        for server in self.servers:
            server.stop()

    def stderr_report(self) -> str:
        return "\n".join(s.stderr_text(tail=8000) for s in self.servers)


def run_cli(
    *args: str, stdin: str | None = None, env: Mapping[str, str] | None = None, timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m chatd ARGS`` to completion (bounded) and capture its output."""
    return subprocess.run(
        [PYTHON, "-m", "chatd", *args],
        cwd=str(REPO),
        env=clean_env(env),
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
