"""inventory_svc's use cases against an in-memory store (tests/support/fakes.py):
every branch in milliseconds. The SQL is tested on PostgreSQL in tests/integration.
"""

import pytest

from inventory_svc import use_cases
from inventory_svc.domain import (
    MAX_STOCK,
    InsufficientStock,
    OrderConflict,
    Product,
    ProductNotFound,
    Sale,
    StockLimitExceeded,
)
from meshkit.errors import InvalidArgument
from tests.support.fakes import FakeInventory
from tests.support.sales import sale_request


def laptop(stock: int = 10) -> Product:
    return Product(1, "Laptop Gamer", stock)


async def test_a_sale_decreases_the_stock():
    store = FakeInventory(laptop())
    sale = await use_cases.decrease_stock(store, sale_request("ORD-1", 1, 3))
    assert sale == Sale("ORD-1", 1, 3, remaining_stock=7)
    assert store.products[1].stock == 7


async def test_a_replay_gets_the_first_answer_and_sells_nothing():
    store = FakeInventory(laptop())
    first = await use_cases.decrease_stock(store, sale_request("ORD-1", 1, 3))
    await use_cases.decrease_stock(store, sale_request("ORD-2", 1, 1))
    assert await use_cases.decrease_stock(store, sale_request("ORD-1", 1, 3)) == first
    assert store.products[1].stock == 6


async def test_an_order_id_reused_for_another_sale_is_a_conflict():
    store = FakeInventory(laptop())
    await use_cases.decrease_stock(store, sale_request("ORD-1", 1, 3))
    with pytest.raises(OrderConflict, match="already used to sell 3 unit"):
        await use_cases.decrease_stock(store, sale_request("ORD-1", 1, 4))


async def test_too_little_stock_says_how_much_is_left():
    store = FakeInventory(laptop(stock=2))
    with pytest.raises(InsufficientStock, match="3 requested, 2 left"):
        await use_cases.decrease_stock(store, sale_request("ORD-1", 1, 3))
    assert store.sales == {}


async def test_selling_an_unknown_product_is_not_found():
    with pytest.raises(ProductNotFound, match="product 9 does not exist"):
        await use_cases.decrease_stock(FakeInventory(), sale_request("ORD-1", 9, 1))


async def test_an_order_id_already_used_wins_over_an_unknown_product():
    """Why nothing was written is decided in order: the recorded sale first."""
    store = FakeInventory(laptop())
    await use_cases.decrease_stock(store, sale_request("ORD-1", 1, 1))
    with pytest.raises(OrderConflict):
        await use_cases.decrease_stock(store, sale_request("ORD-1", 9, 1))


async def test_get_product_checks_the_id_before_asking_the_store():
    with pytest.raises(InvalidArgument, match="positive integer, got 0"):
        await use_cases.get_product(FakeInventory(), 0)
    with pytest.raises(ProductNotFound):
        await use_cases.get_product(FakeInventory(), 5)


async def test_restock_adds_up_to_the_maximum_stock():
    store = FakeInventory(laptop())
    assert (await use_cases.restock_product(store, 1, 5)).stock == 15
    with pytest.raises(StockLimitExceeded, match="would exceed the maximum"):
        await use_cases.restock_product(FakeInventory(laptop(stock=MAX_STOCK - 1)), 1, 2)
    with pytest.raises(ProductNotFound):
        await use_cases.restock_product(store, 7, 1)
    with pytest.raises(InvalidArgument, match="quantity must be between 1"):
        await use_cases.restock_product(store, 1, 0)


async def test_products_are_listed_page_by_page():
    store = FakeInventory(*(Product(i, f"P{i}", i) for i in range(1, 6)))
    first, token = await use_cases.list_products(store, 2, "")
    second, token = await use_cases.list_products(store, 2, token)
    third, token = await use_cases.list_products(store, 2, token)
    assert [p.product_id for p in first + second + third] == [1, 2, 3, 4, 5]
    assert token == ""
