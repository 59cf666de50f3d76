"""What a user sees with the real grpcurl binary against Envoy's single port.

No .proto files are given to grpcurl: everything comes from server reflection.
"""

import json
import subprocess
import sys
from pathlib import Path

from tests.support.sales import decrease_body, order

GRPCURL = str(Path(sys.executable).parent / "grpcurl")
INVENTORY = "polyglot.inventory.v1.InventoryService"


def run(
    mesh, *words: str, data: object = None, token: str | None = None
) -> subprocess.CompletedProcess:
    """grpcurl against Envoy, with a token holding every scope unless ``token`` is
    given ("" for none)."""
    flags = ["-d", json.dumps(data)] if data is not None else []
    token = mesh.token() if token is None else token
    if token:
        flags += ["-H", f"authorization: Bearer {token}"]
    return subprocess.run(
        [GRPCURL, "-plaintext", *flags, mesh.envoy_target, *words],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_list_shows_the_mesh_through_one_port(mesh):
    result = run(mesh, "list")
    assert result.returncode == 0, result.stderr
    services = set(result.stdout.split())
    assert {
        INVENTORY,
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    } <= services


def test_describe_shows_rpcs_and_their_doc_comments(mesh):
    result = run(mesh, "describe", INVENTORY)
    assert result.returncode == 0, result.stderr
    for rpc in ("GetStock", "ListProducts", "DecreaseStock", "RestockProduct"):
        assert f"rpc {rpc} (" in result.stdout
    assert "Idempotent by `order_id`" in result.stdout
    message = run(mesh, "describe", "polyglot.inventory.v1.DecreaseStockRequest")
    assert "int32 quantity = 2;" in message.stdout
    assert "the idempotency key" in message.stdout


def test_call_decrease_stock_through_envoy(mesh):
    order_id = order()
    before = json.loads(run(mesh, f"{INVENTORY}/GetStock", data={"product_id": 2}).stdout)
    result = run(
        mesh,
        f"{INVENTORY}/DecreaseStock",
        data=decrease_body(2, 1, order_id),
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {
        "productId": 2,
        "currentStock": before["stock"] - 1,
        "orderId": order_id,
    }


def test_errors_have_grpc_status_exit_codes(mesh):
    result = run(mesh, f"{INVENTORY}/GetStock", data={"product_id": 424242})
    assert result.returncode == 64 + 5  # grpcurl exits with 64 + the gRPC code (NOT_FOUND)
    assert "product 424242 does not exist" in result.stderr
    bad = run(
        mesh, f"{INVENTORY}/DecreaseStock", data={"product_id": 1, "quantity": 0, "order_id": "x"}
    )
    assert bad.returncode == 64 + 3  # INVALID_ARGUMENT


def test_health_check_through_envoy(mesh):
    overall = run(mesh, "grpc.health.v1.Health/Check")
    assert json.loads(overall.stdout) == {"status": "SERVING"}
    inventory = run(mesh, "grpc.health.v1.Health/Check", data={"service": INVENTORY})
    assert json.loads(inventory.stdout) == {"status": "SERVING"}
