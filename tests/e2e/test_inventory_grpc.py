"""Native gRPC through Envoy's single port, with the betterproto (grpclib) client."""

import pytest
from grpclib.const import Status
from grpclib.exceptions import GRPCError

import polyglot.inventory.v1 as pb
from tests.support.inventory import inventory_state
from tests.support.sales import order


async def test_get_stock_of_a_seed_product(inventory_via_envoy):
    reply = await inventory_via_envoy.get_stock(pb.GetStockRequest(product_id=2))
    assert (reply.product_id, reply.name) == (2, "Mouse Wireless")


async def test_decrease_and_replay(inventory_via_envoy, inventory_db, new_product):
    product = await new_product(stock=10)
    request = pb.DecreaseStockRequest(product_id=product, quantity=4, order_id=order())
    first = await inventory_via_envoy.decrease_stock(request)
    assert first == pb.DecreaseStockResponse(
        product_id=product, current_stock=6, order_id=request.order_id
    )
    before = await inventory_state(inventory_db)
    assert await inventory_via_envoy.decrease_stock(request) == first
    assert await inventory_state(inventory_db) == before


REJECTED = [
    (pb.DecreaseStockRequest(product_id=1, quantity=0, order_id="O-1"), Status.INVALID_ARGUMENT),
    (pb.DecreaseStockRequest(product_id=-1, quantity=1, order_id="O-1"), Status.INVALID_ARGUMENT),
    (pb.DecreaseStockRequest(product_id=1, quantity=1, order_id=""), Status.INVALID_ARGUMENT),
    (pb.DecreaseStockRequest(product_id=1, quantity=1, order_id="a b"), Status.INVALID_ARGUMENT),
    (
        pb.DecreaseStockRequest(product_id=1, quantity=99_999, order_id="O-1"),
        Status.INVALID_ARGUMENT,
    ),
    (pb.DecreaseStockRequest(product_id=424242, quantity=1, order_id="O-1"), Status.NOT_FOUND),
    (
        pb.DecreaseStockRequest(product_id=1, quantity=10_000, order_id="O-big"),
        Status.FAILED_PRECONDITION,
    ),
    (pb.GetStockRequest(product_id=0), Status.INVALID_ARGUMENT),
    (pb.GetStockRequest(product_id=424242), Status.NOT_FOUND),
    (pb.ListProductsRequest(page_size=1001), Status.INVALID_ARGUMENT),
    (pb.RestockProductRequest(product_id=1, quantity=-4), Status.INVALID_ARGUMENT),
]

METHOD = {
    pb.DecreaseStockRequest: "decrease_stock",
    pb.GetStockRequest: "get_stock",
    pb.ListProductsRequest: "list_products",
    pb.RestockProductRequest: "restock_product",
}


@pytest.mark.parametrize(("request_", "status"), REJECTED)
async def test_rejected_calls_get_the_right_status_and_change_nothing(
    inventory_via_envoy, inventory_db, request_, status
):
    before = await inventory_state(inventory_db)
    with pytest.raises(GRPCError) as raised:
        await getattr(inventory_via_envoy, METHOD[type(request_)])(request_)
    assert raised.value.status is status
    assert raised.value.message and "Traceback" not in raised.value.message
    assert await inventory_state(inventory_db) == before


async def test_order_conflict_is_already_exists(inventory_via_envoy, new_product):
    product = await new_product(stock=10)
    order_id = order()
    await inventory_via_envoy.decrease_stock(
        pb.DecreaseStockRequest(product_id=product, quantity=1, order_id=order_id)
    )
    with pytest.raises(GRPCError) as raised:
        await inventory_via_envoy.decrease_stock(
            pb.DecreaseStockRequest(product_id=product, quantity=2, order_id=order_id)
        )
    assert raised.value.status is Status.ALREADY_EXISTS
