"""The docs generators: OpenAPI and the gRPC reference from the descriptor set.

Fast and offline (no Node, no mesh); the pages themselves are checked in a real
browser by tests/e2e/test_docs_pages.py.
"""

import json
import re

import pytest

from blueprint.contracts import Contracts
from blueprint.topology import DOCS_SITE, GRPC_PORTS
from devtools import openapi as openapi_module
from devtools.docs_site import doc_html, render_pages
from devtools.openapi import openapi
from inventory_svc import domain as inventory_domain
from meshkit.limits import Limit

# Rendering the AsyncAPI page: see devtools/asyncapi.py for why this warning is harmless.
pytestmark = pytest.mark.filterwarnings("ignore:Default value .* is not JSON serializable")

ROUTES = {
    "InventoryService-GetStock": ("get", "/inventory/{product_id}"),
    "InventoryService-ListProducts": ("get", "/inventory"),
    "InventoryService-DecreaseStock": ("post", "/inventory/decrease"),
    "InventoryService-RestockProduct": ("post", "/inventory/{product_id}/restock"),
    "AnalyticsService-GetProductSales": ("get", "/analytics/products/{product_id}/sales"),
    "AnalyticsService-GetSalesSummary": ("get", "/analytics/summary"),
    "AnalyticsService-ListSaleEvents": ("get", "/analytics/sales"),
    "NotificationService-ListNotifications": ("get", "/notifications"),
}


@pytest.fixture(scope="module")
def pages(contracts: Contracts) -> dict[str, str]:
    return render_pages(contracts)


def operations(spec: dict) -> dict[str, tuple[str, str, dict]]:
    """operationId → (method, path, operation)."""
    return {
        op["operationId"]: (method, path, op)
        for path, methods in spec["paths"].items()
        for method, op in methods.items()
    }


def test_every_rpc_of_the_descriptor_set_has_its_http_route(contracts, spec):
    assert {s.backend for s in contracts.services} == set(GRPC_PORTS)
    rpcs = {f"{s.name}-{r.name}" for s in contracts.services for r in s.rpcs}
    assert rpcs == set(ROUTES)
    assert {op_id: (m, p) for op_id, (m, p, _) in operations(spec).items()} == ROUTES


def test_servers_for_clients_and_the_same_origin_and_one_tag_per_service(spec):
    assert spec["openapi"] == "3.0.3"
    # Clients and generators take the first; the docs' Swagger UI picks "/" (rest.html).
    assert [s["url"] for s in spec["servers"]] == ["http://localhost:8080", "/"]
    assert all(s["description"] for s in spec["servers"])
    tags = [t["name"] for t in spec["tags"]]
    assert tags == ["AnalyticsService", "InventoryService", "NotificationService"]
    for op_id, (_, _, op) in operations(spec).items():
        assert op["tags"] == [op_id.split("-")[0]]


@pytest.mark.parametrize(
    ("op_id", "errors"),
    [
        (
            "InventoryService-DecreaseStock",
            ["400", "401", "403", "404", "409", "413", "415", "429", "431", "503", "504"],
        ),
        ("InventoryService-GetStock", ["400", "404", "429", "431", "503", "504"]),
        ("InventoryService-ListProducts", ["400", "429", "431", "503", "504"]),
        # Its comment says "there is no NOT_FOUND".
        ("AnalyticsService-GetProductSales", ["400", "401", "403", "429", "431", "503", "504"]),
    ],
)
def test_error_responses_are_the_ones_the_rpc_can_return(spec, op_id, errors):
    responses = operations(spec)[op_id][2]["responses"]
    assert sorted(responses) == ["200", *errors]


def test_each_operation_states_the_scope_envoy_enforces(spec):
    """The same table (blueprint/access.py) drives Envoy's RBAC and these requirements."""
    from blueprint.access import method_access

    scopes = {f"{m.service.rsplit('.', 1)[-1]}-{m.method}": m.scope for m in method_access()}
    assert spec["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    for op_id, (_, _, op) in operations(spec).items():
        if scopes[op_id]:
            assert op["security"] == [{"bearer": []}]
            assert op["x-required-scopes"] == [scopes[op_id]]
            assert f"scope `{scopes[op_id]}`" in op["description"]
        else:
            assert op["security"] == []
    assert scopes["InventoryService-DecreaseStock"] == "orders:write"
    assert scopes["InventoryService-RestockProduct"] == "inventory:admin"
    assert scopes["InventoryService-GetStock"] is None


def test_error_responses_carry_the_json_status_body(spec):
    components = spec["components"]
    status = components["schemas"]["Status"]
    assert status["required"] == ["code", "message", "details"]
    for name, response in components["responses"].items():
        body = response["content"]["application/json"]
        assert body["schema"] == {"$ref": "#/components/schemas/Status"}, name
        for example in body["examples"].values():
            assert set(example["value"]) == {"code", "message", "details"}
    grpc_codes = {
        name: {e["value"]["code"] for e in r["content"]["application/json"]["examples"].values()}
        for name, r in components["responses"].items()
    }
    assert grpc_codes == {
        "BadRequest": {3, 9},
        "Unauthenticated": {16},
        "PermissionDenied": {7},
        "NotFound": {5},
        "Conflict": {6},
        "PayloadTooLarge": {3},
        "UnsupportedMediaType": {3},
        "TooManyRequests": {8},
        "RequestHeaderFieldsTooLarge": {3},
        "Unavailable": {14},
        "GatewayTimeout": {4},
    }


def test_parameters_follow_the_http_rule(spec):
    ops = operations(spec)
    get_stock = ops["InventoryService-GetStock"][2]
    assert get_stock["parameters"] == [
        {
            "name": "product_id",
            "in": "path",
            "required": True,
            "schema": {
                "type": "integer",
                "format": "int32",
                "minimum": 1,
                "maximum": inventory_domain.MAX_PRODUCT_ID,
                "example": 1,
            },
            "description": "Product id (positive).",
        }
    ]
    listing = ops["InventoryService-ListProducts"][2]
    assert [(p["name"], p["in"]) for p in listing["parameters"]] == [
        ("page_size", "query"),
        ("page_token", "query"),
    ]
    summary = ops["AnalyticsService-GetSalesSummary"][2]["parameters"][0]
    # Optional query parameters carry no example: Swagger UI would pre-fill them.
    assert summary["schema"] == {"type": "string", "format": "date-time"}


def test_request_schemas_state_the_limits_the_domain_enforces(spec):
    schemas = spec["components"]["schemas"]
    decrease = schemas["inventory.v1.DecreaseStockRequest"]
    assert decrease["required"] == ["product_id", "quantity", "order_id"]
    quantity, order_id = decrease["properties"]["quantity"], decrease["properties"]["order_id"]
    assert (quantity["minimum"], quantity["maximum"]) == (1, inventory_domain.MAX_SALE_QUANTITY)
    assert order_id["maxLength"] == inventory_domain.MAX_ORDER_ID_LENGTH
    assert order_id["pattern"] == f"^{inventory_domain.ORDER_ID.pattern}$"
    ops = operations(spec)
    restock = ops["InventoryService-RestockProduct"][2]["requestBody"]["content"]
    body = restock["application/json"]["schema"]
    assert body["properties"]["quantity"]["maximum"] == inventory_domain.MAX_RESTOCK_QUANTITY
    assert body["required"] == ["quantity"]
    by_name = {
        (op, p["name"]): p["schema"] for op, (_, _, o) in ops.items() for p in o["parameters"]
    }
    assert by_name["NotificationService-ListNotifications", "page_size"]["maximum"] == 500
    assert by_name["AnalyticsService-GetSalesSummary", "top_products"]["maximum"] == 100
    assert "maxLength" in by_name["InventoryService-ListProducts", "page_token"]
    # Response messages carry no limits.
    assert (
        "maximum"
        not in schemas["inventory.v1.DecreaseStockResponse"]["properties"]["current_stock"]
    )


def test_request_examples_are_a_sale_the_services_accept(spec):
    """Swagger UI's "Try it out" and the Postman collection send these."""
    decrease = spec["components"]["schemas"]["inventory.v1.DecreaseStockRequest"]
    example = {name: field["example"] for name, field in decrease["properties"].items()}
    assert example == {"product_id": 1, "quantity": 2, "order_id": "ORD-2024-001"}
    assert inventory_domain.sale_request(**example)  # the domain's own check accepts it


@pytest.mark.parametrize(
    ("name", "value"), [("quantity", 0), ("order_id", "no spaces"), ("quantity", "2")]
)
def test_an_example_the_field_refuses_fails_the_build(contracts, monkeypatch, name, value):
    monkeypatch.setitem(openapi_module.EXAMPLES, name, value)
    with pytest.raises(ValueError, match=rf"EXAMPLES\['{name}'\]"):
        openapi(contracts)


def test_a_limit_on_a_field_the_contracts_lack_fails_the_build(contracts):
    with pytest.raises(ValueError, match=r"DecreaseStockRequest\.qty"):
        openapi(contracts, {"polyglot.inventory.v1.DecreaseStockRequest.qty": Limit(minimum=1)})


def test_request_bodies_hold_the_fields_not_bound_in_the_path(spec):
    ops = operations(spec)
    decrease = ops["InventoryService-DecreaseStock"][2]["requestBody"]
    assert decrease["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/inventory.v1.DecreaseStockRequest"
    }
    restock = ops["InventoryService-RestockProduct"][2]
    body = restock["requestBody"]["content"]["application/json"]["schema"]
    assert list(body["properties"]) == ["quantity"]
    assert [p["name"] for p in restock["parameters"]] == ["product_id"]


def test_schemas_follow_the_proto3_json_mapping_envoy_prints(spec):
    schemas = spec["components"]["schemas"]
    sales = schemas["analytics.v1.ProductSales"]["properties"]
    assert sales["units_sold"]["type"] == "string"  # int64
    assert sales["units_sold"]["format"] == "int64"
    assert sales["last_sold_at"]["format"] == "date-time"  # Timestamp
    assert sales["product_id"]["type"] == "integer"
    summary = schemas["analytics.v1.GetSalesSummaryResponse"]["properties"]["top_products"]
    assert summary["type"] == "array"
    assert summary["items"] == {"$ref": "#/components/schemas/analytics.v1.ProductSales"}
    status = schemas["notify.v1.Notification"]["properties"]["status"]
    assert status["allOf"] == [{"$ref": "#/components/schemas/notify.v1.NotificationStatus"}]
    assert schemas["notify.v1.NotificationStatus"]["enum"] == [
        "NOTIFICATION_STATUS_UNSPECIFIED",
        "NOTIFICATION_STATUS_SENDING",
        "NOTIFICATION_STATUS_SENT",
    ]
    assert (
        "Caller's order id"
        in (schemas["inventory.v1.DecreaseStockRequest"]["properties"]["order_id"]["description"])
    )


def test_every_ref_resolves(spec):
    refs = re.findall(r'"\$ref": "#/components/(\w+)/([\w.]+)"', json.dumps(spec))
    assert refs
    for kind, name in refs:
        assert name in spec["components"][kind], f"{kind}/{name}"


def test_grpc_reference_documents_each_element_with_its_comment(contracts, pages):
    html = pages["grpc.html"]
    for service in contracts.services:
        assert f'id="{service.full_name}"' in html
        for rpc in service.rpcs:
            assert f'id="{service.full_name}.{rpc.name}"' in html
    for name in [*contracts.messages, *contracts.enums]:
        assert f'id="{name}"' in html
    decrease = html.split('id="polyglot.inventory.v1.InventoryService.DecreaseStock"')[1]
    assert re.search(r"verb-POST\">POST</span>\s*<code>/inventory/decrease</code>", decrease)
    assert 'href="rest.html#/InventoryService/InventoryService-DecreaseStock"' in decrease
    assert "Caller&#39;s order id, the idempotency key" in html
    assert "Claimed for sending; the e-mail may or may not have left yet." in html


def test_doc_comments_are_escaped_and_keep_code_spans():
    assert doc_html("a <b> & `x<y`\nnext line\n\nsecond") == (
        "<p>a &lt;b&gt; &amp; <code>x&lt;y</code> next line</p><p>second</p>"
    )


def test_pages_load_nothing_from_other_origins(pages):
    for name, html in pages.items():
        assets = re.findall(r'<(?:script|link)\b[^>]*(?:src|href)="([^"]*)"', html)
        assert assets, name
        assert [a for a in assets if re.match(r"(https?:)?//", a)] == [], name


@pytest.mark.parametrize(
    "name", ["openapi.json", "grpc.html", "index.html", "rest.html", "asyncapi.html"]
)
def test_committed_site_matches_the_generators(spec, pages, name):
    """docs/site is what Envoy serves; `make drift` (with Node) checks all of it."""
    committed = (DOCS_SITE / name).read_text(encoding="utf-8")
    fresh = (
        json.dumps(spec, indent=2, ensure_ascii=False) if name.endswith(".json") else pages[name]
    )
    assert committed.rstrip("\n") == fresh.rstrip("\n"), "stale: run `make docs`"
