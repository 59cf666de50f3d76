"""Identity and authorization at the edge: Envoy's jwt_authn and RBAC, through the
real Envoy of the test mesh, for REST and native gRPC alike.

The matrix is built from the descriptor set and the one scope table
(blueprint/access.py): every RPC by every kind of token, both ways in.
"""

import http.server
import json
import threading
from collections.abc import Iterator

import grpc
import httpx
import pytest

from blueprint.access import MethodAccess, all_scopes, method_access
from blueprint.contracts import load_contracts
from blueprint.edge.settings import EdgeAuth
from devtools.sandbox import free_port, start_envoy
from devtools.tokens import new_key
from tests.support.sales import decrease_body, order
from tests.support.waiting import eventually

METHODS = method_access()
ROUTES = {
    f"/{service.full_name}/{rpc.name}": rpc.route
    for service in load_contracts().services
    for rpc in service.rpcs
}
REJECTED = {
    "no token": 16,
    "expired": 16,
    "wrong issuer": 16,
    "wrong audience": 16,
    "signed by an unknown key": 16,
    "wrong scope": 7,
}
TOKENS = [*REJECTED, "right scope"]


def token_for(mesh, method: MethodAccess, kind: str) -> str | None:
    right = [method.scope] if method.scope else []
    match kind:
        case "no token":
            return None
        case "expired":  # beyond Envoy's default 60 s clock skew
            return mesh.token(right, ttl_seconds=-600)
        case "wrong issuer":
            return mesh.token(right, issuer="https://issuer.example.org/")
        case "wrong audience":
            return mesh.token(right, audience="another-api")
        case "signed by an unknown key":
            return new_key().mint(scopes=right)
        case "wrong scope":
            return mesh.token([s for s in all_scopes() if s != method.scope])
        case "right scope":
            return mesh.token(right)
    raise ValueError(kind)


def expected_code(method: MethodAccess, kind: str) -> int | None:
    """The gRPC code the edge answers with, or None when the call passes the edge.
    A public RPC needs no token, but one that is sent must be valid (else a made-up
    token would pass as a caller with one, beyond the quota for calls without)."""
    if kind == "right scope" or (method.scope is None and kind in ("no token", "wrong scope")):
        return None
    return REJECTED[kind]


CASES = [
    pytest.param(m, kind, id=f"{m.method}-{kind.replace(' ', '_')}")
    for m in METHODS
    for kind in TOKENS
]


def rest_call(method: MethodAccess) -> tuple[str, str, dict | None]:
    """The RPC's REST route with placeholder values; an empty body where it takes one.

    What the service then says (200, 400, 404) does not matter here, only whether the
    call got past Envoy.
    """
    route = ROUTES[method.path]
    assert route is not None, f"{method.path} has no REST route"
    path = route.path
    for param in route.path_params:
        path = path.replace(f"{{{param}}}", "1")
    return route.method, path, ({} if route.body else None)


@pytest.mark.parametrize(("method", "kind"), CASES)
async def test_rest_auth_matrix(mesh, anonymous_http, method, kind):
    token = token_for(mesh, method, kind)
    verb, path, body = rest_call(method)
    headers = {"authorization": f"Bearer {token}"} if token else {}
    reply = await anonymous_http.request(verb, path, json=body, headers=headers)
    code = expected_code(method, kind)
    if code is None:
        assert reply.status_code not in (401, 403), reply.text
        assert reply.status_code in (200, 400, 404), reply.text  # the service's answer
        return
    assert reply.status_code == {16: 401, 7: 403}[code], reply.text
    assert reply.headers["content-type"] == "application/json"
    body = reply.json()
    assert body["code"] == code
    assert body["details"] == []
    assert body["message"]
    if code == 16:
        assert reply.headers["www-authenticate"].startswith("Bearer")


@pytest.fixture(scope="module")
async def envoy_channel(mesh) -> Iterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(mesh.envoy_target) as channel:
        yield channel


@pytest.mark.parametrize(("method", "kind"), CASES)
async def test_grpc_auth_matrix(mesh, envoy_channel, method, kind):
    token = token_for(mesh, method, kind)
    call = envoy_channel.unary_unary(method.path)  # raw bytes: the empty request message
    metadata = (("authorization", f"Bearer {token}"),) if token else ()
    code = expected_code(method, kind)
    try:
        await call(b"", metadata=metadata, timeout=30)
        reached = grpc.StatusCode.OK
    except grpc.aio.AioRpcError as error:
        reached = error.code()
    if code is None:
        # The service's own answer to an empty request: OK, or a validation error.
        assert reached in (
            grpc.StatusCode.OK,
            grpc.StatusCode.INVALID_ARGUMENT,
            grpc.StatusCode.NOT_FOUND,
        ), reached
    else:
        assert reached.value[0] == code, reached


@pytest.mark.parametrize(
    "path",
    [
        "/polyglot.inventory.v1.InventoryService/NoSuchMethod",
        "/polyglot.inventory.v1.InventoryService/Decrease%53tock",
        "/polyglot.inventory.v1.InventoryService/DecreaseStock/",
    ],
)
async def test_a_path_that_is_no_known_rpc_needs_a_token_too(envoy_channel, path):
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await envoy_channel.unary_unary(path)(b"", timeout=30)
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_the_scope_claim_is_space_separated_and_any_listed_scope_counts(mesh, http):
    # A token with several scopes, the needed one not first.
    token = mesh.token(["reports:read", "inventory:admin", "orders:write"])
    reply = await http.get("/analytics/summary", headers={"authorization": f"Bearer {token}"})
    assert reply.status_code == 200, reply.text
    near_miss = mesh.token(["orders:write reports:readx"])  # one "scope" word, not reports:read
    reply = await http.get("/analytics/summary", headers={"authorization": f"Bearer {near_miss}"})
    assert reply.status_code == 403


async def test_a_forged_subject_header_is_ignored_and_the_sale_records_the_token_subject(
    mesh, anonymous_http, inventory_db, new_product
):
    product = await new_product(stock=5)
    order_id = order()
    headers = {
        **mesh.auth_header(["orders:write"], subject="alice"),
        "x-mesh-subject": "mallory",
    }
    reply = await anonymous_http.post(
        "/inventory/decrease",
        json=decrease_body(product, 2, order_id),
        headers=headers,
    )
    assert reply.status_code == 200, reply.text
    sold_by = await inventory_db.fetchval("SELECT sold_by FROM sales WHERE order_id = $1", order_id)
    assert sold_by == "alice"
    event = await inventory_db.fetchval(
        "SELECT payload->>'sold_by' FROM outbox WHERE payload->>'order_id' = $1", order_id
    )
    assert event == "alice"

    # ... and the ProductSold event reaches analytics with it, visible to a reader.
    async def listed() -> list[dict]:
        reply = await anonymous_http.get(
            "/analytics/sales",
            params={"product_id": product},
            headers=mesh.auth_header(["reports:read"]),
        )
        return reply.json()["sale_events"]

    [event] = await eventually(listed, what="the sale event in analytics")
    assert event["order_id"] == order_id
    assert event["sold_by"] == "alice"


async def test_grpc_callers_sale_records_their_subject(mesh, inventory_db, new_product):
    product = await new_product(stock=5)
    order_id = order()
    async with grpc.aio.insecure_channel(mesh.envoy_target) as channel:
        import polyglot.inventory.v1 as pb

        call = channel.unary_unary("/polyglot.inventory.v1.InventoryService/DecreaseStock")
        request = pb.DecreaseStockRequest(product_id=product, quantity=1, order_id=order_id)
        token = mesh.token(["orders:write"], subject="svc-checkout")
        await call(
            bytes(request),
            metadata=(("authorization", f"Bearer {token}"), ("x-mesh-subject", "mallory")),
            timeout=30,
        )
    sold_by = await inventory_db.fetchval("SELECT sold_by FROM sales WHERE order_id = $1", order_id)
    assert sold_by == "svc-checkout"


class _JwksServer(http.server.ThreadingHTTPServer):
    """Serves one JWKS document at /jwks.json and counts the fetches."""

    def __init__(self, jwks: dict) -> None:
        self.jwks, self.fetches = json.dumps(jwks).encode(), 0
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path != "/jwks.json":
                    self.send_error(404)
                    return
                server.fetches += 1
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(server.jwks)))
                self.end_headers()
                self.wfile.write(server.jwks)

            def log_message(self, *args: object) -> None:
                pass

        super().__init__(("127.0.0.1", free_port()), Handler)


@pytest.fixture
def jwks_server() -> Iterator[tuple[_JwksServer, object]]:
    key = new_key()
    server = _JwksServer(key.jwks())
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server, key
    server.shutdown()
    server.server_close()


async def test_an_envoy_with_a_remote_jwks_accepts_that_providers_tokens(
    mesh, tmp_path, jwks_server, new_product
):
    server, key = jwks_server
    issuer, audience = "https://id.example.test/realms/shop", "shop-api"
    auth = EdgeAuth(
        issuer=issuer,
        audiences=(audience,),
        jwks_uri=f"http://127.0.0.1:{server.server_address[1]}/jwks.json",
    )
    plan = start_envoy(tmp_path / "oidc-envoy", mesh.plan.grpc_ports, auth)
    try:
        product = await new_product(stock=3)
        sale = decrease_body(product)
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{plan.http_port}", timeout=30
        ) as client:
            token = key.mint(scopes=["orders:write"], issuer=issuer, audience=audience)
            reply = await client.post(
                "/inventory/decrease", json=sale, headers={"authorization": f"Bearer {token}"}
            )
            assert reply.status_code == 200, reply.text
            assert reply.json()["current_stock"] == 2
            # The development key of the test mesh means nothing to this Envoy.
            reply = await client.post(
                "/inventory/decrease", json=sale, headers=mesh.auth_header(["orders:write"])
            )
            assert reply.status_code == 401
        assert server.fetches >= 1
    finally:
        plan.envoy().stop()
