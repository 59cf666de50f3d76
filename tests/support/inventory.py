import uuid

import asyncpg


def order() -> str:
    """A fresh order id, so a test never replays another test's order."""
    return f"ORD-{uuid.uuid4().hex[:12]}"


async def inventory_state(db: asyncpg.Pool) -> tuple[list, list]:
    """Every product and sale row, to prove a rejected call changed nothing."""
    products = await db.fetch("SELECT * FROM products ORDER BY product_id")
    sales = await db.fetch("SELECT * FROM sales ORDER BY order_id")
    return [dict(r) for r in products], [dict(r) for r in sales]


async def stock_of(db: asyncpg.Pool, product_id: int) -> int:
    return await db.fetchval("SELECT stock FROM products WHERE product_id = $1", product_id)
