"""The command line (issue 2): start-up errors and `chatd user add`."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from .client import Harness
from .server import ChatdServer, ServerFactory, _free_port, run_cli


def listening(port: int) -> bool:
    import socket

    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def serve_expecting_one_line_and_exit_2(tmp_path: Path, flag: str, url: str) -> str:
    """Run ``chatd serve`` with one backend flag; check exit 2, one line on stderr and no
    listening port; return that line."""
    port = _free_port()
    result = run_cli(
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--data-dir",
        str(tmp_path),
        flag,
        url,
        timeout=60,
    )
    assert result.returncode == 2, (result.returncode, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line on stderr, got:\n{result.stderr}"
    assert "Traceback" not in result.stderr
    assert not listening(port)
    return lines[0]


@pytest.mark.parametrize(
    "flag, url",
    [
        ("--store", "bogus://x"),
        ("--media", "bogus://x"),
        ("--bus", "bogus://x"),
        ("--store", "nonsense"),
    ],
)
def test_unknown_backend_scheme_exits_2_with_one_line(tmp_path: Path, flag: str, url: str) -> None:
    serve_expecting_one_line_and_exit_2(tmp_path, flag, url)


@pytest.mark.parametrize(
    "flag, url",
    [
        # Port 1 on loopback: nothing listens there, so each connection is refused at once.
        ("--store", "postgresql://postgres@127.0.0.1:1/test"),
        ("--bus", "redis://127.0.0.1:1/0"),
        ("--media", "s3://bucket?endpoint_url=http://127.0.0.1:1&region=us-east-1"),
        ("--store", "sqlite:////proc/no-such-dir/chatd.db"),
    ],
)
def test_unreachable_backend_exits_2_with_one_line_before_listening(
    tmp_path: Path, flag: str, url: str
) -> None:
    line = serve_expecting_one_line_and_exit_2(tmp_path, flag, url)
    assert "127.0.0.1:1" in line or "/proc/no-such-dir" in line, line


def test_unknown_scheme_from_environment_exits_2(tmp_path: Path) -> None:
    port = _free_port()
    result = run_cli(
        "serve",
        env={"CHATD_STORE": "bogus://x", "CHATD_PORT": str(port), "CHATD_DATA_DIR": str(tmp_path)},
    )
    assert result.returncode == 2, result.stderr
    assert len([x for x in result.stderr.splitlines() if x.strip()]) == 1, result.stderr


async def test_user_add_then_login(
    server_factory: ServerFactory, harness: Callable[[ChatdServer], Harness]
) -> None:
    server = server_factory.create(registration="closed")
    result = run_cli(
        "user", "add", "Carol", "--data-dir", str(server.data_dir), stdin="s3cret-password\n"
    )
    assert result.returncode == 0, result.stderr
    # the environment variable works as well as the flag
    result = run_cli(
        "user",
        "add",
        "dave",
        stdin="another-password\n",
        env={"CHATD_DATA_DIR": str(server.data_dir)},
    )
    assert result.returncode == 0, result.stderr
    server.start()
    h = harness(server)
    status, body = await h.login("carol", "s3cret-password")
    assert status == 201, body
    assert body["user"] == "carol"
    status, body = await h.login("dave", "another-password")
    assert status == 201, body
    status, _ = await h.login("carol", "wrong-password")
    assert status == 401
    conn = await h.connect("carol", token=(await h.login("carol", "s3cret-password"))[1]["token"])
    await conn.ok("ping")
    # registration is closed, yet operator-made users work
    assert (await h.register("eve_new"))[0] == 403


async def test_user_disable_enable_and_passwd_against_a_running_server(
    server_factory: ServerFactory, harness: Callable[[ChatdServer], Harness]
) -> None:
    server = server_factory()
    h = harness(server)
    user = await h.user("ops")
    data = ["--data-dir", str(server.data_dir)]

    result = run_cli("user", "disable", user.name, *data)
    assert result.returncode == 0, result.stderr
    assert (await h.login(user.name))[0] == 401
    status, body = await h.http("GET", "/api/v1/me", token=user.token)
    assert status == 401, body

    result = run_cli("user", "enable", user.name, *data)
    assert result.returncode == 0, result.stderr
    status, body = await h.login(user.name)
    assert status == 201, body
    token = body["token"]

    result = run_cli("user", "passwd", user.name.upper(), *data, stdin="a-brand-new-pass\n")
    assert result.returncode == 0, result.stderr
    assert (await h.login(user.name))[0] == 401  # the old password
    assert (await h.login(user.name, "a-brand-new-pass"))[0] == 201
    status, _ = await h.http("GET", "/api/v1/me", token=token)
    assert status == 401, "changing the password ends the user's sessions"


@pytest.mark.parametrize(
    "args, stdin",
    [
        (["user", "add", "dupe_user"], "long-enough-pw\n"),  # the second time
        (["user", "add", "short_pw"], "short\n"),
        (["user", "add", "bad name!"], "long-enough-pw\n"),
        (["user", "disable", "nobody_here"], None),
        (["user", "passwd", "nobody_here"], "long-enough-pw\n"),
    ],
)
def test_user_command_errors_are_one_clear_line(
    tmp_path: Path, args: list[str], stdin: str | None
) -> None:
    first = run_cli(
        "user", "add", "dupe_user", "--data-dir", str(tmp_path), stdin="long-enough-pw\n"
    )
    assert first.returncode == 0, first.stderr
    result = run_cli(*args, "--data-dir", str(tmp_path), stdin=stdin)
    assert result.returncode != 0, (args, result.stdout)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr


async def test_settings_from_environment_and_flags_win(
    server_factory: ServerFactory, harness: Callable[[ChatdServer], Harness]
) -> None:
    from_env = harness(server_factory(env={"CHATD_REGISTRATION": "closed"}))
    assert (await from_env.register("env_closed"))[0] == 403
    overridden = harness(server_factory(env={"CHATD_REGISTRATION": "closed"}, registration="open"))
    assert (await overridden.register("flag_open"))[0] == 201
