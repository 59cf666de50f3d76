"""The inventory database as the tests read it (sales themselves: tests/support/sales.py)."""

import asyncpg


async def inventory_state(db: asyncpg.Pool) -> tuple[list, list, list]:
    """Every product, sale and outbox event, to prove a rejected call changed nothing.

    Outbox rows without published_at: the relay marks them as it goes, which is
    not a change the call made (published rows are kept for a day).
    """
    products = await db.fetch("SELECT * FROM products ORDER BY product_id")
    sales = await db.fetch("SELECT * FROM sales ORDER BY order_id")
    events = await db.fetch("SELECT position, event_id, payload FROM outbox ORDER BY position")
    return [dict(r) for r in products], [dict(r) for r in sales], [dict(r) for r in events]


async def stock_of(db: asyncpg.Pool, product_id: int) -> int:
    return await db.fetchval("SELECT stock FROM products WHERE product_id = $1", product_id)
