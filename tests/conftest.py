"""Session fixtures: a throwaway PostgreSQL database and a private mesh.

Everything here uses its own database, free ports and its own processes, so the
suite neither needs nor disturbs a mesh started with `make up`.
"""

import itertools
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass

import asyncpg
import grpclib.client
import httpx
import pytest
import pytest_asyncio

import polyglot.inventory.v1 as inventory_pb
from devtools.envoy_config import EnvoySite, render
from devtools.mesh import MeshPlan
from devtools.processes import ManagedProcess
from devtools.topology import DESCRIPTOR_SET, backends
from tests.support.net import free_port
from tests.support.postgres import create_database, drop_database

PG_SERVER_URL = os.environ.get("TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
# Tests wait on conditions, so fast probes make them fast, not flaky.
FAST_HEALTH = {"HEALTH_PROBE_SECONDS": "0.2", "SHUTDOWN_GRACE_SECONDS": "10"}


@dataclass
class Mesh:
    plan: MeshPlan
    processes: dict[str, ManagedProcess]

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.plan.http_port}"

    @property
    def envoy_target(self) -> str:
        return f"127.0.0.1:{self.plan.http_port}"

    def grpc_target(self, backend: str) -> str:
        return f"127.0.0.1:{self.plan.grpc_ports[backend]}"


def envoy_config_for(run_dir, http_port: int, admin_port: int, grpc_ports: dict[str, int]):
    site = EnvoySite(
        listen_port=http_port,
        admin_port=admin_port,
        descriptor_path=str(DESCRIPTOR_SET),
        backends={name: ("127.0.0.1", port) for name, port in grpc_ports.items()},
        health_check_seconds=0.5,
    )
    path = run_dir / "envoy.yaml"
    path.write_text(render(site))
    return path


def start_mesh(run_dir, env: dict[str, str]) -> Mesh:
    grpc_ports = {name: free_port() for name in backends()}
    http_port, admin_port = free_port(), free_port()
    plan = MeshPlan(
        run_dir=run_dir,
        envoy_config=envoy_config_for(run_dir, http_port, admin_port, grpc_ports),
        http_port=http_port,
        admin_port=admin_port,
        grpc_ports=grpc_ports,
        env={**FAST_HEALTH, **env},
    )
    processes: dict[str, ManagedProcess] = {}
    try:
        for name in backends():
            processes[name] = plan.backend(name)
            processes[name].start()
        for name in backends():
            processes[name].wait_until(lambda n=name: plan.backend_ready(n), "SERVING health")
        processes["envoy"] = plan.envoy()
        processes["envoy"].start()
        processes["envoy"].wait_until(plan.envoy_ready, "healthy clusters")
    except Exception:
        stop_mesh(processes)
        raise
    return Mesh(plan, processes)


def stop_mesh(processes: dict[str, ManagedProcess]) -> None:
    for process in reversed(processes.values()):
        process.stop()


@pytest_asyncio.fixture(scope="session")
async def inventory_db_url() -> AsyncIterator[str]:
    url = await create_database(PG_SERVER_URL, "polyglot_test_inventory")
    yield url
    await drop_database(url)


@pytest_asyncio.fixture(scope="session")
async def inventory_db(inventory_db_url: str) -> AsyncIterator[asyncpg.Pool]:
    """Direct access to the test database, for setup and for checking what was written."""
    from inventory_svc.store import apply_migrations

    pool = await asyncpg.create_pool(inventory_db_url, min_size=1, max_size=4)
    async with pool.acquire() as conn:
        await apply_migrations(conn)
    yield pool
    await pool.close()


_product_ids = itertools.count(1000)


@pytest.fixture
def new_product(inventory_db: asyncpg.Pool) -> Callable[..., Awaitable[int]]:
    """Insert a product only this test uses; returns its id."""

    async def create(stock: int = 100, name: str = "Test product") -> int:
        product_id = next(_product_ids)
        await inventory_db.execute(
            "INSERT INTO products (product_id, name, stock) VALUES ($1, $2, $3)",
            product_id,
            f"{name} {product_id}",
            stock,
        )
        return product_id

    return create


@pytest.fixture(scope="session")
def mesh(tmp_path_factory, inventory_db, inventory_db_url: str) -> Iterator[Mesh]:
    running = start_mesh(tmp_path_factory.mktemp("mesh"), {"DATABASE_URL": inventory_db_url})
    yield running
    stop_mesh(running.processes)


@pytest_asyncio.fixture(scope="session")
async def http(mesh: Mesh) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=mesh.http_url, timeout=30) as client:
        yield client


@pytest_asyncio.fixture(scope="session")
async def inventory_via_envoy(mesh: Mesh) -> AsyncIterator[inventory_pb.InventoryServiceStub]:
    """The betterproto (grpclib) client, speaking native gRPC to Envoy's port."""
    host, port = mesh.envoy_target.split(":")
    channel = grpclib.client.Channel(host, int(port))
    yield inventory_pb.InventoryServiceStub(channel, timeout=30)
    channel.close()
