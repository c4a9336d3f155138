"""What only the SQLite store promises: the file, reopening it, several writers on one file."""

from __future__ import annotations

import asyncio
import os
import sqlite3
from pathlib import Path

import pytest

from chatd.errors import ConfigError, NotFound
from chatd.models import GroupChange, MediaItem, PushSubscription, Session
from chatd.store import open_store
from chatd.store.sqlite import SQLiteStore, database_path

from .test_contract import T0, bounded, msg, system


def test_url_paths() -> None:
    assert database_path("sqlite:///data/chatd.db") == Path("data/chatd.db")
    assert database_path("sqlite:////var/lib/chatd/chatd.db") == Path("/var/lib/chatd/chatd.db")
    with pytest.raises(ConfigError):
        database_path("sqlite://")
    with pytest.raises(ConfigError):
        database_path("sqlite:///")


async def test_creates_the_parent_folder(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path}/a/b/chatd.db")
    await store.start()
    await store.ping()
    await store.close()
    assert (tmp_path / "a" / "b" / "chatd.db").exists()


async def test_a_file_that_cannot_be_opened_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "not-a-db").write_bytes(b"this is not a sqlite database, not at all" * 100)
    with pytest.raises(ConfigError, match="cannot open"):
        await open_store(f"sqlite:///{tmp_path}/not-a-db").start()
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError):
        await open_store(f"sqlite:///{tmp_path}/file/chatd.db").start()


async def test_everything_survives_a_reopen(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/chatd.db"
    store = open_store(url)
    await store.start()
    await store.create_user("alice", "h", T0)
    await store.create_user("bob", "h", T0)
    await store.create_session(Session("tok", "alice", "phone", T0, T0 + 9))
    await store.get_or_create_direct("alice", "bob", "d1", T0)
    item = MediaItem("m1", "alice", "image/png", 3, "x.png", "00" * 32, T0)
    await store.create_media(item)
    sent = [await store.append_message(msg("d1", "alice", f"m{i}")) for i in range(3)]
    await store.append_message(msg("d1", "bob", "with media", media=(item,)))
    await store.set_marker("d1", "bob", "read", 2)
    created = await store.create_group(
        "g1", "ops", [("alice", "owner"), ("bob", "member")], system("g1", "alice", "create")
    )
    await store.apply_group_change(
        "g1", 0, GroupChange(title="ops2"), system("g1", "alice", "title")
    )
    await store.add_push_subscription(PushSubscription("s1", "bob", "webhook", {"u": 1}, T0))
    before = await store.list_conversations("bob")
    await store.close()

    store = open_store(url)
    await store.start()
    try:
        assert (await store.get_user("alice")) is not None
        assert (await store.get_session("tok")) == Session("tok", "alice", "phone", T0, T0 + 9)
        assert await store.list_conversations("bob") == before
        page, _ = await store.history("d1", before=None, after=None, limit=10)
        assert page[:3] == [r.message for r in sent]
        assert page[3].media == (item,)
        assert (await store.get_conversation("g1")).title == "ops2"  # type: ignore[union-attr]
        assert (await store.history("g1", before=2, after=None, limit=1))[0] == [created.message]
        assert await store.media_visible_to("m1", "bob")
        assert [s.id for s in await store.push_subscriptions(["bob"])] == ["s1"]
        again = await store.append_message(
            msg("d1", "alice", "m0", client_id=sent[0].message.client_id)
        )
        assert again.duplicate and again.message == sent[0].message
        assert (await store.append_message(msg("d1", "alice", "next"))).message.seq == 5
    finally:
        await store.close()


async def test_the_file_is_wal_and_versioned(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path}/chatd.db")
    await store.start()
    await store.close()
    conn = sqlite3.connect(tmp_path / "chatd.db")
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA user_version").fetchone()[0] >= 1
    finally:
        conn.close()


async def test_a_version_1_file_is_upgraded_and_keeps_its_users(tmp_path: Path) -> None:
    from chatd.store.sqlite import MIGRATIONS

    conn = sqlite3.connect(tmp_path / "chatd.db", isolation_level=None)
    try:
        for statement in MIGRATIONS[0]:
            conn.execute(statement)
        conn.execute("PRAGMA user_version = 1")
        conn.execute(
            "INSERT INTO users (username, password_hash, created_at) VALUES ('al', 'h', 1)"
        )
    finally:
        conn.close()
    store = open_store(f"sqlite:///{tmp_path}/chatd.db")
    await store.start()
    try:
        assert (await store.get_user("al")) is not None
        assert await store.users_revoked_since(0) == []
        await store.set_user_disabled("al", True, revoked_at=T0)
        assert await store.users_revoked_since(T0) == [("al", T0)]
    finally:
        await store.close()
    conn = sqlite3.connect(tmp_path / "chatd.db")
    try:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
    finally:
        conn.close()


async def test_two_stores_on_one_file_keep_seq_gapless(tmp_path: Path) -> None:
    """Two stores stand for two processes: separate writer connections, one file."""
    url = f"sqlite:///{tmp_path}/chatd.db"
    first, second = open_store(url), open_store(url)
    await asyncio.gather(first.start(), second.start())
    try:
        await first.get_or_create_direct("alice", "bob", "d1", T0)
        sends = [
            (first if i % 2 else second).append_message(msg("d1", "alice", f"m{i}"))
            for i in range(200)
        ]
        results = await bounded(asyncio.gather(*sends))
        assert sorted(r.message.seq for r in results) == list(range(1, 201))
        # A group change made through one store is seen by the other's member cache.
        await first.create_group(
            "g1", "ops", [("alice", "owner"), ("bob", "member")], system("g1", "alice", "create")
        )
        await second.append_message(msg("g1", "bob", "hi"))
        await first.apply_group_change(
            "g1", 0, GroupChange(remove=("bob",)), system("g1", "alice", "remove")
        )
        with pytest.raises(NotFound):
            await second.append_message(msg("g1", "bob", "still here?"))
    finally:
        await asyncio.gather(first.close(), second.close())


async def test_close_finishes_queued_writes(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/chatd.db"
    store = SQLiteStore(url)
    await store.start()
    await store.get_or_create_direct("alice", "bob", "d1", T0)
    pending = [asyncio.ensure_future(store.append_message(msg("d1", "bob"))) for _ in range(50)]
    await asyncio.sleep(0)  # every append is queued
    await store.close()
    results = await bounded(asyncio.gather(*pending))
    assert sorted(r.message.seq for r in results) == list(range(1, 51))
    reopened = SQLiteStore(url)
    await reopened.start()
    try:
        assert (await reopened.get_conversation("d1")).last_seq == 50  # type: ignore[union-attr]
    finally:
        await reopened.close()
    assert not [t for t in os.listdir(tmp_path) if t.endswith("-journal")]


async def test_concurrent_appends_share_commits(tmp_path: Path) -> None:
    """Group commit: 200 appends in flight at once are written in a handful of transactions
    (one fsync each), not 200."""
    store = SQLiteStore(f"sqlite:///{tmp_path}/chatd.db")
    await store.start()
    try:
        await store.create_user("alice", "h", T0)
        await store.create_user("bob", "h", T0)
        await store.get_or_create_direct("alice", "bob", "d1", T0)
        before = store.commits
        results = await bounded(
            asyncio.gather(*(store.append_message(msg("d1", "alice", f"m{i}")) for i in range(200)))
        )
        commits = store.commits - before
    finally:
        await store.close()
    assert sorted(r.message.seq for r in results) == list(range(1, 201))
    # All 200 reach the store in one loop iteration, so the writer gets them as one batch.
    assert commits == 1, f"200 concurrent appends took {commits} commits"


async def test_a_write_waiting_for_the_lock_does_not_block_the_event_loop(tmp_path: Path) -> None:
    """All SQLite work is off the event loop's thread: while another process holds the write
    lock, an append waits in the writer thread and the loop keeps running on time."""
    path = tmp_path / "chatd.db"
    store = SQLiteStore(f"sqlite:///{path}")
    await store.start()
    other = sqlite3.connect(path, isolation_level=None)
    try:
        await store.create_user("alice", "h", T0)
        await store.create_user("bob", "h", T0)
        await store.get_or_create_direct("alice", "bob", "d1", T0)
        other.execute("BEGIN IMMEDIATE")  # another writer holds the lock
        append = asyncio.ensure_future(store.append_message(msg("d1", "alice", "waits")))
        loop = asyncio.get_running_loop()
        gaps = []
        last = loop.time()
        for _ in range(40):  # ~0.4 s of 10 ms ticks while the append waits
            await asyncio.sleep(0.01)
            now = loop.time()
            gaps.append(now - last)
            last = now
        assert not append.done(), "the append should still wait for the lock"
        other.execute("COMMIT")
        result = await bounded(append)
    finally:
        other.close()
        await store.close()
    assert result.message.seq == 1
    assert max(gaps) < 0.2, f"the event loop stalled for {max(gaps):.3f} s"
