"""What the metrics say, without a mesh: the gRPC interceptor's labels on a real
in-process grpc.aio server, the metrics endpoint as a component, and Prometheus's
config made from the topology (the scrape itself: tests/e2e/test_metrics.py)."""

import asyncio
from collections.abc import AsyncIterator

import grpc
import httpx
import pytest
import pytest_asyncio
import yaml
from prometheus_client import REGISTRY

from blueprint.prometheus import CHECKED_IN, ENVOY_JOB, native_site, render
from blueprint.topology import (
    METRICS_PORTS,
    ROOT,
    base_name,
    native_metrics_ports,
    native_ports,
    process_names,
)
from devtools.plan import native_plan
from devtools.sandbox import free_port
from meshkit.metrics import GrpcMetrics, MetricsEndpoint
from meshkit.settings import ServiceSettings
from tests.support.waiting import eventually

SERVICE = "test.metrics.v1.Probe"


async def ok(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    return request


async def not_found(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    await context.abort(grpc.StatusCode.NOT_FOUND, "no such thing")
    raise AssertionError("abort raises")


async def crash(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    raise RuntimeError("a bug")


async def set_code(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    context.set_code(grpc.StatusCode.ALREADY_EXISTS)
    return b""


async def read_once(requests: object, context: grpc.aio.ServicerContext) -> bytes:
    """The kind meshkit.grpc_server serves every API RPC as: stream-unary, one read."""
    request = await context.read()
    if request is grpc.aio.EOF:
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "no request")
    return request


HANDLERS = {
    name: grpc.unary_unary_rpc_method_handler(h)
    for name, h in {"Ok": ok, "NotFound": not_found, "Crash": crash, "SetCode": set_code}.items()
} | {"ReadOnce": grpc.stream_unary_rpc_method_handler(read_once)}


@pytest_asyncio.fixture
async def channel() -> AsyncIterator[grpc.aio.Channel]:
    server = grpc.aio.server(interceptors=[GrpcMetrics()])
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, HANDLERS),))
    address = f"127.0.0.1:{free_port()}"
    server.add_insecure_port(address)
    await server.start()
    async with grpc.aio.insecure_channel(address) as client:
        yield client
    await server.stop(None)


def handled(method: str, code: str) -> float:
    labels = {"grpc_service": SERVICE, "grpc_method": method, "grpc_code": code}
    return REGISTRY.get_sample_value("grpc_server_handled_total", labels) or 0.0


def timed(method: str) -> float:
    labels = {"grpc_service": SERVICE, "grpc_method": method}
    return REGISTRY.get_sample_value("grpc_server_handling_seconds_count", labels) or 0.0


@pytest.mark.parametrize(
    ("method", "code"),
    [
        ("Ok", "OK"),
        ("NotFound", "NOT_FOUND"),
        ("Crash", "UNKNOWN"),
        ("SetCode", "ALREADY_EXISTS"),
        ("ReadOnce", "OK"),
    ],
)
async def test_each_call_is_counted_by_method_and_status_and_timed(channel, method, code):
    before, before_timed = handled(method, code), timed(method)
    call = channel.unary_unary(f"/{SERVICE}/{method}")
    for _ in range(2):
        try:
            await call(b"x", timeout=5)
        except grpc.aio.AioRpcError as error:
            assert error.code().name == code
    # The client has its answer before the interceptor's `finally` has counted it.
    await eventually(
        lambda: handled(method, code) == before + 2 and timed(method) == before_timed + 2,
        within=5,
        what=f"two {method} calls counted as {code} and timed",
    )


async def test_a_call_without_a_request_message_is_counted_with_its_code(channel):
    before = handled("ReadOnce", "INVALID_ARGUMENT")
    call = channel.stream_unary(f"/{SERVICE}/ReadOnce")
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await call(iter(()), timeout=5)  # the request stream ends with no message
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    await eventually(
        lambda: handled("ReadOnce", "INVALID_ARGUMENT") == before + 1,
        within=5,
        what="the call counted as INVALID_ARGUMENT",
    )


async def test_an_unknown_method_is_not_counted(channel):
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await channel.unary_unary(f"/{SERVICE}/Missing")(b"x", timeout=5)
    assert error.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert handled("Missing", "UNIMPLEMENTED") == 0


# --- the endpoint -------------------------------------------------------------------


async def test_the_endpoint_serves_samples_and_stops():
    port = free_port()
    samples = asyncio.Event()

    async def sample() -> None:
        samples.set()

    endpoint = MetricsEndpoint(
        ServiceSettings(metrics_port=port, metrics_sample_seconds=0.1),
        health_name="test.metrics",
        samplers={"probe": sample},
    )
    running = asyncio.create_task(endpoint.run())
    await asyncio.wait_for(samples.wait(), 10)
    await endpoint.check()
    url = f"http://127.0.0.1:{port}/metrics"
    async with httpx.AsyncClient() as client:
        reply = await client.get(url)
    assert reply.status_code == 200 and "grpc_server_handled_total" in reply.text
    await endpoint.stop()
    running.cancel()

    async def refused() -> bool:
        """A new connection is refused (one in flight may end in a ReadError first)."""
        try:
            async with httpx.AsyncClient() as client:
                await client.get(url)
        except httpx.ConnectError:
            return True
        except httpx.TransportError:
            return False
        return False

    await eventually(refused, what="the endpoint closed")


@pytest.mark.parametrize("settings", [{}, {"metrics_port": 9, "workers": 2}])
async def test_no_port_or_several_workers_serve_nothing(settings):
    endpoint = MetricsEndpoint(ServiceSettings(**settings), health_name="test.metrics")
    await asyncio.wait_for(endpoint.run(), 1)  # returns at once: nothing to serve
    await endpoint.check()


# --- Prometheus's config --------------------------------------------------------------


def test_every_process_and_replica_of_make_up_is_a_target_and_envoy_too():
    plan = native_plan(env={}, replicas=2)
    config = yaml.safe_load(render(native_site(plan.metrics_ports, plan.admin_port)))
    targets = {
        job["job_name"]: job["static_configs"][0]["targets"] for job in config["scrape_configs"]
    }
    assert targets == {
        **{
            kind: [
                f"127.0.0.1:{plan.metrics_ports[name]}"
                for name in plan.processes()
                if base_name(name) == kind
            ]
            for kind in METRICS_PORTS
        },
        ENVOY_JOB: [f"127.0.0.1:{plan.admin_port}"],
    }
    assert (
        set(plan.metrics_ports)
        == set(plan.processes())
        == set(process_names(["inventory_svc", "analytics_svc", "notify_svc"], 2))
    )
    [envoy] = [job for job in config["scrape_configs"] if job["job_name"] == ENVOY_JOB]
    assert envoy["metrics_path"] == "/stats/prometheus"
    assert config["rule_files"] == [str(ROOT / "prometheus" / "alerts.yml")]


def test_metrics_ports_never_collide_with_each_other_or_grpc_ports():
    metrics, grpc_ports = native_metrics_ports(5), native_ports(5)
    assert len(set(metrics.values())) == len(metrics) == len(grpc_ports)
    assert not set(metrics.values()) & set(grpc_ports.values())
    assert native_metrics_ports(1)["inventory_svc"] == METRICS_PORTS["inventory_svc"]


def test_the_checked_in_config_is_fresh():
    for path, site in CHECKED_IN.items():
        assert path.read_text() == render(site), "run make generate"
