"""Migrations have one owner (``python -m <service>.migrate``); services only check.

On a real PostgreSQL: the migrator takes as long as a migration needs (no
statement timeout), several migrators at once apply each file once, and a
service waits while its database lacks migrations and stops with a clear error
when the database has migrations its code does not know.
"""

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import asyncpg
import pytest

from blueprint.topology import ROOT
from devtools.sandbox import create_database, drop_database, free_port
from meshkit.postgres import PostgresDatabase, SchemaAhead, SchemaBehind, migrate
from notify_svc.store import MIGRATIONS as NOTIFY_MIGRATIONS
from notify_svc.store import PostgresNotifications
from tests.support.servers import PG_SERVER_URL


@pytest.fixture
async def empty_db_url():
    url = await create_database(PG_SERVER_URL, "polyglot_test_migrations")
    yield url
    await drop_database(url)


def database(url: str, migrations) -> PostgresDatabase:
    # The services' own bound: 2 s per statement.
    return PostgresDatabase(
        url, label="test database", migrations=migrations, pool_size=1, timeout_seconds=2
    )


async def test_a_migration_slower_than_the_services_timeout_completes(empty_db_url, tmp_path):
    (tmp_path / "0001_slow.sql").write_text(
        "SELECT pg_sleep(3); CREATE TABLE slow (id integer PRIMARY KEY);"
    )
    assert await migrate(empty_db_url, tmp_path) == ["0001_slow"]
    db = database(empty_db_url, tmp_path)
    try:
        await db.ready()  # the schema fits the code
    finally:
        await db.close()


async def test_migrators_started_together_apply_each_file_once(empty_db_url, tmp_path: Path):
    (tmp_path / "0001_table.sql").write_text("CREATE TABLE once (id integer);")
    (tmp_path / "0002_row.sql").write_text("INSERT INTO once VALUES (1);")
    results = await asyncio.gather(*(migrate(empty_db_url, tmp_path) for _ in range(3)))
    assert sorted(map(tuple, results)) == [(), (), ("0001_table", "0002_row")]
    conn = await asyncpg.connect(empty_db_url)
    try:
        assert await conn.fetchval("SELECT count(*) FROM once") == 1
    finally:
        await conn.close()


async def test_a_service_waits_until_its_database_is_migrated(empty_db_url):
    store = PostgresNotifications(empty_db_url, pool_size=1, timeout_seconds=2)
    try:
        with pytest.raises(
            SchemaBehind,
            match=r"waiting for migrations 0001_notifications, 0002_notification_lease"
            r" \(python -m notify_svc.migrate applies them\)",
        ):
            await store.ready()
        await migrate(empty_db_url, NOTIFY_MIGRATIONS)
        await store.ready()
    finally:
        await store.close()


async def test_a_database_ahead_of_the_code_is_refused(empty_db_url):
    await migrate(empty_db_url, NOTIFY_MIGRATIONS)
    conn = await asyncpg.connect(empty_db_url)
    try:
        await conn.execute(
            "INSERT INTO schema_migrations (version) VALUES ('9999_from_the_future')"
        )
    finally:
        await conn.close()
    db = database(empty_db_url, NOTIFY_MIGRATIONS)
    try:
        with pytest.raises(SchemaAhead, match="9999_from_the_future"):
            await db.ready()
    finally:
        await db.close()
    # The service itself stops, exit status 1, saying why (rather than NOT_SERVING for ever).
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "notify_svc"],
        env={
            **os.environ,
            "NOTIFY_DATABASE_URL": empty_db_url,
            "AMQP_URL": f"amqp://guest:guest@127.0.0.1:{free_port()}/",  # nobody listens
            "GRPC_HOST": "127.0.0.1",
            "GRPC_PORT": str(free_port()),
            "HEALTH_PROBE_SECONDS": "0.2",
        },
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 1, done.stderr[-2000:]
    assert "has migrations this code does not know (9999_from_the_future)" in done.stderr
