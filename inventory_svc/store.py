"""PostgreSQL adapter: products, sales and schema migrations, through an asyncpg pool."""

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib import resources

import asyncpg

from inventory_svc.domain import MAX_STOCK, Page, Product, Sale, SaleRequest
from meshkit.errors import Unavailable

log = logging.getLogger(__name__)

# Errors that mean "the database is not there right now", as opposed to a bug.
DATABASE_DOWN = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.InterfaceError,
)
MIGRATIONS_LOCK = 0x1A7E57  # pg_advisory lock id: one migrator at a time

# One statement, so one round trip and one implicit transaction: the stock update
# only matches when enough stock is left, and the sale row for the order id is
# inserted from its result. If the order id was already sold the primary key
# rejects the insert and the whole statement, stock update included, rolls back.
RECORD_SALE = """
WITH sold AS (
    UPDATE products SET stock = stock - $3, updated_at = now()
    WHERE product_id = $2 AND stock >= $3
    RETURNING product_id, stock
), sale AS (
    INSERT INTO sales (order_id, product_id, quantity, remaining_stock)
    SELECT $1, product_id, $3, stock FROM sold
)
SELECT stock FROM sold
"""


class PostgresInventory:
    def __init__(self, dsn: str, *, pool_size: int, timeout_seconds: float) -> None:
        self._dsn = dsn
        self._pool_size = pool_size
        self._timeout = timeout_seconds
        self._pool: asyncpg.Pool | None = None

    async def ready(self) -> None:
        """Connect and migrate on first use, then prove the database answers.

        Raises while the database is unreachable; the health watcher calls it
        until it passes and keeps calling it to notice outages.
        """
        if self._pool is None:
            pool = await asyncpg.create_pool(
                self._dsn,
                min_size=self._pool_size,
                max_size=self._pool_size,
                command_timeout=self._timeout,
                timeout=self._timeout,
            )
            try:
                async with pool.acquire() as conn:
                    await apply_migrations(conn)
            except BaseException:
                await pool.close()
                raise
            self._pool = pool
        async with self._connection() as conn:
            await conn.fetchval("SELECT 1")

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[asyncpg.Connection]:
        if self._pool is None:
            raise Unavailable("the inventory database is not reachable yet; try again shortly")
        try:
            async with self._pool.acquire(timeout=self._timeout) as conn:
                yield conn
        except DATABASE_DOWN as exc:
            log.warning("database unavailable: %s", exc)
            raise Unavailable("the inventory database is unavailable; try again later") from exc

    async def record_sale(self, request: SaleRequest) -> Sale | None:
        """Commit the sale, or return None when nothing was written.

        Nothing is written when the product is unknown, its stock is too low, or
        the order id already has a sale; ``find_sale``/``find_product`` tell which.
        """
        async with self._connection() as conn:
            try:
                remaining = await conn.fetchval(
                    RECORD_SALE, request.order_id, request.product_id, request.quantity
                )
            except asyncpg.UniqueViolationError:
                return None
        if remaining is None:
            return None
        return Sale(request.order_id, request.product_id, request.quantity, remaining)

    async def find_sale(self, order_id: str) -> Sale | None:
        async with self._connection() as conn:
            row = await conn.fetchrow(
                "SELECT order_id, product_id, quantity, remaining_stock"
                " FROM sales WHERE order_id = $1",
                order_id,
            )
        return Sale(**row) if row else None

    async def find_product(self, product_id: int) -> Product | None:
        async with self._connection() as conn:
            row = await conn.fetchrow(
                "SELECT product_id, name, stock FROM products WHERE product_id = $1", product_id
            )
        return Product(**row) if row else None

    async def list_products(self, page: Page) -> list[Product]:
        """Up to ``page.size + 1`` products after the page's cursor (see ``split_page``)."""
        async with self._connection() as conn:
            rows = await conn.fetch(
                "SELECT product_id, name, stock FROM products WHERE product_id > $1"
                " ORDER BY product_id LIMIT $2",
                page.after_product_id,
                page.size + 1,
            )
        return [Product(**row) for row in rows]

    async def restock(self, product_id: int, quantity: int) -> Product | None:
        """Add stock; None when the product is unknown or would exceed the maximum."""
        async with self._connection() as conn:
            row = await conn.fetchrow(
                "UPDATE products SET stock = stock + $2, updated_at = now()"
                " WHERE product_id = $1 AND stock <= $3::integer - $2::integer"
                " RETURNING product_id, name, stock",
                product_id,
                quantity,
                MAX_STOCK,
            )
        return Product(**row) if row else None


async def apply_migrations(conn: asyncpg.Connection) -> list[str]:
    """Apply the SQL files in migrations/ that this database has not seen yet.

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
            (
                f
                for f in (resources.files(__package__) / "migrations").iterdir()
                if f.name.endswith(".sql")
            ),
            key=lambda f: f.name,
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
