"""The store contract suite's fixture: one clean, started store per test, for every backend.

* ``memory://`` always;
* ``sqlite:///<tmp>/chatd.db``, a fresh file per test;
* ``postgresql://postgres@127.0.0.1:5432/<fresh>``: one database created for the session
  (through the ``test`` database) and dropped at the end; between tests every table the
  backend fills is emptied. Skipped when ``chatd.store.postgres`` does not exist yet or the
  server is unreachable, except under ``CI=true`` where that fails;
* ``mongodb``: only when ``CHATD_TEST_MONGODB_URL`` is set; a fresh database per test.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from urllib.parse import urlsplit, urlunsplit

import pytest

from chatd.store import Store, open_store

PG_ADMIN_DSN = os.environ.get(
    "CHATD_TEST_POSTGRES_ADMIN", "postgresql://postgres@127.0.0.1:5432/test"
)
MONGODB_URL = os.environ.get("CHATD_TEST_MONGODB_URL", "")

BACKENDS = ["memory", "sqlite", "postgres", *(["mongodb"] if MONGODB_URL else [])]


def cannot_run(reason: str) -> None:
    """Skip a backend test that cannot run here; under ``CI=true`` that is a failure."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"backend unavailable under CI: {reason}")
    pytest.skip(reason)


def _with_database(dsn: str, database: str) -> str:
    base, _, _ = dsn.rpartition("/")
    return f"{base}/{database}"


@dataclass
class PostgresDatabase:
    url: str
    # Tables a freshly migrated database already fills (schema version bookkeeping): kept.
    keep: set[str] | None = None
    tables: list[str] = field(default_factory=list)


async def _pg_admin(statement: str) -> None:
    import asyncpg

    conn = await asyncio.wait_for(asyncpg.connect(PG_ADMIN_DSN), 5)
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


@pytest.fixture(scope="session")
def postgres_database() -> Iterator[PostgresDatabase]:
    if importlib.util.find_spec("chatd.store.postgres") is None:
        cannot_run("chatd.store.postgres does not exist yet")
    name = f"chatd_test_{uuid.uuid4().hex[:12]}"
    try:
        asyncio.run(_pg_admin(f'CREATE DATABASE "{name}"'))
    except Exception as exc:  # unreachable server, refused login, missing driver
        cannot_run(f"PostgreSQL at {PG_ADMIN_DSN} is unreachable: {exc!r}")
    try:
        yield PostgresDatabase(_with_database(PG_ADMIN_DSN, name))
    finally:
        asyncio.run(_pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


async def _pg_tables(url: str) -> dict[str, int]:
    """Every table of the database with whether it holds rows (1) or not (0)."""
    import asyncpg

    conn = await asyncio.wait_for(asyncpg.connect(url), 5)
    try:
        rows = await conn.fetch(
            "SELECT quote_ident(schemaname) || '.' || quote_ident(tablename) AS name"
            " FROM pg_tables WHERE schemaname NOT IN ('pg_catalog', 'information_schema')"
        )
        result = {}
        for row in rows:
            result[row["name"]] = await conn.fetchval(
                f"SELECT count(*) FROM (SELECT 1 FROM {row['name']} LIMIT 1) t"
            )
        return result
    finally:
        await conn.close()


async def _pg_empty(url: str, tables: list[str]) -> None:
    import asyncpg

    if not tables:
        return
    conn = await asyncio.wait_for(asyncpg.connect(url), 5)
    try:
        # DELETE beats TRUNCATE by far on tables this small (no file or lock churn); the
        # replica role skips foreign-key triggers, so the order of the tables does not matter.
        await conn.execute(
            "SET session_replication_role = replica;"
            + "".join(f"DELETE FROM {table};" for table in tables)
        )
    finally:
        await conn.close()


@pytest.fixture(params=BACKENDS)
def store_url(request: pytest.FixtureRequest, tmp_path: os.PathLike[str]) -> str:
    backend: str = request.param
    if backend == "memory":
        return "memory://"
    if backend == "sqlite":
        return f"sqlite:///{tmp_path}/chatd.db"
    if backend == "postgres":
        database: PostgresDatabase = request.getfixturevalue("postgres_database")
        return database.url
    parts = urlsplit(MONGODB_URL)
    return urlunsplit(parts._replace(path=f"/chatd_test_{uuid.uuid4().hex[:12]}"))


@pytest.fixture
async def store(request: pytest.FixtureRequest, store_url: str) -> AsyncIterator[Store]:
    """A started, empty store; closed (and emptied, for shared servers) afterwards."""
    backend = open_store(store_url)
    await asyncio.wait_for(backend.start(), 30)
    pg: PostgresDatabase | None = None
    if store_url.startswith("postgresql://"):
        pg = request.getfixturevalue("postgres_database")
        if pg.keep is None:
            filled = await _pg_tables(pg.url)
            pg.keep = {name for name, rows in filled.items() if rows}
            pg.tables = sorted(name for name in filled if name not in pg.keep)
    try:
        yield backend
    finally:
        await asyncio.wait_for(backend.close(), 30)
        if pg is not None:
            await _pg_empty(pg.url, pg.tables)
        if store_url.startswith("mongodb"):
            await _drop_mongo_database(store_url)


async def _drop_mongo_database(url: str) -> None:
    from pymongo import AsyncMongoClient

    client: AsyncMongoClient[dict[str, object]] = AsyncMongoClient(url)
    try:
        await client.drop_database(urlsplit(url).path.lstrip("/"))
    finally:
        await client.close()
