"""The edge's own answers and limits, through real Envoys (tests/e2e).

Every answer Envoy makes itself has the one JSON error shape (native gRPC callers:
grpc-status and grpc-message) and no internal detail; input that is not JSON, too
big or too many is refused at the edge, before a backend sees it. Limits that are
expensive at their production values get their own Envoy with small ones, in front
of the session's backends.
"""

import asyncio
import json
import select
import socket
import struct
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import suppress

import grpclib.client
import httpx
import pytest
from grpclib.const import Cardinality, Status
from grpclib.exceptions import GRPCError

import polyglot.analytics.v1 as analytics_pb
import polyglot.inventory.v1 as pb
from devtools.plan import MeshPlan
from devtools.sandbox import free_port, start_envoy
from tests.support.edge import INTERNALS, assert_error, mesh_auth, upstream_calls
from tests.support.inventory import inventory_state, stock_of
from tests.support.net import Tarpit
from tests.support.sales import decrease_body
from tests.support.waiting import eventually


def raw_http(port: int, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """One request on a plain socket (what httpx refuses to send), the answer parsed."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(request)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = {k.lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
    return int(lines[0].split()[1]), headers, body


def post_huge(
    port: int, path: str, size: int, headers: dict[str, str]
) -> tuple[int, dict[str, str], bytes]:
    """POST a ``size``-byte JSON body the way a client that reads while it writes
    does: stop sending as soon as the server has answered, then read the answer."""
    body = json.dumps({"product_id": 1, "quantity": 1, "order_id": "x" * size}).encode()
    extra = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    head = (
        f"POST {path} HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\n"
        f"{extra}content-length: {len(body)}\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(head)
        sent = 0
        while sent < len(body) and not select.select([sock], [], [], 0)[0]:
            try:
                sent += sock.send(body[sent : sent + 65536])
            except OSError:  # the server stopped reading: its answer is waiting
                break
        data = b""
        with suppress(OSError):
            while chunk := sock.recv(65536):
                data += chunk
    answer, _, rest = data.partition(b"\r\n\r\n")
    lines = answer.decode().split("\r\n")
    headers = {k.lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
    return int(lines[0].split()[1]), headers, rest


def grpc_frame(message: bytes) -> bytes:
    return b"\x00" + struct.pack(">I", len(message)) + message


# --- Envoys of our own ---------------------------------------------------------------


TIGHT = {
    "mutation_rate_per_second": 2,
    "mutation_burst": 4,
    "max_requests_per_backend": 4,
    "max_pending_per_backend": 2,
    "cors_allowed_origins": ("https://shop.example",),
}


@pytest.fixture(scope="module")
def tight_edge(mesh, tmp_path_factory) -> Iterator[MeshPlan]:
    """An Envoy with small limits in front of the session's backends."""
    plan = start_envoy(
        tmp_path_factory.mktemp("tight-edge"), mesh.plan.grpc_ports, mesh_auth(mesh), **TIGHT
    )
    yield plan
    plan.envoy().stop()


@pytest.fixture(scope="module")
def broken_edge(mesh, tmp_path_factory) -> Iterator[MeshPlan]:
    """An Envoy whose backends hang (inventory) or are not there (analytics, notify)."""
    tarpit = Tarpit()
    ports = {"inventory_svc": tarpit.port, "analytics_svc": free_port(), "notify_svc": free_port()}
    plan = start_envoy(
        tmp_path_factory.mktemp("broken-edge"),
        ports,
        mesh_auth(mesh),
        wait_healthy=False,
        timeouts={"read": 1.0, "write": 1.0, "report": 1.0, "meta": 1.0},
    )
    yield plan
    plan.envoy().stop()
    tarpit.close()


# --- one error shape -------------------------------------------------------------------


async def test_a_wrong_method_on_a_known_path_is_405_with_allow(http):
    reply = await http.post("/inventory/1", json={})
    assert_error(reply, 405, 3, "not allowed")
    assert reply.headers["allow"] == "GET"
    # A literal path is not a value of a template: /inventory/decrease is no product
    # id of GET /inventory/{product_id} (envoy/README.md, "Errors").
    for method in ("GET", "DELETE"):
        reply = await http.request(method, "/inventory/decrease")
        assert_error(reply, 405, 3, "not allowed")
        assert reply.headers["allow"] == "POST"


async def test_over_long_headers_and_query_strings_are_431(http):
    reply = await http.get("/inventory/1", headers={"x-padding": "a" * 100_000})
    assert_error(reply, 431, 3, "request headers are larger than 6 KiB")
    # Too many small ones: the message says so, not "larger than".
    reply = await http.get("/inventory/1", headers={f"x-h{i}": "a" for i in range(45)})
    body = assert_error(reply, 431, 3, "more than 40 request headers")
    assert "larger" not in body["message"]
    # Under Envoy's limit but over what a backend's gRPC metadata may carry, if it
    # were forwarded twice: still a plain 431 from the edge, never a backend's 429.
    for size in (7_000, 10_000, 40_000):
        reply = await http.get("/inventory", params={"page_token": "a" * size})
        assert_error(reply, 431, 3, "request headers are larger than")


async def test_headers_just_under_the_limit_pass_the_backends_metadata_limit(http):
    """Envoy's header limit sits under the services' gRPC metadata limit, Envoy's own
    headers and the per-header overhead included: near the limit, with as many
    headers as allowed, a call is either refused by Envoy (431) or served — never
    refused by a backend (RESOURCE_EXHAUSTED, 429)."""
    statuses = set()
    for total in range(5_000, 6_400, 100):
        # 34 of ours and httpx's few: just under the 40 headers allowed
        headers = {f"x-pad-{i}": "a" * (total // 34) for i in range(34)}
        statuses.add((await http.get("/inventory/1", headers=headers)).status_code)
    assert statuses == {200, 431}


async def test_a_query_string_under_the_header_limit_reaches_the_service(http):
    reply = await http.get("/inventory", params={"page_token": "a" * 5_000})
    assert_error(reply, 400, 3, "page_token is not one this service issued")


def test_http_1_0_is_served(mesh):
    status, headers, body = raw_http(
        mesh.plan.http_port, b"GET /inventory/1 HTTP/1.0\r\nhost: localhost\r\n\r\n"
    )
    assert status == 200
    assert json.loads(body)["name"] == "Laptop Gamer"
    assert not [h for h in headers if h.startswith("x-envoy-")]


def test_an_unsupported_transfer_encoding_is_501_json(mesh):
    status, headers, body = raw_http(
        mesh.plan.http_port,
        b"POST /inventory/decrease HTTP/1.1\r\nhost: localhost\r\n"
        b"content-type: application/json\r\ntransfer-encoding: chunked, identity\r\n\r\n"
        b"2\r\n{}\r\n0\r\n\r\n",
    )
    assert status == 501
    assert headers["content-type"] == "application/json"
    assert json.loads(body) == {
        "code": 12,
        "message": "this transfer encoding is not supported",
        "details": [],
    }


async def test_no_x_envoy_headers_in_answers(http):
    for reply in (
        await http.get("/inventory/1"),
        await http.get("/inventory/999999"),
        await http.get("/nowhere"),
    ):
        assert not [h for h in reply.headers if h.lower().startswith("x-envoy-")], reply.headers


async def test_a_hanging_backend_is_504_and_a_missing_one_503_with_retry_after(mesh, broken_edge):
    async with httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{broken_edge.http_port}",
        timeout=30,
        headers=mesh.auth_header(),
    ) as http:
        assert_error(await http.get("/inventory/1"), 504, 4, "did not answer in time")
        reply = await http.get("/analytics/summary")
        assert_error(reply, 503, 14, "unavailable")
        assert reply.headers["retry-after"] == "1"


async def test_native_grpc_callers_get_grpc_statuses_without_internals(mesh, broken_edge):
    channel = grpclib.client.Channel("127.0.0.1", broken_edge.http_port)
    try:
        with pytest.raises(GRPCError) as hung:
            await pb.InventoryServiceStub(channel).get_stock(pb.GetStockRequest(product_id=1))
        assert hung.value.status is Status.DEADLINE_EXCEEDED
        with pytest.raises(GRPCError) as missing:
            await analytics_pb.AnalyticsServiceStub(
                channel, metadata=mesh.auth_header()
            ).get_product_sales(analytics_pb.GetProductSalesRequest(product_id=1))
        assert missing.value.status is Status.UNAVAILABLE
        for error in (hung.value, missing.value):
            assert error.message and not INTERNALS.search(error.message), error.message
    finally:
        channel.close()


# --- strict input ----------------------------------------------------------------------


async def test_the_csrf_form_and_the_grpc_content_type_trick_change_nothing(
    mesh, http, inventory_db, new_product
):
    """A page on another site can POST a form or text/plain without a preflight; a
    gRPC content-type on a REST path once came back as an empty 200."""
    product = await new_product(stock=10)
    sale = decrease_body(product)
    calls_before = upstream_calls(mesh.plan, "inventory_svc")
    before = await inventory_state(inventory_db)
    for content_type, body in (
        ("text/plain", json.dumps(sale)),
        ("text/plain;charset=UTF-8", json.dumps(sale)),
        ("application/x-www-form-urlencoded", "product_id=1&quantity=1&order_id=O-1"),
        ("multipart/form-data; boundary=x", f"--x\r\n\r\n{json.dumps(sale)}\r\n--x--"),
    ):
        reply = await http.post(
            "/inventory/decrease", content=body, headers={"content-type": content_type}
        )
        assert_error(reply, 415, 3, "must be JSON")
    reply = await http.post("/inventory/decrease", content=json.dumps(sale))  # no content-type
    assert_error(reply, 415, 3, "must be JSON")
    message = bytes(pb.DecreaseStockRequest(**sale))
    for body in (json.dumps(sale).encode(), grpc_frame(message)):
        reply = await http.post(
            "/inventory/decrease", content=body, headers={"content-type": "application/grpc"}
        )
        assert_error(reply, 415, 3, "must be JSON")
    assert await inventory_state(inventory_db) == before
    assert upstream_calls(mesh.plan, "inventory_svc") == calls_before
    # The same sale as JSON goes through.
    reply = await http.post("/inventory/decrease", json=sale)
    assert reply.status_code == 200
    assert await stock_of(inventory_db, product) == 9


async def test_json_with_a_charset_is_json(http, new_product):
    product = await new_product(stock=5)
    reply = await http.post(
        f"/inventory/{product}/restock",
        content=json.dumps({"quantity": 1}),
        headers={"content-type": "application/json; charset=utf-8"},
    )
    assert reply.status_code == 200 and reply.json()["stock"] == 6


async def test_an_unknown_grpc_method_is_unimplemented(mesh):
    channel = grpclib.client.Channel("127.0.0.1", mesh.plan.http_port)
    try:
        with pytest.raises(GRPCError) as raised:
            async with channel.request(
                "/polyglot.inventory.v1.InventoryService/Nope",
                Cardinality.UNARY_UNARY,
                pb.GetStockRequest,
                pb.GetStockResponse,
                metadata=mesh.auth_header(),
            ) as stream:
                await stream.send_message(pb.GetStockRequest(product_id=1), end=True)
                await stream.recv_message()
        assert raised.value.status is Status.UNIMPLEMENTED
    finally:
        channel.close()


async def test_an_oversized_rest_body_is_refused_at_the_edge(mesh, http, inventory_db):
    before = await inventory_state(inventory_db)
    calls_before = upstream_calls(mesh.plan, "inventory_svc")
    refused, normal = await asyncio.gather(
        asyncio.to_thread(
            post_huge, mesh.plan.http_port, "/inventory/decrease", 10_000_000, mesh.auth_header()
        ),
        http.get("/inventory/1"),
    )
    status, headers, body = refused
    assert status == 413 and headers["content-type"] == "application/json"
    assert json.loads(body) == {
        "code": 3,
        "message": "the request body is larger than 64 KiB",
        "details": [],
    }
    assert normal.status_code == 200
    # Only the normal call reached inventory_svc; nothing was written.
    assert upstream_calls(mesh.plan, "inventory_svc") == calls_before + 1
    assert await inventory_state(inventory_db) == before


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
async def test_a_body_over_the_limit_is_413_whatever_its_content(mesh, chunked):
    """Whatever the path, method and content-type (not JSON, not even valid JSON, a
    path that does not exist), a body over 64 KiB is refused for its size."""
    calls = upstream_calls(mesh.plan, "inventory_svc")
    body = b"x" * 100_000
    for method, path, content_type in [
        ("POST", "/inventory/decrease", "application/json"),  # not valid JSON either
        ("POST", "/inventory/decrease", "text/plain"),
        ("POST", "/inventory/decrease", None),
        ("POST", "/nowhere", "application/json"),
        ("GET", "/inventory/1", "application/json"),
        ("POST", "/inventory/1", "application/json"),
        ("PUT", "/inventory/decrease", "application/octet-stream"),
        ("POST", "/polyglot.inventory.v1.InventoryService/GetStock", "application/json"),
        ("POST", "/docs/", "text/html"),
    ]:
        headers = {"content-type": content_type} if content_type else {}
        content = _chunked(body) if chunked else body
        # A connection of its own: Envoy closes one whose body it stopped reading.
        async with httpx.AsyncClient(base_url=mesh.http_url, timeout=30) as client:
            reply = await client.request(method, path, content=content, headers=headers)
        assert_error(reply, 413, 3, "the request body is larger than 64 KiB")
    assert upstream_calls(mesh.plan, "inventory_svc") == calls


async def _chunked(body: bytes) -> AsyncIterator[bytes]:
    """The body without a content-length (transfer-encoding: chunked)."""
    yield body


async def test_an_oversized_grpc_message_is_refused_at_the_edge(
    mesh, inventory_via_envoy, inventory_db
):
    before = await inventory_state(inventory_db)
    calls_before = upstream_calls(mesh.plan, "inventory_svc")
    big = pb.DecreaseStockRequest(product_id=1, quantity=1, order_id="x" * 100_000)

    async def refused() -> GRPCError:
        with pytest.raises(GRPCError) as raised:
            await inventory_via_envoy.decrease_stock(big)
        return raised.value

    error, normal = await asyncio.gather(
        refused(), inventory_via_envoy.get_stock(pb.GetStockRequest(product_id=1))
    )
    assert error.status is Status.INVALID_ARGUMENT
    assert error.message == "the request message is larger than 64 KiB"
    assert normal.name == "Laptop Gamer"
    assert upstream_calls(mesh.plan, "inventory_svc") == calls_before + 1
    assert await inventory_state(inventory_db) == before


async def test_a_message_at_the_limit_still_passes(inventory_via_envoy):
    # 64 KiB of message is allowed; the service then judges the order id.
    request = pb.DecreaseStockRequest(product_id=1, quantity=1, order_id="x" * 65_000)
    assert len(bytes(request)) <= 64 * 1024
    with pytest.raises(GRPCError) as raised:
        await inventory_via_envoy.decrease_stock(request)
    assert raised.value.status is Status.INVALID_ARGUMENT
    assert "order_id must be 1 to 64 characters" in raised.value.message


async def test_cors_allows_no_origin_unless_configured(http, tight_edge):
    preflight = {
        "origin": "https://shop.example",
        "access-control-request-method": "POST",
        "access-control-request-headers": "content-type",
    }
    reply = await http.options("/inventory/decrease", headers=preflight)
    assert "access-control-allow-origin" not in reply.headers
    assert_error(reply, 405, 3)
    reply = await http.get("/inventory/1", headers={"origin": "https://shop.example"})
    assert "access-control-allow-origin" not in reply.headers

    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{tight_edge.http_port}") as tight:
        reply = await tight.options("/inventory/decrease", headers=preflight)
        assert reply.status_code == 200
        assert reply.headers["access-control-allow-origin"] == "https://shop.example"
        other = {**preflight, "origin": "https://evil.example"}
        reply = await tight.options("/inventory/decrease", headers=other)
        assert "access-control-allow-origin" not in reply.headers


# --- admission control -----------------------------------------------------------------


async def test_overload_is_shed_with_json_503_or_429_and_the_mesh_recovers(
    mesh, tight_edge, new_product, inventory_db
):
    """Several times what the tight edge admits, for a bounded number of calls: every
    answer is a success or a JSON 503/429 with retry-after; right after, it serves."""
    product = await new_product(stock=10_000)
    url = f"http://127.0.0.1:{tight_edge.http_port}"
    limits = httpx.Limits(max_connections=400, max_keepalive_connections=400)
    async with httpx.AsyncClient(
        base_url=url, limits=limits, timeout=60, headers=mesh.auth_header()
    ) as client:

        async def read() -> httpx.Response:
            return await client.get(f"/inventory/{product}")

        async def sell() -> httpx.Response:
            return await client.post(
                "/inventory/decrease",
                json=decrease_body(product),
            )

        replies: list[httpx.Response] = []
        for _ in range(3):  # three waves of 200 at once
            replies += await asyncio.gather(
                *[read() for _ in range(160)], *[sell() for _ in range(40)]
            )
        shed = Counter()
        for reply in replies:
            if reply.status_code == 200:
                continue
            code = {503: 14, 429: 8}.get(reply.status_code)
            assert code, (reply.status_code, reply.text)
            assert_error(reply, reply.status_code, code)
            assert reply.headers["retry-after"] == "1"
            shed[reply.status_code] += 1
        assert shed[503] > 0 and shed[429] > 0, shed
        sold = sum(1 for r in replies if r.status_code == 200 and r.request.method == "POST")
        assert await stock_of(inventory_db, product) == 10_000 - sold

        # Right after: reads and (once the token subject's bucket refilled) sales work.
        assert (await read()).status_code == 200
        await eventually(lambda: _succeeds(sell()), within=30, what="a sale after overload")

    # Native gRPC callers are shed the same way, in gRPC.
    channel = grpclib.client.Channel("127.0.0.1", tight_edge.http_port)
    try:
        stub = pb.InventoryServiceStub(channel, timeout=60)

        async def grpc_read() -> Status:
            try:
                await stub.get_stock(pb.GetStockRequest(product_id=product))
                return Status.OK
            except GRPCError as error:
                assert not INTERNALS.search(error.message or ""), error.message
                return error.status

        outcomes = Counter(await asyncio.gather(*[grpc_read() for _ in range(200)]))
        assert set(outcomes) <= {Status.OK, Status.UNAVAILABLE}, outcomes
        assert outcomes[Status.UNAVAILABLE] > 0
        assert await grpc_read() is Status.OK
    finally:
        channel.close()


async def _succeeds(call) -> bool:
    return (await call).status_code == 200
