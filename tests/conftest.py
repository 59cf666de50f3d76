"""Session fixtures: throwaway databases, a RabbitMQ vhost, a MongoDB wire server,
an SMTP server and a private mesh.

Everything here uses its own databases, vhost, free ports and its own processes,
so the suite neither needs nor disturbs a mesh started with `make up`.
"""

import itertools
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

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
    start_mongo,
)
from inventory_svc.store import MIGRATIONS as INVENTORY_MIGRATIONS
from meshkit.postgres import apply_migrations
from tests.support.net import TcpProxy
from tests.support.servers import PG_SERVER_URL, RABBIT_SERVER_URL, own_mesh, start_test_mesh
from tests.support.smtp import MailCatcher

# --- infrastructure of our own -------------------------------------------------


@pytest_asyncio.fixture(scope="session")
async def inventory_db_url() -> AsyncIterator[str]:
    url = await create_database(PG_SERVER_URL, "polyglot_test_inventory")
    yield url
    await drop_database(url)


@pytest_asyncio.fixture(scope="session")
async def mesh_notify_db_url() -> AsyncIterator[str]:
    """notify_svc's database in the session mesh."""
    url = await create_database(PG_SERVER_URL, "polyglot_test_notify")
    yield url
    await drop_database(url)


@pytest.fixture(scope="session")
def amqp_url() -> Iterator[str]:
    url = create_vhost(RABBIT_SERVER_URL, "polyglot_test")
    yield url
    delete_vhost(url)


@pytest.fixture(scope="session")
def broker(amqp_url: str) -> Iterator[TcpProxy]:
    """The session mesh reaches RabbitMQ through this proxy: ``broker.cut()`` is a
    broker outage for the test mesh alone, never for anyone else on that broker."""
    proxy = TcpProxy.in_front_of(amqp_url, 5672)
    yield proxy
    proxy.close()


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
def mesh_env(
    inventory_db_url, mesh_notify_db_url, amqp_url, broker, mongo_url, mail
) -> dict[str, str]:
    return {
        "INVENTORY_DATABASE_URL": inventory_db_url,
        "NOTIFY_DATABASE_URL": mesh_notify_db_url,
        "AMQP_URL": broker.route(amqp_url),
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
async def notify_db(mesh_notify_db_url: str, mesh: "Mesh") -> AsyncIterator[asyncpg.Pool]:
    pool = await asyncpg.create_pool(mesh_notify_db_url, min_size=1, max_size=2)
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
async def scratch_mesh(tmp_path_factory, mongo_url, mail) -> AsyncIterator[Mesh]:
    """A second mesh with databases and a vhost of its own, for tests that send
    whatever a generator makes up (fuzzing, schemathesis): they may sell and
    restock the seed products, which the other tests rely on."""
    run_dir = tmp_path_factory.mktemp("scratch_mesh")
    async with own_mesh(run_dir, "polyglot_scratch", mongo_url, mail.url) as running:
        yield running


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
