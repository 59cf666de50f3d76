"""The edge starts or continues each call's trace, exports its own span and tells the
caller the trace id: real Envoys with the OpenTelemetry tracer, exporting to a real
OTLP/gRPC receiver (tests/support/otlp.py), in front of the session's backends or of
a backend that records the metadata it receives.
"""

import os
import re
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import grpclib.client
import httpx
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpclib.const import Cardinality

import polyglot.inventory.v1 as pb
from blueprint.edge.settings import EdgeTracing
from devtools.plan import MeshPlan
from devtools.sandbox import Mesh, free_port, start_envoy
from tests.support.edge import mesh_auth
from tests.support.otlp import OtlpReceiver, ReceivedSpan
from tests.support.sales import decrease_body
from tests.support.waiting import eventually

GET_STOCK = "/polyglot.inventory.v1.InventoryService/GetStock"
INVENTORY = "polyglot.inventory.v1.InventoryService"
TRACE_ID = re.compile(r"^[0-9a-f]{32}$")
# Envoy flushes its spans every 5 s (or every 5 spans): give it room on a busy machine.
EXPORTED_WITHIN = 60.0


def traceparent(trace_id: str, span_id: str, sampled: bool = True) -> str:
    return f"00-{trace_id}-{span_id}-{'01' if sampled else '00'}"


def client_context() -> tuple[str, str]:
    """A trace id and span id as a traced client would send them."""
    return os.urandom(16).hex(), os.urandom(8).hex()


async def envoy_span(receiver: OtlpReceiver, trace_id: str) -> ReceivedSpan:
    spans = await eventually(
        lambda: [s for s in receiver.spans(trace_id) if s.service == "envoy"],
        within=EXPORTED_WITHIN,
        what=f"Envoy's span of trace {trace_id}",
    )
    assert len(spans) == 1, spans
    return spans[0]


def access_log_line(plan: MeshPlan, trace_id: str) -> str:
    lines = [line for line in plan.envoy().log_path.read_text().splitlines() if trace_id in line]
    return lines[0] if lines else ""


# --- Envoys of our own ---------------------------------------------------------------


@pytest.fixture(scope="module")
def receiver() -> Iterator[OtlpReceiver]:
    with OtlpReceiver() as running:
        yield running


@pytest.fixture(scope="module")
def traced_edge(mesh, receiver, tmp_path_factory) -> Iterator[MeshPlan]:
    """An Envoy tracing every new call (the default sampler) in front of the session's
    backends, exporting to ``receiver``."""
    plan = start_envoy(
        tmp_path_factory.mktemp("traced-edge"),
        mesh.plan.grpc_ports,
        mesh_auth(mesh),
        tracing=EdgeTracing(receiver.endpoint),
        mutation_rate_per_second=0,
    )
    yield plan
    plan.envoy().stop()


class RecordingInventory:
    """A gRPC backend that answers GetStock and keeps each call's metadata: what a
    service behind Envoy receives."""

    def __init__(self) -> None:
        self.metadata: list[dict[str, str]] = []
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        handler = grpc.unary_unary_rpc_method_handler(
            self._get_stock, request_deserializer=bytes, response_serializer=bytes
        )
        self.server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(INVENTORY, {"GetStock": handler}),)
        )
        checks = health.HealthServicer()
        checks.set(INVENTORY, health_pb2.HealthCheckResponse.SERVING)
        health_pb2_grpc.add_HealthServicer_to_server(checks, self.server)
        self.port = self.server.add_insecure_port("127.0.0.1:0")

    def _get_stock(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        self.metadata.append(dict(context.invocation_metadata()))  # type: ignore[arg-type]
        return bytes(pb.GetStockResponse(product_id=1, name="Recorded", stock=1))


@pytest.fixture(scope="module")
def recorder() -> Iterator[RecordingInventory]:
    backend = RecordingInventory()
    backend.server.start()
    yield backend
    backend.server.stop(grace=None)


def edge_before(
    recorder: RecordingInventory, mesh: Mesh, run_dir: Path, tracing: EdgeTracing
) -> MeshPlan:
    """An Envoy whose inventory_svc is ``recorder`` (the other backends are absent)."""
    ports = {
        "inventory_svc": recorder.port,
        "analytics_svc": free_port(),
        "notify_svc": free_port(),
    }
    return start_envoy(run_dir, ports, mesh_auth(mesh), wait_healthy=False, tracing=tracing)


@pytest.fixture(scope="module")
def recorded_edge(mesh, receiver, recorder, tmp_path_factory) -> Iterator[MeshPlan]:
    plan = edge_before(
        recorder, mesh, tmp_path_factory.mktemp("recorded-edge"), EdgeTracing(receiver.endpoint)
    )
    yield plan
    plan.envoy().stop()


@pytest.fixture(scope="module")
def sampling_edge(mesh, receiver, recorder, tmp_path_factory) -> Iterator[MeshPlan]:
    """OTEL_TRACES_SAMPLER=parentbased_always_off: new traces are not sampled, a
    caller's sampled traceparent still is."""
    tracing = EdgeTracing.from_env(
        {
            "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
            "OTEL_TRACES_SAMPLER": "parentbased_always_off",
        }
    )
    assert tracing
    plan = edge_before(recorder, mesh, tmp_path_factory.mktemp("sampling-edge"), tracing)
    yield plan
    plan.envoy().stop()


async def recorded_get_stock(
    plan: MeshPlan, recorder: RecordingInventory, headers: dict[str, str]
) -> tuple[httpx.Response, dict[str, str]]:
    """GET /inventory/1 through ``plan``'s Envoy, once its health check let the
    recorder in; the answer and the metadata the backend received."""
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{plan.http_port}") as http:

        async def answered() -> httpx.Response | None:
            reply = await http.get("/inventory/1", headers=headers)
            return reply if reply.status_code == 200 else None

        before = len(recorder.metadata)
        reply = await eventually(answered, what="the recorder in rotation")
    return reply, recorder.metadata[-1] if len(recorder.metadata) > before else {}


# --- REST ------------------------------------------------------------------------------


async def test_a_rest_call_gets_a_new_trace_whose_id_is_in_the_answer_and_the_log(
    traced_edge, receiver
):
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{traced_edge.http_port}") as http:
        reply = await http.get("/inventory/1")
    assert reply.status_code == 200, reply.text
    trace_id = reply.headers["x-trace-id"]
    assert TRACE_ID.match(trace_id)

    span = await envoy_span(receiver, trace_id)
    assert span.parent_span_id == ""  # Envoy started this trace
    assert span.kind == "server"
    assert span.name == f"{INVENTORY}/GetStock"  # named after the RPC, REST or not
    assert span.attributes["http.status_code"] == "200"
    assert span.attributes["grpc.path"] == GET_STOCK
    assert span.attributes["upstream_cluster"] == "inventory_svc"
    assert span.status_code != 2

    line = await eventually(lambda: access_log_line(traced_edge, trace_id), what="the access log")
    assert '"GET /inventory/1 HTTP/1.1" 200' in line
    assert f"trace={trace_id}" in line


async def test_a_rest_order_with_a_traceparent_continues_the_callers_trace(
    mesh, traced_edge, receiver
):
    trace_id, parent = client_context()
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{traced_edge.http_port}") as http:
        reply = await http.post(
            "/inventory/decrease",
            json=decrease_body(1),
            headers={**mesh.auth_header(), "traceparent": traceparent(trace_id, parent)},
        )
    assert reply.status_code == 200, reply.text
    assert reply.headers["x-trace-id"] == trace_id

    span = await envoy_span(receiver, trace_id)
    assert span.parent_span_id == parent
    assert span.name == f"{INVENTORY}/DecreaseStock"
    assert span.attributes["http.status_code"] == "200"
    assert span.attributes["upstream_cluster"] == "inventory_svc"


async def test_envoys_own_error_answers_carry_the_trace_id_too(traced_edge, receiver):
    trace_id, parent = client_context()
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{traced_edge.http_port}") as http:
        unknown = await http.get("/no/such/route")  # the transcoder's 404
        no_token = await http.post(  # jwt_authn's 401
            "/inventory/decrease",
            json=decrease_body(1),
            headers={"traceparent": traceparent(trace_id, parent)},
        )
        not_json = await http.post("/inventory/decrease", content="x")  # a direct 415
    assert (unknown.status_code, no_token.status_code, not_json.status_code) == (404, 401, 415)
    for reply in (unknown, no_token, not_json):
        assert TRACE_ID.match(reply.headers["x-trace-id"]), reply.headers
        assert set(reply.json()) == {"code", "message", "details"}
    assert no_token.headers["x-trace-id"] == trace_id
    span = await envoy_span(receiver, trace_id)
    assert span.attributes["http.status_code"] == "401"


# --- native gRPC -------------------------------------------------------------------------


async def test_a_native_grpc_call_continues_the_callers_trace_and_echoes_its_id(
    mesh, traced_edge, receiver
):
    trace_id, parent = client_context()
    channel = grpclib.client.Channel("127.0.0.1", traced_edge.http_port)
    try:
        async with channel.request(
            GET_STOCK,
            Cardinality.UNARY_UNARY,
            pb.GetStockRequest,
            pb.GetStockResponse,
            metadata={"traceparent": traceparent(trace_id, parent)},
        ) as stream:
            await stream.send_message(pb.GetStockRequest(product_id=1), end=True)
            answer = await stream.recv_message()
            await stream.recv_trailing_metadata()
        assert answer and answer.product_id == 1
        assert stream.initial_metadata["x-trace-id"] == trace_id
    finally:
        channel.close()

    span = await envoy_span(receiver, trace_id)
    assert span.parent_span_id == parent
    assert span.name == f"{INVENTORY}/GetStock"
    assert span.attributes["grpc.status_code"] == "0"
    assert span.attributes["upstream_cluster"] == "inventory_svc"


# --- what the backend receives ------------------------------------------------------------


async def test_the_backend_receives_envoys_span_as_its_parent(recorded_edge, recorder, receiver):
    reply, metadata = await recorded_get_stock(recorded_edge, recorder, {})
    trace_id = reply.headers["x-trace-id"]
    span = await envoy_span(receiver, trace_id)
    # The service's own server span (meshkit's OpenTelemetry interceptor) continues
    # from this: same trace, Envoy's span as parent, sampled.
    assert metadata["traceparent"] == traceparent(trace_id, span.span_id)


async def test_parent_based_sampling_follows_the_caller_and_leaves_new_traces_out(
    sampling_edge, recorder, receiver
):
    # A new trace under parentbased_always_off: not sampled, still a trace id that
    # reaches the backend (and its logs) and the caller.
    reply, metadata = await recorded_get_stock(sampling_edge, recorder, {})
    trace_id = reply.headers["x-trace-id"]
    assert TRACE_ID.match(trace_id)
    assert re.fullmatch(rf"00-{trace_id}-[0-9a-f]{{16}}-00", metadata["traceparent"])
    # The caller sampled its trace: Envoy samples its span too, and says so downstream.
    sampled_id, parent = client_context()
    reply, metadata = await recorded_get_stock(
        sampling_edge, recorder, {"traceparent": traceparent(sampled_id, parent)}
    )
    assert reply.headers["x-trace-id"] == sampled_id
    span = await envoy_span(receiver, sampled_id)
    assert span.parent_span_id == parent
    assert metadata["traceparent"] == traceparent(sampled_id, span.span_id)
    # The caller did not sample: neither does Envoy.
    unsampled_id, parent = client_context()
    reply, metadata = await recorded_get_stock(
        sampling_edge, recorder, {"traceparent": traceparent(unsampled_id, parent, sampled=False)}
    )
    assert reply.headers["x-trace-id"] == unsampled_id
    assert re.fullmatch(rf"00-{unsampled_id}-[0-9a-f]{{16}}-00", metadata["traceparent"])
    # Envoy exports only what it sampled (the flag it passes on is the one it keeps).
    assert not receiver.spans(trace_id) and not receiver.spans(unsampled_id)
