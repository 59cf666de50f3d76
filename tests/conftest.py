"""Session fixtures: throwaway databases, a RabbitMQ vhost, a MongoDB wire server,
an SMTP server and a private mesh.

Everything here uses its own databases, vhost, free ports and its own processes,
so the suite neither needs nor disturbs a mesh started with `make up`.
"""

import itertools
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import asyncpg
import grpclib.client
import httpx
import pytest
import pytest_asyncio

import polyglot.inventory.v1 as inventory_pb
from devtools.sandbox import (
    Mesh,
    create_database,
    create_vhost,
    delete_vhost,
    drop_database,
    start_mesh,
    start_mongo,
)
from inventory_svc.store import MIGRATIONS as INVENTORY_MIGRATIONS
from meshkit.postgres import apply_migrations
from tests.support.smtp import MailCatcher

PG_SERVER_URL = os.environ.get("TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
RABBIT_SERVER_URL = os.environ.get("TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
# Tests wait on conditions, so fast probes make them fast, not flaky.
FAST = {"HEALTH_PROBE_SECONDS": "0.2", "SHUTDOWN_GRACE_SECONDS": "10", "OUTBOX_POLL_SECONDS": "0.5"}
# The suite sells hundreds of orders from one address in a burst: the per-client
# mutation limit is raised (tests/e2e/test_edge_limits.py checks it on its own Envoy).
TEST_EDGE = {"mutation_rate_per_second": 10_000, "mutation_burst": 10_000}


# --- infrastructure of our own -------------------------------------------------


def start_test_mesh(run_dir: Path, env: dict[str, str], only: list[str] | None = None) -> Mesh:
    return start_mesh(run_dir, {**FAST, **env}, only, edge=TEST_EDGE)


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
    url = create_vhost(RABBIT_SERVER_URL, "polyglot_test")
    yield url
    delete_vhost(url)


@pytest.fixture(scope="session")
def mongo_url(tmp_path_factory) -> Iterator[str]:
    """The embedded MongoDB wire server (SecantusDB) on a free port, throwaway data."""
    mongo, url = start_mongo(tmp_path_factory.mktemp("mongo"))
    yield url
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
    running = start_test_mesh(tmp_path_factory.mktemp("mesh"), mesh_env)
    yield running
    running.stop()


@pytest_asyncio.fixture(scope="session")
async def http(mesh: Mesh) -> AsyncIterator[httpx.AsyncClient]:
    """REST through Envoy with a token holding every scope (tests of what is refused
    without one use ``anonymous_http`` or their own headers)."""
    async with httpx.AsyncClient(
        base_url=mesh.http_url, timeout=30, headers=mesh.auth_header()
    ) as client:
        yield client


@pytest_asyncio.fixture(scope="session")
async def anonymous_http(mesh: Mesh) -> AsyncIterator[httpx.AsyncClient]:
    """REST through Envoy without a token."""
    async with httpx.AsyncClient(base_url=mesh.http_url, timeout=30) as client:
        yield client


@pytest_asyncio.fixture(scope="session")
async def inventory_via_envoy(mesh: Mesh) -> AsyncIterator[inventory_pb.InventoryServiceStub]:
    """The betterproto (grpclib) client, speaking native gRPC to Envoy's port, with a
    token holding every scope as `authorization` metadata."""
    host, port = mesh.envoy_target.split(":")
    channel = grpclib.client.Channel(host, int(port))
    yield inventory_pb.InventoryServiceStub(channel, timeout=30, metadata=mesh.auth_header())
    channel.close()
