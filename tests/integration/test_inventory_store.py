"""inventory_svc's store and use cases against a real PostgreSQL."""

import asyncio
from collections import Counter

import pytest

from inventory_svc import use_cases
from inventory_svc.domain import InsufficientStock, Sale, StockLimitExceeded
from inventory_svc.store import MIGRATIONS, PostgresInventory
from meshkit.errors import AlreadyExists, NotFound, Unavailable
from meshkit.postgres import apply_migrations
from tests.support.inventory import inventory_state, stock_of
from tests.support.net import TcpProxy
from tests.support.sales import order, sale_request
from tests.support.waiting import eventually


@pytest.fixture
async def store(inventory_db_url, inventory_db):
    store = PostgresInventory(inventory_db_url, pool_size=10, timeout_seconds=5)
    await store.ready()
    yield store
    await store.close()


async def test_migrations_apply_once_and_seed_the_catalogue(inventory_db):
    async with inventory_db.acquire() as conn:
        assert await apply_migrations(conn, MIGRATIONS) == []  # already applied by the fixture
    rows = await inventory_db.fetch(
        "SELECT product_id, name FROM products WHERE product_id IN (1, 2) ORDER BY product_id"
    )
    assert [tuple(r) for r in rows] == [(1, "Laptop Gamer"), (2, "Mouse Wireless")]


async def test_a_sale_decreases_stock_and_records_the_order(store, inventory_db, new_product):
    product = await new_product(stock=10)
    sale = await use_cases.decrease_stock(store, sale_request("ORD-a1", product, 3))
    assert sale == Sale("ORD-a1", product, 3, remaining_stock=7)
    assert await stock_of(inventory_db, product) == 7
    recorded = await inventory_db.fetchrow("SELECT * FROM sales WHERE order_id = 'ORD-a1'")
    assert (recorded["product_id"], recorded["quantity"], recorded["remaining_stock"]) == (
        product,
        3,
        7,
    )


async def test_replay_returns_first_answer_and_changes_nothing(store, inventory_db, new_product):
    product = await new_product(stock=10)
    first = await use_cases.decrease_stock(store, sale_request("ORD-r1", product, 4))
    await use_cases.decrease_stock(store, sale_request(order(), product, 1))  # stock moves on
    before = await inventory_state(inventory_db)
    replay = await use_cases.decrease_stock(store, sale_request("ORD-r1", product, 4))
    assert replay == first == Sale("ORD-r1", product, 4, remaining_stock=6)
    assert await inventory_state(inventory_db) == before


async def test_replay_is_answered_even_when_stock_ran_out_since(store, inventory_db, new_product):
    product = await new_product(stock=5)
    first = await use_cases.decrease_stock(store, sale_request("ORD-r2", product, 5))
    assert await use_cases.decrease_stock(store, sale_request("ORD-r2", product, 5)) == first


async def test_same_order_id_for_another_sale_is_rejected(store, inventory_db, new_product):
    product = await new_product(stock=10)
    await use_cases.decrease_stock(store, sale_request("ORD-c1", product, 2))
    before = await inventory_state(inventory_db)
    with pytest.raises(AlreadyExists):
        await use_cases.decrease_stock(store, sale_request("ORD-c1", product, 3))
    with pytest.raises(AlreadyExists):
        await use_cases.decrease_stock(store, sale_request("ORD-c1", 2, 2))
    assert await inventory_state(inventory_db) == before


async def test_unknown_product_and_short_stock_write_nothing(store, inventory_db, new_product):
    product = await new_product(stock=2)
    before = await inventory_state(inventory_db)
    with pytest.raises(NotFound, match="product 999999 does not exist"):
        await use_cases.decrease_stock(store, sale_request(order(), 999_999, 1))
    with pytest.raises(InsufficientStock, match="3 requested, 2 left"):
        await use_cases.decrease_stock(store, sale_request(order(), product, 3))
    assert await inventory_state(inventory_db) == before
    # A refused order id is not burnt: it can succeed later.
    await use_cases.decrease_stock(store, sale_request("ORD-later", product, 2))


async def test_200_concurrent_sales_of_one_never_oversell(store, inventory_db, new_product):
    product = await new_product(stock=100)

    async def sell() -> str:
        try:
            await use_cases.decrease_stock(store, sale_request(order(), product, 1))
            return "sold"
        except InsufficientStock:
            return "refused"

    outcomes = Counter(await asyncio.gather(*(sell() for _ in range(200))))
    assert outcomes == {"sold": 100, "refused": 100}
    assert await stock_of(inventory_db, product) == 0
    assert (
        await inventory_db.fetchval("SELECT count(*) FROM sales WHERE product_id = $1", product)
        == 100
    )


async def test_concurrent_replays_of_one_order_sell_once(store, inventory_db, new_product):
    product = await new_product(stock=100)
    request = sale_request(order(), product, 7)
    answers = await asyncio.gather(*(use_cases.decrease_stock(store, request) for _ in range(50)))
    assert set(answers) == {Sale(request.order_id, product, 7, remaining_stock=93)}
    assert await stock_of(inventory_db, product) == 93
    events = await inventory_db.fetchval(
        "SELECT count(*) FROM outbox WHERE payload->>'order_id' = $1", request.order_id
    )
    assert events == 1


async def test_restock_adds_and_is_bounded(store, inventory_db, new_product):
    product = await new_product(stock=1)
    restocked = await use_cases.restock_product(store, product, 9)
    assert restocked.stock == 10
    await inventory_db.execute(
        "UPDATE products SET stock = 2147483000 WHERE product_id = $1", product
    )
    before = await inventory_state(inventory_db)
    with pytest.raises(StockLimitExceeded, match="would exceed the maximum stock of 2147483647"):
        await use_cases.restock_product(store, product, 1000)
    assert await inventory_state(inventory_db) == before
    with pytest.raises(NotFound):
        await use_cases.restock_product(store, 999_999, 1)


async def test_database_outage_is_unavailable_then_recovers(inventory_db_url, new_product):
    """With PostgreSQL unreachable, calls fail fast with Unavailable, never hang."""
    proxy = TcpProxy.in_front_of(inventory_db_url, 5432)
    store = PostgresInventory(proxy.route(inventory_db_url), pool_size=2, timeout_seconds=2)
    try:
        await store.ready()
        product = await new_product(stock=5)
        proxy.cut()
        with pytest.raises(Unavailable, match="inventory database is unavailable"):
            await use_cases.decrease_stock(store, sale_request(order(), product, 1))
        with pytest.raises(Unavailable, match="inventory database is unavailable"):
            await store.ready()  # the health probe fails too
        proxy.restore()
        await store.ready()
        sale = await use_cases.decrease_stock(store, sale_request(order(), product, 1))
        assert sale.remaining_stock == 4
    finally:
        await store.close()
        proxy.close()


async def test_an_idle_pool_closes_its_connections_and_opens_them_again_when_needed(
    inventory_db_url, inventory_db, new_product
):
    """DB_POOL_IDLE_SECONDS: a mostly idle process leaves PostgreSQL's connection
    slots to others (the bench's 96-client rows on a default server)."""
    store = PostgresInventory(inventory_db_url, pool_size=4, timeout_seconds=5, idle_seconds=0.2)
    try:
        await store.ready()
        async with store.db.connection() as conn:
            pid = await conn.fetchval("SELECT pg_backend_pid()")

        async def closed() -> bool:
            query = "SELECT count(*) FROM pg_stat_activity WHERE pid = $1"
            return await inventory_db.fetchval(query, pid) == 0

        await eventually(closed, within=10, what="the idle pooled connection closed")
        product = await new_product(stock=5)
        sale = await use_cases.decrease_stock(store, sale_request("ORD-idle-1", product, 1))
        assert sale.remaining_stock == 4
    finally:
        await store.close()
