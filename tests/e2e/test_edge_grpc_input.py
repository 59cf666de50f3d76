"""Native gRPC input that no proper client sends, through Envoy (tests/e2e).

grpcio answers these itself, before any Python runs, with INTERNAL and its own text
("Compression bit set but no encoding configured", "Error parsing 'x-foo-bin'
metadata: illegal base64 encoding", …), or waits for a message that never comes.
The edge answers each at once with INVALID_ARGUMENT (an unknown grpc-encoding
UNIMPLEMENTED, naming the ones it takes) and a plain message, and the backend never
sees the call (blueprint/edge/grpc_input.lua). A corrupt gzip message is the one case
only the backend can find (it inflates): its answer is translated on the way back.
The services' own answer to a truncated stream is tests/e2e/test_service_input.py's.
"""

import asyncio
import gzip
import zlib
from collections import Counter

import grpc
import pytest

import polyglot.inventory.v1 as pb
from tests.support.edge import INTERNALS, upstream_calls
from tests.support.raw_grpc import (
    EDGE_REFUSED as REFUSED,
)
from tests.support.raw_grpc import (
    GET_STOCK,
    INVALID_ARGUMENT,
    LAPTOP,
    UNIMPLEMENTED,
    H2Answer,
    frame,
    h2_call,
)
from tests.support.sales import order

DECREASE = "/polyglot.inventory.v1.InventoryService/DecreaseStock"
HEALTH = "/grpc.health.v1.Health/Check"


def assert_plain(answer: H2Answer, code: int, says: str) -> None:
    """A gRPC answer with ``code`` and a message a person understands, at once."""
    assert answer.reset is None, answer
    assert answer.headers[":status"] == "200", answer
    assert answer.grpc_status == code, answer
    assert says in answer.grpc_message, answer.grpc_message
    assert not INTERNALS.search(answer.grpc_message), answer.grpc_message
    # Answered, not held until the route's 8 s timeout (the bench times it: ms).
    assert answer.seconds < 5, answer


@pytest.mark.parametrize("case", list(REFUSED))
def test_malformed_grpc_is_refused_at_the_edge(mesh, case):
    body, headers, code, says = REFUSED[case]
    calls = upstream_calls(mesh.plan, "inventory_svc")
    answer = h2_call(mesh.plan.http_port, GET_STOCK, body, headers)
    assert_plain(answer, code, says)
    if code == UNIMPLEMENTED:
        assert answer.headers["grpc-accept-encoding"] == "identity, deflate, gzip"
    assert upstream_calls(mesh.plan, "inventory_svc") == calls  # never forwarded


def test_health_checks_are_checked_too(mesh):
    answer = h2_call(mesh.plan.http_port, HEALTH, b"\x00\x00\x00\x00\x64\x08")
    assert_plain(answer, INVALID_ARGUMENT, "ended without a complete message")


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
def test_compressed_messages_pass_and_corrupt_ones_are_invalid_argument(mesh, encoding):
    compress = gzip.compress if encoding == "gzip" else zlib.compress
    headers = (("grpc-encoding", encoding),)
    good = h2_call(mesh.plan.http_port, GET_STOCK, frame(compress(LAPTOP), True), headers)
    assert good.grpc_status == 0, good
    assert pb.GetStockResponse().parse(good.body[5:]).name == "Laptop Gamer"
    # Only inflating finds this: the backend does, and its INTERNAL "Decompression
    # failed due to zlib error" is translated on the way back.
    corrupt = h2_call(mesh.plan.http_port, GET_STOCK, frame(b"not compressed", True), headers)
    assert_plain(corrupt, INVALID_ARGUMENT, f"not valid {encoding} data")


@pytest.mark.parametrize(
    "content_type",
    ["application/grpc+proto", "application/grpc;charset=utf-8", "application/grpc; charset=UTF-8"],
)
def test_grpc_content_type_variants_work_as_they_do_directly(mesh, content_type):
    for port in (mesh.plan.http_port, mesh.plan.grpc_ports["inventory_svc"]):
        answer = h2_call(port, GET_STOCK, frame(LAPTOP), content_type=content_type)
        assert answer.grpc_status == 0, (port, answer)
        assert pb.GetStockResponse().parse(answer.body[5:]).name == "Laptop Gamer"


def test_a_grpc_call_sent_with_get_is_refused_not_forwarded_or_retried(mesh):
    calls = upstream_calls(mesh.plan, "inventory_svc")
    answer = h2_call(mesh.plan.http_port, GET_STOCK, b"", method="GET")
    assert_plain(answer, INVALID_ARGUMENT, "POST")
    assert upstream_calls(mesh.plan, "inventory_svc") == calls


async def test_a_flood_of_malformed_calls_costs_honest_callers_nothing(
    mesh, inventory_via_envoy, new_product, inventory_db
):
    """320 malformed calls (every kind the edge refuses) at once, beside honest reads
    and sales: every honest call succeeds, and the backend sees none of the flood."""
    product = await new_product(stock=1000)
    kinds = list(REFUSED.values())
    calls = upstream_calls(mesh.plan, "inventory_svc")

    async def malformed(i: int) -> int | None:
        body, headers, _, _ = kinds[i % len(kinds)]
        answer = await asyncio.to_thread(h2_call, mesh.plan.http_port, GET_STOCK, body, headers)
        return answer.grpc_status

    async def read() -> str:
        return (await inventory_via_envoy.get_stock(pb.GetStockRequest(product_id=product))).name

    async def sell() -> int:
        reply = await inventory_via_envoy.decrease_stock(
            pb.DecreaseStockRequest(product_id=product, quantity=1, order_id=order())
        )
        return reply.current_stock

    flood = [malformed(i) for i in range(320)]
    honest = [read() for _ in range(40)] + [sell() for _ in range(20)]
    results = await asyncio.gather(*flood, *honest, return_exceptions=True)
    refused, served = results[:320], results[320:]
    assert Counter(refused) == Counter(kinds[i % len(kinds)][2] for i in range(320))
    assert not [r for r in served if isinstance(r, BaseException)], served
    assert upstream_calls(mesh.plan, "inventory_svc") == calls + len(honest)
    assert sorted(r for r in served if isinstance(r, int)) == list(range(980, 1000))


async def test_grpcio_clients_are_untouched(mesh):
    """What a proper client sends (grpcio, with and without gzip) passes as before."""
    for compression in (grpc.Compression.NoCompression, grpc.Compression.Gzip):
        async with grpc.aio.insecure_channel(mesh.envoy_target, compression=compression) as ch:
            call = ch.unary_unary(GET_STOCK, response_deserializer=pb.GetStockResponse.FromString)
            reply = await call(LAPTOP, timeout=30)
        assert reply.name == "Laptop Gamer"
