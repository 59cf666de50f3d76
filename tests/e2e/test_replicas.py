"""Replicas: two of every service and two outbox relays behind one Envoy, under a
steady stream of orders, while replicas die one at a time.

What must hold afterwards (issue 13, docs/architecture.md "Replicas"):
- the client never saw an error, though an inventory replica died under it (Envoy
  retried DecreaseStock, which is idempotent by order_id, on the other one) and
  another was stopped with SIGTERM (scale-in: NOT_SERVING first, then drained);
- every sale is in the inventory exactly once, in analytics exactly once and in
  notify exactly once, with one e-mail each (plus at most the documented resend of
  an e-mail a killed notify replica was sending);
- two relays at once published every event, per product in sale order;
- per product, stock = initial stock - units sold.
"""

import asyncio
import json
import signal
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aio_pika
import asyncpg
import httpx
import pytest
import pytest_asyncio

from devtools.sandbox import (
    Mesh,
    create_database,
    create_vhost,
    delete_vhost,
    drop_database,
    start_mesh,
)
from meshkit.broker_topology import EXCHANGE
from meshkit.events import PRODUCT_SOLD
from tests.support.pipeline import PipelineView
from tests.support.sales import decrease_body, order
from tests.support.servers import FAST, PG_SERVER_URL, RABBIT_SERVER_URL
from tests.support.waiting import eventually

PRODUCTS = {1: 100_000, 2: 100_000, 3: 100_000}
CLIENTS = 4  # concurrent callers, each one order at a time: a steady, bounded stream
PROBE_QUEUE = "replica_test_probe"
# Short lease: the e-mail a killed notify replica held is taken over soon.
LEASE_SECONDS = "3"


@pytest_asyncio.fixture
async def own_databases() -> AsyncIterator[tuple[str, str]]:
    inventory = await create_database(PG_SERVER_URL, "polyglot_replicas_inv")
    notify = await create_database(PG_SERVER_URL, "polyglot_replicas_notify")
    yield inventory, notify
    await drop_database(inventory)
    await drop_database(notify)


@pytest.fixture
def own_vhost() -> Iterator[str]:
    url = create_vhost(RABBIT_SERVER_URL, "polyglot_replicas")
    yield url
    delete_vhost(url)


@pytest.fixture
def replicated_mesh(tmp_path: Path, own_databases, own_vhost, mongo_url, mail) -> Iterator[Mesh]:
    inventory_url, notify_url = own_databases
    env = {
        **FAST,
        "INVENTORY_DATABASE_URL": inventory_url,
        "NOTIFY_DATABASE_URL": notify_url,
        "AMQP_URL": own_vhost,
        "MONGO_URL": mongo_url,
        "SMTP_URL": mail.url,
        "NOTIFY_LEASE_SECONDS": LEASE_SECONDS,
        # Scale-in: NOT_SERVING for longer than Envoy's two 0.5 s health checks.
        "DRAIN_SECONDS": "1.5",
        # 8 processes with a PostgreSQL pool each, on a server other test runs
        # share (max_connections 100 by default): small pools.
        "DB_POOL_SIZE": "3",
    }
    mesh = start_mesh(tmp_path, env, replicas=2)
    yield mesh
    mesh.stop()


class OrderStream:
    """CLIENTS callers selling through Envoy (REST, with a token) until stopped."""

    def __init__(self, mesh: Mesh) -> None:
        self._mesh = mesh
        self._stopping = asyncio.Event()
        self.ok: dict[str, tuple[int, int]] = {}  # order id → (product, quantity)
        self.failures: list[tuple[str, int, str]] = []
        self._tasks: list[asyncio.Task] = []

    async def __aenter__(self) -> "OrderStream":
        self._client = httpx.AsyncClient(
            base_url=self._mesh.http_url, timeout=30, headers=self._mesh.auth_header()
        )
        self._tasks = [asyncio.create_task(self._caller(n)) for n in range(CLIENTS)]
        return self

    async def __aexit__(self, *_: object) -> None:
        self._stopping.set()
        await asyncio.gather(*self._tasks)
        await self._client.aclose()

    async def _caller(self, n: int) -> None:
        sold = 0
        while not self._stopping.is_set():
            product = 1 + (n + sold) % len(PRODUCTS)
            quantity = 1 + sold % 3
            order_id = order()
            reply = await self._client.post(
                "/inventory/decrease",
                json=decrease_body(product, quantity, order_id),
            )
            if reply.status_code == 200:
                self.ok[order_id] = (product, quantity)
            else:
                self.failures.append((order_id, reply.status_code, reply.text))
            sold += 1

    async def more(self, n: int, what: str) -> None:
        """Wait until ``n`` more orders went through."""
        target = len(self.ok) + n
        await eventually(lambda: len(self.ok) >= target, within=120, what=what)


async def test_replicas_lose_nothing_when_one_of_each_dies_under_load(
    replicated_mesh: Mesh, own_databases, own_vhost, mongo_url, mail
):
    mesh = replicated_mesh
    inventory_url, notify_url = own_databases
    inventory_db = await asyncpg.create_pool(inventory_url, min_size=1, max_size=2)
    notify_db = await asyncpg.create_pool(notify_url, min_size=1, max_size=2)
    pipeline = PipelineView(mongo_url, notify_db, mail)
    broker = await aio_pika.connect(own_vhost)
    try:
        for product, stock in PRODUCTS.items():
            await inventory_db.execute(
                "INSERT INTO products (product_id, name, stock) VALUES ($1, $2, $3)"
                " ON CONFLICT (product_id) DO UPDATE SET stock = EXCLUDED.stock",
                product,
                f"Replica product {product}",
                stock,
            )
        # Our own copy of every published event, in the order RabbitMQ got them.
        channel = await broker.channel()
        probe = await channel.declare_queue(PROBE_QUEUE)
        await probe.bind(EXCHANGE.name, PRODUCT_SOLD)

        async with OrderStream(mesh) as stream:
            await stream.more(40, "orders through both replicas")
            served = await asyncio.to_thread(_served_by_replica, mesh)
            assert all(served[p] > 0 for p in mesh.replicas("inventory_svc")), served

            # A crash: in-flight calls on it are reset, Envoy retries them elsewhere.
            await _crash(mesh, "inventory_svc-2")
            await stream.more(40, "orders after an inventory replica died")
            await eventually(
                lambda: mesh.plan.envoy_sees("inventory_svc-2", healthy=False),
                what="Envoy taking the dead replica out",
            )
            await asyncio.to_thread(mesh.start, "inventory_svc-2")
            await eventually(
                lambda: mesh.plan.envoy_sees("inventory_svc-2", healthy=True),
                what="Envoy taking the restarted replica back",
            )
            await stream.more(40, "orders through the restarted replica")

            # Scale-in: SIGTERM, NOT_SERVING while it drains, then exit 0.
            leaving = mesh.processes["inventory_svc"]
            leaving.signal(signal.SIGTERM)
            assert await asyncio.to_thread(leaving.exit_code, 30) == 0
            await stream.more(40, "orders after a replica was scaled in")

            await _crash(mesh, "inventory_relay-2")
            await stream.more(40, "orders after a relay died")
            await _crash(mesh, "analytics_svc-2")
            await stream.more(40, "orders after an analytics replica died")
            await _crash(mesh, "notify_svc-2")
            await stream.more(40, "orders after a notify replica died")

        assert stream.failures == []
        orders = list(stream.ok)
        await eventually(
            lambda: pipeline.complete(orders), within=180, what="every sale everywhere"
        )

        sales = await inventory_db.fetch(
            "SELECT order_id, product_id, quantity FROM sales WHERE order_id = ANY($1)", orders
        )
        assert sorted(r["order_id"] for r in sales) == sorted(orders)
        assert {r["order_id"]: (r["product_id"], r["quantity"]) for r in sales} == stream.ok
        for product, stock in PRODUCTS.items():
            sold = sum(q for p, q in stream.ok.values() if p == product)
            assert (
                await inventory_db.fetchval(
                    "SELECT stock FROM products WHERE product_id = $1", product
                )
                == stock - sold
            )

        # The documented resend: an e-mail the killed notify replica had handed to
        # the SMTP server but not yet marked sent may go out once more.
        await pipeline.assert_delivered_once_in_effect(orders)

        # Both relays published; per product, the first copy of each event came in
        # sale order (remaining stock only goes down). A relay killed between
        # RabbitMQ's confirm and its mark publishes a second copy, never out of turn.
        await eventually(
            lambda: _probe_count(channel, len(orders)), within=60, what="the probe's copies"
        )
        first_seen: dict[str, dict] = {}
        while (message := await probe.get(fail=False, no_ack=True)) is not None:
            event = json.loads(message.body)
            first_seen.setdefault(event["order_id"], event)
        assert set(first_seen) >= set(orders)
        for product in PRODUCTS:
            remaining = [
                e["remaining_stock"] for e in first_seen.values() if e["product_id"] == product
            ]
            assert remaining == sorted(remaining, reverse=True)
            assert len(set(remaining)) == len(remaining)
    finally:
        await broker.close()
        await pipeline.close()
        await inventory_db.close()
        await notify_db.close()


async def _probe_count(channel: aio_pika.abc.AbstractChannel, at_least: int) -> bool:
    declared = await channel.declare_queue(PROBE_QUEUE, passive=True)
    return (declared.declaration_result.message_count or 0) >= at_least


def _served_by_replica(mesh: Mesh) -> dict[str, int]:
    """Calls each inventory replica answered, from Envoy's admin /clusters."""
    with urllib.request.urlopen(f"http://127.0.0.1:{mesh.plan.admin_port}/clusters") as reply:
        clusters = reply.read().decode()
    return {
        process: sum(
            int(line.rsplit("::", 1)[1])
            for line in clusters.splitlines()
            if line.startswith(f"inventory_svc::127.0.0.1:{port}::rq_total::")
        )
        for process in mesh.replicas("inventory_svc")
        for port in [mesh.plan.grpc_ports[process]]
    }


async def _crash(mesh: Mesh, process: str) -> None:
    """SIGKILL, no warning: a crash."""
    mesh.processes[process].signal(signal.SIGKILL)
    assert await asyncio.to_thread(mesh.processes[process].exit_code, 10) == -signal.SIGKILL
