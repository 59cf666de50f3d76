"""The transactional outbox on a real PostgreSQL: what a sale writes, how the relay claims.

These tests use a database of their own: the session mesh's relay must not
publish (and so mark) the rows they inspect.
"""

import asyncio
import dataclasses
import json
import uuid

import asyncpg
import pytest

import polyglot.events.v1 as events_pb
from inventory_svc import use_cases
from inventory_svc.domain import InsufficientStock
from inventory_svc.relay import OutboxEntry
from inventory_svc.store import MIGRATIONS, PostgresInventory, PostgresOutbox
from meshkit.events import PRODUCT_SOLD
from tests.support.sales import order, sale_request
from tests.support.servers import migrated_database
from tests.support.waiting import eventually


@pytest.fixture(scope="module")
async def outbox_db_url():
    async with migrated_database("polyglot_test_outbox", MIGRATIONS) as url:
        yield url


@pytest.fixture
async def inventory(outbox_db_url):
    store = PostgresInventory(outbox_db_url, pool_size=4, timeout_seconds=5)
    await store.ready()
    outbox = PostgresOutbox(store.db)
    async with store.db.connection() as conn:  # every test starts from an empty outbox
        await conn.execute("DELETE FROM outbox")
    yield store, outbox
    await outbox.close()
    await store.close()


async def add_product(store: PostgresInventory, stock: int = 100) -> int:
    async with store.db.connection() as conn:
        return await conn.fetchval(
            "INSERT INTO products (product_id, name, stock)"
            " SELECT coalesce(max(product_id), 0) + 1, 'Outbox test', $1 FROM products"
            " RETURNING product_id",
            stock,
        )


async def sell(store: PostgresInventory, product: int, quantity: int = 1, order_id: str = ""):
    return await use_cases.decrease_stock(
        store, sale_request(order_id or order(), product, quantity)
    )


async def drain(outbox: PostgresOutbox, limit: int = 100) -> list[OutboxEntry]:
    published: list[OutboxEntry] = []

    async def publish(entry: OutboxEntry) -> None:
        published.append(entry)

    await outbox.publish_pending(limit, publish)
    return published


def payload(entry: OutboxEntry) -> dict:
    return json.loads(entry.body)


async def test_a_sale_writes_one_event_a_replay_or_refusal_none(inventory):
    store, outbox = inventory
    product = await add_product(store, stock=5)
    sale = await sell(store, product, 2, order_id="ORD-outbox-1")
    await sell(store, product, 2, order_id="ORD-outbox-1")  # replay
    with pytest.raises(InsufficientStock):
        await sell(store, product, 50)
    [entry] = await drain(outbox)
    assert entry.routing_key == PRODUCT_SOLD
    # The body is published as stored: proto3 JSON with the proto field names.
    body = payload(entry)
    assert set(body) == {f.name for f in dataclasses.fields(events_pb.ProductSold)}
    event = events_pb.ProductSold().from_dict(body)
    assert uuid.UUID(event.event_id) == entry.event_id
    assert (event.order_id, event.product_id, event.quantity, event.remaining_stock) == (
        "ORD-outbox-1",
        product,
        2,
        sale.remaining_stock,
    )
    assert event.product_name == "Outbox test"
    assert event.occurred_at is not None


async def test_events_are_published_oldest_first_and_only_once(inventory):
    store, outbox = inventory
    products = [await add_product(store) for _ in range(3)]
    orders = [(await sell(store, p)).order_id for p in products * 2]
    first = await drain(outbox)
    assert [payload(e)["order_id"] for e in first] == orders
    assert [e.position for e in first] == sorted(e.position for e in first)
    assert await drain(outbox) == []
    assert (await outbox.backlog()).unpublished == 0


async def test_a_failed_publish_keeps_the_confirmed_and_retries_the_rest(inventory):
    store, outbox = inventory
    product = await add_product(store)
    orders = [(await sell(store, product)).order_id for _ in range(4)]
    offered: list[str] = []

    async def broker_refuses_the_third(entry: OutboxEntry) -> None:
        offered.append(payload(entry)["order_id"])
        if len(offered) == 3:
            raise ConnectionError("broker refused")

    with pytest.raises(ConnectionError):
        await outbox.publish_pending(10, broker_refuses_the_third)
    assert offered == orders  # handed over in order
    assert (await outbox.backlog()).unpublished == 1  # the three confirmed were marked
    assert [payload(e)["order_id"] for e in await drain(outbox)] == [orders[2]]


async def test_two_relays_share_the_work_and_keep_each_products_order(inventory):
    """Relay A holds the first events of products 1 and 2 (FOR UPDATE) while relay B
    runs: B skips them (SKIP LOCKED), and also the later events of those products,
    which must wait for A; it publishes only product 3's event."""
    store, outbox = inventory
    p1, p2, p3 = [await add_product(store) for _ in range(3)]
    for product in (p1, p2, p1, p2, p3):
        await sell(store, product)

    a_published: list[OutboxEntry] = []
    a_holding, a_may_go_on = asyncio.Event(), asyncio.Event()

    async def relay_a(entry: OutboxEntry) -> None:
        a_holding.set()
        await a_may_go_on.wait()
        a_published.append(entry)

    a = asyncio.create_task(outbox.publish_pending(2, relay_a))
    await a_holding.wait()
    b_published = await drain(outbox)
    assert [payload(e)["product_id"] for e in b_published] == [p3]
    a_may_go_on.set()
    assert await a == 2
    assert [payload(e)["product_id"] for e in a_published] == [p1, p2]
    rest = await drain(outbox)
    assert [payload(e)["product_id"] for e in rest] == [p1, p2]
    every = [e.event_id for e in a_published + b_published + rest]
    assert len(every) == len(set(every)) == 5


async def test_a_product_held_between_two_claimed_events_stops_only_the_later(
    inventory, outbox_db_url
):
    """Positions are taken at insert, rows appear at commit: a sale committing late
    lands before events relay A already holds. Relay B then claims that late event
    and the product's event after A's, and may publish only the first."""
    store, outbox = inventory
    product = await add_product(store)
    late = await asyncpg.connect(outbox_db_url)
    try:
        async with late.transaction():
            await late.execute(
                "INSERT INTO outbox (event_id, routing_key, ordering_key, payload)"
                " VALUES ($1, $2, $3, $4)",
                uuid.uuid4(),
                PRODUCT_SOLD,
                str(product),
                json.dumps({"product_id": product, "order_id": "ORD-late"}),
            )
            _held_by_a, after = [(await sell(store, product)).order_id for _ in range(2)]
            a_holding, a_may_go_on = asyncio.Event(), asyncio.Event()

            async def relay_a(entry: OutboxEntry) -> None:
                a_holding.set()
                await a_may_go_on.wait()

            a = asyncio.create_task(outbox.publish_pending(1, relay_a))
            await a_holding.wait()
        b_published = await drain(outbox)
        assert [payload(e)["order_id"] for e in b_published] == ["ORD-late"]
        a_may_go_on.set()
        assert await a == 1
        assert [payload(e)["order_id"] for e in await drain(outbox)] == [after]
    finally:
        await late.close()


async def test_only_a_committed_sale_wakes_the_relay(inventory, outbox_db_url):
    store, outbox = inventory
    product = await add_product(store, stock=2)
    await sell(store, product, 1, order_id="ORD-wake-1")
    wakes: list[int] = []
    await outbox.listen(lambda: wakes.append(1))
    # A second listener sees each notification's payload, and a sentinel sent
    # after the calls: notifications arrive in commit order, so once the sentinel
    # is in, any notification from the refusal or the replay would be too.
    seen: list[str] = []
    listener = await asyncpg.connect(outbox_db_url)
    await listener.add_listener("outbox", lambda _c, _pid, _channel, payload: seen.append(payload))
    try:
        with pytest.raises(InsufficientStock):
            await sell(store, product, 5)  # refused: inserts no event
        await sell(store, product, 1, order_id="ORD-wake-1")  # replay: rolled back
        await sell(store, product, 1)
        await listener.execute("SELECT pg_notify('outbox', 'sentinel')")
        await eventually(lambda: "sentinel" in seen, what="the sentinel notification")
    finally:
        await listener.close()
    assert seen == ["", "sentinel"]  # one notification: the committed sale's
    await eventually(lambda: wakes, what="the relay woken by the committed sale")


async def test_clean_up_removes_only_published_rows(inventory):
    store, outbox = inventory
    product = await add_product(store)
    await sell(store, product)
    await drain(outbox)
    await sell(store, product)  # stays unpublished
    assert await outbox.delete_published(older_than_seconds=0) == 1
    backlog = await outbox.backlog()
    assert backlog.unpublished == 1 and backlog.oldest is not None
