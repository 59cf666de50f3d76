"""The inventory's rules, without any I/O."""

import pytest

from inventory_svc import domain
from inventory_svc.domain import Product, Sale
from meshkit import paging
from meshkit.errors import AlreadyExists, FailedPrecondition, InvalidArgument
from tests.support.sales import sale_request


def test_a_seed_style_request_is_valid():
    assert domain.sale_request("ORD-2024-001", 1, 2) == sale_request("ORD-2024-001", 1, 2)


@pytest.mark.parametrize(
    ("order_id", "product_id", "quantity", "complaint"),
    [
        ("ORD-1", 1, 0, "quantity must be between 1 and 10000, got 0"),
        ("ORD-1", 1, -5, "quantity must be between 1 and 10000, got -5"),
        ("ORD-1", 1, 10_001, "quantity must be between 1 and 10000, got 10001"),
        ("ORD-1", 0, 1, "product_id must be a positive integer, got 0"),
        ("ORD-1", -3, 1, "product_id must be a positive integer, got -3"),
        ("", 1, 1, "order_id is required"),
        ("x" * 65, 1, 1, "order_id must be 1 to 64 characters"),
        ("-starts-with-dash", 1, 1, "order_id must be 1 to 64 characters"),
        ("has space", 1, 1, "order_id must be 1 to 64 characters"),
        ("ORD\n1", 1, 1, "order_id must be 1 to 64 characters"),
    ],
)
def test_invalid_sale_requests_say_what_is_wrong(order_id, product_id, quantity, complaint):
    with pytest.raises(InvalidArgument, match=complaint):
        domain.sale_request(order_id, product_id, quantity)


def test_longest_allowed_order_id_is_accepted():
    order_id = "A" + "b.c:d_e-" * 7 + "xyz1234"  # 64 characters
    assert len(order_id) == 64
    assert domain.sale_request(order_id, 1, 1).order_id == order_id


def test_replay_with_same_product_and_quantity_returns_the_recorded_sale():
    recorded = Sale("ORD-1", 1, 2, remaining_stock=98)
    assert domain.replayed_sale(recorded, sale_request("ORD-1", 1, 2)) is recorded


@pytest.mark.parametrize("request_", [sale_request("ORD-1", 2, 2), sale_request("ORD-1", 1, 3)])
def test_replay_with_other_product_or_quantity_is_a_conflict(request_):
    recorded = Sale("ORD-1", 1, 2, remaining_stock=98)
    with pytest.raises(AlreadyExists, match="order ORD-1 was already used to sell 2 unit"):
        domain.replayed_sale(recorded, request_)


def test_insufficient_stock_message_says_how_many_are_left():
    error = domain.InsufficientStock(Product(1, "Laptop Gamer", 3), requested=5)
    assert isinstance(error, FailedPrecondition)
    assert str(error) == "insufficient stock for product 1 (Laptop Gamer): 5 requested, 3 left"


@pytest.mark.parametrize("quantity", [0, -1, 1_000_001])
def test_restock_quantity_is_bounded(quantity):
    with pytest.raises(InvalidArgument, match="quantity must be between 1 and 1000000"):
        domain.restock_quantity(quantity)


def test_paging_defaults_and_round_trip():
    first = domain.page(0, "")
    assert first == domain.Page(after_product_id=0, size=domain.DEFAULT_PAGE_SIZE)
    fetched = [Product(i, f"p{i}", 1) for i in range(1, 4)]  # size 2 asked, 3 fetched
    products, token = domain.split_page(fetched, domain.Page(0, 2))
    assert [p.product_id for p in products] == [1, 2]
    assert domain.page(2, token) == domain.Page(after_product_id=2, size=2)


def test_last_page_has_no_token():
    fetched = [Product(i, f"p{i}", 1) for i in range(1, 3)]
    assert domain.split_page(fetched, domain.Page(0, 2)) == (fetched, "")


@pytest.mark.parametrize("token", ["garbage!", "YWZ0ZXI6eA==", "Zm9vOjE="])  # -, after:x, foo:1
def test_foreign_page_tokens_are_rejected(token):
    with pytest.raises(InvalidArgument, match="page_token is not one this service issued"):
        domain.page(10, token)


@pytest.mark.parametrize("size", [-1, 1001])
def test_page_size_is_bounded(size):
    with pytest.raises(InvalidArgument, match="page_size must be between 0 and 1000"):
        domain.page(size, "")


@pytest.mark.parametrize("after", [0, -1, 2**31, 2**63])
def test_page_tokens_with_impossible_product_ids_are_rejected(after):
    """Well-formed tokens, but no product has such an id (PostgreSQL integer: INTERNAL)."""
    with pytest.raises(InvalidArgument, match="page_token is not one this service issued"):
        domain.page(10, paging.encode_cursor(after))


def test_page_token_with_the_largest_product_id_is_accepted():
    token = paging.encode_cursor(domain.MAX_PRODUCT_ID)
    assert domain.page(10, token).after_product_id == domain.MAX_PRODUCT_ID
