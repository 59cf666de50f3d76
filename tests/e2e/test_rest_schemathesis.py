"""schemathesis against the generated OpenAPI document, through the real Envoy.

Every phase (examples, coverage, fuzzing, stateful), positive and negative data,
on the scratch mesh (its own databases: generated calls sell and restock the
seed products). Then: no 5xx, every response (errors too) conforms to the
document, and nothing changed except what the accepted (2xx) calls did.

Bounded for CI; SCHEMATHESIS_MAX_EXAMPLES (default 3, about 350 requests) scales
it: ``SCHEMATHESIS_MAX_EXAMPLES=150 make test PYTEST_ARGS=tests/e2e/test_rest_schemathesis.py``
sends about 2400 (measured: 2405, about 3.5 minutes).
"""

import asyncio
import json
import os
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg

from blueprint.topology import DOCS_SITE

MAX_EXAMPLES = int(os.environ.get("SCHEMATHESIS_MAX_EXAMPLES", "3"))
SEED = os.environ.get("SCHEMATHESIS_SEED", "20261128")
ST = Path(sys.executable).parent / "st"

# Every check that applies to this API. Left out, and why:
# - negative_data_rejection: the proto3 JSON mapping accepts what a JSON schema
#   calls wrong ("5" for an int32, 1.0 for 1), and Envoy's transcoder drops
#   unknown body fields (envoy#46623, envoy/README.md "Errors"); both are accepted on purpose.
# - positive_data_acceptance: schema-valid requests may name products that do not
#   exist (404) or a time window the contract's comment forbids (start ≥ end).
# - unsupported_method / allow_header_conformance: a method a path does not
#   have is Envoy's answer (edge-limits owns it), not the services'.
# - ignored_auth / object_level_authorization: the auth matrix test
#   (edge-auth) proves every RPC and token case; use_after_free /
#   ensure_resource_availability: the API has no DELETE.
CHECKS = [
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_headers_conformance",
    "response_schema_conformance",
    "missing_required_header",
]


async def _snapshot(mesh) -> dict:
    inventory = await asyncpg.connect(mesh.plan.env["INVENTORY_DATABASE_URL"])
    notify = await asyncpg.connect(mesh.plan.env["NOTIFY_DATABASE_URL"])
    try:
        return {
            "products": {
                r["product_id"]: (r["name"], r["stock"])
                for r in await inventory.fetch("SELECT product_id, name, stock FROM products")
            },
            "sales": {
                r["order_id"]: (r["product_id"], r["quantity"], r["remaining_stock"])
                for r in await inventory.fetch("SELECT * FROM sales")
            },
            "outbox": Counter(
                r["order_id"]
                for r in await inventory.fetch(
                    "SELECT payload->>'order_id' AS order_id FROM outbox"
                )
            ),
            "notifications": Counter(
                r["order_id"] for r in await notify.fetch("SELECT order_id FROM notifications")
            ),
        }
    finally:
        await inventory.close()
        await notify.close()


def _accepted(entries: list[dict]) -> tuple[dict[str, tuple[int, int]], dict[int, int]]:
    """From the HAR: the sales (order id → product, quantity) and restocks
    (product → units) that were answered 2xx."""
    sales: dict[str, tuple[int, int]] = {}
    restocked: dict[int, int] = defaultdict(int)
    for entry in entries:
        request, response = entry["request"], entry["response"]
        if request["method"] != "POST" or not 200 <= response["status"] < 300:
            continue
        path = urlsplit(request["url"]).path
        answer = json.loads(response["content"]["text"])
        if path == "/inventory/decrease":
            sales[answer["order_id"]] = (answer["product_id"], None)
        elif path.endswith("/restock"):
            body = json.loads(request["postData"]["text"])
            restocked[answer["product_id"]] += int(body["quantity"])
    return sales, restocked


async def test_the_rest_api_keeps_its_openapi_document(scratch_mesh, tmp_path):
    mesh = scratch_mesh
    before = await _snapshot(mesh)
    har = tmp_path / "schemathesis.har"
    run = await asyncio.to_thread(
        subprocess.run,
        [
            str(ST),
            "run",
            str(DOCS_SITE / "openapi.json"),
            "--url",
            mesh.http_url,
            "--phases",
            "examples,coverage,fuzzing,stateful",
            "--mode",
            "all",
            "--checks",
            ",".join(CHECKS),
            "--max-examples",
            str(MAX_EXAMPLES),
            "--seed",
            SEED,
            # One worker: with two, Hypothesis's lambda descriptions call ast.parse
            # from two threads, which CPython 3.11 does not survive ("AST
            # constructor recursion depth mismatch", a SystemError inside st).
            "--workers",
            "1",
            "--request-timeout",
            "30",
            "--suppress-health-check",
            "too_slow",
            # A token with every scope, so generated calls reach the services
            # (the auth matrix test covers calls without one).
            "--header",
            f"authorization: Bearer {mesh.token()}",
            "--report",
            "har",
            "--report-har-path",
            str(har),
        ],
        cwd=tmp_path,  # schemathesis keeps a cache in .schemathesis/ under its cwd
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
    )
    assert run.returncode == 0, run.stdout[-8000:] + run.stderr[-2000:]
    entries = json.loads(har.read_text())["log"]["entries"]
    statuses = Counter(e["response"]["status"] for e in entries)
    print(f"schemathesis: {len(entries)} requests, statuses {dict(statuses)}")
    assert not [s for s in statuses if s >= 500]
    assert statuses[200] and statuses[400]  # both kinds of data got through

    after = await _snapshot(mesh)
    sales, restocked = _accepted(entries)
    new_sales = {o: s for o, s in after["sales"].items() if o not in before["sales"]}
    # Recorded sales never change, and new ones are exactly the accepted ones.
    assert {o: after["sales"][o] for o in before["sales"]} == before["sales"]
    assert set(new_sales) == set(sales)
    # One outbox event per new sale, no other new event.
    assert after["outbox"] - before["outbox"] == Counter(list(new_sales))
    # Stock: what it was, plus accepted restocks, minus new sales. Names never change.
    sold: dict[int, int] = defaultdict(int)
    for product_id, quantity, _ in new_sales.values():
        sold[product_id] += quantity
    assert set(after["products"]) == set(before["products"])
    for product_id, (name, stock) in before["products"].items():
        expected = stock + restocked[product_id] - sold[product_id]
        assert after["products"][product_id] == (name, expected), product_id
    # Notifications come from events, so only for new sales (maybe not all yet).
    assert set(after["notifications"] - before["notifications"]) <= set(new_sales)
