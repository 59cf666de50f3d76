"""A floor, not part of the mesh: the least a gRPC DecreaseStock can be.

grpc.aio (on uvloop, as the services run) and an asyncpg pool running the very
statement of inventory_svc.store, with protobuf's own (upb, in C) messages: no
betterproto, batching, deadlines, metrics, logging, identity or bounded reads.
bench/floors.py puts it behind an Envoy that only transcodes and routes, beside
inventory_svc behind the same Envoy and the FastAPI baseline, to show what the
stack costs before our code:

    BENCH_DATABASE_URL=postgresql://… python -m bench.bare_grpc PORT
"""

import asyncio
import os
import sys

import asyncpg
import grpc
import uvloop
from google.protobuf import message_factory

from bench.fastapi_baseline import POOL_SIZE
from inventory_svc.domain import SaleRequest
from inventory_svc.store import RECORD_SALE, record_sale_arguments
from meshkit.postgres import keep_session
from meshkit.reflection import mesh_pool

SERVICE = "polyglot.inventory.v1.InventoryService"


def message(name: str) -> type:
    return message_factory.GetMessageClass(
        mesh_pool().FindMessageTypeByName(f"polyglot.inventory.v1.{name}")
    )


async def serve(port: int) -> None:
    DecreaseStockRequest, DecreaseStockResponse = (
        message("DecreaseStockRequest"),
        message("DecreaseStockResponse"),
    )
    GetStockRequest, GetStockResponse = message("GetStockRequest"), message("GetStockResponse")
    pool = await asyncpg.create_pool(
        os.environ["BENCH_DATABASE_URL"],
        min_size=POOL_SIZE,
        max_size=POOL_SIZE,
        reset=keep_session,  # as inventory_svc: no reset query (a round trip) per release
    )

    async def decrease_stock(raw: bytes, _: grpc.aio.ServicerContext) -> bytes:
        request = DecreaseStockRequest.FromString(raw)
        sale = SaleRequest(request.order_id, request.product_id, request.quantity)
        remaining = await pool.fetchval(RECORD_SALE, *record_sale_arguments(sale))
        return DecreaseStockResponse(
            product_id=request.product_id, current_stock=remaining, order_id=request.order_id
        ).SerializeToString()

    async def get_stock(raw: bytes, _: grpc.aio.ServicerContext) -> bytes:
        request = GetStockRequest.FromString(raw)
        row = await pool.fetchrow(
            "SELECT product_id, name, stock FROM products WHERE product_id = $1",
            request.product_id,
        )
        return GetStockResponse(product_id=row[0], name=row[1], stock=row[2]).SerializeToString()

    server = grpc.aio.server()
    handlers = {
        "DecreaseStock": grpc.unary_unary_rpc_method_handler(decrease_stock),
        "GetStock": grpc.unary_unary_rpc_method_handler(get_stock),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


if __name__ == "__main__":
    uvloop.install()
    asyncio.run(serve(int(sys.argv[1])))
