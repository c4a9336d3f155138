"""What only the PostgreSQL store has to prove: several processes on one database, migrations
under concurrent starts, URL options, and surviving a server restart.

Several processes are modelled by several independent :class:`PostgresStore` instances, each
with its own pool (their own connections, as separate processes would have).

The restart test runs a private, throwaway PostgreSQL (``initdb`` into a temporary folder, on
a free port) and stops and starts that, so that other test runs sharing the machine's server
are not disturbed.
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import asyncpg
import pytest

from chatd.errors import ConfigError, Unavailable
from chatd.models import NewMessage
from chatd.store.postgres import MIGRATIONS, PostgresStore, parse_url, redact
from tests.conftest import free_port, require_backend

T = TypeVar("T")

ADMIN_DSN = os.environ.get("CHATD_TEST_POSTGRES_ADMIN", "postgresql://postgres@127.0.0.1:5432/test")


async def bounded(aw: Awaitable[T], seconds: float = 30) -> T:
    return await asyncio.wait_for(aw, seconds)


def msg(conv: str, sender: str, client_id: str | None, n: int = 0) -> NewMessage:
    return NewMessage(
        conv=conv,
        sender=sender,
        msg_id=uuid.uuid4().hex,
        ts=1_764_316_800_000 + n,
        client_id=client_id,
        body=f"hello {n}",
    )


def system(conv: str, actor: str) -> NewMessage:
    return NewMessage(
        conv=conv,
        sender=actor,
        msg_id=uuid.uuid4().hex,
        ts=1_764_316_800_000,
        kind="system",
        event={"action": "create"},
    )


async def _admin(statement: str) -> None:
    conn = await bounded(asyncpg.connect(ADMIN_DSN, timeout=5), 10)
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


@pytest.fixture
async def database_url() -> AsyncIterator[str]:
    """A fresh, empty database on the machine's PostgreSQL, dropped afterwards."""
    name = f"chatd_pgspec_{uuid.uuid4().hex[:12]}"
    try:
        await _admin(f'CREATE DATABASE "{name}"')
    except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
        require_backend("postgres", f"cannot create a database through {ADMIN_DSN}: {exc!r}")
    base, _, _ = ADMIN_DSN.rpartition("/")
    try:
        yield f"{base}/{name}"
    finally:
        await _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def _group(store: PostgresStore, conv: str, users: list[str]) -> None:
    for user in users:
        await store.create_user(user, "hash", 1)
    members = [(users[0], "owner"), *((user, "member") for user in users[1:])]
    await store.create_group(conv, "ops", members, system(conv, users[0]))


# -- URL options ----------------------------------------------------------------------------


def test_url_options_are_taken_out_of_the_dsn() -> None:
    dsn, ints, floats = parse_url(
        "postgresql://u:secret@db:5433/chat?pool_min=2&pool_max=20&command_timeout=1.5"
        "&application_name=chatd"
    )
    assert dsn == "postgresql://u:secret@db:5433/chat?application_name=chatd"
    assert ints == {"pool_min": 2, "pool_max": 20}
    assert floats["command_timeout"] == 1.5
    assert floats["acquire_timeout"] == 5.0


@pytest.mark.parametrize(
    "url",
    [
        *(
            f"postgresql://postgres@127.0.0.1/test?{query}"
            for query in (
                "pool_max=0",
                "pool_min=5&pool_max=2",
                "pool_max=many",
                "command_timeout=0",
                "pool_min=-1",
            )
        ),
        "postgresql://postgres@127.0.0.1:port/test",
    ],
)
def test_bad_urls_are_one_line_config_errors(url: str) -> None:
    with pytest.raises(ConfigError) as info:
        PostgresStore(url)
    assert "\n" not in str(info.value)


async def test_a_missing_database_at_start_is_a_one_line_config_error(postgres_url: str) -> None:
    # postgres_url (tests/conftest.py) makes sure the server itself answers.
    base, _, _ = postgres_url.rpartition("/")
    store = PostgresStore(f"{base}/chatd_no_such_database_{uuid.uuid4().hex[:8]}")
    with pytest.raises(ConfigError, match="does not exist") as info:
        await bounded(store.start(), 15)
    assert "\n" not in str(info.value)


def test_redact_hides_the_password() -> None:
    assert redact("postgresql://u:secret@db/x") == "postgresql://u:***@db/x"
    assert redact("postgresql://u@db/x") == "postgresql://u@db/x"


async def test_unreachable_server_at_start_is_a_one_line_config_error() -> None:
    port = free_port()  # nothing listens there
    store = PostgresStore(f"postgresql://postgres:pw@127.0.0.1:{port}/test?connect_timeout=2")
    started = time.monotonic()
    with pytest.raises(ConfigError) as info:
        await bounded(store.start(), 15)
    assert time.monotonic() - started < 10
    text = str(info.value)
    assert "\n" not in text and f"127.0.0.1:{port}" in text and "pw" not in text
    with pytest.raises(Unavailable):
        await store.ping()


# -- several processes on one database ------------------------------------------------------


async def test_concurrent_starts_migrate_once(database_url: str) -> None:
    stores = [PostgresStore(f"{database_url}?pool_min=1&pool_max=2") for _ in range(4)]
    try:
        await bounded(asyncio.gather(*(s.start() for s in stores)))
        latest = MIGRATIONS[-1][0]
        assert [await s.schema_version() for s in stores] == [latest] * 4
        conn = await bounded(asyncpg.connect(database_url, timeout=5))
        try:
            versions = await conn.fetch("SELECT version FROM chatd_migrations ORDER BY version")
        finally:
            await conn.close()
        assert [row["version"] for row in versions] == [v for v, _ in MIGRATIONS]
    finally:
        await asyncio.gather(*(s.close() for s in stores))


async def test_a_version_1_database_is_upgraded_and_keeps_its_users(database_url: str) -> None:
    conn = await bounded(asyncpg.connect(database_url, timeout=5))
    try:
        await conn.execute(
            "CREATE TABLE chatd_migrations (version integer PRIMARY KEY,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        await conn.execute(MIGRATIONS[0][1])
        await conn.execute("INSERT INTO chatd_migrations (version) VALUES (1)")
        await conn.execute(
            "INSERT INTO users (username, password_hash, created_at) VALUES ('al', 'h', 1)"
        )
    finally:
        await conn.close()
    store = PostgresStore(database_url)
    await bounded(store.start())
    try:
        assert await store.schema_version() == MIGRATIONS[-1][0]
        assert (await store.get_user("al")) is not None
        assert await store.users_revoked_since(0) == []
        await store.set_user_disabled("al", True, revoked_at=1_000)
        assert await store.users_revoked_since(1_000) == [("al", 1_000)]
    finally:
        await store.close()


async def test_several_stores_appending_to_one_conversation_get_seqs_1_to_300(
    database_url: str,
) -> None:
    stores = [PostgresStore(f"{database_url}?pool_min=1&pool_max=5") for _ in range(3)]
    users = ["alice", "bob", "carol"]
    try:
        await bounded(asyncio.gather(*(s.start() for s in stores)))
        await _group(stores[0], "g1", users)

        async def send(n: int) -> int:
            store = stores[n % len(stores)]
            result = await store.append_message(msg("g1", users[n % 3], f"c{n}", n))
            assert not result.duplicate
            return result.message.seq

        # seq 1 is the group's creation message; 300 appends follow it.
        seqs = await bounded(asyncio.gather(*(send(n) for n in range(300))))
        assert sorted(seqs) == list(range(2, 302))
        conv = await stores[1].get_conversation("g1")
        assert conv is not None and conv.last_seq == 301
        page, more = await stores[2].history("g1", before=None, after=0, limit=1000)
        assert [m.seq for m in page] == list(range(1, 302)) and not more
        assert {m.client_id for m in page[1:]} == {f"c{n}" for n in range(300)}
    finally:
        await asyncio.gather(*(s.close() for s in stores))


async def test_an_append_is_one_statement_and_a_release_sends_nothing(database_url: str) -> None:
    store = PostgresStore(f"{database_url}?pool_min=1&pool_max=1")
    await bounded(store.start())
    try:
        await _group(store, "g1", ["alice", "bob"])
        queries: list[str] = []
        assert store._pool is not None
        # White box: the pool's one connection, watched for every statement it sends.
        async with store._pool.acquire() as conn:
            conn.add_query_logger(lambda record: queries.append(record.query))
        await store.append_message(msg("g1", "alice", "c1"))
        await store.append_message(msg("g1", "alice", "c1"))  # a retry: the same one statement
        assert [q.split("(")[0] for q in queries] == ["SELECT * FROM chatd_append"] * 2
    finally:
        await bounded(store.close())


async def test_racing_retries_across_stores_store_one_message_and_no_gap(
    database_url: str,
) -> None:
    stores = [PostgresStore(f"{database_url}?pool_min=1&pool_max=4") for _ in range(3)]
    try:
        await bounded(asyncio.gather(*(s.start() for s in stores)))
        await _group(stores[0], "g1", ["alice", "bob"])
        first = msg("g1", "alice", "same-client-id")
        results = await bounded(
            asyncio.gather(*(stores[n % 3].append_message(first) for n in range(24)))
        )
        assert sum(not r.duplicate for r in results) == 1
        assert {r.message.seq for r in results} == {2}
        assert {r.message.msg_id for r in results} == {first.msg_id}
        assert all(r.members == ("alice", "bob") for r in results)
        # The losers of the race consumed no seq: the next message is 3.
        nxt = await stores[1].append_message(msg("g1", "bob", "other", 1))
        assert nxt.message.seq == 3
    finally:
        await asyncio.gather(*(s.close() for s in stores))


async def test_a_removed_member_cannot_append_even_racing_the_removal(database_url: str) -> None:
    from chatd.errors import NotFound
    from chatd.models import GroupChange

    stores = [PostgresStore(f"{database_url}?pool_max=4") for _ in range(2)]
    try:
        await bounded(asyncio.gather(*(s.start() for s in stores)))
        await _group(stores[0], "g1", ["alice", "bob"])

        async def bob_sends(n: int) -> int | None:
            try:
                return (await stores[1].append_message(msg("g1", "bob", f"b{n}", n))).message.seq
            except NotFound:
                return None

        sends = [asyncio.ensure_future(bob_sends(n)) for n in range(40)]
        removal = await stores[0].apply_group_change(
            "g1", 0, GroupChange(remove=("bob",)), system("g1", "alice")
        )
        accepted = [seq for seq in await bounded(asyncio.gather(*sends)) if seq is not None]
        # Everything bob got in was ordered before his removal; nothing after it.
        assert all(seq < removal.message.seq for seq in accepted)
        conv = await stores[0].get_conversation("g1")
        assert conv is not None and conv.last_seq == 2 + len(accepted)
    finally:
        await asyncio.gather(*(s.close() for s in stores))


# -- a server restart -----------------------------------------------------------------------


def _pg_binary(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return candidates[-1] if candidates else None


def _children(pid: int) -> list[int]:
    """Process ids whose parent is ``pid`` (Linux /proc)."""
    found = []
    for stat in glob.glob("/proc/[0-9]*/stat"):
        try:
            with open(stat) as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.split("/")[2]))
    return found


@dataclass
class PrivatePostgres:
    """A throwaway PostgreSQL server in a temporary folder, run as a child process."""

    postgres: str
    data: str
    port: int
    user: str | None  # run as this user when we are root (PostgreSQL refuses to run as root)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def start(self) -> None:
        assert self.proc is None
        self.proc = subprocess.Popen(
            [
                self.postgres,
                *("-D", self.data, "-p", str(self.port), "-k", self.data),
                *("-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"),
            ],
            user=self.user,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def stop(self) -> None:
        """Fast shutdown (SIGINT): connections are cut, like a server going away."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        for pid in [proc.pid, *_children(proc.pid)]:  # in case a test left it frozen
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)

    def freeze(self, frozen: bool) -> None:
        """Stop (or resume) every process of the server: it accepts TCP but never answers."""
        assert self.proc is not None
        # Backends leave the postmaster's process group (setsid), so signal each child.
        for pid in [self.proc.pid, *_children(self.proc.pid)]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGSTOP if frozen else signal.SIGCONT)

    async def wait_until_answering(self, seconds: float = 30) -> None:
        deadline = time.monotonic() + seconds
        while True:
            try:
                conn = await asyncpg.connect(self.url, timeout=2)
            except (OSError, asyncpg.PostgresError, TimeoutError):
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.1)
            else:
                await conn.close()
                return


@pytest.fixture
def private_postgres() -> Iterator[PrivatePostgres]:
    initdb, postgres = _pg_binary("initdb"), _pg_binary("postgres")
    if initdb is None or postgres is None:
        require_backend("postgres", "initdb/postgres binaries not found for a private server")
    user: str | None = None
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            require_backend("postgres", "running as root and there is no 'postgres' user")
        user = "postgres"
    data = tempfile.mkdtemp(prefix="chatd-pg-")
    try:
        if user is not None:
            shutil.chown(data, user)
        done = subprocess.run(
            [initdb, "-D", data, "-U", "postgres", "--auth=trust", "-N", "-E", "UTF8"],
            user=user,
            capture_output=True,
            timeout=120,
        )
        if done.returncode != 0:
            require_backend("postgres", f"initdb failed: {done.stderr.decode()[-300:]}")
        server = PrivatePostgres(postgres, data, free_port(), user)
        server.start()
        try:
            yield server
        finally:
            server.stop()
    finally:
        shutil.rmtree(data, ignore_errors=True)


async def _expect_unavailable(aw: Awaitable[Any], within: float) -> float:
    started = time.monotonic()
    with pytest.raises(Unavailable):
        await asyncio.wait_for(aw, within + 5)
    elapsed = time.monotonic() - started
    assert elapsed < within, f"Unavailable took {elapsed:.1f}s, more than {within}s"
    return elapsed


async def test_server_restart_gives_unavailable_then_recovers(
    private_postgres: PrivatePostgres,
) -> None:
    await private_postgres.wait_until_answering()
    url = f"{private_postgres.url}?pool_min=2&pool_max=4&command_timeout=2&connect_timeout=2"
    store = PostgresStore(url + "&acquire_timeout=2")
    await bounded(store.start())
    try:
        await _group(store, "g1", ["alice", "bob"])
        assert (await store.append_message(msg("g1", "alice", "before"))).message.seq == 2

        private_postgres.stop()
        # Pooled connections are dead and new ones are refused: bounded, not a hang.
        await _expect_unavailable(store.append_message(msg("g1", "alice", "down-1")), 8)
        await _expect_unavailable(store.append_message(msg("g1", "alice", "down-2")), 8)
        await _expect_unavailable(store.ping(), 8)

        private_postgres.start()
        await private_postgres.wait_until_answering()
        # No restart of chatd: the same pool reconnects by itself.
        await bounded(store.ping(), 10)
        again = await bounded(store.append_message(msg("g1", "bob", "after")), 10)
        assert again.message.seq == 3  # the failed appends consumed nothing
        retry = await bounded(store.append_message(msg("g1", "alice", "before")), 10)
        assert retry.duplicate and retry.message.seq == 2
    finally:
        await bounded(store.close())


async def test_a_server_that_stops_answering_gives_unavailable_within_the_timeouts(
    private_postgres: PrivatePostgres,
) -> None:
    await private_postgres.wait_until_answering()
    url = f"{private_postgres.url}?pool_min=1&pool_max=2&command_timeout=1&connect_timeout=1"
    store = PostgresStore(url + "&acquire_timeout=1")
    await bounded(store.start())
    try:
        await _group(store, "g1", ["alice", "bob"])
        private_postgres.freeze(True)
        try:
            # A pooled connection waits command_timeout; a new one waits connect_timeout.
            results = await asyncio.gather(
                _expect_unavailable(store.append_message(msg("g1", "alice", "hung-1")), 4),
                _expect_unavailable(store.append_message(msg("g1", "alice", "hung-2")), 4),
                _expect_unavailable(store.append_message(msg("g1", "alice", "hung-3")), 4),
            )
            assert all(elapsed >= 0.5 for elapsed in results)
        finally:
            private_postgres.freeze(False)
        again = await bounded(store.append_message(msg("g1", "bob", "after")), 10)
        assert not again.duplicate
        page, _ = await store.history("g1", before=None, after=0, limit=100)
        # A statement cut by the timeout may still have committed server-side; the seqs
        # stay gapless whatever happened.
        assert [m.seq for m in page] == list(range(1, len(page) + 1))
    finally:
        await bounded(store.close())
