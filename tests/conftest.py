"""Session fixtures: throwaway databases, a RabbitMQ vhost, a MongoDB wire server,
an SMTP server and a private mesh.

Everything here uses its own databases, vhost, free ports and its own processes,
so the suite neither needs nor disturbs a mesh started with `make up`.
"""

import itertools
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import grpclib.client
import httpx
import pytest
import pytest_asyncio

import polyglot.inventory.v1 as inventory_pb
from devtools.envoy_config import EnvoySite, render
from devtools.mesh import MeshPlan, mongo_answers
from devtools.processes import ManagedProcess
from devtools.topology import DESCRIPTOR_SET, backends
from inventory_svc.store import MIGRATIONS as INVENTORY_MIGRATIONS
from meshkit.postgres import apply_migrations
from tests.support.net import free_port
from tests.support.postgres import create_database, drop_database
from tests.support.rabbit import create_vhost, delete_vhost
from tests.support.smtp import MailCatcher

PG_SERVER_URL = os.environ.get("TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
RABBIT_SERVER_URL = os.environ.get("TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
# Tests wait on conditions, so fast probes make them fast, not flaky.
FAST = {"HEALTH_PROBE_SECONDS": "0.2", "SHUTDOWN_GRACE_SECONDS": "10", "OUTBOX_POLL_SECONDS": "0.5"}


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

    def restart(self, name: str) -> None:
        process = self.processes[name]
        process.stop()
        process.start()
        process.wait_until(lambda: self.plan.backend_ready(name), "SERVING health")


def start_mesh(run_dir: Path, env: dict[str, str], only: list[str] | None = None) -> Mesh:
    """Backends (all, or ``only`` these) and an Envoy in front of them, on free ports."""
    names = only or backends()
    grpc_ports = {name: free_port() for name in backends()}
    http_port, admin_port = free_port(), free_port()
    config = run_dir / "envoy.yaml"
    config.write_text(
        render(
            EnvoySite(
                listen_port=http_port,
                admin_port=admin_port,
                descriptor_path=str(DESCRIPTOR_SET),
                backends={name: ("127.0.0.1", port) for name, port in grpc_ports.items()},
                health_check_seconds=0.5,
            )
        )
    )
    plan = MeshPlan(run_dir, config, http_port, admin_port, grpc_ports, env={**FAST, **env})
    processes: dict[str, ManagedProcess] = {}
    try:
        for name in names:
            processes[name] = plan.backend(name)
            processes[name].start()
        for name in names:
            processes[name].wait_until(lambda n=name: plan.backend_ready(n), "SERVING health")
        processes["envoy"] = plan.envoy()
        processes["envoy"].start()
        processes["envoy"].wait_until(lambda: plan.envoy_ready(names), "healthy clusters")
    except Exception:
        stop_mesh(processes)
        raise
    return Mesh(plan, processes)


def stop_mesh(processes: dict[str, ManagedProcess]) -> None:
    for process in reversed(processes.values()):
        process.stop()


# --- infrastructure of our own -------------------------------------------------


@pytest_asyncio.fixture(scope="session")
async def inventory_db_url() -> AsyncIterator[str]:
    url = await create_database(PG_SERVER_URL, "polyglot_test_inventory")
    yield url
    await drop_database(url)


@pytest_asyncio.fixture(scope="session")
async def notify_db_url() -> AsyncIterator[str]:
    url = await create_database(PG_SERVER_URL, "polyglot_test_notify")
    yield url
    await drop_database(url)


@pytest.fixture(scope="session")
def amqp_url() -> Iterator[str]:
    vhost = create_vhost("polyglot_test")
    yield f"{RABBIT_SERVER_URL.rstrip('/')}/{vhost}"
    delete_vhost(vhost)


@pytest.fixture(scope="session")
def mongo_url(tmp_path_factory) -> Iterator[str]:
    """The embedded MongoDB wire server (SecantusDB) on a free port, throwaway data."""
    run_dir = tmp_path_factory.mktemp("mongo")
    port = free_port()
    url = f"mongodb://127.0.0.1:{port}"
    mongo = MeshPlan(run_dir, run_dir / "unused").embedded_mongo(port)
    mongo.start()
    try:
        mongo.wait_until(lambda: mongo_answers(url), "a MongoDB ping answer")
        yield url
    finally:
        mongo.stop()


@pytest.fixture(scope="session")
def mail() -> Iterator[MailCatcher]:
    catcher = MailCatcher()
    catcher.start()
    yield catcher
    catcher.stop()


@pytest.fixture(scope="session")
def mesh_env(inventory_db_url, notify_db_url, amqp_url, mongo_url, mail) -> dict[str, str]:
    return {
        "INVENTORY_DATABASE_URL": inventory_db_url,
        "NOTIFY_DATABASE_URL": notify_db_url,
        "AMQP_URL": amqp_url,
        "MONGO_URL": mongo_url,
        "SMTP_URL": mail.url,
    }


# --- direct database access, for setup and for checking what was written -----


@pytest_asyncio.fixture(scope="session")
async def inventory_db(inventory_db_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await asyncpg.create_pool(inventory_db_url, min_size=1, max_size=4)
    async with pool.acquire() as conn:
        await apply_migrations(conn, INVENTORY_MIGRATIONS)
    yield pool
    await pool.close()


@pytest_asyncio.fixture(scope="session")
async def notify_db(notify_db_url: str, mesh: "Mesh") -> AsyncIterator[asyncpg.Pool]:
    pool = await asyncpg.create_pool(notify_db_url, min_size=1, max_size=2)
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


# --- the private mesh and clients for it ------------------------------------


@pytest.fixture(scope="session")
def mesh(tmp_path_factory, inventory_db, mesh_env) -> Iterator[Mesh]:
    running = start_mesh(tmp_path_factory.mktemp("mesh"), mesh_env)
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
