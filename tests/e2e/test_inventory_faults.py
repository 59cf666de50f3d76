"""inventory_svc when things go wrong: database outages, shutdown, bad settings."""

import asyncio
import os
import signal
import subprocess
import time
from pathlib import Path

import grpc
import grpclib.client
import pytest
from grpclib.const import Status
from grpclib.exceptions import GRPCError

import polyglot.inventory.v1 as pb
from devtools.processes import grpc_health, grpc_serving, python_module
from tests.support.inventory import stock_of
from tests.support.net import TcpProxy
from tests.support.sales import decrease_body
from tests.support.servers import lone_inventory, start_test_mesh
from tests.support.waiting import eventually


@pytest.fixture
def db_proxy(inventory_db_url):
    proxy = TcpProxy.in_front_of(inventory_db_url, 5432)
    yield proxy, proxy.route(inventory_db_url)
    proxy.close()


@pytest.fixture
def mesh_behind_proxy(tmp_path, db_proxy, inventory_db, mesh_env):
    """A private inventory_svc + Envoy whose database connection we can cut."""
    proxy, url = db_proxy
    env = {**mesh_env, "INVENTORY_DATABASE_URL": url, "DB_TIMEOUT_SECONDS": "2"}
    mesh = start_test_mesh(tmp_path, env, only=["inventory_svc"])
    yield proxy, mesh
    mesh.stop()


async def test_database_outage_is_503_and_unavailable_then_recovers(
    mesh_behind_proxy, inventory_db, new_product
):
    import httpx

    proxy, mesh = mesh_behind_proxy
    product = await new_product(stock=10)
    backend = mesh.grpc_target("inventory_svc")
    async with httpx.AsyncClient(
        base_url=mesh.http_url, timeout=30, headers=mesh.auth_header()
    ) as http:
        assert (await http.get(f"/inventory/{product}")).status_code == 200

        proxy.cut()
        started = time.monotonic()
        reply = await http.post(
            "/inventory/decrease",
            json=decrease_body(product),
        )
        assert reply.status_code == 503
        assert reply.json() == {
            "code": 14,
            "message": "the inventory database is unavailable; try again later",
            "details": [],
        }
        assert time.monotonic() - started < 5  # an answer, not a hang
        await eventually(lambda: not grpc_serving(backend), what="NOT_SERVING without database")

        channel = grpclib.client.Channel(*mesh.envoy_target.split(":"))
        with pytest.raises(GRPCError) as raised:
            await pb.InventoryServiceStub(channel).get_stock(pb.GetStockRequest(product_id=product))
        channel.close()
        assert raised.value.status is Status.UNAVAILABLE
        assert await stock_of(inventory_db, product) == 10

        proxy.restore()
        await eventually(lambda: grpc_serving(backend), what="SERVING again")
        reply = await http.post(
            "/inventory/decrease",
            json=decrease_body(product),
        )
        assert reply.status_code == 200
        assert reply.json()["current_stock"] == 9


def test_starts_not_serving_without_database_and_serves_once_it_appears(
    tmp_path, db_proxy, mesh_env
):
    proxy, url = db_proxy
    proxy.cut()
    process, address = lone_inventory(tmp_path, url, mesh_env)
    try:
        # Up and answering health checks, but NOT_SERVING while PostgreSQL is away.
        process.wait_until(lambda: grpc_health(address) == "NOT_SERVING", "NOT_SERVING health")
        proxy.restore()
        process.wait_until(lambda: grpc_serving(address), "SERVING health")
        assert "dependencies not ready" in process.log_path.read_text()
    finally:
        process.stop()


async def test_sigterm_finishes_in_flight_calls_then_exits(
    tmp_path, inventory_db_url, inventory_db, new_product, mesh_env
):
    product = await new_product(stock=10)
    process, address = lone_inventory(tmp_path, inventory_db_url, mesh_env)
    # grpcio as the client here: grpclib drops in-flight calls when the server
    # sends GOAWAY, so it cannot show a graceful drain (Envoy and grpcio can).
    channel = grpc.aio.insecure_channel(address)
    decrease = channel.unary_unary(
        "/polyglot.inventory.v1.InventoryService/DecreaseStock",
        request_serializer=bytes,
        response_deserializer=pb.DecreaseStockResponse.FromString,
    )
    try:
        await asyncio.to_thread(process.wait_until, lambda: grpc_serving(address), "SERVING")
        async with inventory_db.acquire() as blocker, blocker.transaction():
            # Hold the product's row lock so the sale is in flight when SIGTERM lands.
            await blocker.execute(
                "SELECT 1 FROM products WHERE product_id = $1 FOR UPDATE", product
            )
            sale = asyncio.ensure_future(
                decrease(pb.DecreaseStockRequest(product_id=product, quantity=3, order_id="O-d1"))
            )
            await eventually(
                lambda: inventory_db.fetchval(
                    "SELECT count(*) FROM pg_stat_activity"
                    " WHERE wait_event_type = 'Lock' AND query LIKE '%UPDATE products%'"
                ),
                what=f"the sale of product {product} waiting on the row lock",
            )
            process.signal(signal.SIGTERM)
            await eventually(lambda: "SIGTERM received" in process.log_path.read_text())
            # No new sales once draining has begun: refused, or cancelled if it
            # slipped in before the listener closed — never served.
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await decrease(
                    pb.DecreaseStockRequest(product_id=product, quantity=1, order_id="O-d2"),
                    timeout=5,
                )
            assert refused.value.code() in {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED}
        # Lock released: the in-flight sale completes and is answered.
        assert (await sale).current_stock == 7
        assert await asyncio.to_thread(process.exit_code, 15) == 0
        assert "gRPC server stopped" in process.log_path.read_text()
    finally:
        await channel.close()
        process.stop()
    assert await stock_of(inventory_db, product) == 7
    assert await inventory_db.fetchval("SELECT count(*) FROM sales WHERE order_id = 'O-d2'") == 0


def test_invalid_settings_exit_with_a_clear_message():
    result = subprocess.run(
        python_module("inventory_svc"),
        env={"PATH": "/usr/bin:/bin", "GRPC_PORT": "eighty", "INVENTORY_DATABASE_URL": "mysql://x"},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode != 0
    assert "InventorySettings: invalid settings in the environment" in result.stderr
    assert "GRPC_PORT" in result.stderr and "INVENTORY_DATABASE_URL" in result.stderr
    assert "Traceback" not in result.stderr


def _worker_pids(parent: int) -> list[int]:
    children = Path(f"/proc/{parent}/task/{parent}/children").read_text().split()
    return [int(pid) for pid in children]


async def test_several_workers_share_the_port_and_stop_together(
    tmp_path, inventory_db_url, inventory_db, mesh_env
):
    process, address = lone_inventory(tmp_path, inventory_db_url, {**mesh_env, "WORKERS": "2"})
    try:
        await asyncio.to_thread(process.wait_until, lambda: grpc_serving(address), "SERVING")
        workers = await eventually(
            lambda: len(_worker_pids(process.pid)) == 2 and _worker_pids(process.pid),
            what="two workers",
        )
        # Both workers bound the one port and serve (the kernel spreads connections).
        listening = [
            line for line in process.log_path.read_text().splitlines() if "gRPC listening" in line
        ]
        for pid in workers:
            assert any(f"inventory_svc[{pid}]" in line for line in listening)
        process.signal(signal.SIGTERM)
        assert await asyncio.to_thread(process.exit_code, 20) == 0
    finally:
        process.stop()


async def test_a_dead_worker_takes_the_service_down_for_its_supervisor(
    tmp_path, inventory_db_url, inventory_db, mesh_env
):
    process, address = lone_inventory(tmp_path, inventory_db_url, {**mesh_env, "WORKERS": "2"})
    try:
        await asyncio.to_thread(process.wait_until, lambda: grpc_serving(address), "SERVING")
        first, second = await eventually(
            lambda: len(_worker_pids(process.pid)) == 2 and _worker_pids(process.pid),
            what="two workers",
        )
        os.kill(first, signal.SIGKILL)
        # The parent stops the other worker gracefully and reports the failure.
        assert await asyncio.to_thread(process.exit_code, 20) == 128 + signal.SIGKILL
        with pytest.raises(ProcessLookupError):
            os.kill(second, 0)
    finally:
        process.stop()
