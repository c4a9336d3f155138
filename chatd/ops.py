"""Operator commands: ``chatd backup`` (an online copy) and ``chatd doctor`` (checks in plain
words)."""

from __future__ import annotations

import asyncio
import os
import shutil
import sqlite3
from collections.abc import Awaitable, Callable
from pathlib import Path
from urllib.parse import urlsplit

from chatd.config import Settings
from chatd.errors import ChatError, ConfigError

BACKUP_PAGES_PER_STEP = 4096


def _sqlite_backup(source: Path, target: Path) -> None:
    """SQLite's online backup API: a consistent snapshot while the server keeps writing."""
    src = sqlite3.connect(f"file:{source}?mode=ro", uri=True, timeout=30)
    dst = sqlite3.connect(target)
    try:
        src.backup(dst, pages=BACKUP_PAGES_PER_STEP)
        dst.execute("PRAGMA journal_mode=WAL")
    finally:
        dst.close()
        src.close()


def _prepare_empty_folder(target: Path) -> None:
    if target.exists() and any(target.iterdir()):
        raise ConfigError(f"{target} exists and is not empty")
    target.mkdir(parents=True, exist_ok=True)


def _probe_writable(path: Path) -> str:
    path.mkdir(parents=True, exist_ok=True)
    probe = path / ".chatd-doctor"
    probe.write_text("ok")
    probe.unlink()
    return f"{path.resolve()} is writable"


def _copy_tree(source: Path, target: Path) -> int:
    """Copy finished files; a temporary upload still being written is skipped."""
    copied = 0
    for root, _dirs, files in os.walk(source):
        relative = Path(root).relative_to(source)
        for name in files:
            if name.startswith(".") or name.endswith((".tmp", ".part")):
                continue
            destination = target / relative / name
            destination.parent.mkdir(parents=True, exist_ok=True)
            try:
                shutil.copy2(Path(root) / name, destination)
            except FileNotFoundError:
                continue  # deleted while we walked
            copied += 1
    return copied


async def backup(settings: Settings, destination: str) -> str:
    """Copy the SQLite store, then the media folder, into ``destination`` (a new data dir).

    The database is copied first: every media row it holds was committed after its file, so
    every file the copy refers to exists by the time the folder is copied.
    """
    from chatd.store.sqlite import database_path

    if urlsplit(settings.store_url).scheme != "sqlite":
        raise ConfigError(
            "chatd backup copies the SQLite store; back up PostgreSQL with "
            "pg_dump and MongoDB with mongodump"
        )
    source_db = database_path(settings.store_url)
    if not source_db.exists():
        raise ConfigError(f"no database at {source_db}")
    target = Path(destination)
    await asyncio.to_thread(_prepare_empty_folder, target)
    await asyncio.to_thread(_sqlite_backup, source_db, target / "chatd.db")
    summary = [f"database -> {target / 'chatd.db'}"]
    media = urlsplit(settings.media_url)
    if media.scheme == "file":
        from chatd.media.file import folder_from_url

        folder = folder_from_url(settings.media_url)
        if folder.exists():
            count = await asyncio.to_thread(_copy_tree, folder, target / "media")
            summary.append(f"{count} media files -> {target / 'media'}")
    else:
        summary.append(f"media in {media.scheme}:// is not copied (back the bucket up itself)")
    for name in ("vapid_private.pem",):
        key = Path(settings.data_dir) / name
        if key.exists():
            shutil.copy2(key, target / name)
            summary.append(f"{name} -> {target / name}")
    return "backup done: " + "; ".join(summary)


Check = Callable[[], Awaitable[str]]


async def doctor(settings: Settings) -> tuple[bool, list[str]]:
    """Check every setting and backend; return (all good, one line per check)."""
    lines: list[str] = []
    healthy = True

    async def run(name: str, check: Check) -> None:
        nonlocal healthy
        try:
            detail = await asyncio.wait_for(check(), 15)
        except (ConfigError, ChatError, OSError, TimeoutError) as exc:
            healthy = False
            reason = str(exc) or type(exc).__name__
            lines.append(f"FAIL {name}: {reason}")
        else:
            lines.append(f"ok   {name}: {detail}")

    async def data_dir() -> str:
        return await asyncio.to_thread(_probe_writable, Path(settings.data_dir))

    async def store() -> str:
        from chatd.store import open_store

        backend = open_store(settings.store_url)
        await backend.start()
        try:
            await backend.ping()
        finally:
            await backend.close()
        return f"{_redact(settings.store_url)} answers"

    async def bus() -> str:
        from chatd.routing import open_bus

        backend = open_bus(settings.bus, "doctor")
        if not backend.local_only:

            async def ignore_offline(_: list[str]) -> None:
                return None

            await backend.start(lambda _: None, ignore_offline)
            try:
                await backend.ping()
            finally:
                await backend.close()
        return f"{_redact(settings.bus)} answers"

    async def media() -> str:
        from chatd.media import open_media

        backend = open_media(settings.media_url)
        await backend.start()
        try:
            await backend.ping()
        finally:
            await backend.close()
        return f"{_redact(settings.media_url)} answers"

    async def origins() -> str:
        return "WebSocket origins allowed: " + ", ".join(sorted(settings.origins))

    for name, check in (
        ("data dir", data_dir),
        ("store", store),
        ("bus", bus),
        ("media", media),
        ("origins", origins),
    ):
        await run(name, check)
    return healthy, lines


def _redact(url: str) -> str:
    parts = urlsplit(url)
    if parts.password:
        return url.replace(f":{parts.password}@", ":***@")
    return url
