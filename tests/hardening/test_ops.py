"""Operations under load and scrutiny (issue 10): ``chatd backup`` of a live server, tokens
kept out of the logs, and ``chatd doctor``."""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.e2e.client import Harness, User, Ws, history_all
from tests.e2e.lossck import Sent, check
from tests.e2e.server import PYTHON, REPO, ChatdServer, ServerFactory, clean_env, run_cli

# ---------------------------------------------------------------------------------------------
# chatd backup of a live server


@dataclass
class Traffic:
    """Every send attempt of the test and when its acknowledgement arrived."""

    sent: list[tuple[Sent, float | None]] = field(default_factory=list)  # (attempt, acked at)
    media: list[tuple[str, str, float]] = field(default_factory=list)  # (id, sha256, acked at)
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    def as_of(self, moment: float) -> list[Sent]:
        """The attempts as a client knew them at ``moment``: an ack that came later counts as
        no ack (the backup may or may not hold those messages)."""
        out: list[Sent] = []
        for s, acked_at in self.sent:
            if acked_at is not None and acked_at < moment:
                out.append(s)
            else:
                out.append(Sent(s.client_id, False, s.sender, body=s.body))
        return out


async def keep_sending(ws: Ws, user: User, convs: list[str], traffic: Traffic) -> None:
    n = 0
    while not traffic.stop.is_set():
        conv = convs[n % len(convs)]
        n += 1
        cid, body = uuid.uuid4().hex, f"{user.name} #{n}"
        reply = await ws.request("send", conv=conv, client_id=cid, body=body)
        if reply["type"] == "ok":
            s = Sent(cid, True, user.name, reply["conv"], reply["seq"], body)
            traffic.sent.append((s, time.monotonic()))
        else:
            assert reply.get("code") == "rate_limited", reply
            traffic.sent.append((Sent(cid, False, user.name, body=body), None))
            await asyncio.sleep(float(reply.get("retry_after", 0.05)))
        await asyncio.sleep(0.005)


async def keep_uploading(h: Harness, ws: Ws, user: User, conv: str, traffic: Traffic) -> None:
    n = 0
    while not traffic.stop.is_set():
        n += 1
        data = os.urandom(1000 + 3000 * (n % 5))
        status, body = await h.http(
            "POST",
            "/api/v1/media",
            token=user.token,
            data=data,
            headers={"Content-Type": "application/octet-stream"},
            params={"filename": f"file{n}.bin"},
        )
        assert status == 201, (status, body)
        traffic.media.append((body["media_id"], hashlib.sha256(data).hexdigest(), time.monotonic()))
        cid = uuid.uuid4().hex
        reply = await ws.request(
            "send", conv=conv, client_id=cid, body="", media=[body["media_id"]]
        )
        if reply["type"] == "ok":
            s = Sent(cid, True, user.name, reply["conv"], reply["seq"], "")
            traffic.sent.append((s, time.monotonic()))
        else:
            traffic.sent.append((Sent(cid, False, user.name, body=""), None))
        await asyncio.sleep(0.02)


async def download(h: Harness, token: str, media_id: str) -> tuple[int, bytes]:
    async with asyncio.timeout(10):
        async with h.session.get(
            f"{h.base}/api/v1/media/{media_id}", headers={"Authorization": f"Bearer {token}"}
        ) as resp:
            return resp.status, await resp.read()


@pytest.mark.timeout(90)
async def test_backup_of_a_live_server_holds_every_acknowledged_message_and_file(
    server_factory: ServerFactory, harness: Callable[[ChatdServer], Harness], tmp_path: Path
) -> None:
    server = server_factory()
    h = harness(server)
    alice, bob, carol = await h.users("alice", "bob", "carol")
    a, b = await h.connect(alice), await h.connect(bob)
    group = (await a.ok("create_group", title="backed up", members=[bob.name, carol.name]))["conv"]
    direct = (await a.send("first", to=bob.name, client_id="first"))["conv"]
    traffic = Traffic()
    traffic.sent.append((Sent("first", True, alice.name, direct, 1, "first"), time.monotonic()))
    workers = [
        asyncio.create_task(keep_sending(a, alice, [group, direct], traffic)),
        asyncio.create_task(keep_sending(b, bob, [direct, group], traffic)),
        asyncio.create_task(keep_uploading(h, a, alice, group, traffic)),
    ]
    target = tmp_path / "backup"
    try:
        await asyncio.sleep(1.0)  # traffic under way
        started = time.monotonic()
        proc = await asyncio.create_subprocess_exec(
            PYTHON,
            "-m",
            "chatd",
            "backup",
            str(target),
            "--data-dir",
            str(server.data_dir),
            cwd=str(REPO),
            env=clean_env(),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            out, err = await asyncio.wait_for(proc.communicate(), 30)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        assert proc.returncode == 0, (out, err)
        await asyncio.sleep(0.3)  # the live server keeps going after the backup
    finally:
        traffic.stop.set()
        await asyncio.gather(*workers)
    acked_before = [s for s, at in traffic.sent if at is not None and at < started]
    media_before = [(m, digest) for m, digest, at in traffic.media if at < started]
    assert len(acked_before) > 20 and media_before, (len(acked_before), len(media_before))
    assert any(at > started for _s, at in traffic.sent if at is not None), "no send during backup"
    assert server.healthy(), "the live server suffered from the backup"

    restored = ChatdServer(target, server_factory.base_dir)
    server_factory.servers.append(restored)  # stopped by pid with the others
    restored.start()
    r = harness(restored)
    reader = await r.connect(alice, "restored")
    histories = {conv: await history_all(reader, conv) for conv in (group, direct)}
    check(traffic.as_of(started), histories).assert_ok(allow_unexpected=False)
    for media_id, digest in media_before:
        status, data = await download(r, alice.token, media_id)
        assert status == 200, (media_id, status)
        assert hashlib.sha256(data).hexdigest() == digest, f"media {media_id} differs"


# ---------------------------------------------------------------------------------------------
# Tokens never reach the logs


@pytest.mark.parametrize("log_format", ["text", "json"])
async def test_tokens_and_passwords_never_appear_in_debug_logs(
    server_factory: ServerFactory, harness: Callable[[ChatdServer], Harness], log_format: str
) -> None:
    server = server_factory(log_level="debug", log_format=log_format)
    h = harness(server)
    alice, bob = await h.users("alice", "bob")
    second = await h.token(alice)
    secrets_used = [alice.token, bob.token, second, alice.password]

    a = await h.connect(alice)
    bearer = await h.raw_ws(headers={"Authorization": f"Bearer {second}"})
    assert (await bearer.request("hello", device="bearer"))["type"] == "ok"
    conv = (await a.send("hello", to=bob.name))["conv"]
    await a.ok("history", conv=conv)
    for path in ("/api/v1/me", f"/api/v1/conversations/{conv}/messages", "/api/v1/nope"):
        await h.http("GET", path, token=alice.token)
    await h.http("GET", "/api/v1/me", headers={"Authorization": f"bearer  {bob.token} x"})
    wrong = "a wrong password 12345"
    assert (await h.login(alice.name, wrong))[0] == 401
    secrets_used.append(wrong)
    status, _ = await h.http("DELETE", "/api/v1/sessions/current", token=alice.token)
    assert status == 204
    assert await a.wait_closed() == 4401
    assert (await h.http("GET", "/api/v1/me", token=alice.token))[0] == 401
    refused = await h.raw_ws()
    assert (await refused.request("hello", token=alice.token))["code"] == "unauthorized"
    early = await h.raw_ws(headers={"Authorization": f"Bearer {bob.token}"})
    await early.send_raw('{"type": "ping", "id": "before-hello"}')
    await early.wait_closed()

    server.stop()
    log = server.stderr_text(tail=10**7)
    assert "listening" in log, f"the server's log was not captured: {log[:500]}"
    for secret in secrets_used:
        assert secret not in log, f"a token or password appears in the log: ...{secret[-6:]}"
        assert secret[:16] not in log, "a prefix of a token or password appears in the log"


# ---------------------------------------------------------------------------------------------
# chatd doctor


def test_doctor_with_a_good_configuration_exits_0(tmp_path: Path) -> None:
    result = run_cli("doctor", "--data-dir", str(tmp_path))
    assert result.returncode == 0, (result.stdout, result.stderr)
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    assert lines and all(line.startswith("ok") for line in lines), result.stdout
    for name in ("data dir", "store", "bus", "media"):
        assert any(name in line for line in lines), (name, result.stdout)


@pytest.mark.parametrize(
    "flag, value, name",
    [
        ("--bus", "redis://127.0.0.1:1/0", "bus"),
        ("--store", "postgresql://postgres@127.0.0.1:1/nothing", "store"),
    ],
)
def test_doctor_names_an_unreachable_backend_and_exits_1(
    tmp_path: Path, flag: str, value: str, name: str
) -> None:
    result = run_cli("doctor", "--data-dir", str(tmp_path), flag, value, timeout=40)
    assert result.returncode == 1, (result.stdout, result.stderr)
    failed = [line for line in result.stdout.splitlines() if line.startswith("FAIL")]
    assert len(failed) == 1 and failed[0].startswith(f"FAIL {name}"), result.stdout
    assert "127.0.0.1:1" in failed[0], f"the failing line does not say where: {failed[0]}"
    assert "Traceback" not in result.stdout + result.stderr
