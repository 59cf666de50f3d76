"""The REST/JSON face of InventoryService, through a real Envoy transcoder."""

import pytest

from tests.support.inventory import inventory_state, stock_of
from tests.support.sales import decrease_body, order


def error_body(code: int, message_part: str):
    """Matcher for the one JSON error shape every REST error has."""

    class Matches:
        def __eq__(self, body: object) -> bool:
            return (
                isinstance(body, dict)
                and set(body) == {"code", "message", "details"}
                and body["code"] == code
                and message_part in body["message"]
                and body["details"] == []
            )

        def __repr__(self) -> str:
            return f"<error body code={code} message containing {message_part!r}>"

    return Matches()


async def test_seed_example_decreases_stock(http, inventory_db):
    """The seed README's own walk-through: POST /inventory/decrease, then GET /inventory/1."""
    before = (await http.get("/inventory/1")).json()
    assert before["product_id"] == 1 and before["name"] == "Laptop Gamer"
    reply = await http.post(
        "/inventory/decrease", json={"product_id": 1, "quantity": 2, "order_id": "ORD-2024-001"}
    )
    assert reply.status_code == 200
    assert reply.headers["content-type"] == "application/json"
    assert reply.json() == {
        "product_id": 1,
        "current_stock": before["stock"] - 2,
        "order_id": "ORD-2024-001",
    }
    after = await http.get("/inventory/1")
    assert after.json() == {**before, "stock": before["stock"] - 2}


async def test_list_products_pages_in_snake_case(http, new_product):
    await new_product(stock=0)
    first = (await http.get("/inventory", params={"page_size": 1})).json()
    assert first["products"] == [
        {"product_id": 1, "name": "Laptop Gamer", "stock": first["products"][0]["stock"]}
    ]
    assert first["next_page_token"]
    second = (
        await http.get(
            "/inventory", params={"page_size": 1, "page_token": first["next_page_token"]}
        )
    ).json()
    assert second["products"][0]["product_id"] == 2
    everything = (await http.get("/inventory", params={"page_size": 1000})).json()
    assert everything["next_page_token"] == ""
    # zeros are printed, not omitted
    assert any(p["stock"] == 0 for p in everything["products"])


async def test_replayed_order_gets_the_same_answer(http, inventory_db, new_product):
    product = await new_product(stock=10)
    body = decrease_body(product, 3)
    first = await http.post("/inventory/decrease", json=body)
    before = await inventory_state(inventory_db)
    replay = await http.post("/inventory/decrease", json=body)
    assert replay.status_code == first.status_code == 200
    expected = {"product_id": product, "current_stock": 7, "order_id": body["order_id"]}
    assert first.json() == replay.json() == expected
    assert await inventory_state(inventory_db) == before


async def test_restock_adds_units(http, inventory_db, new_product):
    product = await new_product(stock=1)
    reply = await http.post(f"/inventory/{product}/restock", json={"quantity": 4})
    assert reply.status_code == 200
    assert reply.json() == {"product_id": product, "name": f"Test product {product}", "stock": 5}
    assert await stock_of(inventory_db, product) == 5


# (method, path, JSON body or raw text, HTTP status, gRPC code, part of the message)
REJECTED = [
    (
        "POST",
        "/inventory/decrease",
        {"product_id": 1, "quantity": 0, "order_id": "O-1"},
        400,
        3,
        "quantity must be between 1 and 10000, got 0",
    ),
    (
        "POST",
        "/inventory/decrease",
        {"product_id": 1, "quantity": -1, "order_id": "O-1"},
        400,
        3,
        "quantity must be between 1 and 10000, got -1",
    ),
    (
        "POST",
        "/inventory/decrease",
        {"product_id": 1, "quantity": 10_001, "order_id": "O-1"},
        400,
        3,
        "quantity must be between 1 and 10000",
    ),
    (
        "POST",
        "/inventory/decrease",
        {"product_id": 1, "quantity": 1, "order_id": ""},
        400,
        3,
        "order_id is required",
    ),
    (
        "POST",
        "/inventory/decrease",
        {"product_id": 1, "quantity": 1},
        400,
        3,
        "order_id is required",
    ),
    (
        "POST",
        "/inventory/decrease",
        {"product_id": 1, "quantity": 1, "order_id": "x" * 65},
        400,
        3,
        "order_id must be 1 to 64 characters",
    ),
    (
        "POST",
        "/inventory/decrease",
        {"product_id": 0, "quantity": 1, "order_id": "O-1"},
        400,
        3,
        "product_id must be a positive integer, got 0",
    ),
    (
        "POST",
        "/inventory/decrease",
        {"product_id": 999_999, "quantity": 1, "order_id": "O-1"},
        404,
        5,
        "product 999999 does not exist",
    ),
    (
        "POST",
        "/inventory/decrease",
        {"product_id": 1, "quantity": 2**31, "order_id": "O-1"},
        400,
        3,
        "quantity: invalid value 2147483648 for type TYPE_INT32",
    ),
    (
        "POST",
        "/inventory/decrease",
        {"product_id": "one", "quantity": 1, "order_id": "O-1"},
        400,
        3,
        "product_id",
    ),
    (
        "POST",
        "/inventory/decrease",
        '{"product_id": 1, "quantity": 2,',
        400,
        3,
        "Unexpected end of string",
    ),
    ("POST", "/inventory/decrease", "not json at all", 400, 3, "Unexpected token"),
    ("GET", "/inventory/abc", None, 400, 3, 'product_id: invalid value "abc" for type TYPE_INT32'),
    ("GET", "/inventory/99999999999", None, 400, 3, "for type TYPE_INT32"),
    ("GET", "/inventory/0", None, 400, 3, "product_id must be a positive integer, got 0"),
    ("GET", "/inventory/999999", None, 404, 5, "product 999999 does not exist"),
    ("GET", "/inventory/1?colour=red", None, 400, 3, 'Could not find field "colour"'),
    ("GET", "/inventory?page_size=5000", None, 400, 3, "page_size must be between 0 and 1000"),
    ("GET", "/inventory?page_token=nonsense", None, 400, 3, "page_token is not one this service"),
    ("GET", "/nowhere", None, 404, 5, "Could not resolve /nowhere to a method"),
    ("DELETE", "/inventory/1", None, 405, 3, "this method is not allowed on this path"),
    ("POST", "/inventory/999999/restock", {"quantity": 1}, 404, 5, "product 999999 does not exist"),
    ("POST", "/inventory/1/restock", {"quantity": 0}, 400, 3, "quantity must be between 1 and"),
]


@pytest.mark.parametrize(("method", "path", "body", "status", "code", "message"), REJECTED)
async def test_rejected_requests_get_json_errors_and_change_nothing(
    http, inventory_db, method, path, body, status, code, message
):
    before = await inventory_state(inventory_db)
    if isinstance(body, str):
        reply = await http.request(
            method, path, content=body, headers={"content-type": "application/json"}
        )
    else:
        reply = await http.request(method, path, json=body)
    assert reply.status_code == status, reply.text
    assert reply.headers["content-type"] == "application/json"
    assert reply.json() == error_body(code, message)
    assert "Traceback" not in reply.text
    assert await inventory_state(inventory_db) == before


async def test_insufficient_stock_is_400_with_what_is_left(http, inventory_db, new_product):
    product = await new_product(stock=3)
    before = await inventory_state(inventory_db)
    reply = await http.post("/inventory/decrease", json=decrease_body(product, 5))
    assert reply.status_code == 400
    assert reply.json() == error_body(
        9, f"product {product} (Test product {product}): 5 requested, 3 left"
    )
    assert await inventory_state(inventory_db) == before


async def test_order_id_reused_for_another_sale_is_409(http, inventory_db, new_product):
    product = await new_product(stock=10)
    order_id = order()
    await http.post("/inventory/decrease", json=decrease_body(product, 1, order_id))
    before = await inventory_state(inventory_db)
    reply = await http.post("/inventory/decrease", json=decrease_body(product, 2, order_id))
    assert reply.status_code == 409
    assert reply.json() == error_body(6, f"order {order_id} was already used")
    assert await inventory_state(inventory_db) == before
