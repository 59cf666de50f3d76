"""PostgreSQL for services that keep their state there (asyncpg).

One pool per service, connected lazily (so a service starts while its database
is still away), and outages reported as ``Unavailable`` instead of as driver
errors.

Migrations have one owner: ``python -m <service>.migrate`` applies them and exits
(the launcher, the test sandbox, compose and a Kubernetes Job run it before the
services), on its own connection without the services' statement timeout, so a
slow ``CREATE INDEX`` takes as long as it takes. A service only checks at start
that its database has exactly the migrations its code knows: it waits
(NOT_SERVING, logged) while some are missing and stops with a clear error when
the database has migrations the code does not know (older code on a newer
database).
"""

import asyncio
import logging
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from importlib.resources.abc import Traversable
from typing import TypeAlias
from urllib.parse import urlsplit

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from meshkit.errors import Unavailable
from meshkit.lifecycle import DependencyIncompatible
from meshkit.logs import configure_logging
from meshkit.resilience import retry
from meshkit.settings import SettingsT, load_settings

log = logging.getLogger(__name__)

# A connection of its own (migrations) or one lent by the pool (the stores).
Connection: TypeAlias = asyncpg.Connection | PoolConnectionProxy

# Errors that mean "the database is not there right now", as opposed to a bug.
DATABASE_DOWN = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.InterfaceError,
    # A pooled connection the server has just terminated can fail with this
    # before asyncpg notices it is closed (seen when PostgreSQL drops every
    # connection); connections are never shared, so it means "broken connection".
    asyncpg.InternalClientError,
)
# Session settings of every pooled connection. client_connection_check_interval:
# a backend whose client vanished (service killed, network cut) notices it while
# still waiting or running and rolls its transaction back, instead of going on
# to commit what nobody will be told about while holding row locks others wait
# for (a hot product's, for a whole batch of sales: inventory_svc/batching.py).
SERVER_SETTINGS = {"client_connection_check_interval": "1000"}  # ms
MIGRATIONS_LOCK = 0x1A7E57  # pg_advisory lock id: one migrator at a time
MIGRATE_WAIT_SECONDS = 120.0  # how long the migrator waits for its database to answer


async def keep_session(_: asyncpg.Connection) -> None:
    """Release a pooled connection without asyncpg's reset query.

    The default reset (unlock advisory locks, CLOSE ALL, UNLISTEN, RESET ALL)
    costs a round trip per call; our pooled connections never change session
    state (no SET, no LISTEN, only transaction-scoped locks), so there is
    nothing to reset. Measured in bench/findings.md.
    """


class PostgresDatabase:
    def __init__(
        self,
        dsn: str,
        *,
        label: str,
        migrations: Traversable,
        pool_size: int,
        timeout_seconds: float,
        idle_seconds: float = 0,
    ) -> None:
        self.dsn = dsn
        self._label = label  # e.g. "inventory database", for messages
        self.migrator = "python -m <service>.migrate"  # what applies the migrations
        self._migrations = migrations
        self._pool_size = pool_size
        self._timeout = timeout_seconds
        # 0: every pooled connection stays open. Otherwise a connection idle this
        # long is closed (no floor) and opened again when needed: a process that
        # is mostly idle then leaves the server's connection slots to others.
        self._idle_seconds = idle_seconds
        self._pool: asyncpg.Pool | None = None
        self._schema_checked = False

    async def ready(self) -> None:
        """Connect on first use, check the schema until it fits, then prove the
        database answers.

        Raises while the database is unreachable or still being migrated; the
        health watcher calls it until it passes, and keeps calling it to notice
        outages.
        """
        if self._pool is None:
            self._pool = await asyncpg.create_pool(
                self.dsn,
                min_size=0 if self._idle_seconds else self._pool_size,
                max_size=self._pool_size,
                max_inactive_connection_lifetime=self._idle_seconds,
                command_timeout=self._timeout,
                timeout=self._timeout,
                reset=keep_session,
                server_settings=SERVER_SETTINGS,
            )
        async with self.connection() as conn:
            if not self._schema_checked:
                await check_schema(
                    conn, self._migrations, label=self._label, migrator=self.migrator
                )
                self._schema_checked = True
            await conn.fetchval("SELECT 1")

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    def pool_usage(self) -> tuple[int, int]:
        """(connections open, connections in use) of the pool; (0, 0) before it exists.
        Plain attribute reads: safe from the metrics endpoint's thread."""
        pool = self._pool
        if pool is None:
            return 0, 0
        return pool.get_size(), pool.get_size() - pool.get_idle_size()

    @property
    def name(self) -> str:
        """The database's name, from its URL (e.g. inventory_db)."""
        return urlsplit(self.dsn).path.lstrip("/")

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[PoolConnectionProxy]:
        if self._pool is None:
            raise Unavailable(f"the {self._label} is not reachable yet; try again shortly")
        try:
            async with self._pool.acquire(timeout=self._timeout) as conn:
                yield conn
        except DATABASE_DOWN as exc:
            log.warning("%s unavailable: %s", self._label, exc)
            raise Unavailable(f"the {self._label} is unavailable; try again later") from exc


class PostgresStore:
    """Base of a service's PostgreSQL adapter: its database, ready and close."""

    label = "database"  # e.g. "inventory database", for messages
    migrations: Traversable

    def __init__(
        self, dsn: str, *, pool_size: int, timeout_seconds: float, idle_seconds: float = 0
    ) -> None:
        self.db = PostgresDatabase(
            dsn,
            label=self.label,
            migrations=self.migrations,
            pool_size=pool_size,
            timeout_seconds=timeout_seconds,
            idle_seconds=idle_seconds,
        )
        # e.g. inventory_svc.store → python -m inventory_svc.migrate
        self.db.migrator = f"python -m {type(self).__module__.split('.')[0]}.migrate"

    async def ready(self) -> None:
        await self.db.ready()

    async def close(self) -> None:
        await self.db.close()


class SchemaBehind(Unavailable):
    """The database lacks migrations the code needs: wait for the migrator."""


class SchemaAhead(DependencyIncompatible):
    """The database has migrations this code does not know: no wait fixes that."""


def _versions(migrations: Traversable) -> list[str]:
    return sorted(
        f.name.removesuffix(".sql") for f in migrations.iterdir() if f.name.endswith(".sql")
    )


async def _applied(conn: Connection) -> set[str]:
    if await conn.fetchval("SELECT to_regclass('schema_migrations') IS NULL"):
        return set()
    return {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}


async def check_schema(
    conn: Connection,
    migrations: Traversable,
    *,
    label: str,
    migrator: str = "python -m <service>.migrate",
) -> None:
    """Raise unless the database has exactly the migrations of ``migrations``."""
    known, applied = _versions(migrations), await _applied(conn)
    if unknown := sorted(applied - set(known)):
        raise SchemaAhead(
            f"the {label} has migrations this code does not know ({', '.join(unknown)}):"
            " run the code that wrote them, or restore the database to this version"
        )
    if missing := [version for version in known if version not in applied]:
        raise SchemaBehind(
            f"the {label} is waiting for migrations {', '.join(missing)} ({migrator} applies them)"
        )


async def apply_migrations(conn: Connection, migrations: Traversable) -> list[str]:
    """Apply the ``NNNN_name.sql`` files this database has not seen yet.

    Each file runs once, in name order, in one transaction with its bookkeeping
    row (so a failure leaves the earlier ones applied). The session advisory lock
    makes a second migrator started at the same time wait, then find nothing to do.
    """
    applied: list[str] = []
    await conn.execute("SELECT pg_advisory_lock($1)", MIGRATIONS_LOCK)
    try:
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = await _applied(conn)
        for version in _versions(migrations):
            if version in done:
                continue
            async with conn.transaction():
                await conn.execute(migrations.joinpath(f"{version}.sql").read_text())
                await conn.execute("INSERT INTO schema_migrations (version) VALUES ($1)", version)
            applied.append(version)
            log.info("applied migration %s", version)
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATIONS_LOCK)
    return applied


async def migrate(dsn: str, migrations: Traversable) -> list[str]:
    """Apply pending migrations on a connection of their own, without statement timeout."""

    async def connect() -> asyncpg.Connection:
        return await asyncpg.connect(
            dsn, timeout=10, command_timeout=None, server_settings={"statement_timeout": "0"}
        )

    conn = await asyncio.wait_for(
        retry(connect, "migrations: database unreachable", on=DATABASE_DOWN, logger=log),
        MIGRATE_WAIT_SECONDS,
    )
    try:
        return await apply_migrations(conn, migrations)
    finally:
        await conn.close()


def migration_main(
    name: str,
    settings_type: type[SettingsT],
    database_url: Callable[[SettingsT], object],
    migrations: Traversable,
) -> None:
    """``python -m <name>.migrate``: apply the database's pending migrations, then exit.

    Exit status 0 when the database is up to date (nothing pending is fine), 1
    with the reason otherwise."""
    settings = load_settings(settings_type)
    configure_logging(f"{name}.migrate", settings.log_level, settings.log_format)
    try:
        applied = asyncio.run(migrate(str(database_url(settings)), migrations))
    except (TimeoutError, *DATABASE_DOWN, asyncpg.PostgresError) as exc:
        sys.exit(f"{name} migrations failed: {type(exc).__name__}: {exc}")
    log.info("migrations: %s", ", ".join(applied) if applied else "none pending")
