"""Sale batching seen from a client, through Envoy: a full queue is a 429 at once."""

import asyncio

import httpx
import pytest

from tests.support.sales import decrease_body, order
from tests.support.servers import start_test_mesh
from tests.support.waiting import eventually


@pytest.fixture
def mesh_with_short_queue(tmp_path, inventory_db, mesh_env):
    """A private inventory_svc + Envoy letting one order wait per product."""
    env = {**mesh_env, "SALE_QUEUE_MAX_LENGTH": "1"}
    mesh = start_test_mesh(tmp_path, env, only=["inventory_svc"])
    yield mesh
    mesh.stop()


async def test_orders_beyond_the_queue_limit_are_refused_with_429(
    mesh_with_short_queue, inventory_db, new_product
):
    mesh = mesh_with_short_queue
    product = await new_product(stock=10)

    def sale(order_id: str) -> dict:
        return decrease_body(product, 1, order_id)

    orders = [order() for _ in range(3)]
    async with (
        httpx.AsyncClient(base_url=mesh.http_url, timeout=30, headers=mesh.auth_header()) as http,
        inventory_db.acquire() as conn,
    ):
        # Hold the product's row: the first order's write waits in PostgreSQL.
        tx = conn.transaction()
        await tx.start()
        await conn.execute("SELECT 1 FROM products WHERE product_id = $1 FOR UPDATE", product)
        first = asyncio.create_task(http.post("/inventory/decrease", json=sale(orders[0])))
        await eventually(
            lambda: inventory_db.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                " AND wait_event_type = 'Lock'"
            ),
            what="the first order waits for the row",
        )
        # Two more while it is in flight: one waits in the queue, the other is refused.
        others = {
            asyncio.create_task(http.post("/inventory/decrease", json=sale(o))): o
            for o in orders[1:]
        }
        done, pending = await asyncio.wait(others, return_when=asyncio.FIRST_COMPLETED)
        [refused] = done
        reply = refused.result()
        assert reply.status_code == 429, reply.text
        assert reply.json()["code"] == 8  # RESOURCE_EXHAUSTED
        assert "too many orders are waiting for product" in reply.json()["message"]
        await tx.rollback()
        assert (await first).status_code == 200
        [queued] = pending
        assert (await queued).status_code == 200
        # The refused order changed nothing; sent again, it is sold.
        again = await http.post("/inventory/decrease", json=sale(others[refused]))
        assert again.status_code == 200
        assert again.json()["current_stock"] == 7
