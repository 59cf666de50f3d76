"""PostgreSQL for services that keep their state there (asyncpg).

One pool per service, connected lazily (so a service starts while its database
is still away), schema migrations applied on first connect, and outages
reported as ``Unavailable`` instead of as driver errors.
"""

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib.resources.abc import Traversable

import asyncpg

from meshkit.errors import Unavailable

log = logging.getLogger(__name__)

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
MIGRATIONS_LOCK = 0x1A7E57  # pg_advisory lock id: one migrator at a time


async def _keep_session(_: asyncpg.Connection) -> None:
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
    ) -> None:
        self.dsn = dsn
        self._label = label  # e.g. "inventory database", for messages
        self._migrations = migrations
        self._pool_size = pool_size
        self._timeout = timeout_seconds
        self._pool: asyncpg.Pool | None = None

    async def ready(self) -> None:
        """Connect and migrate on first use, then prove the database answers.

        Raises while the database is unreachable; the health watcher calls it
        until it passes, and keeps calling it to notice outages.
        """
        if self._pool is None:
            pool = await asyncpg.create_pool(
                self.dsn,
                min_size=self._pool_size,
                max_size=self._pool_size,
                command_timeout=self._timeout,
                timeout=self._timeout,
                reset=_keep_session,
            )
            try:
                async with pool.acquire() as conn:
                    await apply_migrations(conn, self._migrations)
            except BaseException:
                await pool.close()
                raise
            self._pool = pool
        async with self.connection() as conn:
            await conn.fetchval("SELECT 1")

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[asyncpg.Connection]:
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

    def __init__(self, dsn: str, *, pool_size: int, timeout_seconds: float) -> None:
        self.db = PostgresDatabase(
            dsn,
            label=self.label,
            migrations=self.migrations,
            pool_size=pool_size,
            timeout_seconds=timeout_seconds,
        )

    async def ready(self) -> None:
        await self.db.ready()

    async def close(self) -> None:
        await self.db.close()


async def apply_migrations(conn: asyncpg.Connection, migrations: Traversable) -> list[str]:
    """Apply the ``NNNN_name.sql`` files this database has not seen yet.

    Each file runs once, in name order, in one transaction with its bookkeeping
    row; the advisory lock lets several replicas start at once safely.
    """
    applied: list[str] = []
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATIONS_LOCK)
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
        files = sorted(
            (f for f in migrations.iterdir() if f.name.endswith(".sql")), key=lambda f: f.name
        )
        for file in files:
            version = file.name.removesuffix(".sql")
            if version in done:
                continue
            await conn.execute(file.read_text())
            await conn.execute("INSERT INTO schema_migrations (version) VALUES ($1)", version)
            applied.append(version)
            log.info("applied migration %s", version)
    return applied


async def migrate(dsn: str, migrations: Traversable, *, timeout_seconds: float) -> None:
    """``python -m <service> migrate``: apply pending migrations, then exit."""
    conn = await asyncpg.connect(dsn, timeout=timeout_seconds)
    try:
        applied = await apply_migrations(conn, migrations)
    finally:
        await conn.close()
    log.info("migrations: %s", ", ".join(applied) if applied else "none pending")
