"""Sale batching on the real PostgreSQL: the batcher, the record_sales function and
the use cases together, every rule order by order as without batching.

To get a batch at all, orders must arrive while a write of their product is in
flight. Where a test needs to know exactly what is in flight, it holds the
product's row lock from a connection of its own (the first order then waits in
PostgreSQL, the next ones queue in the batcher) and lets go when it chooses.
"""

import asyncio
import random
from urllib.parse import urlsplit

import asyncpg
import pytest

from inventory_svc import use_cases
from inventory_svc.batching import SaleBatcher
from inventory_svc.domain import InsufficientStock, OrderConflict, Sale, SaleRequest
from inventory_svc.store import PostgresInventory
from meshkit.errors import Unavailable
from tests.support.inventory import stock_of
from tests.support.net import TcpProxy
from tests.support.sales import order, sale_request
from tests.support.waiting import eventually


class RecordingInventory(PostgresInventory):
    """The real store, noting the order ids of each write in the order they were sent."""

    writes: list[list[SaleRequest]]

    async def record_sale(self, request: SaleRequest) -> Sale | None:
        self.writes.append([request])
        return await super().record_sale(request)

    async def record_sales(self, requests: list[SaleRequest]) -> list[Sale | None]:
        self.writes.append(list(requests))
        return await super().record_sales(requests)


async def recording_store(url: str, pool_size: int = 10) -> RecordingInventory:
    store = RecordingInventory(url, pool_size=pool_size, timeout_seconds=10)
    store.writes = []
    await store.ready()
    return store


@pytest.fixture
async def store(inventory_db_url, inventory_db):
    store = await recording_store(inventory_db_url)
    yield store
    await store.close()


@pytest.fixture
def sales(store):
    return SaleBatcher(store, max_batch_size=100, max_queue_length=1000)


async def outcome(sales: SaleBatcher, request: SaleRequest) -> object:
    try:
        return await use_cases.decrease_stock(sales, request)
    except Exception as exc:
        return exc


async def events_of(db: asyncpg.Pool, product_id: int) -> list[tuple[str, int]]:
    """(order id, remaining stock) of the product's ProductSold events, in outbox order."""
    rows = await db.fetch(
        "SELECT payload->>'order_id' AS order_id, (payload->>'remaining_stock')::int AS left"
        " FROM outbox WHERE ordering_key = $1 ORDER BY position",
        str(product_id),
    )
    return [(r["order_id"], r["left"]) for r in rows]


class HeldRow:
    """The product's row locked by a transaction of the test's own."""

    def __init__(self, db: asyncpg.Pool, product_id: int) -> None:
        self.db, self.product_id = db, product_id

    async def __aenter__(self) -> "HeldRow":
        self.conn = await self.db.acquire()
        self.tx = self.conn.transaction()
        await self.tx.start()
        await self.conn.execute(
            "SELECT 1 FROM products WHERE product_id = $1 FOR UPDATE", self.product_id
        )
        return self

    async def release(self) -> None:
        if self.tx is not None:
            await self.tx.rollback()
            self.tx = None
            await self.db.release(self.conn)

    async def __aexit__(self, *_: object) -> None:
        await self.release()


async def waiting_backends(db: asyncpg.Pool, query_start: str) -> int:
    """Backends of this database waiting for a lock while running a query so named."""
    return await db.fetchval(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
        " AND wait_event_type = 'Lock' AND ltrim(query, E' \\n') LIKE $1 || '%'",
        query_start,
    )


async def running(db: asyncpg.Pool, query_start: str, *, present: bool) -> bool:
    """Whether a backend of this database is running a query so named (or not)."""
    count = await db.fetchval(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
        " AND state = 'active' AND ltrim(query, E' \\n') LIKE $1 || '%'",
        query_start,
    )
    return bool(count) == present


async def reconnected(store: PostgresInventory) -> bool:
    try:
        await store.ready()
    except Exception:
        return False
    return True


async def start_held_batch(sales, db, product, first, later):
    """First order in flight (waiting for the held row), the later ones queued behind it."""
    first_task = asyncio.create_task(outcome(sales, first))
    await eventually(lambda: waiting_backends(db, "WITH sold"), what="the first sale waits")
    later_tasks = [asyncio.create_task(outcome(sales, r)) for r in later]
    await eventually(lambda: sales.queued(product) == len(later), what="the rest queued")
    return first_task, later_tasks


async def test_500_concurrent_orders_accept_exactly_what_one_at_a_time_would(
    store, sales, inventory_db, new_product
):
    product = await new_product(stock=300)
    rng = random.Random(12)
    requests = [sale_request(order(), product, rng.randint(1, 5)) for _ in range(500)]

    answers = await asyncio.gather(*(outcome(sales, r) for r in requests))

    # The arrival order is the order the batcher sent the orders to PostgreSQL in.
    arrival = [r for write in store.writes for r in write]
    assert sorted(r.order_id for r in arrival) == sorted(r.order_id for r in requests)
    assert max(len(write) for write in store.writes) > 1  # it did batch
    stock, expected = 300, {}
    for request in arrival:  # one at a time, in that order
        if request.quantity <= stock:
            stock -= request.quantity
            expected[request.order_id] = stock
    sold = {
        r.order_id: a.remaining_stock
        for r, a in zip(requests, answers, strict=True)
        if isinstance(a, Sale)
    }
    assert sold == expected
    refused = [a for a in answers if not isinstance(a, Sale)]
    assert all(isinstance(a, InsufficientStock) for a in refused)
    assert len(refused) == 500 - len(expected)
    recorded = await inventory_db.fetch(
        "SELECT order_id, remaining_stock FROM sales WHERE product_id = $1", product
    )
    assert {r["order_id"]: r["remaining_stock"] for r in recorded} == expected
    assert await stock_of(inventory_db, product) == stock >= 0
    # One event per committed sale, in the sales' arrival order, with its stock.
    assert await events_of(inventory_db, product) == list(expected.items())


async def test_replays_and_conflicts_inside_and_across_batches(
    store, sales, inventory_db, new_product
):
    product = await new_product(stock=100)
    other = await new_product(stock=100)
    earlier = await use_cases.decrease_stock(sales, sale_request("ORD-bx-earlier", product, 5))
    async with HeldRow(inventory_db, product) as row:
        first, later = await start_held_batch(
            sales,
            inventory_db,
            product,
            sale_request("ORD-bx-first", product, 1),
            [
                sale_request("ORD-bx-a", product, 2),
                sale_request("ORD-bx-a", product, 2),  # a copy inside the batch: counts once
                sale_request("ORD-bx-a", product, 3),  # same id, another quantity
                sale_request("ORD-bx-earlier", product, 5),  # replay of an earlier batch
                sale_request("ORD-bx-earlier", product, 6),  # conflicting replay of it
                sale_request("ORD-bx-first", product, 1),  # replay of the write in flight
                sale_request("ORD-bx-b", product, 4),
            ],
        )
        await row.release()
        answers = [await first, *await asyncio.gather(*later)]
    assert max(len(write) for write in store.writes) == 7
    a = Sale("ORD-bx-a", product, 2, remaining_stock=92)
    assert answers[0] == Sale("ORD-bx-first", product, 1, remaining_stock=94)
    assert answers[1] == answers[2] == a
    assert isinstance(answers[3], OrderConflict)
    assert answers[4] == earlier
    assert isinstance(answers[5], OrderConflict)
    assert answers[6] == answers[0]
    assert answers[7] == Sale("ORD-bx-b", product, 4, remaining_stock=88)
    assert await stock_of(inventory_db, product) == 88
    assert await events_of(inventory_db, product) == [
        ("ORD-bx-earlier", 95),
        ("ORD-bx-first", 94),
        ("ORD-bx-a", 92),
        ("ORD-bx-b", 88),
    ]
    # Across products: an order id sold for one product is a conflict for another.
    with pytest.raises(OrderConflict):
        await use_cases.decrease_stock(sales, sale_request("ORD-bx-b", other, 4))
    assert await stock_of(inventory_db, other) == 100


async def test_a_batch_cut_off_from_the_database_mid_way_fails_whole(
    inventory_db_url, inventory_db, new_product
):
    """The batch's statement is stopped inside the function (sales already inserted
    for its first orders) by a lost connection: every caller of the batch gets
    UNAVAILABLE and nothing of it is committed; replays then sell each once."""
    target = urlsplit(inventory_db_url)
    proxy = TcpProxy(target.hostname, target.port or 5432)
    store = await recording_store(
        inventory_db_url.replace(f":{target.port}/", f":{proxy.port}/"), pool_size=3
    )
    sales = SaleBatcher(store, max_batch_size=100, max_queue_length=1000)
    product = await new_product(stock=50)
    elsewhere = await new_product(stock=50)
    batch = [sale_request(order(), product, q) for q in (1, 2, 3, 4)]
    blocker = batch[2].order_id
    try:
        async with HeldRow(inventory_db, product) as row, inventory_db.acquire() as conn:
            # An uncommitted sale of the third order id elsewhere: the batch's
            # function waits for it on that order, after inserting the first two.
            tx = conn.transaction()
            await tx.start()
            await conn.execute(
                "INSERT INTO sales (order_id, product_id, quantity, remaining_stock)"
                " VALUES ($1, $2, 1, 49)",
                blocker,
                elsewhere,
            )
            lone = sale_request(order(), product, 5)
            first, later = await start_held_batch(sales, inventory_db, product, lone, batch)
            await row.release()
            assert await first == Sale(lone.order_id, product, 5, 45)
            await eventually(
                lambda: waiting_backends(inventory_db, "SELECT record_sales"),
                what="the batch waits inside record_sales",
            )
            proxy.cut()
            answers = await asyncio.gather(*later)
            assert all(isinstance(a, Unavailable) for a in answers), answers
            # Its backend notices the lost client and rolls back before the blocker does.
            await eventually(
                lambda: running(inventory_db, "SELECT record_sales", present=False),
                what="the batch's backend gave up",
            )
            await tx.rollback()
        assert [len(w) for w in store.writes] == [1, 4]
        assert await stock_of(inventory_db, product) == 45
        assert not await inventory_db.fetchval(
            "SELECT count(*) FROM sales WHERE order_id = ANY($1::text[])",
            [r.order_id for r in batch],
        )
        assert await events_of(inventory_db, product) == [(lone.order_id, 45)]
        proxy.restore()
        await eventually(lambda: reconnected(store), what="the store reconnects")
        replays = [await use_cases.decrease_stock(sales, r) for r in batch]
        assert [s.remaining_stock for s in replays] == [44, 42, 39, 35]
        assert len(await events_of(inventory_db, product)) == 5
    finally:
        await store.close()
        proxy.close()


async def test_cancelled_callers_leave_the_batch_to_decide(store, sales, inventory_db, new_product):
    product = await new_product(stock=10)
    requests = [sale_request(order(), product, 1) for _ in range(5)]
    async with HeldRow(inventory_db, product) as row:
        first, later = await start_held_batch(
            sales, inventory_db, product, requests[0], requests[1:]
        )
        first.cancel()  # its write is waiting in PostgreSQL
        later[1].cancel()  # queued
        await row.release()
        answers = await asyncio.gather(*later, return_exceptions=True)
    with pytest.raises(asyncio.CancelledError):
        await first
    assert isinstance(answers[1], asyncio.CancelledError)
    assert [a.remaining_stock for i, a in enumerate(answers) if i != 1] == [8, 6, 5]
    # The cancelled orders were sold by their writes; a replay tells.
    assert (await use_cases.decrease_stock(sales, requests[0])).remaining_stock == 9
    assert (await use_cases.decrease_stock(sales, requests[2])).remaining_stock == 7
    assert await stock_of(inventory_db, product) == 5
    assert [left for _, left in await events_of(inventory_db, product)] == [9, 8, 7, 6, 5]
