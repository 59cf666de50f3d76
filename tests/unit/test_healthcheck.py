"""The container health probe against a real in-process grpc.aio health server."""

import asyncio
from collections.abc import AsyncIterator

import grpc
import pytest_asyncio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from devtools.sandbox import free_port
from meshkit.grpc_server import LIVENESS, GrpcServer
from meshkit.healthcheck import main
from meshkit.settings import ServiceSettings

API = "polyglot.inventory.v1.InventoryService"


@pytest_asyncio.fixture
async def health_server() -> AsyncIterator[tuple[str, health.aio.HealthServicer]]:
    servicer = health.aio.HealthServicer()
    server = grpc.aio.server()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    address = f"127.0.0.1:{free_port()}"
    server.add_insecure_port(address)
    await server.start()
    yield address, servicer
    await server.stop(None)


async def probe(*argv: str) -> int:
    # The probe is synchronous; in a thread it cannot block the server's event loop.
    return await asyncio.to_thread(main, ["--timeout", "2", *argv])


async def test_serving_exits_zero(health_server, capsys):
    address, servicer = health_server
    await servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    await servicer.set(API, health_pb2.HealthCheckResponse.SERVING)
    assert await probe(address) == 0
    assert await probe("--service", API, address) == 0
    assert capsys.readouterr().err == ""


async def test_not_serving_exits_one_with_one_line(health_server, capsys):
    address, servicer = health_server
    await servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
    assert await probe(address) == 1
    assert capsys.readouterr().err == f"unhealthy: {address}: NOT_SERVING\n"


async def test_unknown_service_is_unhealthy(health_server, capsys):
    address, _ = health_server
    assert await probe("--service", "no.such.Service", address) == 1
    assert capsys.readouterr().err.startswith(
        f"unhealthy: {address} service 'no.such.Service': NOT_FOUND"
    )


async def test_nothing_listening_is_unhealthy_without_traceback(capsys, monkeypatch):
    # The default address comes from GRPC_PORT, as in the service containers.
    monkeypatch.setenv("GRPC_PORT", str(free_port()))
    assert await probe() == 1
    err = capsys.readouterr().err
    assert err.startswith("unhealthy: 127.0.0.1:") and "UNAVAILABLE" in err
    assert "Traceback" not in err and err.count("\n") == 1


async def test_liveness_is_serving_while_the_dependencies_are_not(capsys):
    """Kubernetes' liveness probe asks LIVENESS (deploy/k8s): a database outage
    makes a replica unready (overall status NOT_SERVING), never restarted."""
    server = GrpcServer(ServiceSettings(grpc_port=free_port()), [])
    await server.start()
    try:
        await server.set_serving(False)  # what watch_readiness does while the database is away
        assert await probe("--service", LIVENESS, server.address) == 0
        assert await probe(server.address) == 1
        assert capsys.readouterr().err == f"unhealthy: {server.address}: NOT_SERVING\n"
    finally:
        await server.stop()
