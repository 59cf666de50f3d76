"""The sale batcher against an in-memory store whose writes the test holds open.

The fake (``HeldStore``, tests/support/fakes.py) records every write (one order
or a batch) and blocks it until the test lets it finish, so "a write is in
flight" is a state the test controls instead of a race. The SQL that keeps the
rules per order inside a batch is tested on PostgreSQL in
tests/integration/test_sale_batching.py.
"""

import asyncio

import pytest

from inventory_svc import use_cases
from inventory_svc.batching import SaleBatcher
from inventory_svc.domain import (
    InsufficientStock,
    OrderConflict,
    Product,
    Sale,
    SaleRequest,
)
from meshkit.errors import ResourceExhausted, Unavailable
from tests.support.fakes import HeldStore
from tests.support.sales import sale_request
from tests.support.waiting import eventually


def batcher(store: HeldStore, max_batch_size: int = 100, max_queue_length: int = 1000):
    return SaleBatcher(store, max_batch_size=max_batch_size, max_queue_length=max_queue_length)


async def hold_first_write(store: HeldStore, sales: SaleBatcher, first: SaleRequest):
    """Start a lone order and keep its write in flight; returns its task."""
    store.go.clear()
    task = asyncio.create_task(use_cases.decrease_stock(sales, first))
    await eventually(lambda: store.in_flight == 1, what="the first write is in flight")
    return task


def sell(sales: SaleBatcher, *requests: SaleRequest) -> list[asyncio.Task]:
    return [asyncio.create_task(use_cases.decrease_stock(sales, r)) for r in requests]


async def queued(sales: SaleBatcher, product_id: int, count: int) -> None:
    await eventually(lambda: sales.queued(product_id) == count, what=f"{count} orders queued")


async def test_a_lone_order_is_written_at_once_on_its_own():
    store = HeldStore(Product(1, "Laptop", 10))
    sale = await use_cases.decrease_stock(batcher(store), sale_request("A", 1, 3))
    assert sale == Sale("A", 1, 3, 7)
    assert store.writes == [["A"]]


async def test_orders_arriving_during_a_write_go_together_in_arrival_order():
    store = HeldStore(Product(1, "Laptop", 10))
    sales = batcher(store)
    first = await hold_first_write(store, sales, sale_request("A", 1, 1))
    later = sell(sales, *(sale_request(o, 1, q) for o, q in [("B", 5), ("C", 9), ("D", 4)]))
    await queued(sales, 1, 3)
    store.go.set()
    assert await first == Sale("A", 1, 1, 9)
    answers = await asyncio.gather(*later, return_exceptions=True)
    # C does not fit after B; D, smaller and later, still does.
    assert answers[0] == Sale("B", 1, 5, 4)
    assert isinstance(answers[1], InsufficientStock)
    assert answers[2] == Sale("D", 1, 4, 0)
    assert store.writes == [["A"], ["B", "C", "D"]]


async def test_products_have_their_own_lanes():
    store = HeldStore(Product(1, "Laptop", 10), Product(2, "Mouse", 10))
    sales = batcher(store)
    first = await hold_first_write(store, sales, sale_request("A", 1, 1))
    other = sell(sales, sale_request("B", 2, 1))
    await eventually(lambda: store.in_flight == 2, what="product 2 is written without waiting")
    store.go.set()
    await asyncio.gather(first, *other)
    assert store.writes == [["A"], ["B"]]


async def test_batches_are_at_most_max_batch_size():
    store = HeldStore(Product(1, "Laptop", 100))
    sales = batcher(store, max_batch_size=2)
    first = await hold_first_write(store, sales, sale_request("A", 1, 1))
    later = sell(sales, *(sale_request(o, 1, 1) for o in "BCDE"))
    await queued(sales, 1, 4)
    store.go.set()
    await asyncio.gather(first, *later)
    assert store.writes == [["A"], ["B", "C"], ["D", "E"]]


async def test_beyond_max_queue_length_a_call_is_refused_at_once():
    store = HeldStore(Product(1, "Laptop", 100))
    sales = batcher(store, max_queue_length=2)
    first = await hold_first_write(store, sales, sale_request("A", 1, 1))
    later = sell(sales, sale_request("B", 1, 1), sale_request("C", 1, 1))
    await queued(sales, 1, 2)
    with pytest.raises(ResourceExhausted, match="too many orders are waiting for product 1"):
        await use_cases.decrease_stock(sales, sale_request("D", 1, 1))
    store.go.set()
    await asyncio.gather(first, *later)
    assert "D" not in store.sales
    # The lane drained: the next order is written at once again.
    await use_cases.decrease_stock(sales, sale_request("D", 1, 1))
    assert store.writes[-1] == ["D"]


async def test_replays_and_conflicts_inside_one_batch():
    store = HeldStore(Product(1, "Laptop", 10))
    sales = batcher(store)
    first = await hold_first_write(store, sales, sale_request("A", 1, 1))
    later = sell(
        sales,
        sale_request("B", 1, 2),
        sale_request("B", 1, 2),  # a copy: counts once, same answer
        sale_request("B", 1, 3),  # same id, another payload
        sale_request("A", 1, 1),  # replay of the write before
    )
    await queued(sales, 1, 4)
    store.go.set()
    await first
    answers = await asyncio.gather(*later, return_exceptions=True)
    assert answers[0] == answers[1] == Sale("B", 1, 2, 7)
    assert isinstance(answers[2], OrderConflict)
    assert answers[3] == Sale("A", 1, 1, 9)
    assert store.products[1].stock == 7


async def test_a_failed_batch_fails_every_caller_and_the_lane_goes_on():
    store = HeldStore(Product(1, "Laptop", 10))
    sales = batcher(store)
    first = await hold_first_write(store, sales, sale_request("A", 1, 1))
    later = sell(sales, *(sale_request(o, 1, 1) for o in "BCD"))
    await queued(sales, 1, 3)
    store.fail_with = Unavailable("the inventory database is unavailable; try again later")
    store.go.set()
    answers = await asyncio.gather(first, *later, return_exceptions=True)
    assert all(isinstance(a, Unavailable) for a in answers)
    assert store.sales == {}
    store.fail_with = None
    assert await use_cases.decrease_stock(sales, sale_request("B", 1, 1)) == Sale("B", 1, 1, 9)


async def test_a_cancelled_caller_cancels_neither_the_batch_nor_the_others():
    store = HeldStore(Product(1, "Laptop", 10))
    sales = batcher(store)
    first = await hold_first_write(store, sales, sale_request("A", 1, 1))
    later = sell(sales, *(sale_request(o, 1, 1) for o in "BCD"))
    await queued(sales, 1, 3)
    first.cancel()  # its write is in flight
    later[1].cancel()  # C: still queued
    store.go.set()
    assert await later[0] == Sale("B", 1, 1, 8)
    assert await later[2] == Sale("D", 1, 1, 6)
    for cancelled in (first, later[1]):
        with pytest.raises(asyncio.CancelledError):
            await cancelled
    # Whether they were sold was the batch's call; a replay tells.
    assert await use_cases.decrease_stock(sales, sale_request("A", 1, 1)) == Sale("A", 1, 1, 9)
    assert await use_cases.decrease_stock(sales, sale_request("C", 1, 1)) == Sale("C", 1, 1, 7)
